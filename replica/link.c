/*
 * link.c — the partner link: connections, handshake, the send queue, acknowledgements,
 * liveness and reconnection (replica.h).
 *
 * Threads.  One manager thread per link accepts on the listen socket and, while no
 * connection is up, starts outgoing attempts with a backoff of at most timeout/4.  Every
 * connection (accepted or initiated) gets its own thread, which runs the handshake
 * (auth.c) under a deadline of timeout_ms and, if the connection becomes the link's
 * active one, is from then on its receive thread: it reads frames, calls recv() and
 * acked(), and sends ACK frames.  The active connection also has a sender thread that
 * writes the queue with sendmsg (a batch of frames per call) and sends a heartbeat when
 * nothing was written for timeout/4.  The receive thread polls with a deadline of
 * "last byte from the peer + timeout_ms": a peer that is killed, stopped or cut off is
 * declared down within timeout_ms; TCP_USER_TIMEOUT = timeout_ms bounds a write into a
 * dead peer, and a drop shuts the socket down, which wakes the sender.
 *
 * Before authentication.  Anyone may connect, so an accepted connection holds little
 * and not for long: a HS_BUF receive buffer (RBUF_SIZE only once authenticated), only
 * HELLO and AUTH frames are read (a MSG header is refused before its length sizes
 * anything), a deadline of timeout_ms from the accept that bytes trickling in do not
 * extend, and a slot that newer connections take over: at most MAX_PENDING_ADDR wait from
 * one address and MAX_PENDING in all, the oldest from the address holding the most making
 * room (__make_room).  Lines logged about such peers are rationed (lg_unauth).
 *
 * Sending.  One thread at a time writes the socket (l->writing).  When nothing is queued
 * and nobody writes, rep_sendv (and an ACK from the receive thread) writes its frame
 * itself, straight from the caller's memory (__direct_write); what the socket does not
 * take is copied into l->partial, which the sender writes before anything else.
 * Otherwise rep_sendv copies the payload once into a queue node (header + payload in
 * one allocation, so a frame is one iovec), outside the lock, and under the lock takes
 * the next seq and appends.  The sender detaches a batch under the lock and writes it
 * with the lock released.  Control frames (ACK) have their own list, written first, so
 * acks do not wait behind megabytes of data.  REP_QUEUE_MAX bounds bytes sent and not yet
 * acknowledged (the lag), not just bytes not yet written, so a slow peer slows the
 * sender down; the receive thread itself never waits for room (a reply from recv()
 * could otherwise wait for acks that only the same thread reads), but what it adds is
 * bounded too: its replies up to LAG_HARD unacknowledged, its ACKs (merged into the last
 * one queued while it has room for their statuses) up to CTRL_MAX queued; past either
 * the peer is dropped — it does not acknowledge, or does not read.
 *
 * Sealing (encryption on, the default).  The handshake (initiator proves first, see
 * handshake()) gives the connection a key per direction (seal.c).  A frame is sealed
 * where it goes to the socket, by whoever holds l->writing: a direct writer into the
 * connection's sbuf (the caller's memory is read-only), the sender thread in place in its
 * queue nodes (allocated with room for the tag), so frame counters, the nonces, follow
 * wire order.  The reader opens each frame whole before anything uses it; one that does
 * not open drops the connection.
 *
 * Seqs increase over the link's life; a HELLO tells the peer where ours start on this
 * connection, later MSG frames must follow one by one.  When the active connection
 * drops, its receive thread (and only it) makes the link "cleaning": rep_send fails, the
 * unacknowledged seqs are reported to acked() with -ENOTCONN, then down() is called, and
 * only after that may another connection become active and call up().
 *
 * Duplicates.  When a connection authenticates while another is active: if the peer's
 * instance (random per rep_start) differs, the peer restarted and the old one is stale:
 * it is replaced.  Otherwise the one initiated by the node with the smaller name is
 * kept, and between two initiated by the same node the newer wins.  Both nodes apply the
 * same rule, so both keep the same connection.
 *
 * Locking: one mutex per link (l->mu) guards the queue, the seq/ack bookkeeping, the
 * connection list and `active`; l->cv signals acks, room and state changes, l->tx_cv
 * wakes the sender; l->cache_mu guards the buffer cache (taken inside l->mu, never
 * around it).  No lock is held across a blocking socket call or a callback; a socket is
 * closed only by its connection's thread, after its sender is joined and no direct
 * writer holds it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "replica_i.h"

#define MAX_CONNS 16            /* connections in handshake or up; more are refused */
#define MAX_THREADS 32          /* ... and those pushed out, still ending */
#define MAX_PENDING 8           /* accepted, not yet authenticated: the oldest makes room */
#define MAX_PENDING_ADDR 4      /* ... of them from one address: its own oldest makes room */
#define RBUF_SIZE (256u << 10)  /* receive buffer; larger payloads are read in place */
#define HS_BUF 512              /* the receive buffer before authentication (HELLO, AUTH) */
#define TX_BATCH_BYTES (8u << 20)
#define TX_IOV 64
#define ST_RING REP_WAIT_STATUSES
#define FAIL_RING 64            /* seq ranges lost with a connection, for rep_wait */
#define BACKOFF_MIN_MS 20u
#define MSG_BIG (64u << 10)     /* messages this large use the buffer cache */
#define MSG_CACHE 8
#define ACK_EVERY (REP_QUEUE_MAX / 16)
#define ACK_BYTES (sizeof(struct rep_ack) + REP_ACK_MAX_ENTS * sizeof(struct rep_ack_ent))
/* ACK frames queued behind a socket the peer does not read: beyond this it is dropped */
#define CTRL_MAX (REP_QUEUE_MAX / 16)
/* what the receive thread's own sends (replies) may leave unacknowledged: beyond this the
 * peer, which acknowledges every ACK_EVERY bytes, is not acknowledging and is dropped */
#define LAG_HARD (2 * (uint64_t)REP_QUEUE_MAX)
#define WAIT_LAG (REP_QUEUE_MAX / 64) /* a direct write may wait for the socket beyond */
#define SLICE_MS 100            /* poll slices: a stopping link is noticed this fast */
#define LOG_BURST 20            /* lines about unauthenticated peers: a burst, then 1/s */

struct rep_msg {
	struct rep_msg *next;
	size_t len;  /* header + payload (+ tag, sealed) */
	bool cached; /* a REP_PAYLOAD_MAX buffer of the cache (msg_alloc) */
	struct rep_hdr hdr;
	unsigned char payload[];
};

struct conn {
	struct rep_link *l;
	struct conn *next;
	pthread_t thr, tx;
	bool tx_started;
	bool tx_stop;       /* l->mu */
	bool done;          /* l->mu: the thread has finished; the manager joins it */
	bool initiator;
	bool authed;        /* l->mu: the handshake passed */
	bool evicted;       /* l->mu: shut down to make room for a newer unauthenticated one */
	uint64_t started;   /* when it was accepted or initiated */
	uint32_t src;       /* accepted: the peer's IPv4 address */
	int fd;             /* l->mu for anyone but the connection's own thread */
	char why[96];       /* l->mu: first reason this connection was dropped */
	struct rep_hello mine, peer;
	size_t mine_len, peer_len;
	/* the session (REP_C_NONE: encrypt = false on both nodes).  tx: whoever holds
	 * l->writing for this connection seals with it; rx: the connection's thread opens */
	unsigned cipher;
	bool rx_sealed;     /* the connection's thread: frames from the peer are sealed now */
	struct rep_dir txk, rxk;
	unsigned char *sbuf; /* l->writing: a direct write's sealed payload (+ tag) */
	/* receive side, the connection's thread only */
	uint64_t deadline;  /* handshake: absolute; afterwards last byte + timeout */
	bool active;
	uint64_t last_rx;
	uint64_t rx_next;   /* next MSG seq expected; 0 before the first */
	unsigned char *rb;
	size_t rb_cap;      /* HS_BUF until authenticated, then RBUF_SIZE */
	size_t rstart, rend;
	unsigned char *big;
	size_t big_cap;
	uint64_t ack_upto;  /* received and processed, not yet acknowledged */
	unsigned ack_n;
	size_t ack_bytes;   /* frame bytes the pending ACK covers */
	struct rep_ack_ent ack_ent[REP_ACK_MAX_ENTS];
	/* sender */
	uint64_t last_tx;   /* l->mu */
};

struct rep_link {
	char node[REP_NODE_MAX + 1];
	struct sockaddr_in laddr, caddr;
	bool do_listen, do_connect;
	uint8_t key[REP_KEY_BYTES];
	unsigned hello_flags;     /* REP_HF_*: encryption on, AES-GCM in hardware */
	unsigned cipher;          /* l->mu: the last active connection's */
	uint64_t rekey_bytes;
	_Atomic uint64_t key_at;  /* wall clock ms when a key of the active session changed */
	_Atomic uint64_t rekeys;
	unsigned timeout_ms, hb_ms;
	FILE *log;
	struct rep_callbacks cb;
	void *arg;
	uint64_t instance;

