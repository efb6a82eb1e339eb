/*
 * heapfs.c — libheapfs: map ranges of heapfs files into this process (heapfs.h).
 *
 * How: a connection is a SOCK_SEQPACKET socket to the daemon's client socket (named in
 * MOUNT/.heapfs/stats; protocol in proto_i.h), made again if the daemon closed it before
 * it ever answered (it closes silent connections).  A map sends the file descriptor itself as
 * the proof of access and gets the range's extents (heap offset, file offset, length);
 * the first time for a heap it also gets the heap's data and metadata memfds, which make a
 * registration (reg.c: the heap mapped once, the chunk generations read from the shared
 * table).  A range in one extent is a pointer into the registration's view, with no
 * system call of our own; a range over several extents gets a fresh reserved virtual
 * range with each piece mapped from the memfd at its place (MAP_FIXED), so the caller
 * always sees one contiguous range.  Every map checks the generations of the chunks it
 * spans and renews stale ones (reg.c).
 *
 * Leases: the daemon's answer to a map is a lease on the range (proto_i.h).  We keep up to
 * LEASES of them (least recently used idle one given back first): a map of the same range
 * of the same file (st_dev, st_ino by fstat, offset, length, mode) is one CAS on the
 * shared lease word, a release one atomic subtract, no message; a written release also
 * tells the daemon (mtime, page cache).  A lease the daemon revoked (a truncate, a move,
 * an unlink) fails the CAS, and the map asks again.  A lease keeps its registration
 * active, so the heap view it points into stays.
 *
 * Locking: one mutex per connection around each request/reply, the tables and the
 * leases; the lease words are atomics shared with the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "heapfs.h"
#include "img_i.h" /* the object segment's layout (docs/IMAGE.md) */
#include "msg_i.h"
#include "proto_i.h"
#include "reg_i.h"

#define PAGE 4096ull

#define LEASES 256 /* leases this process keeps (proto_i.h): ranges it maps again at once */

/* A lease on a range of a file: mapped again without a message while the daemon has not
 * revoked it.  Its registration's active count holds the heap view it points into. */
struct lease {
	bool used;
	dev_t dev;
	ino_t ino;
	uint64_t off, len;
	unsigned flags;         /* HEAPFS_WRITE */
	uint32_t idx, tag;
	uint64_t key;           /* the heap's registration */
	uint32_t nx;
	struct hfs_cl_ext *ext; /* for the generation checks */
	char *addr;
	void *own;              /* our own reserved range (several extents), else NULL */
	size_t own_len;
	uint64_t last_use;
};

struct heapfs {
	int sock;
	struct sockaddr_un sa;  /* the client socket's address */
	socklen_t salen;
	bool answered;          /* the daemon replied on this connection */
	pthread_mutex_t lock;
	struct hc_table t;
	struct hfs_cl_rep *rep; /* reply buffer */
	size_t replen;
	char *mount;
	uint64_t seg_key, seq_off; /* the object segment's registration (key 0: none yet) */
	_Atomic uint64_t *word;    /* the lease table, shared with the daemon */
	struct lease lc[LEASES];
	uint64_t tick, leases_made, lease_hits;
};

struct map_priv {
	struct heapfs_map pub;
	uint32_t idx, tag;
	struct lease *l; /* NULL: not kept (the table was full), dropped at the release */
	void *own;       /* with l == NULL */
	size_t own_len;
	uint64_t key;    /* with l == NULL: the registration it holds active */
};

/* A new connection to the daemon in h->sock (the old one closed): 0 or -errno. */
static int dial(struct heapfs *h)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ret;

	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&h->sa, h->salen) < 0) {
		ret = -errno;
		close(s);
		return ret;
	}
	if (h->sock >= 0)
		close(h->sock);
	h->sock = s;
	return 0;
}

