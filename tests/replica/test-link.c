/*
 * test-link.c — the replica/ link end to end on 127.0.0.1: two links in one process pair
 * up and exchange 10^5 messages each way, in order, with their statuses travelling back;
 * replies from inside recv() under a full queue; a wrong secret refused on both sides;
 * garbage, truncated, oversized, pre-auth and out-of-order frames from raw sockets each
 * dropped while the link survives; an authenticated peer's bad seqs and ACKs dropped with
 * nothing delivered; slow-loris connections that cannot keep the partner from pairing; a
 * peer that never acknowledges nor reads dropped before the queue grows past its bounds;
 * a peer process stopped with SIGSTOP declared down within the timeout (this binary
 * re-runs itself with --child as that peer); reconnect after rep_kick; both sides
 * connecting at once keep one connection.  RT_ONLY=NAME runs only some (rtest.h).
 *
 * Ports: listen on port 0 and ask rep_port(), or (for links that connect to each other)
 * ports the kernel handed out a moment before; only 127.0.0.1 (the slow-loris
 * connections come from 127.0.0.2 and .3, other addresses of the loopback).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stddef.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "replica_i.h"
#include "rtest.h"

#ifndef TMO
#define TMO 400 /* ms: the links' timeout in these tests (TSan's build: longer) */
#endif
/* ms: how much later than the timeout a failure may be noticed — what a loaded 2-CPU
 * machine (the suite runs two tests at once) adds to a poll wake-up, not slack in the
 * link: it measured 0-25 ms idle (TSan's build: more) */
#ifndef MARGIN
#define MARGIN 300
#endif
#define NMSG 100000
#define NSEND 4 /* sender threads of one node at most */

extern char **environ;

struct node {
	struct rep_link *l;
	FILE *log;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ups, downs;
	char peer[REP_NODE_MAX + 1], last_down[96];
	/* counters carry a sender id in bits 40..: expect[id] is its next, ~0 = any */
	uint64_t recvd, order_errs, expect[NSEND];
	int *st_by_seq;   /* if set: every ack's status by seq (< st_cap) */
	uint64_t st_cap;
	uint64_t corrupt; /* payloads not as the sender filled them */
	uint64_t acks, ack_errs, acked_seq, enotconn;
	uint64_t enotconn_late; /* -ENOTCONN reported after down(): must never happen */
	bool reply;      /* recv answers each message with a small rep_send */
	size_t reply_len; /* ... of this many bytes (0: 8, the message's counter) */
	int64_t reply_err;
	uint64_t replies; /* replies sent */
};

/* The status a receiver returns for the n-th message of a sender: some non-zero. */
static int status_for(uint64_t n)
{
	return n % 10 == 3 ? -EIO : n % 1000 == 7 ? -ENOSPC : 0;
}

