/*
 * image.c — heap images (docs/IMAGE.md "heap image stream"): save a heap, restore one, and
 * the record applier that restores and a mirror (fs/repl) go through.
 *
 * Save walks the heap's tree depth first from its directory (id 1), with a stack of its
 * own (never recursion: a tree may be as deep as the heap has directories), and writes,
 * for an inode the first time a name of it is reached: INODE, SYMLINK (its target), LINK
 * (that name), its XATTRs, its DATA straight from heap memory; a later name of the same
 * inode is one more LINK.  So every record refers to inodes by their identity (hfs_inode.id), a
 * directory comes before what it holds, and a reader never needs to look ahead.
 *
 * Restore reads the stream in one pass and hands each record to the applier, which calls
 * the same core functions the FUSE edge calls (hfs_create, hfs_link, hfs_write,
 * hfs_setxattr, hfs_setattr, hfs_truncate, hfs_rename, hfs_unlink, ...), never FUSE, with
 * its own completion saying it is the applier: the one caller that may change a mirror
 * (hfs_writable).
 * Attributes an apply would disturb (modes, owners, times; a directory's mtime moves with
 * each entry) are set once at the end.  Any refusal (of the stream or of an apply) fails
 * the whole restore: the caller refuses to mount, so no half heap is ever served.
 *
 * A live heap is saved as Redis saves: hfs_image_snapshot forks while it holds hfs.ns and
 * the heap's quiesce lock exclusive (so no change is half done), and the child writes the
 * image from its copy-on-write view into a pipe while the daemon goes on serving; writers
 * wait only for the fork.  A resync pre-copies instead (hfs_image_live): under the same
 * locks the tree without the files' bytes goes into a memfd; then a thread streams it and
 * copies each file's bytes under the file's read lock as they are by then (the caller
 * replays the changes made since, which makes them right).
 *
 * Locking: save reads the tree without locks, so its caller guarantees that nothing
 * changes the heap meanwhile (the session loop has ended, the snapshot child, or
 * hfs_image_live holding hfs.ns and the quiesce lock exclusive); the live copy's thread
 * reads each file under its read lock.  The
 * applier takes the locks its core calls take; one applier per heap at a time.
 */
#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/wait.h>

#include "core.h"
#include "img.h"

static uint32_t img_kind_of(enum hfs_kind k)
{
	switch (k) {
	case HFS_DIR:
		return IMG_K_DIR;
	case HFS_REG:
		return IMG_K_REG;
	case HFS_LNK:
		return IMG_K_LNK;
	default:
		return IMG_K_SPECIAL;
	}
}

void hfs_img_inode(const struct hfs_inode *i, struct img_inode *in)
{
	*in = (struct img_inode){
		.id = i->id, .kind = img_kind_of(i->kind), .mode = i->mode, .uid = i->uid,
		.gid = i->gid, .rdev = i->rdev, .nlink = (uint32_t)i->nlink, .size = i->size,
		.atime_ns = hfs_ts_ns(i->atime), .mtime_ns = hfs_ts_ns(i->mtime),
		.ctime_ns = hfs_ts_ns(i->ctime),
	};
}

/* ---- save --------------------------------------------------------------------------- */

struct seen {
	UT_hash_handle hh;
	uint64_t id;
};

/* A regular file whose bytes a live save copies after the thaw: its size at the freeze. */
struct live_file {
	struct hfs_inode *i; /* one reference of the save's */
	uint64_t size;
};

struct saver {
	struct img_w *w;
	struct buddy *b;
	struct seen *seen;
	/* a live save (hfs_image_live): files' bytes are not written now but listed here */
	bool live;
	struct live_file *files;
	size_t nfiles, cap;
};

/* A live save: note i's bytes to copy after the thaw (and hold i until then). */
static int live_note(struct saver *s, struct hfs_inode *i)
{
	if (!i->size)
		return 0;
	if (s->nfiles == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		struct live_file *f = realloc(s->files, cap * sizeof(*f));

		if (!f)
			return -ENOMEM;
		s->files = f;
		s->cap = cap;
	}
	hfs_iref(i, 1);
	s->files[s->nfiles++] = (struct live_file){ .i = i, .size = i->size };
	return 0;
}

static int save_data(struct saver *s, struct hfs_inode *i)
{
	for (size_t k = 0; k < i->file.n; k++) {
		const struct hfs_ext *e = &i->file.ext[k];
		uint64_t n = 1ull << e->order;
		int ret;

		if (e->foff >= i->size)
			break;
		if (n > i->size - e->foff)
			n = i->size - e->foff;
		ret = img_w_data(s->w, i->id, e->foff, buddy_ptr(s->b, e->hoff), n);
		if (ret)
			return ret;
	}
	return 0;
}

static int save_inode(struct saver *s, struct hfs_inode *i)
{
	struct img_inode in;
	int ret;

	hfs_img_inode(i, &in);
	ret = img_w_inode(s->w, &in);
	if (!ret && i->kind == HFS_LNK)
		ret = img_w_symlink(s->w, i->id, i->lnk.target);
	return ret;
}

static int save_rest(struct saver *s, struct hfs_inode *i)
{
	struct hfs_xattr *x, *tmp;
	int ret = 0;

	HASH_ITER(hh, i->xattrs, x, tmp) {
		ret = img_w_xattr(s->w, i->id, x->name, x->value, (uint32_t)x->size);
		if (ret)
			return ret;
	}
	if (i->kind != HFS_REG)
		return 0;
	return s->live ? live_note(s, i) : save_data(s, i);
}

/* One directory being written: the entry to write next (a frame of save_tree's stack). */
struct save_frame {
	struct hfs_inode *dir;
	struct hfs_dirent *next;
};

/* One entry of dir: 1 when its inode was new and is now written whole, 0 when this was
 * one more LINK of an inode written before, or -errno. */
