/*
 * wait.c — waiting for the partner: the completions of sync changes (their callers wait
 * or defer their replies through hfs_complete_wait/defer), async flushes, and giving back
 * a write the partner had no room for (repl.c, "Modes", "Room").
 * Locking: repl.c's opening comment.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/uio.h>

#include <jansson.h>
#include <xxhash.h>

#include "repl_i.h"

/* ---- room: the partner could not apply a write (README "Space") ------------------- */

/* deferq.lock held: was a record in [first, last] refused for room? */
static bool __refused(uint64_t first, uint64_t last)
{
	unsigned n = deferq.nref < REFUSED_MAX ? deferq.nref : REFUSED_MAX;

	for (unsigned k = 0; k < n; k++)
		if (deferq.refused[k] >= first && deferq.refused[k] <= last)
			return true;
	return false;
}

static bool refused(uint64_t first, uint64_t last)
{
	bool ret;

	pthread_mutex_lock(&deferq.lock);
	ret = __refused(first, last);
	pthread_mutex_unlock(&deferq.lock);
	return ret;
}

/* The partner had no room for (part of) write w: give the growth back here (a truncate
 * record the mirror applies too) so that both sides hold what was acknowledged before and
 * the writer gets ENOSPC.  If the file changed meanwhile that is not possible: the
 * partner gets the whole heap again (the old way).  Never on the receive thread (it
 * takes the inode lock, and sends). */
static int give_back(const struct hfs_wrote *w)
{
	struct hfs_repl_heap *r = w->i->heap->repl;
	int ret = hfs_write_undo(w->i, w->old, w->off, w->end); /* nobody waits for it */

	if (!ret) {
		hfs_log(HFS_LOG_WARNING, "partner: no room there for heap %s: a write of %llu "
			"bytes is refused (ENOSPC) and undone here", r->h->pol.name,
			(unsigned long long)(w->end - w->off));
		return -ENOSPC;
	}
	hfs_log(HFS_LOG_WARNING, "partner: no room there for heap %s, and the file changed "
		"since the write: resyncing the whole heap", r->h->pol.name);
	pthread_mutex_lock(&r->lock);
	r->lost = true;
	pend_drop(r);
	pthread_mutex_unlock(&r->lock);
	if (rg.l)
		rep_kick(rg.l);
	return -ENOSPC;
}

static void *give_back_thread(void *arg)
{
	struct deferred *d = arg;

	d->fn(d->arg, give_back(&d->w));
	free(d);
	return NULL;
}

/* The receive thread: the partner refused record seq for room. */
void no_room(uint64_t seq)
{
	struct hfs_repl_heap *r;

	pthread_mutex_lock(&deferq.lock);
	deferq.refused[deferq.nref++ % REFUSED_MAX] = seq;
	pthread_mutex_unlock(&deferq.lock);
	FOR_EACH_REPL(r) {
		bool found = false;

		if (r->mirror || r->h->pol.replicate == CONF_REPLICATE_SYNC)
			continue; /* sync: the writer gives the growth back (give_back) */
		pthread_mutex_lock(&r->lock);
		for (struct pend *p = r->pend; p && !found; p = p->next)
			found = p->seq == seq;
		if (found && !r->behind) {
			r->behind = true;
			hfs_log(HFS_LOG_WARNING, "partner: no room there for heap %s: the mirror "
				"is behind until the next resync; writes go on here",
				r->h->pol.name);
		}
		pthread_mutex_unlock(&r->lock);
	}
}

/* When a deferred reply goes unanswered: what c_wait would return by then.  With no
 * on_peer_lost the wait is cut at the link's timeout and the change stands (0); with one,
 * ha_gate_wait waits on for the program's answer and fails the change once that wait is
 * over too. */
static void due_of(struct deferred *d)
{
	int64_t ms = hfs.conf->partner.timeout_ms;

	d->err = 0;
	if (ha_hooked()) {
		ms += ha_gate_wait_ms();
		d->err = -EIO;
	}
	d->due = hfs_now_ns() + ms * 1000000;
}

/* The completion's defer (hfs_complete_defer): the reply waits in deferq for the
 * acknowledgement of c's last record, or its due time (expire_thread). */
static bool c_defer(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg)
{
	uint64_t seq = c->last;
	struct deferred *d;
	bool later = false;

	d = malloc(sizeof(*d));
	pthread_mutex_lock(&deferq.lock);
	/* acknowledged already, or that connection is gone: the caller replies now */
	if (d && deferq.conn == c->conn && deferq.acked < seq && deferq.th_on) {
		*d = (struct deferred){ .next = deferq.list, .first = c->first, .seq = seq,
					.w = c->wrote, .fn = fn, .arg = arg };
		due_of(d);
		c->wrote.i = NULL;
		/* the list is newest first and every due time is now + the same span: only
		 * an empty list leaves the thread waiting for nothing in particular */
		if (!deferq.list)
			pthread_cond_signal(&deferq.cv);
		deferq.list = d;
		later = true;
	}
	pthread_mutex_unlock(&deferq.lock);
	if (!later)
		free(d);
	return later;
}

/* Send the replies on run (taken off deferq.list), each with its err; a write the
 * partner refused (part of) for room is given back first. */
static void answer(struct deferred *run)
{
	struct deferred *d;

	while ((d = run)) {
		pthread_t t;

		run = d->next;
		if (d->w.i && refused(d->first, d->seq)) {
			pthread_attr_t a;
			int ret;

			/* giving back takes the inode lock: not on this thread */
			pthread_attr_init(&a);
			pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
			ret = pthread_create(&t, &a, give_back_thread, d);
			pthread_attr_destroy(&a);
			if (!ret)
				continue;
			d->fn(d->arg, -EIO);
			free(d);
			continue;
		}
		d->fn(d->arg, d->err);
		free(d);
	}
}

