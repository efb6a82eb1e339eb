/*
 * buddy.c — concurrent binary buddy allocator without a global lock.
 *
 * Free structure per order k: a hierarchical bitmap (buddy_i.h), one bit per block of
 * order k at level 0, set when that block is free as a whole.  Block i's buddy is block
 * i ^ 1: the two are adjacent bits of the same 64-bit word, so one CAS sees both.
 *   free(i, k):  CAS on the word: buddy bit set -> clear it (we now own the pair) and go
 *                on with (i >> 1, k + 1); buddy bit clear -> set our bit and stop.  Two
 *                buddies freed at once serialise on that word, so a merge is never missed.
 *   alloc(k):    take the lowest order j >= k whose bit in meta->nonempty is set, walk its
 *                summary levels down to a non-zero word, CAS-clear one bit (the claim),
 *                then split: for each order below j set the upper half's bit.
 * Summary bits and meta->nonempty are hints kept by one rule: when a word becomes
 * non-empty, set its bit above (and further up while the word above was empty); when a
 * word is seen empty, clear its bit above, then look at the word again and set the bit
 * back if it is non-empty.  So at rest every non-empty word is reachable from the top; a
 * stale set bit only costs a searcher a look (and the searcher clears it).
 *
 * Per-CPU caches (like Linux's per-cpu pagesets): a slot per CPU (sched_getcpu; the count is
 * buddy_params.nslots, by default one per configured CPU), holding a LIFO stack of free
 * blocks for each of the smaller orders, guarded by a try-lock.  A stack holds at most
 * PCP_DEPTH blocks, and the stacks of one order on all CPUs together at most
 * heap_size >> PCP_BUDGET bytes; a full stack sends its older half down in one go.  A thread
 * that finds its slot busy goes straight to the shared bitmaps, so nobody waits -- except an
 * allocation about to fail: it lets its own slot go, flushes every slot, waiting for busy
 * ones (at most PCP_WAIT_NS, for a holder that died), and tries once more, so -ENOMEM means
 * no cache held a block either (a heap whose stats show room does not refuse a request that
 * fits, unless frees race it).  That path is rare; the others never wait.  Cached blocks
 * count as free in the stats and as held by their chunk; buddy_drain() gives them back.
 * Statistics counters sit in the slots too (changed only under the slot's lock), so no
 * operation writes a heap-wide cache line.  The metadata may be a memfd other processes
 * hold (direct_map, sealed against their writes): even so a stack's count is clamped to
 * its depth, an entry that is not a block of the heap is dropped, never used, and so are a
 * parked chunk past the table (chunk.c) and a nonempty bit past the heap's orders; the
 * bitmaps' lengths come from the handle, never from the shared header.  buddy_check()
 * reports what is out of range.
 *
 * Where a block comes from (issue 11).  Scalability wants threads on different CPUs on
 * different bitmap words and chunks; keeping big blocks whole wants a sequential buddy's
 * rule, "split only the smallest free block that fits".  The first design let each CPU look
 * in its own 1/nslots share of every order before looking elsewhere, so a CPU whose share
 * of order k was empty split a block of a higher order while blocks of order k were free in
 * other shares: small files from 2 CPUs left a quarter of the heap as the largest block
 * (1/32 on 16 cores) where a sequential buddy leaves half.  Now the order is chosen first,
 * for the whole heap -- the smallest order with a free block (meta->nonempty, then the
 * bitmap) -- and the CPU's share only picks *among* the free blocks of that order: its own
 * share first, then the rest.  After an allocation-only sequence the free blocks per order
 * are then exactly a sequential buddy's (which of equal blocks is taken does not change the
 * counts), whatever the slot count (alloc-bench `slots`: 2, 16 and 64 slots).  The cost: a
 * CPU whose share of that order is empty takes a block from a neighbour's share (its words,
 * its chunk) rather than split a big block of its own.  Measured with alloc-bench `steady`
 * at 2 threads on 2 CPUs: about 2.4% of allocations reach the bitmaps (the caches serve the
 * rest), 29% of those take a block outside their share, and throughput is some 7% below the
 * share-first design (about 190 against 205 Mops/s).  This is the LLFree/Linux trade:
 * per-CPU state stays small and local (the caches, bounded per order), big blocks stay
 * global.  Two gaps remain against a sequential buddy, both while threads run at once:
 * caches hide their blocks from other CPUs until drained, so a CPU may split a block one
 * order up while another CPU's cache holds one that fits (the budget, heap_size >>
 * PCP_BUDGET per cached order, bounds that, and a drain merges it back); and a split in
 * flight hides its halves between the claim and the publish, which the three passes cover
 * unless the splitting thread is preempted there.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/rseq.h>
#include <sys/sysinfo.h>
#include <time.h>

#include "buddy_i.h"
#include "chunk.h"
#include "source.h"

#define ALIGN64(x) (((x) + 63) & ~(uint64_t)63)

static inline uint64_t bit(uint64_t i)
{
	return 1ull << (i & 63);
}

/* The words of level l of order k's bitmap, from the handle's geometry: never read back
 * from the metadata, which may be shared (the header's copy was checked once, at attach). */
static uint64_t lv_words(const struct buddy *b, unsigned k, unsigned l)
{
	uint64_t w = ((1ull << (b->heap_order - k)) + 63) / 64;

	while (l--)
		w = (w + 63) / 64;
	return w;
}

/* ---- geometry --------------------------------------------------------------------- */

int buddy_order_of(uint64_t n, unsigned min_order)
{
	unsigned k = min_order;

	if (n == 0 || min_order > BUDDY_MAX_ORDER)
		return -EINVAL;
	if (n > (1ull << BUDDY_MAX_ORDER))
		return -E2BIG;
	while ((1ull << k) < n)
		k++;
	return (int)k;
}

/* The slots a heap made from p has: p->nslots, or one per configured CPU (params checked). */
static unsigned slot_count(const struct buddy_params *p)
{
	int n = get_nprocs_conf();

	if (p->nslots)
		return p->nslots;
	if (n < 1)
		n = 1;
	return n > PCP_MAX_SLOTS ? PCP_MAX_SLOTS : (unsigned)n;
}

