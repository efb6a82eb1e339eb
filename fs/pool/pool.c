/*
 * pool.c — pooled donor memory behind pool/ (SPEC "Pooled donor memory", README "Pool").
 *
 * What: pool/NAME are regular files of one heap (struct hfs_heap) of pool.size (rounded up
 * to a power of two) whose memory source (alloc/source.h, "donor") maps nothing: range 0
 * is the daemon's own memfd of max_process_memory bytes, ranges 1..N are slots of
 * donor_size bytes, each empty until a donor process hands over a memfd.  Heap offsets in
 * a slot without memory are claimed ("reserved") in the buddy allocator so no file can get
 * them; a donor joining frees its slot's blocks into the heap, a donor leaving claims them
 * back.  Reads and writes go through the source (pread/pwrite), so the daemon's address
 * space never holds donor memory.
 *
 * How: growing a pool file past what the pool holds calls make_room() (the heap's op,
 * file.c), which spawns heapfs-donor processes (at most max_donors slots, then the
 * growth fails with ENOSPC) and waits until they joined.  A thread serves the pool socket
 * and never waits for one peer: it takes each joining peer's credentials at accept and
 * polls it for its offer for a second at most, among a bounded few (pend_*); it checks
 * the offer (SO_PEERCRED: same uid or root; a header and exactly one memfd, sealed against
 * shrinking before its size is checked: donor/proto.c), notices
 * donors that die (EOF: their memory stays, the daemon holds the descriptor), reaps the
 * donors it spawned, and every tick tells donors whose memory is entirely free again to
 * release (after they were used once; a spawned donor also after DONOR_IDLE_NS unused).
 *
 * Locking: pool.lock guards the slots; make_room waits on pool.changed with it.  It is
 * taken under an inode lock (make_room runs inside a write) and never the other way
 * round; the socket thread never takes inode locks.  A slot's range is added to the
 * source before its blocks are freed into the heap and removed only after they were all
 * claimed back, so no reader meets a range without memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chunk.h"
#include "client/msg_i.h"
#include "donor/proto_i.h"
#include "core.h"
#include "pool.h"
#include "source.h"

#define POOL_MIN_BLOCK (4u << 10)
#define POOL_CHUNK_ORDER 21                /* 2 MiB: sizes of donors are multiples */
#define POOL_TICK_MS 200
#define POOL_JOIN_TIMEOUT_NS 1000000000ll /* a peer gets this long to send its offer */
#define POOL_PENDING 32                    /* peers waiting to send their offer, at most */
#define POOL_PENDING_OTHERS 4              /* of them, of a uid that will be refused */
#define POOL_WAIT_NS (30ll * 1000000000)   /* how long a growth waits for donors */
#define DONOR_IDLE_NS (10ll * 1000000000)  /* a spawned donor never used goes after this */
#define POOL_QUIET_NS (1000000000ll)       /* no release within this long of a growth */
#define MAX_ZOMBIES 1024

enum slot_state { S_FREE, S_STARTING, S_ACTIVE, S_GONE, S_RELEASING };
static const char *const state_name[] = { "free", "starting", "active", "gone", "releasing" };

struct slot {
	enum slot_state state;
	pid_t pid;
	bool spawned;   /* our child (reaped by pid) */
	bool used_once; /* held bytes were seen since it joined */
	int conn;       /* its socket, -1 */
	uint64_t len;   /* bytes it gave (<= the range) */
	int64_t since;  /* when it started / joined (monotonic ns) */
};

static struct {
	struct hfs_heap *h;
	struct msrc *src;
	uint64_t size, own, ds, chunk;
	unsigned nslots;
	struct slot *s; /* [1 .. nslots] */
	pthread_mutex_t lock;
	pthread_cond_t changed;
	unsigned growers, failures;
	_Atomic int64_t last_grow; /* when a file last grew (monotonic ns) */
	pid_t zombies[MAX_ZOMBIES]; /* spawned donors not reaped yet */
	unsigned nzombies;
	int lfd, stopfd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	ino_t sock_ino;
	char exe[PATH_MAX];
	pthread_t thread;
	bool running;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER, .lfd = -1, .stopfd = -1 };

/* pool/'s namespace: regular files only, in the pool's heap */
static struct hfs_heap *pool_heap(void)
{
	return pool.h;
}

/* ---- claiming offsets that have no memory ------------------------------------------ */

