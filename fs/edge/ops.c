/*
 * ops.c — the FUSE low-level operation table: thin translation between requests and the
 * hfs_* functions (the only file that calls fuse_reply_*).
 *
 * File handles: regular files carry nothing (fh = 0; the inode is the state), status
 * files carry their JSON snapshot, directories a name snapshot (struct hfs_dirsnap).
 * References: every entry reply hands the kernel one lookup reference (taken by the hfs_*
 * call, dropped again here if the reply fails); an open handle holds one reference so an
 * unlinked open file keeps its blocks until the last release.
 * Changes: an op that changes something passes a completion on its stack (struct
 * hfs_completion) into the core call and, before replying, waits on it (sync replication:
 * the partner has the change first) or, for a write, leaves the reply to it
 * (hfs_complete_defer: sent from the link's thread once acknowledged).
 * Caching: everything changes only through this mount, so attributes, entries and
 * negative entries are cached for HFS_TIMEOUT, and file pages are kept across opens
 * (cache = auto/keep) or bypassed (cache = direct).  The exceptions are .heapfs/heaps/ and
 * .heapfs/maps/, whose entries change as a side effect of mkdir/rmdir in heaps/.
 * Two requests libfuse 3.14 does not know (FUSE_TMPFILE, FUSE_STATX) are answered here
 * without it (hfs_raw_dispatch, at the end): the transports hand every request to it first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "edge_i.h"
#include "raw_i.h"

struct status_fh {
	char *buf;
	size_t len;
	/* .heapfs/images/NAME: the pipe from the snapshot child, read in order */
	pthread_mutex_t lock;
	int fd;
	pid_t pid; /* 0 once reaped */
	uint64_t pos;
};

#define READ_IOV 256

/* var: the inode the kernel's ino names (the kernel holds a reference to it); a number
 * the table no longer has ends the request with ESTALE. */
#define GET(req, var, ino)                          \
	struct hfs_inode *var = hfs_iget(ino);      \
	do {                                        \
		if (!var) {                         \
			fuse_reply_err(req, ESTALE); \
			return;                     \
		}                                   \
	} while (0)

/* A mirror heap changes behind the kernel's back (the partner's changes): nothing of it
 * is cached. */
static double attr_timeout(const struct hfs_inode *i)
{
	return hfs_mirror(i->heap) ? 0.0 : HFS_TIMEOUT;
}

static double entry_timeout(const struct hfs_inode *dir)
{
	return dir == hfs.dot_heaps || dir == hfs.dot_maps || dir == hfs.dot_images ||
	       hfs_mirror(dir->heap) ? 0.0 : HFS_TIMEOUT;
}

static void fill_entry(struct fuse_entry_param *e, struct hfs_inode *dir, struct hfs_inode *i,
		       const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = i->ino;
	e->generation = i->gen;
	e->attr = *st;
	e->attr_timeout = attr_timeout(i);
	e->entry_timeout = entry_timeout(dir);
}

/* The reply to a change whose completion is c: after waiting for it (sync replication:
 * the partner has the change first). */
static void reply_entry(fuse_req_t req, struct hfs_inode *dir, struct hfs_inode *i,
			struct hfs_completion *c)
{
	struct fuse_entry_param e;
	struct stat st;

	hfs_complete_wait(c);
	hfs_stat(i, &st);
	fill_entry(&e, dir, i, &st);
	if (fuse_reply_entry(req, &e))
		hfs_iput(i, 1);
}

/* Is the caller of req in group gid (a supplementary group)?  Read from /proc by libfuse:
 * asked only when it decides something. */
static bool req_in_group(const struct hfs_ctx *ctx, gid_t gid)
{
	gid_t small[64], *list = small;
	int n = fuse_req_getgroups(ctx->arg, 64, small);
	bool in = false;

	if (n > 64) {
		list = malloc((size_t)n * sizeof(*list));
		n = list ? fuse_req_getgroups(ctx->arg, n, list) : -ENOMEM;
	}
	for (int k = 0; k < n && !in; k++)
		in = list[k] == gid;
	if (list != small)
		free(list);
	return in;
}

/* Who sends req, for the core; create: a user's create (the parent's default ACL or else
 * the umask applies). */
