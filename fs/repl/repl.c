/*
 * repl.c — replication to a partner mount (SPEC "Replication"): the fs side of the link
 * in replica/ (which knows frames, auth, ordering, acks and liveness, nothing of heaps).
 *
 * Ownership.  A heap with `replicate = sync|async` in this node's config is OWNED here;
 * the partner shows it as a MIRROR at the same path.  Mirrors appear when the pair
 * connects: each side sends HELLO listing the heaps it owns (name, size, min_block,
 * layout), the other makes the missing ones.  Whether a heap may be changed by users is
 * decided in one place in the core, hfs_writable() (EROFS on a mirror), from the heap's
 * mirror flag, which we keep (rh_set_mirror); the applier (image.c), through which the
 * mirror applies the partner's changes, is exempt.
 *
 * One mutation path.  Every change to an owned heap is one image change record
 * (img/img.h): we observe every replicated heap (change.c), and the core hands us each
 * change (out.c's repl_changed) while it still holds the lock that orders it (hfs.ns for
 * the namespace, the inode lock for data and attributes), so the records of one heap
 * leave in the order they were applied.  The
 * mirror decodes each with img_rec_decode (the image reader's checks) and applies it with
 * hfs_apply_mem, the applier image restores use, which calls the same core functions.
 * Records name inodes by their identity in the heap (hfs_inode.id), the same on both sides.
 *
 * Resync.  The owner keeps every record in a per-heap change log until the partner
 * acknowledges it (bounded: past LOG_MAX the log is dropped).  At each connect both sides
 * send HELLO (per heap: owned or mirrored, epoch, image generation, last applied record
 * number, "wrote while apart", "discard", "fresh"); a partner whose copy has our generation
 * and whose record number the log reaches back to gets only the records it lacks,
 * otherwise the heap goes whole: a live pre-copy (hfs_image_live, sync.c) drops the log
 * while the heap is frozen for its tree (what the log held is in the image), RESET and the
 * image stream follow (IMG ... IMGEND; files' bytes copied as they are by then), then the
 * log of what changed meanwhile, which makes the copy consistent.  The mirror empties its copy at
 * RESET and restores the stream through a pipe in a thread; that applier then stays for
 * the live records.  A sync thread sends only on the connection it was started for.
 *
 * Modes.  sync: a change's completion (the caller's, struct hfs_completion) learns which
 * records to wait for (wait.c's repl_wait_for); op_write's reply is deferred
 * (hfs_complete_defer) and sent from the link's acked() on the receive thread (over
 * io_uring, and for other changes, the worker waits in hfs_complete_wait, at most
 * `timeout`).  async: nothing waits on write; flush (close) and
 * fsync call hfs_repl_flush.  A lost link costs a write at most `timeout` once; then the
 * owner goes on alone (`degraded`), logging.
 *
 * Room.  A mirror takes a block's memory from its host when it allocates it (file.c
 * alloc_block, msrc_populate): a host short of memory answers ENOSPC, and a data record is
 * applied whole or not at all, the ack saying -ENOSPC (no_room_here).  The link stays.
 * sync: the writer, after its wait and with no lock held across it, sees the refusal
 * (deferq.refused) and gives the write back (give_back -> hfs_write_undo: truncate, logged),
 * then answers ENOSPC.  async: the mirror stops applying the heap until the next image and
 * the owner shows it `behind` (README "Space").
 *
 * Takeover.  Per heap an epoch; promote (or auto_failover) makes a mirror the owner with a
 * higher one.  When both claim a heap the two HELLOs decide the same way on both sides
 * (owner_wins): back empty loses, --discard-peer wins, both wrote apart is split brain
 * (nothing moves), then the higher epoch.  Files the old owner had open for writing (it
 * says which, MSG_WRITERS) are marked user.heapfs.state = interrupted.  verify: each side
 * hashes its copies (xxh3 per file) and the asking side compares (.heapfs/verify).
 *
 * Locking: per heap, r->lock orders "log, send or hold back" with the resync and guards
 * the takeover fields (taken under hfs.ns or an inode lock, never the other way round);
 * r->alock, the applier's lock, is outermost (r->alock, then hfs.ns, inode locks,
 * r->lock): whoever uses r->apply holds it (the receive thread applying a record, RESET
 * emptying the copy, the marks of a takeover), and so does whoever replaces or frees it or
 * flips r->mirror (promote on a FUSE worker, the takeovers of HELLO and auto_failover, the
 * restore thread publishing its applier); so no record is applied to a heap that is no
 * longer a mirror, and no applier is freed under its user.  r->apply is written under
 * both locks (send_hello reads it under r->lock).  The restore thread applies with an
 * applier of its own and never takes r->alock while it reads the pipe the receive thread
 * fills; a promote while it runs (r->restoring) is refused (EINPROGRESS: half an
 * image).  The link's callbacks run on its receive thread and walk rg.rv (append-only),
 * not hfs.heapv; rg.lock guards the state and the sync thread's handle (never joined
 * under it); deferq.lock the deferred replies; verif.lock one verify at a time, ans.lock
 * its answers to the partner (verify.c).
 *
 * Files: out.c (records out), wait.c (sync waits, flushes, room), sync.c (resync),
 * mirror.c (HELLO, mirrors, takeover decisions, the applier), verify.c; here the link's
 * callbacks, promote, start, stop and status.
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

struct repl_state rg = { .lock = PTHREAD_MUTEX_INITIALIZER };
struct repl_deferq deferq = { .lock = PTHREAD_MUTEX_INITIALIZER };
static int observer = -1; /* ours (change.c): out.c's repl_changed */