/* Offsets are claimed and given back one chunk-sized block at a time: any chunk-aligned
 * range then frees exactly the blocks some earlier claim took (a donor smaller than its
 * slot, a claim that failed part-way).  Given-back blocks coalesce at the next drain. */
static void unclaim(uint64_t off, uint64_t len)
{
	for (uint64_t p = off; p < off + len; p += pool.chunk)
		buddy_free(pool.h->b, p, POOL_CHUNK_ORDER);
	atomic_fetch_sub(&pool.h->held, len);
}

/* Claim [off, off + len) whole (0), or nothing (-EBUSY: some of it is in use). */
static int claim(uint64_t off, uint64_t len)
{
	uint64_t p, end = off + len;

	for (p = off; p < end; p += pool.chunk)
		if (buddy_alloc_at(pool.h->b, p, POOL_CHUNK_ORDER))
			break;
	if (p < end) {
		if (p > off)
			unclaim(off, p - off);
		atomic_fetch_add(&pool.h->held, p - off); /* unclaim took it off */
		return -EBUSY;
	}
	atomic_fetch_add(&pool.h->held, len);
	return 0;
}

/* Bytes of [off, off + len) in blocks (chunk-aligned: the chunks' held counts). */
static uint64_t used_in(uint64_t off, uint64_t len)
{
	struct chunk_desc d;
	uint64_t used = 0;

	for (uint64_t c = off / pool.chunk; c < (off + len) / pool.chunk; c++)
		if (chunk_describe(pool.h->b, c, &d) == 0)
			used += d.held;
	return used;
}

static uint64_t slot_off(unsigned k)
{
	uint64_t off = 0, len;

	msrc_donor_range(pool.src, k, &off, &len);
	return off;
}

static uint64_t slot_range(unsigned k)
{
	uint64_t off, len = 0;

	msrc_donor_range(pool.src, k, &off, &len);
	return len;
}

/* ---- spawning and reaping ---------------------------------------------------------- */

static int64_t now_ns(void)
{
	return hfs_now_ns();
}

/* Start a donor for free slot k.  pool.lock. */
static int __spawn(unsigned k)
{
	char size[32], *argv[] = { "heapfs-donor", "--socket", pool.path, "--size", size, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none;
	pid_t pid;
	int ret;

	if (!pool.exe[0] || pool.nzombies == MAX_ZOMBIES)
		return -ENOENT;
	snprintf(size, sizeof(size), "%llu", (unsigned long long)slot_range(k));
	posix_spawn_file_actions_init(&fa);
	/* only stdio: a donor holding another donor's socket or the FUSE device would
	 * outlive the daemon */
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
	ret = -posix_spawn(&pid, pool.exe, &fa, &at, argv, NULL);
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	if (ret) {
		hfs_log(HFS_LOG_ERR, "pool: cannot start %s: %s", pool.exe, strerror(-ret));
		return ret;
	}
	pool.zombies[pool.nzombies++] = pid;
	pool.s[k] = (struct slot){ .state = S_STARTING, .pid = pid, .spawned = true, .conn = -1,
				   .len = slot_range(k), .since = now_ns() };
	return 0;
}

/* Reap spawned donors that exited; a slot still starting whose donor died is free again.
 * pool.lock. */
static void __reap(void)
{
	for (unsigned z = 0; z < pool.nzombies;) {
		pid_t pid = pool.zombies[z];
		int st;

		if (waitpid(pid, &st, WNOHANG) != pid) {
			z++;
			continue;
		}
		pool.zombies[z] = pool.zombies[--pool.nzombies];
		for (unsigned k = 1; k <= pool.nslots; k++) {
			if (pool.s[k].state == S_STARTING && pool.s[k].pid == pid) {
				hfs_log(HFS_LOG_WARNING, "pool: donor %d exited before joining",
					(int)pid);
				pool.s[k] = (struct slot){ .state = S_FREE, .conn = -1 };
				pool.failures++;
				pthread_cond_broadcast(&pool.changed);
			}
		}
	}
}

/* Bytes the heap could still hand out, and bytes on their way (donors starting). */
static uint64_t __avail(void)
{
	uint64_t held = atomic_load(&pool.h->held);

	return held < pool.size ? pool.size - held : 0;
}

static uint64_t __pending(void)
{
	uint64_t n = 0;

	for (unsigned k = 1; k <= pool.nslots; k++)
		if (pool.s[k].state == S_STARTING)
			n += pool.s[k].len;
	return n;
}

/* The heap's make_room op (file.c __grow): make `bytes` more bytes available if donors can,
 * starting as many as needed and waiting until they joined.  Never fails: the growth
 * then takes what there is (ENOSPC past max_donors). */
static void make_room(struct hfs_heap *h, uint64_t bytes)
{
	int64_t deadline = now_ns() + POOL_WAIT_NS;
	struct timespec until;
	unsigned failures;

	(void)h;
	/* a growth that found room allocates after this returns: no donor may be claimed
	 * back under it meanwhile (__release_idle waits for a quiet second) */
	atomic_store_explicit(&pool.last_grow, now_ns(), memory_order_relaxed);
	if (__avail() >= bytes)
		return;
	pthread_mutex_lock(&pool.lock);
	pool.growers++;
	failures = pool.failures;
	for (;;) {
		uint64_t avail = __avail(), pending = __pending();
		unsigned k;

		if (avail >= bytes || pool.failures != failures)
			break;
		if (avail + pending < bytes) {
			for (k = 1; k <= pool.nslots && pool.s[k].state != S_FREE; k++)
				;
			if (k <= pool.nslots && __spawn(k) == 0)
				continue;
		}
		if (!pending || now_ns() > deadline)
			break;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 100 * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&pool.changed, &pool.lock, &until);
	}
	pool.growers--;
	pthread_mutex_unlock(&pool.lock);
}