static struct hfs_ctx ctx_of(fuse_req_t req, bool create)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);

	return (struct hfs_ctx){ .uid = c->uid, .gid = c->gid, .in_group = req_in_group,
				 .arg = req, .umask = c->umask, .acl = create };
}

static void reply_err(fuse_req_t req, int ret)
{
	fuse_reply_err(req, -ret);
}

static void reply_change(fuse_req_t req, struct hfs_completion *c, int ret)
{
	if (!ret)
		hfs_complete_wait(c);
	fuse_reply_err(req, -ret);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Nobody else changes our files: mtime changes must not drop the page cache. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* The kernel clears suid/sgid itself (setattr) on write; keep that simple. */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	/* ENOSPC must come from write(), not later from writeback: no writeback cache. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	/* Every request through read()/writev() of io.c, never splice (why: io.c). */
	conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	/* File handles outlive the kernel's inode cache (export_lookup). */
	if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
		conn->want |= FUSE_CAP_EXPORT_SUPPORT;
	/* Lookups and listings of one directory may run at once: hfs.ns orders them. */
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* POSIX ACLs: the kernel enforces them and asks us for system.posix_acl_*; the umask
	 * comes to us unapplied (a default ACL replaces it: hfs_acl_inherit). */
	if ((conn->capable & (FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK)) ==
	    (FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK))
		conn->want |= FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
	/* Readahead and async direct I/O run as background requests: allow many at once. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->time_gran = 1;
}

/* Export lookups (FUSE_CAP_EXPORT_SUPPORT): the kernel decodes a file handle (node id +
 * generation, open_by_handle_at, NFS) whose inode it has forgotten by asking for "." of the
 * node id, and a directory's parent by "..".  The kernel holds no reference to that node
 * id, so it is looked up with hfs_iget_ref; a number gone or reused gives ESTALE (the
 * kernel compares the generation of a reused one). */
static void export_lookup(fuse_req_t req, fuse_ino_t ino, bool dotdot)
{
	struct hfs_inode *i = hfs_iget_ref(ino), *p;
	struct fuse_entry_param e;
	struct stat st;
	int ret;

	if (!i)
		return reply_err(req, -ESTALE);
	if (dotdot) {
		ret = hfs_lookup_parent(i, &p);
		hfs_iput(i, 1);
		if (ret)
			return reply_err(req, ret == -ENOENT ? -ESTALE : ret);
		i = p;
	}
	hfs_stat(i, &st);
	fill_entry(&e, i, i, &st);
	e.entry_timeout = 0; /* no name to cache */
	if (fuse_reply_entry(req, &e))
		hfs_iput(i, 1);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return export_lookup(req, parent, name[1] == '.');
	GET(req, dir, parent);
	struct hfs_inode *i;
	int ret = hfs_lookup(dir, name, &i);

	if (ret == -ENOENT) {
		/* ino 0 = a negative entry the kernel may cache */
		struct fuse_entry_param e = { .ino = 0, .entry_timeout = entry_timeout(dir) };

		fuse_reply_entry(req, &e);
	} else if (ret) {
		reply_err(req, ret);
	} else {
		reply_entry(req, dir, i, NULL);
	}
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct hfs_inode *i = hfs_iget(ino);

	if (i)
		hfs_iput(i, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t k = 0; k < count; k++) {
		struct hfs_inode *i = hfs_iget(forgets[k].ino);

		if (i)
			hfs_iput(i, forgets[k].nlookup);
	}
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct stat st;

	(void)fi;
	hfs_stat(i, &st);
	fuse_reply_attr(req, &st, attr_timeout(i));
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_completion c = { 0 };
	struct stat st;
	int ret;

	static const struct { int fuse; unsigned hfs; } bits[] = {
		{ FUSE_SET_ATTR_MODE, HFS_SET_MODE }, { FUSE_SET_ATTR_UID, HFS_SET_UID },
		{ FUSE_SET_ATTR_GID, HFS_SET_GID }, { FUSE_SET_ATTR_SIZE, HFS_SET_SIZE },
		{ FUSE_SET_ATTR_ATIME, HFS_SET_ATIME }, { FUSE_SET_ATTR_MTIME, HFS_SET_MTIME },
		{ FUSE_SET_ATTR_ATIME_NOW, HFS_SET_ATIME_NOW },
		{ FUSE_SET_ATTR_MTIME_NOW, HFS_SET_MTIME_NOW }, { FUSE_SET_ATTR_CTIME, HFS_SET_CTIME },
	};
	struct hfs_attr a = { .mode = attr->st_mode, .uid = attr->st_uid, .gid = attr->st_gid,
			      .size = (uint64_t)attr->st_size, .atime = attr->st_atim,
			      .mtime = attr->st_mtim, .ctime = attr->st_ctim };
	struct hfs_ctx who = ctx_of(req, false);
	unsigned mask = 0;

	(void)fi;
	for (size_t k = 0; k < sizeof(bits) / sizeof(bits[0]); k++)
		if (to_set & bits[k].fuse)
			mask |= bits[k].hfs;
	ret = hfs_setattr(i, &a, mask, &who, &c);
	if (ret)
		return reply_err(req, ret);
	hfs_complete_wait(&c);
	hfs_stat(i, &st);
	fuse_reply_attr(req, &st, attr_timeout(i));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	GET(req, i, ino);

	if (i->kind != HFS_LNK)
		return reply_err(req, -EINVAL);
	hfs_accessed(i); /* before the reply: once it lands, a forget may free i */
	fuse_reply_readlink(req, i->lnk.target);
}

static void new_node(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev, const char *target)
{
	GET(req, dir, parent);
	struct hfs_ctx ctx = ctx_of(req, true);
	struct hfs_completion done = { 0 };
	struct hfs_inode *i;
	int ret = hfs_create(dir, name, mode, rdev, target, &ctx, &i, &done);

	if (ret)
		return reply_err(req, ret);
	reply_entry(req, dir, i, &done);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	new_node(req, parent, name, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	new_node(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	new_node(req, parent, name, S_IFLNK | 0777, 0, link);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	GET(req, dir, parent);
	struct hfs_completion c = { 0 };

	reply_change(req, &c, hfs_unlink(dir, name, &c));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	GET(req, dir, parent);
	struct hfs_completion c = { 0 };

	reply_change(req, &c, hfs_rmdir(dir, name, &c));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	GET(req, dir, parent);
	GET(req, ndir, newparent);
	struct hfs_ctx ctx = ctx_of(req, false);
	struct hfs_completion c = { 0 };

	if (flags & RENAME_WHITEOUT)
		return reply_change(req, &c, hfs_rename_whiteout(dir, name, ndir, newname,
								 flags & ~RENAME_WHITEOUT, &ctx,
								 &c));
	reply_change(req, &c, hfs_rename(dir, name, ndir, newname, flags, &c));
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	GET(req, i, ino);
	GET(req, ndir, newparent);
	struct hfs_completion c = { 0 };
	int ret = hfs_link(i, ndir, newname, &c);

	if (ret)
		return reply_err(req, ret);
	reply_entry(req, ndir, i, &c);
}

/* Does the kernel keep i's pages (across opens)?  Not for cache = direct, nor a mirror. */
static bool keeps_pages(const struct hfs_inode *i)
{
	return !(i->heap && (i->heap->pol.cache == CONF_CACHE_DIRECT || hfs_mirror(i->heap)));
}

/* Open flags for a regular file from its heap's cache policy. */
static void file_flags(struct hfs_inode *i, struct fuse_file_info *fi)
{
	/* nothing to do at close(): data is in the heap already; a replicated heap's close
	 * waits until the partner has everything (flush) */
	fi->noflush = !hfs_repl_flushes(i->heap);
	if (keeps_pages(i))
		fi->keep_cache = 1;
	else
		fi->direct_io = 1;
}

static int status_open(struct hfs_inode *i, struct fuse_file_info *fi)
{
	struct status_fh *s;
	int ret;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || fi->flags & O_TRUNC)
		return -EACCES;
	/* rendering may take long (a big heap's map, a snapshot's fork, a verify waits for
	 * the partner's hashes): the other workers go on serving meanwhile */
	hfs_io_will_wait();
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (i->st.what == HFS_ST_IMAGE) {
		pthread_mutex_init(&s->lock, NULL);
		ret = hfs_image_snapshot(i->st.heap, &s->fd, &s->pid);
		fi->nonseekable = 1;
	} else {
		ret = hfs_status_render(i, &s->buf, &s->len);
	}
	if (ret) {
		free(s);
		return ret;
	}
	fi->fh = (uintptr_t)s;
	fi->direct_io = 1; /* size unknown to the kernel and changing: never cache */
	return 0;
}

static void status_close(struct hfs_inode *i, struct fuse_file_info *fi)
{
	struct status_fh *s = (struct status_fh *)(uintptr_t)fi->fh;

	if (i->st.what == HFS_ST_IMAGE) {
		close(s->fd);
		if (s->pid)
			hfs_image_snapshot_end(s->pid);
		pthread_mutex_destroy(&s->lock);
	} else {
		hfs_status_put(i, s->buf);
	}
	free(s);
}

/* The next bytes of an image stream: in order only; at its end, the child must have
 * written a whole image, else the reader gets EIO (and its copy is no image). */
static ssize_t stream_read(struct status_fh *s, char *buf, size_t size, off_t off)
{
	ssize_t n = 0, r;

	pthread_mutex_lock(&s->lock);
	if ((uint64_t)off != s->pos) {
		n = -ESPIPE;
		goto out;
	}
	while ((size_t)n < size && s->pid) {
		r = read(s->fd, buf + n, size - (size_t)n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			n = -errno;
			goto out;
		}
		if (r == 0) { /* the child is done */
			r = hfs_image_snapshot_end(s->pid);
			s->pid = 0;
			if (r) {
				n = r;
				goto out;
			}
		}
		n += r;
	}
	s->pos += (uint64_t)n;
out:
	pthread_mutex_unlock(&s->lock);
	return n;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_completion c = { 0 };
	int ret;

	if (i->kind == HFS_STATUS) {
		ret = status_open(i, fi);
	} else {
		struct hfs_ctx who = ctx_of(req, false);

		ret = hfs_open(i, fi->flags, &who, &c);
		file_flags(i, fi);
	}
	if (ret)
		return reply_err(req, ret);
	hfs_complete_wait(&c); /* O_TRUNC */
	/* The kernel serves kept pages without asking us: an open for reading counts as the
	 * read that updates atime (a read that reaches us counts again, op_read). */
	if (i->kind != HFS_STATUS && (fi->flags & O_ACCMODE) != O_WRONLY)
		hfs_accessed(i);
	hfs_iref(i, 1);
	if (fuse_reply_open(req, fi)) {
		if (i->kind == HFS_STATUS)
			status_close(i, fi); /* its snapshot must not stay charged */
		else
			hfs_release(i, fi->flags);
		hfs_iput(i, 1);
	}
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	GET(req, dir, parent);
	struct hfs_ctx ctx = ctx_of(req, true);
	struct hfs_completion done = { 0 };
	struct fuse_entry_param e;
	struct hfs_inode *i;
	struct stat st;
	int ret = hfs_create(dir, name, S_IFREG | (mode & 07777), 0, NULL, &ctx, &i, &done);

	if (ret)
		return reply_err(req, ret);
	ret = hfs_open(i, fi->flags & ~O_TRUNC, &ctx, &done);
	if (ret) {
		hfs_iput(i, 1);
		return reply_err(req, ret);
	}
	file_flags(i, fi);
	hfs_complete_wait(&done);
	hfs_iref(i, 1);
	hfs_stat(i, &st);
	fill_entry(&e, dir, i, &st);
	if (fuse_reply_create(req, &e, fi)) {
		hfs_release(i, fi->flags);
		hfs_iput(i, 2);
	}
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct iovec iov[READ_IOV];
	int niov = READ_IOV;
	void *bounce;
	ssize_t n;

	if (i->kind == HFS_STATUS) {
		struct status_fh *s = (struct status_fh *)(uintptr_t)fi->fh;

		char *copy;

		if (i->st.what == HFS_ST_IMAGE) {
			copy = malloc(size);
			n = copy ? stream_read(s, copy, size, off) : -ENOMEM;
			if (n < 0)
				reply_err(req, (int)n);
			else
				fuse_reply_buf(req, copy, (size_t)n);
			free(copy);
			return;
		}
		if ((uint64_t)off >= s->len)
			return (void)fuse_reply_buf(req, NULL, 0);
		if (size > s->len - (uint64_t)off)
			size = s->len - (uint64_t)off;
		/* The reader may close (and our release free s) the moment the reply lands,
		 * before writev() has returned; harmless, but sanitizers check the iovec after
		 * the call.  Status files are small: reply from a private copy. */
		copy = malloc(size);
		if (!copy)
			return reply_err(req, -ENOMEM);
		memcpy(copy, s->buf + off, size);
		fuse_reply_buf(req, copy, size);
		free(copy);
		return;
	}
	/* before the reply (once it lands the reader may close, and a forget free an unlinked
	 * i) and before hfs_read_begin, whose read lock hfs_accessed's write lock would wait on */
	hfs_accessed(i);
	n = hfs_read_begin(i, size, off, iov, &niov, &bounce);
	if (n < 0)
		return reply_err(req, (int)n);
	fuse_reply_iov(req, iov, niov);
	hfs_read_end(i);
	free(bounce);
}

struct write_reply {
	fuse_req_t req;
	size_t n;
};

static void write_reply_fn(void *arg, int err)
{
	struct write_reply *w = arg;

	if (err)
		reply_err(w->req, err);
	else
		fuse_reply_write(w->req, w->n);
	free(w);
}

/* write, not write_buf: with no splice (io.c) the data is always in the request buffer */
static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_ctx who = ctx_of(req, false);
	struct hfs_completion c = { 0 };
	int ret, ret2;

	ret = hfs_write(i, buf, size, off, &who, &c);
	if (ret < 0)
		return reply_err(req, ret);
	/* An O_DIRECT write bypassed the pages the kernel keeps; it drops them before an
	 * asynchronous one (AIO, io_uring) but not after, so a buffered read meanwhile could
	 * have cached the old bytes again: drop the range now the new ones are in.  Not over
	 * FUSE-over-io_uring (what serves, not what was asked: -o io_uring=auto may have
	 * fallen back to /dev/fuse): dropping waits for the page lock of that read, whose
	 * READ may be queued behind this very request on the ring worker (a deadlock). */
	if (fi->flags & O_DIRECT && ret > 0 && keeps_pages(i) && !atomic_load(&hfs.uring_live))
		hfs_kcache_range(i->ino, off, ret);
	/* sync replication: the reply goes once the partner applied it (or is lost) — from
	 * the link's receive thread, so this worker is free meanwhile; over io_uring replies
	 * belong to the ring's worker, which waits instead */
	if (!hfs_uring_serving()) {
		struct write_reply *w = malloc(sizeof(*w));

		if (w) {
			*w = (struct write_reply){ .req = req, .n = (size_t)ret };
			if (hfs_complete_defer(&c, write_reply_fn, w))
				return;
			free(w);
		}
	}
	ret2 = hfs_complete_wait(&c); /* -ENOSPC: no room on the partner, given back here */
	if (ret2)
		return reply_err(req, ret2);
	fuse_reply_write(req, (size_t)ret);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);

	if (i->kind == HFS_STATUS)
		status_close(i, fi);
	else
		hfs_release(i, fi->flags);
	hfs_iput(i, 1);
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_dirsnap *s;

	if (i->kind != HFS_DIR)
		return reply_err(req, -ENOTDIR);
	s = calloc(1, sizeof(*s));
	if (!s)
		return reply_err(req, -ENOMEM);
	pthread_mutex_init(&s->lock, NULL);
	fi->fh = (uintptr_t)s;
	hfs_iref(i, 1);
	if (fuse_reply_open(req, fi)) {
		pthread_mutex_destroy(&s->lock);
		free(s);
		hfs_iput(i, 1);
	}
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	GET(req, dir, ino);
	struct hfs_dirsnap *s = (struct hfs_dirsnap *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	size_t pos = 0;
	int ret = 0;

	if (!buf)
		return reply_err(req, -ENOMEM);
	pthread_mutex_lock(&s->lock);
	if (off == 0) {
		ret = hfs_dir_snapshot(dir, s); /* also what rewinddir() asks for */
		hfs_accessed(dir);
	}
	for (size_t idx = (size_t)off; !ret; idx++) {
		struct hfs_inode *i;
		const char *name;
		struct stat st;
		size_t n;
		int r = hfs_dir_entry(dir, s, idx, plus, &name, &st, &i);

		if (r == 1)
			break;
		if (r)
			continue; /* removed since the snapshot */
		if (plus) {
			struct fuse_entry_param e = { .ino = st.st_ino, .attr = st,
						      .attr_timeout = attr_timeout(dir),
						      .entry_timeout = entry_timeout(dir) };

			if (i)
				e.generation = i->gen;
			n = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e,
						   (off_t)idx + 1);
		} else {
			n = fuse_add_direntry(req, buf + pos, size - pos, name, &st,
					      (off_t)idx + 1);
		}
		if (n > size - pos) {
			if (i)
				hfs_iput(i, 1);
			break;
		}
		pos += n;
	}
	pthread_mutex_unlock(&s->lock);
	if (ret)
		reply_err(req, ret);
	else
		fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_dirsnap *s = (struct hfs_dirsnap *)(uintptr_t)fi->fh;

	hfs_dirsnap_clear(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
	hfs_iput(i, 1);
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	GET(req, i, ino);
	struct statvfs st;
	int ret = hfs_statfs(i, &st);

	if (ret)
		return reply_err(req, ret);
	fuse_reply_statfs(req, &st);
}

/* Does setting an access ACL on i take its setgid bit away?  When the caller is neither
 * root nor in i's group (posix_acl_update_mode; the kernel says so only through
 * FUSE_SETXATTR_EXT, which libfuse 3.14 does not negotiate). */
static bool acl_kills_sgid(fuse_req_t req, struct hfs_inode *i)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);
	gid_t some[64], *groups = some;
	bool kill = true;
	struct stat st;
	int n;

	hfs_stat(i, &st);
	if (!(st.st_mode & S_ISGID) || c->uid == 0 || c->gid == st.st_gid)
		return false;
	n = fuse_req_getgroups(req, 64, groups);
	if (n > 64) { /* more than that: ask again with room for them all */
		groups = malloc((size_t)n * sizeof(*groups));
		n = groups ? fuse_req_getgroups(req, n, groups) : -ENOMEM;
	}
	for (int k = 0; k < n && kill; k++)
		kill = groups[k] != st.st_gid;
	if (groups != some)
		free(groups);
	return kill;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	GET(req, i, ino);
	struct hfs_completion c = { 0 };

	if (!strcmp(name, HFS_ACL_ACCESS) && acl_kills_sgid(req, i))
		flags |= HFS_XATTR_KILL_SGID;

	reply_change(req, &c, hfs_setxattr(i, name, value, size, flags, &c));
}

