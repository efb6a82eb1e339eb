/*
 * repl.c — replication to a partner mount (SPEC "Replication"): the fs side of the link
 * in replica/ (which knows frames, auth, ordering, acks and liveness, nothing of heaps).
 *
 * Ownership.  A heap with `replicate = sync|async` in this node's config is OWNED here;
 * the partner shows it as a MIRROR at the same path.  Mirrors appear when the pair
 * connects: each side sends HELLO listing the heaps it owns (name, size, min_block,
 * layout), the other makes the missing ones.  Whether a heap may be changed by users is
 * decided in one place, hfs_repl_writable() (EROFS on a mirror), which the core's entry
 * points for changes call (dir.c's __dir_writable for the namespace, file.c and xattr.c
 * for data and attributes); the mirror's own apply thread is exempt.
 *
 * One mutation path.  Every change to an owned heap is one image change record
 * (img/img.h): the core function that makes it calls hfs_repl_out() while it still holds
 * the lock that orders the change (hfs.ns for the namespace, the inode lock for data and
 * attributes), so the records of one heap leave in the order they were applied.  The
 * mirror decodes each with img_rec_decode (the image reader's checks) and applies it with
 * hfs_apply_mem, the applier image restores use, which calls the same core functions.
 * Records name inodes by their identity in the heap (hfs_inode.id), the same on both sides.
 *
 * Resync.  The owner keeps every record in a per-heap change log until the partner
 * acknowledges it (bounded: past LOG_MAX the log is dropped).  At each connect both sides
 * send HELLO (per heap: owned or mirrored, epoch, image generation, last applied record
 * number, "wrote while apart", "discard", "fresh"); a partner whose copy has our generation
 * and whose record number the log reaches back to gets only the records it lacks,
 * otherwise the heap goes whole: a forked snapshot (hfs_image_snapshot_at) sends RESET
 * while the heap is frozen (what the log held is in the image), the image stream follows
 * (IMG ... IMGEND), then the log of what changed meanwhile.  The mirror empties its copy at
 * RESET and restores the stream through a pipe in a thread; that applier then stays for
 * the live records.  A sync thread sends only on the connection it was started for.
 *
 * Modes.  sync: op_write's reply is deferred (hfs_repl_defer) and sent from the link's
 * acked() on the receive thread (over io_uring, and for other changes, the worker waits in
 * hfs_repl_wait, at most `timeout`).  async: nothing waits on write; flush (close) and
 * fsync call hfs_repl_flush.  A lost link costs a write at most `timeout` once; then the
 * owner goes on alone (`degraded`), logging.
 *
 * Room.  A mirror takes a block's memory from its host when it allocates it (file.c
 * alloc_block, msrc_populate): a host short of memory answers ENOSPC, and a data record is
 * applied whole or not at all, the ack saying -ENOSPC (no_room_here).  The link stays.
 * sync: the writer, after its wait and with no lock held across it, sees the refusal
 * (dq.refused) and gives the write back (give_back -> hfs_write_undo: truncate, logged),
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
 * the link's callbacks run on its receive thread and walk g.rv (append-only), not
 * hfs.heapv; g.lock guards the state and the sync thread's handle (never joined under
 * it); dq.lock the deferred replies; vf.lock one verify at a time.
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

#include "fs_i.h"
#include "img.h"
#include "replica.h"

enum {
	MSG_HELLO = REP_TYPE_USER, /* the sender's replicated heaps (struct hello_heap) */
	MSG_RESET,                 /* name, generation: a full image of the heap follows */
	MSG_IMG,                   /* name, bytes of the image stream */
	MSG_IMGEND,                /* name: the stream is complete */
	MSG_REC,                   /* name, recno, one change record */
	MSG_VERIFY,                /* send your checksums (heapfsctl verify) */
	MSG_VERIFY_REPLY,          /* JSON: heap -> path -> "kind size mode xxh3" */
	MSG_WRITERS,               /* name, id, open: a file is (no longer) open for writing */
};

/* An identity open for writing on the owner (the mirror's set). */
struct wid {
	UT_hash_handle hh;
	uint64_t id;
};

#define CHUNK (1u << 20)
#define REPL_MAX 256 /* replicated heaps, both sides together */

/* One record message kept by the owner until the partner acknowledged it: what a
 * partner that comes back with its memory is sent again (from its last applied recno). */
struct pend {
	struct pend *next;
	uint64_t recno;
	uint64_t seq; /* on the current connection; 0: not sent there */
	size_t len;
	char data[];
};

/* The change log's bound per heap: past it the log is dropped and the partner gets a full
 * image when it returns. */
#define LOG_MAX(h) ((h)->pol.size < (128ull << 20) ? (h)->pol.size : (128ull << 20))

struct hfs_repl_heap {
	struct hfs_heap *h;
	_Atomic bool mirror;        /* flips at a takeover */
	pthread_mutex_t lock;
	/* takeover (r->lock): the epoch rises with every promotion; wrote_apart: changed
	 * while the partner was away (both: split brain); discard: promote --discard-peer */
	uint64_t epoch;
	bool wrote_apart, split, discard;
	bool loaded;                /* an owner that started with data (an image) */
	/* owner */
	bool streaming;             /* not connected, or a resync in flight: records wait */
	struct pend *pend, **pend_tail; /* the change log, oldest first */
	uint64_t log_bytes;
	bool lost;                  /* the log overflowed: the next sync is a full one */
	uint64_t gen, recno;        /* the image generation and its last record (the mirror:
				       what it has applied) */
	bool peer_has;              /* the partner's HELLO said it holds gen up to peer_recno */
	bool resume, skip;          /* (the sync thread's) send only the log / nothing */
	bool behind;                /* async owner: the partner had no room ("Room") */
	bool noroom;                /* async mirror: refused a change for room, until RESET */
	bool peer_owns;             /* (receive thread) the partner's HELLO claims it */
	uint64_t peer_gen, peer_recno;
	/* mirror: the image restore (a thread reading a pipe), then the live applier */
	int pipe_w;
	pthread_t th;
	bool th_on;
	int th_ret;
	struct hfs_apply *apply;
	char why[256];
	struct wid *wopen;          /* r->lock: open for writing on the owner */
	struct hfs_inode **marks;   /* r->lock: to mark "interrupted" after a takeover */
	size_t nmarks;
};

static struct {
	bool on;
	struct rep_link *_Atomic l;
	uint8_t key[REP_KEY_BYTES];
	pthread_mutex_t lock;
	_Atomic bool up;  /* read by writers (send_rec) without g.lock */
	bool syncing;
	char peer[REP_NODE_MAX + 1];
	pthread_t sync_th;
	bool sync_on;
	atomic_uint_fast64_t resync_done, resync_total;
	/* every replicated heap, owned or mirrored: append-only (such heaps are never
	 * removed), so the link's threads walk it without hfs.ns */
	atomic_bool stopping;
	/* bumped at every up and down: a sync thread sends only on the connection it was
	 * started for (after a replaced connection its stream would land in the middle of
	 * the new one) */
	atomic_uint_fast64_t conn;
	uint64_t sync_conn;         /* the sync thread's */
	uint64_t sync_until;        /* g.lock: the last seq of the resync (this connection) */
	struct hfs_repl_heap *rv[REPL_MAX];
	atomic_uint nr;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER };

#define FOR_EACH_REPL(r) \
	for (unsigned k_ = 0, n_ = atomic_load(&g.nr); k_ < n_ && ((r) = g.rv[k_], 1); k_++)

static __thread bool applying;     /* this thread applies the partner's changes */
static __thread uint64_t wait_seq; /* sync mode: the last record this thread sent */
static __thread uint64_t wait_conn; /* and on which connection (g.conn then) */
static __thread uint64_t wait_first; /* the first record sent since the last wait */

/* The write this thread last made (hfs_repl_wrote): what to give back when the partner
 * had no room for it. */
struct wnote {
	struct hfs_inode *i; /* NULL: the last change was not a write */
	uint64_t old, off, end;
};
static __thread struct wnote wrote;

