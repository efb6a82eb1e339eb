/*
 * xattr.c — extended attributes, as tmpfs keeps them: user.*, trusted.*, security.* and
 * the POSIX ACLs (system.posix_acl_access/_default, acl.c) are stored per inode (a uthash
 * table name -> value under the inode lock); other names are ENOTSUP.  Who may set which
 * namespace the kernel decides before asking (trusted.*: CAP_SYS_ADMIN, security.*: the
 * LSMs and capabilities; ACLs: the owner).  Inside heaps, read-only virtual names describe
 * where the data lives: user.heapfs.heap (every inode of a heap), user.heapfs.order
 * (largest block order held) and user.heapfs.blocks (number of buddy blocks) for regular
 * files, user.heapfs.offset (offset of its block in the segment) for objects.  They are
 * read by name and never listed (as CephFS's ceph.* names), so `cp -a`, `rsync -X` and
 * `getfattr -d` see what tmpfs would show; setting or removing any user.heapfs.* name is
 * EPERM.  Lists are sorted by name (tmpfs's order) and hide trusted.* from non-root.
 *
 * Room: each stored xattr costs HFS_XATTR_ENTRY (its table entry) + name + NUL + value,
 * taken from the heap's inode space (hfs_heap_space_take, what `df -i` shows, as tmpfs's
 * ispace) before it is stored and given back when it goes; a set that does not fit is
 * ENOSPC and leaves every xattr as it was.  The same cost counts in the heap's metadata
 * bytes and in the inode's xattr_bytes.
 *
 * ACLs: setting an access ACL moves the mode to it (and one the mode says whole is not
 * stored; setgid goes when the edge says the caller may not keep it: posix_acl_update_mode), a chmod moves the ACL (__hfs_acl_chmod), a user's new
 * inode takes its directory's default ACL (hfs_acl_inherit); the FUSE kernel side leaves
 * all three to the filesystem.  A restore (image, partner) stores names verbatim: its
 * records carry the modes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/limits.h>
#include <sys/xattr.h>

#include "core.h"

#define USER "user."
#define VIRT "user.heapfs."
#define TRUSTED "trusted."

static const char *const virt_names[] = { VIRT "heap", VIRT "order", VIRT "blocks",
					  VIRT "offset" };
enum { V_HEAP, V_ORDER, V_BLOCKS, V_OFFSET, V_N };

static bool prefixed(const char *name, const char *prefix)
{
	return strncmp(name, prefix, strlen(prefix)) == 0;
}

static bool is_user(const char *name)
{
	return prefixed(name, USER);
}

static bool is_virt(const char *name)
{
	return prefixed(name, VIRT);
}

static bool is_acl(const char *name)
{
	return !strcmp(name, HFS_ACL_ACCESS) || !strcmp(name, HFS_ACL_DEFAULT);
}

/* The names this file stores (tmpfs's: user, trusted, security, the ACLs). */
static bool stored(const char *name)
{
	return is_user(name) || prefixed(name, TRUSTED) || prefixed(name, "security.") ||
	       is_acl(name);
}

/* How many virtual names this inode has (a prefix of virt_names). */
static unsigned nvirt(const struct hfs_inode *i)
{
	if (!i->heap)
		return 0;
	if (i->kind != HFS_REG)
		return 1;
	return i->heap->objects ? V_N : V_OFFSET; /* offset: an object's one block */
}

/* The value of virtual attribute k as text. */
static int virt_value(struct hfs_inode *i, unsigned k, char *buf, size_t size)
{
	switch (k) {
	case V_HEAP:
		return snprintf(buf, size, "%s", i->heap->pol.name);
	case V_ORDER:
		return snprintf(buf, size, "%u", hfs_file_max_order(i));
	case V_BLOCKS:
		pthread_rwlock_rdlock(&i->lock);
		k = (unsigned)snprintf(buf, size, "%zu", i->file.n);
		pthread_rwlock_unlock(&i->lock);
		return (int)k;
	default:
		pthread_rwlock_rdlock(&i->lock);
		k = (unsigned)snprintf(buf, size, "%llu",
				       i->file.n ? (unsigned long long)i->file.ext[0].hoff : 0ull);
		pthread_rwlock_unlock(&i->lock);
		return (int)k;
	}
}