static int check_params(const struct buddy_params *p)
{
	unsigned known = BUDDY_F_PIN | BUDDY_F_MEMFD | BUDDY_F_FD | BUDDY_F_TRACK |
			 BUDDY_F_NOCACHE | BUDDY_F_NODATA | BUDDY_F_SOURCE;

	if (!p || p->heap_order > BUDDY_MAX_ORDER || p->min_order < BUDDY_MIN_MIN_ORDER ||
	    p->min_order > BUDDY_MAX_MIN_ORDER || p->min_order > p->heap_order ||
	    p->chunk_order > BUDDY_MAX_ORDER || p->nslots > PCP_MAX_SLOTS || (p->flags & ~known))
		return -EINVAL;
	if ((p->flags & BUDDY_F_MEMFD) && (p->flags & BUDDY_F_FD))
		return -EINVAL;
	if ((p->flags & BUDDY_F_NODATA) && (p->flags & (BUDDY_F_MEMFD | BUDDY_F_FD | BUDDY_F_PIN)))
		return -EINVAL;
	if ((p->flags & BUDDY_F_FD) && (p->fd < 0 || (p->fd_offset & 4095)))
		return -EINVAL;
	if ((p->flags & BUDDY_F_SOURCE) &&
	    (!p->src || (p->flags & (BUDDY_F_MEMFD | BUDDY_F_FD | BUDDY_F_NODATA | BUDDY_F_PIN))))
		return -EINVAL;
	return 0;
}

static unsigned eff_chunk_order(const struct buddy_params *p)
{
	unsigned c = p->chunk_order ? p->chunk_order : 21;

	if (c > p->heap_order)
		c = p->heap_order;
	if (c < p->min_order) /* a chunk holds at least one block */
		c = p->min_order;
	return c;
}

/* Lay the metadata out for nslots CPU slots (into m when non-NULL); returns its size. */
static uint64_t layout(const struct buddy_params *p, unsigned nslots, struct buddy_meta *m)
{
	unsigned M = p->heap_order, cord = eff_chunk_order(p);
	uint64_t nchunks = 1ull << (M - cord);
	uint64_t off = ALIGN64(sizeof(struct buddy_meta));

	if (m) {
		m->heap_order = M;
		m->min_order = p->min_order;
		m->chunk_order = cord;
		m->flags = p->flags;
		m->fd_offset = (p->flags & BUDDY_F_FD) ? p->fd_offset : 0;
		m->nslots = nslots;
		m->pcp_orders = 0;
		for (unsigned c = 0; c < PCP_ORDERS && !(p->flags & BUDDY_F_NOCACHE) &&
				     M - p->min_order >= PCP_MIN_SPAN && p->min_order + c < M; c++) {
			uint64_t d = (1ull << (M - PCP_BUDGET)) / nslots >> (p->min_order + c);

			if (d > PCP_DEPTH)
				d = PCP_DEPTH;
			if (c == 0 && d < PCP_MIN_DEPTH)
				d = PCP_MIN_DEPTH;
			if (!d)
				break;
			m->pcp_depth[c] = (uint32_t)d;
			m->pcp_orders = c + 1;
		}
		m->pcp_off = off;
		m->nchunks = nchunks;
	}
	off += ALIGN64(nslots * sizeof(struct buddy_pcp));
	if (m)
		m->chunk_off = off;
	off += ALIGN64(chunk_table_size(nchunks));
	for (unsigned k = p->min_order; k <= M; k++) {
		uint64_t words = ((1ull << (M - k)) + 63) / 64;
		unsigned l = 0;

		for (;;) {
			if (m) {
				m->ord[k].lv_off[l] = off;
				m->ord[k].lv_words[l] = words;
			}
			off += ALIGN64(words * 8);
			l++;
			if (words == 1)
				break;
			words = (words + 63) / 64;
		}
		if (m) {
			m->ord[k].nblocks = 1ull << (M - k);
			m->ord[k].nlev = l;
		}
	}
	if (p->flags & BUDDY_F_TRACK) {
		for (unsigned k = p->min_order; k <= M; k++) {
			if (m)
				m->ord[k].track_off = off;
			off += ALIGN64(((1ull << (M - k)) + 63) / 64 * 8);
		}
	}
	return off;
}

int64_t buddy_meta_size(const struct buddy_params *p)
{
	int ret = check_params(p);

	return ret < 0 ? ret : (int64_t)layout(p, slot_count(p), NULL);
}

/* Process-local pointers into the metadata. */
static void bind_handle(struct buddy *b)
{
	struct buddy_meta *m = b->meta;
	char *base = (char *)m;

	b->heap_order = m->heap_order;
	b->min_order = m->min_order;
	b->flags = m->flags;
	b->nslots = m->nslots;
	/* the stacks' bounds, clamped to their arrays: the metadata may come from a file */
	b->pcp_orders = m->pcp_orders < PCP_ORDERS ? m->pcp_orders : PCP_ORDERS;
	for (unsigned c = 0; c < PCP_ORDERS; c++)
		b->pcp_depth[c] = m->pcp_depth[c] < PCP_DEPTH ? m->pcp_depth[c] : PCP_DEPTH;
	b->pcp = (struct buddy_pcp *)(base + m->pcp_off);
	for (unsigned k = m->min_order; k <= m->heap_order; k++) {
		b->nlev[k] = m->ord[k].nlev;
		for (unsigned l = 0; l < m->ord[k].nlev; l++)
			b->lv[k][l] = (_Atomic uint64_t *)(base + m->ord[k].lv_off[l]);
		b->track[k] = m->ord[k].track_off ?
			(_Atomic uint64_t *)(base + m->ord[k].track_off) : NULL;
	}
}

/* ---- hint protocol ---------------------------------------------------------------- */

/* Word (k, lev, idx) just became non-empty: make it reachable from the top. */
static void hint_set(struct buddy *b, unsigned k, unsigned lev, uint64_t idx)
{
	for (;;) {
		if (lev + 1 == b->nlev[k]) {
			atomic_fetch_or(&b->meta->nonempty, 1ull << k);
			return;
		}
		if (atomic_fetch_or(&b->lv[k][lev + 1][idx >> 6], bit(idx)))
			return;
		lev++;
		idx >>= 6;
	}
}

/* Word (k, lev, idx) was seen empty: clear its bit above, then look again, so that a
 * hint_set that found the bit above still set (and stopped) is not lost. */