/* Replies deferred until the partner acknowledged a seq (sync writes, hfs_repl_defer). */
struct deferred {
	struct deferred *next;
	uint64_t first, seq; /* the records of the change */
	struct wnote w;
	void (*fn)(void *arg, int err);
	void *arg;
};
#define REFUSED_MAX 64
static struct {
	pthread_mutex_t lock;
	struct deferred *list;
	uint64_t conn, acked; /* the current connection, its highest acknowledged seq */
	/* the latest records of this connection the partner refused for room (a ring) */
	uint64_t refused[REFUSED_MAX];
	unsigned nref;
} dq = { .lock = PTHREAD_MUTEX_INITIALIZER };

int hfs_repl_writable(const struct hfs_heap *h)
{
	return h && h->repl && h->repl->mirror && !applying ? -EROFS : 0;
}

bool hfs_repl_mirror(const struct hfs_heap *h)
{
	return h && h->repl && h->repl->mirror;
}

const char *hfs_repl_role(const struct hfs_heap *h)
{
	return h->repl && h->repl->mirror ? "mirror" : "owner";
}

static struct hfs_repl_heap *rh_new(struct hfs_heap *h, bool mirror)
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
	pthread_mutex_lock(&g.lock);
	if (g.nr < REPL_MAX) {
		g.rv[g.nr] = r;
		atomic_fetch_add(&g.nr, 1);
	} else {
		free(r);
		r = NULL;
	}
	pthread_mutex_unlock(&g.lock);
	return r;
}

/* ---- the owner: records out ------------------------------------------------------- */

static void pend_pop(struct hfs_repl_heap *r)
{
	struct pend *p = r->pend;

	r->pend = p->next;
	if (!r->pend)
		r->pend_tail = &r->pend;
	r->log_bytes -= p->len;
	free(p);
}

static void pend_drop(struct hfs_repl_heap *r)
{
	while (r->pend)
		pend_pop(r);
}

/* The heap's name as the first part of a message: one length byte, then the name. */
static int name_iov(struct hfs_heap *h, uint8_t *len, struct iovec *iov)
{
	size_t n = strlen(h->pol.name);

	*len = (uint8_t)n;
	iov[0] = (struct iovec){ .iov_base = len, .iov_len = 1 };
	iov[1] = (struct iovec){ .iov_base = h->pol.name, .iov_len = n };
	return 2;
}

/* r->lock held: log the record message (unless the log is lost), send it unless a
 * resync holds records back. */
static void send_rec(struct hfs_repl_heap *r, struct iovec *iov, int n)
{
	struct pend *p = NULL;
	size_t len = 0;
	int64_t seq;

	for (int k = 0; k < n; k++)
		len += iov[k].iov_len;
	if (r->streaming && !g.up)
		r->wrote_apart = true;
	if (!r->lost && r->log_bytes + len <= LOG_MAX(r->h))
		p = malloc(sizeof(*p) + len);
	if (p) {
		p->next = NULL;
		p->recno = r->recno;
		p->seq = 0;
		p->len = 0;
		for (int k = 0; k < n; k++) {
			memcpy(p->data + p->len, iov[k].iov_base, iov[k].iov_len);
			p->len += iov[k].iov_len;
		}
		*r->pend_tail = p;
		r->pend_tail = &p->next;
		r->log_bytes += len;
	} else if (!r->lost) {
		r->lost = true; /* too much to keep: the partner will need a full image */
		pend_drop(r);
	}
	if (r->streaming)
		return;
	seq = rep_sendv(g.l, MSG_REC, iov, n);
	if (seq > 0 && p)
		p->seq = (uint64_t)seq;
	if (seq > 0 && r->h->pol.replicate == CONF_REPLICATE_SYNC) {
		if (!wait_seq)
			wait_first = (uint64_t)seq;
		wait_seq = (uint64_t)seq;
		wait_conn = atomic_load(&g.conn);
	}
}

void __hfs_repl_out(struct hfs_heap *h, uint32_t type, const void *fixed, const void *t0,
		    uint32_t l0, const void *t1, uint32_t l1)
{
	struct hfs_repl_heap *r = h->repl;
	char hdr[IMG_REC_HDR];
	struct iovec iov[7];
	uint64_t recno;
	uint8_t nl;
	int n;

	if (!g.l || r->mirror)
		return;
	n = name_iov(h, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &recno, .iov_len = sizeof(recno) };
	n += img_rec_iov(hdr, type, fixed, t0, l0, t1, l1, iov + n);
	pthread_mutex_lock(&r->lock);
	recno = ++r->recno;
	send_rec(r, iov, n);
	pthread_mutex_unlock(&r->lock);
}

void __hfs_repl_data(struct hfs_heap *h, uint64_t id, uint64_t off, const void *buf,
		     uint64_t len)
{
	while (len) {
		uint32_t n = len > IMG_DATA_MAX ? IMG_DATA_MAX : (uint32_t)len;
		struct img_data d = { .id = id, .off = off };

		__hfs_repl_out(h, IMG_DATA, &d, buf, n, NULL, 0);
		buf = (const char *)buf + n;
		off += n;
		len -= n;
	}
}

void __hfs_repl_inode(struct hfs_inode *i, const char *target)
{
	struct img_inode in = {
		.id = i->id, .mode = i->mode, .uid = i->uid, .gid = i->gid, .rdev = i->rdev,
		.nlink = (uint32_t)i->nlink, .size = i->size, .atime_ns = hfs_ts_ns(i->atime),
		.mtime_ns = hfs_ts_ns(i->mtime), .ctime_ns = hfs_ts_ns(i->ctime),
	};
	struct img_symlink sl = { .id = i->id };

	in.kind = i->kind == HFS_DIR ? IMG_K_DIR : i->kind == HFS_REG ? IMG_K_REG
		: i->kind == HFS_LNK ? IMG_K_LNK : IMG_K_SPECIAL;
	__hfs_repl_out(i->heap, IMG_INODE, &in, NULL, 0, NULL, 0);
	if (target)
		__hfs_repl_out(i->heap, IMG_SYMLINK, &sl, target, (uint32_t)strlen(target), NULL, 0);
}

void __hfs_repl_created(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	__hfs_repl_inode(i, i->kind == HFS_LNK ? i->lnk.target : NULL);
	__hfs_repl_link(dir, name, i);
}

void __hfs_repl_link(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	struct img_link l = { .parent = dir->id, .child = i->id,
			      .name_len = (uint32_t)strlen(name) };

	__hfs_repl_out(dir->heap, IMG_LINK, &l, name, l.name_len, NULL, 0);
}

void __hfs_repl_unlink(struct hfs_inode *dir, const char *name)
{
	struct img_unlink u = { .parent = dir->id, .name_len = (uint32_t)strlen(name) };

	__hfs_repl_out(dir->heap, IMG_UNLINK, &u, name, u.name_len, NULL, 0);
}

void __hfs_repl_rename(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
		       const char *nname, unsigned flags)
{
	struct img_rename rn = { .old_parent = dir->id, .new_parent = ndir->id,
				 .old_len = (uint32_t)strlen(name),
				 .new_len = (uint32_t)strlen(nname), .flags = flags };

	__hfs_repl_out(dir->heap, IMG_RENAME, &rn, name, rn.old_len, nname, rn.new_len);
}

void __hfs_repl_truncate(struct hfs_inode *i)
{
	struct img_truncate t = { .id = i->id, .size = i->size };

	__hfs_repl_out(i->heap, IMG_TRUNCATE, &t, NULL, 0, NULL, 0);
}

void __hfs_repl_attr(struct hfs_inode *i)
{
	struct img_setattr sa = {
		.id = i->id, .mask = IMG_SET_MODE | IMG_SET_UID | IMG_SET_GID | IMG_SET_ATIME |
			IMG_SET_MTIME | IMG_SET_CTIME,
		.mode = i->mode, .uid = i->uid, .gid = i->gid, .atime_ns = hfs_ts_ns(i->atime),
		.mtime_ns = hfs_ts_ns(i->mtime), .ctime_ns = hfs_ts_ns(i->ctime),
	};

	if (i->kind == HFS_REG) {
		sa.mask |= IMG_SET_SIZE;
		sa.size = i->size;
	}
	__hfs_repl_out(i->heap, IMG_SETATTR, &sa, NULL, 0, NULL, 0);
}