static void cb_up(void *arg, const char *peer)
{
	struct node *n = arg;

	pthread_mutex_lock(&n->mu);
	n->ups++;
	snprintf(n->peer, sizeof(n->peer), "%s", peer);
	memset(n->expect, 0xff, sizeof(n->expect));
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

static void cb_down(void *arg, const char *why)
{
	struct node *n = arg;

	pthread_mutex_lock(&n->mu);
	n->downs++;
	snprintf(n->last_down, sizeof(n->last_down), "%s", why);
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

static int cb_recv(void *arg, uint32_t type, const void *p, size_t len)
{
	struct node *n = arg;
	static unsigned char big[REP_PAYLOAD_MAX];
	uint64_t cnt = 0;
	size_t reply_len;
	bool reply, bad = false;

	if (type != REP_TYPE_USER || len < sizeof(cnt))
		return 0; /* replies and odd sizes: just counted by the link */
	memcpy(&cnt, p, sizeof(cnt));
	for (size_t i = sizeof(cnt); i < len; i++)
		if (((const unsigned char *)p)[i] != (cnt & 0xff)) {
			bad = true;
			break;
		}
	pthread_mutex_lock(&n->mu);
	n->corrupt += bad;
	if ((cnt >> 40) >= NSEND)
		n->order_errs++;
	else if (n->expect[cnt >> 40] != ~0ull && cnt != n->expect[cnt >> 40])
		n->order_errs++;
	else
		n->expect[cnt >> 40] = cnt + 1;
	n->recvd++;
	reply = n->reply;
	reply_len = n->reply_len;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	if (reply) {
		int64_t r = reply_len ? rep_send(n->l, REP_TYPE_USER + 1, big, reply_len)
				      : rep_send(n->l, REP_TYPE_USER + 1, &cnt, sizeof(cnt));

		pthread_mutex_lock(&n->mu);
		if (r < 0)
			n->reply_err = r;
		else
			n->replies++;
		pthread_mutex_unlock(&n->mu);
	}
	return status_for(cnt);
}

/* Acks come in seq order; the k-th message a node sent since its counters were reset has
 * counter k, so its status must be status_for(k) (when nothing was lost). */
static void cb_acked(void *arg, uint64_t seq, int st)
{
	struct node *n = arg;

	pthread_mutex_lock(&n->mu);
	if (n->acked_seq && seq != n->acked_seq + 1)
		n->ack_errs++;
	n->acked_seq = seq;
	if (seq < n->st_cap)
		n->st_by_seq[seq] = st;
	if (n->st_by_seq) {
		n->acks++; /* checked by seq afterwards */
	} else if (st == -ENOTCONN) {
		n->enotconn++;
		n->enotconn_late += n->ups == n->downs;
	} else {
		if (st != status_for(n->acks))
			n->ack_errs++;
		n->acks++;
	}
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

static const struct rep_callbacks cbs = { cb_up, cb_down, cb_recv, cb_acked };

static void key_of(uint8_t key[REP_KEY_BYTES], const char *secret)
{
	crypto_generichash(key, REP_KEY_BYTES, (const unsigned char *)secret, strlen(secret),
			   NULL, 0);
}

/* The links' timeout for the next node_start.  Tests of order, content and statuses
 * under load use STEADY_TMO: they check what arrives, not how fast a silence is noticed,
 * and a loaded CI host (two suites at once, ASan) may pause a thread longer than TMO. */
#define STEADY_TMO 10000
static unsigned node_tmo = TMO;
static bool node_plain; /* the next node_start: encrypt = false */

/* Start node n; listen on lport (0: any), connect to cport (0: do not connect). */
static int node_start(struct node *n, const char *name, int lport, int cport,
		      const char *secret)
{
	char listen[32], connect[32];
	struct rep_config c = { .node = name, .listen = listen, .connect = connect,
				.timeout_ms = node_tmo };

	memset(n, 0, sizeof(*n));
	pthread_mutex_init(&n->mu, NULL);
	pthread_cond_init(&n->cv, NULL);
	memset(n->expect, 0xff, sizeof(n->expect));
	n->log = tmpfile();
	c.log = n->log;
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", lport);
	if (cport)
		snprintf(connect, sizeof(connect), "127.0.0.1:%d", cport);
	else
		connect[0] = 0;
	key_of(c.key, secret);
	c.plaintext = node_plain;
	return rep_start(&c, &cbs, n, &n->l);
}

static void node_stop(struct node *n)
{
	rep_stop(n->l);
	n->l = NULL;
	fclose(n->log);
	pthread_cond_destroy(&n->cv);
	pthread_mutex_destroy(&n->mu);
}

/* Wait until *field >= want (field an int or uint64 of n, read under n->mu). */
/* expr (of n's fields) true now, read under n->mu */
#define NOW(n, expr) WAIT_FOR(n, expr, 0)

#define WAIT_FOR(n, expr, secs)                                                            \
	({                                                                                 \
		double _end = rt_now() + (secs);                                           \
		bool _ok;                                                                  \
		pthread_mutex_lock(&(n)->mu);                                              \
		while (!(_ok = (expr)) && rt_now() < _end) {                               \
			pthread_mutex_unlock(&(n)->mu);                                    \
			usleep(2000);                                                      \
			pthread_mutex_lock(&(n)->mu);                                      \
		}                                                                          \
		pthread_mutex_unlock(&(n)->mu);                                            \
		_ok;                                                                       \
	})

static bool log_has(struct node *n, const char *s)
{
	char buf[16384];
	ssize_t got;

	fflush(n->log);
	got = pread(fileno(n->log), buf, sizeof(buf) - 1, 0);
	if (got < 0)
		return false;
	buf[got] = 0;
	return strstr(buf, s) != NULL;
}

/* A failed test shows what n logged (its first 16 KiB). */
static void log_dump(struct node *n)
{
	char buf[16384];
	ssize_t got;

	fflush(n->log);
	got = pread(fileno(n->log), buf, sizeof(buf) - 1, 0);
	buf[got > 0 ? got : 0] = 0;
	fprintf(stderr, "--- its log:\n%s", buf);
}

static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof(sa)) &&
	    !getsockname(fd, (struct sockaddr *)&sa, &sl))
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* A pair: a listens, b connects to it; both with timeout tmo. */
static int pair_tmo(struct node *a, struct node *b, const char *sa, const char *sb,
		    unsigned tmo)
{
	int ret = -1;

	node_tmo = tmo;
	if (node_start(a, "a", 0, 0, sa))
		goto out;
	if (node_start(b, "b", 0, rep_port(a->l), sb)) {
		node_stop(a);
		goto out;
	}
	ret = 0;
out:
	node_tmo = TMO;
	return ret;
}

static int pair(struct node *a, struct node *b, const char *sa, const char *sb)
{
	return pair_tmo(a, b, sa, sb, TMO);
}

struct sender {
	struct node *n;
	uint64_t count;
	size_t maxlen;
	int64_t err;
	unsigned id;      /* goes into bits 40.. of the counters */
	uint64_t *seqs;   /* if set: the seq of each message */
};

static void *sender_main(void *arg)
{
	struct sender *s = arg;
	static __thread unsigned char buf[1 << 20];

	for (uint64_t i = 0; i < s->count; i++) {
		size_t len = sizeof(i) + (i * 7919) % (s->maxlen - sizeof(i) + 1);
		uint64_t cnt = (uint64_t)s->id << 40 | i;
		int64_t r;

		memcpy(buf, &cnt, sizeof(cnt));
		memset(buf + sizeof(cnt), (int)(cnt & 0xff), len - sizeof(cnt));
		if (i % 3 == 1) {
			/* in pieces: rep_sendv gathers them */
			struct iovec iov[3] = { { buf, sizeof(cnt) }, { buf + sizeof(cnt), (len - sizeof(cnt)) / 2 },
						{ buf + sizeof(cnt) + (len - sizeof(cnt)) / 2,
						  len - sizeof(cnt) - (len - sizeof(cnt)) / 2 } };

			r = rep_sendv(s->n->l, REP_TYPE_USER, iov, 3);
		} else {
			r = rep_send(s->n->l, REP_TYPE_USER, buf, len);
		}
		if (r < 0) {
			s->err = r;
			break;
		}
		if (s->seqs)
			s->seqs[i] = (uint64_t)r;
	}
	return NULL;
}

/* ---- the tests ------------------------------------------------------------------------ */

static void test_exchange(void)
{
	struct node a, b;
	struct sender sa = { &a, NMSG, 600, 0, 0, NULL }, sb = { &b, NMSG, 600, 0, 0, NULL };
	pthread_t ta, tb;
	struct rep_stats st;
	bool started = false;

	CHECK(!pair_tmo(&a, &b, "s3cret", "s3cret", STEADY_TMO));
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	CHECK(NOW(&a, !strcmp(a.peer, "b")) && NOW(&b, !strcmp(b.peer, "a")));
	pthread_create(&ta, NULL, sender_main, &sa);
	pthread_create(&tb, NULL, sender_main, &sb);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	CHECK_EQ(sa.err, 0);
	CHECK_EQ(sb.err, 0);
	/* flush answers the first non-zero status of what was still unacknowledged */
	for (int i = 0; i < 2; i++) {
		int f = rep_flush(i ? b.l : a.l, 10000);

		CHECK(f == 0 || f == -EIO || f == -ENOSPC);
	}
	CHECK(WAIT_FOR(&a, a.acks == NMSG, 10) && WAIT_FOR(&b, b.acks == NMSG, 10));
	CHECK(WAIT_FOR(&a, a.recvd == NMSG, 10) && WAIT_FOR(&b, b.recvd == NMSG, 10));
	CHECK(NOW(&a, !a.order_errs) && NOW(&b, !b.order_errs));
	CHECK(NOW(&a, !a.corrupt) && NOW(&b, !b.corrupt));
	CHECK(NOW(&a, !a.ack_errs) && NOW(&b, !b.ack_errs));
	CHECK(NOW(&a, !a.enotconn) && NOW(&b, !b.enotconn));
	CHECK(NOW(&a, !a.downs) && NOW(&b, !b.downs));
	rep_get_stats(a.l, &st);
	CHECK(st.up && !strcmp(st.peer, "b"));
	CHECK_EQ(st.sent_msgs, NMSG);
	CHECK_EQ(st.recv_msgs, NMSG);
	CHECK_EQ(st.acked_seq, st.last_seq);
	CHECK_EQ(st.unacked_bytes, 0);
	CHECK_EQ(st.connects, 1);
	/* rep_wait answers a seq's own status (seq s carries counter s - 1 here; the link
	 * remembers the last REP_WAIT_STATUSES non-zero ones) */
	CHECK_EQ(rep_wait(a.l, NMSG - 6, 1000), status_for(NMSG - 7));
	CHECK_EQ(rep_wait(a.l, NMSG - 5, 1000), 0);
	CHECK_EQ(rep_wait(a.l, NMSG - 992, 1000), status_for(NMSG - 993));
	CHECK_EQ(status_for(NMSG - 993), -ENOSPC);
	/* argument errors */
	CHECK_EQ(rep_send(a.l, REP_TYPE_USER - 1, "x", 1), -EINVAL);
	{
		static char big[REP_PAYLOAD_MAX + 1];

		CHECK_EQ(rep_send(a.l, REP_TYPE_USER, big, sizeof(big)), -EMSGSIZE);
		CHECK_EQ(rep_send(a.l, REP_TYPE_USER, big, REP_PAYLOAD_MAX) > 0, 1);
	}
done:
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

/* Three threads send from a at once (messages up to 256 KiB, whole or in pieces) while b
 * sends back: each sender's messages arrive in its order, intact, and each seq's ack
 * carries the status b's recv() gave that very message. */
static void test_concurrent_senders(void)
{
#ifdef __SANITIZE_THREAD__
	enum { PER = 400 }; /* TSan checks every byte compared: ~30x slower */
#else
	enum { PER = 3000 };
#endif
	struct node a, b;
	struct sender s[4];
	pthread_t t[4];
	bool started = false;
	int *st = calloc(3 * PER + 16, sizeof(int));

	CHECK(st);
	CHECK(!pair_tmo(&a, &b, "k", "k", STEADY_TMO));
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	pthread_mutex_lock(&a.mu);
	a.st_by_seq = st;
	a.st_cap = 3 * PER + 16;
	pthread_mutex_unlock(&a.mu);
	for (unsigned i = 0; i < 4; i++) {
		s[i] = (struct sender){ .n = i < 3 ? &a : &b, .count = PER, .maxlen = 256 << 10,
					.id = i < 3 ? i : 0, .seqs = calloc(PER, sizeof(uint64_t)) };
		CHECK(s[i].seqs);
	}
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, sender_main, &s[i]);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(s[i].err, 0);
	CHECK(rep_flush(a.l, 10000) != -ETIMEDOUT && rep_flush(b.l, 10000) != -ETIMEDOUT);
	CHECK(WAIT_FOR(&a, a.acks == 3 * PER && a.recvd == PER, 10));
	CHECK(WAIT_FOR(&b, b.acks == PER && b.recvd == 3 * PER, 10));
	CHECK(NOW(&a, !a.order_errs && !a.corrupt && !a.downs && !a.ack_errs));
	CHECK(NOW(&b, !b.order_errs && !b.corrupt && !b.downs && !b.ack_errs));
	for (unsigned i = 0; i < 3; i++)
		for (uint64_t k = 0; k < PER; k++)
			CHECK_EQ(st[s[i].seqs[k]], status_for((uint64_t)i << 40 | k));
done:
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
	for (int i = 0; i < 4; i++)
		free(s[i].seqs);
	free(st);
}

/* recv() replies with rep_send while a fills the queue with 1 MiB messages: neither
 * side's receive thread may wait for room, or both would stall until the timeout. */
static void test_reply_under_load(void)
{
	struct node a, b;
	struct sender sa = { &a, 300, 1 << 20, 0, 0, NULL };
	pthread_t ta;
	bool started = false;

	CHECK(!pair_tmo(&a, &b, "k", "k", STEADY_TMO));
	started = true;
	pthread_mutex_lock(&b.mu);
	b.reply = true;
	pthread_mutex_unlock(&b.mu);
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	pthread_create(&ta, NULL, sender_main, &sa);
	pthread_join(ta, NULL);
	CHECK_EQ(sa.err, 0);
	CHECK(rep_flush(a.l, 10000) != -ETIMEDOUT);
	CHECK(WAIT_FOR(&a, a.acks == 300, 10));
	CHECK(NOW(&b, !b.reply_err));
	CHECK_EQ(rep_flush(b.l, 5000), 0);
	CHECK(NOW(&a, !a.downs) && NOW(&b, !b.downs));
	CHECK(NOW(&a, !a.ack_errs) && NOW(&b, !b.order_errs && !b.corrupt && b.recvd == 300));
done:
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

static void test_wrong_secret(void)
{
	struct node a, b;
	struct rep_stats sa, sb;
	bool started = false;

	CHECK(!pair(&a, &b, "one secret", "another secret"));
	started = true;
	usleep(1500 * 1000);
	rep_get_stats(a.l, &sa);
	rep_get_stats(b.l, &sb);
	CHECK(NOW(&a, !a.ups) && NOW(&b, !b.ups));
	CHECK(!sa.up && !sb.up);
	CHECK(sa.drops_auth >= 1 && sb.drops_auth >= 1);
	CHECK(log_has(&a, "wrong secret") && log_has(&b, "wrong secret"));
	CHECK_EQ(rep_send(b.l, REP_TYPE_USER, "x", 1), -ENOTCONN);
done:
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

/* encrypt = true on one node and false on the other: neither pairs, and both say why
 * (it is in their status until fixed).  Both false: they pair, nothing sealed. */
static void test_encrypt_mismatch(void)
{
	struct node a, b;
	struct rep_stats sa, sb;
	bool started = false;

	node_plain = true;
	CHECK(!node_start(&a, "a", 0, 0, "k"));
	node_plain = false;
	if (node_start(&b, "b", 0, rep_port(a.l), "k")) {
		node_stop(&a);
		goto done;
	}
	started = true;
	usleep(1500 * 1000);
	rep_get_stats(a.l, &sa);
	rep_get_stats(b.l, &sb);
	CHECK(NOW(&a, !a.ups) && NOW(&b, !b.ups));
	CHECK(strstr(sa.misconfigured, "encrypt = false here but node \"b\" has encrypt = true"));
	CHECK(strstr(sb.misconfigured, "encrypt = true here but node \"a\" has encrypt = false"));
	CHECK(log_has(&a, "set the same on both nodes") && log_has(&b, "set the same on both"));
	CHECK(!strcmp(sa.cipher, "none") && !strcmp(sb.cipher, "pending"));
	node_stop(&a);
	node_stop(&b);
	started = false;
	/* both plaintext: they pair, and say so */
	node_plain = true;
	CHECK(!pair(&a, &b, "k", "k"));
	node_plain = false;
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	CHECK(rep_send(b.l, REP_TYPE_USER, &(uint64_t){ 0 }, 8) > 0 && !rep_flush(b.l, 3000));
	rep_get_stats(a.l, &sa);
	CHECK(!strcmp(sa.cipher, "none") && !sa.misconfigured[0]);
	CHECK(log_has(&a, "not encrypted"));
done:
	node_plain = false;
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

/* With a rekey limit of 64 KiB (HEAPFS_REP_REKEY_BYTES), messages both ways move each
 * direction to new keys many times under traffic: all arrive, in order and intact, no
 * drop; the stats count the rekeys and the time of the last. */
static void test_rekey(void)
{
	struct node a, b;
	struct sender sa = { &a, 3000, 600, 0, 0, NULL }, sb = { &b, 3000, 600, 0, 0, NULL };
	pthread_t ta, tb;
	struct rep_stats st, st2;
	struct timespec now;
	bool started = false;

	setenv("HEAPFS_REP_REKEY_BYTES", "65536", 1);
	CHECK(!pair_tmo(&a, &b, "k", "k", STEADY_TMO));
	unsetenv("HEAPFS_REP_REKEY_BYTES");
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	rep_get_stats(a.l, &st);
	CHECK(!strcmp(st.cipher, crypto_aead_aes256gcm_is_available() ? "aes256gcm"
								      : "chacha20poly1305"));
	pthread_create(&ta, NULL, sender_main, &sa);
	pthread_create(&tb, NULL, sender_main, &sb);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	CHECK_EQ(sa.err, 0);
	CHECK_EQ(sb.err, 0);
	CHECK(WAIT_FOR(&a, a.recvd == 3000, 10) && WAIT_FOR(&b, b.recvd == 3000, 10));
	CHECK(WAIT_FOR(&a, a.acks == 3000, 10) && WAIT_FOR(&b, b.acks == 3000, 10));
	CHECK(NOW(&a, !a.order_errs && !a.corrupt && !a.downs));
	CHECK(NOW(&b, !b.order_errs && !b.corrupt && !b.downs));
	rep_get_stats(a.l, &st2);
	clock_gettime(CLOCK_REALTIME, &now);
	fprintf(stderr, "  %llu rekeys seen by a\n", (unsigned long long)st2.rekeys);
	CHECK(st2.rekeys >= 10 && st2.key_rotated_ms >= st.key_rotated_ms);
	CHECK(st2.key_rotated_ms <= (uint64_t)now.tv_sec * 1000 + 1000 &&
	      st2.key_rotated_ms + 60000 >= (uint64_t)now.tv_sec * 1000);
done:
	unsetenv("HEAPFS_REP_REKEY_BYTES");
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

/* rep_start refuses what it cannot run with, before starting anything. */
static void test_config(void)
{
	struct rep_config c = { .node = "a", .listen = "127.0.0.1:0", .timeout_ms = TMO };
	struct rep_link *l = NULL, *l2 = NULL;
	char busy[32];

	c.node = "";
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), -EINVAL);
	c.node = "two words";
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), -EINVAL);
	c.node = "a-name-that-is-longer-than-sixty-four-bytes-a-name-that-is-longer-x";
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), -EINVAL);
	c.node = "a";
	c.timeout_ms = 5;
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), -EINVAL);
	c.timeout_ms = TMO;
	c.connect = "127.0.0.1";
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), -EINVAL);
	c.connect = NULL;
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l), 0);
	CHECK(rep_port(l) > 0);
	snprintf(busy, sizeof(busy), "127.0.0.1:%d", rep_port(l));
	c.listen = busy;
	CHECK_EQ(rep_start(&c, &cbs, NULL, &l2), -EADDRINUSE);
	CHECK_EQ(rep_send(l, REP_TYPE_USER, "x", 1), -ENOTCONN);
	CHECK_EQ(rep_flush(l, 10), 0);