int heapfs_connect(const char *mount, struct heapfs **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char path[PATH_MAX];
	const char *sock;
	struct heapfs *h;
	socklen_t salen;
	json_t *st;
	int ret;

	snprintf(path, sizeof(path), "%s/.heapfs/stats", mount);
	st = json_load_file(path, 0, NULL);
	if (!st)
		return -ENOENT;
	sock = json_string_value(json_object_get(st, "client_socket"));
	if (!sock || strlen(sock) >= sizeof(sa.sun_path)) {
		json_decref(st);
		return -ENOTCONN;
	}
	/* "@name": Linux's abstract namespace (sun_path[0] = 0), else a path */
	memcpy(sa.sun_path, sock, strlen(sock));
	if (sock[0] == '@')
		sa.sun_path[0] = 0;
	salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sock) +
			    (sock[0] == '@' ? 0 : 1));
	json_decref(st);
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->replen = sizeof(*h->rep) + HFS_CL_MAX_EXT * sizeof(struct hfs_cl_ext);
	h->rep = malloc(h->replen);
	h->sock = -1;
	h->sa = sa;
	h->salen = salen;
	ret = h->rep ? dial(h) : -ENOMEM;
	if (ret) {
		free(h->rep);
		free(h);
		return ret;
	}
	h->mount = strdup(mount);
	if (!h->mount) {
		close(h->sock);
		free(h->rep);
		free(h);
		return -ENOMEM;
	}
	pthread_mutex_init(&h->lock, NULL);
	*out = h;
	return 0;
}

/* The mount point of the mount whose device is dev (/proc/self/mountinfo). */
static int mount_of(dev_t dev, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], mnt[PATH_MAX];
	unsigned ma, mi;
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &ma, &mi, mnt) != 3 ||
		    makedev(ma, mi) != dev)
			continue;
		/* mountinfo escapes space, tab, newline and backslash as \ooo */
		size_t o = 0;

		for (char *p = mnt; *p && o + 1 < len; o++) {
			if (p[0] == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] && p[3]) {
				out[o] = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
				p += 4;
			} else {
				out[o] = *p++;
			}
		}
		out[o] = 0;
		ret = 0;
		break;
	}
	fclose(f);
	return ret;
}

int heapfs_connect_fd(int fd, struct heapfs **out)
{
	char mnt[PATH_MAX];
	struct stat st;
	int ret;

	if (fstat(fd, &st) < 0)
		return -errno;
	ret = mount_of(st.st_dev, mnt, sizeof(mnt));
	return ret ? ret : heapfs_connect(mnt, out);
}

void heapfs_disconnect(struct heapfs *h)
{
	if (!h)
		return;
	close(h->sock); /* the daemon drops our leases with the connection */
	for (unsigned k = 0; k < LEASES; k++) {
		if (h->lc[k].own)
			munmap(h->lc[k].own, h->lc[k].own_len);
		free(h->lc[k].ext);
	}
	if (h->word)
		munmap((void *)h->word, HFS_CL_MAX_LEASES * sizeof(uint64_t));
	hc_clear(&h->t);
	pthread_mutex_destroy(&h->lock);
	free(h->rep);
	free(h->mount);
	free(h);
}

/* One request and its reply; fds: where received descriptors go (up to 3).  -ENOTCONN:
 * the connection is gone. */
static int exchange(struct heapfs *h, const struct hfs_cl_req *q, const int *send, int nsend,
		    int *fds, unsigned *nfds, size_t *replen)
{
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = (void *)q, .iov_len = sizeof(*q) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	ssize_t n;
	int got;

	if (nsend) { /* at most 2: a proof, and SAVE's output */
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(nsend * sizeof(int));
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nsend * sizeof(int));
		memcpy(CMSG_DATA(cm), send, nsend * sizeof(int));
	}
	if (sendmsg(h->sock, &msg, MSG_NOSIGNAL) != sizeof(*q))
		return -ENOTCONN;
	iov = (struct iovec){ .iov_base = h->rep, .iov_len = h->replen };
	msg = (struct msghdr){ .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			       .msg_controllen = sizeof(u.buf) };
	do
		n = recvmsg(h->sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	*nfds = 0;
	if (n < 0)
		return -ENOTCONN; /* u.buf still holds what we sent: send[] is the caller's */
	if (n == 0)
		return -ENOTCONN; /* the daemon closed: nothing came with an end of file */
	got = hfs_msg_fds(&msg, fds, 3);
	if (got < 0 || n < (ssize_t)sizeof(*h->rep) || h->rep->magic != HFS_CL_MAGIC ||
	    (msg.msg_flags & MSG_TRUNC)) {
		hfs_msg_close(fds, got);
		return -EPROTO;
	}
	*nfds = (unsigned)got;
	*replen = (size_t)n;
	return h->rep->err;
}

/* exchange(), once more on a new connection if this one never got a reply: such a
 * connection holds nothing on either side, and the daemon closes one that stays silent
 * (its FIRST_REQ_NS), so a program may connect long before its first map. */