void __hfs_repl_xattr(struct hfs_inode *i, const char *name, const void *value, size_t size)
{
	uint32_t nl = (uint32_t)strlen(name);

	if (value) {
		struct img_xattr x = { .id = i->id, .name_len = nl, .value_len = (uint32_t)size };

		__hfs_repl_out(i->heap, IMG_XATTR, &x, name, nl, value, x.value_len);
	} else {
		struct img_removexattr x = { .id = i->id, .name_len = nl };

		__hfs_repl_out(i->heap, IMG_REMOVEXATTR, &x, name, nl, NULL, 0);
	}
}

void __hfs_repl_writers(struct hfs_inode *i, bool open)
{
	struct hfs_repl_heap *r = i->heap->repl;
	uint8_t nl, o = open;
	struct iovec iov[4];
	int n;

	if (!g.l || r->mirror)
		return;
	n = name_iov(i->heap, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &i->id, .iov_len = sizeof(i->id) };
	iov[n++] = (struct iovec){ .iov_base = &o, .iov_len = 1 };
	pthread_mutex_lock(&r->lock);
	if (!r->streaming) /* best effort: what a resync sends does not include it */
		rep_sendv(g.l, MSG_WRITERS, iov, n);
	pthread_mutex_unlock(&r->lock);
}

/* ---- room: the partner could not apply a write (README "Space") ------------------- */

void hfs_repl_wrote(struct hfs_inode *i, uint64_t old_size, uint64_t off, uint64_t end)
{
	wrote = (struct wnote){ .i = i, .old = old_size, .off = off, .end = end };
}

/* dq.lock held: was a record in [first, last] refused for room? */
static bool __refused(uint64_t first, uint64_t last)
{
	unsigned n = dq.nref < REFUSED_MAX ? dq.nref : REFUSED_MAX;

	for (unsigned k = 0; k < n; k++)
		if (dq.refused[k] >= first && dq.refused[k] <= last)
			return true;
	return false;
}

static bool refused(uint64_t first, uint64_t last)
{
	bool ret;

	pthread_mutex_lock(&dq.lock);
	ret = __refused(first, last);
	pthread_mutex_unlock(&dq.lock);
	return ret;
}

/* The partner had no room for (part of) write w: give the growth back here (a truncate
 * record the mirror applies too) so that both sides hold what was acknowledged before and
 * the writer gets ENOSPC.  If the file changed meanwhile that is not possible: the
 * partner gets the whole heap again (the old way).  Never on the receive thread (it
 * takes the inode lock, and sends). */
static int give_back(const struct wnote *w)
{
	struct hfs_repl_heap *r = w->i->heap->repl;
	int ret = hfs_write_undo(w->i, w->old, w->off, w->end);

	wait_seq = 0; /* nobody waits for the undo's records */
	if (!ret) {
		fprintf(stderr, "heapfs: partner: no room there for heap %s: a write of %llu "
			"bytes is refused (ENOSPC) and undone here\n", r->h->pol.name,
			(unsigned long long)(w->end - w->off));
		return -ENOSPC;
	}
	fprintf(stderr, "heapfs: partner: no room there for heap %s, and the file changed "
		"since the write: resyncing the whole heap\n", r->h->pol.name);
	pthread_mutex_lock(&r->lock);
	r->lost = true;
	pend_drop(r);
	pthread_mutex_unlock(&r->lock);
	if (g.l)
		rep_kick(g.l);
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
static void no_room(uint64_t seq)
{
	struct hfs_repl_heap *r;

	pthread_mutex_lock(&dq.lock);
	dq.refused[dq.nref++ % REFUSED_MAX] = seq;
	pthread_mutex_unlock(&dq.lock);
	FOR_EACH_REPL(r) {
		bool found = false;

		if (r->mirror || r->h->pol.replicate == CONF_REPLICATE_SYNC)
			continue; /* sync: the writer gives the growth back (give_back) */
		pthread_mutex_lock(&r->lock);
		for (struct pend *p = r->pend; p && !found; p = p->next)
			found = p->seq == seq;
		if (found && !r->behind) {
			r->behind = true;
			fprintf(stderr, "heapfs: partner: no room there for heap %s: the mirror "
				"is behind until the next resync; writes go on here\n",
				r->h->pol.name);
		}
		pthread_mutex_unlock(&r->lock);
	}
}

bool hfs_repl_defer(void (*fn)(void *arg, int err), void *arg)
{
	uint64_t seq = wait_seq;
	struct deferred *d;
	bool later = false;

	if (!seq)
		return false;
	wait_seq = 0;
	d = malloc(sizeof(*d));
	pthread_mutex_lock(&dq.lock);
	/* acknowledged already, or that connection is gone: the caller replies now (and a
	 * refusal it learns from hfs_repl_wait, which must still see this record: an ack
	 * that came before we got here - a fast partner, a writer the CPU left waiting - may
	 * say "no room", and the write is then given back) */
	if (d && dq.conn == wait_conn && dq.acked < seq) {
		*d = (struct deferred){ .next = dq.list, .first = wait_first, .seq = seq,
					.w = wrote, .fn = fn, .arg = arg };
		wrote.i = NULL;
		dq.list = d;
		later = true;
	} else if (dq.conn == wait_conn) {
		wait_seq = seq;
	}
	pthread_mutex_unlock(&dq.lock);
	if (!later)
		free(d);
	return later;
}

/* Run the deferred replies up to seq (all: UINT64_MAX), outside dq.lock. */
static void deferred_run(uint64_t seq)
{
	struct deferred *run = NULL, **pp, *d;

	pthread_mutex_lock(&dq.lock);
	for (pp = &dq.list; (d = *pp);) {
		if (d->seq <= seq) {
			*pp = d->next;
			d->next = run;
			run = d;
		} else {
			pp = &d->next;
		}
	}
	pthread_mutex_unlock(&dq.lock);
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
		d->fn(d->arg, 0);
		free(d);
	}
}

int hfs_repl_wait(void)
{
	uint64_t seq = wait_seq, first = wait_first;
	struct wnote w = wrote;
	int ret;

	wrote.i = NULL;
	if (!seq || !g.l)
		return 0;
	wait_seq = 0;
	/* the change stands here: the partner gone or slow means degraded (a resync
	 * later), a refusal kicks the link (on_acked: a full resync); only a write the
	 * partner had no room for is given back */
	ret = rep_wait(g.l, seq, hfs.conf->partner.timeout_ms);
	if (w.i && (ret == -ENOSPC || refused(first, seq)))
		return give_back(&w);
	return 0;
}

int hfs_repl_flush(const struct hfs_heap *h)
{
	int ret;

	if (!g.l || !h || !h->repl || h->repl->mirror)
		return 0;
	ret = rep_flush(g.l, hfs.conf->partner.timeout_ms);
	/* ENOSPC: no room there; the change stands here and the partner is behind ("Room") */
	return ret == -ENOTCONN || ret == -ETIMEDOUT || ret == -ENOSPC || ret >= 0 ? 0 : -EIO;
}

bool hfs_repl_flushes(const struct hfs_heap *h)
{
	return h && h->repl && !h->repl->mirror;
}

/* ---- the owner: full sync ----------------------------------------------------------- */

/* The sync thread's connection is gone (or the daemon stops): it must not send. */
static bool stale(void)
{
	return atomic_load(&g.conn) != g.sync_conn || atomic_load(&g.stopping);
}

/* The sync thread's messages (RESET, IMG, IMGEND). */
static int send_named(struct hfs_heap *h, uint32_t type, const void *buf, size_t len)
{
	struct iovec iov[3];
	uint8_t nl;
	int n = name_iov(h, &nl, iov);
	int64_t seq;

	if (stale())
		return -ECANCELED;
	iov[n++] = (struct iovec){ .iov_base = (void *)buf, .iov_len = len };
	seq = rep_sendv(g.l, type, iov, n);
	return seq < 0 ? (int)seq : 0;
}

/* Called with the heap frozen (hfs.ns and its quiesce lock held): what was queued is in
 * the image, what comes next goes after it. */
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
	send_named(r->h, MSG_RESET, &r->gen, sizeof(r->gen));
	pthread_mutex_unlock(&r->lock);
}

/* r->lock held: send the log from its start (all of it is newer than what the partner
 * has), then let records go straight out again. */