static int save_entry(struct saver *s, struct hfs_inode *dir, struct hfs_dirent *de)
{
	struct hfs_inode *i = de->inode;
	struct seen *sn;
	int ret;

	HASH_FIND(hh, s->seen, &i->id, sizeof(i->id), sn);
	if (sn) /* one more name of an inode already written */
		return img_w_link(s->w, dir->id, i->id, de->name);
	sn = malloc(sizeof(*sn));
	if (!sn)
		return -ENOMEM;
	sn->id = i->id;
	HASH_ADD(hh, s->seen, id, sizeof(sn->id), sn);
	ret = save_inode(s, i);
	if (!ret)
		ret = img_w_link(s->w, dir->id, i->id, de->name);
	if (!ret)
		ret = save_rest(s, i);
	return ret ? ret : 1;
}

/* Everything below top, depth first.  The walk keeps its own stack of directories on the
 * daemon's heap (one frame per level, so bounded by the directories the heap holds):
 * however deep a tree is, it never recurses on a thread's stack. */
static int save_tree(struct saver *s, struct hfs_inode *top)
{
	struct save_frame *st = malloc(sizeof(*st)), *f;
	size_t n = 1, cap = 1;
	int ret = 0;

	if (!st)
		return -ENOMEM;
	st[0] = (struct save_frame){ .dir = top, .next = top->dir.ents };
	while (n) {
		struct hfs_dirent *de = st[n - 1].next;

		if (!de) {
			n--; /* this directory is done */
			continue;
		}
		st[n - 1].next = de->hh.next;
		ret = save_entry(s, st[n - 1].dir, de);
		if (ret < 0)
			break;
		if (!ret || de->inode->kind != HFS_DIR)
			continue; /* a directory is entered once, when it is first written */
		ret = 0;
		if (n == cap) {
			f = realloc(st, 2 * cap * sizeof(*st));
			if (!f) {
				ret = -ENOMEM;
				break;
			}
			st = f;
			cap *= 2;
		}
		st[n++] = (struct save_frame){ .dir = de->inode, .next = de->inode->dir.ents };
	}
	free(st);
	return ret < 0 ? ret : 0;
}

/* The stream up to its end: the header, the heap directory, its tree (s->live: without
 * the files' bytes); s->w is open on fd afterwards, also after an error. */
static int save_heap(struct hfs_heap *h, int fd, struct saver *s)
{
	struct img_hdr hd = { .heap_size = h->pol.size, .min_order = h->min_order,
			      .layout = h->pol.layout == CONF_LAYOUT_CONTIGUOUS };
	struct seen *sn, *tmp;
	int ret;

	s->b = h->b;
	snprintf(hd.name, sizeof(hd.name), "%s", h->pol.name);
	ret = img_w_open(fd, &hd, &s->w);
	if (ret)
		return ret;
	/* the heap directory: its own attributes and xattrs, under id 1 */
	ret = save_inode(s, h->dir);
	if (!ret)
		ret = save_rest(s, h->dir);
	if (!ret)
		ret = save_tree(s, h->dir);
	HASH_ITER(hh, s->seen, sn, tmp) {
		HASH_DEL(s->seen, sn);
		free(sn);
	}
	return ret;
}

int hfs_image_write(struct hfs_heap *h, int fd)
{
	struct saver s = { 0 };
	int ret = save_heap(h, fd, &s);

	if (!ret)
		ret = img_w_finish(s.w);
	img_w_free(s.w);
	return ret;
}

int hfs_image_save(struct hfs_heap *h, const char *path)
{
	struct img_save sv;
	int ret = img_save_open(path, &sv);

	if (ret)
		return ret;
	ret = hfs_image_write(h, sv.fd);
	if (ret) {
		img_save_abort(&sv);
		return ret;
	}
	return img_save_commit(&sv);
}

/* ---- apply -------------------------------------------------------------------------- */

/* Every record comes from outside (an image file, a partner) and is checked against the
 * heap before anything is changed: ids, parents and names exist and are of the right kind,
 * kind and mode agree, offsets and sizes lie inside the heap (bounds before arithmetic).
 * A record that cannot apply is refused whole, with the reason in why: -EBADMSG, or
 * -ENOSPC/-ENOMEM/-EIO when the record is sound but this heap or host cannot take it now. */

/* Identities above this are refused: the heap's next new inode gets id + 1, which must
 * never wrap to 0 (no heap) or to the root's 1.  No writer ever counts that far. */
#define ID_MAX (UINT64_MAX >> 1)

/* What the applier knows of one inode identity. */
struct known {
	UT_hash_handle hh;
	uint64_t id;
	struct img_inode in;      /* as the INODE record gave it (attributes set at the end) */
	char *target;             /* SYMLINK, until the inode is made */
	struct hfs_inode *i;      /* made (holds one reference of ours), or NULL */
};

struct hfs_apply {
	struct hfs_heap *h;
	struct known *known;
	char *buf;                /* DATA bounce buffer, IMG_DATA_MAX bytes */
	bool live;                /* a mirror's: see hfs_apply_live */
	struct hfs_completion c;  /* of every change it makes: the applier's */
	char *why;
	size_t whylen;
};

/* Refuse the record: why says what (and, for an error of the core, its errno). */
__attribute__((format(printf, 3, 4)))
static int refuse(struct hfs_apply *a, int ret, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(a->why, a->whylen, fmt, ap);
	va_end(ap);
	if (ret < 0 && n >= 0 && (size_t)n < a->whylen)
		snprintf(a->why + n, a->whylen - (size_t)n, " (%s)", strerror(-ret));
	return ret == -ENOSPC || ret == -ENOMEM || ret == -EIO ? ret : -EBADMSG;
}

static struct known *find(struct hfs_apply *a, uint64_t id)
{
	struct known *k;

	HASH_FIND(hh, a->known, &id, sizeof(id), k);
	return k;
}

/* The made inode of id: the heap directory for id 1. */
static struct hfs_inode *made(struct hfs_apply *a, uint64_t id)
{
	struct known *k = find(a, id);

