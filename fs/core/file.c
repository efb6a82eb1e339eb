/*
 * file.c — regular file data in buddy blocks of the file's heap.
 *
 * A file is a sorted extent array {foff, hoff, order} covering [0, cap) with no holes;
 * st_size <= cap and the bytes in [size, cap) are undefined (blocks are not zeroed on
 * allocation), so every operation that moves size up zeroes what it exposes.
 *   extents:    growing to `want` bytes appends blocks by binary decomposition of what is
 *               still missing (the largest power of two <= it, at least min_block; a
 *               smaller order when the heap has no block that large), so waste < min_block.
 *   contiguous: one block 2^N >= size; growing allocates the larger block, copies, frees.
 * Shrinking frees whole blocks past the end and refits the tail block when it wastes a
 * min_block or more (allocate the smaller blocks, copy, free the big one; kept if the heap
 * has no room).  ENOSPC: a write takes what it can and writes the bytes that fit (a short
 * write; the next one fails); truncate and fallocate are all or nothing.
 *
 * Reads return iovecs pointing into heap memory (no copy here: fuse_reply_iov writes them
 * straight to the kernel) and hold the inode read lock until the reply is sent.
 * Objects (objects.c) are contiguous files that always hold one block (size 0 keeps a
 * min_block): every mutation below goes through hfs_change_lock/unlock (lock_w/unlock_w),
 * whose heap ops hold the segment lock shared and rewrite the object's map slot before
 * unlocking, so the segment always describes itself.
 * Locking: inode.lock for everything here; __ functions expect it held for writing.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "source.h"

static inline uint64_t blk(unsigned order)
{
	return 1ull << order;
}

static unsigned floor_log2(uint64_t v)
{
	return 63 - (unsigned)__builtin_clzll(v);
}

static struct buddy *heap_of(struct hfs_inode *i)
{
	return i->heap->b;
}

/* The heap's size: no file offset or size reaches past it. */
static uint64_t heap_size(struct hfs_inode *i)
{
	return blk(buddy_heap_order(heap_of(i)));
}

/* The heap's memory: every byte of file data is read, written and zeroed through it
 * (alloc/source.h), whatever backs the heap. */
static struct msrc *src_of(struct hfs_inode *i)
{
	return buddy_source(i->heap->b);
}

