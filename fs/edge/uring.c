/*
 * uring.c — the FUSE-over-io_uring transport (Linux 6.14+): the default for mounts of small
 * files where the kernel offers it (main.c picks, -o io_uring=auto|on|off; else io.c's
 * /dev/fuse).
 *
 * With it the kernel queues each request on the queue of the CPU its caller runs on, and a
 * worker pinned to that CPU serves it: the wake-up stays on one CPU (no cross-CPU wake-up
 * of a halted vCPU) and one io_uring_enter both replies and fetches the next request.
 * Bulk reads and writes unpin the worker for as long as they come (place()).
 *
 * How: main.c has hfs_uring_enable() turn on the fuse module's enable_uring before
 * mounting (the kernel only offers the feature then); io.c asks for it in the INIT reply,
 * calls hfs_uring_settle() (the switch back as found) and hfs_uring_start() once the
 * kernel has taken that reply.  Then one worker per possible CPU (the kernel wants a
 * queue per possible CPU before it switches over) creates its own ring (SQE128, single
 * issuer) and registers ENTRIES ring entries on its queue.  An entry is a header page
 * followed by the payload buffer, all of a queue's entries in one mapping (buffers():
 * huge pages where there are any), so a request becomes a
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
 * written before the workers start and read-only after; `sw` belongs to the thread that
 * mounts (enable) and then to the one that takes INIT (settle: libfuse's loop, after
 * the mount), or to main.c's teardown if no INIT came; hfs.uring_live is atomic.
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
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "edge_i.h"

#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"
#define ENABLE_LOCK_DIR "/run/heapfs"
#define ENABLE_LOCK ENABLE_LOCK_DIR "/enable_uring.lock"
#define LOCK_WAIT_MS 5000

/* What hfs_uring_enable() found and did to the kernel's switch, for hfs_uring_settle(). */
static struct {
	int lock_fd; /* flock held from enable to settle; -1: none */
	bool set_by_us; /* it was off and we turned it on */
	bool pending; /* enable ran and settle has not */
} sw = { .lock_fd = -1 };

#ifdef HFS_HAVE_LIBURING
#include <liburing.h>

#include "uring_i.h"

#define ENTRIES 8 /* ring entries per queue */
#define PAYLOAD_OFF 4096 /* the payload buffer starts one page into an entry */
#define HUGE_PAGE (2u << 20)
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
	bool ring_ok, started, registered;
	bool far; /* unpinned for bulk requests (place()) */
	char *buf; /* every entry's buffers, one mapping (buffers()) */
	size_t buf_len;
	struct ent ent[ENTRIES];
};