/* getxattr/listxattr: size 0 asks for the length, else the bytes. */
static void reply_xattr(fuse_req_t req, ssize_t n, const char *buf, size_t size)
{
	if (n < 0)
		reply_err(req, (int)n);
	else if (!size)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	GET(req, i, ino);
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf)
		return reply_err(req, -ENOMEM);
	reply_xattr(req, hfs_getxattr(i, name, buf, size), buf, size);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	GET(req, i, ino);
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf)
		return reply_err(req, -ENOMEM);
	/* trusted.* names are root's to see (tmpfs: CAP_SYS_ADMIN) */
	reply_xattr(req, hfs_listxattr(i, buf, size, fuse_req_ctx(req)->uid == 0), buf, size);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	GET(req, i, ino);
	struct hfs_completion c = { 0 };

	reply_change(req, &c, hfs_removexattr(i, name, &c));
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	GET(req, i, ino);
	struct hfs_ctx who = ctx_of(req, false);
	struct hfs_completion c = { 0 };
	int ret;

	(void)fi;
	/* as a write: the kernel leaves clearing suid/sgid to us (FUSE_HANDLE_KILLPRIV_V2);
	 * first, as tmpfs does (file_modified) */
	ret = hfs_kill_priv(i, &who, &c);
	if (!ret)
		ret = hfs_fallocate(i, mode, offset, length, &c);
	reply_change(req, &c, ret);
}