_Static_assert(sizeof(struct hfs_xattr) <= HFS_XATTR_ENTRY, "HFS_XATTR_ENTRY too small");

/* Bytes of daemon memory one stored xattr costs (what the inode space is charged). */
static size_t cost(const struct hfs_xattr *x)
{
	return HFS_XATTR_ENTRY + strlen(x->name) + 1 + x->size;
}

static struct hfs_xattr *__find(struct hfs_inode *i, const char *name)
{
	struct hfs_xattr *x;

	HASH_FIND_STR(i->xattrs, name, x);
	return x;
}

static struct hfs_xattr *xattr_new(const char *name, const void *value, size_t size)
{
	size_t len = strlen(name);
	struct hfs_xattr *x = malloc(sizeof(*x) + len + 1);

	if (!x)
		return NULL;
	x->value = malloc(size ? size : 1);
	if (!x->value) {
		free(x);
		return NULL;
	}
	memcpy(x->name, name, len + 1);
	memcpy(x->value, value, size);
	x->size = size;
	return x;
}

static void xattr_free(struct hfs_xattr *x)
{
	if (x) {
		free(x->value);
		free(x);
	}
}

/* i->lock held (or i not yet visible): store x in place of old (either may be NULL),
 * charging the heap's inode space for x first (ENOSPC: nothing changed). */
static int __put(struct hfs_inode *i, struct hfs_xattr *x, struct hfs_xattr *old)
{
	if (x && hfs_heap_space_take(i->heap, cost(x)))
		return -ENOSPC;
	if (old) {
		HASH_DEL(i->xattrs, old);
		i->xattr_bytes -= cost(old);
		hfs_heap_meta(i->heap, -(int64_t)cost(old));
		hfs_heap_space_give(i->heap, cost(old));
	}
	if (x) {
		HASH_ADD_STR(i->xattrs, name, x);
		i->xattr_bytes += cost(x);
		hfs_heap_meta(i->heap, (int64_t)cost(x));
	}
	return 0;
}

/* i->lock held: tell the heap's observers that xattr name of i is now value (NULL:
 * removed). */
static void __xattr_changed(struct hfs_inode *i, const char *name, const void *value,
			    size_t size, struct hfs_completion *c)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){
			.kind = HFS_CH_XATTR, .heap = i->heap, .done = c,
			.xattr = { .i = i, .name = name, .value = value, .size = size } });
}

static void __mode_changed(struct hfs_inode *i, struct hfs_completion *c)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_SETATTR, .heap = i->heap,
						    .done = c, .inode = { .i = i } });
}

/* May name be set to (value, size) on i, before anything is locked?  0 or -errno. */
static int set_check(struct hfs_inode *i, const char *name, const void *value, size_t size,
		     bool restore, struct hfs_completion *c)
{
	int ret;

	if (is_virt(name) && !(restore && !strcmp(name, HFS_XATTR_STATE)))
		return -EPERM;
	if (!i->heap)
		return -EPERM;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	if (strlen(name) > XATTR_NAME_MAX)
		return -ERANGE;
	if (size > XATTR_SIZE_MAX)
		return -E2BIG;
	if (is_acl(name)) { /* the kernel checked a user's; an image's or partner's may lie */
		ret = hfs_acl_valid(value, size);
		if (!ret && !strcmp(name, HFS_ACL_DEFAULT) && i->kind != HFS_DIR)
			ret = -EACCES;
	}
	return ret;
}

