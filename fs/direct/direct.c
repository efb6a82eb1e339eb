/*
 * direct.c — libheapfs's daemon side: the client socket and the leases of direct_map heaps.
 *
 * What: a heap with direct_map = true keeps its buddy metadata (and so its chunk
 * descriptor table, with the generations) in a memfd and its data in a memfd
 * (BUDDY_F_MEMFD; that memory is the core's, fs/core/dm.c).  A client process connects
 * to the client socket (its path is "client_socket" in .heapfs/stats), passes an open
 * file of this mount with SCM_RIGHTS and asks to map a range of it; the daemon answers
 * with the range's extents in the heap and, once per connection and heap (the
 * registration), the two memfds: the data to map read-write, the metadata to map
 * read-only and read the chunk generations from.  The protocol is in
 * fs/client/proto_i.h.
 *
 * How the proof is checked: fstat of the received descriptor gives st_dev, which must be
 * the mount's (stat of the mountpoint, whose inode must be the FUSE root, taken by the
 * server thread once the session runs), and st_ino, which is our inode number (the kernel
 * holds the inode while the descriptor is open, so the number cannot be reused meanwhile);
 * fcntl(F_GETFL) gives the access mode (O_PATH proves nothing; a read-only descriptor maps
 * for reading only; a write-only one not at all, as for mmap).
 *
 * Leases (proto_i.h): a map makes a lease on the range — a word in a table shared with
 * that client, (tag << 32) | count of the client's mappings of it — so the client maps
 * the same range again and releases it with an atomic add, no message.  A lease counts as
 * an open of the file (an unlink frees the blocks only when the last lease goes: file.c's
 * unlinked-but-open rule) and holds an inode reference; file.maps counts the file's live
 * leases.  A truncate that shrinks the file or a growth that would move a contiguous
 * file's block asks busy() (the heap op of every direct_map heap): idle leases (count 0)
 * are revoked there (CAS to REVOKED, so a client's concurrent map either wins, and the
 * change gets EBUSY, or sees REVOKED and asks again), mapped ones make it EBUSY.  So
 * mapped blocks neither move nor go back to the OS.  The server thread drops revoked
 * leases and revokes idle leases of unlinked files every SWEEP_MS and after each request;
 * a connection that closes (the client exited or was killed) drops all its leases and
 * registrations.
 *
 * What is shared and sealed: the metadata memfd is sealed against writing (dm.c), the data
 * and lease table memfds against size changes (a shrink under our mapping is a SIGBUS).
 * The lease words are the client's to write, so nothing read from them is trusted: the
 * daemon only CASes a word from the exact value it expects (__revoke), stores whole words,
 * and reports the count in the status; indexes and tags come from its own table.
 *
 * Connections: at most MAX_CONNS, MAX_CONNS_UID of one uid; a connection that has not
 * asked anything within FIRST_REQ_NS is closed, and when there is no room the silent one
 * that waited longest makes room, so idle connections cannot keep a client out.
 *
 * Threads and locking: one server thread polls the listening socket and every connection
 * and is the only one that adds or removes connections and leases; clients.lock guards the
 * connection list, the lease tables' pointers and `revoked`, and is taken after an inode
 * lock, never before.  A map takes the inode's lock to copy the extents and pin; the
 * written-range accounting takes it as a write does.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "chunk.h"
#include "client/msg_i.h"
#include "client/proto_i.h"
#include "direct.h"
#include "objects.h"

#define MAX_CONNS 256
#define MAX_CONNS_UID 192 /* one uid's share: the rest stays for other users */
#define FIRST_REQ_NS (2ll * 1000000000) /* a connection that asked nothing by then goes */
#define SWEEP_MS 100 /* idle leases of unlinked files go within this */
#define PAGE 4096u

/* A lease: a range of one file the client may map without asking (proto_i.h). */
struct cl_map {
	uint32_t idx, tag;
	struct hfs_inode *i; /* holds an inode reference and counts as an open of it */
	uint64_t off, len;
	bool write;
	bool revoked; /* clients.lock: the word says REVOKED; file.maps no longer counts it */
};

struct cl_reg {
	struct cl_reg *next;
	struct hfs_heap *h; /* holds a heap reference */
};

struct cl_conn {
	struct cl_conn *next;
	int sock;
	pid_t pid;
	uid_t uid;
	int64_t since;                /* accepted (monotonic ns) */
	bool asked;                   /* a well-formed request came */
	uint32_t nleases;
	int lease_fd;                 /* the lease table memfd, -1 until the first map */
	bool lease_sent;
	_Atomic uint64_t *word;       /* HFS_CL_MAX_LEASES words, shared with the client */
	struct cl_map **lease;        /* by index; clients.lock for additions and removals */
	uint32_t *tag;                /* next tag per index */
	struct cl_reg *regs;
};