done:
	rep_stop(l);
}

/* ---- raw sockets ---------------------------------------------------------------------- */

/* The raw peer's session once raw_auth passed on fd (one socket at a time): what it
 * sends is sealed and what it reads opened with the keys the link derived too, so the
 * hostile frames below reach the link's checks behind the AEAD. */
static struct {
	int fd;
	unsigned cipher;
	struct rep_dir tx, rx;
} raw_s = { .fd = -1 };

/* A socket connected to 127.0.0.1:port from the address src (host order; 0: any). */
static int raw_connect_from(int port, uint32_t src)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in from = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(src) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && ((src && bind(fd, (struct sockaddr *)&from, sizeof(from))) ||
			connect(fd, (struct sockaddr *)&sa, sizeof(sa)))) {
		close(fd);
		fd = -1;
	}
	if (fd == raw_s.fd)
		raw_s.fd = -1; /* the number of a socket closed since: a new one, not sealed */
	return fd;
}

static int raw_connect(int port)
{
	return raw_connect_from(port, 0);
}

/* A socket connected to 127.0.0.1:port with a receive window of a few KiB: what the
 * other side sends beyond it stays in its queue. */
static int raw_connect_small(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &(int){ 4096 }, sizeof(int)) ||
			connect(fd, (struct sockaddr *)&sa, sizeof(sa)))) {
		close(fd);
		fd = -1;
	}
	if (fd == raw_s.fd)
		raw_s.fd = -1;
	return fd;
}

/* True when the other side closes fd within secs (what it sends meanwhile is read). */
static bool raw_closed(int fd, double secs)
{
	double end = rt_now() + secs;
	char buf[4096];

	while (rt_now() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		if (poll(&p, 1, 50) > 0) {
			ssize_t got = read(fd, buf, sizeof(buf));

			if (got <= 0)
				return true;
		}
	}
	return false;
}

static int raw_frame(int fd, unsigned kind, uint32_t type, uint64_t seq, const void *p,
		     size_t len)
{
	struct rep_hdr h;
	struct iovec pi = { (void *)p, len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)p, len } };
	unsigned char *sealed = NULL;
	int rc;

	rep_frame_fill(&h, kind, type, seq, &pi, 1, len);
	if (fd == raw_s.fd && raw_s.cipher != REP_C_NONE) {
		sealed = malloc(len + REP_TAG_BYTES);
		if (!sealed)
			return -1;
		rep_sealv(&raw_s.tx, REP_REKEY_BYTES, &h, sealed, &pi, len ? 1 : 0);
		iov[1] = (struct iovec){ sealed, len + REP_TAG_BYTES };
		len += REP_TAG_BYTES;
	}
	rc = rep_writev_all(fd, iov, len ? 2 : 1);
	free(sealed);
	return rc;
}

