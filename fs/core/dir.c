/*
 * dir.c — the namespace: directory entries, the fixed tree (root, heaps/, objects/, pool/,
 * .heapfs/), and the namespace mutations hfs_create / hfs_unlink / hfs_rmdir / hfs_rename /
 * hfs_link.
 *
 * Each directory holds a uthash table name -> entry; an entry holds one reference to its
 * inode and accounts for one link (two for a subdirectory: its own "." too, plus one on
 * the parent for ".." ).  Lookups and listings hold hfs.ns shared, mutations hold it
 * exclusive, so a rename (remove + add, or a swap of two entries) is atomic.  Directory
 * listings are snapshots of names taken at offset 0; every later offset indexes that
 * snapshot and each name is checked again against the live table, so offsets stay valid
 * whatever is unlinked meanwhile.  Listings are charged to the snapshot budget (status.c):
 * past it a listing from offset 0 gets ENFILE.
 *
 * Policy lives in one table of per-namespace operations (struct hfs_ns_ops, indexed by a
 * directory's role): which kinds may be created, whether entries may be added/removed and
 * hard-linked, mkdir/rmdir handlers (heaps/ makes and removes heaps) and hooks run when an
 * entry is added or removed (objects/ keeps the segment's name map in step).  Heap
 * directories (heaps/NAME and below) hold any kind; the fixed directories refuse changes
 * with EPERM; objects/ and pool/ hold what their feature registered (hfs_ns_register:
 * regular files only), fixed until it does.  No operation below asks which namespace it is in.
 *
 * Limits: a new inode takes one of its heap's inodes (hfs_inode_new: ENOSPC at the limit),
 * and so does each hard link beyond a file's first name (given back when such a name goes);
 * entries and symlink targets are charged to the heap's metadata bytes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

struct hfs_fs hfs; /* the mount: its tree, its heaps, its settings (main.c fills them) */

#define KIND(k) HFS_KIND(k)
#define ALL_KINDS (KIND(HFS_DIR) | KIND(HFS_REG) | KIND(HFS_LNK) | KIND(HFS_SPECIAL))

static int heaps_mkdir(struct hfs_inode *dir, const char *name, struct hfs_inode **out)
{
	return __hfs_dir_find(dir, name) ? -EEXIST : __hfs_heap_mkdir(name, NULL, false, out);
}

static int heaps_rmdir(struct hfs_inode *dir, struct hfs_inode *i)
{
	(void)dir;
	return i ? __hfs_heap_rmdir(i) : -ENOENT;
}

static const struct hfs_ns_ops plain_ns = { .kinds = ALL_KINDS, .links = true };
static const struct hfs_ns_ops heaps_ns = { .mkdir = heaps_mkdir, .rmdir = heaps_rmdir };
static const struct hfs_ns_ops fixed_ns = { 0 };

/* The namespaces of the core, and the features' rows (hfs_ns_register); a feature's
 * directory whose feature registered nothing is fixed (EPERM). */
static const struct hfs_ns_ops *ns_table[HFS_R_N] = {
	[HFS_R_PLAIN] = &plain_ns,
	[HFS_R_HEAPDIR] = &plain_ns,
	[HFS_R_HEAPS] = &heaps_ns,
	[HFS_R_FIXED] = &fixed_ns,
	[HFS_R_OBJECTS] = &fixed_ns,
	[HFS_R_POOL] = &fixed_ns,
};

void hfs_ns_register(enum hfs_role role, const struct hfs_ns_ops *ops)
{
	ns_table[role] = ops;
}

static const struct hfs_ns_ops *ns_of(const struct hfs_inode *dir)
{
	return ns_table[dir->dir.role];
}

struct hfs_heap *hfs_dir_heap(const struct hfs_inode *dir)
{
	const struct hfs_ns_ops *ns = ns_of(dir);

	return ns->heap ? ns->heap() : dir->heap;
}