/* SEEK_DATA / SEEK_HOLE: the extents (SEEK_SET/CUR/END never come here). */
static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	GET(req, i, ino);
	int64_t ret = hfs_lseek(i, off, whence);

	(void)fi;
	if (ret < 0)
		return reply_err(req, (int)ret);
	fuse_reply_lseek(req, ret);
}

/* copy_file_range between two files of the mount: the daemon copies block to block (holes
 * stay holes); the kernel has written back in's cached pages and dropped out's. */
static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len, int flags)
{
	GET(req, in, ino_in);
	GET(req, out, ino_out);
	struct hfs_ctx who = ctx_of(req, false);
	struct hfs_completion c = { 0 };
	int64_t n;
	int ret;

	(void)fi_in, (void)fi_out;
	if (flags)
		return reply_err(req, -EINVAL);
	if (in->kind == HFS_STATUS || out->kind == HFS_STATUS)
		return reply_err(req, -EOPNOTSUPP); /* the kernel copies it through read/write */
	if (off_in < 0 || off_out < 0)
		return reply_err(req, -EINVAL);
	n = hfs_copy_range(in, (uint64_t)off_in, out, (uint64_t)off_out, len,
			   &who, &c);
	if (n < 0)
		return reply_err(req, (int)n);
	ret = hfs_complete_wait(&c); /* sync replication: the partner has it */
	if (ret)
		return reply_err(req, ret);
	fuse_reply_write(req, (size_t)n);
}