static struct {
	int lsock, stop[2];
	bool running;
	pthread_t thr;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev;
	bool dev_ok;
	pthread_mutex_t lock; /* conns, their leases and counters; after any inode lock */
	struct cl_conn *conns;
	unsigned nconns;
} clients = { .lsock = -1, .stop = { -1, -1 }, .lock = PTHREAD_MUTEX_INITIALIZER };



/* --- the written-range accounting --- */

void hfs_client_range_written(struct hfs_inode *i, uint64_t off, uint64_t len,
			      struct hfs_completion *done)
{
	hfs_change_lock(i);
	hfs_now(&i->mtime);
	i->ctime = i->mtime;
	if (hfs_observed(i->heap)) /* the core's change seam: the range written */
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_RANGE, .heap = i->heap,
						    .done = done,
						    .write = { .i = i, .off = off, .len = len } });
	hfs_change_unlock(i, true);
	hfs_kcache_range(i->ino, (int64_t)off, (int64_t)len);
}

/* --- requests --- */

static int send_rep(struct cl_conn *c, struct hfs_cl_rep *rep, size_t len, const int *fds,
		    unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = rep, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;

	rep->magic = HFS_CL_MAGIC;
	rep->nfds = nfds;
	if (nfds) {
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	/* never wait for a client that does not read: it loses its connection */
	return sendmsg(c->sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)len ? 0 : -EIO;
}

static int send_err(struct cl_conn *c, int err)
{
	struct hfs_cl_rep rep = { .err = err };

	return send_rep(c, &rep, sizeof(rep), NULL, 0);
}

/* Is fd an open regular file of this mount, and which inode? */
static int check_fd(int fd, bool write, struct hfs_inode **out)
{
	struct hfs_inode *i;
	struct stat st;
	int fl;

	if (!clients.dev_ok)
		return -EAGAIN;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fstat(fd, &st) < 0)
		return -EBADF;
	if (fl & O_PATH)
		return -EBADF; /* opens nothing: proves no access */
	if (st.st_dev != clients.dev)
		return -EXDEV; /* not a file of this mount */
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if ((fl & O_ACCMODE) == O_WRONLY || (write && (fl & O_ACCMODE) == O_RDONLY))
		return -EACCES; /* as mmap(MAP_SHARED): readable always, writable to write */
	/* the descriptor is open on it: the kernel holds the inode, its number is not reused.
	 * hfs.ns orders us after the create that made it (the kernel does for FUSE threads;
	 * our request came another way) */
	pthread_rwlock_rdlock(&hfs.ns);
	i = hfs_iget((hfs_ino_t)st.st_ino);
	fl = !i || i->kind != HFS_REG || !i->heap ? -EINVAL :
	     !i->heap->dm ? -EPERM : 0; /* the heap's policy: direct_map = false */
	pthread_rwlock_unlock(&hfs.ns);
	*out = i;
	return fl;
}

/* Extents of [off, off + len) of i, adjacent blocks merged; i->lock held.  Interior joins
 * must fall on page boundaries, or the client could not map the pieces side by side.  A
 * hole in the range (no block holds it: extents layout) is refused with ENODATA: a client
 * stores through its mapping without the daemon seeing it, so nothing could give the hole
 * a block then; the client writes or fallocates the range first (README, heapfs.h). */
static int __extents(struct hfs_inode *i, uint64_t off, uint64_t len, struct hfs_cl_ext *x,
		     uint32_t *nx)
{
	uint64_t end = off + len;
	uint32_t n = 0;

	for (size_t k = 0; k < i->file.n && off < end; k++) {
		const struct hfs_ext *e = &i->file.ext[k];
		uint64_t eend = e->foff + (1ull << e->order), from, to;

		if (eend <= off)
			continue;
		if (e->foff > off)
			return -ENODATA; /* a hole */
		from = off;
		to = eend < end ? eend : end;
		if (n && x[n - 1].hoff + x[n - 1].len == e->hoff + (from - e->foff)) {
			x[n - 1].len += to - from;
		} else {
			if (n == HFS_CL_MAX_EXT)
				return -E2BIG;
			if (n && ((x[n - 1].hoff + x[n - 1].len) % PAGE ||
				  (e->hoff + (from - e->foff)) % PAGE))
				return -EINVAL; /* blocks smaller than a page, scattered */
			x[n++] = (struct hfs_cl_ext){ .hoff = e->hoff + (from - e->foff),
						      .foff = from, .len = to - from };
		}
		off = to;
	}
	*nx = n;
	return off < end ? -ENODATA : 0; /* a hole up to the end (the size was checked) */
}