int hfs_setxattr(struct hfs_inode *i, const char *name, const void *value, size_t size,
		 int flags, struct hfs_completion *c)
{
	struct hfs_xattr *x, *old;
	bool restore = flags & HFS_XATTR_RESTORE, kill_sgid = flags & HFS_XATTR_KILL_SGID;
	mode_t mode;
	int ret = 0;

	flags &= ~(HFS_XATTR_RESTORE | HFS_XATTR_KILL_SGID);
	if (!stored(name))
		return -ENOTSUP;
	if (is_user(name) && i->kind == HFS_STATUS && i->st.what == HFS_ST_FEATURE &&
	    i->st.file->setxattr)
		return i->st.file->setxattr(name, value, size); /* partner: heapfsctl promote */
	ret = set_check(i, name, value, size, restore, c);
	if (ret)
		return ret;
	x = xattr_new(name, value, size);
	if (!x)
		return -ENOMEM;
	hfs_change_lock(i);
	mode = i->mode;
	if (kill_sgid && !restore && !strcmp(name, HFS_ACL_ACCESS))
		mode &= ~(mode_t)S_ISGID;
	old = __find(i, name);
	if (old && flags & XATTR_CREATE)
		ret = -EEXIST;
	else if (!old && flags & XATTR_REPLACE)
		ret = -ENODATA;
	else if (!restore && !strcmp(name, HFS_ACL_ACCESS) && hfs_acl_equiv(value, size, &mode)) {
		/* the mode says it all: only the mode changes (posix_acl_update_mode) */
		xattr_free(x);
		x = NULL;
	}
	if (!ret)
		ret = __put(i, x, old);
	if (!ret) {
		hfs_now(&i->ctime);
		if (x || old)
			__xattr_changed(i, name, x ? x->value : NULL, size, c);
		if (mode != i->mode) {
			i->mode = mode;
			__mode_changed(i, c);
		}
	}
	hfs_change_unlock(i, !ret); /* ctime changed: an object's slot shows it */
	xattr_free(ret ? x : old);
	return ret;
}

static ssize_t put_value(void *buf, size_t size, const void *v, size_t n)
{
	if (!size)
		return (ssize_t)n;
	if (n > size)
		return -ERANGE;
	memcpy(buf, v, n);
	return (ssize_t)n;
}