static int raw_read_frame(int fd, struct rep_hdr *h, unsigned char *buf, size_t cap)
{
	bool sealed = fd == raw_s.fd && raw_s.cipher != REP_C_NONE;
	size_t have = 0, wl;
	char why[160];

	while (have < sizeof(*h)) {
		ssize_t got = read(fd, (char *)h + have, sizeof(*h) - have);

		if (got <= 0)
			return -1;
		have += (size_t)got;
	}
	wl = h->len + (sealed ? REP_TAG_BYTES : 0);
	if (wl > cap)
		return -1;
	for (have = 0; have < wl;) {
		ssize_t got = read(fd, buf + have, wl - have);

		if (got <= 0)
			return -1;
		have += (size_t)got;
	}
	if (sealed && rep_open(&raw_s.rx, h, buf, why, sizeof(why)) < 0)
		return -1;
	return 0;
}

/* Authenticate a raw socket to port as node `name` with `secret`, its first MSG seq
 * announced as next_seq. */
static int raw_auth_seq(int fd, const char *name, const char *secret, uint64_t next_seq)
{
	struct rep_hello mine, peer;
	size_t mlen;
	unsigned char buf[256];
	struct rep_hdr h;
	uint8_t key[REP_KEY_BYTES], mac[REP_MAC_BYTES];
	char why[128];

	size_t plen;
	int cipher;

	key_of(key, secret);
	raw_s.fd = -1;
	rep_hello_make(&mine, &mlen, REP_ROLE_INITIATOR, name, 42, next_seq, REP_HF_ALL);
	if (raw_frame(fd, REP_K_HELLO, 0, 0, &mine, mlen) || raw_read_frame(fd, &h, buf, sizeof(buf)) ||
	    h.kind != REP_K_HELLO ||
	    rep_hello_parse(buf, h.len, REP_ROLE_ACCEPTOR, name, &peer, why, sizeof(why)))
		return -1;
	plen = h.len;
	cipher = rep_cipher_pick(mine.flags, peer.flags);
	rep_auth_mac(mac, key, REP_ROLE_INITIATOR, &mine, mlen, &peer, plen);
	if (cipher < 0 || raw_frame(fd, REP_K_AUTH, 0, 0, mac, sizeof(mac)) ||
	    raw_read_frame(fd, &h, buf, sizeof(buf)) || h.kind != REP_K_AUTH ||
	    rep_auth_verify(buf, key, REP_ROLE_ACCEPTOR, &mine, mlen, &peer, plen))
		return -1;
	raw_s.fd = fd;
	raw_s.cipher = (unsigned)cipher;
	/* the last raw connection's contexts go first */
	rep_dir_wipe(&raw_s.tx);
	rep_dir_wipe(&raw_s.rx);
	if (cipher != REP_C_NONE &&
	    rep_session_keys(&raw_s.tx, &raw_s.rx, (unsigned)cipher, key, &mine, mlen, &peer,
			     plen))
		return -1;
	return 0;
}

static int raw_auth(int fd, const char *name, const char *secret)
{
	return raw_auth_seq(fd, name, secret, 1);
}

/* Read frames from a raw socket until a MSG comes (heartbeats skipped): its seq, or 0. */
static uint64_t raw_read_msg(int fd)
{
	static unsigned char buf[REP_PAYLOAD_MAX + REP_TAG_BYTES];
	struct rep_hdr h;

	while (!raw_read_frame(fd, &h, buf, sizeof(buf)))
		if (h.kind == REP_K_MSG)
			return h.seq;
	return 0;
}

/* rep_send BIG_SENDS messages of REP_PAYLOAD_MAX bytes on the link arg (to a peer that
 * reads nothing: the first fills the socket, the next waits in it). */
#define BIG_SENDS 2
static void *big_sends_main(void *arg)
{
	static unsigned char big[REP_PAYLOAD_MAX];

	for (int i = 0; i < BIG_SENDS; i++)
		rep_send(arg, REP_TYPE_USER, big, sizeof(big));
	return NULL;
}

/* A sealed MSG frame of the raw session (seq, an 8-byte counter) in out (header +
 * ciphertext + tag); its length. */
static size_t raw_sealed_msg(unsigned char *out, uint64_t seq, uint64_t cnt)
{
	struct rep_hdr h;

	rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, seq, NULL, 0, sizeof(cnt));
	memcpy(out + sizeof(h), &cnt, sizeof(cnt));
	rep_seal(&raw_s.tx, REP_REKEY_BYTES, &h, out + sizeof(h), out + sizeof(h));
	memcpy(out, &h, sizeof(h));
	return sizeof(h) + sizeof(cnt) + REP_TAG_BYTES;
}

/* What is on the wire between two authenticated peers cannot be changed, replayed, left
 * out, or sent in the clear: each drops the connection before the message reaches
 * recv().  And a recorded handshake (an initiator's HELLO and AUTH) replayed on a new
 * connection does not pair: the acceptor's nonce is new. */
static void test_tamper(void)
{
	struct node a;
	bool started = false;
	unsigned char f1[128], f2[128], rec[512];
	size_t l1, l2, reclen = 0;
	int fd = -1, port, kase;
	struct rep_stats st;
	uint64_t drops;

	node_tmo = STEADY_TMO;
	CHECK(!node_start(&a, "a", 0, 0, "k"));
	node_tmo = TMO;
	started = true;
	port = rep_port(a.l);
	for (kase = 0; kase < 4; kase++) {
		uint64_t got;

		fd = raw_connect(port);
		CHECK(fd >= 0 && !raw_auth(fd, "mallory", "k"));
		CHECK(WAIT_FOR(&a, a.ups == kase + 1, 3));
		pthread_mutex_lock(&a.mu);
		got = a.recvd;
		pthread_mutex_unlock(&a.mu);
		l1 = raw_sealed_msg(f1, 1, 10);
		l2 = raw_sealed_msg(f2, 2, 20);
		CHECK(write(fd, f1, l1) == (ssize_t)l1);
		CHECK(WAIT_FOR(&a, a.recvd == got + 1, 3));
		switch (kase) {
		case 0: /* one bit of the ciphertext */
			f2[sizeof(struct rep_hdr) + 3] ^= 0x20;
			break;
		case 1: /* one bit of the header (its type) */
			f2[offsetof(struct rep_hdr, type)] ^= 1;
			break;
		case 2: /* the first frame again instead of the second */
			memcpy(f2, f1, l1);
			break;
		case 3: /* the second frame left out: the third in its place */
			l2 = raw_sealed_msg(f2, 3, 30);
			break;
		}
		CHECK(write(fd, f2, l2) == (ssize_t)l2);
		CHECK(raw_closed(fd, 3));
		close(fd);
		fd = -1;
		CHECK(WAIT_FOR(&a, a.downs == kase + 1, 3));
		CHECK(NOW(&a, a.recvd == got + 1)); /* nothing of it reached recv() */
		CHECK(log_has(&a, kase == 3 ? "out of order" : "failed to authenticate") ||
		      log_has(&a, "failed to authenticate"));
	}
	/* a plaintext frame on the encrypted link */
	fd = raw_connect(port);
	CHECK(fd >= 0 && !raw_auth(fd, "mallory", "k"));
	CHECK(WAIT_FOR(&a, a.ups == 5, 3));
	raw_s.fd = -1; /* written as a plaintext peer would */
	CHECK(!raw_frame(fd, REP_K_MSG, REP_TYPE_USER, 1, &(uint64_t){ 10 }, 8));
	CHECK(raw_closed(fd, 3));
	close(fd);
	fd = -1;
	CHECK(log_has(&a, "not sealed on an encrypted link"));
	/* a recorded handshake: record what an initiator sends, replay it */
	{
		struct rep_hello mine;
		size_t mlen;
		struct rep_hdr h;
		unsigned char buf[256];
		uint8_t key[REP_KEY_BYTES], mac[REP_MAC_BYTES];
		char why[128];

		fd = raw_connect(port);
		CHECK(fd >= 0);
		key_of(key, "k");
		rep_hello_make(&mine, &mlen, REP_ROLE_INITIATOR, "mallory", 42, 1, REP_HF_ALL);
		rep_frame_fill(&h, REP_K_HELLO, 0, 0, &(struct iovec){ &mine, mlen }, 1, mlen);
		memcpy(rec, &h, sizeof(h));
		memcpy(rec + sizeof(h), &mine, mlen);
		reclen = sizeof(h) + mlen;
		CHECK(write(fd, rec, reclen) == (ssize_t)reclen);
		CHECK(!raw_read_frame(fd, &h, buf, sizeof(buf)) && h.kind == REP_K_HELLO);
		CHECK(!rep_hello_parse(buf, h.len, REP_ROLE_ACCEPTOR, "mallory",
				       &(struct rep_hello){ 0 }, why, sizeof(why)));
		rep_auth_mac(mac, key, REP_ROLE_INITIATOR, &mine, mlen, buf, h.len);
		rep_frame_fill(&h, REP_K_AUTH, 0, 0, &(struct iovec){ mac, sizeof(mac) }, 1,
			       sizeof(mac));
		memcpy(rec + reclen, &h, sizeof(h));
		memcpy(rec + reclen + sizeof(h), mac, sizeof(mac));
		CHECK(write(fd, rec + reclen, sizeof(h) + sizeof(mac)) ==
		      (ssize_t)(sizeof(h) + sizeof(mac)));
		reclen += sizeof(h) + sizeof(mac);
		CHECK(WAIT_FOR(&a, a.ups == 6, 3)); /* the real one pairs */
		close(fd);
		CHECK(WAIT_FOR(&a, a.downs == 6, 3));
		rep_get_stats(a.l, &st);
		drops = st.drops_auth;
		/* the same bytes again, on a new connection */
		fd = raw_connect(port);
		CHECK(fd >= 0 && write(fd, rec, reclen) == (ssize_t)reclen);
		CHECK(!raw_read_frame(fd, &h, buf, sizeof(buf)) && h.kind == REP_K_HELLO);
		/* the acceptor's answer: a refusal, all zeros */
		CHECK(!raw_read_frame(fd, &h, buf, sizeof(buf)) && h.kind == REP_K_AUTH &&
		      rep_auth_is_refusal(buf));
		CHECK(raw_closed(fd, 3));
		close(fd);
		fd = -1;
		rep_get_stats(a.l, &st);
		CHECK(st.drops_auth == drops + 1 && !st.up);
		CHECK(NOW(&a, a.ups == 6));
	}
done:
	if (fd >= 0)
		close(fd);
	raw_s.fd = -1;
	if (started)
		node_stop(&a);
}

