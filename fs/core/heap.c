/*
 * heap.c — heaps: one buddy allocator (alloc/buddy.h) per heap plus its policy, made from
 * the config at mount or by `mkdir heaps/NAME` (conf_heap_defaults), removed by rmdir of an
 * empty run-time heap.  A heap appears as heaps/NAME, .heapfs/heaps/NAME and
 * .heapfs/maps/NAME.  Also statfs: per heap inside heaps/NAME (and the object segment
 * in objects/), the sum elsewhere.
 *
 * Limits: a heap's inode limit (max_inodes, `inodes` in the config) is taken by every
 * inode of the heap and every hard link beyond a file's first name (as tmpfs charges
 * links, so names are bounded too); it and the metadata byte count (meta) are atomics.
 * As tmpfs's "ispace", that limit is a space of max_inodes * HFS_INODE_SPACE bytes
 * (h->ispace, one atomic taken by compare-and-swap): an inode or link takes
 * HFS_INODE_SPACE of it, an xattr what it costs the daemon (xattr.c), so xattrs are
 * bounded by what `df -i` shows and fill it as tmpfs's do.
 *
 * Memory: freed blocks park in the allocator's per-CPU caches and empty chunks stay
 * committed until a drain; hfs_heap_settle() drains once a chunk's worth has been freed,
 * and a housekeeper thread drains, once a second, every heap that freed anything.
 *
 * Locking: the heap list (hfs.heapv) and the three entries change under hfs.ns exclusive
 * (the __ functions).  A heap is reference counted (list + each inode in it) so a removed
 * heap lives on until its last open-but-unlinked file is gone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "core.h"

void hfs_heap_get(struct hfs_heap *h)
{
	atomic_fetch_add(&h->refs, 1);
}

void hfs_heap_put(struct hfs_heap *h)
{
	if (atomic_fetch_sub(&h->refs, 1) == 1) {
		buddy_destroy(h->b);
		hfs_dm_heap_destroy(h);
		pthread_rwlock_destroy(&h->quiesce);
		free(h->pol.image);
		free(h);
	}
}

/* The heap's inode space in bytes (saturated: a huge `inodes` is no limit). */
static uint64_t ispace_max(const struct hfs_heap *h)
{
	return h->max_inodes > UINT64_MAX / HFS_INODE_SPACE ? UINT64_MAX
							     : h->max_inodes * HFS_INODE_SPACE;
}

int hfs_heap_space_take(struct hfs_heap *h, uint64_t bytes)
{
	uint_fast64_t n = atomic_load(&h->ispace), max = ispace_max(h);

	do {
		if (bytes > max || n > max - bytes)
			return -ENOSPC;
	} while (!atomic_compare_exchange_weak(&h->ispace, &n, n + bytes));
	return 0;
}

void hfs_heap_space_give(struct hfs_heap *h, uint64_t bytes)
{
	atomic_fetch_sub(&h->ispace, bytes);
}

uint64_t hfs_heap_ifree(struct hfs_heap *h)
{
	uint64_t used = (atomic_load(&h->ispace) + HFS_INODE_SPACE - 1) / HFS_INODE_SPACE;

	return h->max_inodes > used ? h->max_inodes - used : 0;
}

int hfs_heap_inode_take(struct hfs_heap *h)
{
	int ret = hfs_heap_space_take(h, HFS_INODE_SPACE);

	if (!ret)
		atomic_fetch_add(&h->inodes, 1);
	return ret;
}

void hfs_heap_inode_give(struct hfs_heap *h)
{
	atomic_fetch_sub(&h->inodes, 1);
	hfs_heap_space_give(h, HFS_INODE_SPACE);
}

void hfs_heap_meta(struct hfs_heap *h, int64_t delta)
{
	if (h)
		atomic_fetch_add(&h->meta, (uint_fast64_t)delta);
}

void hfs_rwlock_init_writers(pthread_rwlock_t *l)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(l, &a);
	pthread_rwlockattr_destroy(&a);
}

int hfs_cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int ret;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	ret = -pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return ret;
}

struct hfs_heap **hfs_heaps_get(unsigned *n)
{
	struct hfs_heap **v;

	pthread_rwlock_rdlock(&hfs.ns);
	*n = hfs.nheaps;
	v = malloc((*n ? *n : 1) * sizeof(*v));
	for (unsigned k = 0; v && k < *n; k++) {
		v[k] = hfs.heapv[k];
		hfs_heap_get(v[k]);
	}
	pthread_rwlock_unlock(&hfs.ns);
	return v;
}

void hfs_heaps_put(struct hfs_heap **v, unsigned n)
{
	for (unsigned k = 0; v && k < n; k++)
		hfs_heap_put(v[k]);
	free(v);
}

static unsigned log2_of(uint64_t pow2)
{
	return (unsigned)__builtin_ctzll(pow2);
}

