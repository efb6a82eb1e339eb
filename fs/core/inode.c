/*
 * inode.c — the inode table: inode numbers are indexes into a two-level table (a fixed
 * array of lazily allocated segments, so a lookup by number is two loads and never takes
 * a lock).  A slot carries a generation that grows each time its number is reused; freed
 * numbers go on a free stack (mutex) and are reused first.
 *
 * References: refs counts kernel lookups + directory entries + open handles; the caller
 * that drops it to zero destroys the inode (file blocks, xattrs, symlink target, heap
 * reference) and frees its number.  An inode of a heap takes one of the heap's inodes
 * (hfs_heap_inode_take: NULL at the limit) and is charged to its metadata bytes.  See
 * core.h for the locking rule.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"

#define SEG_SHIFT 16
#define SEG_SIZE (1u << SEG_SHIFT)
#define NSEG 4096 /* 2^28 inode numbers */
_Static_assert((uint64_t)NSEG * SEG_SIZE - HFS_ROOT_INO >= CONF_INODES_MAX,
	       "a heap's inode limit must fit the table");

struct slot {
	_Atomic(struct hfs_inode *) inode;
	uint64_t gen;
};

static _Atomic(struct slot *) segs[NSEG];
static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER;
static hfs_ino_t next_ino = HFS_ROOT_INO; /* tab_lock */
static hfs_ino_t *free_stack;             /* tab_lock */
static size_t free_n, free_alloc;

int hfs_itable_init(void)
{
	next_ino = HFS_ROOT_INO;
	return 0;
}

static void inode_destroy(struct hfs_inode *i);

/* At unmount: destroy every inode still alive (the kernel's lookups die with the mount). */
void hfs_itable_fini(void)
{
	for (unsigned s = 0; s < NSEG; s++) {
		struct slot *seg = atomic_load(&segs[s]);

		for (unsigned k = 0; seg && k < SEG_SIZE; k++) {
			struct hfs_inode *i = atomic_load(&seg[k].inode);
			struct hfs_dirent *de, *tmp;

			if (!i)
				continue;
			if (i->kind == HFS_DIR) {
				HASH_ITER(hh, i->dir.ents, de, tmp) {
					HASH_DEL(i->dir.ents, de);
					free(de);
				}
			}
			inode_destroy(i);
		}
	}
	for (unsigned s = 0; s < NSEG; s++) {
		free(atomic_load(&segs[s]));
		atomic_store(&segs[s], NULL);
	}
	free(free_stack);
	free_stack = NULL;
	free_n = free_alloc = 0;
}

static struct slot *slot_of(hfs_ino_t ino)
{
	struct slot *seg;

	if (ino >> SEG_SHIFT >= NSEG)
		return NULL;
	seg = atomic_load_explicit(&segs[ino >> SEG_SHIFT], memory_order_acquire);
	return seg ? &seg[ino & (SEG_SIZE - 1)] : NULL;
}

/* A free number and its slot's next generation; NULL when the table is full. */
static struct slot *__slot_take(hfs_ino_t *ino)
{
	struct slot *sl;

	if (free_n) {
		*ino = free_stack[--free_n];
		return slot_of(*ino);
	}
	if (next_ino >> SEG_SHIFT >= NSEG)
		return NULL;
	if (!atomic_load(&segs[next_ino >> SEG_SHIFT])) {
		struct slot *seg = calloc(SEG_SIZE, sizeof(*seg));

		if (!seg)
			return NULL;
		atomic_store_explicit(&segs[next_ino >> SEG_SHIFT], seg, memory_order_release);
	}
	*ino = next_ino++;
	sl = slot_of(*ino);
	return sl;
}