	int lfd, port;
	int wake[2];
	pthread_t mgr;
	atomic_bool stopping;

	pthread_mutex_t cache_mu;
	struct rep_msg *cache[MSG_CACHE];
	unsigned ncache;

	pthread_mutex_t mu;
	pthread_cond_t cv, tx_cv;
	struct conn *conns;
	unsigned nconns;
	struct conn *active;
	bool cleaning;
	bool outgoing;
	unsigned backoff_ms;
	uint64_t next_connect;
	char peer[REP_NODE_MAX + 1];
	char last_peer[REP_NODE_MAX + 1];

	/* queue and acks */
	struct rep_msg *ctrl, **ctrl_tail, *data, **data_tail;
	struct rep_msg *ctrl_ack; /* the last ACK queued in ctrl: later ones merge into it */
	size_t ctrl_bytes;        /* frame bytes in ctrl */
	bool writing;             /* a thread is writing to the active socket */
	struct rep_msg *partial;  /* a frame a direct write began: finished first */
	size_t partial_off;
	uint64_t last_seq, acked_seq, unacked_bytes;
	uint64_t tx_seq;          /* the highest seq whose frame went to a writer */
	uint32_t *lens;  /* bytes of seq s at lens[s & (lcap - 1)], s in (acked, last] */
	uint64_t lcap;
	struct { uint64_t seq; int st; } st_ring[ST_RING];
	unsigned st_pos;
	struct { uint64_t a, b; } fail_ring[FAIL_RING];
	unsigned fail_pos;

	struct rep_stats stats;
	/* l->mu: lines about unauthenticated peers (anyone may cause them) are rationed */
	unsigned log_tokens, log_skipped;
	uint64_t log_refill;
};

/* The link whose receive thread this is (rep_send must not wait there). */
static __thread struct rep_link *rx_of;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A key of the active session changed (a handshake or a rekey): .heapfs/partner says when */
static void key_changed(struct rep_link *l, bool rekey)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	atomic_store(&l->key_at, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
	if (rekey)
		atomic_fetch_add(&l->rekeys, 1);
}

static void deadline_ts(struct timespec *ts, uint64_t at_ms)
{
	ts->tv_sec = (time_t)(at_ms / 1000);
	ts->tv_nsec = (long)(at_ms % 1000) * 1000000;
}

/* pthread_cond_timedwait on the monotonic clock until at_ms; true when it passed. */
static bool wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t at_ms)
{
	struct timespec ts;

	if (now_ms() >= at_ms)
		return true;
	deadline_ts(&ts, at_ms);
	return pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT && now_ms() >= at_ms;
}

static void lg(struct rep_link *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lg(struct rep_link *l, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (!l->log)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(l->log, "replica %s: %s\n", l->node, line);
	fflush(l->log);
}

/* lg() for what anyone who connects can make happen, as often as they like: LOG_BURST
 * lines, then one a second, each saying how many were left out before it. */
static void lg_unauth(struct rep_link *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void lg_unauth(struct rep_link *l, const char *fmt, ...)
{
	uint64_t now = now_ms();
	unsigned skipped = 0;
	bool ok = false;
	char line[400];
	va_list ap;

	pthread_mutex_lock(&l->mu);
	if (now >= l->log_refill + 1000) {
		uint64_t add = (now - l->log_refill) / 1000;

		l->log_tokens = add >= LOG_BURST - l->log_tokens ? LOG_BURST
				: l->log_tokens + (unsigned)add;
		l->log_refill = now;
	}
	if (l->log_tokens) {
		l->log_tokens--;
		skipped = l->log_skipped;
		l->log_skipped = 0;
		ok = true;
	} else {
		l->log_skipped++;
	}
	pthread_mutex_unlock(&l->mu);
	if (!ok)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (skipped)
		lg(l, "%s (and %u more like it, not logged)", line, skipped);
	else
		lg(l, "%s", line);
}

static void wake_mgr(struct rep_link *l)
{
	char b = 1;

	if (write(l->wake[1], &b, 1) < 0) {
		/* full pipe: the manager is awake anyway */
	}
}

/* ---- sockets ---------------------------------------------------------------------- */

int rep_addr_parse(const char *s, struct sockaddr_in *out)
{
	char host[256], *end;
	const char *colon = s ? strrchr(s, ':') : NULL;
	unsigned long port;
	struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai;

	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
		return -EINVAL;
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || port > 65535)
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &out->sin_addr) == 1)
		return 0;
	if (getaddrinfo(host, NULL, &hints, &ai))
		return -EINVAL;
	out->sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
	freeaddrinfo(ai);
	return 0;
}

static void sock_setup(struct rep_link *l, int fd)
{
	int one = 1, zero = 0;
	unsigned tmo = l->timeout_ms;

	/* latency of small sync messages; our own heartbeats instead of keepalive; a write
	 * into a peer that stopped acknowledging fails after the timeout instead of hanging */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &zero, sizeof(zero));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &tmo, sizeof(tmo));
}

/* Wait for events on fd until at_ms, in slices so a stopping link is noticed.
 * 0 ready, -ETIMEDOUT, -ESHUTDOWN. */
static int wait_fd(struct rep_link *l, int fd, short events, uint64_t at_ms)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		uint64_t now = now_ms();
		int n;

		if (atomic_load(&l->stopping))
			return -ESHUTDOWN;
		if (now >= at_ms)
			return -ETIMEDOUT;
		n = poll(&p, 1, (int)(at_ms - now < SLICE_MS ? at_ms - now : SLICE_MS));
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