	return k ? k->i : NULL;
}

int hfs_apply_begin(struct hfs_heap *h, char *why, size_t whylen, struct hfs_apply **out)
{
	struct hfs_apply *a = calloc(1, sizeof(*a));
	struct known *root = calloc(1, sizeof(*root));

	if (!a || !root || !(a->buf = malloc(IMG_DATA_MAX))) {
		free(root);
		if (a)
			free(a->buf);
		free(a);
		return -ENOMEM;
	}
	a->h = h;
	a->c.applier = true;
	a->why = why;
	a->whylen = whylen;
	root->id = IMG_ROOT_ID;
	root->i = h->dir;
	hfs_iref(h->dir, 1);
	HASH_ADD(hh, a->known, id, sizeof(root->id), root);
	*out = a;
	return 0;
}

/* Do an INODE record's kind and mode agree (and say something an inode can be)? */
static bool kind_agrees(uint32_t kind, uint32_t mode)
{
	uint32_t fmt = mode & S_IFMT;

	if (mode & ~(uint32_t)(S_IFMT | 07777))
		return false;
	switch (kind) {
	case IMG_K_REG:
		return fmt == S_IFREG;
	case IMG_K_DIR:
		return fmt == S_IFDIR;
	case IMG_K_LNK:
		return fmt == S_IFLNK;
	case IMG_K_SPECIAL:
		return fmt == S_IFCHR || fmt == S_IFBLK || fmt == S_IFIFO || fmt == S_IFSOCK;
	default:
		return false;
	}
}

static int apply_inode(struct hfs_apply *a, const struct img_inode *in)
{
	unsigned long long id = in->id;
	struct known *k = find(a, in->id);

	if (!in->id || in->id > ID_MAX)
		return refuse(a, 0, "inode id %llu is out of range", id);
	if (!kind_agrees(in->kind, in->mode))
		return refuse(a, 0, "inode %llu: kind %u and mode 0%o disagree", id, in->kind,
			      in->mode);
	if (in->kind == IMG_K_REG && in->size > hfs_file_max(a->h))
		return refuse(a, 0, "inode %llu: a size of %llu, past the largest file", id,
			      (unsigned long long)in->size);
	if (in->id == IMG_ROOT_ID && (in->kind != IMG_K_DIR || k->in.id))
		return refuse(a, 0, in->kind != IMG_K_DIR ? "the root (inode %llu) is no directory"
			      : "a second root (inode %llu)", id);
	if (k && in->id != IMG_ROOT_ID)
		return refuse(a, 0, "inode %llu appears twice", id);
	if (!k) {
		/* described but not yet named inodes hold daemon memory: no more of them
		 * than the heap may have inodes */
		if (HASH_COUNT(a->known) >= a->h->max_inodes)
			return refuse(a, -ENOSPC, "inode %llu: more inodes than the heap may hold",
				      id);
		k = calloc(1, sizeof(*k));
		if (!k)
			return -ENOMEM;
		k->id = in->id;
		HASH_ADD(hh, a->known, id, sizeof(k->id), k);
	}
	k->in = *in;
	return 0;
}

/* need()'s kind for records that apply to inodes of any kind (the applier never makes a
 * status file, so no made inode is of this kind). */
#define ANY_KIND HFS_STATUS

/* The made inode of id, of kind (or ANY_KIND); else NULL, and why says why not. */
static struct hfs_inode *need(struct hfs_apply *a, uint64_t id, enum hfs_kind kind)
{
	struct hfs_inode *i = made(a, id);

	if (!i) {
		refuse(a, 0, "a record for inode %llu, which has no name yet",
		       (unsigned long long)id);
	} else if (kind != ANY_KIND && i->kind != kind) {
		refuse(a, 0, "a record for inode %llu, which is no %s", (unsigned long long)id,
		       kind == HFS_DIR ? "directory" : "regular file");
		i = NULL;
	}
	return i;
}

/* A new inode of k, named name in dir, made as the records described it. */
static int make(struct hfs_apply *a, struct known *k, struct hfs_inode *dir, const char *name)
{
	struct hfs_ctx ctx = { .uid = k->in.uid, .gid = k->in.gid };
	struct hfs_inode *i;
	int ret;

	if (k->in.kind == IMG_K_LNK && !k->target)
		return refuse(a, 0, "symlink %llu without a target", (unsigned long long)k->id);
	ret = hfs_create(dir, name, k->in.mode, (dev_t)k->in.rdev, k->target, &ctx, &i,
			 &a->c);
	if (ret)
		return ret;
	k->i = i; /* hfs_create's lookup reference becomes ours */
	hfs_inode_set_id(i, k->id);
	/* the whole size at once: a contiguous file does not move at every power of two its
	 * DATA records reach (apply_inode bounded the size by the heap's); an extents file
	 * only takes its size, its DATA records take the blocks (what they skip is a hole) */
	if (i->kind == HFS_REG && k->in.size)
		ret = a->h->pol.layout == CONF_LAYOUT_CONTIGUOUS ?
		      hfs_fallocate(i, 0, 0, (off_t)k->in.size, &a->c) :
		      hfs_truncate(i, k->in.size, &a->c);
	if (ret) { /* no room: the name goes again, so nothing of the record stays */
		hfs_unlink(dir, name, &a->c);
		hfs_iput(i, 1);
		k->i = NULL;
	}
	return ret;
}