static void touch_dir(struct hfs_inode *dir, int dlink, int dents)
{
	pthread_rwlock_wrlock(&dir->lock);
	dir->nlink += dlink;
	dir->dir.nents += dents;
	hfs_now(&dir->mtime);
	dir->ctime = dir->mtime;
	pthread_rwlock_unlock(&dir->lock);
}

static void touch_links(struct hfs_inode *i, int dlink)
{
	pthread_rwlock_wrlock(&i->lock);
	i->nlink += dlink;
	hfs_now(&i->ctime);
	pthread_rwlock_unlock(&i->lock);
}

struct hfs_inode *__hfs_dir_find(struct hfs_inode *dir, const char *name)
{
	struct hfs_dirent *de;

	HASH_FIND(hh, dir->dir.ents, name, strlen(name), de);
	return de ? de->inode : NULL;
}

int __hfs_dir_add(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	const struct hfs_ns_ops *ns = ns_of(dir);
	size_t len = strlen(name);
	struct hfs_dirent *de = malloc(sizeof(*de) + len + 1);
	bool isdir = i->kind == HFS_DIR;
	int ret;

	if (!de)
		return -ENOMEM;
	ret = ns->added ? ns->added(i, name) : 0;
	if (ret) {
		free(de);
		return ret;
	}
	de->inode = i;
	de->len = len;
	memcpy(de->name, name, len + 1);
	HASH_ADD_KEYPTR(hh, dir->dir.ents, de->name, len, de);
	hfs_heap_meta(dir->heap, (int64_t)(sizeof(*de) + len + 1));
	hfs_iref(i, 1);
	if (isdir)
		i->dir.parent = dir;
	touch_links(i, isdir ? 2 : 1);
	touch_dir(dir, isdir ? 1 : 0, 1);
	return 0;
}

int __hfs_dir_del(struct hfs_inode *dir, const char *name)
{
	struct hfs_dirent *de;
	struct hfs_inode *i;
	bool isdir;

	HASH_FIND(hh, dir->dir.ents, name, strlen(name), de);
	if (!de)
		return -ENOENT;
	i = de->inode;
	isdir = i->kind == HFS_DIR;
	HASH_DEL(dir->dir.ents, de);
	if (ns_of(dir)->removed)
		ns_of(dir)->removed(i);
	hfs_heap_meta(dir->heap, -(int64_t)(sizeof(*de) + de->len + 1));
	free(de);
	touch_dir(dir, isdir ? -1 : 0, -1);
	touch_links(i, isdir ? -2 : -1);
	if (i->kind == HFS_REG)
		hfs_file_reclaim(i);
	hfs_iput(i, 1);
	return 0;
}

static int check_name(const char *name)
{
	return strlen(name) > HFS_NAME_MAX ? -ENAMETOOLONG : 0;
}

int hfs_name_check(const char *name)
{
	if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL; /* the kernel never asks: an image or a partner may */
	return check_name(name);
}

/* Remove the entry name of dir (which holds i); a name that was not i's last gives back
 * the inode it took at link time (hfs_link). */
static int __unlink_name(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	if (i->kind != HFS_DIR && i->nlink > 1 && i->heap)
		hfs_heap_inode_give(i->heap);
	return __hfs_dir_del(dir, name);
}

/* May c add entries to / remove entries from dir?  The namespace decides, then the heap
 * (hfs_writable). */
static int __dir_writable(struct hfs_inode *dir, const struct hfs_completion *c)
{
	if (dir->kind != HFS_DIR)
		return -ENOTDIR;
	if (dir->nlink == 0)
		return -ENOENT; /* removed while someone sat in it */
	if (!ns_of(dir)->kinds)
		return -EPERM;
	return hfs_writable(dir->heap, c);
}

/* hfs.ns held: tell the heap's observers that entry dir/name changed (kind: create, link,
 * unlink; i the inode it names, NULL for unlink). */
static void __entry_changed(enum hfs_change_kind kind, struct hfs_inode *dir, const char *name,
			    struct hfs_inode *i, struct hfs_completion *c)
{
	struct hfs_heap *h = i ? i->heap : dir->heap;

