/*
 * file.c — regular file data in buddy blocks of the file's heap.
 *
 * A file is a sorted extent array {foff, hoff, order}, each extent min_block aligned in the
 * file, none overlapping; cap is the end of the last one.  Allocated bytes past st_size are
 * undefined (blocks are not zeroed on allocation), so every operation that moves size up
 * zeroes the allocated bytes it exposes.
 *   extents:    the extents may have gaps, holes as on tmpfs: a hole reads as zeros and
 *               holds no memory.  A write, or fallocate, fills the gaps of the min_block
 *               aligned range it touches with blocks by binary decomposition of each gap
 *               (the largest power of two <= what is missing, a smaller order when the heap
 *               has no block that large) and zeroes what of a new block it does not write.
 *               truncate up only moves the size.  A punch frees the blocks inside its
 *               range, splitting a block in halves (buddy_split) down to min_block where the
 *               range cuts it, and gives their pages back to the OS at once; the partial
 *               ends are zeroed.  A file may be larger than its heap (HFS_FILE_MAX).
 *   contiguous: one block 2^N >= size, from offset 0, never a hole; growing allocates the
 *               larger block, copies, frees.  A punch zeroes (the pages go back to the
 *               OS, the block stays).
 * Shrinking frees whole blocks past the end; the tail block is split down to what it still
 * holds (extents: no copy) or refit (contiguous: allocate the smaller block, copy, free the
 * big one; kept if the heap has no room).  ENOSPC: a write takes what it can and writes the
 * bytes that fit (a short write; the next one fails); truncate and fallocate are all or
 * nothing.
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
#include <sys/mman.h>
#include <unistd.h>

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

static uint64_t heap_size(struct hfs_inode *i)
{
	return blk(buddy_heap_order(heap_of(i)));
}

static bool sparse(const struct hfs_inode *i)
{
	return i->heap->pol.layout != CONF_LAYOUT_CONTIGUOUS;
}

uint64_t hfs_file_max(const struct hfs_heap *h)
{
	return h->pol.layout == CONF_LAYOUT_CONTIGUOUS ? blk(buddy_heap_order(h->b)) : HFS_FILE_MAX;
}

/* The heap's memory: every byte of file data is read, written and zeroed through it
 * (alloc/source.h), whatever backs the heap. */
static struct msrc *src_of(struct hfs_inode *i)
{
	return buddy_source(i->heap->b);
}

static uint64_t ext_end(const struct hfs_ext *e)
{
	return e->foff + blk(e->order);
}

