/*
 * replica.h — the partner link (public interface of replica/): TCP, authentication,
 * frames, ordering, acknowledgements, liveness, and resync bookkeeping (a dirty bitmap).
 * It knows nothing of FUSE, inodes or heaps: payloads are opaque bytes with a message
 * type chosen by the caller.  Static library `replica`, prefix rep_, depends on libsodium
 * (crypto_auth, crypto_generichash, the AEADs) and libxxhash (XXH3-64 frame checksums of
 * a plaintext link).
 *
 * This header is the interface agreed with the fs integration (docs/DESIGN.md, "The
 * replica/ link"); additions beyond the agreed text are marked "addition".
 *
 * Rules the link guarantees: both sides prove the secret with a challenge-response MAC
 * (crypto_auth over both nonces and both node names; the initiator first, the acceptor
 * only after checking it) before any message; unless plaintext, every frame after that
 * is sealed with an AEAD under per-connection, per-direction keys and rekeyed before its
 * limits (seal.c); a frame that fails to open drops the connection; a peer that
 * fails, speaks garbage, sends a malformed/oversized/out-of-order frame is dropped and
 * logged, and nothing is allocated from a length before it is checked against
 * REP_PAYLOAD_MAX; heartbeats keep an idle link alive and a peer silent for timeout_ms
 * (killed, SIGSTOPped, network gone) is declared down within timeout_ms (+ a small
 * margin); when both nodes connect to each other at once exactly one connection
 * survives; seq numbers and ordering are per connection (after a reconnect nothing is
 * retransmitted: the fs side resyncs).  Message types below REP_TYPE_USER are the link's.
 *
 * Seq numbers (implementation note): they increase over the life of the link, not only
 * within one connection (a new connection goes on after the last seq the link handed
 * out), so a seq names one message for good and rep_wait() on a seq of a lost
 * connection answers -ENOTCONN, never another message's status.
 */
#ifndef HEAPFS_REPLICA_H
#define HEAPFS_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/uio.h>

#define REP_KEY_BYTES 32            /* crypto_auth_KEYBYTES */
#define REP_PAYLOAD_MAX (1u << 21)  /* largest message payload the link accepts (2 MiB) */
#define REP_TYPE_USER 64            /* caller's message types are >= this; below: the link's */
#define REP_NODE_MAX 64             /* node names, bytes */
/* addition: the send queue bound.  Bytes of messages sent and not yet acknowledged
 * (payload + a 32-byte frame header each); rep_send waits for room beyond it. */
#define REP_QUEUE_MAX (64u << 20)

/* Read the shared secret file: refuses (-EPERM, why filled) a file that is group- or
 * world-readable, owned by another user than the effective one, or not a regular file, -EINVAL for an empty one; the key is a hash
 * (crypto_generichash) of the whole contents, so any text works.  (Any group or world
 * permission bit is refused, like ssh does for private keys: 0600 and 0400 pass.) */
int rep_secret_load(const char *path, uint8_t key[REP_KEY_BYTES], char *why, size_t whylen);

struct rep_config {
	const char *node;       /* our name (conf partner.node) */
	const char *listen;     /* "HOST:PORT" to accept on; port 0 = any (tests; see rep_port) */
	const char *connect;    /* "HOST:PORT" of the partner */
	uint8_t key[REP_KEY_BYTES];
	unsigned timeout_ms;    /* no frame from the peer for this long: link down */
	/* addition: frames go unsealed (partner.encrypt = false); both nodes must agree */
	bool plaintext;
	FILE *log;              /* where refusals and drops are logged (one line each), or NULL */
};
/* (listen or connect NULL or "": that side is not done; HOST may be an IPv4 literal or a
 * name.  rep_start: -EINVAL for an empty or over-long node name, one with a byte outside
 * '!'..'~', an address it cannot parse, or timeout_ms < 20; -EADDRINUSE etc. from bind.) */

struct rep_callbacks {
	/* An authenticated link to the partner is up. peer: its node name. On the link's
	 * receive thread. Messages sent from here on are delivered in order. */
	void (*up)(void *arg, const char *peer);
	/* The link is down (why: "timeout", "closed", "bad frame", ...). Before this, every
	 * message sent and not yet acknowledged has been reported to acked() with -ENOTCONN.
	 * Then the link keeps trying to reconnect (and accepting) on its own. */
	void (*down)(void *arg, const char *why);
	/* A message from the peer, in order, each exactly once per connection. Its return
	 * value (0 or -errno) travels back to the sender as the ack status.  (Below -511,
	 * the kernel's own codes that FUSE refuses in a reply, it travels as -EIO.) Called on the
	 * receive thread; may call rep_send() (replies), must not block on the network. */
	int (*recv)(void *arg, uint32_t type, const void *payload, size_t len);
	/* The peer processed our message seq; status is what its recv() returned, or
	 * -ENOTCONN when the link went down first. Acks arrive in seq order. Called on the
	 * receive thread: the fs side replies to waiting FUSE requests from here. */
	void (*acked)(void *arg, uint64_t seq, int status);
	/* (All four run on connection threads, one at a time and never concurrently with
	 * each other; up and down strictly alternate.  They must not call rep_stop,
	 * rep_wait or rep_flush; any of them may be NULL.) */
};

