/*
 * io.c — our own read/writev on /dev/fuse (fuse_session_custom_io), and the kernel's
 * cache invalidations.
 *
 * 1. FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 (protocol 7.31) cannot ask for.  Without
 *    it the kernel asks GETXATTR("security.capability") before *every* write
 *    (file_remove_privs), doubling the round trips of small writes.  With it the kernel
 *    marks the superblock SB_NOSEC and leaves clearing suid/sgid on write/truncate/chown to
 *    us (file.c, hfs.killpriv).  read() notes the unique id of the INIT request when the
 *    kernel offers the flag; writev() ORs the flag into that request's reply.
 *
 * 2. A watcher that spins.  A FUSE round trip is two sleeps and two wake-ups; on a VM a
 *    wake-up costs several microseconds.  One worker at a time is the watcher: it holds a
 *    token (a semaphore: a cancellation point, as libfuse cancels idle workers at exit) and
 *    polls the non-blocking device for up to hfs.spin_ns before it sleeps in poll() (halved
 *    each time a wait outlasts hfs.spin_ns, back to full when one does not).  The
 *    other idle workers sleep on the token, not on the device, so a request wakes nobody
 *    needlessly.  A worker keeps the token while it handles a small request and goes back
 *    to watching right after its reply: a synchronous client (one request at a time) then
 *    meets a thread that is already awake.  Bulk reads and writes give the token up first,
 *    so they run in parallel, and so does a handler about to wait (hfs_io_will_wait: a
 *    status file's rendering, which for .heapfs/verify lasts as long as the partner takes;
 *    a page invalidation): the other workers go on reading the device meanwhile.  Only on
 *    the main device fd (clone_fd workers read their own fds as usual), and off on one
 *    CPU, with -o spin_us=0 and with io_uring (the ring workers spin instead, uring.c).
 *
 * 3. FUSE over io_uring (uring.c; main.c decides, -o io_uring=auto|on|off): read() notes
 *    whether the kernel offers FUSE_OVER_IO_URING; writev() then sets FUSE_INIT_EXT and
 *    the flags2 bit in the INIT reply (libfuse 3.14's 7.31 reply is 64 bytes: flags2 sits
 *    in its unused words) and, once the kernel has taken the reply, puts the kernel's
 *    enable_uring back as found and starts the ring workers.  Replies made while a
 *    ring worker serves a request are handed to uring.c instead of the device.
 *
 * 4. The kernel caches to drop: io.c registers with the core (hfs_kcache_register) the
 *    notifications that tell the kernel to forget a name or a range of pages, which the
 *    core and the features call without naming the edge.
 *
 * 5. FUSE_TMPFILE and FUSE_STATX, which libfuse 3.14 answers ENOSYS: read() hands every
 *    request to hfs_raw_dispatch (ops.c) first, which answers those two itself
 *    (hfs_io_reply) and makes read() fetch the next request instead.
 *
 * Every message passes through otherwise untouched.
 *
 * No splice.  libfuse 3.14 reads requests with splice() into a pipe when the custom I/O
 * has a splice_receive hook and it can grow that pipe to 1 MiB + 4 KiB (root with
 * CAP_SYS_RESOURCE can; so can anyone where fs.pipe-max-size allows it).  Such reads
 * bypass read() above: the INIT patch, the watcher's token, and its blocking (the main
 * device is non-blocking for the watcher, and libfuse takes a spliced EAGAIN as fatal:
 * the daemon exited 1 at the first idle moment).  Spliced replies would bypass writev()
 * and so the io_uring reply path.  Splice buys a memory filesystem nothing measurable
 * (docs/DESIGN.md "Speed": 1 GiB dd writes with splice reads on and off are within the
 * run-to-run spread), so we offer no splice hooks (libfuse then never wants
 * FUSE_CAP_SPLICE_*), and op_init clears the capabilities as well.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/param.h>
#include <time.h>
#include <unistd.h>

#include "edge_i.h"
#include "uring_i.h"

static _Atomic uint64_t init_unique; /* INIT request to patch the reply of; 0: none */
static uint32_t init_flags, init_flags2; /* what to OR into that reply */
static struct fuse_session *session;
static int dev_fd = -1; /* the session's device */
static int main_fd = -1; /* the device the watcher spins on; -1: no spinning */
static sem_t token;
static pthread_key_t holder; /* non-NULL while this thread holds the token */
static int64_t budget;       /* current spin, adapted to the client (token held) */