static int send_log(struct hfs_repl_heap *r)
{
	int ret = 0;

	for (struct pend *p = r->pend; p && !ret; p = p->next) {
		int64_t seq = stale() ? -ECANCELED : rep_send(g.l, MSG_REC, p->data, p->len);

		ret = seq < 0 ? (int)seq : 0;
		p->seq = seq > 0 ? (uint64_t)seq : 0;
		if (!ret)
			atomic_fetch_add(&g.resync_done, p->len);
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

static int sync_heap(struct hfs_repl_heap *r, char *buf)
{
	int fd, ret;
	pid_t pid;
	ssize_t n;

	ret = hfs_image_snapshot_at(r->h, &fd, &pid, frozen, r);
	if (ret)
		return ret;
	pthread_mutex_lock(&r->lock);
	r->behind = false; /* the partner gets all of it again */
	pthread_mutex_unlock(&r->lock);
	while ((n = read(fd, buf, CHUNK)) > 0 || (n < 0 && errno == EINTR)) {
		if (n < 0)
			continue;
		ret = send_named(r->h, MSG_IMG, buf, (size_t)n);
		if (ret)
			break;
		atomic_fetch_add(&g.resync_done, (uint64_t)n);
	}
	close(fd);
	ret = hfs_image_snapshot_end(pid) ?: ret;
	if (!ret)
		ret = send_named(r->h, MSG_IMGEND, NULL, 0);
	/* the changes made meanwhile, in order, then records go straight out again */
	pthread_mutex_lock(&r->lock);
	if (!ret)
		ret = send_log(r);
	pthread_mutex_unlock(&r->lock);
	return ret;
}

static void *sync_thread(void *arg)
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
		r->skip = r->split; /* split brain: nothing moves until an operator decides */
		r->resume = can_resume(r);
		r->peer_has = false;
		total += r->resume ? r->log_bytes : atomic_load(&r->h->held) + 4096;
		pthread_mutex_unlock(&r->lock);
	}
	atomic_store(&g.resync_done, 0);
	atomic_store(&g.resync_total, total);
	FOR_EACH_REPL(r) {
		int ret;

		if (!buf || r->mirror || r->skip || stale())
			continue;
		ret = r->resume ? resume_heap(r) : sync_heap(r, buf);
		/* the link went (its down() may not have run yet): the next connect resyncs */
		if (ret && ret != -ENOTCONN && ret != -ECANCELED && !stale())
			fprintf(stderr, "heapfs: partner: resync of %s failed: %s\n",
				r->h->pol.name, strerror(-ret));
		if (ret)
			break;
	}
	free(buf);
	/* resyncing until the partner has applied it all (acked up to here), not just until
	 * it is queued: hfs_repl_status compares */
	rep_get_stats(g.l, &rs);
	pthread_mutex_lock(&g.lock);
	if (!stale()) { /* else a newer connection has its own resync coming */
		g.sync_until = rs.last_seq;
		atomic_store(&g.resync_total, atomic_load(&g.resync_done));
		g.syncing = false;
	}
	pthread_mutex_unlock(&g.lock);
	return NULL;
}

/* ---- the mirror ------------------------------------------------------------------- */

/* The replicated heap of that name, or NULL. */
static struct hfs_repl_heap *repl_named(const char *name)
{
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r)
		if (!strcmp(r->h->pol.name, name))
			return r;
	return NULL;
}

/* Any heap of that name (a mirror must not shadow one of ours). */
static bool heap_exists(const char *name)
{
	bool found = false;

	pthread_rwlock_rdlock(&hfs.ns);
	for (unsigned k = 0; k < hfs.nheaps && !found; k++)
		found = !strcmp(hfs.heapv[k]->pol.name, name);
	pthread_rwlock_unlock(&hfs.ns);
	return found;
}

/* HELLO: one of these per replicated heap of the sender, owned (the receiver mirrors it)
 * or mirrored (gen, recno: the copy it holds, so the owner may resume). */
struct hello_heap {
	uint64_t size, min_block;
	uint32_t layout, replicate, name_len, mirror;
	uint64_t gen, recno, epoch;
	uint32_t wrote_apart, discard;
	uint32_t fresh, pad;        /* an owner back empty (restarted, nothing written) */
}; /* + name */

static bool fresh(const struct hfs_repl_heap *r);

static int send_hello(void)
{
	char buf[8192];
	size_t len = 0;
	int64_t seq;

	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r) {
		struct hfs_heap *h = r->h;
		struct hello_heap hh = { .size = h->pol.size, .min_block = h->pol.min_block,
					 .layout = h->pol.layout, .replicate = h->pol.replicate,
					 .name_len = (uint32_t)strlen(h->pol.name) };

		if (len + sizeof(hh) + hh.name_len > sizeof(buf))
			break;
		pthread_mutex_lock(&r->lock);
		hh.mirror = r->mirror;
		hh.gen = !r->mirror || r->apply ? r->gen : 0;
		hh.recno = r->recno;
		hh.epoch = r->epoch;
		hh.wrote_apart = r->wrote_apart;
		hh.discard = r->discard;
		hh.fresh = fresh(r);
		pthread_mutex_unlock(&r->lock);
		memcpy(buf + len, &hh, sizeof(hh));
		memcpy(buf + len + sizeof(hh), h->pol.name, hh.name_len);
		len += sizeof(hh) + hh.name_len;
	}
	seq = rep_send(g.l, MSG_HELLO, buf, len);
	return seq < 0 ? (int)seq : 0;
}

static int make_mirror(const struct hello_heap *hh, const char *name)
{
	struct hfs_repl_heap *r = repl_named(name);
	struct conf_heap pol;
	struct hfs_inode *dir;
	int ret;

	if (r || heap_exists(name)) { /* made at an earlier connect, or ours */
		if (r && r->mirror && r->h->pol.size == hh->size)
			return 0;
		fprintf(stderr, "heapfs: partner: heap %s is declared on both nodes; "
			"not mirrored\n", name);
		return -EEXIST;
	}
	if (conf_heap_defaults(hfs.conf, name, &pol))
		return -EINVAL;
	pol.size = hh->size;
	pol.min_block = hh->min_block;
	pol.layout = hh->layout ? CONF_LAYOUT_CONTIGUOUS : CONF_LAYOUT_EXTENTS;
	pol.replicate = hh->replicate == CONF_REPLICATE_SYNC ? CONF_REPLICATE_SYNC
							      : CONF_REPLICATE_ASYNC;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __hfs_heap_mkdir(name, &pol, true, &dir);
	if (!ret) {
		dir->heap->repl = rh_new(dir->heap, true);
		if (!dir->heap->repl)
			ret = -ENOMEM; /* the heap stays, unreplicated, and writable */
		else
			dir->heap->repl->epoch = hh->epoch;
	}
	pthread_rwlock_unlock(&hfs.ns);
	if (ret)
		fprintf(stderr, "heapfs: partner: cannot make mirror heap %s: %s\n", name,
			strerror(-ret));
	return ret;
}

/* An owner that never had data here: restarted (memory is gone) and not written to. */
static bool fresh(const struct hfs_repl_heap *r)
{
	return !r->mirror && r->gen == 0 && r->recno == 0 && !r->loaded;
}

static void wopen_clear(struct hfs_repl_heap *r)
{
	struct wid *w, *tmp;

	HASH_ITER(hh, r->wopen, w, tmp) {
		HASH_DEL(r->wopen, w);
		free(w);
	}
}

/* r->lock held: the files open for writing on the owner we take over from, referenced,
 * for mark_interrupted() (which cannot run under r->lock: it changes the heap). */
static void __collect_marks(struct hfs_repl_heap *r)
{
	struct wid *w, *tmp;

	free(r->marks);
	r->nmarks = 0;
	r->marks = calloc(HASH_COUNT(r->wopen) + 1, sizeof(*r->marks));
	HASH_ITER(hh, r->wopen, w, tmp) {
		struct hfs_inode *i = r->apply ? hfs_apply_inode(r->apply, w->id) : NULL;

		if (i && r->marks) {
			hfs_iref(i, 1);
			r->marks[r->nmarks++] = i;
		}
	}
	wopen_clear(r);
}