/* An authenticated peer's bad seqs and ACKs, each on a connection of its own: the link
 * drops it, delivers nothing (recv) and reports nothing it said (acked: only -ENOTCONN
 * for what a sent), and pairs again with the next.  An ACK says nothing about a seq a
 * never sent, carries an errno as a status, or goes past the seqs sent so far.  (First,
 * unauthenticated: a MSG header is refused before its length is read.) */
static void test_hostile_acks(void)
{
	struct node a;
	struct rep_stats st;
	bool started = false;
	uint64_t cnt = 7, drops = 0;
	int fd = -1, port;

	node_tmo = STEADY_TMO;
	CHECK(!node_start(&a, "a", 0, 0, "k"));
	node_tmo = TMO;
	started = true;
	port = rep_port(a.l);
	{
		/* before authentication a MSG header is refused at once, not read on (its
		 * length sized a 2 MiB buffer, and the drop came at the 10 s deadline) */
		struct rep_hdr h;
		double t0 = rt_now();

		fd = raw_connect(port);
		CHECK(fd >= 0);
		rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 1, NULL, 0, 0);
		h.len = REP_PAYLOAD_MAX;
		CHECK(write(fd, &h, sizeof(h)) == sizeof(h));
		CHECK(raw_closed(fd, 2));
		CHECK(rt_now() - t0 < 1);
		close(fd);
		fd = -1;
		drops++;
	}
	for (int kase = 0; kase < 9; kase++) {
		unsigned char ack[sizeof(struct rep_ack) + 2 * sizeof(struct rep_ack_ent)];
		struct rep_ack *ah = (struct rep_ack *)ack;
		struct rep_ack_ent *e = (struct rep_ack_ent *)(ack + sizeof(*ah));
		size_t alen = sizeof(ack);
		uint64_t seq = 0;
		int ups, downs;

		memset(ack, 0, sizeof(ack));
		fd = raw_connect(port);
		CHECK(fd >= 0);
		CHECK(NOW(&a, (ups = a.ups) >= 0 && (downs = a.downs) >= 0));
		if (kase == 0) {
			/* a HELLO whose first seq leaves no room to count on */
			CHECK(raw_auth_seq(fd, "mallory", "k", UINT64_MAX));
			goto dropped;
		}
		CHECK(!raw_auth(fd, "mallory", "k"));
		CHECK(WAIT_FOR(&a, a.ups == ups + 1, 3));
		if (kase == 1) {
			/* a message seq past REP_SEQ_MAX (the expected next would wrap) */
			CHECK(!raw_frame(fd, REP_K_MSG, REP_TYPE_USER, UINT64_MAX, &cnt, sizeof(cnt)));
			goto dropped;
		}
		pthread_mutex_lock(&a.mu);
		a.acks = a.enotconn = 0;
		a.acked_seq = 0;
		pthread_mutex_unlock(&a.mu);
		CHECK((seq = (uint64_t)rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt))) > 0);
		CHECK_EQ(raw_read_msg(fd), seq);
		ah->upto = seq;
		ah->n = 1;
		e[0].seq = seq;
		e[0].status = -EIO;
		alen = sizeof(*ah) + sizeof(*e);
		switch (kase) {
		case 2: /* a positive status */
			e[0].status = 5;
			break;
		case 3: /* not an errno */
			e[0].status = -4000;
			break;
		case 4:
			e[0].status = INT32_MIN;
			break;
		case 5: /* up to a seq never sent */
			ah->upto = seq + 1;
			break;
		case 6: /* an entry for a seq never sent */
			ah->upto = seq + 1;
			e[0].seq = seq + 1;
			break;
		case 7: /* an entry before the acknowledged range */
			e[0].seq = seq - 1;
			break;
		case 8: /* more bytes than its entries */
			alen = sizeof(ack);
			break;
		}
		CHECK(!raw_frame(fd, REP_K_ACK, 0, 0, ack, alen));
dropped:
		CHECK(raw_closed(fd, 2));
		close(fd);
		fd = -1;
		drops++;
		rep_get_stats(a.l, &st);
		CHECK_EQ(st.drops_frame, drops);
		CHECK(WAIT_FOR(&a, a.ups == a.downs, 3));
		CHECK(NOW(&a, a.recvd == 0 && (!kase || !strcmp(a.last_down, "bad frame"))));
		if (seq)
			CHECK(NOW(&a, a.acks == 0 && a.enotconn == 1 && a.acked_seq == seq));
	}
	CHECK(log_has(&a, "malformed hello") && log_has(&a, "with type") &&
	      log_has(&a, "not an errno") && log_has(&a, "outside") && log_has(&a, "not in"));
	/* and an honest ACK is taken */
	fd = raw_connect(port);
	CHECK(fd >= 0 && !raw_auth(fd, "mallory", "k"));
	CHECK(WAIT_FOR(&a, a.ups > a.downs, 3));
	{
		unsigned char ack[sizeof(struct rep_ack) + sizeof(struct rep_ack_ent)] = { 0 };
		struct rep_ack *ah = (struct rep_ack *)ack;
		struct rep_ack_ent *e = (struct rep_ack_ent *)(ack + sizeof(*ah));
		int64_t seq = rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt));

		CHECK(seq > 0 && raw_read_msg(fd) == (uint64_t)seq);
		ah->upto = (uint64_t)seq;
		ah->n = 1;
		e->seq = (uint64_t)seq;
		e->status = -REP_ERRNO_MAX;
		CHECK(!raw_frame(fd, REP_K_ACK, 0, 0, ack, sizeof(ack)));
		CHECK_EQ(rep_wait(a.l, (uint64_t)seq, 2000), -REP_ERRNO_MAX);
	}
	close(fd);
	CHECK(WAIT_FOR(&a, a.ups == a.downs, 3));
	{
		/* an ACK from the future: a seq handed out and queued, not yet given to the
		 * socket (another sender is writing: the peer reads nothing) */
		struct rep_ack ah = { 0 };
		struct rep_stats st0;
		pthread_t thr;
		int64_t last;
		int ups;

		fd = raw_connect_small(port);
		CHECK(fd >= 0 && NOW(&a, (ups = a.ups) >= 0) && !raw_auth(fd, "mallory", "k"));
		CHECK(WAIT_FOR(&a, a.ups == ups + 1, 3));
		pthread_mutex_lock(&a.mu);
		a.acks = a.enotconn = 0;
		a.acked_seq = 0;
		pthread_mutex_unlock(&a.mu);
		rep_get_stats(a.l, &st0);
		CHECK(!pthread_create(&thr, NULL, big_sends_main, a.l));
		for (double end = rt_now() + 3; rt_now() < end; usleep(1000)) {
			rep_get_stats(a.l, &st);
			if (st.last_seq >= st0.last_seq + BIG_SENDS)
				break;
		}
		CHECK(st.last_seq >= st0.last_seq + BIG_SENDS);
		usleep(100000); /* the last one is in the socket, or queued */
		last = rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt));
		ah.upto = (uint64_t)last;
		CHECK(last > 0 && !raw_frame(fd, REP_K_ACK, 0, 0, &ah, sizeof(ah)));
		CHECK(raw_closed(fd, 3));
		pthread_join(thr, NULL);
		CHECK(WAIT_FOR(&a, a.ups == a.downs, 3));
		CHECK(NOW(&a, a.acks == 0 && a.enotconn == BIG_SENDS + 1));
		CHECK(log_has(&a, "ack up to seq"));
	}
done:
	node_tmo = TMO;
	if (fd >= 0)
		close(fd);
	if (started)
		node_stop(&a);
}