static void hint_clear(struct buddy *b, unsigned k, unsigned lev, uint64_t idx)
{
	if (lev + 1 == b->nlev[k]) {
		atomic_fetch_and(&b->meta->nonempty, ~(1ull << k));
	} else {
		uint64_t old = atomic_fetch_and(&b->lv[k][lev + 1][idx >> 6], ~bit(idx));

		if (old == bit(idx))
			hint_clear(b, k, lev + 1, idx >> 6);
	}
	if (atomic_load(&b->lv[k][lev][idx]))
		hint_set(b, k, lev, idx);
}

/* ---- shared free structures ------------------------------------------------------- */

/* Set bit at or after pref in w (wrapping); w != 0. */
static inline unsigned pick_bit(uint64_t w, unsigned pref)
{
	uint64_t hi = w & (~0ull << pref);

	return (unsigned)__builtin_ctzll(hi ? hi : w);
}

/* Where a search may take a block: level-0 bits [lo, hi), preferring the first at or
 * after pref (wrapping). */
struct window {
	uint64_t lo, hi, pref;
};

/* The bits of word idx at level lev whose subtrees meet the window. */
static inline uint64_t win_mask(const struct window *win, unsigned lev, uint64_t idx)
{
	uint64_t first = idx * 64, a = win->lo >> (6 * lev), z = (win->hi - 1) >> (6 * lev);

	if (z < first || a > first + 63)
		return 0;
	a = a > first ? a - first : 0;           /* first and last bit in this word */
	z = z < first + 63 ? z - first : 63;
	return (~0ull << a) & (~0ull >> (63 - z));
}

/* Try once to CAS-clear bit i of level-0 word idx of order k, from *w (the caller's read
 * of the word, updated on failure); when the word empties, clear its hint.  True: the
 * block is ours. */
static inline bool lv0_take(struct buddy *b, unsigned k, uint64_t idx, unsigned i, uint64_t *w)
{
	uint64_t nw = *w & ~(1ull << i);

	if (!atomic_compare_exchange_weak(&b->lv[k][0][idx], w, nw))
		return false;
	if (!nw)
		hint_clear(b, k, 0, idx);
	return true;
}

/* Claim one free block of order k in the window below word (lev, idx): its index, or -1. */
static int64_t lv_claim(struct buddy *b, unsigned k, unsigned lev, uint64_t idx,
			const struct window *win)
{
	_Atomic uint64_t *wp = &b->lv[k][lev][idx];
	uint64_t w = atomic_load(wp), mask = win_mask(win, lev, idx);
	unsigned pb = (unsigned)(win->pref >> (6 * lev)) & 63;

	if (lev == 0) {
		while (w & mask) {
			unsigned i = pick_bit(w & mask, pb);

			if (lv0_take(b, k, idx, i, &w))
				return (int64_t)(idx * 64 + i);
		}
		return -1;
	}
	for (uint64_t left = w & mask; left; ) {
		unsigned i = pick_bit(left, pb);
		uint64_t child = idx * 64 + i;
		int64_t r = lv_claim(b, k, lev - 1, child, win);

		if (r >= 0)
			return r;
		if (!atomic_load(&b->lv[k][lev - 1][child]))
			hint_clear(b, k, lev - 1, child); /* stale hint: tidy it */
		left &= ~(1ull << i);
	}
	return -1;
}

/* Publish block i of order k as free without merging (its buddy is ours or absent). */
static void publish(struct buddy *b, unsigned k, uint64_t i)
{
	if (!atomic_fetch_or(&b->lv[k][0][i >> 6], bit(i)))
		hint_set(b, k, 0, i >> 6);
}

/* A block of order j is ours: split it down to order k keeping the half that holds block
 * want (an index at order k), publishing the other halves.  Returns want's offset. */
static uint64_t split_to(struct buddy *b, unsigned j, unsigned k, uint64_t want)
{
	while (j > k) {
		j--;
		publish(b, j, (want >> (j - k)) ^ 1);
	}
	return want << k;
}

/* A block of order k from the shared structures (counted into its chunk), or -ENOMEM.
 * Orders are tried smallest first, and a larger order only when no block of the smaller
 * ones is free, so no block is split that a sequential buddy would have kept whole.
 * Within an order, the slot's own share of its blocks (1/nslots of them) first, so threads
 * on different CPUs keep to different words and chunks, then the rest of that order.  All
 * of it up to three times, as a split in flight may hide a block for a moment.
 * The share at order j is [n_j * slot / nslots, n_j * (slot + 1) / nslots), n_j = 2^(M - j):
 * divided once, at order k, then shifted, as floor(floor(x) / 2^d) == floor(x / 2^d). */
static int64_t shared_alloc(struct buddy *b, unsigned k, unsigned slot)
{
	uint64_t nk = 1ull << (b->heap_order - k);
	uint64_t lo0 = nk * slot / b->nslots, hi0 = nk * (slot + 1) / b->nslots;

	for (int pass = 0; pass < 3; pass++) {
		/* (a bit past the heap's orders, which only a writer of shared metadata could
		 * set, names no bitmap) */
		uint64_t mask = atomic_load(&b->meta->nonempty) & (~0ull << k) &
				((2ull << b->heap_order) - 1);

		while (mask) {
			unsigned j = (unsigned)__builtin_ctzll(mask), top = b->nlev[j] - 1;
			uint64_t n = nk >> (j - k), lo = lo0 >> (j - k), hi = hi0 >> (j - k);
			struct window own = { lo, hi, lo }, all = { 0, n, hi < n ? hi : 0 };
			int64_t i = -1;

			mask &= mask - 1;
			if (lo < hi)
				i = lv_claim(b, j, top, 0, &own);
			if (i < 0 && hi - lo < n)
				i = lv_claim(b, j, top, 0, &all);
			if (i < 0)
				continue;
			uint64_t off = split_to(b, j, k, (uint64_t)i << (j - k));

			chunk_hold(&b->cm, off, 1ull << k);
			return (int64_t)off;
		}
	}
	return -ENOMEM;
}

/* Give block (off, k) back to the shared structures, merging with free buddies.  park:
 * where a chunk this empties waits (a CPU slot's park words), NULL to release it now. */