/* Index of the extent that holds file offset off (< cap). */
static size_t ext_find(const struct hfs_inode *i, uint64_t off)
{
	size_t lo = 0, hi = i->file.n;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (i->file.ext[mid].foff <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static int __ext_push(struct hfs_inode *i, uint64_t hoff, unsigned order)
{
	if (i->file.n == i->file.alloc) {
		size_t na = i->file.alloc ? 2 * i->file.alloc : 4;
		struct hfs_ext *ne = realloc(i->file.ext, na * sizeof(*ne));

		if (!ne)
			return -ENOMEM;
		i->file.ext = ne;
		i->file.alloc = na;
	}
	i->file.ext[i->file.n++] = (struct hfs_ext){ .foff = i->file.cap, .hoff = hoff,
						     .order = order };
	i->file.cap += blk(order);
	i->file.held += blk(order);
	return 0;
}

static void free_block(struct hfs_inode *i, uint64_t hoff, unsigned order)
{
	buddy_free(heap_of(i), hoff, order);
	atomic_fetch_sub_explicit(&i->heap->held, blk(order), memory_order_relaxed);
	atomic_fetch_add_explicit(&i->heap->freed, blk(order), memory_order_relaxed);
}

/* Drop the last extent from the array; free its block unless keep. */
static void __ext_pop(struct hfs_inode *i, bool keep)
{
	struct hfs_ext *e = &i->file.ext[--i->file.n];

	if (!keep)
		free_block(i, e->hoff, e->order);
	i->file.cap -= blk(e->order);
	i->file.held -= blk(e->order);
}

static int64_t alloc_block(struct hfs_inode *i, unsigned order)
{
	int64_t off = buddy_alloc(heap_of(i), order);

	/* a mirror's room is the host's memory: ask for it now (repl.c "Room") */
	if (off >= 0 && hfs_mirror(i->heap) &&
	    msrc_populate(src_of(i), (uint64_t)off, blk(order)) < 0) {
		buddy_free(heap_of(i), (uint64_t)off, order);
		return -ENOSPC;
	}
	if (off >= 0)
		atomic_fetch_add_explicit(&i->heap->held, blk(order), memory_order_relaxed);
	return off == -ENOMEM ? -ENOSPC : off;
}

/* Calls fn for each piece of file range [off, off + len) (within cap): its heap offset. */
typedef int (*span_fn)(void *arg, struct msrc *s, uint64_t hoff, size_t n);
static int for_span(struct hfs_inode *i, uint64_t off, uint64_t len, span_fn fn, void *arg)
{
	struct msrc *s = src_of(i);
	size_t k = ext_find(i, off);
	int ret = 0;

	while (len && !ret) {
		const struct hfs_ext *e = &i->file.ext[k++];
		uint64_t in = off - e->foff, n = blk(e->order) - in;

		if (n > len)
			n = len;
		ret = fn(arg, s, e->hoff + in, n);
		off += n;
		len -= n;
	}
	return ret;
}

/* The source knows how to zero its memory (anonymous pages: handed back to the kernel). */
static int zero_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	(void)arg;
	return msrc_zero(s, hoff, n);
}

static int __zero(struct hfs_inode *i, uint64_t from, uint64_t to)
{
	return to > from ? for_span(i, from, to - from, zero_fn, NULL) : 0;
}

struct copy_arg {
	const char *src;
};

static int copy_in_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	struct copy_arg *c = arg;
	int ret = msrc_write(s, c->src, hoff, n);

	c->src += n;
	return ret;
}

/* Copy heap bytes from hoff (a block being given up) into the file's pieces. */
static int move_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	uint64_t *from = arg;
	int ret = msrc_copy(s, hoff, *from, n);

	*from += n;
	return ret;
}

/* contiguous layout: move to one block of order `order`, keeping `keep` bytes. */
static int __contig_move(struct hfs_inode *i, unsigned order, uint64_t keep)
{
	int64_t off = alloc_block(i, order);
	struct hfs_ext old;
	int ret;

	if (off < 0)
		return (int)off;
	if (i->file.n) {
		old = i->file.ext[0];
		ret = keep ? msrc_copy(src_of(i), (uint64_t)off, old.hoff, keep) : 0;
		if (ret) {
			free_block(i, (uint64_t)off, order);
			return ret;
		}
		__ext_pop(i, false);
	}
	return __ext_push(i, off, order); /* cannot fail: the array has room for one */
}

/* Could the heap's free bytes take what growing cap to `need` takes?  A hint (other
 * files change it at once), but a "no" is true at this moment: the growth cannot fit now. */
static bool __room_for(struct hfs_inode *i, uint64_t need)
{
	uint64_t size = blk(buddy_heap_order(heap_of(i))), minb = blk(i->heap->min_order);
	uint64_t held = atomic_load_explicit(&i->heap->held, memory_order_relaxed), take;

	if (i->heap->pol.layout == CONF_LAYOUT_CONTIGUOUS) /* one new block; the old one
							      goes only after the copy */
		take = blk((unsigned)buddy_order_of(need, i->heap->min_order));
	else
		take = (need - i->file.cap + minb - 1) & ~(minb - 1);
	return held <= size && take <= size - held;
}

/* Does a client map a range of i now (direct/)?  Then its blocks neither move nor go. */
static bool __busy(struct hfs_inode *i)
{
	return i->heap->ops->busy && i->heap->ops->busy(i);
}