static int apply_link(struct hfs_apply *a, const struct img_rec *rec)
{
	unsigned long long child = rec->u.link.child;
	struct known *k = find(a, rec->u.link.child);
	struct hfs_inode *dir = need(a, rec->u.link.parent, HFS_DIR);
	int ret;

	if (!dir)
		return -EBADMSG;
	if (!k)
		return refuse(a, 0, "a name for inode %llu, never described", child);
	if (k->i && k->i->kind == HFS_DIR) /* the root too: a directory has one name */
		return refuse(a, 0, "a second name for directory %llu", child);
	if (k->i) {
		ret = hfs_link(k->i, dir, rec->s1, &a->c);
		if (!ret)
			hfs_iput(k->i, 1); /* hfs_link's lookup reference: ours is k->i's */
	} else {
		ret = make(a, k, dir, rec->s1);
	}
	if (ret && !a->why[0])
		return refuse(a, ret, "cannot add the name '%s' for inode %llu in directory %llu",
			      rec->s1, child, (unsigned long long)rec->u.link.parent);
	return ret;
}

/* A DATA record's bytes: from the stream (r, into the bounce buffer) or from memory. */
static int apply_data(struct hfs_apply *a, struct img_r *r, const struct img_rec *rec,
		      const void *bytes)
{
	struct hfs_inode *i = need(a, rec->u.data.id, HFS_REG);
	uint64_t off = rec->u.data.off;
	int ret;

	if (!i)
		return -EBADMSG;
	if (off > hfs_file_max(a->h) || rec->data_len > hfs_file_max(a->h) - off)
		return refuse(a, 0, "the data of inode %llu at %llu lies past the largest file",
			      (unsigned long long)rec->u.data.id, (unsigned long long)off);
	if (!bytes) {
		ret = img_r_data(r, a->buf);
		if (ret)
			return ret;
		bytes = a->buf;
	}
	ret = hfs_write(i, bytes, rec->data_len, (off_t)off, NULL, &a->c);
	if (ret >= 0 && (uint32_t)ret != rec->data_len)
		ret = -ENOSPC;
	return ret < 0 ? refuse(a, ret, "the data of inode %llu does not fit the heap",
				(unsigned long long)rec->u.data.id) : 0;
}

static int apply_setattr(struct hfs_apply *a, struct hfs_inode *i, const struct img_setattr *sa)
{
	static const unsigned bits[][2] = {
		{ IMG_SET_MODE, HFS_SET_MODE }, { IMG_SET_UID, HFS_SET_UID },
		{ IMG_SET_GID, HFS_SET_GID }, { IMG_SET_SIZE, HFS_SET_SIZE },
		{ IMG_SET_ATIME, HFS_SET_ATIME }, { IMG_SET_MTIME, HFS_SET_MTIME },
		{ IMG_SET_CTIME, HFS_SET_CTIME },
	};
	struct hfs_attr at = { .mode = sa->mode, .uid = sa->uid, .gid = sa->gid, .size = sa->size,
			       .atime = hfs_ns_ts(sa->atime_ns), .mtime = hfs_ns_ts(sa->mtime_ns),
			       .ctime = hfs_ns_ts(sa->ctime_ns) };
	unsigned mask = 0;

	for (size_t k = 0; k < sizeof(bits) / sizeof(bits[0]); k++)
		if (sa->mask & bits[k][0])
			mask |= bits[k][1];
	if (i->kind != HFS_REG)
		mask &= ~HFS_SET_SIZE;
	return hfs_setattr(i, &at, mask, NULL, &a->c);
}

#define IMG_SET_ALL (IMG_SET_MODE | IMG_SET_UID | IMG_SET_GID | IMG_SET_SIZE | IMG_SET_ATIME | \
		     IMG_SET_MTIME | IMG_SET_CTIME)

/* Can the SETATTR apply to i: its mask, its mode (type bits, if any, i's own), its size? */
static int setattr_check(struct hfs_apply *a, struct hfs_inode *i, const struct img_setattr *sa)
{
	unsigned long long id = sa->id;

	if (sa->mask & ~IMG_SET_ALL)
		return refuse(a, 0, "SETATTR of inode %llu: mask 0x%x has unknown bits", id,
			      sa->mask);
	if (sa->mask & IMG_SET_MODE && (sa->mode & ~(uint32_t)(S_IFMT | 07777) ||
					 (sa->mode & S_IFMT && (sa->mode & S_IFMT) != (i->mode & S_IFMT))))
		return refuse(a, 0, "SETATTR of inode %llu: mode 0%o is not its kind's", id,
			      sa->mode);
	if (sa->mask & IMG_SET_SIZE && i->kind == HFS_REG && sa->size > hfs_file_max(a->h))
		return refuse(a, 0, "SETATTR of inode %llu: a size past the largest file", id);
	return 0;
}

/* A SETATTR changes what the end sets too (else the INODE record's values would win). */
static void remember(struct known *k, const struct img_setattr *sa)
{
	if (sa->mask & IMG_SET_MODE)
		k->in.mode = (k->in.mode & S_IFMT) | (sa->mode & 07777);
	if (sa->mask & IMG_SET_UID)
		k->in.uid = sa->uid;
	if (sa->mask & IMG_SET_GID)
		k->in.gid = sa->gid;
	if (sa->mask & IMG_SET_ATIME)
		k->in.atime_ns = sa->atime_ns;
	if (sa->mask & IMG_SET_MTIME)
		k->in.mtime_ns = sa->mtime_ns;
	if (sa->mask & IMG_SET_CTIME)
		k->in.ctime_ns = sa->ctime_ns;
}

/* What name in directory d refers to now, referenced (NULL: nothing). */
static struct hfs_inode *victim(struct hfs_inode *d, const char *name)
{
	struct hfs_inode *i;

	pthread_rwlock_rdlock(&hfs.ns);
	i = __hfs_dir_find(d, name);
	if (i)
		hfs_iref(i, 1);
	pthread_rwlock_unlock(&hfs.ns);
	return i;
}

/* After an unlink or a rename over it: when i lost its last name, the applier lets go of
 * it too (a mirror applies for as long as it runs; holding every inode it ever made would
 * keep the data of removed files).  Drops the reference victim() took. */