static void shared_free(struct buddy *b, uint64_t off, unsigned k, _Atomic uint64_t *park)
{
	uint64_t i = off >> k;

	chunk_unhold(&b->cm, off, 1ull << k, park);
	for (; k < b->heap_order; k++, i >>= 1) {
		_Atomic uint64_t *wp = &b->lv[k][0][i >> 6];
		uint64_t w = atomic_load(wp), nw;
		bool merge;

		do {
			merge = w & bit(i ^ 1);
			nw = merge ? w & ~bit(i ^ 1) : w | bit(i);
		} while (!atomic_compare_exchange_weak(wp, &w, nw));
		if (!merge) {
			if (!w)
				hint_set(b, k, 0, i >> 6);
			return;
		}
		if (!nw)
			hint_clear(b, k, 0, i >> 6);
	}
	publish(b, b->heap_order, 0);
}

/* Claim exactly block (off, k) if it lies in a free block: 0 or -EBUSY. */
static int shared_alloc_at(struct buddy *b, uint64_t off, unsigned k)
{
	for (unsigned j = k; j <= b->heap_order; j++) {
		uint64_t i = off >> j;
		uint64_t w = atomic_load(&b->lv[j][0][i >> 6]);

		while (w & bit(i)) {
			if (lv0_take(b, j, i >> 6, (unsigned)(i & 63), &w)) {
				split_to(b, j, k, off >> k);
				chunk_hold(&b->cm, off, 1ull << k);
				return 0;
			}
		}
	}
	return -EBUSY;
}

/* ---- per-CPU slots ---------------------------------------------------------------- */

/* buddy_set_slot(): the slot + 1 this thread acts as, 0 to follow its CPU. */
static _Thread_local unsigned slot_forced;

void buddy_set_slot(int slot)
{
	slot_forced = slot < 0 ? 0 : (unsigned)slot + 1;
}

/* This thread's CPU: read from the rseq area glibc registers (one load) when there is
 * one, else sched_getcpu().  Only a hint: the thread may move right after. */
static inline unsigned cpu_slot(const struct buddy *b)
{
	int c = -1;

	if (__builtin_expect(slot_forced != 0, 0))
		return (slot_forced - 1) % b->nslots;
	if (__rseq_size) {
		const struct rseq *rs = (const struct rseq *)
			((char *)__builtin_thread_pointer() + __rseq_offset);

		c = (int)*(const volatile uint32_t *)&rs->cpu_id;
	}
	if (c < 0)
		c = sched_getcpu();
	if ((unsigned)c < b->nslots) /* the usual case, without a division */
		return (unsigned)c;
	return c < 0 ? 0 : (unsigned)c % b->nslots;
}

static inline bool pcp_trylock(struct buddy_pcp *p)
{
	return !atomic_load_explicit(&p->lock, memory_order_relaxed) &&
	       !atomic_exchange_explicit(&p->lock, 1, memory_order_acquire);
}

static inline void pcp_unlock(struct buddy_pcp *p)
{
	atomic_store_explicit(&p->lock, 0, memory_order_release);
}

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* For drain, introspection and an allocation about to fail: a holder keeps a slot for one
 * operation (microseconds, or a time slice when preempted), but a process that died holding
 * one keeps it forever, so give up after PCP_WAIT_NS: yield first, then sleep a little. */
static bool pcp_lock_wait(struct buddy_pcp *p)
{
	int64_t t0 = 0;

	for (unsigned spins = 0; !pcp_trylock(p); spins++) {
		if (spins < 64) {
			sched_yield();
			continue;
		}
		if (!t0)
			t0 = mono_ns();
		else if (mono_ns() - t0 > PCP_WAIT_NS)
			return false;
		nanosleep(&(struct timespec){ .tv_nsec = 20000 }, NULL);
	}
	return true;
}

/* Is (off, order) a block of this heap: in range and aligned? */
static inline bool block_ok(const struct buddy *b, uint64_t off, unsigned order)
{
	return order >= b->min_order && order <= b->heap_order &&
	       !(off & ((1ull << order) - 1)) && off < (1ull << b->heap_order);
}

/* Relaxed read-modify-write of a counter only its lock holder changes. */
static inline void ctr_add(_Atomic uint64_t *c, uint64_t v)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
			      memory_order_relaxed);
}

/* The number of blocks in p's stack of cached order c, never more than the stack holds:
 * the count lives in the metadata, which may be shared (direct_map), so a count that is
 * out of range indexes nothing.  Lock held (or a reader's snapshot). */
static inline uint32_t pcp_n(const struct buddy *b, struct buddy_pcp *p, unsigned c)
{
	uint32_t n = atomic_load_explicit(&p->n[c], memory_order_relaxed);

	return n < b->pcp_depth[c] ? n : b->pcp_depth[c];
}

/* Give entries [from, to) of p's stack of cached order c back to the shared structures
 * (park: see shared_free) and take their bytes off p's cached count; the caller fixes the
 * stack.  Lock held. */
static void pcp_give_back(struct buddy *b, struct buddy_pcp *p, unsigned c, uint32_t from,
			  uint32_t to, _Atomic uint64_t *park)
{
	unsigned k = b->min_order + c;

	for (uint32_t j = from; j < to; j++)
		if (block_ok(b, p->blk[c][j], k)) /* an entry that is not a block is dropped */
			shared_free(b, p->blk[c][j], k, park);
	ctr_add(&p->cached, -((uint64_t)(to - from) << k));
}

/* Give the blocks of p's stacks above keep entries per order back, releasing chunks they
 * empty at once.  Lock held. */
static void __pcp_flush(struct buddy *b, struct buddy_pcp *p, uint32_t keep)
{
	for (unsigned c = 0; c < b->pcp_orders; c++) {
		uint32_t n = pcp_n(b, p, c);

		if (n <= keep)
			continue;
		pcp_give_back(b, p, c, keep, n, NULL);
		atomic_store_explicit(&p->n[c], keep, memory_order_relaxed);
	}
}

/* Flush every slot, waiting for busy ones.  The caller holds no slot: two threads that
 * each held one while waiting for the other's would wait forever. */
static void drain_slots(struct buddy *b)
{
	for (unsigned s = 0; s < b->nslots && b->pcp_orders; s++) {
		struct buddy_pcp *p = &b->pcp[s];

		if (!pcp_lock_wait(p))
			continue;
		__pcp_flush(b, p, 0);
		pcp_unlock(p);
	}
}