/* Make cap >= want, or at least >= need (need <= want; need == want: all or nothing, and
 * a write passes the byte after its offset: it writes what fits).  Decided before any
 * block is taken: EFBIG when need lies past the heap (it can never fit; want is cut to the
 * heap), ENOSPC when the free bytes already say it cannot fit now.  So an impossible
 * request never takes the heap's free blocks from other files, even for a moment.  Else
 * blocks are taken until cap reaches want or the heap runs out; if cap is still short of
 * need, every block this call took is given back and the error returned. */
static int __grow(struct hfs_inode *i, uint64_t want, uint64_t need)
{
	struct buddy *b = heap_of(i);
	unsigned min = i->heap->min_order, top = buddy_heap_order(b);
	size_t n0 = i->file.n;
	int ret = 0;

	if (want <= i->file.cap)
		return 0;
	if (need > blk(top))
		return -EFBIG; /* a file never outgrows its heap */
	if (want > blk(top))
		want = blk(top);
	if (i->heap->ops->make_room) /* memory that arrives on demand (pool/: donors) */
		i->heap->ops->make_room(i->heap, (want - i->file.cap + blk(min) - 1) &
						 ~(blk(min) - 1));
	if (need > i->file.cap && !__room_for(i, need))
		return -ENOSPC;
	if (i->heap->pol.layout == CONF_LAYOUT_CONTIGUOUS) {
		if (i->file.n && __busy(i))
			return -EBUSY; /* a client maps the block: it must not move */
		ret = buddy_order_of(want, min);
		if (ret < 0)
			return ret;
		if (!i->file.n && !i->file.alloc) {
			i->file.ext = malloc(sizeof(*i->file.ext));
			if (!i->file.ext)
				return -ENOMEM;
			i->file.alloc = 1;
		}
		return __contig_move(i, (unsigned)ret, i->size < i->file.cap ? i->size : i->file.cap);
	}
	while (i->file.cap < want) {
		uint64_t missing = want - i->file.cap;
		unsigned order = missing >= blk(top) ? top : floor_log2(missing);
		int64_t off;

		if (order < min)
			order = min;
		while ((off = alloc_block(i, order)) == -ENOSPC && order > min)
			order--;
		if (off < 0) {
			ret = (int)off;
			break;
		}
		ret = __ext_push(i, (uint64_t)off, order);
		if (ret) {
			free_block(i, (uint64_t)off, order);
			break;
		}
	}
	if (i->file.cap >= need)
		return 0;
	while (i->file.n > n0)
		__ext_pop(i, false);
	return ret;
}

/* After size went down: free blocks wholly past it, refit the tail block. */
static void __shrink(struct hfs_inode *i)
{
	uint64_t size = i->size, minb = blk(i->heap->min_order), used, from;
	struct hfs_ext last;

	if (i->heap->pol.layout == CONF_LAYOUT_CONTIGUOUS) {
		int order = buddy_order_of(size ? size : 1, i->heap->min_order);

		if (!size && i->file.n && !i->heap->objects) /* an object keeps a block */
			__ext_pop(i, false);
		else if (i->file.n && order < (int)i->file.ext[0].order)
			__contig_move(i, (unsigned)order, size);
		return;
	}
	while (i->file.n && i->file.ext[i->file.n - 1].foff >= size)
		__ext_pop(i, false);
	if (!i->file.n)
		return;
	last = i->file.ext[i->file.n - 1];
	used = size - last.foff;
	if (blk(last.order) - used < minb)
		return;
	__ext_pop(i, true);
	if (__grow(i, size, size)) {
		i->file.ext[i->file.n++] = last; /* no room to refit: keep the big block */
		i->file.cap += blk(last.order);
		i->file.held += blk(last.order);
		return;
	}
	from = last.hoff;
	if (for_span(i, last.foff, used, move_fn, &from)) { /* could not copy: keep it */
		while (i->file.n && i->file.ext[i->file.n - 1].foff >= last.foff)
			__ext_pop(i, false);
		i->file.ext[i->file.n++] = last;
		i->file.cap += blk(last.order);
		i->file.held += blk(last.order);
		return;
	}
	free_block(i, last.hoff, last.order);
}