/* After a takeover: files that were open for writing on the old owner say so. */
static void mark_interrupted(struct hfs_repl_heap *r)
{
	struct hfs_inode **m;
	size_t n;

	pthread_mutex_lock(&r->lock);
	m = r->marks;
	n = r->nmarks;
	r->marks = NULL;
	r->nmarks = 0;
	pthread_mutex_unlock(&r->lock);
	for (size_t k = 0; k < n; k++) {
		hfs_setxattr(m[k], HFS_XATTR_STATE, "interrupted", strlen("interrupted"),
			     HFS_XATTR_RESTORE);
		hfs_iput(m[k], 1);
	}
	free(m);
}

static void mark_all(void)
{
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r)
		mark_interrupted(r);
}

/* r->lock held: become the owner (a promotion, or the partner came back with nothing). */
static void __become_owner(struct hfs_repl_heap *r, uint64_t above)
{
	if (r->mirror)
		__collect_marks(r);
	if (r->mirror && r->apply) {
		hfs_apply_end(r->apply, false);
		r->apply = NULL;
	}
	r->epoch = (above > r->epoch ? above : r->epoch) + 1;
	r->lost = true; /* what the other side holds is unknown: it gets a whole image */
	pend_drop(r);
	r->streaming = true;
	r->mirror = false;
}

/* r->lock held: become the mirror (the partner won); its image replaces ours. */
static void __become_mirror(struct hfs_repl_heap *r, uint64_t epoch)
{
	pend_drop(r);
	r->epoch = epoch;
	r->gen = r->recno = 0;
	r->wrote_apart = r->discard = r->split = r->loaded = false;
	r->streaming = false;
	r->mirror = true;
}

/* The partner holds a copy of our heap (hh): resume from it, or it takes over when we
 * came back with nothing and it has the data. */
static void peer_holds(const char *name, const struct hello_heap *hh)
{
	struct hfs_repl_heap *r = repl_named(name);

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	if (r->mirror && hh->gen && r->apply && hh->epoch >= r->epoch) {
		/* both mirrors: nobody owns it; nothing to do */
	} else if (!r->mirror && fresh(r) && hh->gen) {
		fprintf(stderr, "heapfs: partner: %s: we came back empty, the partner holds it: "
			"we mirror it now\n", name);
		__become_mirror(r, hh->epoch + 1);
	} else if (!r->mirror) {
		r->peer_has = hh->gen != 0;
		r->peer_gen = hh->gen;
		r->peer_recno = hh->recno;
	}
	pthread_mutex_unlock(&r->lock);
}

/* Does our side win the heap both nodes own?  Both sides compute it from the same two
 * HELLO entries, so exactly one wins (ties go to the smaller node name). */
static int owner_wins(const struct hfs_repl_heap *r, const struct hello_heap *hh)
{
	bool pfresh = hh->fresh;

	if (fresh(r) != pfresh)
		return pfresh ? 1 : 0;
	if (r->discard != (bool)hh->discard)
		return r->discard ? 1 : 0;
	if (r->wrote_apart && hh->wrote_apart)
		return -1; /* split brain */
	if (r->epoch != hh->epoch)
		return r->epoch > hh->epoch ? 1 : 0;
	if (r->wrote_apart != (bool)hh->wrote_apart)
		return r->wrote_apart ? 1 : 0;
	return strcmp(hfs.conf->partner.node, g.peer) < 0 ? 1 : 0;
}

/* The partner says it owns heap name (hh).  0: we hold no such replicated heap (make the
 * mirror); 1: settled here (we mirror it already, or both own it: who keeps it). */
static int settle_owner(const char *name, const struct hello_heap *hh)
{
	struct hfs_repl_heap *r = repl_named(name);
	int win;

	if (!r)
		return 0;
	pthread_mutex_lock(&r->lock);
	if (r->mirror) {
		if (r->apply && r->gen && hh->fresh) {
			/* the owner came back empty; we hold its data: we own it now */
			fprintf(stderr, "heapfs: partner: %s: the owner came back empty: we own it "
				"now\n", name);
			__become_owner(r, hh->epoch);
			r->peer_has = false;
		} else if (hh->epoch > r->epoch) {
			r->epoch = hh->epoch;
		}
		pthread_mutex_unlock(&r->lock);
		return 1;
	}
	win = owner_wins(r, hh);
	r->split = win < 0;
	if (win < 0) {
		fprintf(stderr, "heapfs: partner: %s: split brain (both sides wrote while apart); "
			"nothing is merged until `heapfsctl promote --discard-peer` on the side that "
			"wins\n", name);
		r->peer_has = false;
	} else if (win) {
		r->peer_has = false; /* its copy is not ours: it gets a whole image */
		r->lost = true;
	} else {
		fprintf(stderr, "heapfs: partner: %s: the partner owns it (epoch %llu): we mirror "
			"it now\n", name, (unsigned long long)hh->epoch);
		__become_mirror(r, hh->epoch);
	}
	pthread_mutex_unlock(&r->lock);
	return 1;
}

static void sync_start(void)
{
	pthread_t last;
	bool on;

	/* the last one first (it fails fast once the link is down); it takes g.lock at its
	 * end, so not joined under it.  Only the receive thread starts sync threads. */
	pthread_mutex_lock(&g.lock);
	last = g.sync_th;
	on = g.sync_on;
	g.sync_on = false;
	pthread_mutex_unlock(&g.lock);
	if (on)
		pthread_join(last, NULL);
	pthread_mutex_lock(&g.lock);
	g.sync_conn = atomic_load(&g.conn); /* this connection's: the receive thread's */
	g.syncing = true;
	g.sync_on = !pthread_create(&g.sync_th, NULL, sync_thread, NULL);
	if (!g.sync_on)
		g.syncing = false;
	pthread_mutex_unlock(&g.lock);
}

static int recv_heaps(const char *p, size_t len);

static int recv_hello(const char *p, size_t len)
{
	struct hfs_repl_heap *r;
	bool took = false;
	int ret;

	FOR_EACH_REPL(r)
		r->peer_owns = false;
	ret = recv_heaps(p, len);
	mark_all(); /* a takeover in settle_owner */
	/* a heap we mirror, with data, that the partner no longer has at all: its owner came
	 * back empty (a restart of a node whose config does not declare it): we own it */
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		if (!ret && r->mirror && !r->peer_owns && r->apply && r->gen) {
			fprintf(stderr, "heapfs: partner: %s: the partner no longer has it: we own "
				"it now\n", r->h->pol.name);
			__become_owner(r, r->epoch);
			r->peer_has = false;
			took = true;
		}
		pthread_mutex_unlock(&r->lock);
	}
	mark_all();
	if (took)
		send_hello(); /* so that the partner makes its mirror before our image */

	/* what the partner holds is known: resync what it lacks */
	sync_start();
	return ret;
}

static int recv_heaps(const char *p, size_t len)
{
	while (len) {
		struct hello_heap hh;
		char name[CONF_NAME_MAX + 1];

		if (len < sizeof(hh))
			return -EBADMSG;
		memcpy(&hh, p, sizeof(hh));
		if (!hh.name_len || hh.name_len > CONF_NAME_MAX || len - sizeof(hh) < hh.name_len ||
		    hh.size > CONF_HEAP_MAX || hh.size & (hh.size - 1) ||
		    hh.min_block < CONF_MIN_BLOCK_MIN || hh.min_block > CONF_MIN_BLOCK_MAX ||
		    hh.min_block & (hh.min_block - 1) || hh.min_block > hh.size)
			return -EBADMSG;
		memcpy(name, p + sizeof(hh), hh.name_len);
		name[hh.name_len] = 0;
		if (conf_check_heap_name(name))
			return -EBADMSG;
		if (hh.mirror) {
			peer_holds(name, &hh);
		} else {
			struct hfs_repl_heap *r = repl_named(name);

			if (r)
				r->peer_owns = true;
			if (!settle_owner(name, &hh))
				make_mirror(&hh, name);
		}
		p += sizeof(hh) + hh.name_len;
		len -= sizeof(hh) + hh.name_len;
	}
	return 0;
}