	if (hfs_observed(h))
		__hfs_changed(&(struct hfs_change){ .kind = kind, .heap = h, .done = c,
						    .entry = { .dir = dir, .i = i,
							       .name = name } });
}

int hfs_lookup(struct hfs_inode *dir, const char *name, struct hfs_inode **out)
{
	struct hfs_inode *i;
	int ret;

	if (dir->kind != HFS_DIR)
		return -ENOTDIR;
	ret = check_name(name);
	if (ret)
		return ret;
	pthread_rwlock_rdlock(&hfs.ns);
	i = __hfs_dir_find(dir, name);
	if (i)
		hfs_iref(i, 1);
	pthread_rwlock_unlock(&hfs.ns);
	*out = i;
	return i ? 0 : -ENOENT;
}

int hfs_lookup_parent(struct hfs_inode *dir, struct hfs_inode **out)
{
	struct hfs_inode *p = NULL;

	if (dir->kind != HFS_DIR)
		return -ENOTDIR;
	pthread_rwlock_rdlock(&hfs.ns);
	if (dir->nlink && dir->dir.parent) { /* the root's is itself */
		p = dir->dir.parent;
		hfs_iref(p, 1);
	}
	pthread_rwlock_unlock(&hfs.ns);
	*out = p;
	return p ? 0 : -ENOENT;
}

static enum hfs_kind kind_of(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR:
		return HFS_DIR;
	case S_IFREG:
		return HFS_REG;
	case S_IFLNK:
		return HFS_LNK;
	default:
		return HFS_SPECIAL;
	}
}

/* hfs.ns held exclusive: may c add a name of that kind to dir (no mkdir handler)? */
static int __may_create(struct hfs_inode *dir, const char *name, enum hfs_kind kind,
			const struct hfs_completion *c)
{
	int ret = __dir_writable(dir, c);

	if (!ret && !(ns_of(dir)->kinds & KIND(kind)))
		ret = -EPERM;
	if (!ret && __hfs_dir_find(dir, name))
		ret = -EEXIST;
	return ret;
}

/* What only a new inode of i's kind holds: a symlink's target (charged to the heap's
 * metadata), a node's device number, a directory's namespace. */
static int init_kind(struct hfs_inode *i, dev_t rdev, const char *target)
{
	if (i->kind == HFS_DIR)
		i->dir.role = HFS_R_PLAIN;
	else if (i->kind == HFS_LNK) {
		i->lnk.target = strdup(target);
		i->size = strlen(target);
		if (!i->lnk.target)
			return -ENOMEM;
		hfs_heap_meta(i->heap, (int64_t)i->size + 1);
	} else if (i->kind == HFS_SPECIAL)
		i->rdev = rdev;
	return 0;
}

/* hfs.ns held exclusive: a new inode for dir, not named yet, owned by ctx (the group
 * dir's if it is set-group-ID, which a new directory inherits), with dir's namespace's
 * set-up, dir's default ACL and its kind's own fields; or -errno and nothing made. */
static int __new_inode(struct hfs_inode *dir, enum hfs_kind kind, mode_t mode, dev_t rdev,
		       const char *target, const struct hfs_ctx *ctx, struct hfs_inode **out)
{
	const struct hfs_ns_ops *ns = ns_of(dir);
	struct hfs_inode *i;
	gid_t gid = ctx->gid;
	int ret;

	if (dir->mode & S_ISGID) {
		gid = dir->gid;
		if (kind == HFS_DIR)
			mode |= S_ISGID;
	}
	i = hfs_dir_heap(dir) ? hfs_inode_new(kind, mode, ctx->uid, gid, hfs_dir_heap(dir)) : NULL;
	if (!i)
		return -ENOSPC;
	ret = ns->init ? ns->init(i) : 0;
	if (!ret && ctx->acl)
		ret = hfs_acl_inherit(dir, i, ctx->umask);
	if (!ret)
		ret = init_kind(i, rdev, target);
	if (ret) {
		hfs_inode_discard(i);
		return ret;
	}
	*out = i;
	return 0;
}