static void forget(struct hfs_apply *a, struct hfs_inode *i)
{
	struct known *k;

	if (!i)
		return;
	k = i->nlink == 0 ? find(a, i->id) : NULL;
	if (k && k->i == i && k->id != IMG_ROOT_ID) {
		HASH_DEL(a->known, k);
		hfs_iput(k->i, 1);
		free(k->target);
		free(k);
	}
	hfs_iput(i, 1);
}

static int apply_unlink(struct hfs_apply *a, const struct img_rec *rec)
{
	struct hfs_inode *d = need(a, rec->u.unlink.parent, HFS_DIR), *i;
	int ret;

	if (!d)
		return -EBADMSG;
	i = victim(d, rec->s1);
	if (!i)
		return refuse(a, 0, "UNLINK of '%s', which directory %llu does not have", rec->s1,
			      (unsigned long long)rec->u.unlink.parent);
	ret = i->kind == HFS_DIR ? hfs_rmdir(d, rec->s1, &a->c) : hfs_unlink(d, rec->s1, &a->c);
	forget(a, i);
	return ret ? refuse(a, ret, "UNLINK of '%s' in directory %llu", rec->s1,
			    (unsigned long long)rec->u.unlink.parent) : 0;
}

static int apply_rename(struct hfs_apply *a, const struct img_rec *rec)
{
	const struct img_rename *rn = &rec->u.rename;
	struct hfs_inode *d = need(a, rn->old_parent, HFS_DIR), *nd, *i;
	int ret;

	nd = d ? need(a, rn->new_parent, HFS_DIR) : NULL;
	if (!nd)
		return -EBADMSG;
	i = victim(d, rec->s1);
	if (!i)
		return refuse(a, 0, "RENAME of '%s', which directory %llu does not have", rec->s1,
			      (unsigned long long)rn->old_parent);
	hfs_iput(i, 1);
	i = rn->flags & RENAME_EXCHANGE ? NULL : victim(nd, rec->s2);
	ret = hfs_rename(d, rec->s1, nd, rec->s2, rn->flags, &a->c);
	forget(a, i);
	return ret ? refuse(a, ret, "RENAME of '%s' in directory %llu to '%s' in %llu", rec->s1,
			    (unsigned long long)rn->old_parent, rec->s2,
			    (unsigned long long)rn->new_parent) : 0;
}

/* The change records: what a mirror applies (a saved heap holds none, but a stream may). */
static int apply_change(struct hfs_apply *a, const struct img_rec *rec)
{
	struct hfs_inode *i;
	int ret;

	switch (rec->type) {
	case IMG_TRUNCATE:
		i = need(a, rec->u.truncate.id, HFS_REG);
		if (!i)
			return -EBADMSG;
		if (rec->u.truncate.size > hfs_file_max(a->h))
			return refuse(a, 0, "TRUNCATE of inode %llu past the largest file",
				      (unsigned long long)rec->u.truncate.id);
		ret = hfs_truncate(i, rec->u.truncate.size, &a->c);
		return ret ? refuse(a, ret, "TRUNCATE of inode %llu",
				    (unsigned long long)rec->u.truncate.id) : 0;
	case IMG_SETATTR:
		i = need(a, rec->u.setattr.id, ANY_KIND);
		ret = i ? setattr_check(a, i, &rec->u.setattr) : -EBADMSG;
		if (!ret)
			ret = apply_setattr(a, i, &rec->u.setattr);
		if (!ret)
			remember(find(a, rec->u.setattr.id), &rec->u.setattr);
		return ret && !a->why[0] ? refuse(a, ret, "SETATTR of inode %llu",
						  (unsigned long long)rec->u.setattr.id) : ret;
	case IMG_PUNCH:
		i = need(a, rec->u.punch.id, HFS_REG);
		if (!i)
			return -EBADMSG;
		if (rec->u.punch.off > HFS_FILE_MAX || rec->u.punch.len > HFS_FILE_MAX - rec->u.punch.off)
			return refuse(a, 0, "PUNCH of inode %llu past the largest file",
				      (unsigned long long)rec->u.punch.id);
		ret = hfs_fallocate(i, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				    (off_t)rec->u.punch.off, (off_t)rec->u.punch.len, &a->c);
		return ret ? refuse(a, ret, "PUNCH of inode %llu",
				    (unsigned long long)rec->u.punch.id) : 0;
	case IMG_REMOVEXATTR:
		i = need(a, rec->u.removexattr.id, ANY_KIND);
		ret = i ? hfs_removexattr(i, rec->s1, &a->c) : -EBADMSG;
		return ret && i ? refuse(a, ret, "REMOVEXATTR of '%s' from inode %llu", rec->s1,
					 (unsigned long long)rec->u.removexattr.id) : ret;
	case IMG_UNLINK:
		return apply_unlink(a, rec);
	case IMG_RENAME:
		return apply_rename(a, rec);
	default:
		return refuse(a, 0, "record type %u cannot be applied", rec->type);
	}
}

int hfs_apply_rec(struct hfs_apply *a, struct img_r *r, const struct img_rec *rec)
{
	return hfs_apply_mem(a, r, rec, NULL);
}

struct hfs_inode *hfs_apply_inode(struct hfs_apply *a, uint64_t id)
{
	return made(a, id);
}

void hfs_apply_live(struct hfs_apply *a)
{
	a->live = true;
}

