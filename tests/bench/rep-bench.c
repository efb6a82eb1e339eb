/*
 * rep-bench.c — the replica/ link's throughput on loopback, next to plain TCP measured in
 * the same run (`make bench`).
 *
 * Two ways, each as a ratio to its baseline:
 *  - pipelined (what async replication does): SIZE MiB of MSG-byte messages through
 *    rep_send, then rep_flush (everything acknowledged), against a plain TCP socket
 *    that copies each message into a staging buffer (the one copy rep_send makes) and
 *    writes it, with the reader acknowledging the whole at the end;
 *  - one at a time (what sync replication does): rep_send + rep_wait per message,
 *    against write + wait for an 8-byte reply per message on a plain socket.
 * Both run two threads' worth of work on the same machine (sender and receiver); each
 * figure is the best of 3 runs, baseline and link taking turns.  The link is measured
 * twice: with plaintext frames (the rows above, against TCP) and encrypted (partner.encrypt
 * = true, the default: every frame sealed), the latter as a ratio to the plain link.
 *
 * Usage: rep-bench [--size MIB] [--msg KIB]   (defaults: 1024 MiB of 1024 KiB messages)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "replica.h"

static size_t msg_bytes = 1 << 20;
static uint64_t total_bytes = 1ull << 30;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* ---- plain TCP ----------------------------------------------------------------------- */

static int tcp_pair(int fds[2])
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl))
		return -1;
	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&sa, sizeof(sa)))
		return -1;
	fds[1] = accept(lfd, NULL, NULL);
	close(lfd);
	setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fds[1] < 0 ? -1 : 0;
}

static void write_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t got = write(fd, p, n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			die("write");
		p = (const char *)p + got;
		n -= (size_t)got;
	}
}