static int call(struct heapfs *h, const struct hfs_cl_req *q, const int *send, int nsend,
		int *fds, unsigned *nfds, size_t *replen)
{
	int ret = exchange(h, q, send, nsend, fds, nfds, replen);

	if (ret == -ENOTCONN && !h->answered && dial(h) == 0)
		ret = exchange(h, q, send, nsend, fds, nfds, replen);
	if (ret != -ENOTCONN && ret != -EPROTO)
		h->answered = true;
	return ret;
}

/* Tell the daemon to drop lease (idx, tag); errors do not matter (it may have dropped a
 * revoked lease already). */
static void lease_unmap(struct heapfs *h, uint32_t idx, uint32_t tag)
{
	struct hfs_cl_req q = { .magic = HFS_CL_MAGIC, .version = HFS_CL_VERSION,
				.op = HFS_CL_UNMAP, .id = idx, .tag = tag };
	unsigned nfds;
	size_t rl;
	int fds[3];

	call(h, &q, NULL, 0, fds, &nfds, &rl);
	while (nfds)
		close(fds[--nfds]);
}

/* Give back a lease the daemon made for us but we cannot use (count 1 is ours). */
static void lease_refuse(struct heapfs *h, uint32_t idx, uint32_t tag)
{
	if (h->word && idx < HFS_CL_MAX_LEASES)
		atomic_fetch_sub(&h->word[idx], 1);
	lease_unmap(h, idx, tag);
}

/* Forget lease l; tell the daemon if it may still hold it. */
static void lease_forget(struct heapfs *h, struct lease *l, bool tell)
{
	struct hc_reg *r = hc_find(&h->t, l->key);

	if (tell)
		lease_unmap(h, l->idx, l->tag);
	if (l->own)
		munmap(l->own, l->own_len);
	if (r)
		r->active--;
	free(l->ext);
	memset(l, 0, sizeof(*l));
}

static bool lease_idle(const struct heapfs *h, const struct lease *l)
{
	uint64_t w = atomic_load(&h->word[l->idx]);

	return (w & HFS_CL_REVOKED) || HFS_CL_TAG(w) != l->tag || !(w & HFS_CL_COUNT);
}

/* Drop every lease nothing maps now (to free registrations). */
static void lease_flush(struct heapfs *h)
{
	for (unsigned k = 0; k < LEASES; k++)
		if (h->lc[k].used && lease_idle(h, &h->lc[k]))
			lease_forget(h, &h->lc[k], true);
}

/* A slot for a new lease: a free one, else the least recently used idle one; NULL. */
static struct lease *lease_slot(struct heapfs *h)
{
	struct lease *lru = NULL;

	for (unsigned k = 0; k < LEASES; k++) {
		struct lease *l = &h->lc[k];

		if (!l->used)
			return l;
		if (lease_idle(h, l) && (!lru || l->last_use < lru->last_use))
			lru = l;
	}
	if (lru)
		lease_forget(h, lru, true);
	return lru;
}

/* Map lease l again without a message: 0, or -ESTALE when the daemon revoked it. */
static int lease_take(struct heapfs *h, struct lease *l)
{
	uint64_t w = atomic_load(&h->word[l->idx]);

	do {
		if ((w & HFS_CL_REVOKED) || HFS_CL_TAG(w) != l->tag)
			return -ESTALE;
	} while (!atomic_compare_exchange_weak(&h->word[l->idx], &w, w + 1));
	return 0;
}

/* Place the extents side by side in one new reserved range: its first byte in *addr. */
static int place(int fd, const struct hfs_cl_rep *rep, uint64_t len, char **addr, void **own,
		 size_t *own_len)
{
	uint64_t head = rep->ext[0].hoff % PAGE, total = (head + len + PAGE - 1) & ~(PAGE - 1);
	char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			  -1, 0);
	char *at = base;

	if (base == MAP_FAILED)
		return -errno;
	for (uint32_t k = 0; k < rep->next; k++) {
		const struct hfs_cl_ext *e = &rep->ext[k];
		uint64_t eh = e->hoff % PAGE, mlen = (eh + e->len + PAGE - 1) & ~(PAGE - 1);

		if (mmap(at, mlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
			 (off_t)(e->hoff - eh)) == MAP_FAILED) {
			int ret = -errno;

			munmap(base, total);
			return ret;
		}
		at += eh + e->len;
	}
	*own = base;
	*own_len = total;
	*addr = base + head;
	return 0;
}