int hfs_apply_mem(struct hfs_apply *a, struct img_r *r, const struct img_rec *rec,
		  const void *data)
{
	struct known *k;
	struct hfs_inode *i;
	uint64_t id;
	int ret;

	/* A change to a file after its last name went (the owner holds it open): here the
	 * file is gone already (forget), and nothing could ever read what it would write. */
	memcpy(&id, &rec->u, sizeof(id)); /* each of these records starts with the id */
	if (a->live && !made(a, id) &&
	    (rec->type == IMG_DATA || rec->type == IMG_TRUNCATE || rec->type == IMG_SETATTR ||
	     rec->type == IMG_PUNCH ||
	     rec->type == IMG_XATTR || rec->type == IMG_REMOVEXATTR))
		return 0;

	a->why[0] = 0;
	switch (rec->type) {
	case IMG_INODE:
		return apply_inode(a, &rec->u.inode);
	case IMG_SYMLINK:
		k = find(a, rec->u.symlink.id);
		if (!k || k->i || k->target || k->in.kind != IMG_K_LNK)
			return refuse(a, 0, "a symlink target for inode %llu out of place",
				      (unsigned long long)rec->u.symlink.id);
		k->target = strdup(rec->s1);
		return k->target ? 0 : -ENOMEM;
	case IMG_LINK:
		return apply_link(a, rec);
	case IMG_DATA:
		return apply_data(a, r, rec, data);
	case IMG_XATTR:
		i = need(a, rec->u.xattr.id, ANY_KIND);
		if (!i)
			return -EBADMSG;
		ret = hfs_setxattr(i, rec->s1, rec->s2, rec->u.xattr.value_len, HFS_XATTR_RESTORE,
				   &a->c);
		return ret ? refuse(a, ret, "xattr '%s' of inode %llu refused", rec->s1,
				    (unsigned long long)rec->u.xattr.id) : 0;
	default:
		ret = apply_change(a, rec);
		return ret && !a->why[0] ? refuse(a, ret, "a change record (type %u) failed",
						  rec->type) : ret;
	}
}

/* Set what the applies disturbed (modes, owners, times). */
int hfs_apply_settle(struct hfs_apply *a)
{
	struct known *k, *tmp;
	int ret = 0;

	HASH_ITER(hh, a->known, k, tmp) {
		if (k->i && !ret && (k->id != IMG_ROOT_ID || k->in.id)) {
			struct img_setattr sa = {
				.mask = IMG_SET_MODE | IMG_SET_UID | IMG_SET_GID | IMG_SET_ATIME |
					IMG_SET_MTIME | IMG_SET_CTIME,
				.mode = k->in.mode, .uid = k->in.uid, .gid = k->in.gid,
				.atime_ns = k->in.atime_ns, .mtime_ns = k->in.mtime_ns,
				.ctime_ns = k->in.ctime_ns,
			};

			ret = apply_setattr(a, k->i, &sa);
		}
	}
	return ret;
}

/* Settle (finish), then drop our references. */
int hfs_apply_end(struct hfs_apply *a, bool finish)
{
	struct known *k, *tmp;
	int ret = finish ? hfs_apply_settle(a) : 0;

	HASH_ITER(hh, a->known, k, tmp) {
		if (k->i)
			hfs_iput(k->i, 1);
		HASH_DEL(a->known, k);
		free(k->target);
		free(k);
	}
	free(a->buf);
	free(a);
	return ret;
}

/* The names in dir now (copies; *n of them), or NULL. */
static char **names_of(struct hfs_inode *dir, size_t *n)
{
	struct hfs_dirent *de, *tmp;
	char **names;

	*n = 0;
	pthread_rwlock_rdlock(&hfs.ns);
	names = calloc(dir->dir.nents + 1, sizeof(*names));
	HASH_ITER(hh, dir->dir.ents, de, tmp) {
		if (names && *n < dir->dir.nents)
			names[(*n)++] = strdup(de->name);
	}
	pthread_rwlock_unlock(&hfs.ns);
	return names;
}

/* A directory being emptied: its names then, and the next one to remove. */
struct clear_frame {
	struct hfs_inode *dir; /* referenced (but the top one: the caller's) */
	char **names;
	size_t n, k;
};

/* clear_dir's stack of directories being emptied, the deepest last. */
struct clear_stack {
	struct clear_frame *f;
	size_t depth, cap;
};

/* The deepest directory is empty now: it goes from its parent (if it has a frame; the
 * top one stays), whose next name is then due.  What the rmdir said. */
static int clear_pop(struct clear_stack *s, struct hfs_completion *c)
{
	struct clear_frame *f = &s->f[--s->depth], *up;
	int ret;

	for (size_t k = 0; k < f->n; k++)
		free(f->names[k]);
	free(f->names);
	if (!s->depth)
		return 0;
	up = &s->f[s->depth - 1];
	ret = hfs_rmdir(up->dir, up->names[up->k], c);
	hfs_kcache_entry(up->dir->ino, up->names[up->k]);
	hfs_iput(f->dir, 1);
	up->k++;
	return ret;
}

/* Directory i (the lookup's reference) is emptied next: a frame of its own, or -ENOMEM
 * (i's reference put back). */
static int clear_push(struct clear_stack *s, struct hfs_inode *i)
{
	struct clear_frame *f;

	if (s->depth == s->cap) {
		struct clear_frame *more = realloc(s->f, 2 * s->cap * sizeof(*more));

		if (!more)
			goto fail;
		s->f = more;
		s->cap *= 2;
	}
	f = &s->f[s->depth];
	*f = (struct clear_frame){ .dir = i };
	f->names = names_of(i, &f->n);
	if (!f->names)
		goto fail;
	s->depth++;
	return 0;
fail:
	hfs_iput(i, 1);
	return -ENOMEM;
}

/* Remove everything below top, deepest first, with a stack of its own on the heap (one
 * frame per level: however deep a tree is, no recursion).  A name that goes away meanwhile
 * is skipped; the first error is returned after the rest was tried. */