/* With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us: a write or truncate by
 * someone without CAP_FSETID (we take: not root), and any chown, clears suid, and sgid
 * unless it is the group-exec-less kind and the writer is in the file's group (the
 * kernel's setattr_should_drop_sgid, as tmpfs clears them).  The kernel keeps the mode it
 * cached across a write: it is told to drop it.  who NULL: the daemon (nothing to clear
 * but on chown). */
static void __kill_suid(struct hfs_inode *i, const struct hfs_ctx *who, bool always)
{
	mode_t was = i->mode;

	/* who first: the mirror's apply thread (who NULL) never reads the flag the INIT reply
	 * sets on a FUSE thread */
	if ((!always && (!who || who->uid == 0)) || !hfs.killpriv)
		return;
	if (i->mode & S_ISUID)
		i->mode &= ~S_ISUID;
	if (i->mode & S_ISGID &&
	    (i->mode & S_IXGRP || (who && who->gid != i->gid &&
				   !(who->in_group && who->in_group(who, i->gid)))))
		i->mode &= ~S_ISGID;
	if (i->mode != was)
		hfs_kcache_range(i->ino, -1, 0); /* attributes only: no page is touched */
}

/* Lock i for a change of its data or attributes; unlock after one (changed: it did). */
static void lock_w(struct hfs_inode *i)
{
	hfs_change_lock(i);
}

static void unlock_w(struct hfs_inode *i, bool changed)
{
	hfs_change_unlock(i, changed);
	hfs_heap_settle(i->heap); /* contiguous files free their old block when they move */
}

/* i->lock held: tell the heap's observers that i's size (TRUNCATE) or attributes
 * (SETATTR) changed. */
static void __inode_changed(enum hfs_change_kind kind, struct hfs_inode *i,
			    struct hfs_completion *c)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){ .kind = kind, .heap = i->heap, .done = c,
						    .inode = { .i = i } });
}

/* i->lock held: bytes [off, off + len) of i are now buf (the size was old). */
static void __write_changed(struct hfs_inode *i, const void *buf, uint64_t off, uint64_t len,
			    uint64_t old, struct hfs_completion *c)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){
			.kind = HFS_CH_WRITE, .heap = i->heap, .done = c,
			.write = { .i = i, .buf = buf, .off = off, .len = len, .old = old } });
}

/* i->lock held: i has its first writer (open) / lost its last. */
static void __writers_changed(struct hfs_inode *i, bool open)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_WRITERS, .heap = i->heap,
						    .writers = { .i = i, .open = open } });
}

static int __truncate(struct hfs_inode *i, uint64_t size)
{
	int ret = 0;

	if (size > i->size) {
		ret = __grow(i, size, size);
		if (!ret)
			ret = __zero(i, i->size, size);
		if (ret)
			return ret;
		i->size = size;
	} else if (__busy(i)) {
		if (size < i->size)
			return -EBUSY; /* mapped blocks neither move nor go (README) */
	} else if (size < i->size || i->file.cap > size) {
		i->size = size;
		__shrink(i);
	}
	hfs_now(&i->mtime);
	i->ctime = i->mtime;
	return 0;
}

int hfs_truncate(struct hfs_inode *i, uint64_t size, struct hfs_completion *c)
{
	int ret;

	if (i->kind != HFS_REG)
		return i->kind == HFS_DIR ? -EISDIR : -EINVAL;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	ret = __truncate(i, size);
	if (!ret)
		__inode_changed(HFS_CH_TRUNCATE, i, c);
	unlock_w(i, true);
	return ret;
}

/* Free every block now.  The kernel's forget of an unlinked file comes later and
 * asynchronously; its data must go as soon as nobody can reach it. */
static void __drop_data(struct hfs_inode *i)
{
	while (i->file.n)
		__ext_pop(i, false);
	i->size = 0;
}

static void __maybe_drop(struct hfs_inode *i)
{
	if (!i->nlink && !i->file.opens)
		__drop_data(i);
}