/* The descriptors a MAP reply brought (fdmask): the lease table, the heap's registration. */
static int take_fds(struct heapfs *h, const struct hfs_cl_rep *rep, int *fds, unsigned nfds,
		    struct hc_reg **reg)
{
	unsigned want = (rep->fdmask & HFS_CL_FD_HEAP ? 2 : 0) +
			(rep->fdmask & HFS_CL_FD_LEASES ? 1 : 0);
	int ret = 0;

	*reg = NULL;
	if (nfds != want) {
		while (nfds)
			close(fds[--nfds]);
		return -EPROTO;
	}
	if (rep->fdmask & HFS_CL_FD_LEASES) {
		int lfd = fds[want - 1];
		void *p = h->word ? MAP_FAILED :
			  mmap(NULL, HFS_CL_MAX_LEASES * sizeof(uint64_t), PROT_READ | PROT_WRITE,
			       MAP_SHARED, lfd, 0);

		if (p != MAP_FAILED)
			h->word = p;
		else if (!h->word)
			ret = -errno;
		close(lfd);
	}
	if (rep->fdmask & HFS_CL_FD_HEAP) {
		struct hc_geom geom = { .key = rep->heap_key, .heap_size = rep->heap_size,
				     .meta_size = rep->meta_size, .gen_off = rep->gen_off,
				     .gen_stride = rep->gen_stride, .nchunks = rep->nchunks,
				     .chunk_order = rep->chunk_order };

		*reg = hc_find(&h->t, geom.key);
		if (*reg && (*reg)->active) { /* have it, in use: keep that one */
			close(fds[0]);
			close(fds[1]);
		} else if (!ret) {
			int d0 = dup(fds[0]), d1 = dup(fds[1]);

			ret = hc_add(&h->t, &geom, fds[0], fds[1], reg);
			if (ret == -EMFILE && d0 >= 0 && d1 >= 0) { /* every one holds leases */
				lease_flush(h);
				ret = hc_add(&h->t, &geom, d0, d1, reg);
				d0 = d1 = -1;
			}
			if (d0 >= 0)
				close(d0);
			if (d1 >= 0)
				close(d1);
		} else {
			close(fds[0]);
			close(fds[1]);
		}
	} else {
		*reg = hc_find(&h->t, rep->heap_key);
	}
	return ret;
}

static struct map_priv *new_map(struct lease *l, uint32_t idx, uint32_t tag, char *addr,
				uint64_t len)
{
	struct map_priv *m = calloc(1, sizeof(*m));

	if (m)
		*m = (struct map_priv){ .pub = { .addr = addr, .len = len }, .idx = idx,
					.tag = tag, .l = l };
	return m;
}

/* A lease of ours on this very range of the file st (with flags), mapped again with no
 * message: 0 with *out, 1 if there is none (ask the daemon), or -errno.  h->lock. */
static int map_again(struct heapfs *h, const struct stat *st, uint64_t off, uint64_t len,
		     unsigned flags, struct map_priv **out)
{
	for (unsigned k = 0; h->word && k < LEASES; k++) {
		struct lease *c = &h->lc[k];
		struct hc_reg *reg;

		if (!c->used || c->ino != st->st_ino || c->dev != st->st_dev || c->off != off ||
		    c->len != len || c->flags != flags)
			continue;
		if (lease_take(h, c)) {
			lease_forget(h, c, false); /* revoked: the daemon drops it itself */
			return 1;
		}
		reg = hc_find(&h->t, c->key);
		for (uint32_t e = 0; reg && e < c->nx; e++)
			hc_check(&h->t, reg, c->ext[e].hoff, c->ext[e].len);
		c->last_use = ++h->tick;
		h->lease_hits++;
		*out = new_map(c, c->idx, c->tag, c->addr, len);
		if (!*out) {
			atomic_fetch_sub(&h->word[c->idx], 1);
			return -ENOMEM;
		}
		return 0;
	}
	return 1;
}

/* Ask the daemon for the lease q describes (fd: the file): 0 with *out, our copy of the
 * reply (the caller frees it), and the heap's registration *reg; or -errno with the lease
 * (if one was granted) refused.  A registration we had dropped is asked for once more
 * (HFS_CL_RESEND).  h->lock. */