const char *hfs_repl_role(const struct hfs_heap *h)
{
	return h->repl && h->repl->mirror ? "mirror" : "owner";
}

struct hfs_repl_heap *rh_new(struct hfs_heap *h, bool mirror)
{
	struct hfs_repl_heap *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->h = h;
	r->mirror = mirror;
	r->pipe_w = -1;
	r->pend_tail = &r->pend;
	r->streaming = true; /* until the partner says what it has */
	pthread_mutex_init(&r->lock, NULL);
	pthread_mutex_init(&r->alock, NULL);
	pthread_mutex_lock(&rg.lock);
	if (rg.nr < REPL_MAX) {
		rg.rv[rg.nr] = r;
		atomic_fetch_add(&rg.nr, 1);
	} else {
		free(r);
		r = NULL;
	}
	pthread_mutex_unlock(&rg.lock);
	if (r) {
		atomic_store(&h->mirror, mirror);
		hfs_observe(h, observer, true);
	}
	return r;
}

void rh_set_mirror(struct hfs_repl_heap *r, bool mirror)
{
	r->mirror = mirror;
	atomic_store(&r->h->mirror, mirror); /* the core's: hfs_writable */
}


/* ---- the link's callbacks --------------------------------------------------------- */


static void on_up(void *arg, const char *peer)
{
	(void)arg;
	/* the link may come up before rep_start() has stored it: it is about to */
	for (int k = 0; k < 5000 && !atomic_load(&rg.l); k++)
		usleep(1000);
	/* records wait (streaming since the link went down or the start) until the sync
	 * thread has sent what the partner lacks: until then the state is resyncing */
	pthread_mutex_lock(&rg.lock);
	atomic_fetch_add(&rg.conn, 1);
	pthread_mutex_lock(&deferq.lock);
	deferq.conn = atomic_load(&rg.conn);
	deferq.acked = 0;
	deferq.nref = 0;
	pthread_mutex_unlock(&deferq.lock);
	rg.up = true;
	rg.syncing = true;
	rg.sync_until = 0;
	rg.said_connected = false;
	snprintf(rg.peer, sizeof(rg.peer), "%s", peer);
	pthread_mutex_unlock(&rg.lock);
	ha_up();
	/* (what clashes stays as it was until this connection's HELLO says otherwise: a
	 * reconnect repeats no message) */
	hfs_log(HFS_LOG_NOTICE, "partner: link up to %s", peer);
	send_hello();
}

/* resyncing -> connected: said once per connection, when the partner has applied all of
 * the resync (the sync thread, or the ack that completes it) */
void repl_say_connected(uint64_t acked)
{
	char peer[sizeof(rg.peer)];
	bool say;

	pthread_mutex_lock(&rg.lock);
	say = rg.up && !rg.syncing && !rg.said_connected && acked >= rg.sync_until;
	if (say)
		rg.said_connected = true;
	memcpy(peer, rg.peer, sizeof(peer)); /* the sync thread calls this too */
	pthread_mutex_unlock(&rg.lock);
	if (say) {
		hfs_log(HFS_LOG_NOTICE, "partner: %s has everything: connected", peer);
		ha_connected();
	}
}

