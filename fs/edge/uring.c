/*
 * uring.c — EXPERIMENTAL FUSE-over-io_uring transport (-o io_uring, Linux 6.14+).
 *
 * With it the kernel queues each request on the queue of the CPU its caller runs on, and a
 * worker pinned to that CPU serves it: the wake-up stays on one CPU (no cross-CPU wake-up
 * of a halted vCPU) and one io_uring_enter both replies and fetches the next request.
 *
 * How: main.c sets the fuse module's enable_uring before mounting (the kernel only offers
 * the feature then); io.c asks for it in the INIT reply and calls hfs_uring_start() once
 * the kernel has taken that reply.  Then one worker per possible CPU (the kernel wants a
 * queue per possible CPU before it switches over) creates its own ring (SQE128, single
 * issuer) and registers ENTRIES ring entries on its queue.  An entry is one allocation:
 * the header buffer at its start, the payload buffer one page in, so a request becomes a
 * /dev/fuse-style message (fuse_in_header + op header + payload, contiguous) by copying
 * the two headers just in front of the payload, without moving the payload.  The worker
 * hands that to hfs_raw_dispatch (FUSE_TMPFILE, FUSE_STATX: ops.c) or else to
 * fuse_session_process_buf; every heapfs op replies synchronously in the
 * calling thread, so the reply reaches io.c's writev hook in this same thread, which
 * gives it to hfs_uring_reply(): it matches the thread's current entry by unique and
 * copies header and payload into the entry.  The worker then queues COMMIT_AND_FETCH.
 * Requests before the switch-over (INIT), FORGET, INTERRUPT and notifications keep
 * using /dev/fuse and libfuse's own loop.
 *
 * After its replies a worker polls its ring for -o spin_us before it sleeps (see spin()).
 *
 * Teardown: at unmount the kernel completes every armed entry with -ENOTCONN and a worker
 * whose entries are all gone leaves.  hfs_uring_stop() (after the session loop) also posts
 * a stop message (IORING_OP_MSG_RING) to every ring, joins the workers and closes the
 * rings, which cancels whatever the kernel still holds, then its own duplicate of the
 * device fd, which releases the connection.
 *
 * Locking: a queue belongs to its worker; `cur` is thread-local; the queue array is
 * written before the workers start and read-only after.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/fuse.h>
#include <sys/uio.h>

#include "edge_i.h"

#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"

#ifdef HFS_HAVE_LIBURING
#include <liburing.h>

#include "uring_i.h"

#define ENTRIES 8 /* ring entries per queue */
#define PAYLOAD_OFF 4096 /* the payload buffer starts one page into an entry */
#define STOP_TAG 1 /* user_data of the message that stops a worker (entries are pointers) */

struct queue;

struct ent {
	struct hfs_fuse_uring_req_header *hdr; /* start of the allocation */
	char *payload; /* hdr + PAYLOAD_OFF */
	struct iovec iov[2]; /* what REGISTER gives the kernel */
	uint64_t unique; /* the request being served */
	bool replied;
};

struct queue {
	struct io_uring ring;
	pthread_t thread;
	unsigned qid;
	bool ring_ok, started;
	struct ent ent[ENTRIES];
};

static struct {
	struct fuse_session *se;
	int fd;
	size_t payload_max;
	unsigned nq;
	struct queue *q;
	sem_t ready; /* a worker posts it once its ring exists (or could not be made) */
	_Atomic bool started;
} ur;

static __thread struct ent *cur; /* the entry this worker is serving */

/* Number of queues the kernel makes: one per possible CPU, indexed by CPU number. */
static unsigned possible_cpus(void)
{
	char buf[256] = "";
	unsigned last = 0;
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	char *p;

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	p = buf + strcspn(buf, "\n");
	while (p > buf && (p[-1] >= '0' && p[-1] <= '9'))
		p--;
	if (sscanf(p, "%u", &last) != 1)
		return (unsigned)sysconf(_SC_NPROCESSORS_CONF);
	return last + 1;
}

static int queue_cmd(struct queue *q, struct ent *e, uint32_t op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	struct hfs_fuse_uring_cmd_req *r;

	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
		if (!sqe)
			return -EBUSY;
	}
	memset(sqe, 0, 2 * sizeof(*sqe)); /* SQE128 */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = ur.fd;
	sqe->cmd_op = op;
	sqe->user_data = (uintptr_t)e;
	if (op == HFS_FUSE_IO_URING_CMD_REGISTER) {
		sqe->addr = (uintptr_t)e->iov;
		sqe->len = 2;
	}
	r = (struct hfs_fuse_uring_cmd_req *)sqe->cmd;
	r->qid = (uint16_t)q->qid;
	if (op == HFS_FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
		r->commit_id = e->hdr->ring_ent_in_out.commit_id;
	return 0;
}