/* Everything a raw socket may throw at the port; after each, the a-b link still carries
 * a message (and pairs again when the raw peer had authenticated and taken over).  An
 * authenticated peer that then says nothing at all is dropped within the timeout. */
static void test_garbage(void)
{
	struct node a, b;
	struct rep_stats st;
	unsigned char junk[4096];
	bool started = false;
	uint64_t drops = 0, cnt = 0;
	int fd = -1, port;

	CHECK(!pair(&a, &b, "k", "k"));
	started = true;
	port = rep_port(a.l);
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	for (int kase = 0; kase < 8; kase++) {
		double t_up = 0;

		if (kase == 5) {
			/* the authenticated cases without b: an authenticated new instance takes
			 * the link over, and b's reconnect would take it back at any moment */
			CHECK(NOW(&b, !b.downs));
			node_stop(&b);
			CHECK(WAIT_FOR(&a, a.downs == 1, 3));
		}
		struct rep_hdr h;
		struct rep_hello hello;
		size_t hl;
		int ups = 0;

		fd = raw_connect(port);
		CHECK(fd >= 0);
		CHECK(NOW(&a, (ups = a.ups) >= 0));
		switch (kase) {
		case 0: /* random bytes */
			randombytes_buf(junk, sizeof(junk));
			CHECK(write(fd, junk, sizeof(junk)) == sizeof(junk));
			break;
		case 1: /* a truncated hello: the header promises more than comes */
			rep_hello_make(&hello, &hl, REP_ROLE_INITIATOR, "x", 1, 1, REP_HF_ALL);
			rep_frame_fill(&h, REP_K_HELLO, 0, 0, &(struct iovec){ &hello, hl }, 1, hl);
			CHECK(write(fd, &h, sizeof(h)) == sizeof(h));
			CHECK(write(fd, &hello, 10) == 10);
			shutdown(fd, SHUT_WR);
			break;
		case 2: /* an oversized length: refused from the header alone */
			rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 1, NULL, 0, 0);
			h.len = 3u << 20;
			CHECK(write(fd, &h, sizeof(h)) == sizeof(h));
			break;
		case 3: /* a message before any handshake */
			CHECK(!raw_frame(fd, REP_K_MSG, REP_TYPE_USER, 1, &cnt, sizeof(cnt)));
			break;
		case 4: /* a hello with a wrong checksum */
			rep_hello_make(&hello, &hl, REP_ROLE_INITIATOR, "x", 1, 1, REP_HF_ALL);
			rep_frame_fill(&h, REP_K_HELLO, 0, 0, &(struct iovec){ &hello, hl }, 1, hl);
			h.sum ^= 1;
			CHECK(write(fd, &h, sizeof(h)) == sizeof(h) && write(fd, &hello, hl) == (ssize_t)hl);
			break;
		case 5: /* authenticated, then a message seq out of order */
		case 6: /* authenticated, then an oversized message */
			CHECK(!raw_auth(fd, "mallory", "k"));
			/* a new instance of an authenticated peer takes over the link */
			CHECK(WAIT_FOR(&a, a.ups == ups + 1 && !strcmp(a.peer, "mallory"), 3));
			CHECK(!raw_frame(fd, REP_K_MSG, REP_TYPE_USER, 1, &cnt, sizeof(cnt)));
			if (kase == 5) {
				CHECK(!raw_frame(fd, REP_K_MSG, REP_TYPE_USER, 3, &cnt, sizeof(cnt)));
			} else {
				rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 2, NULL, 0, 0);
				h.len = REP_PAYLOAD_MAX + 1;
				CHECK(write(fd, &h, sizeof(h)) == sizeof(h));
			}
			break;
		case 7: /* authenticated, then silent: no heartbeat, nothing */
			CHECK(!raw_auth(fd, "mallory", "k"));
			CHECK(WAIT_FOR(&a, a.ups == ups + 1 && !strcmp(a.peer, "mallory"), 3));
			t_up = rt_now();
			break;
		}
		CHECK(raw_closed(fd, 2));
		close(fd);
		fd = -1;
		if (kase == 7) {
			/* measured from when a saw it up: an upper bound on the silence */
			CHECK((rt_now() - t_up) * 1000 <= TMO + MARGIN);
			CHECK(WAIT_FOR(&a, !strcmp(a.last_down, "timeout"), 1));
		} else {
			drops++;
		}
		rep_get_stats(a.l, &st);
		CHECK_EQ(st.drops_frame, drops);
		if (kase >= 5) {
			CHECK(WAIT_FOR(&a, a.ups == a.downs, 3));
			continue;
		}
		/* the link to the real peer carried on: a message gets through */
		CHECK(NOW(&a, !strcmp(a.peer, "b") && a.ups == 1 && a.downs == 0));
		CHECK(WAIT_FOR(&b, b.ups > b.downs, 3));
		cnt = 1000 + (uint64_t)kase;
		CHECK(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
		CHECK(WAIT_FOR(&b, b.expect[0] == cnt + 1, 3));
	}
	CHECK(log_has(&a, "bad magic") && log_has(&a, "truncated") &&
	      log_has(&a, "more than") && log_has(&a, "during the handshake") &&
	      log_has(&a, "checksum") && log_has(&a, "out of order"));
	/* and a pairs again with a real peer */
	CHECK(!node_start(&b, "b", 0, port, "k"));
	CHECK(WAIT_FOR(&a, a.ups == 5 && !strcmp(a.peer, "b"), 3));
	CHECK(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
	CHECK_EQ(rep_flush(a.l, 2000), 0);
	node_stop(&b);
done:
	if (fd >= 0)
		close(fd);
	if (started)
		node_stop(&a);
	if (rt_cur && b.l)
		node_stop(&b);
}

/* Write count MSG frames (seqs first.., 8-byte payloads counter(i)) to a raw socket in
 * batches; how many went out before the socket failed. */
static uint64_t raw_flood(int fd, uint64_t first, uint64_t count, uint64_t (*counter)(uint64_t))
{
	enum { BATCH = 1024, MAXF = sizeof(struct rep_hdr) + sizeof(uint64_t) + REP_TAG_BYTES };
	static unsigned char buf[BATCH * MAXF];
	bool sealed = fd == raw_s.fd && raw_s.cipher != REP_C_NONE;
	size_t frame = MAXF - (sealed ? 0 : REP_TAG_BYTES);
	uint64_t done = 0;

	while (done < count) {
		unsigned n = count - done < BATCH ? (unsigned)(count - done) : BATCH;
		struct iovec iov = { buf, (size_t)n * frame };

		for (unsigned i = 0; i < n; i++) {
			uint64_t cnt = counter(done + i);
			unsigned char *f = buf + i * frame;
			struct rep_hdr h;

			rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, first + done + i,
				       &(struct iovec){ &cnt, sizeof(cnt) }, 1, sizeof(cnt));
			memcpy(f + sizeof(h), &cnt, sizeof(cnt));
			if (sealed)
				rep_seal(&raw_s.tx, REP_REKEY_BYTES, &h, f + sizeof(h), f + sizeof(h));
			memcpy(f, &h, sizeof(h));
		}
		if (rep_writev_all(fd, &iov, 1))
			break;
		done += n;
	}
	return done;
}

static uint64_t counter_ok(uint64_t i)
{
	return i * 10; /* status_for: 0 */
}

static uint64_t counter_eio(uint64_t i)
{
	return i * 10 + 3; /* status_for: -EIO, so every ack lists it */
}

/* Read and discard what comes on fd until it closes. */
static void *drain_main(void *arg)
{
	static unsigned char buf[1 << 16];
	int fd = *(int *)arg;

	while (read(fd, buf, sizeof(buf)) > 0) {
	}
	return NULL;
}

/* An authenticated peer that sends and never acknowledges, nor reads: what the receive
 * thread adds to the queue is bounded too.  Replies from recv() (2 MiB each here) past
 * twice REP_QUEUE_MAX unacknowledged drop the link, and so do ACK frames piling up
 * behind a socket the peer does not read (each ACK listing 256 failures, as merging
 * stops there). */
