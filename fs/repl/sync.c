/*
 * sync.c — the owner's (re)sync at each connect: only the log the partner lacks, or
 * the whole heap pre-copied live (hfs_image_live: frozen only while its tree is written
 * to memory) followed by the log of what changed meanwhile (repl.c, "Resync").
 * Locking: repl.c's opening comment.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
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

/* ---- the owner: full sync ----------------------------------------------------------- */

/* Which image a full resync of an ordinary heap sends: the live pre-copy
 * (hfs_image_live), or with HEAPFS_RESYNC_FORK=1 in the daemon's environment the fork's
 * frozen snapshot (kept for tests/bench/replbench.py, which compares the two;
 * docs/DESIGN.md "Resync" has the figures that chose the default). */
static bool resync_fork(void)
{
	static int fork_env = -1; /* read once; the same answer from any sync thread */
	int v = __atomic_load_n(&fork_env, __ATOMIC_RELAXED);

	if (v < 0) {
		const char *e = getenv("HEAPFS_RESYNC_FORK");

		v = e && !strcmp(e, "1");
		__atomic_store_n(&fork_env, v, __ATOMIC_RELAXED);
	}
	return v;
}

/* The sync thread's connection is gone (or the daemon stops): it must not send. */
static bool stale(void)
{
	return atomic_load(&rg.conn) != rg.sync_conn || atomic_load(&rg.stopping);
}

/* The sync thread's messages (RESET, IMG, IMGEND). */
static int send_named(struct hfs_heap *h, uint32_t type, const void *buf, size_t len)
{
	struct iovec iov[3];
	uint8_t nl;
	int n = name_iov(h, &nl, iov);
	int64_t seq;

	iov[n++] = (struct iovec){ .iov_base = (void *)buf, .iov_len = len };
	/* no lock is held here: a partner that applies more slowly than the link's timeout
	 * (a loaded host) is waited for while the link stays up (its liveness drops a dead
	 * one), or a whole image could never be sent to it */
	do
		seq = stale() ? -ECANCELED : rep_sendv(rg.l, type, iov, n);
	while (seq == -ETIMEDOUT);
	return seq < 0 ? (int)seq : 0;
}

/* Called with the heap frozen (hfs.ns and its quiesce lock held): what was queued is in
 * the image, what comes next goes after it (held back: streaming).  Nothing is sent here:
 * waiting for room in the link's queue under hfs.ns would stop every change on this node
 * for up to a timeout; sync_heap sends RESET once the heap thaws. */
static void frozen(void *arg)
{
	struct hfs_repl_heap *r = arg;
	uint64_t gen;

	if (getrandom(&gen, sizeof(gen), 0) != sizeof(gen))
		gen = (uint64_t)hfs_now_ns() ^ ((uint64_t)getpid() << 32);
	pthread_mutex_lock(&r->lock);
	pend_drop(r);
	r->lost = false;
	r->gen = gen | 1; /* 0: "no copy" */
	r->recno = 0;
	r->streaming = true;
	pthread_mutex_unlock(&r->lock);
}

/* r->lock held: send the log from its start (all of it is newer than what the partner
 * has), then let records go straight out again. */
static int send_log(struct hfs_repl_heap *r)
{
	uint64_t drops = r->drops, after = 0;
	bool any = false;
	int ret = 0;

	for (struct pend *p = r->pend; p && !ret;) {
		int64_t seq = stale() ? -ECANCELED : rep_send(rg.l, MSG_REC, p->data, p->len);

		if (seq == -ETIMEDOUT) {
			/* a slow partner, the link still up: let this heap's writers in (they
			 * only log while we stream), then go on after the last record sent; a
			 * log dropped meanwhile (overflow, takeover) ends this resync */
			pthread_mutex_unlock(&r->lock);
			sched_yield();
			pthread_mutex_lock(&r->lock);
			if (r->drops != drops || r->mirror)
				return -EAGAIN; /* not all sent: the next connect resyncs */
			for (p = r->pend; p && any && p->recno <= after; p = p->next)
				;
			continue;
		}
		ret = seq < 0 ? (int)seq : 0;
		p->seq = seq > 0 ? (uint64_t)seq : 0;
		if (!ret) {
			atomic_fetch_add(&rg.resync_done, p->len);
			after = p->recno;
			any = true;
			p = p->next;
		}
	}
	if (!ret) {
		r->streaming = false;
		r->wrote_apart = r->discard = false; /* the partner has it all now */
	}
	return ret;
}

/* The partner kept its copy (same generation) and the log reaches back to what it has:
 * send only the records it lacks. */
static bool can_resume(struct hfs_repl_heap *r)
{
	return r->peer_has && r->peer_gen == r->gen && !r->lost &&
	       r->peer_recno <= r->recno && (!r->pend || r->pend->recno <= r->peer_recno + 1);
}

static int resume_heap(struct hfs_repl_heap *r)
{
	int ret;

	pthread_mutex_lock(&r->lock);
	while (r->pend && r->pend->recno <= r->peer_recno)
		pend_pop(r); /* it has these */
	ret = send_log(r);
	pthread_mutex_unlock(&r->lock);
	return ret;
}