/* Remove everything below dir (the mirror at RESET). */
static int empty_dir(struct hfs_inode *dir)
{
	struct hfs_dirent *de, *tmp;
	char **names = NULL;
	size_t n = 0, k;
	int ret = 0;

	pthread_rwlock_rdlock(&hfs.ns);
	names = calloc(dir->dir.nents + 1, sizeof(*names));
	HASH_ITER(hh, dir->dir.ents, de, tmp) {
		if (names && n < dir->dir.nents)
			names[n++] = strdup(de->name);
	}
	pthread_rwlock_unlock(&hfs.ns);
	if (!names)
		return -ENOMEM;
	for (k = 0; k < n; k++) {
		struct hfs_inode *i;

		if (!names[k] || hfs_lookup(dir, names[k], &i)) {
			ret = ret ?: -ENOMEM;
			continue;
		}
		if (i->kind == HFS_DIR) {
			ret = empty_dir(i) ?: ret;
			ret = hfs_rmdir(dir, names[k]) ?: ret;
		} else {
			ret = hfs_unlink(dir, names[k]) ?: ret;
		}
		/* it may have been cached while this heap was ours (a day's timeout) */
		hfs_inval_entry(dir->ino, names[k]);
		hfs_iput(i, 1);
	}
	for (k = 0; k < n; k++)
		free(names[k]);
	free(names);
	return ret;
}

struct restore_arg {
	struct hfs_repl_heap *r;
	int fd;
};

static void *restore_thread(void *arg)
{
	struct restore_arg *ra = arg;
	struct hfs_repl_heap *r = ra->r;
	struct img_r *rd;
	struct img_rec rec;
	int ret;

	applying = true;
	ret = img_r_open(ra->fd, r->h->pol.size, &rd, r->why, sizeof(r->why));
	if (!ret) {
		ret = hfs_apply_begin(r->h, r->why, sizeof(r->why), &r->apply);
		while (!ret && (ret = img_r_next(rd, &rec)) == 1)
			ret = hfs_apply_rec(r->apply, rd, &rec);
		if (!ret)
			ret = hfs_apply_settle(r->apply);
		if (!ret)
			hfs_apply_live(r->apply);
		img_r_free(rd);
	}
	if (ret && r->apply) {
		hfs_apply_end(r->apply, false);
		r->apply = NULL;
	}
	/* read what is left so the writer never blocks on a dead reader */
	while (read(ra->fd, r->why + sizeof(r->why) - 1, 1) > 0)
		;
	close(ra->fd);
	free(ra);
	r->th_ret = ret;
	return NULL;
}

/* End the image restore (if one runs).  cut: the link went down under it, so a half
 * image is expected, not a refusal. */
static int mirror_join(struct hfs_repl_heap *r, bool cut)
{
	if (r->pipe_w >= 0) {
		close(r->pipe_w);
		r->pipe_w = -1;
	}
	if (r->th_on) {
		pthread_join(r->th, NULL);
		r->th_on = false;
		if (r->th_ret && cut)
			fprintf(stderr, "heapfs: partner: the image of %s was cut off with the "
				"link; the next connect sends it again\n", r->h->pol.name);
		else if (r->th_ret)
			fprintf(stderr, "heapfs: partner: the image of %s was refused: %s\n",
				r->h->pol.name, r->why[0] ? r->why : strerror(-r->th_ret));
	}
	return r->th_on ? -EIO : r->th_ret;
}

static int mirror_reset(struct hfs_repl_heap *r)
{
	struct restore_arg *ra;
	int p[2], ret;

	mirror_join(r, true);
	r->noroom = false;
	if (r->apply) {
		hfs_apply_end(r->apply, false);
		r->apply = NULL;
	}
	ret = empty_dir(r->h->dir);
	if (ret)
		return ret;
	if (pipe2(p, O_CLOEXEC))
		return -errno;
	ra = malloc(sizeof(*ra));
	if (!ra) {
		close(p[0]);
		close(p[1]);
		return -ENOMEM;
	}
	ra->r = r;
	ra->fd = p[0];
	r->why[0] = 0;
	r->th_ret = 0;
	if (pthread_create(&r->th, NULL, restore_thread, ra)) {
		close(p[0]);
		close(p[1]);
		free(ra);
		return -EAGAIN;
	}
	r->th_on = true;
	r->pipe_w = p[1];
	return 0;
}