int hfs_create(struct hfs_inode *dir, const char *name, mode_t mode, dev_t rdev,
	       const char *target, const struct hfs_ctx *ctx, struct hfs_inode **out,
	       struct hfs_completion *c)
{
	enum hfs_kind kind = kind_of(mode);
	const struct hfs_ns_ops *ns;
	struct hfs_inode *i = NULL;
	int ret = hfs_name_check(name);

	if (ret)
		return ret;
	if (kind == HFS_LNK && !target)
		return -EINVAL; /* the mode says symlink, the caller gave no target */
	pthread_rwlock_wrlock(&hfs.ns);
	ns = dir->kind == HFS_DIR ? ns_of(dir) : NULL;
	if (ns && ns->mkdir && kind == HFS_DIR) {
		ret = ns->mkdir(dir, name, &i);
	} else {
		ret = __may_create(dir, name, kind, c) ?:
		      __new_inode(dir, kind, mode, rdev, target, ctx, &i);
		if (!ret)
			ret = __hfs_dir_add(dir, name, i);
		if (!ret) {
			__entry_changed(HFS_CH_CREATE, dir, name, i, c);
			hfs_xattr_announce(i, c); /* an inherited ACL */
		} else if (i) { /* made, but the name could not be added */
			hfs_inode_discard(i);
			i = NULL;
		}
	}
	if (!ret)
		hfs_iref(i, 1); /* the kernel's lookup */
	pthread_rwlock_unlock(&hfs.ns);
	*out = i;
	return ret;
}