ssize_t hfs_getxattr(struct hfs_inode *i, const char *name, void *buf, size_t size)
{
	struct hfs_xattr *x;
	ssize_t ret;

	for (unsigned k = 0; k < nvirt(i); k++) {
		if (strcmp(name, virt_names[k]) == 0) {
			char tmp[CONF_NAME_MAX + 1];
			int n = virt_value(i, k, tmp, sizeof(tmp));

			return put_value(buf, size, tmp, (size_t)n);
		}
	}
	pthread_rwlock_rdlock(&i->lock);
	x = __find(i, name);
	ret = x ? put_value(buf, size, x->value, x->size) : -ENODATA;
	pthread_rwlock_unlock(&i->lock);
	return ret;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

ssize_t hfs_listxattr(struct hfs_inode *i, char *buf, size_t size, bool trusted)
{
	struct hfs_xattr *x, *tmp;
	const char **names;
	size_t need = 0, n = 0;
	ssize_t ret;

	pthread_rwlock_rdlock(&i->lock);
	names = malloc((HASH_COUNT(i->xattrs) + 1) * sizeof(*names));
	if (!names) {
		pthread_rwlock_unlock(&i->lock);
		return -ENOMEM;
	}
	HASH_ITER(hh, i->xattrs, x, tmp) {
		if (is_virt(x->name) || (!trusted && prefixed(x->name, TRUSTED)))
			continue;
		names[n++] = x->name;
		need += strlen(x->name) + 1;
	}
	ret = (ssize_t)need;
	if (size && need > size) {
		ret = -ERANGE;
	} else if (size) {
		char *p = buf;

		qsort(names, n, sizeof(*names), by_name);
		for (size_t k = 0; k < n; k++)
			p = stpcpy(p, names[k]) + 1;
	}
	pthread_rwlock_unlock(&i->lock);
	free(names);
	return ret;
}

int hfs_removexattr(struct hfs_inode *i, const char *name, struct hfs_completion *c)
{
	struct hfs_xattr *x;
	int ret;

	if (!stored(name))
		return -ENOTSUP;
	if (is_virt(name) || !i->heap)
		return -EPERM;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	hfs_change_lock(i);
	x = __find(i, name);
	if (x) {
		__put(i, NULL, x);
		hfs_now(&i->ctime);
		__xattr_changed(i, name, NULL, 0, c);
	}
	hfs_change_unlock(i, x != NULL);
	if (!x) /* no ACL is what removing one asks for (tmpfs: success) */
		return is_acl(name) ? 0 : -ENODATA;
	xattr_free(x);
	return 0;
}

void __hfs_acl_chmod(struct hfs_inode *i, struct hfs_completion *c)
{
	struct hfs_xattr *x = __find(i, HFS_ACL_ACCESS);

	if (!x)
		return;
	hfs_acl_chmod(x->value, x->size, i->mode);
	__xattr_changed(i, x->name, x->value, x->size, c);
}

void __hfs_xattr_kill_priv(struct hfs_inode *i, struct hfs_completion *c)
{
	struct hfs_xattr *x;

	/* the applier first: its thread never reads the flag the INIT reply sets */
	if (!i->xattrs || (c && c->applier) || !hfs.killpriv)
		return;
	x = __find(i, "security.capability");
	if (!x)
		return;
	__put(i, NULL, x);
	__xattr_changed(i, "security.capability", NULL, 0, c);
	xattr_free(x);
}

int hfs_acl_inherit(struct hfs_inode *dir, struct hfs_inode *i, mode_t umask)
{
	struct hfs_xattr *d, *access = NULL, *def = NULL;
	mode_t mode = i->mode;
	int ret = -ENOMEM;

	if (i->kind == HFS_LNK)
		return 0; /* a symlink's mode is always 0777 */
	pthread_rwlock_rdlock(&dir->lock);
	d = __find(dir, HFS_ACL_DEFAULT);
	if (d) {
		access = xattr_new(HFS_ACL_ACCESS, d->value, d->size);
		if (i->kind == HFS_DIR)
			def = xattr_new(HFS_ACL_DEFAULT, d->value, d->size);
	}
	pthread_rwlock_unlock(&dir->lock);
	if (!d) {
		i->mode &= ~(umask & 0777);
		return 0;
	}
	if (!access || (i->kind == HFS_DIR && !def))
		goto fail;
	if (hfs_acl_create(access->value, access->size, &mode)) {
		xattr_free(access); /* the mode says it all */
		access = NULL;
	}
	ret = __put(i, def, NULL);
	if (ret)
		goto fail;
	def = NULL;
	ret = __put(i, access, NULL);
	if (ret)
		goto fail;
	i->mode = mode;
	return 0;
fail:
	xattr_free(access);
	xattr_free(def);
	return ret;
}

void hfs_xattr_announce(struct hfs_inode *i, struct hfs_completion *c)
{
	struct hfs_xattr *x, *tmp;

	if (!i->xattrs || !hfs_observed(i->heap))
		return;
	pthread_rwlock_wrlock(&i->lock);
	HASH_ITER(hh, i->xattrs, x, tmp)
		__xattr_changed(i, x->name, x->value, x->size, c);
	pthread_rwlock_unlock(&i->lock);
}

void hfs_xattr_free(struct hfs_inode *i)
{
	struct hfs_xattr *x, *tmp;

	HASH_ITER(hh, i->xattrs, x, tmp) {
		__put(i, NULL, x);
		xattr_free(x);
	}
	i->xattr_bytes = 0;
}