int rep_writev_all(int fd, struct iovec *iov, int n)
{
	while (n) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t got = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd p = { .fd = fd, .events = POLLOUT };

				/* a drop shuts the socket down, which ends this wait */
				if (poll(&p, 1, SLICE_MS) < 0 && errno != EINTR)
					return -errno;
				continue;
			}
			return -errno;
		}
		while (n && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (char *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}

/* ---- receiving frames -------------------------------------------------------------- */

/* Read more bytes into c->rb (at least one), or into dst[0..want) when dst is set.
 * Flushes a pending ACK before it would block.  0, or -errno / -ETIMEDOUT / -ECONNRESET
 * (peer closed). */
static void ack_flush(struct conn *c);
static ssize_t rx_some(struct conn *c, void *dst, size_t want)
{
	struct rep_link *l = c->l;

	for (;;) {
		ssize_t got = recv(c->fd, dst, want, MSG_DONTWAIT);
		int rc;

		if (got > 0) {
			c->last_rx = now_ms();
			if (c->active)
				c->deadline = c->last_rx + l->timeout_ms;
			return got;
		}
		if (!got)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		if (c->active && (c->ack_upto || c->ack_n))
			ack_flush(c);
		rc = wait_fd(l, c->fd, POLLIN, c->deadline);
		if (rc)
			return rc;
	}
}

/* Make sure n bytes are buffered at c->rb + c->rstart. */
static int rx_fill(struct conn *c, size_t n)
{
	while (c->rend - c->rstart < n) {
		ssize_t got;

		if (c->rb_cap - c->rstart < n) {
			memmove(c->rb, c->rb + c->rstart, c->rend - c->rstart);
			c->rend -= c->rstart;
			c->rstart = 0;
		}
		got = rx_some(c, c->rb + c->rend, c->rb_cap - c->rend);
		if (got < 0)
			return (int)got;
		c->rend += (size_t)got;
	}
	return 0;
}

/* The peer closed in the middle of a frame: that frame is bad, not just a close. */
static int truncated(int rc, const struct rep_hdr *h, size_t have, char *why, size_t whylen)
{
	if (rc != -ECONNRESET)
		return rc;
	snprintf(why, whylen, "truncated frame of kind %u (%zu of %u payload bytes)", h->kind,
		 have, h->len);
	return -EBADMSG;
}

/* Read one frame of a kind in `kinds` (a mask of 1 << kind): header checked before its
 * payload is read (so before authentication no MSG length sizes a buffer), then opened
 * (a sealed link: the AEAD, seal.c) or its checksum checked, before anything uses it.
 * *payload points into the connection's buffers until the next call.  0, -EBADMSG (why
 * filled), or a transport error. */
static int rx_frame(struct conn *c, unsigned kinds, struct rep_hdr *h, unsigned char **payload,
		    char *why, size_t whylen)
{
	size_t wl;
	int rc = rx_fill(c, sizeof(*h));

	if (rc == -ECONNRESET && c->rend > c->rstart) {
		snprintf(why, whylen, "truncated frame header (%zu of %zu bytes)",
			 c->rend - c->rstart, sizeof(*h));
		return -EBADMSG;
	}
	if (rc)
		return rc;
	memcpy(h, c->rb + c->rstart, sizeof(*h));
	rc = rep_frame_check(h, why, whylen);
	if (rc)
		return rc;
	if (!(kinds & 1u << h->kind)) {
		snprintf(why, whylen, "frame kind %u %s", h->kind,
			 c->authed ? "after the handshake" : "during the handshake");
		return -EBADMSG;
	}
	if (!c->rx_sealed != !h->flags) {
		/* (before the length is trusted: a sealed one has a tag after its payload) */
		snprintf(why, whylen, c->rx_sealed ? "a frame of kind %u not sealed on an "
			 "encrypted link" : "a sealed frame of kind %u on a link without encryption",
			 h->kind);
		return -EBADMSG;
	}
	/* on the wire: the payload, and the tag when sealed */
	wl = h->len + (c->rx_sealed ? REP_TAG_BYTES : 0);
	c->rstart += sizeof(*h);
	if (wl <= c->rb_cap / 2) {
		rc = rx_fill(c, wl);
		if (rc)
			return truncated(rc, h, c->rend - c->rstart, why, whylen);
		*payload = c->rb + c->rstart;
		c->rstart += wl;
	} else {
		/* a large payload is read straight into its own buffer (h->len was checked
		 * against REP_PAYLOAD_MAX by rep_frame_check above) */
		size_t have = c->rend - c->rstart;

		if (c->big_cap < wl) {
			unsigned char *nb = realloc(c->big, REP_PAYLOAD_MAX + REP_TAG_BYTES);

			if (!nb)
				return -ENOMEM;
			c->big = nb;
			c->big_cap = REP_PAYLOAD_MAX + REP_TAG_BYTES;
		}
		if (have > wl)
			have = wl;
		memcpy(c->big, c->rb + c->rstart, have);
		c->rstart += have;
		while (have < wl) {
			ssize_t got = rx_some(c, c->big + have, wl - have);

			if (got < 0)
				return truncated((int)got, h, have, why, whylen);
			have += (size_t)got;
		}
		*payload = c->big;
	}
	if (c->rstart == c->rend)
		c->rstart = c->rend = 0;
	if (c->rx_sealed) {
		rc = rep_open(&c->rxk, h, *payload, why, whylen);
		if (rc > 0)
			key_changed(c->l, true);
		return rc < 0 ? rc : 0;
	}
	if (rep_frame_sum_ok(h, *payload)) {
		snprintf(why, whylen, "checksum mismatch in a frame of kind %u, %u bytes", h->kind,
			 h->len);
		return -EBADMSG;
	}
	return 0;
}

/* ---- the queue --------------------------------------------------------------------- */

/* Large messages come from a small cache of REP_PAYLOAD_MAX buffers: a fresh malloc of a
 * megabyte is a fresh mmap whose every page faults in, then munmap — that cost a third of
 * the throughput.  Only the pages a message touched count as memory, so the cache costs
 * at most MSG_CACHE * 2 MiB, and less when messages are smaller. */
static struct rep_msg *msg_alloc(struct rep_link *l, size_t len)
{
	struct rep_msg *m = NULL;

	/* (room for the tag after the payload: the sender seals in place) */
	if (len < MSG_BIG) {
		m = malloc(sizeof(*m) + len + REP_TAG_BYTES);
		if (m)
			m->cached = false;
		return m;
	}
	pthread_mutex_lock(&l->cache_mu);
	if (l->ncache)
		m = l->cache[--l->ncache];
	pthread_mutex_unlock(&l->cache_mu);
	if (!m)
		m = malloc(sizeof(*m) + REP_PAYLOAD_MAX + REP_TAG_BYTES);
	if (m)
		m->cached = true;
	return m;
}

static void msg_free(struct rep_link *l, struct rep_msg *m)
{
	if (m->cached) {
		pthread_mutex_lock(&l->cache_mu);
		if (l->ncache < MSG_CACHE) {
			l->cache[l->ncache++] = m;
			m = NULL;
		}
		pthread_mutex_unlock(&l->cache_mu);
	}
	free(m);
}

static void queue_free(struct rep_link *l, struct rep_msg *m)
{
	while (m) {
		struct rep_msg *n = m->next;

		msg_free(l, m);
		m = n;
	}
}

/* Forget the control queue's nodes (detached by the sender, or freed with the link's). */
static void __ctrl_reset(struct rep_link *l)
{
	l->ctrl = NULL;
	l->ctrl_tail = &l->ctrl;
	l->ctrl_ack = NULL;
	l->ctrl_bytes = 0;
}

/* Room for seq last_seq + 1 in the length ring. */
static int __lens_room(struct rep_link *l)
{
	uint64_t n = l->last_seq - l->acked_seq, ncap;
	uint32_t *nl;

	if (n < l->lcap)
		return 0;
	ncap = l->lcap ? l->lcap * 2 : 1024;
	nl = malloc(ncap * sizeof(*nl));
	if (!nl)
		return -ENOMEM;
	for (uint64_t s = l->acked_seq + 1; s <= l->last_seq; s++)
		nl[s & (ncap - 1)] = l->lens[s & (l->lcap - 1)];
	free(l->lens);
	l->lens = nl;
	l->lcap = ncap;
	return 0;
}

/* Write the frame h + iov straight from the caller's memory (the socket is ours:
 * l->writing).  With `wait` (a sender streaming while more than WAIT_LAG is already
 * unacknowledged) it waits for the socket, at most timeout_ms; otherwise (and always on
 * the receive thread) what the socket does not take at once is copied into a node that
 * becomes l->partial, which the sender thread finishes before anything else.  Waiting
 * costs no CPU where the copy costs a memcpy and a hand-over to the sender thread:
 * pipelined 1 MiB messages ran at 0.79-1.11x of plain TCP waiting, 0.67-0.78x copying.
 * Called with iovcnt < TX_IOV; returns with l->mu held and l->writing released. */
static void __direct_write(struct rep_link *l, struct conn *c, struct rep_hdr *h,
			   const struct iovec *iov, int iovcnt, bool wait)
{
	struct iovec v[TX_IOV], sv;
	struct msghdr mh = { .msg_iov = v };
	size_t total = sizeof(*h) + h->len, done = 0;
	uint64_t deadline = now_ms() + l->timeout_ms;
	struct rep_msg *m = NULL;
	int n = 0, fd = c->fd, err = 0;

	if (h->kind == REP_K_MSG)
		l->tx_seq = h->seq; /* before the unlock: the peer may ack it at once */
	pthread_mutex_unlock(&l->mu);
	if (c->cipher != REP_C_NONE) {
		/* sealed into the connection's buffer (the caller's memory stays as it is):
		 * encrypting is the copy; from here on that is the payload */
		int sr = rep_sealv(&c->txk, l->rekey_bytes, h, c->sbuf, iov, iovcnt);

		if (sr > 0)
			key_changed(l, true);
		sv = (struct iovec){ c->sbuf, h->len + REP_TAG_BYTES };
		iov = &sv;
		iovcnt = 1;
		total += REP_TAG_BYTES;
		if (sr < 0) {
			err = -sr; /* nothing of the frame went out: the connection drops */
			total = 0;
		}
	}
	v[n++] = (struct iovec){ h, sizeof(*h) };
	for (int i = 0; i < iovcnt; i++)
		if (iov[i].iov_len)
			v[n++] = iov[i];
	mh.msg_iovlen = (size_t)n;
	while (done < total) {
		ssize_t got = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN) {
				err = errno;
				break;
			}
			if (wait && now_ms() < deadline) {
				struct pollfd p = { .fd = fd, .events = POLLOUT };
				uint64_t left = deadline - now_ms();

				/* a drop shuts the socket down, which ends this wait */
				poll(&p, 1, left < SLICE_MS ? (int)left + 1 : SLICE_MS);
				continue;
			}
			break;
		}
		done += (size_t)got;
		while (mh.msg_iovlen && (size_t)got >= mh.msg_iov->iov_len) {
			got -= (ssize_t)mh.msg_iov->iov_len;
			mh.msg_iov++;
			mh.msg_iovlen--;
		}
		if (mh.msg_iovlen) {
			mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + got;
			mh.msg_iov->iov_len -= (size_t)got;
		}
	}
	if (done < total) {
		/* copy only the bytes not yet on the wire, each to its place in the frame */
		size_t pos = 0;

		m = msg_alloc(l, h->len);
		if (m) {
			m->len = total;
			m->next = NULL;
			if (done < sizeof(*h))
				memcpy((char *)&m->hdr + done, (char *)h + done, sizeof(*h) - done);
			pos = sizeof(*h);
			for (int i = 0; i < iovcnt; i++) {
				size_t il = iov[i].iov_len, skip = done > pos ? done - pos : 0;

				if (skip < il)
					memcpy((char *)&m->hdr + pos + skip, (char *)iov[i].iov_base + skip,
					       il - skip);
				pos += il;
			}
		}
	}
	pthread_mutex_lock(&l->mu);
	l->writing = false;
	if (err) {
		if (!c->why[0])
			snprintf(c->why, sizeof(c->why), "write failed: %s", strerror(err));
		shutdown(fd, SHUT_RDWR);
	} else if (done < total && !m) {
		/* half a frame on the wire and no memory for the rest: the stream is lost */
		if (!c->why[0])
			snprintf(c->why, sizeof(c->why), "out of memory");
		shutdown(fd, SHUT_RDWR);
	}
	if (m && l->active == c && !c->why[0]) {
		l->partial = m;
		l->partial_off = done;
		m = NULL;
	}
	c->last_tx = now_ms();
	pthread_cond_signal(&l->tx_cv);
	pthread_cond_broadcast(&l->cv);
	if (m) {
		pthread_mutex_unlock(&l->mu);
		msg_free(l, m);
		pthread_mutex_lock(&l->mu);
	}
}