static const struct hfs_heap_ops no_ops; /* a plain heap: nothing to do */

static int heap_new(const struct conf_heap *pol, bool from_config, struct msrc *src,
		    struct hfs_heap **out)
{
	struct buddy_params bp = { 0 };
	struct hfs_heap *h = calloc(1, sizeof(*h));
	int ret;

	if (!h)
		return -ENOMEM;
	h->pol = *pol;
	h->pol.image = pol->image ? strdup(pol->image) : NULL;
	h->from_config = from_config;
	h->ops = &no_ops; /* a direct_map heap's are dm.c's; its creator may set its own */
	h->max_inodes = conf_heap_inodes(pol);
	bp.heap_order = log2_of(pol->size);
	bp.min_order = h->min_order = log2_of(pol->min_block);
	bp.chunk_order = log2_of(pol->chunk);
	bp.flags = BUDDY_F_TRACK | (pol->pin ? BUDDY_F_PIN : 0) | (src ? BUDDY_F_SOURCE : 0);
	bp.src = src;
	bp.name = pol->name;
	ret = pol->direct_map ? hfs_dm_heap_create(h, &bp) : buddy_create(&bp, &h->b);
	if (ret) {
		free(h->pol.image);
		free(h);
		return ret;
	}
	atomic_init(&h->refs, 1);
	atomic_init(&h->next_id, 1); /* the heap directory, made first, is 1 (IMG_ROOT_ID) */
	hfs_rwlock_init_writers(&h->quiesce); /* a snapshot must not starve behind writes */
	*out = h;
	return 0;
}

int hfs_heap_new(const struct conf_heap *pol, bool from_config, struct hfs_heap **out)
{
	return heap_new(pol, from_config, NULL, out);
}

int hfs_heap_new_src(const struct conf_heap *pol, struct msrc *src, struct hfs_heap **out)
{
	return heap_new(pol, true, src, out);
}

static struct hfs_inode *__status_file(struct hfs_inode *dir, struct hfs_heap *h,
				       enum hfs_status_kind what)
{
	/* a heap's image holds all its files' bytes, whatever their modes: its owner only */
	mode_t mode = S_IFREG | (what == HFS_ST_IMAGE ? 0400 : 0444);
	struct hfs_inode *i = __hfs_fixed_add(dir, h->pol.name, HFS_STATUS, mode, what);

	/* hfs.ns is held exclusive: nobody can open it before it knows its heap */
	if (i) {
		i->st.heap = h;
		hfs_heap_get(h);
	}
	return i;
}

static void __unlist(struct hfs_heap *h)
{
	for (unsigned k = 0; k < hfs.nheaps; k++) {
		if (hfs.heapv[k] == h) {
			memmove(&hfs.heapv[k], &hfs.heapv[k + 1],
				(hfs.nheaps - k - 1) * sizeof(*hfs.heapv));
			hfs.nheaps--;
			break;
		}
	}
}

/* Remove what __hfs_heap_mkdir added, in reverse; drops the list's reference. */
static void __heap_unlink(struct hfs_heap *h)
{
	const char *name = h->pol.name;

	if (h->st_image)
		__hfs_dir_del(hfs.dot_images, name);
	if (h->st_map)
		__hfs_dir_del(hfs.dot_maps, name);
	if (h->st_heap)
		__hfs_dir_del(hfs.dot_heaps, name);
	if (h->dir)
		__hfs_dir_del(hfs.heaps, name);
	h->st_image = h->st_map = h->st_heap = h->dir = NULL;
	__unlist(h);
	hfs_heap_put(h);
}

int __hfs_heap_mkdir(const char *name, const struct conf_heap *pol, bool from_config,
		     struct hfs_inode **dir)
{
	struct conf_heap defpol;
	struct hfs_heap *h, **nv;
	struct hfs_inode *d;
	int ret;

	if (__hfs_dir_find(hfs.heaps, name))
		return -EEXIST;
	if (!pol) {
		ret = conf_heap_defaults(hfs.conf, name, &defpol);
		if (ret)
			return ret;
		pol = &defpol;
	}
	ret = hfs_heap_new(pol, from_config, &h);
	if (ret)
		return ret;
	nv = realloc(hfs.heapv, (hfs.nheaps + 1) * sizeof(*nv));
	if (!nv) {
		hfs_heap_put(h);
		return -ENOMEM;
	}
	hfs.heapv = nv;
	hfs.heapv[hfs.nheaps++] = h;
	ret = -ENOMEM;
	d = hfs_inode_new(HFS_DIR, S_IFDIR | 01777, hfs.uid, hfs.gid, h);
	if (!d)
		goto fail;
	d->dir.role = HFS_R_HEAPDIR;
	ret = __hfs_dir_add(hfs.heaps, name, d);
	if (ret) {
		hfs_inode_discard(d);
		goto fail;
	}
	h->dir = d;
	ret = -ENOMEM;
	h->st_heap = __status_file(hfs.dot_heaps, h, HFS_ST_HEAP);
	if (!h->st_heap)
		goto fail;
	h->st_map = __status_file(hfs.dot_maps, h, HFS_ST_MAP);
	if (!h->st_map)
		goto fail;
	h->st_image = __status_file(hfs.dot_images, h, HFS_ST_IMAGE);
	if (!h->st_image)
		goto fail;
	*dir = d;
	return 0;
fail:
	__heap_unlink(h);
	return ret;
}