static struct cl_reg *find_reg(struct cl_conn *c, struct hfs_heap *h)
{
	for (struct cl_reg *r = c->regs; r; r = r->next)
		if (r->h == h)
			return r;
	return NULL;
}

/* The heap's registration: geometry into rep, its two memfds into fds. */
static void geometry(struct hfs_heap *h, struct hfs_cl_rep *rep, int fds[2])
{
	rep->heap_key = h->dm->key;
	rep->heap_size = 1ull << buddy_heap_order(h->b);
	rep->meta_size = h->dm->meta_size;
	rep->gen_off = h->dm->gen_off;
	rep->gen_stride = h->dm->gen_stride;
	rep->nchunks = chunk_count(h->b);
	rep->chunk_order = chunk_order(h->b);
	rep->seq_off = h->dm->seq_off;
	fds[0] = buddy_data_fd(h->b);
	fds[1] = h->dm->meta_fd;
}

/* Remember that c has h's descriptors (a heap reference); clients.lock not held. */
static int add_reg(struct cl_conn *c, struct hfs_heap *h)
{
	struct cl_reg *reg;

	if (find_reg(c, h))
		return 0;
	reg = calloc(1, sizeof(*reg));
	if (!reg)
		return -ENOMEM;
	hfs_heap_get(h);
	reg->h = h;
	pthread_mutex_lock(&clients.lock);
	reg->next = c->regs;
	c->regs = reg;
	pthread_mutex_unlock(&clients.lock);
	return 0;
}

/* The object segment's registration; fd must be the directory objects/ of this mount. */
static int do_segment(struct cl_conn *c, const struct hfs_cl_req *q, int fd)
{
	struct hfs_heap *h = hfs_objects_heap();
	struct hfs_cl_rep rep = { 0 };
	struct stat st;
	int ret, fds[2];

	(void)q;
	ret = !clients.dev_ok ? -EAGAIN : fstat(fd, &st) < 0 || (fcntl(fd, F_GETFL) & O_PATH) ? -EBADF :
	      st.st_dev != clients.dev ? -EXDEV :
	      st.st_ino != hfs.objects->ino ? -ENOTDIR : !h || !h->dm ? -EPERM : 0;
	close(fd);
	if (!ret)
		ret = add_reg(c, h);
	if (ret)
		return send_err(c, ret);
	geometry(h, &rep, fds);
	return send_rep(c, &rep, sizeof(rep), fds, 2);
}