static struct {
	struct fuse_session *se;
	int fd;
	size_t payload_max;
	unsigned nq;
	struct queue *q;
	cpu_set_t allowed; /* the CPUs the daemon may run on (before any pinning) */
	sem_t ready; /* a worker posts it once its entries are registered (or cannot be) */
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

bool hfs_uring_serving(void)
{
	return cur != NULL;
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

/* The buffers of q's entries: one mapping, in 2 MiB pages where the host has them.  The
 * kernel pins the payload's pages for each request it copies (get_user_pages over 256
 * small pages for a 1 MiB payload) and its copies walk the TLB.  Explicit huge pages
 * (MAP_HUGETLB) when the admin reserved some, else transparent ones (MADV_HUGEPAGE:
 * honoured with THP in "madvise" or "always" mode), else small pages.  Faulted in now,
 * not in the first requests.  0 or -errno. */
static int buffers(struct queue *q)
{
	size_t len = ENTRIES * (PAYLOAD_OFF + ur.payload_max);
	int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
	char *p;
	uintptr_t at;

	len = (len + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
	q->buf_len = len;
	p = mmap(NULL, len, prot, flags | MAP_HUGETLB | MAP_POPULATE, -1, 0);
	if (p != MAP_FAILED) {
		q->buf = p;
		return 0;
	}
	/* a 2 MiB-aligned range: map 2 MiB more, trim both ends */
	p = mmap(NULL, len + HUGE_PAGE, prot, flags, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	at = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
	if (at > (uintptr_t)p)
		munmap(p, at - (uintptr_t)p);
	munmap((char *)at + len, (uintptr_t)p + HUGE_PAGE - at);
	q->buf = (char *)at;
	madvise(q->buf, len, MADV_HUGEPAGE); /* refused (THP off): small pages */
	for (size_t off = 0; off < len; off += 4096)
		q->buf[off] = 0;
	return 0;
}

/* Register every entry of q; *armed counts the entries queued.  0 or -errno. */
static int register_entries(struct queue *q, int *armed)
{
	int err = buffers(q);

	*armed = 0;
	for (int k = 0; k < ENTRIES && !err; k++) {
		struct ent *e = &q->ent[k];
		char *mem = q->buf + k * (PAYLOAD_OFF + ur.payload_max);

		e->hdr = (void *)mem;
		e->payload = mem + PAYLOAD_OFF;
		e->iov[0] = (struct iovec){ e->hdr, sizeof(*e->hdr) };
		e->iov[1] = (struct iovec){ e->payload, ur.payload_max };
		err = queue_cmd(q, e, HFS_FUSE_IO_URING_CMD_REGISTER);
		*armed += !err;
	}
	if (!err)
		err = io_uring_submit(&q->ring);
	if (err >= 0) {
		struct io_uring_cqe *cqe;

		/* a REGISTER the kernel refuses has completed already (the loop reports it) */
		q->registered = io_uring_peek_cqe(&q->ring, &cqe) != 0 || cqe->res >= 0;
	}
	return err < 0 ? err : 0;
}

/* Where a worker runs: small requests on its queue's CPU (the caller's), bulk reads and
 * writes (HFS_BULK_BYTES and more) wherever the scheduler finds room.  Small requests gain
 * from staying put: the caller sleeps, the worker runs on the CPU it leaves, no cross-CPU
 * wake-up of a halted vCPU.  Bulk ones lose: readahead is queued from the reader's CPU
 * while the reader goes on copying out the pages it has, so reader and worker took turns
 * on one CPU while the other idled (profile of 1 MiB reads: 44% idle against 28% over
 * /dev/fuse); and a worker pinned where another process runs waits for that CPU while
 * another is free (seq write 1 MiB at load 6-12: 0.55-0.65x of /dev/fuse pinned).  A move
 * is one sched_setaffinity, made only when the kind of request changes. */
static void place(struct queue *q, const struct ent *e)
{
	const struct fuse_in_header *in = (const void *)e->hdr->in_out;
	const struct fuse_read_in *r = (const void *)e->hdr->op_in;
	bool far = (in->opcode == FUSE_READ && r->size >= HFS_BULK_BYTES) ||
		   (in->opcode == FUSE_WRITE && in->len >= HFS_BULK_BYTES);
	cpu_set_t set = ur.allowed;

	if (far == q->far || (far && !CPU_COUNT(&set)))
		return;
	if (!far) {
		CPU_ZERO(&set);
		CPU_SET(q->qid, &set);
	}
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0)
		q->far = far;
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
	if (err) {
		sem_post(&ur.ready);
		hfs_log(HFS_LOG_ERR, "io_uring queue %u: %s", q->qid, strerror(-err));
		return NULL;
	}
	err = register_entries(q, &armed);
	sem_post(&ur.ready);
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
				atomic_store(&hfs.uring_live, false); /* the kernel stays on /dev/fuse */
				armed--;
				continue;
			}
			place(q, e);
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

/* Can this process make a ring for the transport (kernel.io_uring_disabled, seccomp, a
 * kernel without SQE128 say no)?  0 or -errno. */
static int probe(void)
{
	struct io_uring r;
	struct io_uring_params p = { .flags = IORING_SETUP_SQE128 };
	int err = io_uring_queue_init_params(2, &r, &p);

	if (!err)
		io_uring_queue_exit(&r);
	return err;
}

/* The kernel offers FUSE over io_uring in a mount's INIT request only while the fuse
 * module's enable_uring is on, and reads it again when it takes the INIT reply; after
 * that the connection keeps the transport whatever the switch says.  So the switch is on
 * just for that window: enable (before mounting) turns it on if it was off, settle (once
 * the INIT reply is in, or at unmount if none came) puts back what enable found.  An
 * flock on /run/heapfs/enable_uring.lock spans the window, so that daemons mounting at
 * the same time do not turn it off under each other.  0 or -errno (then /dev/fuse). */
int hfs_uring_enable(void)
{
	char v = 0;
	int fd, err = probe();

	if (err)
		return err;
	if (mkdir(ENABLE_LOCK_DIR, 0755) && errno != EEXIST)
		hfs_log(HFS_LOG_DEBUG, "%s: %s", ENABLE_LOCK_DIR, strerror(errno));
	sw.lock_fd = open(ENABLE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	/* a daemon that holds it is between its mount and its INIT, milliseconds; one stuck
	 * there must not keep this mount from coming up: after LOCK_WAIT_MS, go on unlocked */
	for (int ms = 0; sw.lock_fd >= 0 && flock(sw.lock_fd, LOCK_EX | LOCK_NB); ms += 10) {
		if (errno != EWOULDBLOCK || ms >= LOCK_WAIT_MS) {
			close(sw.lock_fd);
			sw.lock_fd = -1;
			break;
		}
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
	}
	sw.pending = true;
	fd = open(ENABLE_PARAM, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		fd = open(ENABLE_PARAM, O_RDONLY | O_CLOEXEC); /* not root: on already will do */
	if (fd < 0)
		return -errno;
	if (pread(fd, &v, 1, 0) != 1)
		err = -errno;
	else if (v != 'Y') {
		if (pwrite(fd, "Y", 1, 0) != 1)
			err = -errno;
		else
			sw.set_by_us = true;
	}
	close(fd);
	return err;
}

void hfs_uring_settle(void)
{
	int fd;

	if (!sw.pending)
		return;
	sw.pending = false;
	if (sw.set_by_us) {
		fd = open(ENABLE_PARAM, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || pwrite(fd, "N", 1, 0) != 1)
			hfs_log(HFS_LOG_WARNING, "cannot turn %s back off: %s", ENABLE_PARAM,
				strerror(errno));
		if (fd >= 0)
			close(fd);
		sw.set_by_us = false;
	}
	if (sw.lock_fd >= 0) {
		close(sw.lock_fd); /* releases the flock */
		sw.lock_fd = -1;
	}
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
	if (sched_getaffinity(0, sizeof(ur.allowed), &ur.allowed))
		CPU_ZERO(&ur.allowed); /* unknown: bulk requests stay on the worker's CPU */
	ur.q = calloc(ur.nq, sizeof(*ur.q));
	bool all = true;

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
		all &= q->started && q->registered;
	}
	/* the kernel switches over once every queue has an entry; .heapfs/stats says so */
	atomic_store(&hfs.uring_live, all);
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
		if (q->buf)
			munmap(q->buf, q->buf_len);
	}
	free(ur.q);
	ur.q = NULL;
	close(ur.fd);
}

#else /* !HFS_HAVE_LIBURING */

int hfs_uring_enable(void)
{
	return -ENOTSUP; /* built without liburing */
}

void hfs_uring_settle(void)
{
}

bool hfs_uring_serving(void)
{
	return false;
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