void buddy_drain(struct buddy *b)
{
	drain_slots(b);
	for (unsigned s = 0; s < b->nslots; s++)
		chunk_unpark(&b->cm, b->pcp[s].park);
}

/* Count an operation in the slot's counters (lock held) or, when the slot was busy, in the
 * heap-wide spill counters. */
static inline void count_op(struct buddy *b, struct buddy_pcp *p, bool locked,
			    int64_t used_delta, _Atomic uint64_t *ctr, _Atomic uint64_t *spill)
{
	if (locked) {
		ctr_add(&p->used, (uint64_t)used_delta);
		ctr_add(ctr, 1);
	} else {
		atomic_fetch_add_explicit(&b->meta->used_spill, (uint64_t)used_delta,
					  memory_order_relaxed);
		atomic_fetch_add_explicit(spill, 1, memory_order_relaxed);
	}
}

/* ---- public operations ------------------------------------------------------------ */

static inline void track_set(struct buddy *b, uint64_t off, unsigned k)
{
	if ((b->flags & BUDDY_F_TRACK) && k <= BUDDY_MAX_ORDER) /* (it is: for -Warray-bounds) */
		atomic_fetch_or(&b->track[k][(off >> k) >> 6], bit(off >> k));
}

int64_t buddy_alloc(struct buddy *b, unsigned order)
{
	unsigned slot, c = order - b->min_order;
	struct buddy_pcp *p;
	int64_t off = -ENOMEM;
	bool locked;

	if (order < b->min_order || order > b->heap_order)
		return -EINVAL;
	slot = cpu_slot(b);
	p = &b->pcp[slot];
	locked = pcp_trylock(p);
	if (locked && c < b->pcp_orders) {
		uint32_t n = pcp_n(b, p, c);

		if (n) {
			off = (int64_t)p->blk[c][n - 1];
			atomic_store_explicit(&p->n[c], n - 1, memory_order_relaxed);
			ctr_add(&p->cached, -(1ull << order));
			if (!block_ok(b, (uint64_t)off, order))
				off = -ENOMEM; /* not a block: dropped, never handed out */
		}
	}
	if (off < 0)
		off = shared_alloc(b, order, slot);
	if (off < 0 && b->pcp_orders) {
		/* about to fail: take back what every cache holds, busy ones included (a
		 * rare, slow path), and try once more; our own slot is let go meanwhile */
		if (locked)
			pcp_unlock(p);
		drain_slots(b);
		off = shared_alloc(b, order, slot);
		locked = pcp_trylock(p);
	}
	if (off >= 0) {
		track_set(b, (uint64_t)off, order);
		count_op(b, p, locked, (int64_t)1 << order, &p->allocs, &b->meta->allocs_spill);
	} else {
		count_op(b, p, locked, 0, &p->failures, &b->meta->failures_spill);
	}
	if (locked)
		pcp_unlock(p);
	return off;
}

int buddy_alloc_at(struct buddy *b, uint64_t off, unsigned order)
{
	struct buddy_pcp *p;
	bool locked;
	int ret;

	if (!block_ok(b, off, order))
		return -EINVAL;
	ret = shared_alloc_at(b, off, order);
	if (ret == -EBUSY && b->pcp_orders) {
		buddy_drain(b); /* the block may be parked in a cache, or a cached block's buddy */
		ret = shared_alloc_at(b, off, order);
	}
	p = &b->pcp[cpu_slot(b)];
	locked = pcp_trylock(p);
	if (ret == 0) {
		track_set(b, off, order);
		count_op(b, p, locked, (int64_t)1 << order, &p->allocs, &b->meta->allocs_spill);
	}
	if (locked)
		pcp_unlock(p);
	return ret;
}

int buddy_free(struct buddy *b, uint64_t off, unsigned order)
{
	unsigned c = order - b->min_order;
	struct buddy_pcp *p = NULL;
	bool locked = false;
	uint64_t i;
	int ret = -EINVAL;

	if (!block_ok(b, off, order))
		goto out;
	i = off >> order;
	/* with tracking: not allocated at this order = a bad or double free */
	if ((b->flags & BUDDY_F_TRACK) &&
	    !(atomic_fetch_and(&b->track[order][i >> 6], ~bit(i)) & bit(i)))
		goto out;
	p = &b->pcp[cpu_slot(b)];
	locked = pcp_trylock(p);
	/* without: a block free as a whole already, checked where the word is read anyway */
	if (!(b->flags & BUDDY_F_TRACK) && (!locked || c >= b->pcp_orders) &&
	    (atomic_load(&b->lv[order][0][i >> 6]) & bit(i)))
		goto out;
	if (locked && c < b->pcp_orders) {
		uint32_t n = pcp_n(b, p, c);

		if (n == b->pcp_depth[c]) {
			/* full: send the older half down in one go */
			uint32_t half = (n + 1) / 2;

			pcp_give_back(b, p, c, 0, half, p->park);
			memmove(p->blk[c], p->blk[c] + half, sizeof(p->blk[c][0]) * (n - half));
			n -= half;
		}
		p->blk[c][n] = off;
		atomic_store_explicit(&p->n[c], n + 1, memory_order_relaxed);
		ctr_add(&p->cached, 1ull << order);
	} else {
		shared_free(b, off, order, p->park);
	}
	count_op(b, p, locked, -((int64_t)1 << order), &p->frees, &b->meta->frees_spill);
	ret = 0;
out:
	if (locked)
		pcp_unlock(p);
	return ret;
}

int buddy_split(struct buddy *b, uint64_t off, unsigned order)
{
	uint64_t i;

	if (!block_ok(b, off, order) || order == b->min_order)
		return -EINVAL;
	if (!(b->flags & BUDDY_F_TRACK))
		return 0; /* nothing records the order an allocated block has */
	i = off >> order;
	if (!(atomic_load(&b->track[order][i >> 6]) & bit(i)))
		return -EINVAL; /* not allocated at that order (the caller owns the block, so
				   nothing changes it meanwhile) */
	/* the halves are allocated before the whole stops being: a walk never sees a gap */
	track_set(b, off, order - 1);
	track_set(b, off + (1ull << (order - 1)), order - 1);
	atomic_fetch_and(&b->track[order][i >> 6], ~bit(i));
	return 0;
}