int hfs_unlink(struct hfs_inode *dir, const char *name, struct hfs_completion *c)
{
	struct hfs_inode *i;
	int ret;

	pthread_rwlock_wrlock(&hfs.ns);
	ret = __dir_writable(dir, c);
	if (ret)
		goto out;
	i = __hfs_dir_find(dir, name);
	if (!i)
		ret = -ENOENT;
	else if (i->kind == HFS_DIR)
		ret = -EISDIR;
	else
		ret = __unlink_name(dir, name, i);
	if (!ret)
		__entry_changed(HFS_CH_UNLINK, dir, name, NULL, c);
out:
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

int hfs_rmdir(struct hfs_inode *dir, const char *name, struct hfs_completion *c)
{
	struct hfs_inode *i;
	int ret = 0;

	pthread_rwlock_wrlock(&hfs.ns);
	i = dir->kind == HFS_DIR ? __hfs_dir_find(dir, name) : NULL;
	if (dir->kind == HFS_DIR && ns_of(dir)->rmdir) {
		ret = ns_of(dir)->rmdir(dir, i);
		goto out;
	}
	ret = __dir_writable(dir, c);
	if (ret)
		goto out;
	if (!i)
		ret = -ENOENT;
	else if (i->kind != HFS_DIR)
		ret = -ENOTDIR;
	else if (i->dir.nents)
		ret = -ENOTEMPTY;
	else
		ret = __hfs_dir_del(dir, name);
	if (!ret)
		__entry_changed(HFS_CH_UNLINK, dir, name, NULL, c);
out:
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

/* Is a inside (or equal to) the directory d?  hfs.ns held. */
static bool __is_within(struct hfs_inode *a, struct hfs_inode *d)
{
	for (;;) {
		if (a == d)
			return true;
		if (!a->dir.parent || a->dir.parent == a)
			return false;
		a = a->dir.parent;
	}
}

/* Both directories in the same heap: 0, -EXDEV (different heaps), -EPERM (outside). */
static int same_heap(struct hfs_inode *a, struct hfs_inode *b)
{
	if (!hfs_dir_heap(a) && !hfs_dir_heap(b))
		return -EPERM;
	if (hfs_dir_heap(a) != hfs_dir_heap(b))
		return -EXDEV;
	return 0;
}

/* Entries name (of dir, was ia) and nname (of ndir, was ib) were swapped: tell the
 * namespace (one table entry: both are in one heap).  Two slots were just freed, so the
 * adds cannot run out of them. */
static void __swapped(struct hfs_inode *dir, const char *name, struct hfs_inode *ia,
		      const char *nname, struct hfs_inode *ib)
{
	const struct hfs_ns_ops *ns = ns_of(dir);

	if (!ns->added)
		return;
	ns->removed(ia);
	ns->removed(ib);
	ns->added(ib, name);
	ns->added(ia, nname);
}

static int __rename_exchange(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
			     const char *nname)
{
	struct hfs_dirent *a, *b;
	struct hfs_inode *ia, *ib;
	int da, db;

	HASH_FIND(hh, dir->dir.ents, name, strlen(name), a);
	HASH_FIND(hh, ndir->dir.ents, nname, strlen(nname), b);
	if (!a || !b)
		return -ENOENT;
	ia = a->inode;
	ib = b->inode;
	if (ia == ib)
		return 0;
	if ((ia->kind == HFS_DIR && __is_within(ndir, ia)) ||
	    (ib->kind == HFS_DIR && __is_within(dir, ib)))
		return -EINVAL;
	a->inode = ib;
	b->inode = ia;
	__swapped(dir, name, ia, nname, ib);
	da = ia->kind == HFS_DIR;
	db = ib->kind == HFS_DIR;
	if (da)
		ia->dir.parent = ndir;
	if (db)
		ib->dir.parent = dir;
	touch_dir(dir, db - da, 0);
	if (ndir != dir)
		touch_dir(ndir, da - db, 0);
	touch_links(ia, 0);
	touch_links(ib, 0);
	return 0;
}

/* hfs.ns held: may src (NULL: no such name) take the name of dst (NULL: none) in ndir?
 * src == dst is allowed: two names of one inode, and the rename does nothing. */
static int __may_replace(struct hfs_inode *src, struct hfs_inode *dst, struct hfs_inode *ndir,
			 unsigned flags)
{
	if (!src)
		return -ENOENT;
	if (src == dst)
		return 0;
	if (dst && flags & RENAME_NOREPLACE)
		return -EEXIST;
	if (src->kind == HFS_DIR && __is_within(ndir, src))
		return -EINVAL;
	if (!dst)
		return 0;
	if (src->kind == HFS_DIR && dst->kind != HFS_DIR)
		return -ENOTDIR;
	if (src->kind != HFS_DIR && dst->kind == HFS_DIR)
		return -EISDIR;
	if (dst->kind == HFS_DIR && dst->dir.nents)
		return -ENOTEMPTY;
	return 0;
}

/* hfs.ns held exclusive, the rename allowed (__may_replace): src's name dir/name becomes
 * ndir/nname, over dst (NULL: none).  Only the adds can fail after the first change (the
 * entry's malloc, the namespace's added hook): src stays alive across remove + add and is
 * put back where it was if the add fails.  What changed all the same is told as what it
 * is: the overwritten target gone, and src's name too if even the way back failed. */
static int __rename_move(struct hfs_inode *dir, const char *name, struct hfs_inode *src,
			 struct hfs_inode *ndir, const char *nname, struct hfs_inode *dst,
			 struct hfs_completion *c)
{
	int links = src->kind == HFS_DIR ? 2 : 1;
	int ret;

	hfs_iref(src, 1);
	touch_links(src, links); /* never unlinked in between: its data must stay */
	if (dst)
		__unlink_name(ndir, nname, dst);
	__hfs_dir_del(dir, name);
	ret = __hfs_dir_add(ndir, nname, src);
	if (ret && dst)
		__entry_changed(HFS_CH_UNLINK, ndir, nname, NULL, c);
	if (ret && __hfs_dir_add(dir, name, src))
		__entry_changed(HFS_CH_UNLINK, dir, name, NULL, c);
	touch_links(src, -links);
	hfs_iput(src, 1);
	return ret;
}

/* hfs.ns held exclusive: the rename of hfs_rename, told to the observers. */
static int __rename(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
		    const char *nname, unsigned flags, struct hfs_completion *c)
{
	struct hfs_inode *src, *dst;
	int ret;

	ret = __dir_writable(dir, c);
	if (!ret)
		ret = __dir_writable(ndir, c);
	if (!ret)
		ret = same_heap(dir, ndir); /* renaming heaps/NAME itself got EPERM above */
	if (ret)
		return ret;
	if (flags & RENAME_EXCHANGE) {
		ret = __rename_exchange(dir, name, ndir, nname);
	} else {
		src = __hfs_dir_find(dir, name);
		dst = __hfs_dir_find(ndir, nname);
		ret = __may_replace(src, dst, ndir, flags);
		if (!ret && src != dst) /* the same inode: POSIX says do nothing */
			ret = __rename_move(dir, name, src, ndir, nname, dst, c);
	}
	if (!ret && hfs_observed(dir->heap))
		__hfs_changed(&(struct hfs_change){
			.kind = HFS_CH_RENAME, .heap = dir->heap, .done = c,
			.rename = { .dir = dir, .ndir = ndir, .name = name, .nname = nname,
				    .flags = flags } });
	return ret;
}

int hfs_rename(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
	       const char *nname, unsigned flags, struct hfs_completion *c)
{
	int ret;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) ||
	    (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE))
		return -EINVAL;
	ret = hfs_name_check(nname);
	if (ret)
		return ret;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __rename(dir, name, ndir, nname, flags, c);
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

/* The whiteout is made first (the one failure that is likely: no inode left), so a refused
 * rename changes nothing; it is named only once the rename is done, and observers see a
 * rename and then a create of a character device 0:0: images and partners need nothing new.
 * Only the entry's malloc can fail after the rename: the rename then stands, unwhited. */
int hfs_rename_whiteout(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
			const char *nname, unsigned flags, const struct hfs_ctx *ctx,
			struct hfs_completion *c)
{
	struct hfs_inode *wh = NULL;
	struct hfs_heap *h;
	gid_t gid = ctx->gid;
	int ret;

	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL; /* the kernel refuses RENAME_EXCHANGE with it already */
	ret = hfs_name_check(nname);
	if (ret)
		return ret;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __dir_writable(dir, c);
	if (!ret && !(ns_of(dir)->kinds & KIND(HFS_SPECIAL)))
		ret = -EPERM;
	if (ret)
		goto out;
	if (dir->mode & S_ISGID)
		gid = dir->gid;
	h = hfs_dir_heap(dir);
	wh = h ? hfs_inode_new(HFS_SPECIAL, S_IFCHR, ctx->uid, gid, h) : NULL;
	if (!wh) {
		ret = h ? -ENOSPC : -EPERM;
		goto out;
	}
	ret = __rename(dir, name, ndir, nname, flags, c);
	if (ret || __hfs_dir_find(dir, name)) /* failed, or two names of one inode: no-op */
		goto out_discard;
	ret = __hfs_dir_add(dir, name, wh);
	if (ret)
		goto out_discard;
	__entry_changed(HFS_CH_CREATE, dir, name, wh, c);
	wh = NULL;
out_discard:
	if (wh)
		hfs_inode_discard(wh);
out:
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

int hfs_link(struct hfs_inode *i, struct hfs_inode *ndir, const char *nname,
	     struct hfs_completion *c)
{
	int ret = hfs_name_check(nname);
	bool named = false; /* an O_TMPFILE file gets its first name */

	if (ret)
		return ret;
	if (i->kind == HFS_DIR)
		return -EPERM;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __dir_writable(ndir, c);
	if (!ret && (i->kind == HFS_STATUS || !i->heap || !ns_of(ndir)->links ||
		     i->heap->objects)) /* an object has one name */
		ret = -EPERM;
	if (!ret && i->heap != hfs_dir_heap(ndir))
		ret = -EXDEV;
	if (!ret && __hfs_dir_find(ndir, nname))
		ret = -EEXIST;
	/* a file whose names all went stays nameless; an O_TMPFILE file may get its first
	 * (the kernel lets only a linkable one, opened without O_EXCL, come here) */
	if (!ret && i->nlink == 0 && !i->tmpfile)
		ret = -ENOENT;
	named = !ret && i->tmpfile;
	if (!ret && !named) /* no new inode, but a name: charged like one, as tmpfs does */
		ret = hfs_heap_inode_take(i->heap);
	if (!ret) {
		ret = __hfs_dir_add(ndir, nname, i);
		if (ret && !named)
			hfs_heap_inode_give(i->heap);
		named = named && !ret; /* still nameless: nothing to tell below */
	}
	if (!ret)
		hfs_iref(i, 1); /* the kernel's lookup */
	if (!ret && named) {
		/* a partner never heard of it (its changes so far were for an inode it did not
		 * know, and dropped): to it this is a create, then the bytes and attributes */
		i->tmpfile = false;
		__entry_changed(HFS_CH_CREATE, ndir, nname, i, c);
		hfs_xattr_announce(i, c);
	} else if (!ret) {
		__entry_changed(HFS_CH_LINK, ndir, nname, i, c);
	}
	pthread_rwlock_unlock(&hfs.ns);
	if (named && hfs_observed(i->heap)) {
		hfs_change_lock(i);
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_RANGE, .heap = i->heap,
						    .done = c,
						    .write = { .i = i, .off = 0, .len = i->size } });
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_SETATTR, .heap = i->heap,
						    .done = c, .inode = { .i = i } });
		hfs_change_unlock(i, false);
	}
	return ret;
}