static void on_down(void *arg, const char *why)
{
	struct hfs_repl_heap *r;
	bool hooked;

	(void)arg;
	/* first: no writer may see the link down with the gate open (a kick of ours, which
	 * reconnects at once, asks nobody) */
	/* (a connection replaced by a newer one, both nodes connecting at once: the partner
	 * is not lost, the newer connection is already up or coming; link.c's words) */
	bool replaced = strstr(why, "replaced by a newer connection") != NULL;

	hooked = strcmp(why, "kicked") && !replaced && ha_down();
	pthread_mutex_lock(&rg.lock);
	atomic_fetch_add(&rg.conn, 1);
	rg.up = false;
	pthread_mutex_unlock(&rg.lock);
	pthread_mutex_lock(&deferq.lock);
	deferq.conn = atomic_load(&rg.conn);
	pthread_mutex_unlock(&deferq.lock);
	if (!hooked) /* the owner goes on alone: reply to every waiting write */
		deferred_run(UINT64_MAX); /* (with on_peer_lost: once it answers, ha.c) */
	hfs_log(HFS_LOG_NOTICE, "partner: link down (%s)", why);
	FOR_EACH_REPL(r) {
		if (r->mirror) {
			bool took = false;
			uint64_t epoch;

			mirror_join(r, true); /* a half image: the next connect resets */
			pthread_mutex_lock(&r->alock);
			pthread_mutex_lock(&r->lock);
			if (hfs.conf->partner.auto_failover && !replaced && r->mirror && r->apply) {
				__become_owner(r, r->epoch);
				took = true;
			}
			epoch = r->epoch;
			pthread_mutex_unlock(&r->lock);
			pthread_mutex_unlock(&r->alock);
			if (took) {
				mark_interrupted(r);
				hfs_log(HFS_LOG_NOTICE, "partner: %s: the owner is gone: we own it "
					"now (auto_failover, epoch %llu)", r->h->pol.name,
					(unsigned long long)epoch);
			}
			continue;
		}
		/* nothing more leaves until the partner is back and says what it has */
		pthread_mutex_lock(&r->lock);
		r->streaming = true;
		for (struct pend *p = r->pend; p; p = p->next)
			p->seq = 0;
		pthread_mutex_unlock(&r->lock);
	}
}

static int on_recv(void *arg, uint32_t type, const void *payload, size_t len)
{
	const char *p = payload;
	char name[CONF_NAME_MAX + 1];
	struct hfs_repl_heap *r;
	size_t nl;

	(void)arg;
	if (type == MSG_HELLO)
		return recv_hello(p, len);
	if (type == MSG_VERIFY)
		return verify_answer(p, len);
	if (type == MSG_VERIFY_REPLY)
		return verify_reply(p, len);
	nl = len ? (uint8_t)p[0] : 0;
	if ((type > MSG_REC && type != MSG_WRITERS) || !nl || nl + 1 > len)
		return -EBADMSG;
	memcpy(name, p + 1, nl);
	name[nl] = 0;
	/* not mirrored here (no room past REPL_MAX, ours too, or promoted here: the HELLO
	 * after it settles that): "not here", which the owner takes like a lost partner for
	 * the change; a refusal would resync the link over and over and fail its closes */
	r = repl_named(name);
	if (!r || !r->mirror)
		return -ENOTCONN;
	p += 1 + nl;
	len -= 1 + nl;
	switch (type) {
	case MSG_RESET: {
		uint64_t gen;

		if (len != sizeof(gen))
			return -EBADMSG;
		memcpy(&gen, p, sizeof(gen));
		return mirror_reset(r, gen);
	}
	case MSG_IMG:
		return mirror_img(r, p, len);
	case MSG_IMGEND:
		return mirror_join(r, false);
	case MSG_WRITERS:
		return mirror_writers(r, p, len);
	default:
		return mirror_rec(r, p, len);
	}
}

