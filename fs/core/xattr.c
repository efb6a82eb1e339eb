/*
 * xattr.c — extended attributes: `user.*` names are stored per inode (a uthash table
 * name -> value under the inode lock); other namespaces are not supported (ENOTSUP on set,
 * ENODATA on get).  Inside heaps, read-only virtual names describe where the data lives:
 * user.heapfs.heap (every inode of a heap), user.heapfs.order (largest block order held)
 * and user.heapfs.blocks (number of buddy blocks) for regular files, user.heapfs.offset
 * (offset of its block in the segment) for objects; setting or removing
 * any user.heapfs.* name is EPERM.
 *
 * Budget: an inode's stored xattrs may cost at most HFS_XATTR_BUDGET bytes, each counted
 * as HFS_XATTR_ENTRY (its table entry) + name + NUL + value (xattr_bytes, under the inode
 * lock); a set past it is ENOSPC and leaves every xattr as it was.  The same cost is
 * charged to the heap's metadata bytes.
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

static const char *const virt_names[] = { VIRT "heap", VIRT "order", VIRT "blocks",
					  VIRT "offset" };
enum { V_HEAP, V_ORDER, V_BLOCKS, V_OFFSET, V_N };

static bool is_user(const char *name)
{
	return strncmp(name, USER, strlen(USER)) == 0;
}

static bool is_virt(const char *name)
{
	return strncmp(name, VIRT, strlen(VIRT)) == 0;
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

/* Bytes of daemon memory one stored xattr costs (what the budget counts). */
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

int hfs_setxattr(struct hfs_inode *i, const char *name, const void *value, size_t size,
		 int flags, struct hfs_completion *c)
{
	struct hfs_xattr *x, *old;
	size_t len = strlen(name);
	bool restore = flags & HFS_XATTR_RESTORE;
	int ret = 0;

	flags &= ~HFS_XATTR_RESTORE;
	if (!is_user(name))
		return -ENOTSUP;
	if (i->kind == HFS_STATUS && i->st.what == HFS_ST_FEATURE && i->st.file->setxattr)
		return i->st.file->setxattr(name, value, size); /* partner: heapfsctl promote */
	if (is_virt(name) && !(restore && !strcmp(name, HFS_XATTR_STATE)))
		return -EPERM;
	if (!i->heap)
		return -EPERM;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	if (len > XATTR_NAME_MAX)
		return -ERANGE;
	if (size > XATTR_SIZE_MAX)
		return -E2BIG;
	x = malloc(sizeof(*x) + len + 1);
	if (!x)
		return -ENOMEM;
	x->value = malloc(size ? size : 1);
	if (!x->value) {
		free(x);
		return -ENOMEM;
	}
	memcpy(x->name, name, len + 1);
	memcpy(x->value, value, size);
	x->size = size;
	hfs_change_lock(i);
	old = __find(i, name);
	if (old && flags & XATTR_CREATE)
		ret = -EEXIST;
	else if (!old && flags & XATTR_REPLACE)
		ret = -ENODATA;
	else if (i->xattr_bytes - (old ? cost(old) : 0) + cost(x) > HFS_XATTR_BUDGET)
		ret = -ENOSPC;
	if (!ret) {
		if (old) {
			HASH_DEL(i->xattrs, old);
			i->xattr_bytes -= cost(old);
			hfs_heap_meta(i->heap, -(int64_t)cost(old));
		}
		HASH_ADD_STR(i->xattrs, name, x);
		i->xattr_bytes += cost(x);
		hfs_heap_meta(i->heap, (int64_t)cost(x));
		hfs_now(&i->ctime);
		__xattr_changed(i, name, x->value, size, c);
	}
	hfs_change_unlock(i, !ret); /* ctime changed: an object's slot shows it */
	if (ret) {
		old = x;
	}
	if (old) {
		free(old->value);
		free(old);
	}
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

ssize_t hfs_listxattr(struct hfs_inode *i, char *buf, size_t size)
{
	struct hfs_xattr *x, *tmp;
	size_t need = 0;
	ssize_t ret;

	pthread_rwlock_rdlock(&i->lock);
	for (unsigned k = 0; k < nvirt(i); k++)
		need += strlen(virt_names[k]) + 1;
	HASH_ITER(hh, i->xattrs, x, tmp)
		need += strlen(x->name) + 1;
	ret = (ssize_t)need;
	if (size && need > size)
		ret = -ERANGE;
	else if (size) {
		char *p = buf;

		for (unsigned k = 0; k < nvirt(i); k++)
			p = stpcpy(p, virt_names[k]) + 1;
		HASH_ITER(hh, i->xattrs, x, tmp)
			p = stpcpy(p, x->name) + 1;
	}
	pthread_rwlock_unlock(&i->lock);
	return ret;
}

int hfs_removexattr(struct hfs_inode *i, const char *name, struct hfs_completion *c)
{
	struct hfs_xattr *x;
	int ret;

	if (!is_user(name))
		return -ENOTSUP;
	if (is_virt(name) || !i->heap)
		return -EPERM;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	hfs_change_lock(i);
	x = __find(i, name);
	if (x) {
		HASH_DEL(i->xattrs, x);
		i->xattr_bytes -= cost(x);
		hfs_heap_meta(i->heap, -(int64_t)cost(x));
		hfs_now(&i->ctime);
		__xattr_changed(i, name, NULL, 0, c);
	}
	hfs_change_unlock(i, x != NULL);
	if (!x)
		return -ENODATA;
	free(x->value);
	free(x);
	return 0;
}

void hfs_xattr_free(struct hfs_inode *i)
{
	struct hfs_xattr *x, *tmp;

	HASH_ITER(hh, i->xattrs, x, tmp) {
		HASH_DEL(i->xattrs, x);
		hfs_heap_meta(i->heap, -(int64_t)cost(x));
		free(x->value);
		free(x);
	}
	i->xattr_bytes = 0;
}