/* ---- creation --------------------------------------------------------------------- */

/* A handle on laid-out metadata: map the data (fd: see chunk_map_open). */
static int open_handle(struct buddy_meta *m, size_t meta_size, int fd, const char *name,
		       struct msrc *src, struct buddy **out)
{
	struct buddy *b = calloc(1, sizeof(*b));
	int ret = -ENOMEM;

	if (!b)
		goto out;
	b->meta = m;
	b->meta_size = meta_size;
	bind_handle(b);
	ret = chunk_map_open(&b->cm, (struct chunk_table *)((char *)m + m->chunk_off),
			     m->heap_order, m->chunk_order, m->nchunks, m->flags, fd,
			     m->fd_offset, name, src);
	if (ret < 0)
		goto fail_handle;
	*out = b;
	goto out;

fail_handle:
	free(b);
out:
	return ret;
}

/* nslots: slot_count(p), taken once per creation so the size checked and the layout made
 * agree (params already checked). */
static int init_meta(const struct buddy_params *p, unsigned nslots, void *meta,
		     size_t meta_size, bool zeroed, struct buddy **out)
{
	struct buddy_meta *m = meta;
	uint64_t need = layout(p, nslots, NULL);
	int ret = -EINVAL;

	if (!meta || meta_size < need || ((uintptr_t)meta & 63))
		goto out;
	if (!zeroed)
		memset(meta, 0, need);
	layout(p, nslots, m);
	m->magic = BUDDY_MAGIC;
	m->version = BUDDY_VERSION;
	m->meta_size = need;
	chunk_table_init((struct chunk_table *)((char *)m + m->chunk_off), m->chunk_order,
			 m->nchunks);
	ret = open_handle(m, meta_size, (p->flags & BUDDY_F_FD) ? p->fd : -1, p->name, p->src,
			  out);
	if (ret == 0)
		publish(*out, m->heap_order, 0); /* the whole heap: one free block */
out:
	return ret;
}

int buddy_create_at(const struct buddy_params *p, void *meta, size_t meta_size, struct buddy **out)
{
	int ret = check_params(p);

	return ret < 0 ? ret : init_meta(p, slot_count(p), meta, meta_size, false, out);
}

int buddy_create(const struct buddy_params *p, struct buddy **out)
{
	int ret = check_params(p);
	unsigned nslots;
	uint64_t size;
	void *meta;

	if (ret < 0)
		goto out;
	nslots = slot_count(p);
	size = layout(p, nslots, NULL);
	meta = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ret = -errno;
	if (meta == MAP_FAILED)
		goto out;
	ret = init_meta(p, nslots, meta, (size_t)size, true, out);
	if (ret < 0)
		goto fail_meta;
	(*out)->own_meta = true;
	goto out;

fail_meta:
	munmap(meta, (size_t)size);
out:
	return ret;
}

/* Metadata from elsewhere is used only if it is exactly what layout() makes for the
 * geometry it names: every offset the handle will follow is then inside it, and the chunk
 * table agrees with it (the handle keeps the header's geometry: chunk_map_open). */
static bool meta_ok(const struct buddy_meta *m, size_t meta_size)
{
	const struct chunk_table *t;
	struct buddy_params p = { .heap_order = m->heap_order, .min_order = m->min_order,
				  .chunk_order = m->chunk_order, .flags = m->flags,
				  .fd = 0, .fd_offset = m->fd_offset };
	struct buddy_meta *want;
	bool ok;

	if (meta_size < sizeof(*m) || m->magic != BUDDY_MAGIC || m->version != BUDDY_VERSION ||
	    m->meta_size > meta_size || check_params(&p) < 0 || m->nslots < 1 ||
	    m->nslots > PCP_MAX_SLOTS)
		return false;
	want = calloc(1, sizeof(*want));
	if (!want)
		return false;
	ok = layout(&p, m->nslots, want) == m->meta_size && want->chunk_order == m->chunk_order &&
	     want->pcp_orders == m->pcp_orders && want->pcp_off == m->pcp_off &&
	     want->chunk_off == m->chunk_off && want->nchunks == m->nchunks &&
	     !memcmp(want->pcp_depth, m->pcp_depth, sizeof(m->pcp_depth)) &&
	     !memcmp(want->ord, m->ord, sizeof(m->ord));
	free(want);
	if (!ok)
		return false;
	t = (const struct chunk_table *)((const char *)m + m->chunk_off);
	return t->chunk_order == m->chunk_order && t->nchunks == m->nchunks;
}

int buddy_attach(void *meta, size_t meta_size, int data_fd, struct buddy **out)
{
	struct buddy_meta *m = meta;
	bool has_fd;

	if (!m || ((uintptr_t)meta & 63) || !meta_ok(m, meta_size) ||
	    (m->flags & BUDDY_F_SOURCE))
		return -EINVAL;
	has_fd = m->flags & (BUDDY_F_MEMFD | BUDDY_F_FD);
	if (has_fd && data_fd < 0)
		return -EBADF;
	return open_handle(m, meta_size, has_fd ? data_fd : -1, NULL, NULL, out);
}

void buddy_destroy(struct buddy *b)
{
	if (!b)
		return;
	chunk_map_close(&b->cm);
	if (b->own_meta)
		munmap(b->meta, b->meta_size);
	free(b);
}

void *buddy_ptr(const struct buddy *b, uint64_t off)
{
	return b->cm.base && off < b->cm.size ? b->cm.base + off : NULL;
}

int buddy_data_fd(const struct buddy *b)
{
	return b->cm.fd;
}

struct msrc *buddy_source(const struct buddy *b)
{
	return b->cm.src;
}

unsigned buddy_heap_order(const struct buddy *b)
{
	return b->heap_order;
}

unsigned buddy_min_order(const struct buddy *b)
{
	return b->min_order;
}

/* ---- introspection ---------------------------------------------------------------- */

static uint64_t popcount_level(const _Atomic uint64_t *w, uint64_t n)
{
	uint64_t c = 0;

	for (uint64_t i = 0; i < n; i++)
		c += (uint64_t)__builtin_popcountll(atomic_load_explicit(&w[i], memory_order_relaxed));
	return c;
}