static void on_acked(void *arg, uint64_t seq, int status)
{
	static atomic_uint_fast64_t kicked; /* the connection a refusal kicked */
	struct hfs_repl_heap *r;

	(void)arg;
	if (status == -ENOSPC) /* before the replies: they look for it */
		no_room(seq);
	pthread_mutex_lock(&deferq.lock);
	if (seq > deferq.acked)
		deferq.acked = seq;
	pthread_mutex_unlock(&deferq.lock);
	deferred_run(seq); /* sync writes waiting for this: applied there, refused or lost */
	repl_say_connected(seq);
	if (status == 0) { /* applied there: the log need not keep it */
		FOR_EACH_REPL(r) {
			if (r->mirror)
				continue;
			pthread_mutex_lock(&r->lock);
			while (r->pend && r->pend->seq && r->pend->seq <= seq)
				pend_pop(r);
			pthread_mutex_unlock(&r->lock);
		}
	}
	/* the mirror could not apply a change: its copy is no longer ours; a reconnect
	 * gives it a full image.  Once per connection: it refuses the records after it too. */
	if (status < 0 && status != -ENOTCONN && status != -ENOSPC &&
	    atomic_exchange(&kicked, atomic_load(&rg.conn)) != atomic_load(&rg.conn)) {
		hfs_log(HFS_LOG_WARNING, "partner: a change was refused (%s); resyncing",
			strerror(-status));
		rep_kick(rg.l);
	}
}


/* ---- takeover ---------------------------------------------------------------------- */

int hfs_repl_promote(const char *heap, bool force, bool discard)
{
	struct hfs_repl_heap *r;
	bool up, any = false, busy = false;
	uint64_t epoch;

	if (!rg.on)
		return -ENOTCONN; /* no partner section */
	pthread_mutex_lock(&rg.lock);
	up = rg.up;
	pthread_mutex_unlock(&rg.lock);
	if (up && !force && !discard && ha_peer_owns(heap))
		return -EBUSY; /* the owner is alive and connected */
	FOR_EACH_REPL(r) {
		if (heap && heap[0] && strcmp(r->h->pol.name, heap))
			continue;
		any = true;
		pthread_mutex_lock(&r->alock);
		pthread_mutex_lock(&r->lock);
		if (r->restoring) { /* half an image here: not a copy to own */
			pthread_mutex_unlock(&r->lock);
			pthread_mutex_unlock(&r->alock);
			busy = true;
			continue;
		}
		if (r->mirror)
			__become_owner(r, r->epoch);
		if (discard) {
			r->discard = true; /* the partner's copy goes: it mirrors ours */
			r->split = false;
			r->epoch++;
		}
		epoch = r->epoch;
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_unlock(&r->alock);
		mark_interrupted(r);
		hfs_log(HFS_LOG_NOTICE, "partner: %s: promoted (epoch %llu)%s", r->h->pol.name,
			(unsigned long long)epoch, discard ? ", the partner's copy is discarded" : "");
	}
	if (!any)
		return -ENOENT;
	if (up && rg.l)
		rep_kick(rg.l); /* a new HELLO exchange settles who owns what */
	else
		ha_promoted_alone(); /* on_peer_lost is asked before it goes on alone */
	return busy ? -EINPROGRESS : 0;
}

/* ---- start, stop, status ------------------------------------------------------------ */

/* The line of the config that sets secret_file (conf keeps no line for the partner
 * section), so a refusal reads like every other config error: FILE:LINE. */
static int secret_line(void)
{
	FILE *f = fopen(hfs.conf->source, "r");
	char buf[4096];
	int n = 0, found = 0;

	while (f && !found && fgets(buf, sizeof(buf), f)) {
		n++;
		if (strstr(buf, "secret_file"))
			found = n;
	}
	if (f)
		fclose(f);
	return found;
}

int hfs_repl_init(void)
{
	const struct conf_partner *pc = &hfs.conf->partner;
	char why[256] = "";
	int ret;

	if (!pc->present)
		return 0;
	observer = hfs_observer_add(repl_changed, NULL);
	if (observer < 0)
		return observer;
	ret = rep_secret_load(pc->secret_file, rg.key, why, sizeof(why));
	if (ret) {
		fprintf(stderr, "heapfs: %s:%d: secret_file \"%s\": %s\n", hfs.conf->source,
			secret_line(), pc->secret_file, why[0] ? why : strerror(-ret));
		return ret;
	}
	for (unsigned k = 0; k < hfs.nheaps; k++) {
		struct hfs_heap *h = hfs.heapv[k];

		/* managed: a cluster manager promotes one of the two (ha.c) */
		if (h->pol.replicate != CONF_REPLICATE_NONE &&
		    !(h->repl = rh_new(h, pc->managed)))
			return -ENOMEM;
		if (h->repl) {
			h->repl->epoch = 1;
			/* restored from its image (hfs_images_load ran): not "back empty" */
			h->repl->loaded = h->dir && h->dir->dir.nents;
		}
	}
	rg.on = true;
	return 0;
}