/* Queue one message.  The payload is checksummed from the caller's memory; when nothing
 * is queued and no one is writing, the calling thread writes the frame itself without
 * waiting (no copy, no hand-over to the sender); otherwise it is copied once into a
 * queue node for the sender. */
int64_t rep_sendv(struct rep_link *l, uint32_t type, const struct iovec *iov, int iovcnt)
{
	size_t len = 0, off = 0;
	struct rep_msg *m = NULL;
	struct rep_hdr h;
	uint64_t deadline;
	int64_t seq;

	if (type < REP_TYPE_USER || iovcnt < 0)
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > REP_PAYLOAD_MAX)
			return -EMSGSIZE;
		len += iov[i].iov_len;
		if (len > REP_PAYLOAD_MAX)
			return -EMSGSIZE;
	}
	/* (a sealed frame has the AEAD's tag instead of the checksum) */
	rep_frame_fill(&h, REP_K_MSG, type, 0, iov, l->hello_flags & REP_HF_ENCRYPT ? 0 : iovcnt,
		       len);

	pthread_mutex_lock(&l->mu);
	deadline = now_ms() + l->timeout_ms;
	for (;;) {
		bool direct;

		if (!l->active || atomic_load(&l->stopping)) {
			seq = -ENOTCONN;
			goto fail;
		}
		if (rx_of == l && l->unacked_bytes + sizeof(h) + len > LAG_HARD) {
			if (!l->active->why[0])
				snprintf(l->active->why, sizeof(l->active->why),
					 "the peer does not acknowledge (%llu bytes unacknowledged)",
					 (unsigned long long)l->unacked_bytes);
			shutdown(l->active->fd, SHUT_RDWR);
			seq = -ENOTCONN;
			goto fail;
		}
		if (rx_of != l && l->unacked_bytes &&
		    l->unacked_bytes + sizeof(h) + len > REP_QUEUE_MAX) {
			if (wait_until(&l->cv, &l->mu, deadline)) {
				seq = -ETIMEDOUT;
				goto fail;
			}
			continue;
		}
		direct = !l->writing && !l->partial && !l->ctrl && !l->data && iovcnt < TX_IOV;
		if (direct || m)
			break;
		/* the copy is made without the lock; then everything is checked again */
		pthread_mutex_unlock(&l->mu);
		m = msg_alloc(l, len);
		if (!m)
			return -ENOMEM;
		for (int i = 0; i < iovcnt; i++) {
			if (iov[i].iov_len)
				memcpy(m->payload + off, iov[i].iov_base, iov[i].iov_len);
			off += iov[i].iov_len;
		}
		m->hdr = h;
		m->len = sizeof(h) + len;
		m->next = NULL;
		pthread_mutex_lock(&l->mu);
	}
	if (__lens_room(l)) {
		seq = -ENOMEM;
		goto fail;
	}
	seq = (int64_t)++l->last_seq;
	l->lens[l->last_seq & (l->lcap - 1)] = (uint32_t)(sizeof(h) + len);
	l->unacked_bytes += sizeof(h) + len;
	l->stats.sent_msgs++;
	l->stats.sent_bytes += len;
	if (m) {
		m->hdr.seq = (uint64_t)seq;
		*l->data_tail = m;
		l->data_tail = &m->next;
		pthread_cond_signal(&l->tx_cv);
	} else {
		h.seq = (uint64_t)seq;
		l->writing = true;
		__direct_write(l, l->active, &h, iov, iovcnt,
			       rx_of != l && l->unacked_bytes > sizeof(h) + len + WAIT_LAG);
	}
	pthread_mutex_unlock(&l->mu);
	return seq;
fail:
	pthread_mutex_unlock(&l->mu);
	if (m)
		msg_free(l, m);
	return seq;
}

int64_t rep_send(struct rep_link *l, uint32_t type, const void *payload, size_t len)
{
	struct iovec iov = { (void *)payload, len };

	return rep_sendv(l, type, &iov, len ? 1 : 0);
}

/* ---- the sender -------------------------------------------------------------------- */