static int ask(struct heapfs *h, struct hfs_cl_req *q, int fd, struct hfs_cl_rep **out,
	       struct hc_reg **reg)
{
	struct hfs_cl_rep *rep = NULL; /* our copy: lease_unmap's calls reuse h->rep */
	unsigned nfds;
	int ret, fds[3];
	size_t rl;

	for (int tries = 0;; tries++) {
		ret = call(h, q, &fd, 1, fds, &nfds, &rl);
		if (ret)
			break;
		free(rep);
		rep = malloc(rl);
		if (!rep) {
			ret = -ENOMEM;
			while (nfds)
				close(fds[--nfds]);
			lease_refuse(h, (uint32_t)h->rep->id, h->rep->tag);
			break;
		}
		memcpy(rep, h->rep, rl);
		ret = take_fds(h, rep, fds, nfds, reg);
		if (!ret && (rep->next == 0 ||
			     rl != sizeof(*rep) + rep->next * sizeof(rep->ext[0])))
			ret = -EPROTO;
		if (ret) {
			lease_refuse(h, (uint32_t)rep->id, rep->tag);
			break;
		}
		if (*reg)
			break;
		/* we dropped this heap's registration (idle): ask for the descriptors again */
		lease_refuse(h, (uint32_t)rep->id, rep->tag);
		ret = -EPROTO;
		if (tries)
			break;
		q->flags |= HFS_CL_RESEND;
	}
	*out = rep;
	return ret;
}

/* Where the granted range lives in our address space: *addr (in the heap's mapping when
 * it is one extent, else a placement of its own, *own of *own_len bytes).  Every extent
 * must lie in the heap.  -errno with the lease refused.  h->lock. */
static int locate(struct heapfs *h, const struct hfs_cl_rep *rep, struct hc_reg *reg,
		  uint64_t len, char **addr, void **own, size_t *own_len)
{
	int ret;

	for (uint32_t k = 0; k < rep->next; k++) {
		if (rep->ext[k].len > reg->geom.heap_size ||
		    rep->ext[k].hoff > reg->geom.heap_size - rep->ext[k].len) {
			lease_refuse(h, (uint32_t)rep->id, rep->tag);
			return -EPROTO;
		}
		hc_check(&h->t, reg, rep->ext[k].hoff, rep->ext[k].len);
	}
	if (rep->next == 1) {
		*addr = reg->data + rep->ext[0].hoff;
		return 0;
	}
	ret = place(reg->data_fd, rep, len, addr, own, own_len);
	if (ret)
		lease_refuse(h, (uint32_t)rep->id, rep->tag);
	return ret;
}

/* The new mapping of the granted lease rep at addr, the lease remembered for later maps of
 * the same range of file st when a slot is free; NULL (and the lease given back) when out
 * of memory.  h->lock. */
static struct map_priv *remember(struct heapfs *h, const struct stat *st, uint64_t off,
				 uint64_t len, unsigned flags, const struct hfs_cl_rep *rep,
				 struct hc_reg *reg, char *addr, void *own, size_t own_len)
{
	struct map_priv *m;
	struct lease *l;

	h->leases_made++;
	l = lease_slot(h);
	if (l) {
		l->ext = malloc(rep->next * sizeof(*l->ext));
		if (!l->ext)
			l = NULL;
	}
	if (l) {
		memcpy(l->ext, rep->ext, rep->next * sizeof(*l->ext));
		*l = (struct lease){ .used = true, .dev = st->st_dev, .ino = st->st_ino,
				     .off = off, .len = len, .flags = flags,
				     .idx = (uint32_t)rep->id, .tag = rep->tag,
				     .key = rep->heap_key, .nx = rep->next, .ext = l->ext,
				     .addr = addr, .own = own, .own_len = own_len,
				     .last_use = ++h->tick };
		reg->active++;
	}
	m = new_map(l, (uint32_t)rep->id, rep->tag, addr, len);
	if (!m) {
		if (l)
			lease_forget(h, l, false);
		else if (own)
			munmap(own, own_len);
		lease_refuse(h, (uint32_t)rep->id, rep->tag);
		return NULL;
	}
	if (!l) {
		m->own = own;
		m->own_len = own_len;
		m->key = rep->heap_key;
		reg->active++;
	}
	return m;
}