int hfs_tmpfile(struct hfs_inode *dir, mode_t mode, const struct hfs_ctx *ctx,
		struct hfs_inode **out, struct hfs_completion *c)
{
	struct hfs_inode *i = NULL;
	gid_t gid = ctx->gid;
	int ret;

	if ((mode & S_IFMT) != S_IFREG)
		return -EINVAL;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __dir_writable(dir, c);
	/* only where a file may get names later (not objects/, pool/, an objects heap) */
	if (!ret && (!ns_of(dir)->links || !(ns_of(dir)->kinds & KIND(HFS_REG)) ||
		     !hfs_dir_heap(dir) || hfs_dir_heap(dir)->objects))
		ret = -EOPNOTSUPP;
	if (ret)
		goto out;
	if (dir->mode & S_ISGID)
		gid = dir->gid;
	ret = -ENOSPC;
	i = hfs_inode_new(HFS_REG, mode, ctx->uid, gid, hfs_dir_heap(dir));
	if (!i)
		goto out;
	ret = ctx->acl ? hfs_acl_inherit(dir, i, ctx->umask) : 0;
	if (ret) {
		hfs_inode_discard(i);
		i = NULL;
		goto out;
	}
	i->tmpfile = true;
	hfs_iref(i, 1); /* the kernel's lookup */
out:
	pthread_rwlock_unlock(&hfs.ns);
	*out = i;
	return ret;
}