static void read_all(int fd, void *p, size_t n)
{
	while (n) {
		ssize_t got = read(fd, p, n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			die("read");
		p = (char *)p + got;
		n -= (size_t)got;
	}
}

struct tcp_reader {
	int fd;
	bool each; /* reply after each message, else once at the end */
};

static void *tcp_reader_main(void *arg)
{
	struct tcp_reader *r = arg;
	char *buf = malloc(msg_bytes);
	uint64_t ack = 0;

	if (!buf)
		die("malloc");
	for (uint64_t done = 0; done < total_bytes; done += msg_bytes) {
		read_all(r->fd, buf, msg_bytes);
		if (r->each)
			write_all(r->fd, &ack, sizeof(ack));
	}
	if (!r->each)
		write_all(r->fd, &ack, sizeof(ack));
	free(buf);
	return NULL;
}

static double tcp_run(bool each)
{
	int fds[2];
	struct tcp_reader r;
	pthread_t t;
	char *src = malloc(msg_bytes), *stage = malloc(msg_bytes);
	uint64_t ack;
	double t0;

	if (!src || !stage || tcp_pair(fds))
		die("tcp setup");
	memset(src, 0x5a, msg_bytes);
	r = (struct tcp_reader){ fds[1], each };
	pthread_create(&t, NULL, tcp_reader_main, &r);
	t0 = now();
	for (uint64_t done = 0; done < total_bytes; done += msg_bytes) {
		memcpy(stage, src, msg_bytes);
		write_all(fds[0], stage, msg_bytes);
		if (each)
			read_all(fds[0], &ack, sizeof(ack));
	}
	if (!each)
		read_all(fds[0], &ack, sizeof(ack));
	t0 = now() - t0;
	pthread_join(t, NULL);
	close(fds[0]);
	close(fds[1]);
	free(src);
	free(stage);
	return (double)total_bytes / t0 / 1e6;
}

/* ---- the link ------------------------------------------------------------------------ */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int ups;

static void cb_up(void *arg, const char *peer)
{
	(void)arg;
	(void)peer;
	pthread_mutex_lock(&mu);
	ups++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static int cb_recv(void *arg, uint32_t type, const void *p, size_t len)
{
	(void)arg;
	(void)type;
	(void)p;
	(void)len;
	return 0;
}

static double link_run(struct rep_link *a, bool each)
{
	char *src = malloc(msg_bytes);
	double t0;

	if (!src)
		die("malloc");
	memset(src, 0x5a, msg_bytes);
	t0 = now();
	for (uint64_t done = 0; done < total_bytes; done += msg_bytes) {
		int64_t seq = rep_send(a, REP_TYPE_USER, src, msg_bytes);
		int rc = seq < 0 ? (int)seq : each ? rep_wait(a, (uint64_t)seq, 10000) : 0;

		if (rc) {
			fprintf(stderr, "rep-bench: %s failed: %s\n", seq < 0 ? "rep_send" : "rep_wait",
				strerror(-rc));
			exit(1);
		}
	}
	if (rep_flush(a, 30000)) {
		fprintf(stderr, "rep-bench: flush failed\n");
		exit(1);
	}
	t0 = now() - t0;
	free(src);
	return (double)total_bytes / t0 / 1e6;
}

/* Start a pair of links (a listens, b connects), plaintext or sealed; wait until both
 * are up. */
static void pair_start(bool plaintext, struct rep_link **a, struct rep_link **b)
{
	static const struct rep_callbacks cbs = { .up = cb_up, .recv = cb_recv };
	struct rep_config ca = { .node = "a", .listen = "127.0.0.1:0", .timeout_ms = 5000,
				 .plaintext = plaintext };
	struct rep_config cb = ca;
	char connect[32];
	int want;

	randombytes_buf(ca.key, sizeof(ca.key));
	memcpy(cb.key, ca.key, sizeof(ca.key));
	if (rep_start(&ca, &cbs, NULL, a))
		die("rep_start a");
	snprintf(connect, sizeof(connect), "127.0.0.1:%d", rep_port(*a));
	cb.node = "b";
	cb.connect = connect;
	pthread_mutex_lock(&mu);
	want = ups + 2;
	pthread_mutex_unlock(&mu);
	if (rep_start(&cb, &cbs, NULL, b))
		die("rep_start b");
	pthread_mutex_lock(&mu);
	while (ups < want)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
	struct rep_link *a, *b, *ea, *eb;
	struct rep_stats st;
	double lp, tp, ls, ts, ep, es;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--size"))
			total_bytes = strtoull(argv[i + 1], NULL, 10) << 20;
		else if (!strcmp(argv[i], "--msg"))
			msg_bytes = strtoull(argv[i + 1], NULL, 10) << 10;
	}
	if (!msg_bytes || msg_bytes > REP_PAYLOAD_MAX || total_bytes < msg_bytes) {
		fprintf(stderr, "usage: rep-bench [--size MIB] [--msg KIB (<= %u)]\n",
			REP_PAYLOAD_MAX >> 10);
		return 2;
	}
	total_bytes -= total_bytes % msg_bytes;
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0)
		return 1;
	pair_start(true, &a, &b);
	pair_start(false, &ea, &eb);
	rep_get_stats(ea, &st);

	printf("rep-bench: %llu MiB in %zu KiB messages over 127.0.0.1, acknowledged\n",
	       (unsigned long long)(total_bytes >> 20), msg_bytes >> 10);
	/* best of 3, baseline and link taking turns, so a burst of load from elsewhere on a
	 * shared machine hits one run, not one side */
	tp = lp = ts = ls = ep = es = 0;
	for (int r = 0; r < 3; r++) {
		tp = fmax(tp, tcp_run(false));
		lp = fmax(lp, link_run(a, false));
		ep = fmax(ep, link_run(ea, false));
		ts = fmax(ts, tcp_run(true));
		ls = fmax(ls, link_run(a, true));
		es = fmax(es, link_run(ea, true));
	}
	printf("  pipelined (async):     link %7.0f MB/s   plain TCP + memcpy %7.0f MB/s   %.2fx\n",
	       lp, tp, lp / tp);
	printf("  one at a time (sync):  link %7.0f MB/s   plain TCP + reply  %7.0f MB/s   %.2fx\n",
	       ls, ts, ls / ts);
	printf("  pipelined encrypted:   link %7.0f MB/s   plain link         %7.0f MB/s   %.2fx  (%s)\n",
	       ep, lp, ep / lp, st.cipher);
	printf("  one at a time encrypted: link %5.0f MB/s   plain link         %7.0f MB/s   %.2fx  (%s)\n",
	       es, ls, es / ls, st.cipher);
	rep_stop(eb);
	rep_stop(ea);
	rep_stop(b);
	rep_stop(a);
	return 0;
}