static int clear_dir(struct hfs_inode *top, struct hfs_completion *c)
{
	struct clear_stack s = { .f = malloc(16 * sizeof(*s.f)), .cap = 16 };
	int ret = 0;

	if (!s.f || !(s.f[0].names = names_of(top, &s.f[0].n))) {
		free(s.f);
		return -ENOMEM;
	}
	s.f[0].dir = top;
	s.f[0].k = 0;
	s.depth = 1;
	while (s.depth) {
		struct clear_frame *f = &s.f[s.depth - 1];
		struct hfs_inode *i;
		const char *name;

		if (f->k == f->n) {
			ret = clear_pop(&s, c) ?: ret;
			continue;
		}
		name = f->names[f->k];
		if (!name || hfs_lookup(f->dir, name, &i)) {
			ret = ret ?: (name ? 0 : -ENOMEM);
			f->k++;
		} else if (i->kind != HFS_DIR) {
			ret = hfs_unlink(f->dir, name, c) ?: ret;
			/* it may have been cached while this heap was ours (a day's timeout) */
			hfs_kcache_entry(f->dir->ino, name);
			hfs_iput(i, 1);
			f->k++;
		} else if (clear_push(&s, i)) {
			ret = -ENOMEM;
			s.f[s.depth - 1].k++; /* f may have moved with the stack */
		}
	}
	free(s.f);
	return ret;
}

int hfs_apply_clear(struct hfs_heap *h)
{
	struct hfs_completion c = { .applier = true };

	return clear_dir(h->dir, &c);
}

int hfs_image_restore(struct hfs_heap *h, int fd, char *why, size_t whylen)
{
	struct hfs_apply *a;
	struct img_r *r;
	struct img_rec rec;
	int ret;

	why[0] = 0;
	ret = img_r_open(fd, h->pol.size, &r, why, whylen);
	if (ret)
		return ret;
	ret = hfs_apply_begin(h, why, whylen, &a);
	if (ret)
		goto out_r;
	while ((ret = img_r_next(r, &rec)) == 1) {
		ret = hfs_apply_rec(a, r, &rec);
		if (ret)
			break;
	}
	ret = hfs_apply_end(a, ret == 0) ?: ret;
out_r:
	img_r_free(r);
	if (ret && !why[0])
		snprintf(why, whylen, "%s", strerror(-ret));
	return ret;
}

/* ---- at mount and at unmount --------------------------------------------------------- */

/* A restore at mount that takes over a second draws a bar on the terminal that started
 * the daemon (it has not detached yet): a thread watches how far the restore has read
 * the file (the file offset it shares) while this one restores. */
struct watch {
	int fd;
	struct img_progress bar;
	atomic_bool done;
};

static void *watch_thread(void *arg)
{
	struct watch *w = arg;

	while (!atomic_load(&w->done)) {
		off_t at = lseek(w->fd, 0, SEEK_CUR);

		if (at > 0)
			img_progress_update(&w->bar, at);
		usleep(50 * 1000);
	}
	return NULL;
}

static int restore_showing(struct hfs_heap *h, int fd, char *why, size_t whylen)
{
	struct watch w = { .fd = fd };
	struct stat st;
	pthread_t th;
	bool watching;
	int ret;

	img_progress_start(&w.bar, stderr, h->pol.name, fstat(fd, &st) ? 0 : st.st_size);
	watching = w.bar.on && pthread_create(&th, NULL, watch_thread, &w) == 0;
	ret = hfs_image_restore(h, fd, why, whylen);
	if (watching) {
		atomic_store(&w.done, true);
		pthread_join(th, NULL);
	}
	img_progress_end(&w.bar, w.bar.total, ret == 0);
	return ret;
}

int hfs_images_load(void)
{
	char why[256];
	int ret = 0;

	for (unsigned k = 0; k < hfs.nheaps && !ret; k++) {
		struct hfs_heap *h = hfs.heapv[k];
		int fd;

		if (!h->pol.image || !h->pol.image[0])
			continue;
		fd = open(h->pol.image, O_RDONLY | O_CLOEXEC);
		if (fd < 0 && errno == ENOENT)
			continue; /* nothing saved yet: the heap starts empty */
		if (fd < 0) {
			ret = -errno;
			hfs_log(HFS_LOG_ERR, "%s: %s", h->pol.image, strerror(errno));
			break;
		}
		ret = restore_showing(h, fd, why, sizeof(why));
		close(fd);
		if (ret)
			hfs_log(HFS_LOG_ERR, "%s: %s", h->pol.image, why);
	}
	return ret;
}

int hfs_images_save(void)
{
	int ret = 0;

	for (unsigned k = 0; k < hfs.nheaps; k++) {
		struct hfs_heap *h = hfs.heapv[k];
		int r;

		if (!h->pol.image || !h->pol.image[0])
			continue;
		r = hfs_image_save(h, h->pol.image);
		if (r) {
			hfs_log(HFS_LOG_ERR, "%s: not saved (%s); the previous image stays",
				h->pol.image, strerror(-r));
			ret = r;
		}
	}
	return ret;
}

/* ---- a live heap, streamed -------------------------------------------------------- */

int hfs_image_snapshot(struct hfs_heap *h, int *fd, pid_t *pid)
{
	return hfs_image_snapshot_at(h, fd, pid, NULL, NULL);
}

/* Fork a child that writes h's image, frozen at the fork, into out (and closes shut
 * first, -1: none): its pid, or -errno. */
static pid_t fork_image(struct hfs_heap *h, int out, int shut, void (*frozen)(void *),
			void *arg)
{
	pid_t parent = getpid(), c;
	int ret = 0;

	if (buddy_data_fd(h->b) >= 0)
		return -EOPNOTSUPP; /* shared memory: a fork would not freeze it */
	pthread_rwlock_wrlock(&hfs.ns);
	pthread_rwlock_wrlock(&h->quiesce);
	c = h->dir ? fork() : (errno = ENOENT, -1); /* rmdir'd meanwhile */
	if (c == 0) {
		/* the child: this thread alone, the heap as it was; die with the daemon */
		if (shut >= 0)
			close(shut);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		_exit(hfs_image_write(h, out) ? 1 : 0);
	}
	if (c > 0 && frozen)
		frozen(arg); /* still frozen: what changes next comes after the image */
	if (c < 0)
		ret = -errno;
	pthread_rwlock_unlock(&h->quiesce);
	pthread_rwlock_unlock(&hfs.ns);
	return ret ? ret : c;
}