struct rep_link;
int rep_start(const struct rep_config *c, const struct rep_callbacks *cb, void *arg,
	      struct rep_link **out);       /* starts the link's threads; 0 / -errno */
int rep_port(const struct rep_link *l);  /* the port actually listened on */
/* Queue one message (type >= REP_TYPE_USER). Returns its seq (> 0, increasing per
 * connection) or -ENOTCONN (link down: nothing queued), -EMSGSIZE. Thread-safe; never
 * blocks on the network beyond a bounded send queue (REP_QUEUE_MAX bytes: then it waits
 * for room, at most timeout_ms, then -ETIMEDOUT).  (-EINVAL for a type below
 * REP_TYPE_USER.  Called from the receive thread — inside recv(), up() or acked() — it
 * never waits: replies may go past REP_QUEUE_MAX, up to twice that unacknowledged; beyond,
 * the peer is not acknowledging: the link drops it and answers -ENOTCONN.  A sender streaming while more than
 * REP_QUEUE_MAX / 64 (1 MiB) is already unacknowledged may also wait, at most
 * timeout_ms, for the socket to take its message, which it then sends without a copy;
 * otherwise rep_send waits on nothing but room in the queue.) */
int64_t rep_send(struct rep_link *l, uint32_t type, const void *payload, size_t len);
int64_t rep_sendv(struct rep_link *l, uint32_t type, const struct iovec *iov, int iovcnt);
/* Wait until seq is acknowledged: its status, -ENOTCONN (link lost first), -ETIMEDOUT
 * after timeout_ms. Do NOT call from the receive thread.  (-EDEADLK when called there,
 * -EINVAL for a seq never handed out.  The link remembers the last REP_WAIT_STATUSES
 * non-zero statuses and the last 64 lost connections' seq ranges: a wait for a seq
 * older than those answers 0; acked() reports every status exactly.) */
#define REP_WAIT_STATUSES 4096
int rep_wait(struct rep_link *l, uint64_t seq, unsigned timeout_ms);
/* Wait until everything sent so far is acknowledged (fsync/close in async mode).
 * (The messages still unacknowledged at the call count: 0 when all of them were
 * acknowledged with status 0 — or there were none, even while the link is down: ask
 * rep_get_stats().up; the lowest seq's non-zero status otherwise, -ENOTCONN if the link
 * went down first; -ETIMEDOUT as rep_wait.) */
int rep_flush(struct rep_link *l, unsigned timeout_ms);
/* Drop the current connection now (tests, promote --force); it reconnects by itself. */
void rep_kick(struct rep_link *l);

struct rep_stats {
	bool up;
	char peer[REP_NODE_MAX + 1];
	uint64_t sent_msgs, sent_bytes, recv_msgs, recv_bytes;
	uint64_t unacked_bytes;          /* lag: sent or queued, not yet acknowledged */
	uint64_t last_seq, acked_seq;
	uint64_t connects, drops_auth, drops_frame;  /* refused peers, bad frames */
	uint64_t last_down_ms;           /* how long the last failure took to notice */
	/* addition: why the last handshake failed for a reason in the configs (a wrong
	 * secret, both nodes with one name), "" once a connection authenticated */
	char misconfigured[160];
	/* addition: the AEAD sealing frames ("aes256gcm", "chacha20poly1305"; "none" with
	 * plaintext, "pending" before the first connection), when a key of the session last
	 * changed (wall clock, ms; 0 never: a handshake or a rekey) and how many rekeys */
	char cipher[24];
	uint64_t key_rotated_ms, rekeys;
};
void rep_get_stats(struct rep_link *l, struct rep_stats *st);
void rep_stop(struct rep_link *l);       /* closes, joins threads, frees */
/* (rep_stop: no other rep_* call on l may be running or start — it frees l.  The active
 * connection's unacknowledged messages are reported -ENOTCONN and down("stopped") is
 * called before it returns.  rep_start after any fork(): the link's threads do not
 * survive one.) */

/* Resync bookkeeping: a bitmap of fixed-size regions of a heap (bounded memory: one bit
 * per region) marking what changed while the partner was away.  (region_order 6..40; a
 * region is 2^region_order bytes, the last one may be cut short by heap_size; next
 * returns one region at a time, its len cut at heap_size.) */
struct rep_dirty;
int rep_dirty_new(uint64_t heap_size, unsigned region_order, struct rep_dirty **out);
void rep_dirty_set(struct rep_dirty *d, uint64_t off, uint64_t len);   /* thread-safe */
/* Next dirty region at or after *off: 1 and *off, *len set, 0 when none. */
int rep_dirty_next(struct rep_dirty *d, uint64_t *off, uint64_t *len);
void rep_dirty_clear(struct rep_dirty *d, uint64_t off, uint64_t len);
uint64_t rep_dirty_bytes(const struct rep_dirty *d);
void rep_dirty_free(struct rep_dirty *d);

#endif