static void *tx_main(void *arg)
{
	struct conn *c = arg;
	struct rep_link *l = c->l;

	pthread_mutex_lock(&l->mu);
	for (;;) {
		struct rep_msg *batch = NULL, **tail = &batch, *hb = NULL, *pm = NULL;
		size_t bytes = 0, skip = 0;
		int rc = 0;

		/* wait for work while nobody else writes; idle for timeout/4: a heartbeat */
		while (!c->tx_stop && (l->writing || (!l->partial && !l->ctrl && !l->data))) {
			if (l->writing)
				pthread_cond_wait(&l->tx_cv, &l->mu); /* the writer signals */
			else if (wait_until(&l->tx_cv, &l->mu, c->last_tx + l->hb_ms) &&
				 !l->writing)
				break; /* (a direct writer may have begun while we waited) */
		}
		if (c->tx_stop)
			break;
		l->writing = true;
		/* the rest of a frame begun by a direct write, control frames, then data */
		if (l->partial) {
			batch = pm = l->partial; /* sealed already: its bytes as they go */
			tail = &batch->next;
			skip = l->partial_off;
			l->partial = NULL;
		}
		if (l->ctrl) {
			*tail = l->ctrl;
			tail = l->ctrl_tail;
			__ctrl_reset(l);
		}
		while (l->data && bytes < TX_BATCH_BYTES) {
			struct rep_msg *m = l->data;

			l->data = m->next;
			if (!l->data)
				l->data_tail = &l->data;
			m->next = NULL;
			*tail = m;
			tail = &m->next;
			bytes += m->len;
			l->tx_seq = m->hdr.seq;
		}
		pthread_mutex_unlock(&l->mu);

		if (!batch) {
			hb = calloc(1, sizeof(*hb) + REP_TAG_BYTES);
			if (hb) {
				rep_frame_fill(&hb->hdr, REP_K_HB, 0, 0, NULL, 0, 0);
				hb->len = sizeof(hb->hdr);
				batch = hb;
			}
		}
		while (batch && !rc) {
			struct iovec iov[TX_IOV];
			struct rep_msg *m = batch;
			int n = 0;

			for (; m && n < TX_IOV; m = m->next, n++) {
				/* sealed here, in wire order (the nonce is the frame count), a
				 * writev's worth at a time so the socket is never idle long */
				if (c->cipher != REP_C_NONE && m != pm) {
					int sr = rep_seal(&c->txk, l->rekey_bytes, &m->hdr,
							  m->payload, m->payload);

					if (sr < 0) {
						rc = sr;
						break;
					}
					if (sr)
						key_changed(l, true);
					m->len += REP_TAG_BYTES;
				}
				iov[n] = (struct iovec){ (char *)&m->hdr + skip, m->len - skip };
				skip = 0;
			}
			if (!rc)
				rc = rep_writev_all(c->fd, iov, n);
			while (batch != m) {
				struct rep_msg *d = batch;

				batch = batch->next;
				msg_free(l, d);
			}
		}
		queue_free(l, batch);

		pthread_mutex_lock(&l->mu);
		l->writing = false;
		pthread_cond_broadcast(&l->cv);
		c->last_tx = now_ms();
		if (rc) {
			if (!c->why[0])
				snprintf(c->why, sizeof(c->why), "write failed: %s", strerror(-rc));
			shutdown(c->fd, SHUT_RDWR);
			break;
		}
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

/* ---- acknowledgements -------------------------------------------------------------- */

/* Merge the ACK `a` (entries at ents) into the last queued one when its entries fit: ACKs
 * are cumulative, so one frame says what both said.  True when merged. */
static bool __ack_merge(struct rep_link *l, const struct rep_ack *a, const void *ents)
{
	struct rep_msg *m = l->ctrl_ack;
	struct rep_ack q;
	struct iovec iov;
	size_t was;

	if (!m)
		return false;
	memcpy(&q, m->payload, sizeof(q));
	if (q.n + a->n > REP_ACK_MAX_ENTS)
		return false;
	memcpy(m->payload + sizeof(q) + q.n * sizeof(struct rep_ack_ent), ents,
	       a->n * sizeof(struct rep_ack_ent));
	q.n += a->n;
	q.upto = a->upto;
	memcpy(m->payload, &q, sizeof(q));
	iov = (struct iovec){ m->payload, sizeof(q) + q.n * sizeof(struct rep_ack_ent) };
	rep_frame_fill(&m->hdr, REP_K_ACK, 0, 0, &iov, 1, iov.iov_len);
	was = m->len;
	m->len = sizeof(m->hdr) + iov.iov_len;
	l->ctrl_bytes += m->len - was;
	return true;
}

/* Send an ACK for what this connection processed (receive thread): written at once
 * when the socket is free and no older ACK waits (ACKs must not overtake each other),
 * else merged into the one queued for the sender, or queued.  A peer that leaves more
 * than CTRL_MAX of them queued (it does not read) is dropped. */
static void ack_flush(struct conn *c)
{
	struct rep_link *l = c->l;
	_Alignas(8) unsigned char buf[ACK_BYTES];
	struct rep_ack a = { .upto = c->ack_upto, .n = c->ack_n };
	size_t plen = sizeof(a) + c->ack_n * sizeof(struct rep_ack_ent);
	struct iovec iov = { buf, plen };
	struct rep_msg *m = NULL;
	struct rep_hdr h;

	memcpy(buf, &a, sizeof(a));
	memcpy(buf + sizeof(a), c->ack_ent, c->ack_n * sizeof(struct rep_ack_ent));
	c->ack_upto = 0;
	c->ack_n = 0;
	c->ack_bytes = 0;
	rep_frame_fill(&h, REP_K_ACK, 0, 0, &iov, 1, plen);
	pthread_mutex_lock(&l->mu);
	for (;;) {
		if (l->active == c && !l->writing && !l->partial && !l->ctrl) {
			l->writing = true;
			__direct_write(l, c, &h, &iov, 1, false);
			break;
		}
		if (__ack_merge(l, &a, buf + sizeof(a)))
			break;
		if (m) {
			if (l->ctrl_bytes + m->len > CTRL_MAX) {
				if (!c->why[0])
					snprintf(c->why, sizeof(c->why),
						 "the peer does not read (%zu bytes of acks queued)",
						 l->ctrl_bytes);
				shutdown(c->fd, SHUT_RDWR);
				break;
			}
			m->next = NULL;
			*l->ctrl_tail = m;
			l->ctrl_tail = &m->next;
			l->ctrl_ack = m;
			l->ctrl_bytes += m->len;
			m = NULL;
			pthread_cond_signal(&l->tx_cv);
			break;
		}
		/* room for the ACKs that may merge into it later; then everything again */
		pthread_mutex_unlock(&l->mu);
		m = malloc(sizeof(*m) + ACK_BYTES + REP_TAG_BYTES);
		pthread_mutex_lock(&l->mu);
		if (!m) {
			/* acks we cannot send would stall the peer until its timeout: drop now */
			if (!c->why[0])
				snprintf(c->why, sizeof(c->why), "out of memory");
			shutdown(c->fd, SHUT_RDWR);
			break;
		}
		m->hdr = h;
		m->len = sizeof(h) + plen;
		m->cached = false;
		memcpy(m->payload, buf, plen);
	}
	pthread_mutex_unlock(&l->mu);
	free(m);
}

/* Note that seq was processed with status st; the ACK goes out when the receive thread
 * would block, or sooner once it covers ACK_EVERY bytes or REP_ACK_MAX_ENTS statuses (a
 * peer that never lets us block must still see its window open). */
static void ack_note(struct conn *c, uint64_t seq, int st, size_t bytes)
{
	c->ack_upto = seq;
	c->ack_bytes += bytes;
	if (st)
		c->ack_ent[c->ack_n++] = (struct rep_ack_ent){ .seq = seq, .status = st };
	if (c->ack_n == REP_ACK_MAX_ENTS || c->ack_bytes >= ACK_EVERY)
		ack_flush(c);
}

static int __status_of(struct rep_link *l, uint64_t seq)
{
	for (unsigned i = 0; i < FAIL_RING; i++)
		if (l->fail_ring[i].a && seq >= l->fail_ring[i].a && seq <= l->fail_ring[i].b)
			return -ENOTCONN;
	for (unsigned i = 0; i < ST_RING; i++)
		if (l->st_ring[i].seq == seq)
			return l->st_ring[i].st;
	return 0;
}

/* An ACK frame from the peer: checked whole (rep_ack_parse: only seqs whose frames went
 * to the socket may be acknowledged), then applied, then reported in seq order. */
static int ack_recv(struct conn *c, const unsigned char *p, size_t len, char *why,
		    size_t whylen)
{
	struct rep_link *l = c->l;
	struct rep_ack_parsed a;
	uint64_t from;
	unsigned i = 0;

	pthread_mutex_lock(&l->mu);
	from = l->acked_seq + 1;
	if (rep_ack_parse(p, len, l->acked_seq, l->tx_seq, &a, why, whylen)) {
		pthread_mutex_unlock(&l->mu);
		return -EBADMSG;
	}
	for (unsigned j = 0; j < a.n; j++) {
		l->st_ring[l->st_pos].seq = a.ent[j].seq;
		l->st_ring[l->st_pos].st = a.ent[j].status;
		l->st_pos = (l->st_pos + 1) % ST_RING;
	}
	for (uint64_t s = from; s <= a.upto; s++)
		l->unacked_bytes -= l->lens[s & (l->lcap - 1)];
	l->acked_seq = a.upto;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);

	if (l->cb.acked)
		for (uint64_t s = from; s <= a.upto; s++) {
			bool listed = i < a.n && a.ent[i].seq == s;

			l->cb.acked(l->arg, s, listed ? a.ent[i++].status : 0);
		}
	return 0;
}

/* ---- a connection ------------------------------------------------------------------ */

static int send_frame(struct conn *c, unsigned kind, const void *p, size_t len)
{
	struct rep_hdr h;
	struct iovec pi = { (void *)p, len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)p, len } };

	rep_frame_fill(&h, kind, 0, 0, &pi, 1, len);
	return rep_writev_all(c->fd, iov, len ? 2 : 1);
}

static int do_connect(struct conn *c)
{
	struct rep_link *l = c->l;
	int err = 0, rc;
	socklen_t el = sizeof(err);

	if (connect(c->fd, (struct sockaddr *)&l->caddr, sizeof(l->caddr)) == 0)
		return 0;
	if (errno != EINPROGRESS)
		return -errno;
	rc = wait_fd(l, c->fd, POLLOUT, c->deadline);
	if (rc)
		return rc;
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
		return -errno;
	return -err;
}

/* HELLO both ways; the initiator's AUTH, checked by the acceptor before it says anything
 * more; the acceptor's AUTH (or a refusal), checked by the initiator; then the session's
 * keys (seal.c).  0, -EBADMSG (garbage), -EACCES (wrong MAC), -ENOPROTOOPT (encrypt set
 * differently on the two nodes), or a transport error; why filled for the first three. */