/* A worker that ends (libfuse trims idle workers, cancels them at exit) with the token
 * must give it back. */
static void drop_token(void *p)
{
	(void)p;
	sem_post(&token);
}


/* Is this request one to handle without the token? */
static bool bulk(const void *buf, ssize_t n)
{
	const struct fuse_in_header *h = buf;

	if (n < (ssize_t)sizeof(*h))
		return true;
	if (h->opcode == FUSE_WRITE)
		return h->len >= HFS_BULK_BYTES;
	if (h->opcode == FUSE_READ && n >= (ssize_t)(sizeof(*h) + sizeof(struct fuse_read_in)))
		return ((const struct fuse_read_in *)(h + 1))->size >= HFS_BULK_BYTES;
	return false;
}

static ssize_t watch_read(int fd, void *buf, size_t len)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	bool slept = false;
	int64_t start, until;
	ssize_t n;

	if (!pthread_getspecific(holder)) {
		if (sem_wait(&token))
			return -1; /* EINTR: libfuse checks for exit */
		pthread_setspecific(holder, &token);
	}
	start = hfs_now_ns();
	until = start + budget;
	for (;;) {
		n = read(fd, buf, len);
		if (n >= 0 || errno != EAGAIN)
			break; /* a request, or an error (EINTR too: libfuse checks for exit) */
		if (!slept && hfs_now_ns() <= until)
			continue;
		slept = true;
		if (poll(&p, 1, -1) < 0) {
			n = -1;
			break;
		}
	}
	/* A request that came within the full spin means a fast client: spin in full next
	 * time.  One that outlasted the spin means a slow one: halve it (down to 1/16). */
	if (hfs_now_ns() - start <= hfs.spin_ns)
		budget = hfs.spin_ns;
	else if (slept && budget > hfs.spin_ns / 16)
		budget /= 2;
	if (n < 0 || bulk(buf, n)) {
		pthread_setspecific(holder, NULL);
		sem_post(&token);
	}
	return n;
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	const struct fuse_in_header *h = buf;
	ssize_t n;

	(void)userdata;
	/* main_fd: spinning on.  What libfuse cannot answer is answered here, and the next
	 * request read in its place. */
	do
		n = fd == main_fd ? watch_read(fd, buf, len) : read(fd, buf, len);
	while (n > 0 && hfs_raw_dispatch(fd, buf, (size_t)n));
	if (n >= (ssize_t)(sizeof(*h) + offsetof(struct fuse_init_in, flags) + sizeof(uint32_t)) &&
	    h->opcode == FUSE_INIT) {
		const struct fuse_init_in *in = (const void *)(h + 1);
		bool ext = in->flags & FUSE_INIT_EXT &&
			   n >= (ssize_t)(sizeof(*h) + offsetof(struct fuse_init_in, flags2) +
					  sizeof(uint32_t));

		init_flags = init_flags2 = 0;
		atomic_store(&init_unique, h->unique); /* its reply is patched, then settle */
		if (in->flags & FUSE_HANDLE_KILLPRIV_V2 && !hfs.no_killpriv)
			init_flags |= FUSE_HANDLE_KILLPRIV_V2;
		if (hfs.io_uring && ext && in->flags2 & HFS_FUSE_OVER_IO_URING2) {
			init_flags |= FUSE_INIT_EXT;
			init_flags2 |= HFS_FUSE_OVER_IO_URING2;
		} else if (hfs.io_uring) {
			hfs_log(hfs.io_uring == HFS_URING_ASKED ? HFS_LOG_WARNING : HFS_LOG_DEBUG,
				"the kernel does not offer FUSE over io_uring; using /dev/fuse");
		}
	}
	return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	uint64_t u = atomic_load(&init_unique);
	size_t payload = 0;
	bool init = false;
	ssize_t n;

	(void)userdata;
	if (hfs_uring_reply(iov, count, &n))
		return n;
	if (u && count >= 2 && iov[0].iov_len == sizeof(struct fuse_out_header) &&
	    iov[1].iov_len >= offsetof(struct fuse_init_out, max_pages) + sizeof(uint16_t)) {
		struct fuse_out_header *h = iov[0].iov_base;

		if (h->unique == u && h->error == 0) {
			struct fuse_init_out *o = iov[1].iov_base;

			o->flags |= init_flags;
			hfs.killpriv = init_flags & FUSE_HANDLE_KILLPRIV_V2;
			if (init_flags2 &&
			    iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t)) {
				o->flags2 |= init_flags2;
				/* the kernel's payload buffer minimum: max(8 KiB, max_write,
				 * max_pages pages) */
				payload = (size_t)o->max_pages * (size_t)sysconf(_SC_PAGESIZE);
				payload = MAX(payload, MAX((size_t)o->max_write, FUSE_MIN_READ_BUFFER));
			}
			atomic_store(&init_unique, 0);
			init = true;
		}
	}
	n = writev(fd, iov, count);
	if (init) /* the kernel has read enable_uring for this mount: put it back */
		hfs_uring_settle();
	if (payload && n >= 0) /* the kernel has taken the INIT reply: rings may register */
		hfs_uring_start(session, dev_fd, payload);
	return n;
}