void hfs_file_reclaim(struct hfs_inode *i)
{
	pthread_rwlock_wrlock(&i->lock);
	__maybe_drop(i);
	pthread_rwlock_unlock(&i->lock);
	hfs_heap_settle(i->heap);
}

int hfs_open(struct hfs_inode *i, int flags, const struct hfs_ctx *who,
	     struct hfs_completion *c)
{
	bool wr = (flags & O_ACCMODE) != O_RDONLY;
	int ret = 0;

	if (i->kind != HFS_REG)
		return 0;
	if (wr || flags & O_TRUNC) {
		ret = hfs_writable(i->heap, c);
		if (ret)
			return ret;
	}
	lock_w(i);
	/* O_TRUNC truncates whatever the access mode, as on tmpfs: the kernel has checked
	 * write permission for it (may_open) and, told we truncate atomically, has already
	 * dropped its size and pages.  It writes, so a single-writer file open for writing
	 * refuses it; but a read-only open holds no writer slot after. */
	if ((wr || flags & O_TRUNC) && i->heap->pol.writers == CONF_WRITERS_SINGLE &&
	    i->file.writers) {
		ret = -EBUSY;
		goto out;
	}
	if (flags & O_TRUNC) {
		ret = __truncate(i, 0);
		__kill_suid(i, who, false);
		__hfs_xattr_kill_priv(i, c);
		if (!ret) /* size 0, and the mode the kill may have changed */
			__inode_changed(HFS_CH_SETATTR, i, c);
	}
	if (!ret) {
		i->file.writers += wr;
		i->file.opens++;
		if (wr && i->file.writers == 1)
			__writers_changed(i, true);
	}
out:
	unlock_w(i, flags & O_TRUNC);
	return ret;
}

void hfs_release(struct hfs_inode *i, int flags)
{
	if (i->kind != HFS_REG)
		return;
	pthread_rwlock_wrlock(&i->lock);
	i->file.writers -= (flags & O_ACCMODE) != O_RDONLY;
	i->file.opens--;
	if ((flags & O_ACCMODE) != O_RDONLY && !i->file.writers)
		__writers_changed(i, false);
	__maybe_drop(i);
	pthread_rwlock_unlock(&i->lock);
	hfs_heap_settle(i->heap);
}

/* iovecs for file range [off, off + len), merging pieces adjacent in memory. */
struct iov_arg {
	struct iovec *iov;
	int n, max;
	uint64_t mapped; /* pieces mapped so far (each to be unmapped) */
};

static int iov_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	struct iov_arg *a = arg;
	char *p = msrc_map(s, hoff, n);

	if (!p)
		return -ENXIO; /* memory the source cannot map now: read through it */
	a->mapped++;
	if (a->n && (char *)a->iov[a->n - 1].iov_base + a->iov[a->n - 1].iov_len == p) {
		a->iov[a->n - 1].iov_len += n;
		return 0;
	}
	if (a->n == a->max)
		return -E2BIG;
	a->iov[a->n++] = (struct iovec){ .iov_base = p, .iov_len = n };
	return 0;
}

/* A source whose maps pin memory (donor windows): the pieces a read mapped stay pinned
 * until its reply is sent, hfs_read_end on the same thread (ops.c op_read). */
static __thread struct {
	uint64_t off, len;
	bool pinned;
} read_pin;

/* Unmap the first *left pieces of a span. */
static int unmap_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	uint64_t *left = arg;

	if (!*left)
		return 1;
	--*left;
	msrc_unmap(s, hoff, n);
	return 0;
}

static int copy_out_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	char **dst = arg;
	int ret = msrc_read(s, *dst, hoff, n);

	*dst += n;
	return ret;
}