/* Serve the request the kernel put in e, leave the reply in e. */
static void serve(struct ent *e)
{
	const struct fuse_in_header *in = (const void *)e->hdr->in_out;
	size_t payload = e->hdr->ring_ent_in_out.payload_sz;
	size_t oplen = in->len - sizeof(*in) - payload;
	struct fuse_buf buf = { .size = in->len };
	char *start;

	e->unique = in->unique;
	e->replied = false;
	if (in->len < sizeof(*in) + payload || oplen > HFS_FUSE_URING_OP_IN_OUT_SZ ||
	    payload > ur.payload_max)
		goto check; /* not a request we can rebuild: EIO below */
	start = e->payload - sizeof(*in) - oplen;
	memcpy(start, in, sizeof(*in));
	memcpy(start + sizeof(*in), e->hdr->op_in, oplen);
	buf.mem = start;
	cur = e;
	if (!hfs_raw_dispatch(ur.fd, start, in->len)) /* what libfuse 3.14 cannot answer */
		fuse_session_process_buf(ur.se, &buf);
	cur = NULL;
check:
	if (!e->replied) {
		/* no reply came through this thread (none of our ops does that): fail the
		 * request rather than leave its caller waiting forever */
		struct fuse_out_header *oh = (void *)e->hdr->in_out;

		oh->len = sizeof(*oh);
		oh->error = -EIO;
		oh->unique = e->unique;
		e->hdr->ring_ent_in_out.payload_sz = 0;
	}
}

bool hfs_uring_reply(const struct iovec *iov, int count, ssize_t *res)
{
	struct ent *e = cur;
	const struct fuse_out_header *oh;
	size_t n = 0;

	if (!e || count < 1 || iov[0].iov_len != sizeof(*oh))
		return false;
	oh = iov[0].iov_base;
	if (oh->unique != e->unique)
		return false;
	for (int k = 1; k < count; k++) {
		if (n + iov[k].iov_len > ur.payload_max) {
			errno = EINVAL; /* cannot happen within max_write/max_pages */
			*res = -1;
			return true;
		}
		memcpy(e->payload + n, iov[k].iov_base, iov[k].iov_len);
		n += iov[k].iov_len;
	}
	memcpy(e->hdr->in_out, oh, sizeof(*oh));
	e->hdr->ring_ent_in_out.payload_sz = (uint32_t)n;
	e->replied = true;
	*res = (ssize_t)(sizeof(*oh) + n);
	return true;
}

static int ring_setup(struct queue *q)
{
	struct io_uring_params p = { .flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER |
						IORING_SETUP_DEFER_TASKRUN };
	int err = io_uring_queue_init_params(ENTRIES, &q->ring, &p);

	if (err == -EINVAL) { /* older kernel: without the optional flags */
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SQE128;
		err = io_uring_queue_init_params(ENTRIES, &q->ring, &p);
	}
	return err;
}

/* Allocate and register every entry of q; *armed counts the entries queued. 0 or -errno. */
static int register_entries(struct queue *q, int *armed)
{
	int err = 0;

	*armed = 0;

	for (int k = 0; k < ENTRIES && !err; k++) {
		struct ent *e = &q->ent[k];
		void *mem;

		err = -posix_memalign(&mem, PAYLOAD_OFF, PAYLOAD_OFF + ur.payload_max);
		if (err)
			break;
		e->hdr = mem;
		e->payload = (char *)mem + PAYLOAD_OFF;
		e->iov[0] = (struct iovec){ e->hdr, sizeof(*e->hdr) };
		e->iov[1] = (struct iovec){ e->payload, ur.payload_max };
		err = queue_cmd(q, e, HFS_FUSE_IO_URING_CMD_REGISTER);
		*armed += !err;
	}
	if (!err)
		err = io_uring_submit(&q->ring);
	return err < 0 ? err : 0;
}

static void report(struct queue *q, int err)
{
	static _Atomic bool said;

	if (err != -ENOTCONN && err != -ECANCELED && !atomic_exchange(&said, true))
		hfs_log(HFS_LOG_ERR, "io_uring queue %u: kernel refused a ring entry: %s (%d)",
			q->qid, strerror(-err), err);
}


/* Reply, then watch for the next request for hfs.spin_ns before sleeping.  Not for this
 * CPU's sake: a worker that is busy keeps its CPU from looking idle, so the scheduler
 * wakes the client where it slept (on the CPU of the worker that just replied) instead of
 * moving it to an idle, halted vCPU, where the next request would meet a sleeping worker
 * too.  sched_yield lets a client that was woken on this CPU run at once. */
static void spin(struct queue *q)
{
	int64_t until;

	if (!hfs.spin_ns)
		return;
	io_uring_submit(&q->ring);
	until = hfs_now_ns() + hfs.spin_ns;
	while (!io_uring_cq_ready(&q->ring) && hfs_now_ns() < until) {
		io_uring_get_events(&q->ring); /* runs the deferred completions */
		if (!io_uring_cq_ready(&q->ring))
			sched_yield();
	}
}