/* close() and fsync() of a file in an owned replicated heap: until the partner has
 * everything sent so far (async mode; in sync mode it already has). */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GET(req, i, ino);

	(void)fi;
	fuse_reply_err(req, -hfs_repl_flush(i->heap));
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	op_flush(req, ino, fi);
}

const struct fuse_lowlevel_ops hfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.symlink = op_symlink,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.fallocate = op_fallocate,
	.lseek = op_lseek,
	.copy_file_range = op_copy_file_range,
	.flush = op_flush,
	.fsync = op_fsync,
};

/* ---- FUSE_TMPFILE and FUSE_STATX: libfuse 3.14 has neither, so io.c and uring.c hand
 * every request to hfs_raw_dispatch first; raw.c parses it, the answer is made here and
 * goes back through hfs_io_reply (the device, or the ring entry being served). ---- */

static int raw_reply(int fd, uint64_t unique, int err, const void *a, size_t al,
		     const void *b, size_t bl)
{
	struct fuse_out_header oh = { .len = (uint32_t)(sizeof(oh) + (err ? 0 : al + bl)),
				      .error = err, .unique = unique };
	struct iovec iov[3] = { { &oh, sizeof(oh) }, { (void *)a, al }, { (void *)b, bl } };

	return hfs_io_reply(fd, iov, err ? 1 : bl ? 3 : 2) < 0 ? -errno : 0;
}