/* The lease table of c, made at its first map. */
static int lease_table(struct cl_conn *c)
{
	size_t sz = HFS_CL_MAX_LEASES * sizeof(uint64_t);
	void *p;

	if (c->word)
		return 0;
	c->lease = calloc(HFS_CL_MAX_LEASES, sizeof(*c->lease));
	c->tag = calloc(HFS_CL_MAX_LEASES, sizeof(*c->tag));
	if (!c->lease || !c->tag)
		return -ENOMEM;
	c->lease_fd = memfd_create("heapfs-leases", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->lease_fd < 0)
		return -errno;
	/* the client writes the words (its counts: they cannot be sealed against writing),
	 * but may not change the table's size under our mapping (SIGBUS) nor seal it */
	if (ftruncate(c->lease_fd, (off_t)sz) < 0 ||
	    fcntl(c->lease_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return -errno;
	p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, c->lease_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	c->word = p;
	return 0;
}

static int lease_index(struct cl_conn *c)
{
	for (uint32_t k = 0; k < HFS_CL_MAX_LEASES; k++)
		if (!c->lease[k])
			return (int)k;
	return -EMFILE;
}

/* Pin i for a new lease (i->lock held for writing): an open of the file (an unlinked
 * file's blocks wait for the last), a reference, and file.maps. */
static void __pin(struct hfs_inode *i)
{
	i->file.opens++;
	hfs_iref(i, 1);
	atomic_fetch_add(&i->file.maps, 1);
}

/* What a map request q with fd asks for: the file (*out) and a free lease index of c (the
 * lease table made at c's first map); or -errno. */
static int map_target(struct cl_conn *c, const struct hfs_cl_req *q, int fd,
		      struct hfs_inode **out)
{
	int ret = check_fd(fd, q->flags & HFS_CL_WRITE, out);

	/* a mirror's memory is the applier's: a client reads it, never writes */
	if (!ret && (q->flags & HFS_CL_WRITE))
		ret = hfs_writable((*out)->heap, NULL);
	if (!ret)
		ret = lease_table(c);
	if (ret)
		return ret;
	ret = hfs_cl_range_check(q, UINT64_MAX); /* the request alone: not empty, no wrap */
	return ret ? ret : lease_index(c);
}

/* The extents of the range q asks for of i into rep (*nx of them, and the file's size),
 * i pinned for the new lease; or -errno, nothing pinned. */
static int pin_range(struct hfs_inode *i, const struct hfs_cl_req *q, struct hfs_cl_rep *rep,
		     uint32_t *nx)
{
	int ret;

	pthread_rwlock_wrlock(&i->lock);
	ret = hfs_cl_range_check(q, i->size);
	if (!ret)
		ret = __extents(i, q->off, q->len, rep->ext, nx);
	if (!ret)
		__pin(i);
	rep->size = i->size;
	pthread_rwlock_unlock(&i->lock);
	return ret;
}

/* Lease m of c is granted, mapped once (the client's word: its tag, count 1): rep names
 * it and the heap's geometry, fds the descriptors the client still lacks (the heap's when
 * sendheap, the lease table's the first time).  How many fds. */
static unsigned grant(struct cl_conn *c, struct cl_map *m, bool sendheap,
		      struct hfs_cl_rep *rep, int fds[3])
{
	unsigned nfds = 0;

	atomic_store(&c->word[m->idx], ((uint64_t)m->tag << 32) | 1);
	rep->id = m->idx;
	rep->tag = m->tag;
	geometry(m->i->heap, rep, fds);
	if (sendheap) {
		rep->fdmask |= HFS_CL_FD_HEAP;
		nfds = 2;
	}
	if (!c->lease_sent) {
		rep->fdmask |= HFS_CL_FD_LEASES;
		fds[nfds++] = c->lease_fd;
	}
	pthread_mutex_lock(&clients.lock);
	c->lease[m->idx] = m;
	c->nleases++;
	pthread_mutex_unlock(&clients.lock);
	return nfds;
}

static int do_map(struct cl_conn *c, const struct hfs_cl_req *q, int fd)
{
	size_t replen = sizeof(struct hfs_cl_rep) + HFS_CL_MAX_EXT * sizeof(struct hfs_cl_ext);
	struct hfs_cl_rep *rep = calloc(1, replen);
	struct cl_map *m = calloc(1, sizeof(*m));
	struct hfs_inode *i;
	unsigned nfds;
	bool sendheap;
	uint32_t nx = 0;
	int ret, fds[3];

	ret = -ENOMEM;
	if (!rep || !m)
		goto fail;
	ret = map_target(c, q, fd, &i);
	if (ret < 0)
		goto fail;
	*m = (struct cl_map){ .idx = (uint32_t)ret, .tag = c->tag[ret], .i = i, .off = q->off,
			      .len = q->len, .write = q->flags & HFS_CL_WRITE };
	sendheap = !find_reg(c, i->heap) || (q->flags & HFS_CL_RESEND);
	ret = add_reg(c, i->heap);
	if (!ret)
		ret = pin_range(i, q, rep, &nx);
	if (ret)
		goto fail;
	close(fd); /* the lease holds the file now */
	rep->next = nx;
	nfds = grant(c, m, sendheap, rep, fds);
	ret = send_rep(c, rep, sizeof(*rep) + nx * sizeof(rep->ext[0]), fds, nfds);
	if (!ret)
		c->lease_sent = true;
	free(rep);
	return ret; /* a failed send: the connection goes, and the lease with it */
fail:
	free(m);
	free(rep);
	close(fd);
	return send_err(c, ret);
}

/* Revoke lease m if idle: clients.lock and m->i->lock held.  true if revoked (or was). */
static bool __revoke(struct cl_conn *c, struct cl_map *m)
{
	uint64_t idle = (uint64_t)m->tag << 32;

	if (m->revoked)
		return true;
	if (!atomic_compare_exchange_strong(&c->word[m->idx], &idle, idle | HFS_CL_REVOKED))
		return false;
	m->revoked = true;
	atomic_fetch_sub(&m->i->file.maps, 1);
	return true;
}

/* Is a range of i mapped by a client now?  Leases of i that no client maps at the moment
 * are revoked on the way (their clients ask again at their next map).  The busy op of
 * every direct_map heap (file.c: a truncate that shrinks, and moving a contiguous file's
 * block, get EBUSY while it is).  i->lock held for writing. */
static bool busy(struct hfs_inode *i)
{
	bool busy = false, any = false;

	if (!atomic_load(&i->file.maps))
		return false;
	pthread_mutex_lock(&clients.lock);
	for (struct cl_conn *c = clients.conns; c; c = c->next)
		for (uint32_t k = 0; c->lease && k < HFS_CL_MAX_LEASES; k++)
			if (c->lease[k] && c->lease[k]->i == i) {
				if (__revoke(c, c->lease[k]))
					any = true;
				else
					busy = true;
			}
	pthread_mutex_unlock(&clients.lock);
	if (any && write(clients.stop[1], "r", 1) < 0) {
		/* never blocks: a full pipe means the server thread has wake-ups to read, and
		 * it sweeps every SWEEP_MS anyway */
	}
	return busy;
}

/* Remove lease idx of c: unpin its file (clients.lock and the inode lock not held). */
static void lease_drop(struct cl_conn *c, uint32_t idx)
{
	struct cl_map *m = c->lease[idx];
	struct hfs_inode *i = m->i;

	pthread_rwlock_wrlock(&i->lock);
	pthread_mutex_lock(&clients.lock);
	if (!m->revoked)
		atomic_fetch_sub(&i->file.maps, 1);
	c->lease[idx] = NULL;
	c->nleases--;
	c->tag[idx] = (c->tag[idx] + 1) & 0x7fffffffu;
	atomic_store(&c->word[idx], ((uint64_t)c->tag[idx] << 32) | HFS_CL_REVOKED);
	pthread_mutex_unlock(&clients.lock);
	pthread_rwlock_unlock(&i->lock);
	hfs_release(i, O_RDONLY); /* the lease's open: may free an unlinked file's blocks */
	hfs_iput(i, 1);
	free(m);
}

/* Drop c's revoked leases, and revoke idle leases of unlinked files (their blocks are to
 * go now, as at the last close).  Server thread. */
static void sweep(struct cl_conn *c)
{
	for (uint32_t k = 0; c->lease && k < HFS_CL_MAX_LEASES; k++) {
		struct cl_map *m = c->lease[k];
		bool gone;

		if (!m)
			continue;
		pthread_rwlock_rdlock(&m->i->lock);
		pthread_mutex_lock(&clients.lock);
		if (!m->i->nlink)
			__revoke(c, m);
		gone = m->revoked;
		pthread_mutex_unlock(&clients.lock);
		pthread_rwlock_unlock(&m->i->lock);
		if (gone)
			lease_drop(c, k);
	}
}

/* The lease a request names, if it is c's and current; NULL otherwise. */
static struct cl_map *lease_of(struct cl_conn *c, const struct hfs_cl_req *q)
{
	struct cl_map *m;

	if (!c->lease || q->id >= HFS_CL_MAX_LEASES)
		return NULL;
	m = c->lease[q->id];
	return m && m->tag == q->tag ? m : NULL;
}

static int do_unmap(struct cl_conn *c, const struct hfs_cl_req *q)
{
	struct cl_map *m = lease_of(c, q);
	bool idle;

	if (!m)
		return send_err(c, -ENOENT);
	pthread_rwlock_wrlock(&m->i->lock);
	pthread_mutex_lock(&clients.lock);
	idle = __revoke(c, m);
	pthread_mutex_unlock(&clients.lock);
	pthread_rwlock_unlock(&m->i->lock);
	if (!idle)
		return send_err(c, -EBUSY);
	lease_drop(c, m->idx);
	return send_err(c, 0);
}

/* The reply to a WRITTEN whose range the partner must have first (replicate = sync),
 * sent from the link's thread once it has: on a descriptor of its own (the connection
 * may be gone by then; the client waits for this reply before its next request). */
static void written_done(void *arg, int err)
{
	struct hfs_cl_rep rep = { .magic = HFS_CL_MAGIC, .err = err };
	int sock = (int)(intptr_t)arg;

	send(sock, &rep, sizeof(rep), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(sock);
}

static int do_written(struct cl_conn *c, const struct hfs_cl_req *q)
{
	struct cl_map *m = lease_of(c, q);
	struct hfs_completion done = { 0 };
	int sock;

	if (!m)
		return send_err(c, -ENOENT);
	if (!m->write)
		return send_err(c, -EBADF); /* a read lease was not written */
	hfs_client_range_written(m->i, m->off, m->len, &done);
	/* sync: the reply waits for the partner, but this thread serves every client */
	sock = done.ops ? fcntl(c->sock, F_DUPFD_CLOEXEC, 0) : -1;
	if (sock >= 0 && hfs_complete_defer(&done, written_done, (void *)(intptr_t)sock))
		return 0;
	if (sock >= 0)
		close(sock);
	return send_err(c, hfs_complete_wait(&done)); /* acknowledged already, or gone */
}

/* A save (heapfsctl save): the snapshot child writes the image straight into the asker's
 * output; this thread waits for it and answers on a descriptor of its own (the server
 * thread serves everyone meanwhile; the asker sends nothing before the reply). */
struct save_job {
	int sock, out;
	pid_t pid;
	off_t start;
};

static void *save_wait(void *arg)
{
	struct save_job *j = arg;
	struct hfs_cl_rep rep = { .magic = HFS_CL_MAGIC };
	off_t end;
	int st;

	while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR)
		;
	rep.err = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
	end = lseek(j->out, 0, SEEK_CUR); /* the child wrote through the same open file */
	rep.size = end > j->start ? (uint64_t)(end - j->start) : 0;
	send(j->sock, &rep, sizeof(rep), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(j->sock);
	close(j->out);
	free(j);
	return NULL;
}

/* The heap whose .heapfs/images/NAME fd names, if c's uid may open that file (0400: its
 * owner, or root): 0 and *h, or -errno. */
static int save_heap_of(struct cl_conn *c, int fd, struct hfs_heap **h)
{
	struct hfs_inode *i;
	struct stat st;
	int ret;

	if (!clients.dev_ok)
		return -EAGAIN;
	if (fstat(fd, &st) < 0)
		return -EBADF;
	if (st.st_dev != clients.dev)
		return -EXDEV;
	pthread_rwlock_rdlock(&hfs.ns);
	i = hfs_iget((hfs_ino_t)st.st_ino);
	ret = !i || i->kind != HFS_STATUS || i->st.what != HFS_ST_IMAGE || !i->st.heap ? -EINVAL :
	      c->uid != 0 && c->uid != i->uid ? -EACCES : 0;
	if (!ret) {
		*h = i->st.heap;
		hfs_heap_get(*h); /* until the fork is done */
	}
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

static int do_save(struct cl_conn *c, int proof, int out)
{
	struct save_job *j = NULL;
	struct hfs_heap *h = NULL;
	pthread_attr_t a;
	pthread_t t;
	int fl, ret;

	ret = save_heap_of(c, proof, &h);
	close(proof);
	fl = fcntl(out, F_GETFL);
	if (!ret && (fl < 0 || fl & O_PATH || (fl & O_ACCMODE) == O_RDONLY))
		ret = -EBADF; /* nothing to write the image into */
	if (!ret && !(j = calloc(1, sizeof(*j))))
		ret = -ENOMEM;
	if (!ret) {
		*j = (struct save_job){ .out = out, .start = lseek(out, 0, SEEK_CUR) };
		j->sock = fcntl(c->sock, F_DUPFD_CLOEXEC, 0);
		ret = j->sock < 0 ? -errno : hfs_image_snapshot_to(h, out, &j->pid);
	}
	if (h)
		hfs_heap_put(h);
	if (!ret) {
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		ret = -pthread_create(&t, &a, save_wait, j);
		pthread_attr_destroy(&a);
		if (!ret)
			return 0;
		save_wait(j); /* no thread: wait here (and answer) */
		return 0;
	}
	if (j && j->sock >= 0)
		close(j->sock);
	free(j);
	close(out);
	return send_err(c, ret);
}

/* One message from c: 0, or -1 when the connection is to go (EOF, error, garbage). */
static int serve(struct cl_conn *c)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct hfs_cl_req q;
	struct iovec iov = { .iov_base = &q, .iov_len = sizeof(q) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	int fds[4], nfds, fd = -1;
	ssize_t n = recvmsg(c->sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	bool garbage;

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n < 0)
		return -1;
	nfds = hfs_msg_fds(&msg, fds, 4); /* an empty message may carry descriptors too */
	if (n == 0) {
		hfs_msg_close(fds, nfds);
		return -1;
	}
	garbage = hfs_cl_req_parse(&q, (size_t)n, msg.msg_flags, nfds, &q) != 0;
	c->asked |= !garbage;
	if (!garbage && q.op == HFS_CL_SAVE) /* parse saw exactly two */
		return do_save(c, fds[0], fds[1]) ? -1 : 0;
	if (!garbage && nfds == 1) {
		fd = fds[0];
		nfds = 0;
	}
	hfs_msg_close(fds, nfds);
	if (garbage) {
		send_err(c, -EBADMSG); /* said why, then hang up: the stream is not ours */
		return -1;
	}
	switch (q.op) {
	case HFS_CL_MAP:
		return do_map(c, &q, fd) ? -1 : 0;
	case HFS_CL_SEGMENT:
		return do_segment(c, &q, fd) ? -1 : 0;
	case HFS_CL_UNMAP:
		return do_unmap(c, &q) ? -1 : 0;
	default:
		return do_written(c, &q) ? -1 : 0;
	}
}

static void conn_close(struct cl_conn *c)
{
	struct cl_conn **pp;
	struct cl_reg *r;

	pthread_mutex_lock(&clients.lock);
	for (pp = &clients.conns; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	clients.nconns--;
	pthread_mutex_unlock(&clients.lock);
	/* the client is gone: nothing maps its leases any more, whatever the words say */
	for (uint32_t k = 0; c->lease && k < HFS_CL_MAX_LEASES; k++)
		if (c->lease[k])
			lease_drop(c, k);
	while ((r = c->regs)) {
		c->regs = r->next;
		hfs_heap_put(r->h);
		free(r);
	}
	if (c->word)
		munmap((void *)c->word, HFS_CL_MAX_LEASES * sizeof(uint64_t));
	if (c->lease_fd >= 0)
		close(c->lease_fd);
	free(c->lease);
	free(c->tag);
	close(c->sock);
	free(c);
}

/* The connection that waited longest without asking anything, of uid only if mine; NULL. */
static struct cl_conn *oldest_silent(uid_t uid, bool mine)
{
	struct cl_conn *old = NULL;

	for (struct cl_conn *c = clients.conns; c; c = c->next)
		if (!c->asked && (!mine || c->uid == uid) && (!old || c->since < old->since))
			old = c;
	return old;
}

/* Room for one more connection of uid: past its share or the total, the silent connection
 * that waited longest goes (a client asks right after connecting; libheapfs connects again
 * when a connection it never used was closed).  0, or -EMFILE.  Server thread. */
static int make_room(uid_t uid)
{
	struct cl_conn *v = NULL;
	unsigned mine = 0;

	for (struct cl_conn *c = clients.conns; c; c = c->next)
		mine += c->uid == uid;
	if (mine >= MAX_CONNS_UID && !(v = oldest_silent(uid, true)))
		return -EMFILE;
	if (!v && clients.nconns >= MAX_CONNS && !(v = oldest_silent(uid, false)))
		return -EMFILE;
	if (v)
		conn_close(v);
	return 0;
}

/* Connections that asked nothing within FIRST_REQ_NS go.  Server thread. */
static void close_silent(void)
{
	int64_t now = hfs_now_ns();
	struct cl_conn *c, *next;

	for (c = clients.conns; c; c = next) {
		next = c->next;
		if (!c->asked && now - c->since > FIRST_REQ_NS)
			conn_close(c);
	}
}

static void accept_one(void)
{
	int s = accept4(clients.lsock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	struct cl_conn *c = NULL;
	struct ucred cr;
	socklen_t crlen = sizeof(cr);

	if (s < 0)
		return;
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 || make_room(cr.uid) ||
	    !(c = calloc(1, sizeof(*c)))) {
		close(s);
		return;
	}
	c->sock = s;
	c->lease_fd = -1;
	c->pid = cr.pid;
	c->uid = cr.uid;
	c->since = hfs_now_ns();
	pthread_mutex_lock(&clients.lock);
	c->next = clients.conns;
	clients.conns = c;
	clients.nconns++;
	pthread_mutex_unlock(&clients.lock);
}

static void *server(void *arg)
{
	struct pollfd pf[MAX_CONNS + 2];
	struct cl_conn *cv[MAX_CONNS];
	struct stat st;

	(void)arg;
	/* the session runs by now (we started after the mount): our own root answers */
	if (stat(hfs.mountpoint, &st) == 0 && st.st_ino == HFS_ROOT_INO) {
		clients.dev = st.st_dev;
		clients.dev_ok = true;
	}
	for (;;) {
		nfds_t n = 2;

		pf[0] = (struct pollfd){ .fd = clients.stop[0], .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = clients.lsock, .events = POLLIN };
		for (struct cl_conn *c = clients.conns; c; c = c->next) { /* only we change the list */
			cv[n - 2] = c;
			pf[n++] = (struct pollfd){ .fd = c->sock, .events = POLLIN };
		}
		if (poll(pf, n, SWEEP_MS) < 0)
			continue;
		if (pf[0].revents) {
			char cmd[64];
			ssize_t got = read(clients.stop[0], cmd, sizeof(cmd));

			if (got > 0 && memchr(cmd, 'x', (size_t)got))
				break; /* else: "r", leases were revoked */
		}
		for (nfds_t k = 2; k < n; k++)
			if (pf[k].revents && serve(cv[k - 2]))
				conn_close(cv[k - 2]);
		for (struct cl_conn *c = clients.conns; c; c = c->next)
			sweep(c);
		close_silent();
		if (pf[1].revents)
			accept_one();
	}
	while (clients.conns)
		conn_close(clients.conns);
	return NULL;
}

static const struct hfs_heap_ops dm_ops = { .busy = busy };
static int stats_add(json_t *o);

void hfs_client_register(void)
{
	static struct hfs_stats_part part = { .at = HFS_STATS_AT_END, .add = stats_add };

	hfs_dm_set_ops(&dm_ops);
	hfs_stats_register(&part);
}

/* The socket is in Linux's abstract namespace ("@name" in .heapfs/stats): nothing is
 * left behind when the daemon is killed, and no file mode is needed, since the
 * descriptor a client passes is the proof, not the right to connect. */
int hfs_client_start(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t salt = 0;
	int ret;

	if (getrandom(&salt, sizeof(salt), GRND_NONBLOCK) < 0)
		salt = (uint64_t)hfs_now_ns();
	snprintf(clients.path, sizeof(clients.path), "@heapfs-client.%d.%016llx", (int)getpid(),
		 (unsigned long long)salt);
	memcpy(sa.sun_path + 1, clients.path + 1, strlen(clients.path) - 1); /* sun_path[0] = 0 */
	clients.lsock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (clients.lsock < 0 ||
	    bind(clients.lsock, (struct sockaddr *)&sa,
		 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(clients.path))) < 0 ||
	    listen(clients.lsock, 64) < 0 || pipe2(clients.stop, O_CLOEXEC | O_NONBLOCK) < 0)
		goto fail;
	ret = pthread_create(&clients.thr, NULL, server, NULL);
	if (ret) {
		errno = ret;
		goto fail;
	}
	clients.running = true;
	return 0;
fail:
	ret = -errno;
	hfs_log(HFS_LOG_ERR, "client socket %s: %s", clients.path, strerror(errno));
	hfs_client_stop();
	return ret;
}

void hfs_client_stop(void)
{
	if (clients.running) {
		/* the pipe may be full of wake-ups: the server thread drains it */
		while (write(clients.stop[1], "x", 1) < 0 && errno == EAGAIN)
			usleep(1000);
		pthread_join(clients.thr, NULL);
		clients.running = false;
	}
	for (int k = 0; k < 2; k++) {
		if (clients.stop[k] >= 0)
			close(clients.stop[k]);
		clients.stop[k] = -1;
	}
	if (clients.lsock >= 0) {
		close(clients.lsock);
		clients.lsock = -1;
	}
}

/* --- status --- */

/* .heapfs/stats: "client_socket" and "clients" [{pid, uid, heaps, leases, maps,
 * mapped_bytes}]. */
static int stats_add(json_t *o)
{
	json_t *a = json_array();
	int bad = !a;

	pthread_mutex_lock(&clients.lock);
	for (struct cl_conn *c = clients.conns; c && !bad; c = c->next) {
		json_t *e = json_object(), *hv = json_array();

		bad |= !e || !hv;
		for (struct cl_reg *r = c->regs; r && !bad; r = r->next)
			bad |= json_array_append_new(hv, json_string(r->h->pol.name));
		bad |= json_object_set_new(e, "pid", json_integer(c->pid));
		bad |= json_object_set_new(e, "uid", json_integer(c->uid));
		bad |= json_object_set_new(e, "heaps", hv);
		uint64_t maps = 0, bytes = 0;

		for (uint32_t k = 0; c->lease && k < HFS_CL_MAX_LEASES; k++) {
			uint64_t w;

			if (!c->lease[k] || c->lease[k]->revoked)
				continue;
			w = atomic_load(&c->word[k]); /* the client's count: mapped now */
			if (w & HFS_CL_COUNT) {
				maps += w & HFS_CL_COUNT;
				bytes += c->lease[k]->len;
			}
		}
		bad |= json_object_set_new(e, "leases", json_integer(c->nleases));
		bad |= json_object_set_new(e, "maps", json_integer((json_int_t)maps));
		bad |= json_object_set_new(e, "mapped_bytes", json_integer((json_int_t)bytes));
		bad |= json_array_append_new(a, e);
	}
	pthread_mutex_unlock(&clients.lock);
	bad |= json_object_set_new(o, "client_socket",
				   clients.lsock >= 0 ? json_string(clients.path) : json_null());
	bad |= json_object_set_new(o, "clients", a);
	return bad ? -ENOMEM : 0;
}