static int handshake(struct conn *c, char *why, size_t whylen)
{
	struct rep_link *l = c->l;
	unsigned role = c->initiator ? REP_ROLE_INITIATOR : REP_ROLE_ACCEPTOR;
	unsigned peer_role = c->initiator ? REP_ROLE_ACCEPTOR : REP_ROLE_INITIATOR;
	uint8_t mac[REP_MAC_BYTES];
	const void *hi, *ha;
	size_t li, la;
	struct rep_hdr h;
	unsigned char *p;
	uint64_t next;
	int rc, cipher;

	pthread_mutex_lock(&l->mu);
	next = l->last_seq + 1;
	pthread_mutex_unlock(&l->mu);
	rep_hello_make(&c->mine, &c->mine_len, role, l->node, l->instance, next, l->hello_flags);
	if (c->initiator && (rc = send_frame(c, REP_K_HELLO, &c->mine, c->mine_len)))
		return rc;
	if ((rc = rx_frame(c, REP_KINDS_HELLO, &h, &p, why, whylen)))
		return rc;
	if ((rc = rep_hello_parse(p, h.len, peer_role, l->node, &c->peer, why, whylen)))
		return rc;
	c->peer_len = h.len;
	/* (the acceptor answers even when the settings differ: so both nodes can say so) */
	if (!c->initiator && (rc = send_frame(c, REP_K_HELLO, &c->mine, c->mine_len)))
		return rc;
	cipher = rep_cipher_pick(c->mine.flags, c->peer.flags);
	if (cipher < 0) {
		snprintf(why, whylen, "encrypt = %s here but node \"%.*s\" has encrypt = %s: "
			 "set the same on both nodes", c->mine.flags & REP_HF_ENCRYPT ? "true" : "false",
			 c->peer.name_len, c->peer.name,
			 c->peer.flags & REP_HF_ENCRYPT ? "true" : "false");
		return -ENOPROTOOPT;
	}
	hi = c->initiator ? (const void *)&c->mine : (const void *)&c->peer;
	li = c->initiator ? c->mine_len : c->peer_len;
	ha = c->initiator ? (const void *)&c->peer : (const void *)&c->mine;
	la = c->initiator ? c->peer_len : c->mine_len;
	if (c->initiator) {
		rep_auth_mac(mac, l->key, role, hi, li, ha, la);
		if ((rc = send_frame(c, REP_K_AUTH, mac, sizeof(mac))))
			goto out;
	}
	if ((rc = rx_frame(c, REP_KINDS_AUTH, &h, &p, why, whylen)))
		goto out;
	if (rep_auth_verify(p, l->key, peer_role, hi, li, ha, la)) {
		snprintf(why, whylen, "node \"%.*s\" %s (wrong secret: the secret files differ)",
			 c->peer.name_len, c->peer.name,
			 c->initiator && rep_auth_is_refusal(p) ? "refused our proof"
								 : "failed authentication");
		/* the acceptor refuses with nothing but zeros: the initiator learns that its
		 * proof failed, and nothing about the secret */
		if (!c->initiator) {
			sodium_memzero(mac, sizeof(mac));
			send_frame(c, REP_K_AUTH, mac, sizeof(mac));
		}
		rc = -EACCES;
		goto out;
	}
	if (!c->initiator) {
		rep_auth_mac(mac, l->key, role, hi, li, ha, la);
		if ((rc = send_frame(c, REP_K_AUTH, mac, sizeof(mac))))
			goto out;
	}
	c->cipher = (unsigned)cipher;
	if (cipher != REP_C_NONE) {
		if ((rc = rep_session_keys(c->initiator ? &c->txk : &c->rxk,
					   c->initiator ? &c->rxk : &c->txk, (unsigned)cipher,
					   l->key, hi, li, ha, la))) {
			snprintf(why, whylen, "cannot set up the session's cipher: %s",
				 strerror(-rc));
			goto out;
		}
		c->rx_sealed = true; /* what follows the AUTHs */
	}
out:
	sodium_memzero(mac, sizeof(mac));
	return rc;
}

/* Was this connection initiated by the node with the smaller name? */
static bool smaller_initiated(const struct conn *c)
{
	int cmp = strncmp(c->l->node, c->peer.name, REP_NODE_MAX);

	if (!cmp)
		cmp = (int)strlen(c->l->node) - (int)c->peer.name_len;
	return c->initiator ? cmp < 0 : cmp > 0;
}

/* Make c the active connection, or refuse it as a duplicate (-EEXIST). */
static int activate(struct conn *c)
{
	struct rep_link *l = c->l;

	pthread_mutex_lock(&l->mu);
	for (;;) {
		struct conn *a = l->active;

		if (atomic_load(&l->stopping) || c->why[0]) {
			pthread_mutex_unlock(&l->mu);
			return -ESHUTDOWN;
		}
		if (!a && !l->cleaning)
			break;
		if (a && a->peer.instance == c->peer.instance &&
		    smaller_initiated(a) && !smaller_initiated(c)) {
			pthread_mutex_unlock(&l->mu);
			lg(l, "duplicate connection from \"%.*s\" refused: keeping the one %s "
			      "initiated", c->peer.name_len, c->peer.name,
			   c->initiator ? "the peer" : "we");
			return -EEXIST;
		}
		if (a && !a->why[0]) {
			snprintf(a->why, sizeof(a->why), "replaced by a newer connection");
			shutdown(a->fd, SHUT_RDWR);
		}
		pthread_cond_wait(&l->cv, &l->mu);
	}
	l->active = c;
	c->active = true;
	c->last_rx = now_ms();
	c->deadline = c->last_rx + l->timeout_ms;
	c->last_tx = c->last_rx;
	memcpy(l->peer, c->peer.name, c->peer.name_len);
	l->peer[c->peer.name_len] = 0;
	memcpy(l->last_peer, l->peer, sizeof(l->peer));
	l->stats.connects++;
	l->backoff_ms = BACKOFF_MIN_MS;
	if (pthread_create(&c->tx, NULL, tx_main, c)) {
		l->active = NULL;
		c->active = false;
		pthread_mutex_unlock(&l->mu);
		return -EAGAIN;
	}
	c->tx_started = true;
	l->cipher = c->cipher;
	if (c->cipher != REP_C_NONE)
		key_changed(l, false);
	pthread_mutex_unlock(&l->mu);
	lg(l, "link up with \"%s\" (%s, %s)", l->peer, c->initiator ? "we connected" : "accepted",
	   c->cipher == REP_C_NONE ? "not encrypted" : rep_cipher_name(c->cipher));
	if (l->cb.up)
		l->cb.up(l->arg, l->peer);
	return 0;
}

/* The active connection's receive loop, until it drops; returns the short reason. */
static const char *run(struct conn *c)
{
	struct rep_link *l = c->l;
	char why[160];

	for (;;) {
		struct rep_hdr h;
		unsigned char *p;
		int rc = rx_frame(c, REP_KINDS_UP, &h, &p, why, sizeof(why));

		if (!rc && h.kind == REP_K_MSG) {
			rc = rep_msg_seq_check(c->peer.next_seq, &c->rx_next, h.seq, why,
					       sizeof(why));
			if (!rc) {
				int st = l->cb.recv ? l->cb.recv(l->arg, h.type, p, h.len) : 0;

				if (st > 0)
					st = 0;
				if (st < -REP_ERRNO_MAX)
					st = -EIO;
				pthread_mutex_lock(&l->mu);
				l->stats.recv_msgs++;
				l->stats.recv_bytes += h.len;
				pthread_mutex_unlock(&l->mu);
				ack_note(c, h.seq, st, sizeof(h) + h.len);
			}
		} else if (!rc && h.kind == REP_K_ACK) {
			rc = ack_recv(c, p, h.len, why, sizeof(why));
		}
		if (!rc)
			continue;
		if (rc == -EBADMSG) {
			pthread_mutex_lock(&l->mu);
			l->stats.drops_frame++;
			pthread_mutex_unlock(&l->mu);
			lg(l, "dropping the link to \"%.*s\": bad frame: %s", c->peer.name_len,
			   c->peer.name, why);
			return "bad frame";
		}
		if (rc == -ETIMEDOUT)
			return "timeout";
		if (rc == -ESHUTDOWN)
			return "stopped";
		if (rc == -ECONNRESET)
			return "closed";
		return "connection error";
	}
}