ssize_t hfs_io_reply(int fd, struct iovec *iov, int count)
{
	ssize_t n;

	if (hfs_uring_reply(iov, count, &n))
		return n;
	return writev(fd, iov, count);
}

static const struct fuse_custom_io io = {
	.read = io_read,
	.writev = io_writev,
};

/* The kernel forgets what it cached of parent/name (a mirror's tree changed under it). */
static void inval_entry(hfs_ino_t parent, const char *name)
{
	fuse_lowlevel_notify_inval_entry(session, parent, name, strlen(name));
}

void hfs_io_will_wait(void)
{
	if (main_fd >= 0 && pthread_getspecific(holder)) {
		pthread_setspecific(holder, NULL);
		sem_post(&token);
	}
}

/* ... or of [off, off + len) of ino's pages (written through a client's mapping, or by
 * an O_DIRECT write: ops.c), or (off < 0) only its attributes.  Dropping pages waits for
 * the page locks of reads in flight, whose READs may wait for the token this thread holds
 * while it serves a small request: give it up first, as a bulk request does. */
static void inval_range(hfs_ino_t ino, int64_t off, int64_t len)
{
	if (off >= 0)
		hfs_io_will_wait();
	fuse_lowlevel_notify_inval_inode(session, ino, off, len);
}

static const struct hfs_kcache_ops kcache = { .entry = inval_entry, .range = inval_range };

int hfs_io_setup(struct fuse_session *se)
{
	int fd = fuse_session_fd(se);

	session = se;
	dev_fd = fd;
	hfs_kcache_register(&kcache);
	/* with io_uring the ring workers spin (uring.c); the device then carries only
	 * INIT, forgets and interrupts */
	if (hfs.spin_ns && !hfs.io_uring) {
		if (sem_init(&token, 0, 1) || pthread_key_create(&holder, drop_token) ||
		    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK))
			return -errno;
		main_fd = fd;
		budget = hfs.spin_ns;
	}
	return fuse_session_custom_io(se, &io, fd);
}