static void *worker(void *arg)
{
	struct queue *q = arg;
	cpu_set_t set;
	int armed = 0, err;

	CPU_ZERO(&set);
	CPU_SET(q->qid, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set); /* offline CPU: unpinned */
	err = ring_setup(q);
	q->ring_ok = !err;
	sem_post(&ur.ready);
	if (err) {
		hfs_log(HFS_LOG_ERR, "io_uring queue %u: %s", q->qid, strerror(-err));
		return NULL;
	}
	err = register_entries(q, &armed);
	if (err)
		report(q, err);
	while (armed > 0) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		bool stop = false;

		spin(q);
		err = io_uring_submit_and_wait(&q->ring, 1);
		if (err < 0 && err != -EINTR) {
			report(q, err);
			break;
		}
		io_uring_for_each_cqe(&q->ring, head, cqe) {
			struct ent *e = (struct ent *)(uintptr_t)cqe->user_data;

			seen++;
			if (cqe->user_data == STOP_TAG) {
				stop = true;
				continue;
			}
			if (cqe->res < 0) {
				report(q, cqe->res);
				armed--;
				continue;
			}
			serve(e);
			err = queue_cmd(q, e, HFS_FUSE_IO_URING_CMD_COMMIT_AND_FETCH);
			if (err) {
				report(q, err);
				armed--;
			}
		}
		io_uring_cq_advance(&q->ring, seen);
		if (stop) {
			/* replies served in this batch must still reach the kernel */
			io_uring_submit(&q->ring);
			break;
		}
	}
	return NULL;
}

int hfs_uring_enable(void)
{
	char v = 0;
	int fd = open(ENABLE_PARAM, O_RDWR | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (pread(fd, &v, 1, 0) != 1)
		err = -errno;
	else if (v != 'Y') {
		if (pwrite(fd, "Y", 1, 0) != 1)
			err = -errno;
		else
			hfs_log(HFS_LOG_NOTICE, "set %s to Y (-o io_uring)", ENABLE_PARAM);
	}
	close(fd);
	return err;
}

void hfs_uring_start(struct fuse_session *se, int fd, size_t payload)
{
	if (atomic_exchange(&ur.started, true))
		return;
	ur.se = se;
	/* our own reference: fuse_session_unmount closes the session's fd while a worker may
	 * still commit a reply; the device is released when the rings and this are closed */
	ur.fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (ur.fd < 0) {
		hfs_log(HFS_LOG_WARNING, "io_uring: %s; staying on /dev/fuse", strerror(errno));
		return;
	}
	ur.payload_max = payload;
	ur.nq = possible_cpus();
	ur.q = calloc(ur.nq, sizeof(*ur.q));
	if (!ur.q || sem_init(&ur.ready, 0, 0)) {
		hfs_log(HFS_LOG_WARNING, "io_uring: out of memory; staying on /dev/fuse");
		free(ur.q);
		ur.q = NULL;
		close(ur.fd);
		ur.fd = -1;
		return;
	}
	for (unsigned k = 0; k < ur.nq; k++) {
		struct queue *q = &ur.q[k];

		q->qid = k;
		q->started = pthread_create(&q->thread, NULL, worker, q) == 0;
		if (q->started)
			sem_wait(&ur.ready); /* hfs_uring_stop may message the ring from now on */
	}
}

void hfs_uring_stop(void)
{
	struct io_uring msg;

	if (!ur.q)
		return;
	if (io_uring_queue_init(ur.nq, &msg, 0) == 0) {
		for (unsigned k = 0; k < ur.nq; k++) {
			struct io_uring_sqe *sqe;

			if (!ur.q[k].ring_ok || !(sqe = io_uring_get_sqe(&msg)))
				continue;
			io_uring_prep_msg_ring(sqe, ur.q[k].ring.ring_fd, 0, STOP_TAG, 0);
		}
		io_uring_submit_and_wait(&msg, 0);
		io_uring_queue_exit(&msg);
	}
	for (unsigned k = 0; k < ur.nq; k++) {
		struct queue *q = &ur.q[k];

		if (q->started)
			pthread_join(q->thread, NULL);
		if (q->ring_ok)
			io_uring_queue_exit(&q->ring); /* cancels what the kernel still holds */
		for (int e = 0; e < ENTRIES; e++)
			free(q->ent[e].hdr);
	}
	free(ur.q);
	ur.q = NULL;
	close(ur.fd);
}

#else /* !HFS_HAVE_LIBURING */

int hfs_uring_enable(void)
{
	hfs_log(HFS_LOG_ERR, "built without liburing: -o io_uring is not available");
	return -ENOTSUP;
}

void hfs_uring_start(struct fuse_session *se, int fd, size_t payload)
{
	(void)se;
	(void)fd;
	(void)payload;
}

bool hfs_uring_reply(const struct iovec *iov, int count, ssize_t *res)
{
	(void)iov;
	(void)count;
	(void)res;
	return false;
}

void hfs_uring_stop(void)
{
}

#endif