static void raw_valid(double t, uint64_t *sec, uint32_t *nsec)
{
	*sec = (uint64_t)t;
	*nsec = (uint32_t)((t - (double)*sec) * 1e9);
}

/* The kernel's attributes of st, as libfuse's convert_stat makes them. */
static void raw_attr(struct fuse_attr *a, const struct stat *st)
{
	*a = (struct fuse_attr){
		.ino = st->st_ino, .size = (uint64_t)st->st_size, .blocks = (uint64_t)st->st_blocks,
		.atime = (uint64_t)st->st_atim.tv_sec, .mtime = (uint64_t)st->st_mtim.tv_sec,
		.ctime = (uint64_t)st->st_ctim.tv_sec, .atimensec = (uint32_t)st->st_atim.tv_nsec,
		.mtimensec = (uint32_t)st->st_mtim.tv_nsec,
		.ctimensec = (uint32_t)st->st_ctim.tv_nsec, .mode = st->st_mode,
		.nlink = (uint32_t)st->st_nlink, .uid = st->st_uid, .gid = st->st_gid,
		.rdev = (uint32_t)st->st_rdev, .blksize = (uint32_t)st->st_blksize,
	};
}

/* O_TMPFILE: as op_create, without a name (hfs_tmpfile). */
static void raw_tmpfile(int fd, const struct hfs_raw *r)
{
	struct hfs_inode *dir = hfs_iget(r->nodeid), *i;
	struct hfs_ctx ctx = { .uid = r->uid, .gid = r->gid, .umask = r->create.umask,
			       .acl = true }; /* no groups: nothing on this path asks */
	struct fuse_file_info fi = { .flags = (int)r->create.flags };
	struct hfs_completion done = { 0 };
	struct fuse_entry_out eo = { 0 };
	struct fuse_open_out oo = { 0 };
	struct stat st;
	int ret;

	if (!dir) {
		raw_reply(fd, r->unique, -ESTALE, NULL, 0, NULL, 0);
		return;
	}
	ret = hfs_tmpfile(dir, S_IFREG | (r->create.mode & 07777), &ctx, &i, &done);
	if (!ret) {
		ret = hfs_open(i, fi.flags & ~O_TRUNC, &ctx, &done);
		if (ret)
			hfs_iput(i, 1);
	}
	if (ret) {
		raw_reply(fd, r->unique, ret, NULL, 0, NULL, 0);
		return;
	}
	file_flags(i, &fi);
	hfs_complete_wait(&done);
	hfs_stat(i, &st);
	eo.nodeid = i->ino;
	eo.generation = i->gen;
	raw_valid(entry_timeout(dir), &eo.entry_valid, &eo.entry_valid_nsec);
	raw_valid(attr_timeout(i), &eo.attr_valid, &eo.attr_valid_nsec);
	raw_attr(&eo.attr, &st);
	oo.open_flags = (fi.direct_io ? FOPEN_DIRECT_IO : 0) | (fi.keep_cache ? FOPEN_KEEP_CACHE : 0) |
			(fi.noflush ? FOPEN_NOFLUSH : 0);
	/* the open handle's, after the last look at i: the forget and release that follow the
	 * reply come in on other threads (hfs_iref) */
	hfs_iref(i, 1);
	if (raw_reply(fd, r->unique, 0, &eo, sizeof(eo), &oo, sizeof(oo))) {
		hfs_release(i, fi.flags);
		hfs_iput(i, 2);
	}
}