int heapfs_map(struct heapfs *h, int fd, uint64_t off, uint64_t len, unsigned flags,
	       struct heapfs_map **out)
{
	struct hfs_cl_req q = { .magic = HFS_CL_MAGIC, .version = HFS_CL_VERSION,
				.op = HFS_CL_MAP, .flags = flags & HEAPFS_WRITE ? HFS_CL_WRITE : 0,
				.off = off, .len = len };
	struct hfs_cl_rep *rep = NULL;
	struct map_priv *m = NULL;
	struct hc_reg *reg = NULL;
	void *own = NULL;
	size_t own_len = 0;
	char *addr = NULL;
	struct stat st;
	int ret;

	flags &= HEAPFS_WRITE;
	if (fstat(fd, &st) < 0)
		return -errno;
	pthread_mutex_lock(&h->lock);
	ret = map_again(h, &st, off, len, flags, &m);
	if (ret == 1) {
		ret = ask(h, &q, fd, &rep, &reg);
		if (!ret)
			ret = locate(h, rep, reg, len, &addr, &own, &own_len);
		if (!ret && !(m = remember(h, &st, off, len, flags, rep, reg, addr, own, own_len)))
			ret = -ENOMEM;
	}
	pthread_mutex_unlock(&h->lock);
	free(rep);
	if (!ret)
		*out = &m->pub;
	return ret;
}

/* WRITTEN for m's range (h->lock held): the daemon accounts the write while the range is
 * still pinned, and in a sync-replicated heap answers once the partner has the bytes. */
static int __written(struct heapfs *h, const struct map_priv *m)
{
	struct hfs_cl_req q = { .magic = HFS_CL_MAGIC, .version = HFS_CL_VERSION,
				.op = HFS_CL_WRITTEN_OP, .id = m->idx, .tag = m->tag };
	unsigned nfds = 0;
	int ret, fds[3];
	size_t rl;

	ret = call(h, &q, NULL, 0, fds, &nfds, &rl);
	while (nfds)
		close(fds[--nfds]);
	return ret;
}