void buddy_stats(struct buddy *b, struct buddy_stats *st)
{
	struct buddy_meta *m = b->meta;
	uint64_t used = atomic_load(&m->used_spill);
	uint64_t largest_cached = 0;

	memset(st, 0, sizeof(*st));
	st->size = 1ull << b->heap_order;
	st->min_block = 1ull << b->min_order;
	st->allocs = atomic_load(&m->allocs_spill);
	st->frees = atomic_load(&m->frees_spill);
	st->alloc_failures = atomic_load(&m->failures_spill);
	for (unsigned s = 0; s < b->nslots; s++) {
		struct buddy_pcp *p = &b->pcp[s];

		used += atomic_load_explicit(&p->used, memory_order_relaxed);
		st->cached += atomic_load_explicit(&p->cached, memory_order_relaxed);
		st->allocs += atomic_load_explicit(&p->allocs, memory_order_relaxed);
		st->frees += atomic_load_explicit(&p->frees, memory_order_relaxed);
		st->alloc_failures += atomic_load_explicit(&p->failures, memory_order_relaxed);
		for (unsigned c = 0; c < b->pcp_orders; c++)
			if (atomic_load_explicit(&p->n[c], memory_order_relaxed))
				largest_cached = 1ull << (b->min_order + c);
	}
	st->used = used;
	st->free = st->size - used;
	for (unsigned k = b->min_order; k <= b->heap_order; k++) {
		st->free_blocks[k] = popcount_level(b->lv[k][0], lv_words(b, k, 0));
		if (st->free_blocks[k]) {
			st->nonempty_orders |= 1ull << k;
			st->largest_free = 1ull << k;
		}
	}
	if (largest_cached > st->largest_free)
		st->largest_free = largest_cached;
	st->chunk_size = 1ull << b->cm.chunk_order;
	st->chunks_total = b->cm.nchunks;
	for (uint64_t i = 0; i < b->cm.nchunks; i++) {
		uint64_t s = atomic_load_explicit(&b->cm.t->slot[i].state, memory_order_relaxed);

		st->chunks_committed += (s & CHUNK_HELD_MASK) != 0;
		st->chunks_idle += (s & CHUNK_IDLE) != 0;
	}
	st->chunks_released = atomic_load(&b->cm.t->released);
	st->pin_failures = b->cm.src ? msrc_pin_failures(b->cm.src) : 0;
	st->metadata_bytes = m->meta_size;
}

enum blk_kind { BLK_FREE, BLK_CACHED, BLK_USED };

struct blk {
	uint64_t off;
	uint8_t order;
	uint8_t kind;
};

struct blk_list {
	struct blk *v;
	size_t n, cap;
};

static void blk_add(struct blk_list *l, uint64_t off, unsigned order, enum blk_kind kind)
{
	if (l->n < l->cap)
		l->v[l->n++] = (struct blk){ off, (uint8_t)order, (uint8_t)kind };
}

static int blk_cmp(const void *a, const void *b)
{
	const struct blk *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static void add_bitmap(struct blk_list *l, const _Atomic uint64_t *w, uint64_t words,
		       unsigned k, enum blk_kind kind)
{
	for (uint64_t i = 0; i < words; i++) {
		uint64_t v = atomic_load_explicit(&w[i], memory_order_relaxed);

		while (v) {
			unsigned j = (unsigned)__builtin_ctzll(v);

			v &= v - 1;
			blk_add(l, (i * 64 + j) << k, k, kind);
		}
	}
}

/* Every free (shared and cached) and, with tracking, allocated block, sorted by offset. */
static int gather(struct buddy *b, struct blk_list *l)
{
	size_t count = 0;

	for (unsigned k = b->min_order; k <= b->heap_order; k++) {
		count += popcount_level(b->lv[k][0], lv_words(b, k, 0));
		if (b->track[k])
			count += popcount_level(b->track[k], lv_words(b, k, 0));
	}
	count += (size_t)b->nslots * PCP_ORDERS * PCP_DEPTH;
	l->cap = count + count / 8 + 64; /* room for concurrent changes */
	l->n = 0;
	l->v = malloc(l->cap * sizeof(*l->v));
	if (!l->v)
		return -ENOMEM;
	for (unsigned k = b->min_order; k <= b->heap_order; k++) {
		add_bitmap(l, b->lv[k][0], lv_words(b, k, 0), k, BLK_FREE);
		if (b->track[k])
			add_bitmap(l, b->track[k], lv_words(b, k, 0), k, BLK_USED);
	}
	for (unsigned s = 0; s < b->nslots && b->pcp_orders; s++) {
		struct buddy_pcp *p = &b->pcp[s];

		if (!pcp_lock_wait(p))
			continue;
		for (unsigned c = 0; c < b->pcp_orders; c++) {
			uint32_t n = pcp_n(b, p, c);

			for (uint32_t j = 0; j < n; j++) /* (an entry that is no block: dropped) */
				if (block_ok(b, p->blk[c][j], b->min_order + c))
					blk_add(l, p->blk[c][j], b->min_order + c, BLK_CACHED);
		}
		pcp_unlock(p);
	}
	qsort(l->v, l->n, sizeof(*l->v), blk_cmp);
	return 0;
}

/* Report [from, to) as used: the largest aligned power-of-two pieces. */
static int walk_gap(struct buddy *b, uint64_t from, uint64_t to, buddy_walk_fn fn, void *arg)
{
	while (from < to) {
		unsigned k = from ? (unsigned)__builtin_ctzll(from) : b->heap_order;
		int r;

		while ((1ull << k) > to - from)
			k--;
		r = fn(arg, from, k, false);
		if (r)
			return r;
		from += 1ull << k;
	}
	return 0;
}

int buddy_walk(struct buddy *b, buddy_walk_fn fn, void *arg)
{
	struct blk_list l;
	uint64_t pos = 0;
	int ret = gather(b, &l);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < l.n && !ret; i++) {
		const struct blk *x = &l.v[i];

		if (x->off < pos)
			continue; /* changed under us (concurrent users): skip the overlap */
		ret = walk_gap(b, pos, x->off, fn, arg);
		if (!ret)
			ret = fn(arg, x->off, x->order, x->kind != BLK_USED);
		pos = x->off + (1ull << x->order);
	}
	if (!ret)
		ret = walk_gap(b, pos, 1ull << b->heap_order, fn, arg);
	free(l.v);
	return ret;
}