void hfs_dirsnap_clear(struct hfs_dirsnap *s)
{
	for (size_t k = 0; k < s->n; k++)
		free(s->names[k]);
	free(s->names);
	hfs_snapshot_uncharge(s->bytes);
	s->names = NULL;
	s->n = s->bytes = 0;
}

int hfs_dir_snapshot(struct hfs_inode *dir, struct hfs_dirsnap *s)
{
	struct hfs_dirent *de, *tmp;
	size_t n = 0, bytes;
	int ret;

	hfs_dirsnap_clear(s);
	pthread_rwlock_rdlock(&hfs.ns);
	bytes = (HASH_COUNT(dir->dir.ents) + 1) * sizeof(*s->names);
	HASH_ITER(hh, dir->dir.ents, de, tmp)
		bytes += de->len + 1;
	ret = hfs_snapshot_charge(bytes); /* a listing per open handle: bounded in all */
	if (ret)
		goto out;
	s->bytes = bytes;
	s->names = malloc((HASH_COUNT(dir->dir.ents) + 1) * sizeof(*s->names));
	if (!s->names) {
		ret = -ENOMEM;
		goto out;
	}
	HASH_ITER(hh, dir->dir.ents, de, tmp) {
		s->names[n] = strdup(de->name);
		if (!s->names[n]) {
			ret = -ENOMEM;
			break;
		}
		n++;
	}
	s->n = n;
out:
	pthread_rwlock_unlock(&hfs.ns);
	if (ret)
		hfs_dirsnap_clear(s);
	return ret;
}

