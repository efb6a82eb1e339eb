/*
 * repl_i.h — what the files of fs/repl/ share: the per-heap replication state, the link
 * state (rg), the deferred replies (deferq), the message types, and the functions one
 * section calls in another.  The whole design and the locking rule: repl.c's opening
 * comment.
 */
#ifndef HEAPFS_REPL_I_H
#define HEAPFS_REPL_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <jansson.h>

#include "core.h"
#include "repl.h"
#include "img.h"
#include "replica.h"

enum {
	MSG_HELLO = REP_TYPE_USER, /* the sender's replicated heaps (struct hello_heap) */
	MSG_RESET,                 /* name, generation: a full image of the heap follows */
	MSG_IMG,                   /* name, bytes of the image stream */
	MSG_IMGEND,                /* name: the stream is complete */
	MSG_REC,                   /* name, recno, one change record */
	MSG_VERIFY,                /* request id: send your checksums (heapfsctl verify) */
	MSG_VERIFY_REPLY,          /* JSON {id, end, heaps: heap -> path -> "kind size mode
				      xxh3"}, in parts (verify.c) */
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
	size_t cap;   /* bytes of data: PEND_BIG (kept for reuse, out.c) or len */
	char data[];
};
/* A log entry this large or larger is a DATA record's: its buffer has room for the largest
 * and is kept for the next one when the partner acknowledged it (PEND_SPARE per heap), so
 * a stream of writes reuses memory already touched instead of a malloc (and fresh pages
 * the kernel zeroes) per record. */
#define PEND_BIG (IMG_DATA_MAX + 1024)
#define PEND_SPARE 16

/* The change log's bound per heap: past it the log is dropped and the partner gets a full
 * image when it returns. */
#define LOG_MAX(h) ((h)->pol.size < (128ull << 20) ? (h)->pol.size : (128ull << 20))

struct hfs_repl_heap {
	struct hfs_heap *h;
	_Atomic bool mirror;        /* flips at a takeover (rh_set_mirror) */
	pthread_mutex_t lock;
	/* takeover (r->lock): the epoch rises with every promotion; wrote_apart: changed
	 * while the partner was away (both: split brain); discard: promote --discard-peer */
	uint64_t epoch;
	bool wrote_apart, split, discard;
	bool loaded;                /* an owner that started with data (an image) */
	/* (r->lock) the two configs clash over this heap (declared on both nodes): nothing
	 * of it moves between them until they agree; why, as .heapfs/partner shows it */
	char misconf[200];
	bool clash_seen;            /* (r->lock) the HELLO being read clashes over it */
	/* owner */
	bool streaming;             /* not connected, or a resync in flight: records wait */
	struct pend *pend, **pend_tail; /* the change log, oldest first */
	struct pend *spare;         /* (r->lock) PEND_BIG buffers to reuse, nspare of them */
	uint64_t drops;             /* (r->lock) times the log was dropped (send_log) */
	unsigned nspare;
	uint64_t log_bytes;
	bool lost;                  /* the log overflowed: the next sync is a full one */
	uint64_t gen, recno;        /* the image generation and its last record (the mirror:
				       what it has applied) */
	bool peer_has;              /* the partner's HELLO said it holds gen up to peer_recno */
	bool resume, skip;          /* (the sync thread's) send only the log / nothing */
	bool behind;                /* async owner: the partner had no room ("Room") */
	bool noroom;                /* async mirror: refused a change for room, until RESET */
	bool peer_owns;             /* (r->lock) the partner's HELLO claims it */
	bool peer_empty;            /* (r->lock) it mirrors it and holds nothing (ha.c) */
	bool peer_listed;           /* (r->lock) its HELLO lists it as mirrored there */
	uint64_t peer_gen, peer_recno;
	/* mirror: the image restore (a thread reading a pipe), then the live applier.
	 * alock: the applier's lock (repl.c "Locking"): held to use r->apply, to replace
	 * it and to flip r->mirror; r->apply is written under alock and r->lock. */
	pthread_mutex_t alock;
	int pipe_w;
	pthread_t th;
	bool restoring;             /* r->lock: an image restore runs (r->apply is NULL) */
	bool refused;               /* a record could not be applied: none more until RESET */
	int th_ret;
	bool th_on;                 /* (the receive thread's; apart from the two above: a
				     * reader of both under r->lock loads their word whole) */
	struct hfs_apply *apply;
	char why[256];
	struct wid *wopen;          /* r->lock: open for writing on the owner */
	struct hfs_inode **marks;   /* r->lock: to mark "interrupted" after a takeover */
	size_t nmarks;
};

struct repl_state {
	bool on;
	/* (lock) the first clash of the two configs this connection found (a heap declared
	 * on both nodes); "" when none */
	char misconf[200];
	bool said_connected; /* (lock) "connected" logged for this connection */
	bool clash_seen;     /* (lock) the HELLO being read found a clash */
	FILE *log;           /* the link's log stream (hfs_log_stream): closed at stop */
	struct rep_link *_Atomic l;
	uint8_t key[REP_KEY_BYTES];
	pthread_mutex_t lock;
	_Atomic bool up;  /* read by writers (send_rec) without rg.lock */
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
	uint64_t sync_until;        /* rg.lock: the last seq of the resync (this connection) */
	struct hfs_repl_heap *rv[REPL_MAX];
	atomic_uint nr;
};
extern struct repl_state rg;

#define FOR_EACH_REPL(r) \
	for (unsigned k_ = 0, n_ = atomic_load(&rg.nr); k_ < n_ && ((r) = rg.rv[k_], 1); k_++)