#define CHECK(cond, ...)                                                  \
	do {                                                              \
		if (!(cond)) {                                            \
			fprintf(stderr, "buddy_check: " __VA_ARGS__);     \
			fputc('\n', stderr);                              \
			ret = -EUCLEAN;                                   \
			goto out;                                         \
		}                                                         \
	} while (0)

/* Hints: every non-empty word is reachable from the top. */
static int check_hints(struct buddy *b)
{
	uint64_t nonempty = atomic_load(&b->meta->nonempty);
	uint64_t orders = ((2ull << b->heap_order) - 1) & (~0ull << b->min_order);
	int ret = 0;

	CHECK(!(nonempty & ~orders), "nonempty_orders %#lx names orders the heap has not",
	      (unsigned long)nonempty);
	for (unsigned k = b->min_order; k <= b->heap_order; k++) {
		uint64_t nblocks = 1ull << (b->heap_order - k);

		for (unsigned l = 0; l < b->nlev[k]; l++) {
			uint64_t words = lv_words(b, k, l);

			for (uint64_t i = 0; i < words; i++) {
				if (!atomic_load(&b->lv[k][l][i]))
					continue;
				if (l + 1 == b->nlev[k])
					CHECK(nonempty & (1ull << k),
					      "order %u has free blocks but no bit in nonempty_orders", k);
				else
					CHECK(atomic_load(&b->lv[k][l + 1][i >> 6]) & bit(i),
					      "order %u level %u word %lu unreachable", k, l,
					      (unsigned long)i);
			}
		}
		/* bits past the last block of a short level-0 word never get set */
		if (nblocks < 64)
			CHECK(!(atomic_load(&b->lv[k][0][0]) & (~0ull << nblocks)),
			      "order %u: bit beyond the heap", k);
	}
out:
	return ret;
}

/* The per-CPU slots, which the metadata may share with other processes (see the top of
 * this file): each stack's count within its depth, each entry a block of the heap, each
 * parked chunk one of the heap's.  The operations never trust them; this reports them. */
static int check_slots(struct buddy *b)
{
	int ret = 0;

	for (unsigned s = 0; s < b->nslots; s++) {
		struct buddy_pcp *p = &b->pcp[s];

		for (unsigned c = 0; c < b->pcp_orders; c++) {
			uint32_t n = atomic_load_explicit(&p->n[c], memory_order_relaxed);
			unsigned k = b->min_order + c;

			CHECK(n <= b->pcp_depth[c], "slot %u: %u blocks cached of order %u, "
			      "its stack holds %u", s, n, k, b->pcp_depth[c]);
			for (uint32_t j = 0; j < n; j++)
				CHECK(block_ok(b, p->blk[c][j], k), "slot %u: cached %#lx is no "
				      "block of order %u", s, (unsigned long)p->blk[c][j], k);
		}
		for (unsigned j = 0; j < CHUNK_PARK; j++) {
			uint64_t w = atomic_load(&p->park[j]);

			CHECK(w <= b->cm.nchunks, "slot %u: parked chunk %lu of %lu", s,
			      (unsigned long)w - 1, (unsigned long)b->cm.nchunks);
		}
	}
out:
	return ret;
}

int buddy_check(struct buddy *b)
{
	uint64_t size = 1ull << b->heap_order, pos = 0, free_b = 0, cached_b = 0, track_b = 0;
	uint64_t cs = 1ull << b->cm.chunk_order, *held = NULL, committed = 0;
	struct buddy_stats st;
	struct blk_list l = { 0 };
	int ret = check_hints(b);

	if (!ret)
		ret = check_slots(b);
	if (ret < 0)
		return ret;
	buddy_stats(b, &st);
	ret = gather(b, &l);
	if (ret < 0)
		return ret;
	held = calloc(b->cm.nchunks, sizeof(*held));
	CHECK(held, "out of memory");
	for (uint64_t i = 0; i < b->cm.nchunks; i++)
		held[i] = cs;
	for (size_t i = 0; i < l.n; i++) {
		const struct blk *x = &l.v[i];
		uint64_t len = 1ull << x->order;

		CHECK(x->off >= pos, "block %#lx order %u overlaps the block before it",
		      (unsigned long)x->off, x->order);
		pos = x->off + len;
		if (x->kind == BLK_USED) {
			track_b += len;
			continue;
		}
		if (x->kind == BLK_CACHED) {
			cached_b += len;
			continue;
		}
		free_b += len;
		if (x->order < b->heap_order) {
			uint64_t bi = (x->off >> x->order) ^ 1;

			CHECK(!(atomic_load(&b->lv[x->order][0][bi >> 6]) & bit(bi)),
			      "free block %#lx and its buddy (order %u) are not merged",
			      (unsigned long)x->off, x->order);
		}
		for (uint64_t c = x->off / cs; c <= (x->off + len - 1) / cs; c++)
			held[c] -= len < cs ? len : cs;
	}
	CHECK(pos <= size, "block past the end of the heap");
	CHECK(st.cached == cached_b, "cached bytes %lu, caches hold %lu",
	      (unsigned long)st.cached, (unsigned long)cached_b);
	CHECK(st.used + free_b + cached_b == size, "used %lu + free %lu + cached %lu != size %lu",
	      (unsigned long)st.used, (unsigned long)free_b, (unsigned long)cached_b,
	      (unsigned long)size);
	if (b->flags & BUDDY_F_TRACK)
		CHECK(track_b == st.used, "tracked allocated bytes %lu != used %lu",
		      (unsigned long)track_b, (unsigned long)st.used);
	for (uint64_t c = 0; c < b->cm.nchunks; c++) {
		uint64_t s = atomic_load(&b->cm.t->slot[c].state);

		CHECK(!(s & CHUNK_RELEASING), "chunk %lu is being released", (unsigned long)c);
		CHECK(!(s & CHUNK_IDLE) || !(s & CHUNK_HELD_MASK), "idle chunk %lu holds bytes",
		      (unsigned long)c);
		s &= CHUNK_HELD_MASK;
		CHECK(s == held[c], "chunk %lu holds %lu bytes, its blocks say %lu",
		      (unsigned long)c, (unsigned long)s, (unsigned long)held[c]);
		committed += s != 0;
	}
	CHECK(committed == st.chunks_committed, "committed chunk count");
out:
	free(held);
	free(l.v);
	return ret;
}