static struct hfs_fuse_sx_time raw_sx_time(struct timespec t)
{
	return (struct hfs_fuse_sx_time){ .tv_sec = t.tv_sec, .tv_nsec = (uint32_t)t.tv_nsec };
}

/* statx: what getattr says (hfs_stat), and the creation time. */
static void raw_statx(int fd, const struct hfs_raw *r)
{
	struct hfs_inode *i = hfs_iget(r->nodeid);
	struct hfs_fuse_statx_out o = { 0 };
	struct stat st;

	if (!i) {
		raw_reply(fd, r->unique, -ESTALE, NULL, 0, NULL, 0);
		return;
	}
	hfs_stat(i, &st);
	raw_valid(attr_timeout(i), &o.attr_valid, &o.attr_valid_nsec);
	o.stat = (struct hfs_fuse_statx){
		.mask = STATX_BASIC_STATS | STATX_BTIME, .blksize = (uint32_t)st.st_blksize,
		.nlink = (uint32_t)st.st_nlink, .uid = st.st_uid, .gid = st.st_gid,
		.mode = (uint16_t)st.st_mode, .ino = st.st_ino, .size = (uint64_t)st.st_size,
		.blocks = (uint64_t)st.st_blocks, .atime = raw_sx_time(st.st_atim),
		.btime = raw_sx_time(i->btime), .ctime = raw_sx_time(st.st_ctim),
		.mtime = raw_sx_time(st.st_mtim), .rdev_major = major(st.st_rdev),
		.rdev_minor = minor(st.st_rdev),
	};
	raw_reply(fd, r->unique, 0, &o, sizeof(o), NULL, 0);
}

bool hfs_raw_dispatch(int fd, const void *buf, size_t n)
{
	struct hfs_raw r;
	int ret = hfs_raw_parse(buf, n, &r);

	if (!ret)
		return false;
	if (ret < 0) {
		hfs_log(HFS_LOG_WARNING, "a malformed request (opcode %u, %zu bytes): refused",
			r.opcode, n);
		if (r.unique)
			raw_reply(fd, r.unique, ret, NULL, 0, NULL, 0);
	} else if (r.opcode == HFS_FUSE_TMPFILE) {
		raw_tmpfile(fd, &r);
	} else {
		raw_statx(fd, &r);
	}
	return true;
}