static const struct hfs_heap_ops pool_ops = { .make_room = make_room };
static const struct hfs_ns_ops pool_ns = { .kinds = HFS_KIND(HFS_REG), .heap = pool_heap };

static json_t *donors_json(void);

void hfs_pool_register(void)
{
	static struct hfs_status_file donors = { .name = "donors", .json = donors_json };

	hfs_ns_register(HFS_R_POOL, &pool_ns);
	hfs_status_register(&donors);
}

/* ---- the socket -------------------------------------------------------------------- */

static void refuse(int cfd, const struct ucred *cr, const char *why)
{
	char msg[DONOR_MSG_MAX];
	int n = snprintf(msg, sizeof(msg), "%c%s", DONOR_REFUSE, why);

	hfs_log(HFS_LOG_WARNING, "pool: refused donor pid %d (uid %u): %s", (int)cr->pid,
		(unsigned)cr->uid, why);
	send(cfd, msg, (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1),
	     MSG_NOSIGNAL | MSG_DONTWAIT);
	close(cfd);
}

/* Peers that connected and have not sent their offer yet.  The socket thread never waits
 * for one: it polls them with the donors.  A peer gets POOL_JOIN_TIMEOUT_NS; when the list
 * (or the share of peers of a uid that will be refused) is full, the one that waited
 * longest goes.  A real donor sends its offer right after connecting, so slow peers, however
 * many, push out only each other.  Socket thread only. */
static int join(int cfd, const struct ucred *pcr);

static struct pend {
	int fd;
	struct ucred cr;
	int64_t deadline;
} pend[POOL_PENDING];
static unsigned npend;

static bool uid_ok(uid_t uid)
{
	return uid == getuid() || uid == 0;
}

static void pend_drop(unsigned j, const char *why)
{
	refuse(pend[j].fd, &pend[j].cr, why);
	pend[j] = pend[--npend];
}

/* The pending peer that waited longest, of a refused uid only if others; npend if none. */
static unsigned pend_oldest(bool others)
{
	unsigned old = npend;

	for (unsigned j = 0; j < npend; j++)
		if ((!others || !uid_ok(pend[j].cr.uid)) &&
		    (old == npend || pend[j].deadline < pend[old].deadline))
			old = j;
	return old;
}

/* A peer just accepted: its credentials now, its offer once it sends one. */
static void pend_add(int cfd)
{
	struct ucred cr = { 0 };
	socklen_t crl = sizeof(cr);
	unsigned others = 0, j;

	if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0) {
		close(cfd);
		return;
	}
	for (j = 0; j < npend; j++)
		others += !uid_ok(pend[j].cr.uid);
	j = !uid_ok(cr.uid) && others >= POOL_PENDING_OTHERS ? pend_oldest(true) :
	    npend == POOL_PENDING ? pend_oldest(others > 0) : npend;
	if (j < npend)
		pend_drop(j, "no header: too many peers waiting to send theirs");
	pend[npend++] = (struct pend){ .fd = cfd, .cr = cr,
				       .deadline = now_ns() + POOL_JOIN_TIMEOUT_NS };
}