/* Replies deferred until the partner acknowledged a seq (sync writes, hfs_complete_defer). */
struct deferred {
	struct deferred *next;
	uint64_t first, seq; /* the records of the change */
	struct hfs_wrote w;
	void (*fn)(void *arg, int err);
	void *arg;
	int64_t due; /* hfs_now_ns(): still unanswered then, the reply goes with err */
	int err;     /* (0: the owner goes on alone; -EIO: on_peer_lost never answered) */
};
#define REFUSED_MAX 64
struct repl_deferq {
	pthread_mutex_t lock;
	struct deferred *list;
	uint64_t conn, acked; /* the current connection, its highest acknowledged seq */
	/* the latest records of this connection the partner refused for room (a ring) */
	uint64_t refused[REFUSED_MAX];
	unsigned nref;
	/* the thread that answers replies past their due time (wait.c, deferq_start) */
	pthread_cond_t cv; /* CLOCK_MONOTONIC; signalled when the list was empty */
	pthread_t th;
	bool th_on; /* it runs (replies may wait in deferq); false: it ends */
};
extern struct repl_deferq deferq;

/* Called across the files of fs/repl/ (each defined in the file named above it). */
/* mirror.c */
int mirror_img(struct hfs_repl_heap *r, const char *p, size_t len);
int mirror_join(struct hfs_repl_heap *r, bool cut);
int mirror_rec(struct hfs_repl_heap *r, const char *p, size_t len);
int mirror_reset(struct hfs_repl_heap *r, uint64_t gen);
int mirror_writers(struct hfs_repl_heap *r, const char *p, size_t len);
int recv_hello(const char *p, size_t len);
int send_hello(void);
struct hfs_repl_heap *repl_named(const char *name);
void __become_owner(struct hfs_repl_heap *r, uint64_t above);
void mark_interrupted(struct hfs_repl_heap *r);
void wopen_clear(struct hfs_repl_heap *r);

/* out.c */
void repl_changed(const struct hfs_change *ch, void *arg);
int name_iov(struct hfs_heap *h, uint8_t *len, struct iovec *iov);
void pend_drop(struct hfs_repl_heap *r);
void pend_pop(struct hfs_repl_heap *r);

/* repl.c */
void repl_say_connected(uint64_t acked);
struct hfs_repl_heap *rh_new(struct hfs_heap *h, bool mirror);
void rh_set_mirror(struct hfs_repl_heap *r, bool mirror); /* and the core's hfs_heap.mirror */

/* sync.c */
void *sync_thread(void *arg);

/* verify.c */
int verify_answer(const char *p, size_t len);
int verify_reply(const char *p, size_t len);
void verify_stop(void);

/* ha.c: demote, the on_peer_lost gate, the promotion score */
#define HA_SCORE_OWNER 100   /* owns it: current data */
#define HA_SCORE_MIRROR 75   /* a whole copy, connected, nothing unacknowledged */
#define HA_SCORE_EMPTY 50    /* both sides started empty and nobody owns it */
#define HA_SCORE_DEGRADED 10 /* a whole sync copy whose owner is gone */
bool ha_down(void);          /* the link went down: true if the hook has the replies */
void ha_up(void);
void ha_connected(void);
void ha_promoted_alone(void);
/* r->lock: a sync change not sent (streaming, or failed: the link just went) waits for
 * the on_peer_lost answer */
void ha_gate(struct hfs_repl_heap *r, struct hfs_completion *c, bool failed);
int ha_gate_wait(uint64_t seq, uint64_t conn);
int64_t ha_gate_wait_ms(void); /* the longest ha_gate_wait, after the link's timeout */
bool ha_mirror_empty(struct hfs_repl_heap *r); /* takes hfs.ns shared */
bool ha_peer_owns(const char *heap);
void ha_hello(void);         /* a HELLO was read on this connection */
const char *ha_gate_name(void); /* NULL: no on_peer_lost */
void ha_stop(void);
bool ha_hooked(void);        /* on_peer_lost is set */
int hfs_repl_demote(const char *heap);
int hfs_repl_score(void);

/* wait.c */
void deferred_fail(int err); /* every deferred reply, with err */
/* sync mode, the change's lock held: c waits for record seq sent on connection conn too */
void repl_wait_for(struct hfs_completion *c, uint64_t seq, uint64_t conn);
void deferred_run(uint64_t seq);
int deferq_start(void); /* the thread that answers replies past due */
void deferq_stop(void);
void no_room(uint64_t seq);

/* status.c: .heapfs/partner (repl.c gathers the link's figures) */
struct hfs_repl_status {
	const char *state; /* none connected degraded resyncing behind split-brain
			      misconfigured */
	char reason[200];  /* misconfigured: why ("" otherwise) */
	char peer[65];
	uint64_t epoch, lag_bytes, sent_bytes, recv_bytes, resync_done, resync_total;
	char cipher[24];          /* the link's AEAD, "none" (encrypt = false) */
	uint64_t key_rotated_ms;  /* wall clock of the last handshake or rekey, 0 never */
	uint64_t rekeys;
};
void hfs_repl_status(struct hfs_repl_status *st);
/* "owner" or "mirror": each heap's role in .heapfs/ (registered with hfs_status_role) */
const char *hfs_repl_role(const struct hfs_heap *h);
/* heapfsctl promote sets user.heapfs.promote[.force|.discard-peer] = HEAP on
 * .heapfs/partner, heapfsctl demote user.heapfs.demote = HEAP (verify.c). */
int hfs_repl_setxattr(const char *name, const void *value, size_t size);
/* .heapfs/verify: both copies compared (a new value, the caller's; verify.c). */
json_t *hfs_repl_verify_json(void);

#endif