ssize_t hfs_read_begin(struct hfs_inode *i, size_t len, off_t off, struct iovec *iov,
		       int *niov, void **bounce)
{
	struct iov_arg a = { .iov = iov, .max = *niov };
	char *dst;
	int ret;

	read_pin.pinned = false;
	*bounce = NULL;
	*niov = 0;
	if (i->kind != HFS_REG)
		return -EINVAL;
	pthread_rwlock_rdlock(&i->lock);
	if ((uint64_t)off >= i->size)
		return 0;
	if (len > i->size - (uint64_t)off)
		len = i->size - (uint64_t)off;
	if (for_span(i, (uint64_t)off, len, iov_fn, &a) == 0) {
		*niov = a.n;
		if (msrc_map_pins(src_of(i)))
			read_pin.off = (uint64_t)off, read_pin.len = len, read_pin.pinned = true;
		return (ssize_t)len;
	}
	if (a.mapped && msrc_map_pins(src_of(i)))
		for_span(i, (uint64_t)off, len, unmap_fn, &a.mapped);
	/* Too many small blocks for one writev, or memory read through its source: copy
	 * once into a bounce buffer. */
	dst = *bounce = malloc(len);
	if (!dst) {
		pthread_rwlock_unlock(&i->lock);
		return -ENOMEM;
	}
	ret = for_span(i, (uint64_t)off, len, copy_out_fn, &dst);
	if (ret) {
		free(*bounce);
		*bounce = NULL;
		pthread_rwlock_unlock(&i->lock);
		return ret;
	}
	iov[0] = (struct iovec){ .iov_base = *bounce, .iov_len = len };
	*niov = 1;
	return (ssize_t)len;
}

void hfs_read_end(struct hfs_inode *i)
{
	uint64_t all = UINT64_MAX;

	if (read_pin.pinned) {
		for_span(i, read_pin.off, read_pin.len, unmap_fn, &all);
		read_pin.pinned = false;
	}
	pthread_rwlock_unlock(&i->lock);
}

int hfs_write(struct hfs_inode *i, const void *buf, size_t len, off_t off,
	      const struct hfs_ctx *who, struct hfs_completion *c)
{
	struct copy_arg ca = { .src = buf };
	uint64_t end, old;
	mode_t was;
	int ret = 0;

	if (i->kind != HFS_REG)
		return -EINVAL;
	if (!len)
		return 0;
	/* bounds before arithmetic (an offset from a partner may be anything): no byte at
	 * or past the heap's end can ever be written; a write across it writes what fits
	 * (the applier refuses such a record whole before it gets here) */
	if (off < 0 || (uint64_t)off >= heap_size(i))
		return -EFBIG;
	if (len > heap_size(i) - (uint64_t)off)
		len = heap_size(i) - (uint64_t)off;
	end = (uint64_t)off + len;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	old = i->size;
	if (end > i->file.cap) {
		/* a short write when not all fits; the mirror applies a record whole or not */
		ret = __grow(i, end, hfs_mirror(i->heap) ? end : (uint64_t)off + 1);
		if (ret)
			goto out;
		if (end > i->file.cap)
			end = i->file.cap;
		len = end - (uint64_t)off;
	}
	if ((uint64_t)off > i->size)
		ret = __zero(i, i->size, (uint64_t)off);
	if (!ret)
		ret = for_span(i, (uint64_t)off, len, copy_in_fn, &ca);
	if (ret) /* the source failed (EIO): the size stays, the file holds its blocks */
		goto out;
	if (end > i->size)
		i->size = end;
	was = i->mode;
	__kill_suid(i, who, false);
	__hfs_xattr_kill_priv(i, c);
	hfs_now(&i->mtime);
	i->ctime = i->mtime;
	ret = (int)len;
	__write_changed(i, buf, (uint64_t)off, len, old, c);
	if (i->mode != was) /* a write record carries no mode */
		__inode_changed(HFS_CH_SETATTR, i, c);
out:
	unlock_w(i, ret > 0);
	return ret;
}