int hfs_image_snapshot_at(struct hfs_heap *h, int *fd, pid_t *pid, void (*frozen)(void *),
			  void *arg)
{
	int p[2];
	pid_t c;

	if (pipe2(p, O_CLOEXEC))
		return -errno;
	/* as large as allowed: the stream crosses it in FUSE reads of up to 1 MiB */
	for (int sz = 1 << 20; sz >= 1 << 16 && fcntl(p[1], F_SETPIPE_SZ, sz) < 0; sz >>= 1)
		;
	c = fork_image(h, p[1], p[0], frozen, arg);
	close(p[1]);
	if (c < 0) {
		close(p[0]);
		return (int)c;
	}
	*fd = p[0];
	*pid = c;
	return 0;
}

int hfs_image_snapshot_to(struct hfs_heap *h, int out, pid_t *pid)
{
	pid_t c = fork_image(h, out, -1, NULL, NULL);

	if (c < 0)
		return (int)c;
	*pid = c;
	return 0;
}

/* ---- a live heap, pre-copied ----------------------------------------------------- */

/* A live save: its thread, what it writes into the pipe, and the files to copy. */
struct hfs_live {
	pthread_t th;
	int fd;                /* the pipe's write end (the thread's) */
	int meta;              /* memfd: the stream as written frozen (all but the bytes) */
	struct saver s;        /* s.w: the stream's writer, now on fd */
	int ret;
};

static void live_free(struct hfs_live *lv)
{
	for (size_t k = 0; k < lv->s.nfiles; k++)
		hfs_iput(lv->s.files[k].i, 1);
	free(lv->s.files);
	img_w_free(lv->s.w);
	if (lv->meta >= 0)
		close(lv->meta);
	if (lv->fd >= 0)
		close(lv->fd);
	free(lv);
}

/* The bytes of file f as they are now, up to its size at the freeze (less, when it
 * shrank since), a CHUNK at a time under its lock; the lock is never held across a write
 * into the pipe (the reader may wait for the link). */
static int live_file(struct hfs_live *lv, const struct live_file *f, char *buf)
{
	enum { CHUNK = 1 << 20 };

	for (uint64_t off = 0, n; off < f->size; off += n) {
		int ret;

		pthread_rwlock_rdlock(&f->i->lock);
		n = f->i->size < f->size ? f->i->size : f->size;
		n = off < n ? (n - off < CHUNK ? n - off : CHUNK) : 0;
		ret = n ? __hfs_file_read(f->i, off, n, buf) : 0;
		pthread_rwlock_unlock(&f->i->lock);
		if (!n || ret)
			return ret;
		ret = img_w_data(lv->s.w, f->i->id, off, buf, n);
		if (ret)
			return ret;
	}
	return 0;
}

static void *live_thread(void *arg)
{
	struct hfs_live *lv = arg;
	char *buf = malloc(1 << 20);
	sigset_t pipe_sig;
	off_t at = 0;
	int ret = buf ? 0 : -ENOMEM;

	/* a reader that stops early: EPIPE here, not a signal to the daemon */
	sigemptyset(&pipe_sig);
	sigaddset(&pipe_sig, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_sig, NULL);
	for (struct stat st; !ret && !fstat(lv->meta, &st) && at < st.st_size;) {
		ssize_t n = sendfile(lv->fd, lv->meta, &at, (size_t)(st.st_size - at));

		if (n <= 0 && errno != EINTR)
			ret = n < 0 ? -errno : -EIO;
	}
	for (size_t k = 0; !ret && k < lv->s.nfiles; k++)
		ret = live_file(lv, &lv->s.files[k], buf);
	if (!ret)
		ret = img_w_finish(lv->s.w);
	free(buf);
	lv->ret = ret;
	close(lv->fd); /* the reader's end of file */
	lv->fd = -1;
	return NULL;
}

int hfs_image_live(struct hfs_heap *h, int *fd, struct hfs_live **out, void (*frozen)(void *),
		   void *arg)
{
	struct hfs_live *lv = calloc(1, sizeof(*lv));
	int p[2] = { -1, -1 }, ret;

	if (!lv)
		return -ENOMEM;
	lv->fd = lv->meta = -1;
	lv->s.live = true;
	lv->meta = memfd_create("heapfs-live", MFD_CLOEXEC);
	if (lv->meta < 0 || pipe2(p, O_CLOEXEC)) {
		ret = -errno;
		goto fail;
	}
	lv->fd = p[1];
	for (int sz = 1 << 20; sz >= 1 << 16 && fcntl(p[1], F_SETPIPE_SZ, sz) < 0; sz >>= 1)
		;
	/* frozen only while the tree (no file's bytes) is written into memory */
	pthread_rwlock_wrlock(&hfs.ns);
	pthread_rwlock_wrlock(&h->quiesce);
	ret = h->dir ? save_heap(h, lv->meta, &lv->s) : -ENOENT; /* rmdir'd meanwhile */
	if (!ret && frozen)
		frozen(arg); /* what changes next comes after the image */
	pthread_rwlock_unlock(&h->quiesce);
	pthread_rwlock_unlock(&hfs.ns);
	if (!ret)
		ret = img_w_redirect(lv->s.w, lv->fd);
	if (!ret)
		ret = -pthread_create(&lv->th, NULL, live_thread, lv);
	if (ret)
		goto fail;
	*fd = p[0];
	*out = lv;
	return 0;
fail:
	if (p[0] >= 0)
		close(p[0]);
	live_free(lv);
	return ret;
}

int hfs_image_live_end(struct hfs_live *lv)
{
	int ret;

	pthread_join(lv->th, NULL); /* the caller closed the read end: it cannot block */
	ret = lv->ret;
	live_free(lv);
	return ret;
}

int hfs_image_snapshot_end(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, WNOHANG) == 0) {
		kill(pid, SIGKILL); /* the reader stopped early */
		waitpid(pid, &st, 0);
	}
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}