int heapfs_sync(struct heapfs *h, struct heapfs_map *pub)
{
	int ret;

	pthread_mutex_lock(&h->lock);
	ret = __written(h, (struct map_priv *)pub);
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int heapfs_save(struct heapfs *h, int image_fd, int out_fd, uint64_t *bytes)
{
	struct hfs_cl_req q = { .magic = HFS_CL_MAGIC, .version = HFS_CL_VERSION,
				.op = HFS_CL_SAVE };
	int send[2] = { image_fd, out_fd }, ret, fds[3];
	unsigned nfds = 0;
	size_t rl;

	pthread_mutex_lock(&h->lock);
	ret = call(h, &q, send, 2, fds, &nfds, &rl);
	while (nfds)
		close(fds[--nfds]);
	if (!ret && bytes)
		*bytes = h->rep->size;
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int heapfs_release(struct heapfs *h, struct heapfs_map *pub, bool written)
{
	struct map_priv *m = (struct map_priv *)pub;
	int ret = 0;

	pthread_mutex_lock(&h->lock);
	if (written)
		ret = __written(h, m);
	atomic_fetch_sub(&h->word[m->idx], 1);
	if (!m->l) { /* not kept: drop it now */
		struct hc_reg *r = hc_find(&h->t, m->key);

		if (r)
			r->active--;
		if (m->own)
			munmap(m->own, m->own_len);
		lease_unmap(h, m->idx, m->tag);
	}
	pthread_mutex_unlock(&h->lock);
	free(m);
	return ret;
}

/* The object segment's registration (h->lock held). */
static struct hc_reg *segment(struct heapfs *h, int *err)
{
	struct hfs_cl_req q = { .magic = HFS_CL_MAGIC, .version = HFS_CL_VERSION,
				.op = HFS_CL_SEGMENT };
	struct hfs_cl_rep *rep = h->rep;
	char path[PATH_MAX];
	struct hc_reg *r;
	unsigned nfds;
	size_t rl;
	int fd, fds[2];

	if (h->seg_key && (r = hc_find(&h->t, h->seg_key)))
		return r;
	snprintf(path, sizeof(path), "%s/objects", h->mount);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		*err = -errno;
		return NULL;
	}
	*err = call(h, &q, &fd, 1, fds, &nfds, &rl);
	close(fd);
	if (*err)
		return NULL;
	if (nfds != 2 || rep->seq_off % 8 || rep->seq_off + 8 > rep->meta_size) {
		while (nfds)
			close(fds[--nfds]);
		*err = -EPROTO;
		return NULL;
	}
	struct hc_geom geom = { .key = rep->heap_key, .heap_size = rep->heap_size,
			     .meta_size = rep->meta_size, .gen_off = rep->gen_off,
			     .gen_stride = rep->gen_stride, .nchunks = rep->nchunks,
			     .chunk_order = rep->chunk_order };

	*err = hc_add(&h->t, &geom, fds[0], fds[1], &r);
	if (*err)
		return NULL;
	h->seg_key = geom.key;
	h->seq_off = rep->seq_off;
	return r;
}

/* One pass over the map: 0 with *off and *size, -ENOENT, or -EAGAIN when what it read is not
 * a consistent map (a change in flight: the sequence check decides). */
static int scan(const char *seg, uint64_t segsize, const char *name, size_t nlen,
		uint64_t *off, uint64_t *size)
{
	const volatile struct img_seg_hdr *sh = (const volatile struct img_seg_hdr *)seg;
	uint64_t map_off = sh->map_off;
	uint32_t nslots = sh->map_slots;

	if (map_off >= segsize || nslots > (segsize - map_off) / sizeof(struct img_seg_slot))
		return -EAGAIN;
	for (uint32_t k = 0; k < nslots; k++) {
		const volatile struct img_seg_slot *s =
			(const volatile struct img_seg_slot *)(seg + map_off) + k;

		if (!s->used || s->name_len != nlen || memcmp((const char *)s->name, name, nlen))
			continue;
		*off = s->off;
		*size = s->size;
		return *off < segsize && *size <= segsize - *off ? 0 : -EAGAIN;
	}
	return -ENOENT;
}

int heapfs_find(struct heapfs *h, const char *name, void **ptr, size_t *size)
{
	size_t nlen = strlen(name);
	const _Atomic uint64_t *seq;
	uint64_t off = 0, sz = 0, s1;
	struct hc_reg *r;
	int ret;

	if (!nlen || nlen > IMG_NAME_MAX)
		return -ENOENT;
	pthread_mutex_lock(&h->lock);
	r = segment(h, &ret);
	if (!r)
		goto out;
	seq = (const _Atomic uint64_t *)(r->meta + h->seq_off);
	for (unsigned tries = 0;; tries++) {
		if (tries >= 64) {
			if (tries >= 100000) { /* the daemon stopped in the middle of a change */
				ret = -EAGAIN;
				goto out;
			}
			sched_yield();
		}
		s1 = atomic_load_explicit(seq, memory_order_acquire);
		if (s1 & 1)
			continue; /* the daemon is changing the map */
		ret = scan(r->data, r->geom.heap_size, name, nlen, &off, &sz);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(seq, memory_order_relaxed) == s1 && ret != -EAGAIN)
			break;
	}
	if (!ret) {
		hc_check(&h->t, r, off, sz ? sz : 1);
		*ptr = r->data + off;
		*size = (size_t)sz;
	}
out:
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int heapfs_find_or_construct(struct heapfs *h, const char *name, size_t size, void **ptr,
			     size_t *out_size)
{
	char path[PATH_MAX];
	int ret = heapfs_find(h, name, ptr, out_size), fd;

	if (ret != -ENOENT)
		return ret;
	if (strchr(name, '/') || (size_t)snprintf(path, sizeof(path), "%s/objects/%s",
						  h->mount, name) >= sizeof(path))
		return -EINVAL;
	/* ask the daemon: create it through the filesystem (O_EXCL: another process may
	 * construct it at the same time; then it is simply there) */
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (fd >= 0) {
		ret = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
		close(fd);
		if (ret) {
			unlink(path);
			return ret;
		}
	} else if (errno != EEXIST) {
		return -errno;
	}
	return heapfs_find(h, name, ptr, out_size);
}

void heapfs_stats(struct heapfs *h, struct heapfs_stats *st)
{
	pthread_mutex_lock(&h->lock);
	st->registrations = hc_count(&h->t);
	st->registered = h->t.registered;
	st->dropped = h->t.dropped;
	st->stale_chunks = h->t.stale;
	st->leases_made = h->leases_made;
	st->lease_hits = h->lease_hits;
	pthread_mutex_unlock(&h->lock);
}