int hfs_write_undo(struct hfs_inode *i, uint64_t old_size, uint64_t off, uint64_t end)
{
	uint64_t below = end < old_size ? end : old_size;
	char *buf = NULL, *p;
	int ret = -ESTALE;

	if (off < below && !(buf = malloc(below - off)))
		return -ENOMEM;
	lock_w(i);
	if (i->size == end && end > old_size) { /* else a later change touched the file */
		ret = __truncate(i, old_size);
		if (!ret) /* nobody waits for the give-back's changes */
			__inode_changed(HFS_CH_TRUNCATE, i, NULL);
		p = buf;
		if (!ret && buf && !(ret = for_span(i, off, below - off, copy_out_fn, &p)))
			__write_changed(i, buf, off, below - off, i->size, NULL);
	}
	unlock_w(i, true);
	free(buf);
	return ret;
}

static int ts_cmp(struct timespec a, struct timespec b)
{
	return a.tv_sec != b.tv_sec ? (a.tv_sec < b.tv_sec ? -1 : 1) :
	       a.tv_nsec != b.tv_nsec ? (a.tv_nsec < b.tv_nsec ? -1 : 1) : 0;
}

/* i->lock held: does a read at now update i's atime?  The kernel's rule (atime_needs_update,
 * relatime_need_update), which tmpfs follows. */
static bool __atime_due(const struct hfs_inode *i, struct timespec now)
{
	if (hfs.atime == HFS_ATIME_NO || (hfs.nodiratime && i->kind == HFS_DIR))
		return false;
	if (hfs.atime == HFS_ATIME_STRICT)
		return ts_cmp(i->atime, now) != 0;
	return ts_cmp(i->mtime, i->atime) >= 0 || ts_cmp(i->ctime, i->atime) >= 0 ||
	       now.tv_sec - i->atime.tv_sec >= 24 * 60 * 60;
}

void hfs_accessed(struct hfs_inode *i)
{
	struct timespec now;
	bool due;

	if (hfs.atime == HFS_ATIME_NO || !i->heap || hfs_mirror(i->heap))
		return;
	hfs_now(&now);
	/* shared first: with relatime, almost every read finds nothing to do */
	pthread_rwlock_rdlock(&i->lock);
	due = __atime_due(i, now);
	pthread_rwlock_unlock(&i->lock);
	if (!due)
		return;
	lock_w(i);
	due = __atime_due(i, now) && !hfs_writable(i->heap, NULL);
	if (due) {
		i->atime = now;
		__inode_changed(HFS_CH_SETATTR, i, NULL); /* nobody waits for an atime */
	}
	unlock_w(i, false); /* nothing an object's slot keeps changed */
	if (due) /* the kernel caches attributes: they changed behind it */
		hfs_kcache_range(i->ino, -1, 0);
}

int hfs_kill_priv(struct hfs_inode *i, const struct hfs_ctx *who, struct hfs_completion *c)
{
	mode_t was;
	int ret;

	if (i->kind != HFS_REG)
		return 0;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	was = i->mode;
	__kill_suid(i, who, false);
	__hfs_xattr_kill_priv(i, c); /* file capabilities go too, as a write's */
	if (i->mode != was) {
		hfs_now(&i->ctime);
		__inode_changed(HFS_CH_SETATTR, i, c);
	}
	unlock_w(i, i->mode != was);
	return 0;
}

int hfs_fallocate(struct hfs_inode *i, int mode, off_t off, off_t len, struct hfs_completion *c)
{
	uint64_t end;
	int ret;

	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE))
		return -EOPNOTSUPP; /* no holes in a heap file: punch/collapse/insert */
	if (i->kind != HFS_REG)
		return i->kind == HFS_DIR ? -EISDIR : -ENODEV;
	if (off < 0 || len <= 0)
		return -EINVAL;
	if ((uint64_t)off > heap_size(i) || (uint64_t)len > heap_size(i) - (uint64_t)off)
		return -EFBIG; /* can never fit: decided before anything is allocated */
	end = (uint64_t)off + (uint64_t)len;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	ret = __grow(i, end, end);
	if (ret)
		goto out;
	if (mode & FALLOC_FL_ZERO_RANGE)
		ret = __zero(i, (uint64_t)off, end < i->size ? end : i->size);
	if (!ret && !(mode & FALLOC_FL_KEEP_SIZE) && end > i->size)
		ret = __zero(i, i->size, end);
	if (ret)
		goto out;
	if (!(mode & FALLOC_FL_KEEP_SIZE) && end > i->size) {
		i->size = end;
		hfs_now(&i->mtime);
	}
	hfs_now(&i->ctime);
	__inode_changed(HFS_CH_SETATTR, i, c); /* size and times; the blocks are the mirror's
						 * business */