/* deferq.lock held: take off the list the replies acknowledged up to seq (applied there,
 * refused, or lost: err 0) and those due by now (their own err); *next (if asked): the
 * earliest due time left, if sooner. */
static struct deferred *__take(uint64_t seq, int64_t now, int64_t *next)
{
	struct deferred *run = NULL, **pp, *d;

	for (pp = &deferq.list; (d = *pp);) {
		if (d->seq <= seq || d->due <= now) {
			if (d->seq <= seq)
				d->err = 0;
			*pp = d->next;
			d->next = run;
			run = d;
		} else {
			if (next && d->due < *next)
				*next = d->due;
			pp = &d->next;
		}
	}
	return run;
}

/* Run the deferred replies up to seq (all: UINT64_MAX), outside deferq.lock. */
void deferred_run(uint64_t seq)
{
	struct deferred *run;

	pthread_mutex_lock(&deferq.lock);
	run = __take(seq, INT64_MIN, NULL);
	pthread_mutex_unlock(&deferq.lock);
	answer(run);
}

/* The replies nobody answered by their due time (a partner that is connected but slower
 * than the link's timeout: bytes still arrive, so the link is not down) get what a
 * waiting writer would have got then: a sync change waits at most the timeout, whether
 * its reply waits on a thread or in deferq. */
static void *expire_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&deferq.lock);
	while (deferq.th_on) {
		int64_t now = hfs_now_ns(), next = now + 1000000000;
		struct deferred *run = __take(0, now, &next); /* (seqs start at 1) */
		struct timespec ts;

		if (run) {
			pthread_mutex_unlock(&deferq.lock);
			answer(run);
			pthread_mutex_lock(&deferq.lock);
			continue;
		}
		ts = (struct timespec){ .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000 };
		pthread_cond_timedwait(&deferq.cv, &deferq.lock, &ts);
	}
	pthread_mutex_unlock(&deferq.lock);
	return NULL;
}

/* Before the link starts (no record is sent yet, so no reply can be deferred before the
 * thread runs). */
int deferq_start(void)
{
	int ret = hfs_cond_init_monotonic(&deferq.cv);

	if (ret)
		return ret;
	pthread_mutex_lock(&deferq.lock);
	deferq.th_on = true; /* the thread's loop condition, and c_defer's */
	pthread_mutex_unlock(&deferq.lock);
	ret = -pthread_create(&deferq.th, NULL, expire_thread, NULL);
	if (ret) {
		pthread_mutex_lock(&deferq.lock);
		deferq.th_on = false;
		pthread_mutex_unlock(&deferq.lock);
		pthread_cond_destroy(&deferq.cv);
	}
	return ret;
}

/* After the link stopped (no acknowledgement comes any more); what is left is answered
 * by the caller's deferred_run. */
void deferq_stop(void)
{
	pthread_mutex_lock(&deferq.lock);
	if (!deferq.th_on) {
		pthread_mutex_unlock(&deferq.lock);
		return;
	}
	deferq.th_on = false;
	pthread_cond_signal(&deferq.cv);
	pthread_mutex_unlock(&deferq.lock);
	pthread_join(deferq.th, NULL);
	pthread_cond_destroy(&deferq.cv);
}

/* Every deferred reply now, with err (ha.c: the owner may not go on alone). */
void deferred_fail(int err)
{
	struct deferred *run, *d;

	pthread_mutex_lock(&deferq.lock);
	run = deferq.list;
	deferq.list = NULL;
	pthread_mutex_unlock(&deferq.lock);
	while ((d = run)) {
		run = d->next;
		d->fn(d->arg, err);
		free(d);
	}
}

/* The completion's wait (hfs_complete_wait): at most `timeout` until the partner applied
 * (or refused, or was lost before) c's records. */
static int c_wait(struct hfs_completion *c)
{
	uint64_t seq = c->last, first = c->first;
	struct hfs_wrote w = c->wrote;
	int ret;

	c->wrote.i = NULL;
	if (!rg.l)
		return 0;
	/* the change stands here: the partner gone or slow means degraded (a resync
	 * later), a refusal kicks the link (on_acked: a full resync); only a write the
	 * partner had no room for is given back */
	ret = rep_wait(rg.l, seq, hfs.conf->partner.timeout_ms);
	/* not acknowledged: with on_peer_lost, only its answer lets the owner go on (ha.c) */
	if ((ret == -ETIMEDOUT || ret == -ENOTCONN) && (ret = ha_gate_wait(seq, c->conn)))
		return ret;
	if (w.i && (ret == -ENOSPC || refused(first, seq)))
		return give_back(&w);
	return 0;
}

static const struct hfs_completion_ops wait_ops = { .wait = c_wait, .defer = c_defer };

void repl_wait_for(struct hfs_completion *c, uint64_t seq, uint64_t conn)
{
	if (!c->ops) /* the first record since the caller last waited */
		c->first = seq;
	c->ops = &wait_ops;
	c->last = seq;
	c->conn = conn;
}

int hfs_repl_flush(const struct hfs_heap *h)
{
	int ret;

	if (!rg.l || !h || !h->repl || h->repl->mirror)
		return 0;
	ret = rep_flush(rg.l, hfs.conf->partner.timeout_ms);
	/* ENOSPC: no room there; the change stands here and the partner is behind ("Room") */
	return ret == -ENOTCONN || ret == -ETIMEDOUT || ret == -ENOSPC || ret >= 0 ? 0 : -EIO;
}

bool hfs_repl_flushes(const struct hfs_heap *h)
{
	return h && h->repl && !h->repl->mirror;
}