/* The image a full resync sends: pre-copied (hfs_image_live; RESYNC_FORK picks the
 * frozen fork, which a direct_map heap cannot have). */
struct image_src {
	struct hfs_live *lv;
	pid_t pid;
};

static bool by_fork(const struct hfs_repl_heap *r)
{
	return !r->h->dm && resync_fork();
}

static int image_begin(struct hfs_repl_heap *r, int *fd, struct image_src *src)
{
	if (by_fork(r))
		return hfs_image_snapshot_at(r->h, fd, &src->pid, frozen, r);
	return hfs_image_live(r->h, fd, &src->lv, frozen, r);
}

static int image_end(struct hfs_repl_heap *r, struct image_src *src)
{
	return by_fork(r) ? hfs_image_snapshot_end(src->pid) : hfs_image_live_end(src->lv);
}

static int sync_heap(struct hfs_repl_heap *r, char *buf)
{
	struct image_src src;
	uint64_t gen;
	int fd, ret;
	ssize_t n;

	ret = image_begin(r, &fd, &src);
	if (ret)
		return ret;
	pthread_mutex_lock(&r->lock);
	r->behind = false; /* the partner gets all of it again */
	gen = r->gen;
	pthread_mutex_unlock(&r->lock);
	/* first on the link for this heap: records wait in the log (streaming), WRITERS are
	 * not sent while streaming */
	ret = send_named(r->h, MSG_RESET, &gen, sizeof(gen));
	while (!ret && ((n = read(fd, buf, CHUNK)) > 0 || (n < 0 && errno == EINTR))) {
		if (n < 0)
			continue;
		ret = send_named(r->h, MSG_IMG, buf, (size_t)n);
		if (ret)
			break;
		atomic_fetch_add(&rg.resync_done, (uint64_t)n);
	}
	close(fd);
	ret = image_end(r, &src) ?: ret;
	if (!ret)
		ret = send_named(r->h, MSG_IMGEND, NULL, 0);
	/* the changes made meanwhile, in order, then records go straight out again */
	pthread_mutex_lock(&r->lock);
	if (!ret)
		ret = send_log(r);
	pthread_mutex_unlock(&r->lock);
	return ret;
}

/* Is ret the link going away under the resync?  A connection replaced by a newer one (both
 * nodes connect at once at the start) fails its sends with EPIPE before its down() has
 * run: wait for that down() a moment rather than call it a failed resync. */
static bool link_went(int ret)
{
	if (ret == -ENOTCONN || ret == -ECANCELED || stale())
		return true;
	if (ret != -EPIPE && ret != -ECONNRESET)
		return false;
	for (int k = 0; k < 200 && !stale(); k++)
		usleep(10000);
	return stale();
}

void *sync_thread(void *arg)
{
	struct rep_stats rs;
	char *buf = malloc(CHUNK);
	struct hfs_repl_heap *r;
	uint64_t total = 0;

	(void)arg;
	FOR_EACH_REPL(r) {
		if (r->mirror)
			continue;
		pthread_mutex_lock(&r->lock);
		/* split brain, or configs that clash: nothing moves until an operator decides */
		r->skip = r->split || r->misconf[0];
		r->resume = can_resume(r);
		r->peer_has = false;
		total += r->resume ? r->log_bytes : atomic_load(&r->h->held) + 4096;
		pthread_mutex_unlock(&r->lock);
	}
	atomic_store(&rg.resync_done, 0);
	atomic_store(&rg.resync_total, total);
	FOR_EACH_REPL(r) {
		int ret;

		if (!buf || r->mirror || r->skip || stale())
			continue;
		ret = r->resume ? resume_heap(r) : sync_heap(r, buf);
		/* the link went (its down() may not have run yet): the next connect resyncs */
		if (ret && !link_went(ret)) {
			hfs_log(HFS_LOG_ERR, "partner: resync of %s failed: %s; reconnecting",
				r->h->pol.name, strerror(-ret));
			/* never "connected" with a copy that lacks it: the next connect resyncs */
			free(buf);
			rep_kick(rg.l);
			return NULL;
		}
		if (ret)
			break;
	}
	free(buf);
	/* resyncing until the partner has applied it all (acked up to here), not just until
	 * it is queued: hfs_repl_status compares */
	rep_get_stats(rg.l, &rs);
	pthread_mutex_lock(&rg.lock);
	if (!stale()) { /* else a newer connection has its own resync coming */
		rg.sync_until = rs.last_seq;
		atomic_store(&rg.resync_total, atomic_load(&rg.resync_done));
		rg.syncing = false;
	}
	pthread_mutex_unlock(&rg.lock);
	/* everything acknowledged already: now.  Asked again, not taken from before: the
	 * last ack may have come between the two, and its on_acked saw us still syncing
	 * (the link stores acked_seq before it calls on_acked, so one of the two sees it) */
	rep_get_stats(rg.l, &rs);
	repl_say_connected(rs.acked_seq);
	return NULL;
}