out:
	unlock_w(i, !ret);
	return ret;
}

int hfs_setattr(struct hfs_inode *i, const struct hfs_attr *attr, unsigned to_set,
		const struct hfs_ctx *who, struct hfs_completion *c)
{
	struct timespec now;
	int ret = 0;

	if (!i->heap)
		return -EPERM; /* the fixed directories and .heapfs/ */
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	if (to_set & HFS_SET_SIZE && i->kind != HFS_REG)
		return i->kind == HFS_DIR ? -EISDIR : -EINVAL;
	hfs_now(&now);
	lock_w(i);
	if (to_set & HFS_SET_SIZE) {
		ret = __truncate(i, (uint64_t)attr->size);
		if (ret)
			goto out;
		__kill_suid(i, who, false);
		__hfs_xattr_kill_priv(i, c);
	}
	if (to_set & HFS_SET_MODE) {
		i->mode = (i->mode & S_IFMT) | (attr->mode & 07777);
		__hfs_acl_chmod(i, c); /* the access ACL follows the mode */
	}
	if (to_set & HFS_SET_UID)
		i->uid = attr->uid;
	if (to_set & HFS_SET_GID)
		i->gid = attr->gid;
	if (to_set & (HFS_SET_UID | HFS_SET_GID) && i->kind != HFS_DIR &&
	    !(to_set & HFS_SET_MODE))
		__kill_suid(i, who, true);
	if (to_set & (HFS_SET_UID | HFS_SET_GID) && i->kind != HFS_DIR)
		__hfs_xattr_kill_priv(i, c); /* any chown, as chown_common's ATTR_KILL_PRIV */
	if (to_set & HFS_SET_ATIME)
		i->atime = attr->atime;
	if (to_set & HFS_SET_ATIME_NOW)
		i->atime = now;
	if (to_set & HFS_SET_MTIME)
		i->mtime = attr->mtime;
	if (to_set & HFS_SET_MTIME_NOW)
		i->mtime = now;
	i->ctime = to_set & HFS_SET_CTIME ? attr->ctime : now;
	__inode_changed(HFS_CH_SETATTR, i, c);
out:
	unlock_w(i, !ret);
	return ret;
}

void hfs_file_free(struct hfs_inode *i)
{
	free(i->file.oname);
	i->file.oname = NULL;
	__drop_data(i);
	hfs_heap_settle(i->heap);
	free(i->file.ext);
	i->file.ext = NULL;
	i->file.alloc = 0;
}

int hfs_file_reserve(struct hfs_inode *i, uint64_t cap)
{
	int ret;

	pthread_rwlock_wrlock(&i->lock);
	ret = __grow(i, cap, cap);
	pthread_rwlock_unlock(&i->lock);
	return ret;
}

int hfs_file_adopt(struct hfs_inode *i, uint64_t hoff, unsigned order, uint64_t size)
{
	int ret;

	pthread_rwlock_wrlock(&i->lock);
	ret = __ext_push(i, hoff, order);
	if (!ret)
		i->size = size;
	pthread_rwlock_unlock(&i->lock);
	return ret;
}

unsigned hfs_file_max_order(struct hfs_inode *i)
{
	unsigned m = 0;

	pthread_rwlock_rdlock(&i->lock);
	for (size_t k = 0; k < i->file.n; k++)
		if (i->file.ext[k].order > m)
			m = i->file.ext[k].order;
	pthread_rwlock_unlock(&i->lock);
	return m;
}