static int mirror_img(struct hfs_repl_heap *r, const char *p, size_t len)
{
	if (r->pipe_w < 0)
		return -EPROTO;
	while (len) {
		ssize_t n = write(r->pipe_w, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int mirror_writers(struct hfs_repl_heap *r, const char *p, size_t len)
{
	uint64_t id;
	struct wid *w;

	if (len != sizeof(id) + 1)
		return -EBADMSG;
	memcpy(&id, p, sizeof(id));
	pthread_mutex_lock(&r->lock);
	HASH_FIND(hh, r->wopen, &id, sizeof(id), w);
	if (p[sizeof(id)] && !w && (w = calloc(1, sizeof(*w)))) {
		w->id = id;
		HASH_ADD(hh, r->wopen, id, sizeof(w->id), w);
	} else if (!p[sizeof(id)] && w) {
		HASH_DEL(r->wopen, w);
		free(w);
	}
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/* The mirror: a data record did not fit (this host's memory, file.c alloc_block) and was
 * not applied at all.  sync: the owner gives the write back (a truncate follows) and this
 * copy stays whole: the record counts as seen.  async: the owner goes on, so this copy is
 * behind until the next image; later records are refused too (applied to a copy with a
 * hole they would hide it). */
static int no_room_here(struct hfs_repl_heap *r, uint64_t recno)
{
	bool sync = r->h->pol.replicate == CONF_REPLICATE_SYNC;

	fprintf(stderr, "heapfs: partner: no room here for a change to %s%s\n", r->h->pol.name,
		sync ? ": refused, the owner gives it back" : ": this copy is behind until "
		"the next resync");
	pthread_mutex_lock(&r->lock);
	if (sync) {
		r->recno = recno;
	} else {
		r->noroom = true;
		r->gen = 0; /* ask for a whole image next time */
	}
	pthread_mutex_unlock(&r->lock);
	r->why[0] = 0;
	return -ENOSPC;
}

static int mirror_rec(struct hfs_repl_heap *r, const char *p, size_t len)
{
	static char str[IMG_REC_STR]; /* the receive thread is the only caller */
	struct img_rec rec;
	const void *data;
	int ret;

	uint64_t recno;

	if (!r->apply)
		return -EPROTO; /* no full image yet, or it failed */
	if (r->noroom)
		return -ENOSPC; /* async: this copy lacks a change until the next image */
	if (len < sizeof(recno))
		return -EBADMSG;
	memcpy(&recno, p, sizeof(recno));
	if (recno <= r->recno)
		return 0; /* had it: the owner resent from before what we acknowledged */
	ret = recno == r->recno + 1 ? 0 : -EPROTO; /* a gap: this copy is no longer whole */
	if (!ret)
		ret = img_rec_decode(p + sizeof(recno), len - sizeof(recno), &rec, &data, str,
				     r->why, sizeof(r->why));
	if (!ret)
		ret = hfs_apply_mem(r->apply, NULL, &rec, data);
	if (ret == -ENOSPC && rec.type == IMG_DATA) /* whole or not at all (hfs_write) */
		return no_room_here(r, recno);
	if (ret) {
		fprintf(stderr, "heapfs: partner: a change to %s failed: %s\n", r->h->pol.name,
			r->why[0] ? r->why : strerror(-ret));
		pthread_mutex_lock(&r->lock);
		r->gen = 0; /* ask for a whole image next time */
		pthread_mutex_unlock(&r->lock);
	} else {
		pthread_mutex_lock(&r->lock);
		r->recno = recno;
		pthread_mutex_unlock(&r->lock);
	}
	r->why[0] = 0;
	return ret;
}

/* ---- the link's callbacks --------------------------------------------------------- */

static int verify_answer(void);
static int verify_reply(const char *p, size_t len);

static void on_up(void *arg, const char *peer)
{
	(void)arg;
	/* the link may come up before rep_start() has stored it: it is about to */
	for (int k = 0; k < 5000 && !atomic_load(&g.l); k++)
		usleep(1000);
	/* records wait (streaming since the link went down or the start) until the sync
	 * thread has sent what the partner lacks: until then the state is resyncing */
	pthread_mutex_lock(&g.lock);
	atomic_fetch_add(&g.conn, 1);
	pthread_mutex_lock(&dq.lock);
	dq.conn = atomic_load(&g.conn);
	dq.acked = 0;
	dq.nref = 0;
	pthread_mutex_unlock(&dq.lock);
	g.up = true;
	g.syncing = true;
	g.sync_until = 0;
	snprintf(g.peer, sizeof(g.peer), "%s", peer);
	pthread_mutex_unlock(&g.lock);
	send_hello();
}

static void on_down(void *arg, const char *why)
{
	struct hfs_repl_heap *r;

	(void)arg;
	pthread_mutex_lock(&g.lock);
	atomic_fetch_add(&g.conn, 1);
	g.up = false;
	pthread_mutex_unlock(&g.lock);
	pthread_mutex_lock(&dq.lock);
	dq.conn = atomic_load(&g.conn);
	pthread_mutex_unlock(&dq.lock);
	deferred_run(UINT64_MAX); /* the owner goes on alone: reply to every waiting write */
	fprintf(stderr, "heapfs: partner: link down (%s)\n", why);
	FOR_EACH_REPL(r) {
		if (r->mirror) {
			mirror_join(r, true); /* a half image: the next connect resets */
			if (hfs.conf->partner.auto_failover && r->apply) {
				pthread_mutex_lock(&r->lock);
				__become_owner(r, r->epoch);
				pthread_mutex_unlock(&r->lock);
				mark_interrupted(r);
				fprintf(stderr, "heapfs: partner: %s: the owner is gone: we own it "
					"now (auto_failover, epoch %llu)\n", r->h->pol.name,
					(unsigned long long)r->epoch);
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
	applying = true;
	if (type == MSG_HELLO)
		return recv_hello(p, len);
	if (type == MSG_VERIFY)
		return verify_answer();
	if (type == MSG_VERIFY_REPLY)
		return verify_reply(p, len);
	nl = len ? (uint8_t)p[0] : 0;
	if ((type > MSG_REC && type != MSG_WRITERS) || !nl || nl + 1 > len)
		return -EBADMSG;
	memcpy(name, p + 1, nl);
	name[nl] = 0;
	r = repl_named(name);
	if (!r || !r->mirror)
		return -ENOENT;
	p += 1 + nl;
	len -= 1 + nl;
	switch (type) {
	case MSG_RESET:
		if (len != sizeof(r->gen))
			return -EBADMSG;
		pthread_mutex_lock(&r->lock);
		memcpy(&r->gen, p, sizeof(r->gen));
		r->recno = 0;
		wopen_clear(r);
		pthread_mutex_unlock(&r->lock);
		return mirror_reset(r);
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
	struct hfs_repl_heap *r;

	(void)arg;
	if (status == -ENOSPC) /* before the replies: they look for it */
		no_room(seq);
	pthread_mutex_lock(&dq.lock);
	if (seq > dq.acked)
		dq.acked = seq;
	pthread_mutex_unlock(&dq.lock);
	deferred_run(seq); /* sync writes waiting for this: applied there, refused or lost */
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
	 * gives it a full image */
	if (status < 0 && status != -ENOTCONN && status != -ENOSPC) {
		fprintf(stderr, "heapfs: partner: a change was refused (%s); resyncing\n",
			strerror(-status));
		rep_kick(g.l);
	}
}

/* ---- verify ------------------------------------------------------------------------ */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool busy, have;
	json_t *peer;
} vf = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* "kind size mode hash" of one inode; hfs.ns held shared. */
static json_t *describe(struct hfs_inode *i)
{
	char d[128];
	XXH64_hash_t hash = 0;

	if (i->kind == HFS_REG) {
		XXH3_state_t *st = XXH3_createState();
		uint64_t off = 0, size;

		if (!st)
			return NULL;
		XXH3_64bits_reset(st);
		pthread_rwlock_rdlock(&i->lock);
		size = i->size;
		pthread_rwlock_unlock(&i->lock);
		while (off < size) {
			struct iovec iov[64];
			int niov = 64;
			void *bounce;
			ssize_t n = hfs_read_begin(i, 1u << 20, (off_t)off, iov, &niov, &bounce);

			if (n <= 0) {
				if (n == 0)
					break;
				XXH3_freeState(st);
				return NULL;
			}
			for (int k = 0; k < niov; k++)
				XXH3_64bits_update(st, iov[k].iov_base, iov[k].iov_len);
			hfs_read_end(i);
			free(bounce);
			off += (uint64_t)n;
		}
		hash = XXH3_64bits_digest(st);
		XXH3_freeState(st);
	} else if (i->kind == HFS_LNK) {
		hash = XXH3_64bits(i->lnk.target, strlen(i->lnk.target));
	}
	pthread_rwlock_rdlock(&i->lock);
	snprintf(d, sizeof(d), "%s %llu %o %016llx", i->kind == HFS_DIR ? "dir" :
		 i->kind == HFS_REG ? "file" : i->kind == HFS_LNK ? "symlink" : "special",
		 (unsigned long long)(i->kind == HFS_DIR ? 0 : i->size), (unsigned)i->mode,
		 (unsigned long long)hash);
	pthread_rwlock_unlock(&i->lock);
	return json_string(d);
}

static int walk(struct hfs_inode *dir, const char *prefix, json_t *out)
{
	struct hfs_dirent *de, *tmp;

	HASH_ITER(hh, dir->dir.ents, de, tmp) {
		char *path;
		json_t *d;

		if (asprintf(&path, "%s%s", prefix, de->name) < 0)
			return -ENOMEM;
		d = describe(de->inode);
		if (!d || json_object_set_new(out, path, d)) {
			free(path);
			return -ENOMEM;
		}
		if (de->inode->kind == HFS_DIR) {
			char *sub;
			int ret = asprintf(&sub, "%s/", path) < 0 ? -ENOMEM : 0;

			if (!ret)
				ret = walk(de->inode, sub, out);
			if (!ret)
				free(sub);
			if (ret) {
				free(path);
				return ret;
			}
		}
		free(path);
	}
	return 0;
}

/* heap name -> {path: description} for every replicated heap here. */
static json_t *checksums(void)
{
	json_t *all = json_object();
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r) {
		json_t *one = json_object();

		pthread_rwlock_rdlock(&hfs.ns);
		if (!one || !r->h->dir || walk(r->h->dir, "", one) ||
		    json_object_set_new(all, r->h->pol.name, one)) {
			pthread_rwlock_unlock(&hfs.ns);
			json_decref(all);
			return NULL;
		}
		pthread_rwlock_unlock(&hfs.ns);
	}
	return all;
}

/* The partner asks (receive thread): answer with ours, in order after every change it
 * sent before (so an owner's copy is compared with everything applied here). */
static int verify_answer(void)
{
	json_t *j = checksums();
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	int64_t seq;

	json_decref(j);
	if (!s)
		return -ENOMEM;
	seq = strlen(s) <= REP_PAYLOAD_MAX ? rep_send(g.l, MSG_VERIFY_REPLY, s, strlen(s))
					   : -EMSGSIZE;
	free(s);
	return seq < 0 ? (int)seq : 0;
}

static int verify_reply(const char *p, size_t len)
{
	json_t *j = json_loadb(p, len, 0, NULL);

	pthread_mutex_lock(&vf.lock);
	if (vf.busy && !vf.have) {
		vf.peer = j;
		vf.have = true;
		j = NULL;
		pthread_cond_broadcast(&vf.cond);
	}
	pthread_mutex_unlock(&vf.lock);
	json_decref(j);
	return 0;
}

/* Both copies of every replicated heap, compared file by file (xxh3 of the data, size,
 * mode, kind): {"state", "differences": N, "heaps": {name: {"role", "files",
 * "differences": [{"path", "here", "partner"}]}}}.  Online: changes in flight while it
 * runs may show up as differences. */
json_t *hfs_repl_verify_json(void)
{
	json_t *mine = NULL, *peer = NULL, *heaps = json_object(), *out = NULL;
	struct hfs_repl_heap *r;
	struct timespec dl;
	uint64_t total = 0;
	int ret = 0;
	const char *state = "none";

	if (!heaps)
		return NULL;
	if (g.on && g.l) {
		pthread_mutex_lock(&vf.lock);
		while (vf.busy) /* one verify at a time */
			pthread_cond_wait(&vf.cond, &vf.lock);
		vf.busy = true;
		vf.have = false;
		pthread_mutex_unlock(&vf.lock);
		rep_flush(g.l, hfs.conf->partner.timeout_ms); /* what we sent is applied there */
		mine = checksums();
		ret = rep_send(g.l, MSG_VERIFY, "", 0) < 0 ? -ENOTCONN : 0;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 30 + hfs.conf->partner.timeout_ms / 1000;
		pthread_mutex_lock(&vf.lock);
		while (!ret && !vf.have)
			ret = pthread_cond_timedwait(&vf.cond, &vf.lock, &dl) ? -ETIMEDOUT : 0;
		peer = vf.peer;
		vf.peer = NULL;
		vf.busy = false;
		pthread_cond_broadcast(&vf.cond);
		pthread_mutex_unlock(&vf.lock);
		state = ret || !mine || !peer ? "unreachable" : "compared";
	}
	FOR_EACH_REPL(r) {
		json_t *a = json_object_get(mine, r->h->pol.name);
		json_t *b = json_object_get(peer, r->h->pol.name);
		json_t *diffs = json_array(), *h, *v;
		const char *path;
		void *iter;

		if (!a || !b) {
			json_decref(diffs);
			continue;
		}
		json_object_foreach(a, path, v) {
			json_t *w = json_object_get(b, path);

			if (!w || !json_equal(v, w))
				json_array_append_new(diffs, json_pack("{s:s, s:O, s:O?}", "path", path,
								       "here", v, "partner", w));
		}
		for (iter = json_object_iter(b); iter; iter = json_object_iter_next(b, iter)) {
			path = json_object_iter_key(iter);
			if (!json_object_get(a, path))
				json_array_append_new(diffs, json_pack("{s:s, s:n, s:O}", "path", path,
								       "here", "partner",
								       json_object_iter_value(iter)));
		}
		total += json_array_size(diffs);
		h = json_pack("{s:s, s:I, s:o}", "role", hfs_repl_role(r->h), "files",
			      (json_int_t)json_object_size(a), "differences", diffs);
		json_object_set_new(heaps, r->h->pol.name, h);
	}
	out = json_pack("{s:s, s:I, s:o}", "state", state, "differences", (json_int_t)total,
			"heaps", heaps);
	json_decref(mine);
	json_decref(peer);
	return out;
}

/* heapfsctl's requests, as xattrs set on .heapfs/partner: user.heapfs.promote (value: the
 * heap, empty for all), user.heapfs.promote.force, user.heapfs.promote.discard-peer. */
int hfs_repl_setxattr(const char *name, const void *value, size_t size)
{
	char heap[CONF_NAME_MAX + 1];

	if (size > CONF_NAME_MAX)
		return -EINVAL;
	memcpy(heap, value, size);
	heap[size] = 0;
	if (!strcmp(name, "user.heapfs.promote"))
		return hfs_repl_promote(heap, false, false);
	if (!strcmp(name, "user.heapfs.promote.force"))
		return hfs_repl_promote(heap, true, false);
	if (!strcmp(name, "user.heapfs.promote.discard-peer"))
		return hfs_repl_promote(heap, false, true);
	return -EPERM;
}

/* ---- takeover ---------------------------------------------------------------------- */

int hfs_repl_promote(const char *heap, bool force, bool discard)
{
	struct hfs_repl_heap *r;
	bool up, any = false;

	if (!g.on)
		return -ENOTCONN; /* no partner section */
	pthread_mutex_lock(&g.lock);
	up = g.up;
	pthread_mutex_unlock(&g.lock);
	if (up && !force && !discard)
		return -EBUSY; /* the owner is alive and connected */
	FOR_EACH_REPL(r) {
		if (heap && heap[0] && strcmp(r->h->pol.name, heap))
			continue;
		any = true;
		pthread_mutex_lock(&r->lock);
		if (r->mirror)
			__become_owner(r, r->epoch);
		if (discard) {
			r->discard = true; /* the partner's copy goes: it mirrors ours */
			r->split = false;
			r->epoch++;
		}
		pthread_mutex_unlock(&r->lock);
		mark_interrupted(r);
		fprintf(stderr, "heapfs: partner: %s: promoted (epoch %llu)%s\n", r->h->pol.name,
			(unsigned long long)r->epoch, discard ? ", the partner's copy is discarded" : "");
	}
	if (!any)
		return -ENOENT;
	if (up && g.l)
		rep_kick(g.l); /* a new HELLO exchange settles who owns what */
	return 0;
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
	ret = rep_secret_load(pc->secret_file, g.key, why, sizeof(why));
	if (ret) {
		fprintf(stderr, "heapfs: %s:%d: secret_file \"%s\": %s\n", hfs.conf->source,
			secret_line(), pc->secret_file, why[0] ? why : strerror(-ret));
		return ret;
	}
	for (unsigned k = 0; k < hfs.nheaps; k++) {
		struct hfs_heap *h = hfs.heapv[k];

		if (h->pol.replicate != CONF_REPLICATE_NONE && !(h->repl = rh_new(h, false)))
			return -ENOMEM;
		if (h->repl) {
			h->repl->epoch = 1;
			/* restored from its image (hfs_images_load ran): not "back empty" */
			h->repl->loaded = h->dir && h->dir->dir.nents;
		}
	}
	g.on = true;
	return 0;
}

int hfs_repl_start(void)
{
	const struct conf_partner *pc = &hfs.conf->partner;
	struct rep_config c = { .node = pc->node, .listen = pc->listen, .connect = pc->connect,
				.timeout_ms = pc->timeout_ms, .log = stderr };
	static const struct rep_callbacks cb = { .up = on_up, .down = on_down,
						 .recv = on_recv, .acked = on_acked };
	struct rep_link *l;
	int ret;

	if (!g.on)
		return 0;
	memcpy(c.key, g.key, sizeof(c.key));
	ret = rep_start(&c, &cb, NULL, &l);
	if (!ret)
		atomic_store(&g.l, l);
	if (ret)
		fprintf(stderr, "heapfs: partner: cannot listen on %s: %s\n", pc->listen,
			strerror(-ret));
	return ret;
}

void hfs_repl_stop(void)
{
	struct rep_link *l = g.l;
	struct hfs_repl_heap *r;
	bool on;

	if (!l)
		return;
	/* the sync thread first (it stops at its next chunk): it uses the link */
	atomic_store(&g.stopping, true);
	pthread_mutex_lock(&g.lock);
	on = g.sync_on;
	g.sync_on = false;
	pthread_mutex_unlock(&g.lock);
	if (on) /* not under g.lock: it takes it at its end */
		pthread_join(g.sync_th, NULL);
	rep_stop(l); /* joins the receive thread: no callback runs after this */
	g.l = NULL;
	deferred_run(UINT64_MAX); /* none should be left; never leave a request unanswered */
	FOR_EACH_REPL(r) {
		mirror_join(r, true);
		if (r->apply)
			hfs_apply_end(r->apply, false);
		pend_drop(r);
		wopen_clear(r);
		free(r->marks); /* none: marked where they were collected */
		r->h->repl = NULL;
		free(r);
	}
	atomic_store(&g.nr, 0);
}

void hfs_repl_status(struct hfs_repl_status *st)
{
	struct rep_stats rs = { 0 };
	struct hfs_repl_heap *r;

	memset(st, 0, sizeof(*st));
	if (!g.on) {
		st->state = "none";
		return;
	}
	if (g.l)
		rep_get_stats(g.l, &rs);
	pthread_mutex_lock(&g.lock);
	st->state = !g.up ? "degraded"
		    : g.syncing || rs.acked_seq < g.sync_until ? "resyncing" : "connected";
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		if (r->split)
			st->state = "split-brain";
		else if (r->behind && g.up && !strcmp(st->state, "connected"))
			st->state = "behind";
		if (r->epoch > st->epoch)
			st->epoch = r->epoch;
		pthread_mutex_unlock(&r->lock);
	}
	snprintf(st->peer, sizeof(st->peer), "%s", g.up ? g.peer : "");
	pthread_mutex_unlock(&g.lock);
	st->lag_bytes = rs.unacked_bytes;
	st->sent_bytes = rs.sent_bytes;
	st->recv_bytes = rs.recv_bytes;
	st->resync_done = atomic_load(&g.resync_done);
	st->resync_total = atomic_load(&g.resync_total);
}