/* The active connection c dropped: fail what is unacknowledged, then down(). */
static void conn_down(struct conn *c, const char *reason)
{
	struct rep_link *l = c->l;
	uint64_t from, to, now = now_ms();
	char why[sizeof(c->why)];

	pthread_mutex_lock(&l->mu);
	/* a reason someone else gave when dropping us (kick, replacement, write error) wins
	 * over what the reader then saw (the closed socket) */
	if (!c->why[0])
		snprintf(c->why, sizeof(c->why), "%s", reason);
	memcpy(why, c->why, sizeof(why));
	shutdown(c->fd, SHUT_RDWR);
	l->active = NULL;
	l->cleaning = true;
	c->tx_stop = true;
	pthread_cond_broadcast(&l->tx_cv);
	from = l->acked_seq + 1;
	to = l->last_seq;
	if (from <= to) {
		l->fail_ring[l->fail_pos].a = from;
		l->fail_ring[l->fail_pos].b = to;
		l->fail_pos = (l->fail_pos + 1) % FAIL_RING;
	}
	l->acked_seq = l->tx_seq = l->last_seq;
	l->unacked_bytes = 0;
	queue_free(l, l->ctrl);
	queue_free(l, l->data);
	__ctrl_reset(l);
	l->data = NULL;
	l->data_tail = &l->data;
	l->stats.last_down_ms = !strcmp(reason, "timeout") ? now - c->last_rx : 0;
	l->peer[0] = 0;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);

	pthread_join(c->tx, NULL);
	/* a direct writer may still be in sendmsg on this socket: it must be out before the
	 * socket is closed (it never waits there: MSG_DONTWAIT) */
	pthread_mutex_lock(&l->mu);
	c->tx_started = false; /* under l->mu: the manager reads this conn's flags */
	while (l->writing)
		pthread_cond_wait(&l->cv, &l->mu);
	if (l->partial) {
		msg_free(l, l->partial);
		l->partial = NULL;
	}
	pthread_mutex_unlock(&l->mu);
	lg(l, "link to \"%.*s\" down: %s (%llu unacknowledged)", c->peer.name_len, c->peer.name,
	   why, (unsigned long long)(to >= from ? to - from + 1 : 0));
	if (l->cb.acked)
		for (uint64_t s = from; s <= to; s++)
			l->cb.acked(l->arg, s, -ENOTCONN);
	if (l->cb.down)
		l->cb.down(l->arg, why);

	pthread_mutex_lock(&l->mu);
	l->cleaning = false;
	/* the node with the larger name lets the other reconnect first (timeout/4), so
	 * both rarely connect at once; the duplicate rule settles it when they do */
	l->next_connect = now_ms() + (strncmp(l->node, c->peer.name, REP_NODE_MAX) > 0 ?
				      l->hb_ms : l->backoff_ms);
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	wake_mgr(l);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct rep_link *l = c->l;
	char why[160] = "";
	unsigned char *nb;
	int rc = 0;

	rx_of = l;
	/* before authentication a connection holds a small buffer, a thread, and a slot for
	 * at most timeout_ms (less when newer ones push it out: see the manager) */
	c->rb = malloc(HS_BUF);
	c->rb_cap = HS_BUF;
	if (!c->rb)
		goto out;
	if (c->initiator && (rc = do_connect(c)))
		goto out;
	rc = handshake(c, why, sizeof(why));
	pthread_mutex_lock(&l->mu);
	if (c->evicted) {
		/* (even when it passed just after: it is shut down) */
		rc = -ETIME; /* counted in drops_auth by the manager */
		snprintf(why, sizeof(why), "pushed out by newer unauthenticated connections");
	}
	c->authed = !rc;
	if (rc == -EACCES || rc == -ENOTUNIQ || rc == -ENOPROTOOPT)
		l->stats.drops_auth++;
	else if (rc == -EBADMSG)
		l->stats.drops_frame++;
	/* what the operator must fix in a config, shown until a connection authenticates
	 * (not while one is up: then it is someone else, a replay or a stray node, logged) */
	if ((rc == -EACCES || rc == -ENOTUNIQ || rc == -ENOPROTOOPT) && !l->active)
		snprintf(l->stats.misconfigured, sizeof(l->stats.misconfigured), "%s", why);
	else if (!rc)
		l->stats.misconfigured[0] = 0;
	pthread_mutex_unlock(&l->mu);
	if (rc == -EACCES || rc == -EBADMSG || rc == -ETIME || rc == -ENOTUNIQ ||
	    rc == -ENOPROTOOPT) {
		char addr[INET_ADDRSTRLEN + 8] = "?", ip[INET_ADDRSTRLEN];
		struct sockaddr_in sa;
		socklen_t sl = sizeof(sa);

		if (!getpeername(c->fd, (struct sockaddr *)&sa, &sl))
			snprintf(addr, sizeof(addr), "%s:%u",
				 inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip)) ? ip : "?",
				 ntohs(sa.sin_port));
		lg_unauth(l, "%s %s connection %s: %s", rc == -ETIME ? "dropped" : "refused",
			  c->initiator ? "outgoing" : "incoming", addr, why);
	}
	if (rc)
		goto out;
	nb = realloc(c->rb, RBUF_SIZE);
	if (!nb)
		goto out;
	c->rb = nb;
	c->rb_cap = RBUF_SIZE;
	if (c->cipher != REP_C_NONE &&
	    !(c->sbuf = malloc(REP_PAYLOAD_MAX + REP_TAG_BYTES)))
		goto out;
	if (activate(c))
		goto out;
	conn_down(c, run(c));
out:
	free(c->rb);
	free(c->big);
	free(c->sbuf);
	rep_dir_wipe(&c->txk);
	rep_dir_wipe(&c->rxk);
	pthread_mutex_lock(&l->mu);
	/* closed under the lock (a socket's close does not wait): whoever gets the same fd
	 * number next, gets it after everyone who used this one let go of the lock */
	close(c->fd);
	c->fd = -1;
	if (c->initiator) {
		l->outgoing = false;
		if (!c->active) {
			/* a failed attempt: back off (at most timeout/4) */
			l->next_connect = now_ms() + l->backoff_ms;
			l->backoff_ms = l->backoff_ms * 2 > l->hb_ms ? l->hb_ms : l->backoff_ms * 2;
		}
	}
	c->done = true;
	pthread_mutex_unlock(&l->mu);
	wake_mgr(l);
	return NULL;
}

/* Start a connection thread for fd (initiator: not yet connected).  Under l->mu. */
static int __conn_start(struct rep_link *l, int fd, bool initiator, uint32_t src)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->l = l;
	c->fd = fd;
	c->initiator = initiator;
	c->src = src;
	c->started = now_ms();
	c->deadline = c->started + l->timeout_ms;
	if (pthread_create(&c->thr, NULL, conn_main, c)) {
		free(c);
		return -EAGAIN;
	}
	c->next = l->conns;
	l->conns = c;
	l->nconns++;
	return 0;
}

/* ---- the manager ------------------------------------------------------------------- */

static void __reap(struct rep_link *l, struct conn **dead)
{
	for (struct conn **pp = &l->conns; *pp;) {
		struct conn *c = *pp;

		if (c->done) {
			*pp = c->next;
			l->nconns--;
			c->next = *dead;
			*dead = c;
		} else {
			pp = &c->next;
		}
	}
}

/* How many connections accepted from src wait in their handshake; *oldest: the oldest. */
static unsigned __pending_from(struct rep_link *l, uint32_t src, struct conn **oldest)
{
	unsigned n = 0;

	*oldest = NULL;
	for (struct conn *c = l->conns; c; c = c->next) {
		if (c->initiator || c->authed || c->evicted || c->done || c->src != src)
			continue;
		n++;
		if (!*oldest || c->started < (*oldest)->started)
			*oldest = c;
	}
	return n;
}

/* Room for one more connection accepted from src before authentication: when
 * MAX_PENDING_ADDR from src wait in their handshake, the oldest of those is shut down;
 * else when MAX_PENDING wait in all, the oldest from the address that has the most of
 * them (its thread ends at once).  A peer that connects and says nothing, or one byte a
 * second, holds its slot only until newer connections push it out; connecting again and
 * again from one address pushes out only its own, and a lone connection (the partner's)
 * is the last to go: unless many addresses gang up, the partner pairs.  Returns how many
 * connections pushed out are still on their way out. */
static unsigned __make_room(struct rep_link *l, uint32_t src)
{
	struct conn *victim = NULL, *o;
	unsigned pending = 0, evicted = 0, most = 0;

	for (struct conn *c = l->conns; c; c = c->next) {
		evicted += c->evicted;
		pending += !c->initiator && !c->authed && !c->evicted && !c->done;
	}
	if (__pending_from(l, src, &o) >= MAX_PENDING_ADDR) {
		victim = o;
	} else if (pending >= MAX_PENDING) {
		for (struct conn *c = l->conns; c; c = c->next) {
			unsigned n;

			if (c->initiator || c->authed || c->evicted || c->done)
				continue;
			n = __pending_from(l, c->src, &o);
			if (n > most || (n == most && o->started < victim->started)) {
				most = n;
				victim = o;
			}
		}
	}
	if (!victim)
		return evicted;
	victim->evicted = true;
	if (!victim->why[0])
		snprintf(victim->why, sizeof(victim->why), "unauthenticated for too long");
	shutdown(victim->fd, SHUT_RDWR);
	l->stats.drops_auth++;
	return evicted + 1;
}

static void join_free(struct conn *dead)
{
	while (dead) {
		struct conn *n = dead->next;

		pthread_join(dead->thr, NULL);
		free(dead);
		dead = n;
	}
}

static void *mgr_main(void *arg)
{
	struct rep_link *l = arg;

	for (;;) {
		struct pollfd p[2] = { { .fd = l->wake[0], .events = POLLIN },
				       { .fd = l->lfd, .events = POLLIN } };
		struct conn *dead = NULL;
		int tmo = 1000;
		uint64_t now;

		pthread_mutex_lock(&l->mu);
		if (atomic_load(&l->stopping)) {
			pthread_mutex_unlock(&l->mu);
			break;
		}
		__reap(l, &dead);
		now = now_ms();
		if (l->do_connect && !l->active && !l->cleaning && !l->outgoing) {
			if (now >= l->next_connect) {
				int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

				if (fd >= 0) {
					sock_setup(l, fd);
					if (__conn_start(l, fd, true, 0))
						close(fd);
					else
						l->outgoing = true;
				}
				if (!l->outgoing)
					l->next_connect = now + l->backoff_ms;
			} else {
				tmo = (int)(l->next_connect - now);
			}
		}
		pthread_mutex_unlock(&l->mu);
		join_free(dead);
		dead = NULL;

		if (poll(p, l->lfd >= 0 ? 2 : 1, tmo) <= 0)
			continue;
		if (p[0].revents) {
			char buf[64];

			while (read(l->wake[0], buf, sizeof(buf)) > 0) {
			}
		}
		if (l->lfd >= 0 && (p[1].revents & POLLIN)) {
			struct sockaddr_in sa = { 0 };
			socklen_t sl = sizeof(sa);
			int fd = accept4(l->lfd, (struct sockaddr *)&sa, &sl,
					 SOCK_NONBLOCK | SOCK_CLOEXEC);
			int rc = -EMFILE;

			if (fd < 0) {
				/* out of descriptors or memory: the pending connection stays in
				 * the backlog; do not spin on it */
				if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
				    errno == ENOMEM)
					usleep(SLICE_MS * 1000);
				continue;
			}
			sock_setup(l, fd);
			pthread_mutex_lock(&l->mu);
			if (!atomic_load(&l->stopping)) {
				/* connections pushed out are on their way out: their slots
				 * count only against the limit of all threads */
				unsigned leaving = __make_room(l, sa.sin_addr.s_addr);

				if (l->nconns - leaving < MAX_CONNS && l->nconns < MAX_THREADS)
					rc = __conn_start(l, fd, false, sa.sin_addr.s_addr);
			}
			pthread_mutex_unlock(&l->mu);
			if (rc) {
				lg_unauth(l, "refused an incoming connection: %s",
					  rc == -EMFILE ? "too many connections" : strerror(-rc));
				close(fd);
			}
		}
	}
	return NULL;
}