/* Index of the first extent that ends past file offset off (n: none). */
static size_t ext_find(const struct hfs_inode *i, uint64_t off)
{
	size_t lo = 0, hi = i->file.n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ext_end(&i->file.ext[mid]) <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void __cap_update(struct hfs_inode *i)
{
	i->file.cap = i->file.n ? ext_end(&i->file.ext[i->file.n - 1]) : 0;
}

/* Insert the block (hoff, order) as file bytes from foff at index k (the order stays). */
static int __ext_insert(struct hfs_inode *i, size_t k, uint64_t foff, uint64_t hoff,
			unsigned order)
{
	if (i->file.n == i->file.alloc) {
		size_t na = i->file.alloc ? 2 * i->file.alloc : 4;
		struct hfs_ext *ne = realloc(i->file.ext, na * sizeof(*ne));

		if (!ne)
			return -ENOMEM;
		i->file.ext = ne;
		i->file.alloc = na;
	}
	memmove(&i->file.ext[k + 1], &i->file.ext[k], (i->file.n - k) * sizeof(*i->file.ext));
	i->file.ext[k] = (struct hfs_ext){ .foff = foff, .hoff = hoff, .order = order };
	i->file.n++;
	i->file.held += blk(order);
	__cap_update(i);
	return 0;
}

static int __ext_push(struct hfs_inode *i, uint64_t hoff, unsigned order)
{
	return __ext_insert(i, i->file.n, i->file.cap, hoff, order);
}

/* Take extent k out of the array (its block is the caller's now). */
static void __ext_remove(struct hfs_inode *i, size_t k)
{
	i->file.held -= blk(i->file.ext[k].order);
	memmove(&i->file.ext[k], &i->file.ext[k + 1], (i->file.n - k - 1) * sizeof(*i->file.ext));
	i->file.n--;
	__cap_update(i);
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
	struct hfs_ext e = i->file.ext[i->file.n - 1];

	__ext_remove(i, i->file.n - 1);
	if (!keep)
		free_block(i, e.hoff, e.order);
}

/* A block leaves a file for good (a punch, a shrink): its whole pages go back to the OS
 * now, as an unlinked file's do, whatever else its chunk still holds. */
static void release_block(struct hfs_inode *i, uint64_t hoff, unsigned order)
{
	if (order >= 12) /* whole pages (a block is aligned to its size) */
		msrc_release(src_of(i), hoff, blk(order));
	free_block(i, hoff, order);
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

/* Calls fn for each piece of file range [off, off + len): its heap offset, or s NULL for
 * a piece that is a hole (no extent holds it). */
typedef int (*span_fn)(void *arg, struct msrc *s, uint64_t hoff, size_t n);
static int for_span(struct hfs_inode *i, uint64_t off, uint64_t len, span_fn fn, void *arg)
{
	struct msrc *s = src_of(i);
	size_t k = ext_find(i, off);
	int ret = 0;

	while (len && !ret) {
		const struct hfs_ext *e = k < i->file.n ? &i->file.ext[k] : NULL;
		uint64_t n;

		if (e && e->foff <= off) {
			uint64_t in = off - e->foff;

			n = blk(e->order) - in < len ? blk(e->order) - in : len;
			ret = fn(arg, s, e->hoff + in, n);
			k++;
		} else {
			n = e && e->foff - off < len ? e->foff - off : len;
			ret = fn(arg, NULL, 0, n);
		}
		off += n;
		len -= n;
	}
	return ret;
}

/* The source knows how to zero its memory (anonymous pages: handed back to the kernel);
 * a hole reads as zeros already. */
static int zero_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	(void)arg;
	return s ? msrc_zero(s, hoff, n) : 0;
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
	int ret = s ? msrc_write(s, c->src, hoff, n) : -EIO; /* the range was filled first */

	c->src += n;
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

/* Could the heap's free bytes take `take` more bytes of blocks?  A hint (other files
 * change it at once), but a "no" is true at this moment: the growth cannot fit now. */
static bool __room(struct hfs_inode *i, uint64_t take)
{
	uint64_t size = heap_size(i);
	uint64_t held = atomic_load_explicit(&i->heap->held, memory_order_relaxed);

	return held <= size && take <= size - held;
}

/* Does a client map a range of i now (direct/)?  Then its blocks neither move nor go. */
static bool __busy(struct hfs_inode *i)
{
	return i->heap->ops->busy && i->heap->ops->busy(i);
}

/* Memory that arrives on demand (pool/: donors): ask for `bytes` more. */
static void make_room(struct hfs_inode *i, uint64_t bytes)
{
	if (i->heap->ops->make_room)
		i->heap->ops->make_room(i->heap, bytes);
}

/* contiguous layout: make cap >= want, all or nothing.  Decided before any block is
 * taken: EFBIG when want lies past the heap (it can never fit), ENOSPC when the free bytes
 * already say it cannot fit now.  So an impossible request never takes the heap's free
 * blocks from other files, even for a moment. */
static int __grow(struct hfs_inode *i, uint64_t want)
{
	unsigned min = i->heap->min_order;
	int ret;

	if (want <= i->file.cap)
		return 0;
	if (want > heap_size(i))
		return -EFBIG; /* a contiguous file never outgrows its heap */
	ret = buddy_order_of(want, min);
	if (ret < 0)
		return ret;
	make_room(i, blk((unsigned)ret));
	/* one new block; the old one goes only after the copy */
	if (!__room(i, blk((unsigned)ret)))
		return -ENOSPC;
	if (i->file.n && __busy(i))
		return -EBUSY; /* a client maps the block: it must not move */
	if (!i->file.n && !i->file.alloc) {
		i->file.ext = malloc(sizeof(*i->file.ext));
		if (!i->file.ext)
			return -ENOMEM;
		i->file.alloc = 1;
	}
	return __contig_move(i, (unsigned)ret, i->size < i->file.cap ? i->size : i->file.cap);
}

/* Room in the extent array for `more` insertions. */
static int __ext_reserve(struct hfs_inode *i, size_t more)
{
	size_t na = i->file.alloc ? i->file.alloc : 4;
	struct hfs_ext *ne;

	if (i->file.n + more <= i->file.alloc)
		return 0;
	while (na < i->file.n + more)
		na *= 2;
	ne = realloc(i->file.ext, na * sizeof(*ne));
	if (!ne)
		return -ENOMEM;
	i->file.ext = ne;
	i->file.alloc = na;
	return 0;
}

/* A block taken for a gap, not yet in the array. */
struct piece {
	uint64_t foff, hoff;
	unsigned order;
};

/* Walk the gaps of [from, to): fn(arg, gap start, gap end) for each, stopping at its first
 * non-zero. */
static int __for_gaps(struct hfs_inode *i, uint64_t from, uint64_t to,
		      int (*fn)(void *arg, uint64_t g0, uint64_t g1), void *arg)
{
	size_t k = ext_find(i, from);
	uint64_t pos = from;
	int ret = 0;

	while (pos < to && !ret) {
		const struct hfs_ext *e = k < i->file.n ? &i->file.ext[k] : NULL;

		if (e && e->foff <= pos) {
			pos = ext_end(e);
			k++;
			continue;
		}
		ret = fn(arg, pos, e && e->foff < to ? e->foff : to);
		pos = e && e->foff < to ? e->foff : to;
	}
	return ret;
}

static int count_gap(void *arg, uint64_t g0, uint64_t g1)
{
	*(uint64_t *)arg += g1 - g0;
	return 0;
}

struct fill {
	struct hfs_inode *i;
	struct piece *v;
	size_t n, max;
	uint64_t failed_at; /* where no block could be had (UINT64_MAX: none) */
	int err;
};

/* Blocks for gap [g0, g1) by binary decomposition, the largest first. */
static int fill_gap(void *arg, uint64_t g0, uint64_t g1)
{
	struct fill *f = arg;
	unsigned min = f->i->heap->min_order, top = buddy_heap_order(heap_of(f->i));

	while (g0 < g1) {
		uint64_t missing = g1 - g0;
		unsigned order = missing >= blk(top) ? top : floor_log2(missing);
		int64_t off;

		if (order < min)
			order = min;
		while ((off = alloc_block(f->i, order)) == -ENOSPC && order > min)
			order--;
		if (off < 0) {
			f->failed_at = g0;
			f->err = (int)off;
			return 1;
		}
		if (f->n == f->max) {
			size_t nm = f->max ? 2 * f->max : 16;
			struct piece *nv = realloc(f->v, nm * sizeof(*nv));

			if (!nv) {
				free_block(f->i, (uint64_t)off, order);
				f->failed_at = g0;
				f->err = -ENOMEM;
				return 1;
			}
			f->v = nv;
			f->max = nm;
		}
		f->v[f->n++] = (struct piece){ .foff = g0, .hoff = (uint64_t)off, .order = order };
		g0 += blk(order);
	}
	return 0;
}

/* extents layout: back every min_block of [from, to) with blocks (fill its gaps).  What a
 * new block holds outside [wfrom, wto) (the bytes the caller writes next) is zeroed: it was
 * a hole.  all: every byte or none (ENOSPC decided before a block is taken when the free
 * bytes say so); else the blocks that could be had, from the start: *upto is where the
 * backed range from `from` ends (to when all of it), and an error only when not even
 * from's min_block could be had. */
static int __back(struct hfs_inode *i, uint64_t from, uint64_t to, uint64_t wfrom, uint64_t wto,
		  bool all, uint64_t *upto)
{
	uint64_t mb = blk(i->heap->min_order), a = from & ~(mb - 1), b = (to + mb - 1) & ~(mb - 1);
	struct fill f = { .i = i, .failed_at = UINT64_MAX };
	uint64_t missing = 0;
	int ret;

	if (upto)
		*upto = to;
	if (from >= to)
		return 0;
	__for_gaps(i, a, b, count_gap, &missing);
	if (!missing)
		return 0;
	make_room(i, missing);
	if (all && !__room(i, missing))
		return -ENOSPC;
	__for_gaps(i, a, b, fill_gap, &f);
	ret = f.err;
	if ((!ret || (!all && f.failed_at > from)) && __ext_reserve(i, f.n)) {
		ret = -ENOMEM; /* nothing to keep the blocks in: give them all back */
		f.failed_at = a;
	}
	if (ret && (all || f.failed_at <= from)) {
		for (size_t k = 0; k < f.n; k++)
			free_block(i, f.v[k].hoff, f.v[k].order);
		free(f.v);
		return ret;
	}
	for (size_t k = 0; k < f.n; k++) {
		const struct piece *p = &f.v[k];
		uint64_t pe = p->foff + blk(p->order);

		if (p->foff < wfrom)
			msrc_zero(src_of(i), p->hoff, (pe < wfrom ? pe : wfrom) - p->foff);
		if (pe > wto) {
			uint64_t z = p->foff > wto ? p->foff : wto;

			msrc_zero(src_of(i), p->hoff + (z - p->foff), pe - z);
		}
		__ext_insert(i, ext_find(i, p->foff), p->foff, p->hoff, p->order); /* reserved */
	}
	free(f.v);
	if (upto && f.failed_at < to)
		*upto = f.failed_at;
	return 0;
}

/* Remove file range [from, to) (min_block aligned) from the block at piece p: the parts
 * wholly inside go (their pages back to the OS), a block the range cuts is split in halves
 * until each half is inside or outside; what stays is inserted at *k onwards. */
static void __carve(struct hfs_inode *i, size_t *k, struct piece p, uint64_t from, uint64_t to)
{
	uint64_t pe = p.foff + blk(p.order), half = blk(p.order - 1);

	if (p.foff >= from && pe <= to) {
		release_block(i, p.hoff, p.order);
		return;
	}
	if (pe <= from || p.foff >= to || buddy_split(heap_of(i), p.hoff, p.order)) {
		/* outside, or (never: the caller owns the block) a split refused: it stays */
		__ext_insert(i, (*k)++, p.foff, p.hoff, p.order); /* reserved by the caller */
		return;
	}
	__carve(i, k, (struct piece){ p.foff, p.hoff, p.order - 1 }, from, to);
	__carve(i, k, (struct piece){ p.foff + half, p.hoff + half, p.order - 1 }, from, to);
}

/* Free every block of file range [from, to) (min_block aligned): -ENOMEM only when the
 * extent array cannot hold the pieces a cut block leaves (then nothing changed). */
static int __unback(struct hfs_inode *i, uint64_t from, uint64_t to)
{
	size_t k = ext_find(i, from);

	while (k < i->file.n && i->file.ext[k].foff < to) {
		struct hfs_ext e = i->file.ext[k];

		/* a block cut at both ends leaves at most two pieces per order it spans */
		if (__ext_reserve(i, 2 * (e.order - i->heap->min_order) + 1))
			return -ENOMEM;
		__ext_remove(i, k);
		__carve(i, &k, (struct piece){ e.foff, e.hoff, e.order }, from, to);
	}
	return 0;
}

/* Punch [from, to): free the whole min_blocks inside it (extents; contiguous: zero them,
 * their pages go back to the OS), zero the partial ends.  Never past cap. */
static int __punch(struct hfs_inode *i, uint64_t from, uint64_t to)
{
	uint64_t mb = blk(i->heap->min_order), a = (from + mb - 1) & ~(mb - 1), b = to & ~(mb - 1);
	int ret;

	if (__busy(i))
		return -EBUSY; /* mapped blocks neither move nor go (README) */
	if (to > i->file.cap)
		to = b = i->file.cap;
	if (from >= to)
		return 0;
	if (!sparse(i) || a >= b)
		return __zero(i, from, to);
	ret = __zero(i, from, a);
	if (!ret)
		ret = __zero(i, b, to);
	return ret ? ret : __unback(i, a, b);
}

/* After size went down: free blocks wholly past it; extents: split the tail block down to
 * what it still holds; contiguous: refit it. */
static void __shrink(struct hfs_inode *i)
{
	uint64_t size = i->size, mb = blk(i->heap->min_order);

	if (i->heap->pol.layout == CONF_LAYOUT_CONTIGUOUS) {
		int order = buddy_order_of(size ? size : 1, i->heap->min_order);

		if (!size && i->file.n && !i->heap->objects) /* an object keeps a block */
			__ext_pop(i, false);
		else if (i->file.n && order < (int)i->file.ext[0].order)
			__contig_move(i, (unsigned)order, size);
		return;
	}
	while (i->file.n && i->file.ext[i->file.n - 1].foff >= size) {
		struct hfs_ext e = i->file.ext[i->file.n - 1];

		__ext_pop(i, true);
		release_block(i, e.hoff, e.order);
	}
	if (i->file.cap > size)
		__unback(i, (size + mb - 1) & ~(mb - 1), i->file.cap); /* no memory: kept */
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

	if (size > hfs_file_max(i->heap))
		return -EFBIG;
	if (size > i->size) {
		/* extents: no block is taken, the new bytes are a hole */
		ret = sparse(i) ? 0 : __grow(i, size);
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

/* What a read of a hole points at: ZEROS_LEN bytes of read-only anonymous memory, which
 * the kernel backs with its one zero page (no memory of ours).  NULL: none to be had. */
#define ZEROS_LEN (4u << 20)
static const char *zeros;
static pthread_once_t zeros_once = PTHREAD_ONCE_INIT;

static void zeros_map(void)
{
	void *p = mmap(NULL, ZEROS_LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	zeros = p == MAP_FAILED ? NULL : p;
}

static int iov_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	struct iov_arg *a = arg;
	char *p;

	if (!s) {
		pthread_once(&zeros_once, zeros_map);
		for (; n; ) {
			size_t k = n < ZEROS_LEN ? n : ZEROS_LEN;

			if (!zeros || a->n == a->max)
				return -E2BIG; /* read it through the bounce buffer */
			a->iov[a->n++] = (struct iovec){ .iov_base = (void *)zeros, .iov_len = k };
			n -= k;
		}
		return 0;
	}
	p = msrc_map(s, hoff, n);
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

	if (!s)
		return 0; /* a hole was never mapped */
	if (!*left)
		return 1;
	--*left;
	msrc_unmap(s, hoff, n);
	return 0;
}

static int copy_out_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	char **dst = arg;
	int ret = s ? msrc_read(s, *dst, hoff, n) : (memset(*dst, 0, n), 0);

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

int __hfs_file_read(struct hfs_inode *i, uint64_t off, uint64_t len, void *dst)
{
	char *p = dst;

	if (i->kind != HFS_REG || off > i->size || len > i->size - off)
		return -EINVAL;
	return for_span(i, off, len, copy_out_fn, &p);
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
	 * or past the largest file (a contiguous heap's end) can ever be written; a write
	 * across it writes what fits (the applier refuses such a record whole before it gets
	 * here) */
	if (off < 0 || (uint64_t)off >= hfs_file_max(i->heap))
		return -EFBIG;
	if (len > hfs_file_max(i->heap) - (uint64_t)off)
		len = hfs_file_max(i->heap) - (uint64_t)off;
	end = (uint64_t)off + len;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	old = i->size;
	if (sparse(i)) {
		/* a short write when not all fits; the mirror applies a record whole or not */
		ret = __back(i, (uint64_t)off, end, (uint64_t)off, end, hfs_mirror(i->heap), &end);
		if (ret)
			goto out;
		len = end - (uint64_t)off;
	} else if (end > i->file.cap) {
		ret = __grow(i, end);
		if (ret)
			goto out;
	}
	if ((uint64_t)off > i->size) /* allocated bytes past the size are undefined */
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

/* i->lock held: bytes [off, off + len) of i were punched (read as zeros now). */
static void __punch_changed(struct hfs_inode *i, uint64_t off, uint64_t len,
			    struct hfs_completion *c)
{
	if (hfs_observed(i->heap))
		__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_PUNCH, .heap = i->heap, .done = c,
						    .punch = { .i = i, .off = off, .len = len } });
}

/* Modes: 0 and KEEP_SIZE allocate (a hole in the range gets blocks; past the heap's free
 * bytes: ENOSPC, as tmpfs); ZERO_RANGE allocates and zeroes; PUNCH_HOLE|KEEP_SIZE frees.
 * COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE: EOPNOTSUPP (as tmpfs).  EFBIG only past the
 * largest file (hfs_file_max). */
int hfs_fallocate(struct hfs_inode *i, int mode, off_t off, off_t len, struct hfs_completion *c)
{
	bool punch = mode & FALLOC_FL_PUNCH_HOLE, zero = mode & FALLOC_FL_ZERO_RANGE;
	uint64_t end, from;
	int ret;

	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_PUNCH_HOLE))
		return -EOPNOTSUPP; /* collapse/insert/unshare */
	if (punch && (zero || !(mode & FALLOC_FL_KEEP_SIZE)))
		return -EOPNOTSUPP; /* as the VFS: a punch keeps the size */
	if (i->kind != HFS_REG)
		return i->kind == HFS_DIR ? -EISDIR : -ENODEV;
	if (off < 0 || len <= 0)
		return -EINVAL;
	if ((uint64_t)off > hfs_file_max(i->heap) ||
	    (uint64_t)len > hfs_file_max(i->heap) - (uint64_t)off)
		return -EFBIG; /* no file is that large: decided before anything is allocated */
	end = (uint64_t)off + (uint64_t)len;
	ret = hfs_writable(i->heap, c);
	if (ret)
		return ret;
	lock_w(i);
	if (punch) {
		ret = __punch(i, (uint64_t)off, end);
		if (ret)
			goto out;
		hfs_now(&i->mtime);
		i->ctime = i->mtime;
		if ((uint64_t)off < i->size) /* what lies past the size is nobody's to see */
			__punch_changed(i, (uint64_t)off, (end < i->size ? end : i->size) - (uint64_t)off, c);
		goto out;
	}
	ret = sparse(i) ? __back(i, (uint64_t)off, end, 0, 0, true, NULL) : __grow(i, end);
	if (ret)
		goto out;
	from = i->size;
	if (zero)
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
	/* the zeroed bytes as a punch of them (the mirror's blocks are its business) */
	if (zero && (uint64_t)off < from)
		__punch_changed(i, (uint64_t)off, (end < from ? end : from) - (uint64_t)off, c);
	__inode_changed(HFS_CH_SETATTR, i, c); /* size and times */
out:
	unlock_w(i, !ret);
	return ret;
}

/* SEEK_DATA / SEEK_HOLE from off: allocated blocks are data, the rest below the size a
 * hole, and the size ends the last data (a hole there, as every filesystem says). */
int64_t hfs_lseek(struct hfs_inode *i, int64_t off, int whence)
{
	int64_t ret = -ENXIO;
	uint64_t pos;
	size_t k;

	if (i->kind != HFS_REG)
		return -EINVAL;
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	pthread_rwlock_rdlock(&i->lock);
	if (off < 0 || (uint64_t)off >= i->size)
		goto out;
	pos = (uint64_t)off;
	k = ext_find(i, pos);
	if (whence == SEEK_DATA) {
		if (k < i->file.n && i->file.ext[k].foff < i->size)
			ret = (int64_t)(i->file.ext[k].foff > pos ? i->file.ext[k].foff : pos);
		goto out;
	}
	for (; k < i->file.n && i->file.ext[k].foff <= pos; k++)
		pos = ext_end(&i->file.ext[k]);
	ret = (int64_t)(pos < i->size ? pos : i->size);
out:
	pthread_rwlock_unlock(&i->lock);
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
	ret = sparse(i) ? __back(i, 0, cap, 0, 0, true, NULL) : __grow(i, cap);
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

/* ---- copy_file_range ------------------------------------------------------------------ */

#define COPY_CHUNK (8u << 20)      /* bytes of in read per round, under in's lock */
#define COPY_MAX (1ull << 30)      /* bytes of one call (the reply counts in 32 bits) */
#define COPY_SEGS 1024             /* data/hole runs of one round */

/* One round's view of in: its data copied into buf, and the runs of data and holes. */
struct copy_seg {
	uint64_t at, len;
	bool hole;
};
struct copy_round {
	char *buf;
	uint64_t pos; /* bytes of the round seen so far */
	struct copy_seg seg[COPY_SEGS];
	size_t n;
};

static int gather_fn(void *arg, struct msrc *s, uint64_t hoff, size_t n)
{
	struct copy_round *r = arg;
	int ret;

	if (!r->n || r->seg[r->n - 1].hole != !s) {
		if (r->n == COPY_SEGS)
			return 1; /* the round ends here */
		r->seg[r->n++] = (struct copy_seg){ .at = r->pos, .hole = !s };
	}
	ret = s ? msrc_read(s, r->buf + r->pos, hoff, n) : 0;
	if (ret)
		return ret;
	r->seg[r->n - 1].len += n;
	r->pos += n;
	return 0;
}

static uint64_t size_of(struct hfs_inode *i)
{
	uint64_t size;

	pthread_rwlock_rdlock(&i->lock);
	size = i->size;
	pthread_rwlock_unlock(&i->lock);
	return size;
}

/* One run of a round into out at ooff: data is written (short: what fit), a hole below
 * out's size punched (past it, the size moves later).  The bytes done, or -errno. */
static int64_t put_seg(struct hfs_inode *out, const struct copy_round *r, const struct copy_seg *sg,
		       uint64_t ooff, const struct hfs_ctx *who, struct hfs_completion *c)
{
	uint64_t osize;
	int64_t done = 0;
	int ret;

	if (!sg->hole) {
		while ((uint64_t)done < sg->len) {
			uint64_t n = sg->len - (uint64_t)done;

			ret = hfs_write(out, r->buf + sg->at + done, n > (1u << 30) ? 1u << 30 : n,
					(off_t)(ooff + (uint64_t)done), who, c);
			if (ret <= 0)
				return done ? done : ret ? ret : -ENOSPC;
			done += ret;
		}
		return done;
	}
	osize = size_of(out);
	if (ooff < osize) {
		ret = hfs_fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)ooff,
				    (off_t)(sg->len < osize - ooff ? sg->len : osize - ooff), c);
		if (ret)
			return ret;
	}
	return (int64_t)sg->len;
}

int64_t hfs_copy_range(struct hfs_inode *in, uint64_t ioff, struct hfs_inode *out, uint64_t ooff,
		       uint64_t len, const struct hfs_ctx *who, struct hfs_completion *c)
{
	struct copy_round *r;
	uint64_t done = 0, isize;
	int64_t ret = 0;
	bool full = false;

	if (in->kind != HFS_REG || out->kind != HFS_REG)
		return in->kind == HFS_DIR || out->kind == HFS_DIR ? -EISDIR : -EINVAL;
	if (ioff > HFS_FILE_MAX || ooff > HFS_FILE_MAX)
		return -EFBIG;
	if (len > COPY_MAX)
		len = COPY_MAX;
	if (len > HFS_FILE_MAX - ooff)
		len = HFS_FILE_MAX - ooff;
	if (!len)
		return 0;
	r = malloc(sizeof(*r));
	if (r)
		r->buf = malloc(len < COPY_CHUNK ? len : COPY_CHUNK);
	if (!r || !r->buf) {
		free(r);
		return -ENOMEM;
	}
	while (done < len) {
		uint64_t n = len - done < COPY_CHUNK ? len - done : COPY_CHUNK;

		r->pos = r->n = 0;
		pthread_rwlock_rdlock(&in->lock);
		isize = in->size;
		if (ioff + done < isize) {
			if (n > isize - (ioff + done))
				n = isize - (ioff + done);
			ret = for_span(in, ioff + done, n, gather_fn, r);
		}
		pthread_rwlock_unlock(&in->lock);
		if (ret < 0 || !r->pos)
			break; /* in ends here (or could not be read) */
		ret = 0; /* (1: the round ended early, its runs full; the next goes on) */
		for (size_t k = 0; k < r->n && !full; k++) {
			int64_t m = put_seg(out, r, &r->seg[k], ooff + done, who, c);

			if (m < 0) {
				ret = m;
				break;
			}
			done += (uint64_t)m;
			full = (uint64_t)m < r->seg[k].len; /* out's heap is full */
		}
		if (ret < 0 || full)
			break;
	}
	/* a hole at the end of what was copied: out's size covers it */
	if (done && size_of(out) < ooff + done) {
		ret = hfs_truncate(out, ooff + done, c);
		if (ret)
			done = 0; /* the copy is not whole: say why */
	}
	free(r->buf);
	free(r);
	return done ? (int64_t)done : ret;
}