/* Poll entries for the pending peers at pf; how many. */
static unsigned pend_poll(struct pollfd *pf)
{
	for (unsigned j = 0; j < npend; j++)
		pf[j] = (struct pollfd){ .fd = pend[j].fd, .events = POLLIN };
	return npend;
}

/* After the poll (pf, n: pend_poll's entries, before any pend_add): offers that came are
 * taken or refused, peers past their time refused. */
static void pend_serve(const struct pollfd *pf, unsigned n)
{
	int64_t now = now_ns();

	for (unsigned k = 0; k < n; k++) {
		unsigned j;

		for (j = 0; j < npend && pend[j].fd != pf[k].fd; j++)
			;
		if (j == npend)
			continue;
		if (pf[k].revents && join(pend[j].fd, &pend[j].cr) != -EAGAIN)
			pend[j] = pend[--npend]; /* kept as a donor's socket, or closed */
		else if (now > pend[j].deadline)
			pend_drop(j, "no header: timed out");
	}
}

/* Receive the header and exactly one descriptor, without waiting: 0, -EAGAIN (nothing
 * yet), or -EINVAL with a reason in why. */
static int recv_offer(int cfd, struct donor_hdr *hdr, int *fd, char *why, size_t wl)
{
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} u;
	struct iovec iov = { .iov_base = hdr, .iov_len = sizeof(*hdr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof(u.buf) };
	int nfds, fds[4];
	ssize_t n;

	*fd = -1;
	n = recvmsg(cfd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return -EAGAIN;
	if (n < 0) {
		snprintf(why, wl, "no header: %s", strerror(errno));
		return -EINVAL;
	}
	nfds = hfs_msg_fds(&mh, fds, 4); /* only now: the buffer is what came */
	if (donor_offer_parse(hdr, (size_t)n, mh.msg_flags, nfds, hdr, why, wl)) {
		hfs_msg_close(fds, nfds);
		return -EINVAL;
	}
	*fd = fds[0];
	return 0;
}

/* May peer cr lend hdr->size bytes in memfd fd (sealed by donor_memfd_check first)?  0,
 * or -1 with why. */
static int check_offer(const struct ucred *cr, const struct donor_hdr *hdr, int fd, char *why,
		       size_t wl)
{
	char sz[CONF_SIZE_BUF], sz2[CONF_SIZE_BUF];

	if (!uid_ok(cr->uid)) {
		snprintf(why, wl, "uid %u is neither the mount's uid %u nor root",
			 (unsigned)cr->uid, (unsigned)getuid());
		return -1;
	}
	if (donor_size_check(hdr, pool.chunk, pool.ds)) {
		snprintf(why, wl, "size %llu is not a multiple of %s up to donor_size %s",
			 (unsigned long long)hdr->size, conf_format_size(pool.chunk, sz),
			 conf_format_size(pool.ds, sz2));
		return -1;
	}
	return donor_memfd_check(fd, hdr->size, why, wl) ? -1 : 0;
}

/* The slot for donor cr lending size bytes: the one we started it for, else the first
 * free slot large enough; 0: none.  pool.lock. */
static unsigned __slot_for(const struct ucred *cr, uint64_t size)
{
	unsigned k;

	for (k = 1; k <= pool.nslots; k++)
		if (pool.s[k].state == S_STARTING && pool.s[k].pid == cr->pid)
			break;
	if (k > pool.nslots)
		for (k = 1; k <= pool.nslots; k++)
			if (pool.s[k].state == S_FREE && slot_range(k) >= size)
				break;
	return k <= pool.nslots && slot_range(k) >= size ? k : 0;
}

/* Slot k's memory is now memfd fd of size bytes from donor cr on connection cfd: its
 * blocks go into the heap.  pool.lock. */
static void __activate(unsigned k, const struct ucred *cr, int cfd, int fd, uint64_t size)
{
	msrc_donor_add(pool.src, k, fd, size, false);
	unclaim(slot_off(k), size);
	buddy_drain(pool.h->b); /* the donor's chunks coalesce into large blocks */
	pool.s[k] = (struct slot){ .state = S_ACTIVE, .pid = cr->pid, .conn = cfd, .len = size,
				   .spawned = pool.s[k].state == S_STARTING, .since = now_ns() };
	pthread_cond_broadcast(&pool.changed);
}

/* A pending peer (pend_*) that spoke: its offer, taken or refused; -EAGAIN: nothing yet. */
static int join(int cfd, const struct ucred *pcr)
{
	struct ucred cr = *pcr;
	struct donor_hdr hdr;
	char why[200], sz[CONF_SIZE_BUF];
	char ok = DONOR_ACCEPT;
	unsigned k;
	int fd, ret;

	/* the offer is read even from a peer about to be refused: closing a socket with
	 * unread data would reset it, and the peer would never read why */
	ret = recv_offer(cfd, &hdr, &fd, why, sizeof(why));
	if (ret == -EAGAIN)
		return ret;
	if (ret) {
		refuse(cfd, &cr, why);
		return 0;
	}
	if (check_offer(&cr, &hdr, fd, why, sizeof(why)))
		goto refuse_fd;
	pthread_mutex_lock(&pool.lock);
	k = __slot_for(&cr, hdr.size);
	if (!k) {
		pthread_mutex_unlock(&pool.lock);
		snprintf(why, sizeof(why), "the pool is full (%u donors of %s)", pool.nslots,
			 conf_format_size(pool.ds, sz));
		goto refuse_fd;
	}
	__activate(k, &cr, cfd, fd, hdr.size);
	pthread_mutex_unlock(&pool.lock);
	send(cfd, &ok, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	return 0;

refuse_fd:
	close(fd);
	refuse(cfd, &cr, why);
	return 0;
}

/* A donor's socket closed or spoke: it died (its memory stays: we hold the memfd), or it
 * left after a release.  pool.lock. */
static void __hangup(unsigned k)
{
	char buf[16];

	if (recv(pool.s[k].conn, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		return; /* a donor has nothing to say: ignored */
	close(pool.s[k].conn);
	pool.s[k].conn = -1;
	if (pool.s[k].state == S_RELEASING)
		pool.s[k] = (struct slot){ .state = S_FREE, .conn = -1 };
	else
		pool.s[k].state = S_GONE;
	pthread_cond_broadcast(&pool.changed);
}

/* Donors whose memory is entirely free again leave (claimed back first).  pool.lock. */
static void __release_idle(void)
{
	int64_t now = now_ns();

	bool drained = false;

	if (pool.growers || now - atomic_load(&pool.last_grow) < POOL_QUIET_NS)
		return;
	if (atomic_exchange(&pool.h->freed, 0)) {
		buddy_drain(pool.h->b);
		drained = true;
	}
	for (unsigned k = pool.nslots; k >= 1; k--) {
		struct slot *s = &pool.s[k];

		if (s->state != S_ACTIVE && s->state != S_GONE)
			continue;
		if (used_in(slot_off(k), s->len)) {
			s->used_once = true;
			continue;
		}
		if (!s->used_once && !(s->spawned && now - s->since > DONOR_IDLE_NS))
			continue;
		if (!drained) /* blocks parked in per-CPU caches cannot be claimed */
			buddy_drain(pool.h->b);
		drained = true;
		if (claim(slot_off(k), s->len))
			continue;
		msrc_donor_remove(pool.src, k);
		if (s->state == S_ACTIVE) {
			char r = DONOR_RELEASE;

			send(s->conn, &r, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			s->state = S_RELEASING; /* free once its socket closes */
		} else {
			*s = (struct slot){ .state = S_FREE, .conn = -1 };
		}
		pthread_cond_broadcast(&pool.changed);
	}
}

static void *pool_thread(void *arg)
{
	struct pollfd pf[2 + 1024 + POOL_PENDING];
	unsigned idx[2 + 1024];

	(void)arg;
	for (;;) {
		unsigned n = 2, np;
		int r;

		pf[0] = (struct pollfd){ .fd = pool.stopfd, .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = pool.lfd, .events = POLLIN };
		pthread_mutex_lock(&pool.lock);
		for (unsigned k = 1; k <= pool.nslots && n < 2 + 1024; k++) {
			if (pool.s[k].conn < 0)
				continue;
			idx[n] = k;
			pf[n++] = (struct pollfd){ .fd = pool.s[k].conn, .events = POLLIN };
		}
		pthread_mutex_unlock(&pool.lock);
		np = pend_poll(pf + n);
		r = poll(pf, n + np, POOL_TICK_MS);
		if (r < 0 && errno != EINTR)
			break;
		if (pf[0].revents)
			break;
		pend_serve(pf + n, r < 0 ? 0 : np);
		if (r > 0 && (pf[1].revents & POLLIN)) {
			int cfd = accept4(pool.lfd, NULL, NULL, SOCK_CLOEXEC);

			if (cfd >= 0)
				pend_add(cfd);
		}
		pthread_mutex_lock(&pool.lock);
		for (unsigned j = 2; r > 0 && j < n; j++)
			if (pf[j].revents && pool.s[idx[j]].conn == pf[j].fd)
				__hangup(idx[j]);
		__reap();
		__release_idle();
		pthread_mutex_unlock(&pool.lock);
	}
	return NULL;
}

/* A listening socket bound to path: its fd, or -errno. */
static int listen_on(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ret;

	if (fd < 0)
		return -errno;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

/* Listen on path: a path that exists and is not a socket is -EEXIST; a socket someone
 * listens on is -EADDRINUSE (theirs); a socket nobody listens on is stale (a daemon that
 * was killed) and replaced.  The listening fd, or -errno. */
static int sock_claim(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST;
		/* non-blocking: a live daemon whose backlog is full (its pool thread busy or
		 * stuck) must not hold this mount's start forever; EAGAIN says it lives */
		fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EAGAIN) {
			close(fd);
			return -EADDRINUSE;
		}
		close(fd);
		unlink(path);
	}
	return listen_on(path);
}

/* Make the directory path is in (/run/heapfs: the default's); failure shows at bind. */
static void make_parent(const char *path)
{
	char dir[sizeof(pool.path)], *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = 0;
		mkdir(dir, 0755);
	}
}

/* pool.path may not be created by this user (err; the default is root's /run/heapfs), or
 * it and PATH.PID are taken: claim a path of the user's own, so the mount still works
 * (.heapfs/donors names it).
 * The socket, or -errno. */
static int claim_own(int err)
{
	const char *rt = getenv("XDG_RUNTIME_DIR");
	char want[sizeof(pool.path)];
	int n;

	if (rt && *rt)
		n = snprintf(want, sizeof(want), "%s/heapfs-pool.%d.sock", rt, (int)getpid());
	else
		n = snprintf(want, sizeof(want), "/tmp/heapfs-pool.%u.%d.sock",
			     (unsigned)getuid(), (int)getpid());
	if (n >= (int)sizeof(want))
		return err;
	hfs_log(HFS_LOG_NOTICE, "pool: cannot create %s (%s); using %s", pool.path,
		strerror(-err), want);
	memcpy(pool.path, want, sizeof(pool.path));
	return sock_claim(pool.path);
}

/* Bind the pool socket.  A configured path that exists and is not a socket is an error
 * (exit 2); a stale socket is replaced; one another mount serves stays theirs and this
 * mount uses PATH.PID (.heapfs/donors names it); a path this user may not create falls
 * back to one of the user's own. */
static int sock_open(const char *want)
{
	struct stat st;
	int fd;

	snprintf(pool.path, sizeof(pool.path), "%s", want);
	make_parent(want);
	fd = sock_claim(pool.path);
	if (fd == -EEXIST) {
		hfs_log(HFS_LOG_ERR, "pool: socket %s exists and is not a socket", want);
		return fd;
	}
	if (fd == -EADDRINUSE) {
		if (snprintf(pool.path, sizeof(pool.path), "%s.%d", want, (int)getpid()) >=
		    (int)sizeof(pool.path)) {
			hfs_log(HFS_LOG_ERR, "pool: socket %s is in use and %s.PID is too long",
				want, want);
			return -ENAMETOOLONG;
		}
		hfs_log(HFS_LOG_NOTICE, "pool: socket %s is in use by another mount; using %s",
			want, pool.path);
		fd = sock_claim(pool.path);
	}
	/* a user who may not create it (the default is root's /run/heapfs), or PATH.PID
	 * taken too (a stale one of a dead daemon that had our pid, which this user may not
	 * remove): a path of this user's own */
	if (fd == -EACCES || fd == -EPERM || fd == -EROFS || fd == -ENOENT ||
	    fd == -EADDRINUSE)
		fd = claim_own(fd);
	if (fd < 0) {
		hfs_log(HFS_LOG_ERR, "pool: cannot listen on %s: %s", pool.path,
			strerror(-fd));
		return fd;
	}
	/* connectable by anyone: SO_PEERCRED, not a permission error, refuses others */
	chmod(pool.path, 0666);
	if (stat(pool.path, &st) == 0)
		pool.sock_ino = st.st_ino;
	pool.lfd = fd;
	return 0;
}

/* heapfs-donor: $HEAPFS_DONOR, else next to this executable (installed, or build tree). */
static void find_donor_exe(void)
{
	static const char *const rel[] = { "heapfs-donor", "donor/heapfs-donor" };
	const char *env = getenv("HEAPFS_DONOR");
	char self[PATH_MAX], *slash;
	ssize_t n;

	if (env && *env) {
		snprintf(pool.exe, sizeof(pool.exe), "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return;
	self[n] = 0;
	slash = strrchr(self, '/');
	if (!slash)
		return;
	*slash = 0;
	for (size_t k = 0; k < sizeof(rel) / sizeof(rel[0]); k++) {
		if (snprintf(pool.exe, sizeof(pool.exe), "%.*s/%s", PATH_MAX - 32, self, rel[k]) <
		    (int)sizeof(pool.exe) && access(pool.exe, X_OK) == 0)
			return;
	}
	pool.exe[0] = 0;
	hfs_log(HFS_LOG_WARNING, "pool: no heapfs-donor next to %s: the pool holds only the "
		"daemon's own memory and external donors", self);
}

static uint64_t pow2_up(uint64_t v)
{
	return v <= 1 ? 1 : 1ull << (64 - __builtin_clzll(v - 1));
}

int hfs_pool_start(void)
{
	const struct conf_pool *c = &hfs.conf->pool;
	struct conf_heap pol = { .min_block = POOL_MIN_BLOCK, .layout = CONF_LAYOUT_EXTENTS,
				 .cache = CONF_CACHE_AUTO, .writers = CONF_WRITERS_MANY };
	int ret, ownfd = -1;

	pool.size = pow2_up(c->size < (1ull << POOL_CHUNK_ORDER) ? 1ull << POOL_CHUNK_ORDER
								   : c->size);
	pool.chunk = 1ull << POOL_CHUNK_ORDER;
	pool.own = (c->max_process_memory < pool.size ? c->max_process_memory : pool.size) &
		   ~(pool.chunk - 1);
	pool.ds = (c->donor_size + pool.chunk - 1) & ~(pool.chunk - 1);
	/* no pool section: no socket and no donors; pool/ holds the daemon's own share */
	pool.nslots = c->configured ? c->max_donors : 0;
	if ((pool.size - pool.own + pool.ds - 1) / pool.ds < pool.nslots)
		pool.nslots = (unsigned)((pool.size - pool.own + pool.ds - 1) / pool.ds);
	pool.s = calloc((size_t)pool.nslots + 1, sizeof(*pool.s));
	if (!pool.s)
		return -ENOMEM;
	for (unsigned k = 0; k <= pool.nslots; k++)
		pool.s[k].conn = -1;
	pthread_cond_init(&pool.changed, NULL);
	ret = msrc_donor_open(pool.size, pool.own, pool.ds, pool.nslots, pool.own, &pool.src);
	if (ret)
		goto fail;
	if (pool.own) { /* the daemon's own share: a memfd it fills on demand */
		ownfd = memfd_create("heapfs-pool", MFD_CLOEXEC);
		if (ownfd < 0 || ftruncate(ownfd, (off_t)pool.own) < 0) {
			ret = -errno;
			goto fail;
		}
		msrc_donor_add(pool.src, 0, ownfd, pool.own, true);
		ownfd = -1;
	}
	pol.size = pool.size;
	pol.chunk = pool.chunk;
	snprintf(pol.name, sizeof(pol.name), "pool");
	ret = hfs_heap_new_src(&pol, pool.src, &pool.h);
	if (ret)
		goto fail;
	if (pool.own < pool.size && (ret = claim(pool.own, pool.size - pool.own)))
		goto fail;
	pool.h->ops = &pool_ops;
	ret = c->configured ? sock_open(c->socket) : 0;
	if (ret)
		goto fail;
	find_donor_exe();
	return 0;

fail:
	if (ownfd >= 0)
		close(ownfd);
	hfs_log(HFS_LOG_ERR, "pool: %s", strerror(-ret));
	return ret;
}

int hfs_pool_run(void)
{
	int ret;

	pool.stopfd = eventfd(0, EFD_CLOEXEC);
	if (pool.stopfd < 0)
		return -errno;
	ret = -pthread_create(&pool.thread, NULL, pool_thread, NULL);
	pool.running = !ret;
	return ret;
}

void hfs_pool_stop(void)
{
	struct stat st;
	uint64_t one = 1;
	int64_t until;

	if (!pool.s)
		return;
	if (pool.running) {
		if (write(pool.stopfd, &one, sizeof(one)) < 0)
			hfs_log(HFS_LOG_ERR, "pool: eventfd: %s", strerror(errno));
		pthread_join(pool.thread, NULL);
		pool.running = false;
	}
	while (npend) /* the socket thread is gone: its peers waiting to send an offer */
		close(pend[--npend].fd);
	/* release every donor: tell it, close its socket (EOF for a donor that missed it) */
	pthread_mutex_lock(&pool.lock);
	for (unsigned k = 1; k <= pool.nslots; k++) {
		if (pool.s[k].conn >= 0) {
			char r = DONOR_RELEASE;

			send(pool.s[k].conn, &r, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(pool.s[k].conn);
		}
		if (pool.s[k].state == S_STARTING)
			kill(pool.s[k].pid, SIGTERM);
		pool.s[k] = (struct slot){ .state = S_FREE, .conn = -1 };
	}
	until = now_ns() + 2000000000ll;
	while (pool.nzombies && now_ns() < until) {
		__reap();
		if (pool.nzombies)
			usleep(10000);
	}
	for (unsigned z = 0; z < pool.nzombies; z++) { /* a donor that does not listen */
		kill(pool.zombies[z], SIGKILL);
		waitpid(pool.zombies[z], NULL, 0);
	}
	pool.nzombies = 0;
	pthread_mutex_unlock(&pool.lock);
	if (pool.lfd >= 0) {
		close(pool.lfd);
		/* unlink only the socket we made (another mount may have replaced it) */
		if (stat(pool.path, &st) == 0 && st.st_ino == pool.sock_ino)
			unlink(pool.path);
		pool.lfd = -1;
	}
	if (pool.stopfd >= 0)
		close(pool.stopfd);
	pool.stopfd = -1;
	/* the heap and its source live until the process ends: open files may still hold
	 * blocks (their memory is the daemon's own and the donors' descriptors) */
}

/* .heapfs/donors: {"socket", "size", "process_memory", "process_used", "donor_size",
 * "max_donors", "donors": [{"pid", "size", "used", "state", "external", "offset"}]} */
static json_t *donors_json(void)
{
	json_t *donors = json_array(), *j;
	uint64_t own_used;

	if (!pool.s)
		return json_pack("{s:s?, s:o}", "socket", hfs.conf->pool.socket, "donors", donors);
	buddy_drain(pool.h->b);
	pthread_mutex_lock(&pool.lock);
	own_used = pool.own ? used_in(0, pool.own) : 0;
	for (unsigned k = 1; k <= pool.nslots; k++) {
		struct slot *s = &pool.s[k];
		uint64_t used = 0;

		if (s->state == S_FREE)
			continue;
		if (s->state == S_ACTIVE || s->state == S_GONE)
			used = used_in(slot_off(k), s->len);
		if (used) /* seen in use: may be released once free again */
			s->used_once = true;
		json_array_append_new(donors, json_pack("{s:i, s:I, s:I, s:s, s:b, s:I}",
			"pid", (int)s->pid, "size", (json_int_t)s->len, "used", (json_int_t)used,
			"state", state_name[s->state], "external", !s->spawned,
			"offset", (json_int_t)slot_off(k)));
	}
	pthread_mutex_unlock(&pool.lock);
	j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:i, s:o}", "socket", pool.path,
		      "size", (json_int_t)pool.size, "process_memory", (json_int_t)pool.own,
		      "process_used", (json_int_t)own_used, "donor_size", (json_int_t)pool.ds,
		      "max_donors", (int)pool.nslots, "donors", donors);
	return j;
}