static void test_flood(void)
{
	struct node a;
	bool started = false;
	pthread_t drain;
	uint64_t sent;
	int fd = -1, port;

	node_tmo = STEADY_TMO;
	CHECK(!node_start(&a, "a", 0, 0, "k"));
	node_tmo = TMO;
	started = true;
	port = rep_port(a.l);
	a.reply = true;
	a.reply_len = REP_PAYLOAD_MAX;
	/* reads everything, acknowledges nothing */
	fd = raw_connect(port);
	CHECK(fd >= 0 && !raw_auth(fd, "mallory", "k"));
	CHECK(WAIT_FOR(&a, a.ups == 1, 3));
	CHECK(!pthread_create(&drain, NULL, drain_main, &fd));
	sent = raw_flood(fd, 1, 200, counter_ok);
	CHECK(WAIT_FOR(&a, a.downs == 1, 10));
	pthread_join(drain, NULL);
	CHECK(NOW(&a, strstr(a.last_down, "does not acknowledge") && a.reply_err == -ENOTCONN));
	fprintf(stderr, "  %llu replies of 2 MiB unacknowledged, then dropped (%llu sent)\n",
		(unsigned long long)a.replies, (unsigned long long)sent);
	CHECK(NOW(&a, a.replies * (REP_PAYLOAD_MAX + 32ull) <= 2ull * REP_QUEUE_MAX));
	close(fd);
	fd = -1;
	pthread_mutex_lock(&a.mu);
	a.reply = false;
	pthread_mutex_unlock(&a.mu);
	/* reads nothing, with a small window: the ACKs queue up */
	fd = raw_connect_small(port);
	CHECK(fd >= 0 && !raw_auth(fd, "mallory", "k"));
	CHECK(WAIT_FOR(&a, a.ups == 2, 3));
	sent = raw_flood(fd, 1, 4000000, counter_eio);
	CHECK(WAIT_FOR(&a, a.downs == 2, 10));
	fprintf(stderr, "  %llu failing messages sent before the drop: %s\n",
		(unsigned long long)sent, a.last_down);
	CHECK(NOW(&a, strstr(a.last_down, "does not read")));
	CHECK(sent < 4000000);
done:
	node_tmo = TMO;
	if (fd >= 0)
		close(fd);
	if (started)
		node_stop(&a);
}

/* Slow-loris: connections that say nothing, or one byte a second of a HELLO, each opened
 * again as soon as the link closes it, more of them than the link has slots, from two
 * addresses (127.0.0.2 and .3; the partner connects from 127.0.0.1).  The real partner
 * still pairs at once, not only after the handshake deadline (a 10 s timeout here): the
 * link pushes the oldest waiting ones out, and an address connecting again and again
 * only pushes out its own. */
#define LORIS 24
#define LORIS_SRC(i) (INADDR_LOOPBACK + 1 + (uint32_t)(i) % 2)
struct loris {
	int port, fds[LORIS];
	atomic_bool stop;
	atomic_uint reopened;
};

static void *loris_main(void *arg)
{
	struct loris *lo = arg;
	struct rep_hello hello;
	struct rep_hdr h;
	unsigned char frame[sizeof(h) + sizeof(hello)];
	size_t hl, sent[LORIS] = { 0 };
	double next_drip = rt_now() + 1;

	rep_hello_make(&hello, &hl, REP_ROLE_INITIATOR, "loris", 1, 1, REP_HF_ALL);
	rep_frame_fill(&h, REP_K_HELLO, 0, 0, &(struct iovec){ &hello, hl }, 1, hl);
	memcpy(frame, &h, sizeof(h));
	memcpy(frame + sizeof(h), &hello, hl);
	for (int i = 0; i < LORIS; i++)
		lo->fds[i] = raw_connect_from(lo->port, LORIS_SRC(i));
	while (!atomic_load(&lo->stop)) {
		bool drip = rt_now() >= next_drip;

		for (int i = 0; i < LORIS; i++) {
			struct pollfd p = { .fd = lo->fds[i], .events = POLLIN };
			char b;

			if (lo->fds[i] >= 0 && poll(&p, 1, 0) > 0 && read(lo->fds[i], &b, 1) <= 0) {
				close(lo->fds[i]);
				lo->fds[i] = -1;
			}
			if (lo->fds[i] < 0) {
				lo->fds[i] = raw_connect_from(lo->port, LORIS_SRC(i));
				sent[i] = 0;
				atomic_fetch_add(&lo->reopened, 1);
			} else if (drip && i % 2 && sent[i] < sizeof(h) + hl) {
				/* the odd ones: one byte a second */
				if (write(lo->fds[i], frame + sent[i], 1) == 1)
					sent[i]++;
			}
		}
		if (drip)
			next_drip += 1;
		usleep(5000);
	}
	for (int i = 0; i < LORIS; i++)
		if (lo->fds[i] >= 0)
			close(lo->fds[i]);
	return NULL;
}

static void test_slowloris(void)
{
	struct node a, b;
	struct loris lo = { 0 };
	pthread_t thr;
	bool started = false, b_started = false, lo_started = false;
	uint64_t one = 1; /* status_for(1): 0 */
	double t0;

	node_tmo = STEADY_TMO;
	CHECK(!node_start(&a, "a", 0, 0, "k"));
	started = true;
	lo.port = rep_port(a.l);
	CHECK(!pthread_create(&thr, NULL, loris_main, &lo));
	lo_started = true;
	/* the slots fill up and the oldest ones are pushed out over and over */
	for (double end = rt_now() + 5; atomic_load(&lo.reopened) < LORIS && rt_now() < end;)
		usleep(10000);
	CHECK(atomic_load(&lo.reopened) >= LORIS);
	t0 = rt_now();
	CHECK(!node_start(&b, "b", 0, lo.port, "k"));
	b_started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	CHECK(NOW(&b, b.downs == 0)); /* not dropped by a before a saw its proof */
	fprintf(stderr, "  paired %.0f ms after b started, %u slow connections pushed out\n",
		(rt_now() - t0) * 1000, atomic_load(&lo.reopened));
	CHECK((rt_now() - t0) * 1000 < STEADY_TMO / 4);
	CHECK(rep_send(b.l, REP_TYPE_USER, &one, sizeof(one)) > 0);
	CHECK_EQ(rep_flush(b.l, 3000), 0);
	CHECK(log_has(&a, "pushed out by newer unauthenticated connections"));
done:
	node_tmo = TMO;
	if (rt_cur && b_started)
		log_dump(&b);
	if (rt_cur && started)
		log_dump(&a);
	if (lo_started) {
		atomic_store(&lo.stop, true);
		pthread_join(thr, NULL);
	}
	if (b_started)
		node_stop(&b);
	if (started)
		node_stop(&a);
}