int hfs_repl_start(void)
{
	const struct conf_partner *pc = &hfs.conf->partner;
	struct rep_config c = { .node = pc->node, .listen = pc->listen, .connect = pc->connect,
				.timeout_ms = pc->timeout_ms };
	static const struct rep_callbacks cb = { .up = on_up, .down = on_down,
						 .recv = on_recv, .acked = on_acked };
	struct rep_link *l;
	int ret;

	if (!rg.on)
		return 0;
	/* the link's own lines (refusals, drops) become log messages */
	c.log = rg.log = hfs_log_stream(HFS_LOG_WARNING);
	memcpy(c.key, rg.key, sizeof(c.key));
	c.plaintext = !pc->encrypt;
	if (c.plaintext)
		hfs_log(HFS_LOG_WARNING, "partner: encrypt = false: the link's frames go in the "
			"clear (only for a link that is private already)");
	ret = deferq_start();
	if (!ret)
		ret = rep_start(&c, &cb, NULL, &l);
	if (!ret) {
		atomic_store(&rg.l, l);
		return 0;
	}
	deferq_stop();
	fclose(rg.log);
	rg.log = NULL;
	hfs_log(HFS_LOG_ERR, "partner: cannot listen on %s: %s", pc->listen, strerror(-ret));
	return ret;
}

void hfs_repl_stop(void)
{
	struct rep_link *l = rg.l;
	struct hfs_repl_heap *r;
	bool on;

	if (!l)
		return;
	/* the sync thread first (it stops at its next chunk): it uses the link */
	atomic_store(&rg.stopping, true);
	pthread_mutex_lock(&rg.lock);
	on = rg.sync_on;
	rg.sync_on = false;
	pthread_mutex_unlock(&rg.lock);
	if (on) /* not under rg.lock: it takes it at its end */
		pthread_join(rg.sync_th, NULL);
	verify_stop(); /* it uses the link too */
	ha_stop();     /* the on_peer_lost program's thread (it demotes) */
	rep_stop(l); /* joins the receive thread: no callback runs after this */
	rg.l = NULL;
	if (rg.log) /* after the link's threads: nobody writes it any more */
		fclose(rg.log);
	rg.log = NULL;
	deferq_stop();
	deferred_run(UINT64_MAX); /* none should be left; never leave a request unanswered */
	FOR_EACH_REPL(r) {
		mirror_join(r, true);
		if (r->apply)
			hfs_apply_end(r->apply, false);
		pend_drop(r);
		wopen_clear(r);
		free(r->marks); /* none: marked where they were collected */
		hfs_observe(r->h, observer, false);
		atomic_store(&r->h->mirror, false);
		r->h->repl = NULL;
		free(r);
	}
	atomic_store(&rg.nr, 0);
}

void hfs_repl_status(struct hfs_repl_status *st)
{
	struct rep_stats rs = { 0 };
	struct hfs_repl_heap *r;

	memset(st, 0, sizeof(*st));
	if (!rg.on) {
		st->state = "none";
		return;
	}
	if (rg.l)
		rep_get_stats(rg.l, &rs);
	pthread_mutex_lock(&rg.lock);
	st->state = !rg.up ? "degraded"
		    : rg.syncing || rs.acked_seq < rg.sync_until ? "resyncing" : "connected";
	if (rg.misconf[0] || rs.misconfigured[0]) {
		st->state = "misconfigured"; /* what only the operator can fix, first */
		snprintf(st->reason, sizeof(st->reason), "%s",
			 rg.misconf[0] ? rg.misconf : rs.misconfigured);
	}
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		if (st->reason[0])
			; /* misconfigured: said above */
		else if (r->split)
			st->state = "split-brain";
		else if (r->behind && rg.up && !strcmp(st->state, "connected"))
			st->state = "behind";
		if (r->epoch > st->epoch)
			st->epoch = r->epoch;
		pthread_mutex_unlock(&r->lock);
	}
	snprintf(st->peer, sizeof(st->peer), "%s", rg.up ? rg.peer : "");
	pthread_mutex_unlock(&rg.lock);
	st->lag_bytes = rs.unacked_bytes;
	snprintf(st->cipher, sizeof(st->cipher), "%s", rs.cipher);
	st->key_rotated_ms = rs.key_rotated_ms;
	st->rekeys = rs.rekeys;
	st->sent_bytes = rs.sent_bytes;
	st->recv_bytes = rs.recv_bytes;
	st->resync_done = atomic_load(&rg.resync_done);
	st->resync_total = atomic_load(&rg.resync_total);
}