int __hfs_heap_rmdir(struct hfs_inode *dir)
{
	struct hfs_heap *h = dir->heap;

	if (dir->kind != HFS_DIR || !h || h->dir != dir)
		return -ENOTDIR;
	if (h->from_config)
		return -EBUSY;
	if (dir->dir.nents)
		return -ENOTEMPTY;
	__heap_unlink(h);
	return 0;
}

int hfs_heaps_init(void)
{
	struct hfs_inode *d;
	int ret = 0;

	pthread_rwlock_wrlock(&hfs.ns);
	for (unsigned k = 0; k < hfs.conf->nheaps && !ret; k++) {
		ret = __hfs_heap_mkdir(hfs.conf->heaps[k].name, &hfs.conf->heaps[k], true, &d);
		if (ret)
			hfs_log(HFS_LOG_ERR, "heap \"%s\": %s", hfs.conf->heaps[k].name,
				strerror(-ret));
	}
	pthread_rwlock_unlock(&hfs.ns);
	return ret;
}

void hfs_heap_settle(struct hfs_heap *h)
{
	if (atomic_load_explicit(&h->freed, memory_order_relaxed) >= h->pol.chunk &&
	    atomic_exchange(&h->freed, 0) >= h->pol.chunk)
		buddy_drain(h->b);
}

static struct {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stop, running;
} keeper = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *housekeeper(void *arg)
{
	struct timespec until;

	(void)arg;
	pthread_mutex_lock(&keeper.lock);
	while (!keeper.stop) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += 1;
		pthread_cond_timedwait(&keeper.wake, &keeper.lock, &until);
		if (keeper.stop)
			break;
		pthread_rwlock_rdlock(&hfs.ns);
		for (unsigned k = 0; k < hfs.nheaps; k++)
			if (atomic_exchange(&hfs.heapv[k]->freed, 0))
				buddy_drain(hfs.heapv[k]->b);
		pthread_rwlock_unlock(&hfs.ns);
	}
	pthread_mutex_unlock(&keeper.lock);
	return NULL;
}

int hfs_housekeeper_start(void)
{
	int ret = hfs_cond_init_monotonic(&keeper.wake);

	if (ret)
		return ret;
	ret = -pthread_create(&keeper.thread, NULL, housekeeper, NULL);
	keeper.running = !ret;
	return ret;
}

void hfs_housekeeper_stop(void)
{
	if (!keeper.running)
		return;
	pthread_mutex_lock(&keeper.lock);
	keeper.stop = true;
	pthread_cond_signal(&keeper.wake);
	pthread_mutex_unlock(&keeper.lock);
	pthread_join(keeper.thread, NULL);
	pthread_cond_destroy(&keeper.wake);
	keeper.running = false;
}

int hfs_statfs(struct hfs_inode *i, struct statvfs *st)
{
	struct buddy_stats bs;
	uint64_t bsize = 4096, size = 0, free_b = 0, files = 0, ffree = 0;
	struct hfs_heap *h = i->heap, **v = &h;
	unsigned n = 1;

	if (i->kind == HFS_STATUS && i->st.heap)
		h = i->st.heap;
	if (i->kind == HFS_DIR) { /* objects/: the segment */
		pthread_rwlock_rdlock(&hfs.ns);
		h = hfs_dir_heap(i);
		pthread_rwlock_unlock(&hfs.ns);
	}
	memset(st, 0, sizeof(*st));

	if (!h) { /* outside heaps: the sum of every heap */
		pthread_rwlock_rdlock(&hfs.ns);
		v = hfs.heapv;
		n = hfs.nheaps;
	}
	for (unsigned k = 0; k < n; k++) {
		buddy_stats(v[k]->b, &bs);
		size += bs.size;
		free_b += bs.free;
		files += v[k]->max_inodes;
		ffree += hfs_heap_ifree(v[k]); /* inodes and xattrs */
	}
	if (h)
		bsize = bs.min_block;
	else
		pthread_rwlock_unlock(&hfs.ns);
	st->f_bsize = st->f_frsize = bsize;
	st->f_blocks = size / bsize;
	st->f_bfree = st->f_bavail = free_b / bsize;
	st->f_files = files;
	st->f_ffree = st->f_favail = ffree;
	st->f_namemax = HFS_NAME_MAX;
	return 0;
}