/* rep_kick drops the connection on both sides; it comes back by itself. */
static void test_kick(void)
{
	struct node a, b;
	struct rep_stats st;
	bool started = false;
	uint64_t cnt = 5;

	CHECK(!pair(&a, &b, "k", "k"));
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	rep_kick(b.l);
	CHECK(WAIT_FOR(&b, b.downs == 1, 2) && WAIT_FOR(&a, a.downs == 1, 2));
	CHECK(NOW(&b, !strcmp(b.last_down, "kicked")));
	CHECK(WAIT_FOR(&a, a.ups == 2, 3) && WAIT_FOR(&b, b.ups == 2, 3));
	rep_get_stats(b.l, &st);
	CHECK_EQ(st.connects, 2);
	CHECK(rep_send(b.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
	CHECK_EQ(rep_flush(b.l, 2000), 0);
done:
	if (started) {
		node_stop(&a);
		node_stop(&b);
	}
}

/* Both connect to each other at once, several times: one connection survives, the
 * same on both sides, and it stays. */
static void test_duplicates(void)
{
	for (int round = 0; round < 4; round++) {
		struct node a, b;
		struct rep_stats sa, sb;
		int pa = free_port(), pb = free_port();
		bool started = false;
		uint64_t cnt = 9;

		CHECK(pa > 0 && pb > 0 && pa != pb);
		CHECK(!node_start(&a, "a", pa, pb, "k"));
		if (node_start(&b, "b", pb, pa, "k")) {
			node_stop(&a);
			CHECK(0);
		}
		started = true;
		CHECK(WAIT_FOR(&a, a.ups > a.downs, 3) && WAIT_FOR(&b, b.ups > b.downs, 3));
		usleep(2 * TMO * 1000);
		rep_get_stats(a.l, &sa);
		rep_get_stats(b.l, &sb);
		CHECK(sa.up && sb.up);
		CHECK(NOW(&a, a.ups - a.downs == 1) && NOW(&b, b.ups - b.downs == 1));
		CHECK(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
		CHECK_EQ(rep_flush(a.l, 2000), 0);
		CHECK(rep_send(b.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
		CHECK_EQ(rep_flush(b.l, 2000), 0);
		/* nothing flapped after the pair settled */
		CHECK(NOW(&a, a.ups == (int)sa.connects) && NOW(&b, b.ups == (int)sb.connects));
	done:
		if (started) {
			node_stop(&a);
			node_stop(&b);
		}
		if (rt_cur)
			return;
	}
}

/* ---- a cut link ---------------------------------------------------------------------- */

/* A TCP relay on 127.0.0.1 standing for the network between two nodes: while `cut` it
 * forwards nothing and answers nothing (packets dropped: no FIN, no RST); `heal` closes
 * what it held, as the endpoints gave those connections up anyway. */
struct relay {
	int lfd, port, target;
	atomic_bool cut, heal, stop;
	pthread_t thr;
};

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	int fds[32], n = 0; /* pairs: fds[2i] client side, fds[2i + 1] target side */
	char buf[65536];

	while (!atomic_load(&r->stop)) {
		struct pollfd p[33];
		bool cut = atomic_load(&r->cut);
		int np = 1;

		if (atomic_exchange(&r->heal, false)) {
			for (int i = 0; i < n; i++)
				close(fds[i]);
			n = 0;
		}
		p[0] = (struct pollfd){ .fd = r->lfd, .events = POLLIN };
		for (int i = 0; !cut && i < n; i++)
			p[np++] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
		if (poll(p, (nfds_t)np, 20) <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC), t = -1;

			if (c >= 0 && n < 32)
				t = raw_connect(r->target);
			if (t >= 0) {
				fds[n++] = c;
				fds[n++] = t;
			} else if (c >= 0) {
				close(c);
			}
		}
		for (int i = 1; i < np; i++) {
			int k = -1;
			ssize_t got;

			if (!p[i].revents)
				continue;
			for (int j = 0; j < n; j++)
				if (fds[j] == p[i].fd)
					k = j;
			if (k < 0)
				continue;
			got = read(fds[k], buf, sizeof(buf));
			if (got <= 0 || rep_writev_all(fds[k ^ 1], &(struct iovec){ buf, (size_t)got }, 1)) {
				/* one side closed: close the pair (the last pair moves into its place) */
				int a = k & ~1;

				close(fds[a]);
				close(fds[a + 1]);
				fds[a] = fds[n - 2];
				fds[a + 1] = fds[n - 1];
				n -= 2;
				break; /* the poll set is stale now */
			}
		}
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	return NULL;
}

static int relay_start(struct relay *r, int target)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);

	memset(r, 0, sizeof(*r));
	r->target = target;
	r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(r->lfd, 8) || getsockname(r->lfd, (struct sockaddr *)&sa, &sl))
		return -1;
	r->port = ntohs(sa.sin_port);
	return pthread_create(&r->thr, NULL, relay_main, r) ? -1 : 0;
}

static void relay_stop(struct relay *r)
{
	atomic_store(&r->stop, true);
	pthread_join(r->thr, NULL);
	close(r->lfd);
}

/* Sends 1 MiB messages until told to stop; records the longest rep_send. */
struct pusher {
	struct node *n;
	atomic_bool stop;
	double longest;
	uint64_t sent;
};

static void *pusher_main(void *arg)
{
	struct pusher *p = arg;
	static unsigned char buf[1 << 20];

	while (!atomic_load(&p->stop)) {
		double t = rt_now();
		int64_t r = rep_send(p->n->l, REP_TYPE_USER + 2, buf, sizeof(buf));

		t = rt_now() - t;
		if (t > p->longest)
			p->longest = t;
		if (r > 0)
			p->sent++;
		else
			usleep(1000);
	}
	return NULL;
}

/* The network between a and b goes silent while a streams to b: both declare the link
 * down within the timeout, no rep_send waits longer than that, and once the network is
 * back they pair again. */
static void test_cut(void)
{
	struct node a, b;
	struct relay r;
	struct pusher pu = { .n = &a };
	pthread_t pt;
	bool started = false, relay = false, pushing = false;
	double t0, ta = 0, tb = 0;

	CHECK(!node_start(&a, "a", 0, 0, "k"));
	CHECK(!relay_start(&r, rep_port(a.l)));
	relay = true;
	if (node_start(&b, "b", 0, r.port, "k")) {
		node_stop(&a);
		CHECK(0);
	}
	started = true;
	CHECK(WAIT_FOR(&a, a.ups == 1, 3) && WAIT_FOR(&b, b.ups == 1, 3));
	pthread_create(&pt, NULL, pusher_main, &pu);
	pushing = true;
	usleep(200 * 1000);
	atomic_store(&r.cut, true);
	t0 = rt_now();
	CHECK(WAIT_FOR(&a, a.downs == 1, 3));
	ta = rt_now() - t0;
	CHECK(WAIT_FOR(&b, b.downs == 1, 3));
	tb = rt_now() - t0;
	fprintf(stderr, "  cut noticed after %.0f ms (a, sending) and %.0f ms (b), timeout %d ms\n",
		ta * 1000, tb * 1000, TMO);
	CHECK(ta * 1000 <= TMO + MARGIN && tb * 1000 <= TMO + MARGIN);
	CHECK(NOW(&a, !strcmp(a.last_down, "timeout") && a.enotconn > 0 && !a.enotconn_late));
	atomic_store(&pu.stop, true);
	pthread_join(pt, NULL);
	pushing = false;
	fprintf(stderr, "  %llu MiB sent before the cut, longest rep_send %.0f ms\n",
		(unsigned long long)pu.sent, pu.longest * 1000);
	CHECK(pu.sent > 0);
	CHECK(pu.longest * 1000 <= TMO + MARGIN);
	atomic_store(&r.heal, true);
	atomic_store(&r.cut, false);
	CHECK(WAIT_FOR(&a, a.ups == 2, 5) && WAIT_FOR(&b, b.ups == 2, 5));
	CHECK(rep_send(a.l, REP_TYPE_USER + 2, "x", 1) > 0);
	CHECK_EQ(rep_flush(a.l, 2000), 0);
done:
	if (pushing) {
		atomic_store(&pu.stop, true);
		pthread_join(pt, NULL);
	}
	if (started) {
		node_stop(&b);
		node_stop(&a);
	}
	if (relay)
		relay_stop(&r);
}

/* ---- a peer in another process -------------------------------------------------------- */

static int child_main(int port)
{
	struct node n;

	if (node_start(&n, "child", 0, port, "k"))
		return 1;
	for (;;)
		pause();
}

static pid_t spawn_child(int port)
{
	char p[16];
	char *argv[] = { "/proc/self/exe", "--child", p, NULL };
	pid_t pid;

	snprintf(p, sizeof(p), "%d", port);
	if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ))
		return -1;
	return pid;
}

/* A peer stopped with SIGSTOP is declared down within the timeout, after its unacked
 * message was reported -ENOTCONN; after SIGCONT it pairs again; killed, it is noticed. */
static void test_stopped_peer(void)
{
	struct node a;
	struct rep_stats st;
	pid_t pid = -1;
	bool started = false;
	uint64_t cnt = 1;
	double t0, took;
	int64_t seq;

	CHECK(!node_start(&a, "a", 0, 0, "k"));
	started = true;
	pid = spawn_child(rep_port(a.l));
	CHECK(pid > 0);
	CHECK(WAIT_FOR(&a, a.ups == 1, 5));
	CHECK(NOW(&a, !strcmp(a.peer, "child")));
	CHECK(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
	CHECK_EQ(rep_flush(a.l, 2000), 0);
	usleep(TMO * 1000); /* a quiet spell: heartbeats keep the link */
	CHECK(NOW(&a, !a.downs));

	kill(pid, SIGSTOP);
	{
		int ws;

		/* stopped for sure (kill only sends the signal) */
		CHECK(waitpid(pid, &ws, WUNTRACED) == pid && WIFSTOPPED(ws));
	}
	t0 = rt_now();
	seq = rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt));
	CHECK(seq > 0);
	CHECK(WAIT_FOR(&a, a.downs == 1, 3));
	took = rt_now() - t0;
	fprintf(stderr, "  stopped peer declared down after %.0f ms (timeout %d ms)\n",
		took * 1000, TMO);
	CHECK(took * 1000 <= TMO + MARGIN);
	CHECK(NOW(&a, !strcmp(a.last_down, "timeout") && a.enotconn == 1 && !a.enotconn_late));
	CHECK_EQ(rep_wait(a.l, (uint64_t)seq, 0), -ENOTCONN);
	rep_get_stats(a.l, &st);
	CHECK(st.last_down_ms >= TMO && st.last_down_ms <= TMO + MARGIN);
	CHECK_EQ(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)), -ENOTCONN);

	kill(pid, SIGCONT);
	CHECK(WAIT_FOR(&a, a.ups == 2, 5));
	CHECK(rep_send(a.l, REP_TYPE_USER, &cnt, sizeof(cnt)) > 0);
	CHECK_EQ(rep_flush(a.l, 2000), 0);

	kill(pid, SIGKILL);
	t0 = rt_now();
	CHECK(WAIT_FOR(&a, a.downs == 2, 3));
	CHECK((rt_now() - t0) * 1000 < TMO + MARGIN);
done:
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (started)
		node_stop(&a);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && !strcmp(argv[1], "--child"))
		return child_main(atoi(argv[2]));
	if (sodium_init() < 0)
		return 1;
	RUN(test_config);
	RUN(test_exchange);
	RUN(test_concurrent_senders);
	RUN(test_reply_under_load);
	RUN(test_wrong_secret);
	RUN(test_encrypt_mismatch);
	RUN(test_rekey);
	RUN(test_tamper);
	RUN(test_garbage);
	RUN(test_hostile_acks);
	RUN(test_slowloris);
	RUN(test_flood);
	RUN(test_kick);
	RUN(test_duplicates);
	RUN(test_cut);
	RUN(test_stopped_peer);
	return rt_failed != 0;
}