/* ---- the link ---------------------------------------------------------------------- */

int rep_start(const struct rep_config *c, const struct rep_callbacks *cb, void *arg,
	      struct rep_link **out)
{
	struct rep_link *l;
	pthread_condattr_t ca;
	size_t nl = c->node ? strlen(c->node) : 0;
	int rc, one = 1;

	if (!nl || nl > REP_NODE_MAX || c->timeout_ms < 20)
		return -EINVAL;
	for (size_t i = 0; i < nl; i++)
		if ((unsigned char)c->node[i] < 0x21 || (unsigned char)c->node[i] > 0x7e)
			return -EINVAL;
	if (sodium_init() < 0)
		return -EIO;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	memcpy(l->node, c->node, nl);
	l->do_listen = c->listen && *c->listen;
	l->do_connect = c->connect && *c->connect;
	if ((l->do_listen && rep_addr_parse(c->listen, &l->laddr)) ||
	    (l->do_connect && rep_addr_parse(c->connect, &l->caddr))) {
		free(l);
		return -EINVAL;
	}
	memcpy(l->key, c->key, REP_KEY_BYTES);
	l->hello_flags = c->plaintext ? 0 : REP_HF_ENCRYPT |
		(crypto_aead_aes256gcm_is_available() ? REP_HF_AES : 0);
	l->rekey_bytes = REP_REKEY_BYTES;
	{
		/* tests prove a rekey under traffic with a small limit */
		const char *e = getenv("HEAPFS_REP_REKEY_BYTES");
		char *end;
		unsigned long long v = e ? strtoull(e, &end, 10) : 0;

		if (e && *e && !*end && v)
			l->rekey_bytes = v;
	}
	l->timeout_ms = c->timeout_ms;
	l->hb_ms = c->timeout_ms / 4;
	l->log = c->log;
	if (cb)
		l->cb = *cb;
	l->arg = arg;
	randombytes_buf(&l->instance, sizeof(l->instance));
	l->backoff_ms = BACKOFF_MIN_MS;
	l->log_tokens = LOG_BURST;
	l->log_refill = now_ms();
	l->ctrl_tail = &l->ctrl;
	l->data_tail = &l->data;
	l->lfd = -1;
	l->wake[0] = l->wake[1] = -1;
	pthread_mutex_init(&l->mu, NULL);
	pthread_mutex_init(&l->cache_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_cond_init(&l->tx_cv, &ca);
	pthread_condattr_destroy(&ca);

	if (pipe2(l->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		rc = -errno;
		goto fail;
	}
	if (l->do_listen) {
		struct sockaddr_in sa;
		socklen_t sl = sizeof(sa);

		l->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (l->lfd < 0) {
			rc = -errno;
			goto fail;
		}
		setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l->lfd, (struct sockaddr *)&l->laddr, sizeof(l->laddr)) < 0 ||
		    listen(l->lfd, 16) < 0 ||
		    getsockname(l->lfd, (struct sockaddr *)&sa, &sl) < 0) {
			rc = -errno;
			goto fail;
		}
		l->port = ntohs(sa.sin_port);
	}
	if (pthread_create(&l->mgr, NULL, mgr_main, l)) {
		rc = -EAGAIN;
		goto fail;
	}
	*out = l;
	return 0;
fail:
	if (l->lfd >= 0)
		close(l->lfd);
	if (l->wake[0] >= 0) {
		close(l->wake[0]);
		close(l->wake[1]);
	}
	pthread_cond_destroy(&l->cv);
	pthread_cond_destroy(&l->tx_cv);
	pthread_mutex_destroy(&l->mu);
	pthread_mutex_destroy(&l->cache_mu);
	sodium_memzero(l->key, sizeof(l->key));
	free(l);
	return rc;
}

int rep_port(const struct rep_link *l)
{
	return l->port;
}

int rep_wait(struct rep_link *l, uint64_t seq, unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	int st;

	if (rx_of == l)
		return -EDEADLK;
	pthread_mutex_lock(&l->mu);
	if (!seq || seq > l->last_seq) {
		pthread_mutex_unlock(&l->mu);
		return -EINVAL;
	}
	while (l->acked_seq < seq)
		if (wait_until(&l->cv, &l->mu, deadline)) {
			pthread_mutex_unlock(&l->mu);
			return -ETIMEDOUT;
		}
	st = __status_of(l, seq);
	pthread_mutex_unlock(&l->mu);
	return st;
}

int rep_flush(struct rep_link *l, unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms, from, to;
	int st = 0;

	if (rx_of == l)
		return -EDEADLK;
	pthread_mutex_lock(&l->mu);
	from = l->acked_seq + 1;
	to = l->last_seq;
	while (l->acked_seq < to)
		if (wait_until(&l->cv, &l->mu, deadline)) {
			pthread_mutex_unlock(&l->mu);
			return -ETIMEDOUT;
		}
	/* the lowest seq in the range with a non-zero status */
	for (unsigned i = 0; i < FAIL_RING; i++)
		if (l->fail_ring[i].a && l->fail_ring[i].a <= to && l->fail_ring[i].b >= from) {
			st = -ENOTCONN;
			to = l->fail_ring[i].a > from ? l->fail_ring[i].a : from;
		}
	for (unsigned i = 0; i < ST_RING; i++)
		if (l->st_ring[i].seq >= from && l->st_ring[i].seq <= to && l->st_ring[i].seq) {
			st = l->st_ring[i].st;
			to = l->st_ring[i].seq;
		}
	pthread_mutex_unlock(&l->mu);
	return st;
}

void rep_kick(struct rep_link *l)
{
	pthread_mutex_lock(&l->mu);
	if (l->active && !l->active->why[0]) {
		snprintf(l->active->why, sizeof(l->active->why), "kicked");
		shutdown(l->active->fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&l->mu);
}

void rep_get_stats(struct rep_link *l, struct rep_stats *st)
{
	pthread_mutex_lock(&l->mu);
	*st = l->stats;
	st->up = l->active != NULL;
	memcpy(st->peer, l->active ? l->peer : l->last_peer, sizeof(st->peer));
	st->unacked_bytes = l->unacked_bytes;
	snprintf(st->cipher, sizeof(st->cipher), "%s", l->hello_flags & REP_HF_ENCRYPT ?
		 (l->cipher ? rep_cipher_name(l->cipher) : "pending") : "none");
	st->key_rotated_ms = atomic_load(&l->key_at);
	st->rekeys = atomic_load(&l->rekeys);
	st->last_seq = l->last_seq;
	st->acked_seq = l->acked_seq;
	pthread_mutex_unlock(&l->mu);
}

void rep_stop(struct rep_link *l)
{
	struct conn *all;

	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	atomic_store(&l->stopping, true);
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	wake_mgr(l);
	pthread_join(l->mgr, NULL);

	pthread_mutex_lock(&l->mu);
	for (struct conn *c = l->conns; c; c = c->next)
		if (c->fd >= 0) {
			if (!c->why[0])
				snprintf(c->why, sizeof(c->why), "stopped");
			shutdown(c->fd, SHUT_RDWR);
		}
	all = l->conns;
	l->conns = NULL;
	pthread_mutex_unlock(&l->mu);
	join_free(all);

	if (l->lfd >= 0)
		close(l->lfd);
	close(l->wake[0]);
	close(l->wake[1]);
	queue_free(l, l->ctrl);
	queue_free(l, l->data);
	free(l->lens);
	while (l->ncache)
		free(l->cache[--l->ncache]);
	pthread_mutex_destroy(&l->cache_mu);
	pthread_cond_destroy(&l->cv);
	pthread_cond_destroy(&l->tx_cv);
	pthread_mutex_destroy(&l->mu);
	sodium_memzero(l->key, sizeof(l->key));
	free(l);
}