void hfs_now(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

void hfs_inode_set_id(struct hfs_inode *i, uint64_t id)
{
	uint_fast64_t next = atomic_load(&i->heap->next_id);

	i->id = id;
	while (next <= id && !atomic_compare_exchange_weak(&i->heap->next_id, &next, id + 1))
		;
}

struct hfs_inode *hfs_inode_new(enum hfs_kind kind, mode_t mode, uid_t uid, gid_t gid,
				struct hfs_heap *heap)
{
	struct hfs_inode *i;
	struct slot *sl;

	if (heap && hfs_heap_inode_take(heap))
		return NULL;
	i = calloc(1, sizeof(*i));
	if (!i)
		goto fail;
	pthread_rwlock_init(&i->lock, NULL);
	i->kind = kind;
	i->mode = mode;
	i->uid = uid;
	i->gid = gid;
	i->nlink = 0; /* directory entries add links (__hfs_dir_add) */
	hfs_now(&i->ctime);
	i->atime = i->mtime = i->btime = i->ctime;
	if (heap) { /* before the slot publishes i: a reader of the slot sees it whole */
		i->heap = heap;
		i->id = atomic_fetch_add(&heap->next_id, 1);
	}
	pthread_mutex_lock(&tab_lock);
	sl = __slot_take(&i->ino);
	if (sl) {
		i->gen = ++sl->gen;
		atomic_store_explicit(&sl->inode, i, memory_order_release);
	}
	pthread_mutex_unlock(&tab_lock);
	if (!sl)
		goto fail_free;
	if (heap) {
		hfs_heap_get(heap);
		hfs_heap_meta(heap, sizeof(*i));
		if (kind == HFS_REG)
			atomic_fetch_add(&heap->files, 1);
	}
	return i;
fail_free:
	pthread_rwlock_destroy(&i->lock);
	free(i);
fail:
	if (heap)
		hfs_heap_inode_give(heap);
	return NULL;
}

struct hfs_inode *hfs_iget(hfs_ino_t ino)
{
	struct slot *sl = slot_of(ino);

	return sl ? atomic_load_explicit(&sl->inode, memory_order_acquire) : NULL;
}

struct hfs_inode *hfs_iget_ref(hfs_ino_t ino)
{
	struct slot *sl = slot_of(ino);
	struct hfs_inode *i;
	uint_fast64_t r;

	if (!sl)
		return NULL;
	/* inode_destroy empties the slot under tab_lock before it frees the inode: while we
	 * hold it, an inode in the slot is memory we may read.  One whose count reached 0 is
	 * being destroyed: gone. */
	pthread_mutex_lock(&tab_lock);
	i = atomic_load_explicit(&sl->inode, memory_order_acquire);
	r = i ? atomic_load(&i->refs) : 0;
	while (r && !atomic_compare_exchange_weak(&i->refs, &r, r + 1))
		;
	pthread_mutex_unlock(&tab_lock);
	return r ? i : NULL;
}

void hfs_iref(struct hfs_inode *i, uint64_t n)
{
	/* release: what this thread read of i before it took the reference comes before the
	 * hfs_iput (acq_rel) that frees i, even when what orders them is the kernel (a reply
	 * on one transport, the forget on another: TSan sees only this) */
	atomic_fetch_add_explicit(&i->refs, n, memory_order_release);
}

static void inode_destroy(struct hfs_inode *i)
{
	struct slot *sl = slot_of(i->ino);

	switch (i->kind) {
	case HFS_REG:
		/* the count first: whoever sees the blocks free sees the file gone too */
		if (i->heap)
			atomic_fetch_sub(&i->heap->files, 1);
		hfs_file_free(i);
		break;
	case HFS_LNK:
		if (i->lnk.target)
			hfs_heap_meta(i->heap, -(int64_t)(strlen(i->lnk.target) + 1));
		free(i->lnk.target);
		break;
	case HFS_STATUS:
		if (i->st.heap)
			hfs_heap_put(i->st.heap);
		break;
	default:
		break;
	}
	hfs_xattr_free(i);
	if (i->heap) {
		hfs_heap_meta(i->heap, -(int64_t)sizeof(*i));
		hfs_heap_inode_give(i->heap);
		hfs_heap_put(i->heap);
	}
	pthread_mutex_lock(&tab_lock);
	atomic_store(&sl->inode, NULL);
	if (free_n == free_alloc) {
		size_t na = free_alloc ? 2 * free_alloc : 1024;
		hfs_ino_t *ns = realloc(free_stack, na * sizeof(*ns));

		if (ns) {
			free_stack = ns;
			free_alloc = na;
		}
	}
	if (free_n < free_alloc) /* else the number is lost: harmless */
		free_stack[free_n++] = i->ino;
	pthread_mutex_unlock(&tab_lock);
	pthread_rwlock_destroy(&i->lock);
	free(i);
}

void hfs_iput(struct hfs_inode *i, uint64_t n)
{
	if (n && atomic_fetch_sub_explicit(&i->refs, n, memory_order_acq_rel) == n)
		inode_destroy(i);
}

void hfs_inode_discard(struct hfs_inode *i)
{
	hfs_iref(i, 1);
	hfs_iput(i, 1);
}

void __hfs_stat(const struct hfs_inode *i, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = i->ino;
	st->st_mode = i->mode;
	st->st_nlink = i->nlink;
	st->st_uid = i->uid;
	st->st_gid = i->gid;
	st->st_rdev = i->rdev;
	st->st_size = i->size;
	st->st_blksize = HFS_BLKSIZE;
	st->st_atim = i->atime;
	st->st_mtim = i->mtime;
	st->st_ctim = i->ctime;
	switch (i->kind) {
	case HFS_REG:
		st->st_blocks = i->file.held / 512;
		break;
	case HFS_DIR:
		st->st_size = (i->dir.nents + 2) * 20; /* like tmpfs */
		break;
	default:
		break;
	}
}

void hfs_stat(struct hfs_inode *i, struct stat *st)
{
	pthread_rwlock_rdlock(&i->lock);
	__hfs_stat(i, st);
	pthread_rwlock_unlock(&i->lock);
}