int hfs_dir_entry(struct hfs_inode *dir, struct hfs_dirsnap *s, size_t idx, bool ref,
		  const char **name, struct stat *st, struct hfs_inode **out)
{
	struct hfs_inode *i;
	int ret = 0;

	*out = NULL;
	if (idx >= s->n + 2)
		return 1;
	pthread_rwlock_rdlock(&hfs.ns);
	if (idx < 2) {
		*name = idx ? ".." : ".";
		i = dir;
		if (idx && dir->dir.parent && dir->nlink)
			i = dir->dir.parent;
		ref = false;
	} else {
		*name = s->names[idx - 2];
		i = __hfs_dir_find(dir, *name);
	}
	if (!i) {
		ret = -ENOENT;
		goto out;
	}
	hfs_stat(i, st);
	if (ref) {
		hfs_iref(i, 1);
		*out = i;
	}
out:
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

/* A fixed directory or status file: the tree built at mount, and each heap's status files. */
struct hfs_inode *__hfs_fixed_add(struct hfs_inode *dir, const char *name, enum hfs_kind kind,
				  mode_t mode, int what)
{
	struct hfs_inode *i = hfs_inode_new(kind, mode, hfs.uid, hfs.gid, NULL);

	if (!i)
		return NULL;
	if (kind == HFS_DIR)
		i->dir.role = HFS_R_FIXED;
	else
		i->st.what = what;
	if (__hfs_dir_add(dir, name, i)) {
		hfs_inode_discard(i);
		return NULL;
	}
	return i;
}

int hfs_mount_tree(void)
{
	const mode_t dmode = S_IFDIR | 0755, rodir = S_IFDIR | 0555, rofile = S_IFREG | 0444;
	int ret = -ENOMEM;

	pthread_rwlock_wrlock(&hfs.ns);
	hfs.root = hfs_inode_new(HFS_DIR, dmode, hfs.uid, hfs.gid, NULL);
	if (!hfs.root || hfs.root->ino != HFS_ROOT_INO)
		goto out;
	hfs.root->dir.role = HFS_R_FIXED;
	hfs.root->dir.parent = hfs.root;
	hfs.root->nlink = 2;
	hfs_iref(hfs.root, 1);
	hfs.heaps = __hfs_fixed_add(hfs.root, "heaps", HFS_DIR, dmode, 0);
	hfs.objects = __hfs_fixed_add(hfs.root, "objects", HFS_DIR, S_IFDIR | 01777, 0);
	hfs.pool = __hfs_fixed_add(hfs.root, "pool", HFS_DIR, S_IFDIR | 01777, 0);
	hfs.dot = __hfs_fixed_add(hfs.root, ".heapfs", HFS_DIR, rodir, 0);
	if (!hfs.heaps || !hfs.objects || !hfs.pool || !hfs.dot)
		goto out;
	hfs.heaps->dir.role = HFS_R_HEAPS;
	hfs.objects->dir.role = HFS_R_OBJECTS;
	hfs.pool->dir.role = HFS_R_POOL;
	hfs.dot_heaps = __hfs_fixed_add(hfs.dot, "heaps", HFS_DIR, rodir, 0);
	hfs.dot_maps = __hfs_fixed_add(hfs.dot, "maps", HFS_DIR, rodir, 0);
	hfs.dot_images = __hfs_fixed_add(hfs.dot, "images", HFS_DIR, rodir, 0);
	if (!hfs.dot_heaps || !hfs.dot_maps || !hfs.dot_images ||
	    !__hfs_fixed_add(hfs.dot, "stats", HFS_STATUS, rofile, HFS_ST_STATS))
		goto out;
	ret = __hfs_status_files(hfs.dot);
out:
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}
