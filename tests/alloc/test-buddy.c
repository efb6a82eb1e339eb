/*
 * test-buddy.c — unit tests of the buddy allocator (single process; single thread but for
 * one helper that lets a busy slot go).
 *
 * Splitting, merging, every order, exhaustion (-ENOMEM, heap unchanged), bad arguments,
 * double/bad frees under BUDDY_F_TRACK, buddy_alloc_at, buddy_walk, chunk commit, parking
 * and release with the generation bump (anonymous, memfd, pinned and caller's-fd data),
 * per-CPU caches and buddy_drain, create_at/attach, metadata size, and a seeded random
 * sequence checked against a model (buddy_check every 97 steps), largest_free after small
 * allocations from 2, 16 and 64 slots against a sequential buddy (issue 11), and a full heap
 * whose last blocks sit in a busy slot's cache (issue 6).  Heaps run with and
 * without per-CPU caches and tracking.  Offsets are asserted only where they do not depend
 * on the CPU the test runs on (each CPU prefers its own part of the heap).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "buddy.h"
#include "buddy_i.h"
#include "chunk.h"
#include "tcheck.h"

/* The heap is one free block of 2^M and every invariant holds. */

static void test_order_of(void)
{
	TEQ(buddy_order_of(0, 12), -EINVAL);
	TEQ(buddy_order_of(1, 12), 12);
	TEQ(buddy_order_of(4096, 12), 12);
	TEQ(buddy_order_of(4097, 12), 13);
	TEQ(buddy_order_of(1ull << 30, 6), 30);
	TEQ(buddy_order_of((1ull << 30) + 1, 6), 31);
	TEQ(buddy_order_of((1ull << 40) + 1, 6), -E2BIG);
}

static void test_bad_params(void)
{
	struct buddy_params p = { .heap_order = 20, .min_order = 12, .fd = -1 };
	struct buddy *b = NULL;

	p.min_order = 5;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.min_order = 21;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.min_order = 12;
	p.heap_order = 11;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.heap_order = 41;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.heap_order = 20;
	p.flags = BUDDY_F_MEMFD | BUDDY_F_FD;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.flags = BUDDY_F_FD; /* no fd */
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.flags = 1u << 20;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.flags = BUDDY_F_NODATA | BUDDY_F_MEMFD;
	TEQ(buddy_meta_size(&p), -EINVAL);
	p.flags = 0;
	p.nslots = BUDDY_MAX_SLOTS + 1;
	TEQ(buddy_create(&p, &b), -EINVAL);
	p.nslots = 0;
	TEQ(buddy_create(NULL, &b), -EINVAL);
	T(b == NULL);
	/* create_at: too little or misaligned memory */
	p.flags = BUDDY_F_NODATA;
	int64_t need = buddy_meta_size(&p);
	T(need > 0);
	char *m = aligned_alloc(64, (size_t)need + 64);
	T(m);
	TEQ(buddy_create_at(&p, m, (size_t)need - 1, &b), -EINVAL);
	TEQ(buddy_create_at(&p, m + 8, (size_t)need, &b), -EINVAL);
	memset(m, 0, 64);
	TEQ(buddy_attach(m, (size_t)need, -1, &b), -EINVAL); /* no magic */
	free(m);
}

static void test_split_merge(unsigned flags)
{
	struct buddy *b = mk(16, 12, 0, flags);
	struct buddy_stats st;
	int64_t a, c;

	T(b);
	T(pristine(b));
	a = buddy_alloc(b, 12);
	TEQ(a, 0); /* a split keeps the lower half */
	buddy_stats(b, &st);
	/* one 64K block split into 4K(used) + 4K + 8K + 16K + 32K free */
	TEQ(st.free_blocks[12], 1);
	TEQ(st.free_blocks[13], 1);
	TEQ(st.free_blocks[14], 1);
	TEQ(st.free_blocks[15], 1);
	TEQ(st.free_blocks[16], 0);
	TEQ(st.nonempty_orders, 0xfull << 12);
	TEQ(st.used, 4096);
	TEQ(st.free, 65536 - 4096);
	TEQ(st.largest_free, 32768);
	T(buddy_check(b) == 0);
	/* which block comes next depends on the CPU (each prefers its own part of the heap) */
	c = buddy_alloc(b, 12);
	T(c > 0 && (c & 4095) == 0);
	buddy_stats(b, &st);
	TEQ(st.used, 8192);
	TEQ(st.free_blocks[12] + 2 * st.free_blocks[13] + 4 * st.free_blocks[14] +
	    8 * st.free_blocks[15], 14);
	T(buddy_check(b) == 0);
	TEQ(buddy_free(b, (uint64_t)a, 12), 0);
	TEQ(buddy_free(b, (uint64_t)c, 12), 0);
	T(pristine(b));
	buddy_destroy(b);
}

static void test_split_merge_all(void)
{
	test_split_merge(BUDDY_F_NOCACHE);
	if (tc_cur_failed)
		return;
	test_split_merge(BUDDY_F_TRACK | BUDDY_F_NOCACHE);
}

/* buddy_split: a 64K block becomes two 32K halves, freed one at a time (a hole punched
 * in a file's block); a bad or double split is refused under tracking. */
static void test_split_block(void)
{
	struct buddy_params p = { .heap_order = 20, .min_order = 12,
				  .flags = BUDDY_F_TRACK | BUDDY_F_NOCACHE };
	struct buddy *b = NULL;
	struct buddy_stats st;
	int64_t a;

	TEQ(buddy_create(&p, &b), 0);
	a = buddy_alloc(b, 16);
	T(a >= 0);
	TEQ(buddy_split(b, (uint64_t)a, 12), -EINVAL);      /* min_order: no halves */
	TEQ(buddy_split(b, (uint64_t)a + 4096, 16), -EINVAL); /* misaligned */
	TEQ(buddy_split(b, (uint64_t)a, 17), -EINVAL);      /* not allocated at 17 */
	TEQ(buddy_split(b, (uint64_t)a, 16), 0);
	TEQ(buddy_split(b, (uint64_t)a, 16), -EINVAL);      /* not any more */
	TEQ(buddy_free(b, (uint64_t)a, 16), -EINVAL);       /* the whole is gone */
	TEQ(buddy_free(b, (uint64_t)a + 32768, 15), 0);
	buddy_stats(b, &st);
	TEQ(st.used, 32768);
	T(buddy_check(b) == 0);
	TEQ(buddy_split(b, (uint64_t)a, 15), 0);
	TEQ(buddy_free(b, (uint64_t)a, 14), 0);
	TEQ(buddy_free(b, (uint64_t)a + 16384, 14), 0);
	T(pristine(b));
	T(buddy_check(b) == 0);
	buddy_destroy(b);
}

/* Fill the heap with blocks of one order, check exhaustion, free in a scrambled order. */
static void fill_order(struct buddy *b, unsigned k)
{
	unsigned M = buddy_heap_order(b);
	uint64_t n = 1ull << (M - k), *offs = calloc(n, sizeof(*offs));
	unsigned char *seen = calloc(n, 1);
	struct buddy_stats before, after;

	T(offs && seen);
	for (uint64_t i = 0; i < n; i++) {
		int64_t o = buddy_alloc(b, k);

		T(o >= 0);
		T(((uint64_t)o & ((1ull << k) - 1)) == 0);
		T((uint64_t)o < (1ull << M));
		T(!seen[(uint64_t)o >> k]);
		seen[(uint64_t)o >> k] = 1;
		offs[i] = (uint64_t)o;
	}
	buddy_stats(b, &before);
	TEQ(before.used, 1ull << M);
	TEQ(before.free, 0);
	for (unsigned j = buddy_min_order(b); j <= M; j++)
		TEQ(buddy_alloc(b, j), -ENOMEM);
	buddy_stats(b, &after);
	TEQ(after.used, before.used);
	TEQ(after.nonempty_orders, 0);
	TEQ(after.alloc_failures, before.alloc_failures + (M - buddy_min_order(b) + 1));
	T(buddy_check(b) == 0);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t j = (i * 7919) % n; /* 7919 is prime: a permutation for these n */

		TEQ(buddy_free(b, offs[j], k), 0);
	}
	T(pristine(b));
	free(offs);
	free(seen);
}

static void test_every_order(void)
{
	unsigned flags[] = { BUDDY_F_NOCACHE, 0, BUDDY_F_TRACK, BUDDY_F_NODATA };

	for (unsigned f = 0; f < 4; f++) {
		struct buddy *b = mk(20, 12, 14, flags[f]);

		T(b);
		for (unsigned k = 12; k <= 20; k++) {
			int64_t o = buddy_alloc(b, k);

			TEQ(o, 0);
			if (!(flags[f] & BUDDY_F_NODATA))
				memset(buddy_ptr(b, (uint64_t)o), 0xa5, 1ull << k);
			T(buddy_check(b) == 0);
			TEQ(buddy_free(b, (uint64_t)o, k), 0);
			T(pristine(b));
			fill_order(b, k);
			if (tc_cur_failed)
				return;
		}
		buddy_destroy(b);
	}
}

static void test_small_heap_min_orders(void)
{
	/* 64 B cache-line blocks and a heap of one block */
	struct buddy *b = mk(6, 6, 0, 0);

	T(b);
	TEQ(buddy_alloc(b, 6), 0);
	TEQ(buddy_alloc(b, 6), -ENOMEM);
	TEQ(buddy_free(b, 0, 6), 0);
	T(pristine(b));
	buddy_destroy(b);
	b = mk(20, 20, 0, BUDDY_F_TRACK);
	T(b);
	TEQ(buddy_alloc(b, 19), -EINVAL);
	TEQ(buddy_alloc(b, 20), 0);
	TEQ(buddy_free(b, 0, 20), 0);
	T(pristine(b));
	buddy_destroy(b);
	b = mk(14, 6, 0, BUDDY_F_NOCACHE);
	T(b);
	fill_order(b, 6);
	buddy_destroy(b);
}

static void test_bad_args(void)
{
	struct buddy *b = mk(16, 12, 0, BUDDY_F_TRACK);
	int64_t a;

	T(b);
	TEQ(buddy_alloc(b, 11), -EINVAL);
	TEQ(buddy_alloc(b, 17), -EINVAL);
	TEQ(buddy_alloc(b, 100), -EINVAL);
	TEQ(buddy_free(b, 0, 100), -EINVAL);
	TEQ(buddy_alloc_at(b, 0, 100), -EINVAL);
	a = buddy_alloc(b, 13);
	T(a >= 0);
	TEQ(buddy_free(b, (uint64_t)a + 4096, 13), -EINVAL); /* misaligned */
	TEQ(buddy_free(b, 1ull << 16, 12), -EINVAL);          /* past the end */
	TEQ(buddy_free(b, (uint64_t)a, 11), -EINVAL);          /* below min order */
	TEQ(buddy_free(b, (uint64_t)a, 12), -EINVAL);          /* wrong order */
	TEQ(buddy_free(b, (uint64_t)a ^ 0x8000, 13), -EINVAL); /* never allocated */
	T(buddy_check(b) == 0);
	TEQ(buddy_free(b, (uint64_t)a, 13), 0);
	TEQ(buddy_free(b, (uint64_t)a, 13), -EINVAL);          /* twice */
	T(pristine(b));
	TEQ(buddy_alloc_at(b, 4096, 13), -EINVAL);
	TEQ(buddy_alloc_at(b, 1ull << 16, 12), -EINVAL);
	TEQ(buddy_alloc_at(b, 0, 17), -EINVAL);
	buddy_destroy(b);
	/* without tracking, freeing a block that is free as a whole is still caught */
	b = mk(16, 12, 0, BUDDY_F_NOCACHE);
	T(b);
	TEQ(buddy_free(b, 0, 16), -EINVAL);
	a = buddy_alloc(b, 12);
	TEQ(buddy_free(b, 4096, 12), -EINVAL);
	TEQ(buddy_free(b, (uint64_t)a, 12), 0);
	T(pristine(b));
	buddy_destroy(b);
}

static void test_alloc_at(void)
{
	struct buddy *b = mk(20, 12, 0, BUDDY_F_TRACK);

	T(b);
	TEQ(buddy_alloc_at(b, 0x9000, 12), 0);
	TEQ(buddy_alloc_at(b, 0x9000, 12), -EBUSY);
	TEQ(buddy_alloc_at(b, 0x8000, 15), -EBUSY); /* overlaps */
	TEQ(buddy_alloc_at(b, 0x8000, 12), 0);
	TEQ(buddy_alloc_at(b, 0x0000, 15), 0);
	T(buddy_check(b) == 0);
	/* a cached block can be claimed too: free to the cache, then claim it */
	TEQ(buddy_free(b, 0x9000, 12), 0);
	TEQ(buddy_alloc_at(b, 0x9000, 12), 0);
	TEQ(buddy_free(b, 0x8000, 12), 0);
	TEQ(buddy_free(b, 0x9000, 12), 0);
	TEQ(buddy_free(b, 0, 15), 0);
	T(pristine(b));
	buddy_destroy(b);
}

struct walk_rec {
	uint64_t off[64];
	unsigned order[64];
	bool free[64];
	int n;
};

static int rec(void *arg, uint64_t off, unsigned order, bool free)
{
	struct walk_rec *w = arg;

	if (w->n == 64)
		return -ENOSPC;
	w->off[w->n] = off;
	w->order[w->n] = order;
	w->free[w->n++] = free;
	return 0;
}

static void test_walk(void)
{
	unsigned flags[] = { BUDDY_F_TRACK, BUDDY_F_NOCACHE };

	for (int f = 0; f < 2; f++) {
		struct buddy *b = mk(16, 12, 0, flags[f]);
		struct walk_rec w = { .n = 0 };

		T(b);
		TEQ(buddy_alloc_at(b, 0x0000, 13), 0);
		TEQ(buddy_alloc_at(b, 0x2000, 12), 0);
		TEQ(buddy_walk(b, rec, &w), 0);
		/* used 8K@0 + used 4K@0x2000 (tracked) or used run [0,0x3000) as 8K+4K */
		TEQ(w.n, 5);
		TEQ(w.off[0], 0);
		TEQ(w.order[0], 13);
		T(!w.free[0]);
		TEQ(w.off[1], 0x2000);
		TEQ(w.order[1], 12);
		T(!w.free[1]);
		TEQ(w.off[2], 0x3000);
		TEQ(w.order[2], 12);
		T(w.free[2]);
		TEQ(w.off[3], 0x4000);
		TEQ(w.order[3], 14);
		TEQ(w.off[4], 0x8000);
		TEQ(w.order[4], 15);
		T(w.free[4]);
		TEQ(buddy_free(b, 0, 13), 0);
		TEQ(buddy_free(b, 0x2000, 12), 0);
		w.n = 0;
		buddy_drain(b);
		TEQ(buddy_walk(b, rec, &w), 0);
		TEQ(w.n, 1);
		TEQ(w.order[0], 16);
		T(w.free[0]);
		buddy_destroy(b);
	}
}

static void test_chunks(unsigned flags)
{
	/* 1 MiB heap, 64 KiB chunks: 16 chunks */
	struct buddy *b = mk(20, 12, 16, flags | BUDDY_F_NOCACHE);
	struct buddy_stats st;
	struct chunk_desc d, d2;
	int64_t a;
	char *p;

	T(b);
	TEQ(chunk_count(b), 16);
	TEQ(chunk_order(b), 16);
	buddy_stats(b, &st);
	TEQ(st.chunks_total, 16);
	TEQ(st.chunks_committed, 0);
	TEQ(st.chunks_released, 0);
	TEQ(st.chunk_size, 65536);
	a = buddy_alloc(b, 12);
	T(a >= 0);
	TEQ(chunk_index_of(b, (uint64_t)a), (uint64_t)a >> 16);
	TEQ(chunk_index_of(b, 1ull << 20), -EINVAL);
	TEQ(chunk_describe(b, (uint64_t)a >> 16, &d), 0);
	T(d.committed);
	TEQ(d.held, 4096);
	TEQ(d.generation, 0);
	T(d.addr == (char *)buddy_ptr(b, 0) + ((uint64_t)a & ~0xffffull));
	TEQ(buddy_free(b, (uint64_t)a, 12), 0);
	T(pristine(b)); /* drained: released */
	TEQ(chunk_generation(b, d.index), 1);

	/* The rest on one CPU, whose park words decide which empty chunk goes back when. */
	cpu_set_t all, one;
	T(sched_getaffinity(0, sizeof(all), &all) == 0);
	CPU_ZERO(&one);
	CPU_SET(sched_getcpu(), &one);
	T(sched_setaffinity(0, sizeof(one), &one) == 0);
	TEQ(buddy_alloc_at(b, 0x0000, 12), 0);
	TEQ(buddy_alloc_at(b, 0x1000, 12), 0);
	p = buddy_ptr(b, 0);
	memset(p, 0x5a, 4096);
	TEQ(buddy_free(b, 0x0000, 12), 0);
	TEQ(chunk_generation(b, 0), 1); /* still holds 0x1000 */
	TEQ(buddy_free(b, 0x1000, 12), 0);
	/* empty: idle, memory kept (a refill right away costs nothing) */
	TEQ(chunk_describe(b, 0, &d2), 0);
	T(d2.committed);
	TEQ(d2.held, 0);
	TEQ(d2.generation, 1);
	TEQ(p[0], 0x5a);
	buddy_stats(b, &st);
	TEQ(st.chunks_committed, 0);
	TEQ(st.chunks_idle, 1);
	TEQ(st.chunks_released, 1);
	T(buddy_check(b) == 0);
	/* emptying chunk 1 parks it beside chunk 0; emptying chunk 2 retires chunk 0 */
	TEQ(buddy_alloc_at(b, 0x10000, 12), 0);
	TEQ(buddy_alloc_at(b, 0x20000, 12), 0);
	TEQ(buddy_free(b, 0x10000, 12), 0);
	TEQ(chunk_generation(b, 0), 1);
	TEQ(buddy_free(b, 0x20000, 12), 0);
	TEQ(chunk_generation(b, 0), 2);
	TEQ(chunk_describe(b, 0, &d2), 0);
	T(!d2.committed);
	TEQ(p[0], 0); /* the memory went back to the OS: it reads as zeros again */
	TEQ(p[4095], 0);
	buddy_stats(b, &st);
	TEQ(st.chunks_idle, 2);
	TEQ(st.chunks_released, 2);
	buddy_drain(b);
	buddy_stats(b, &st);
	TEQ(st.chunks_idle, 0);
	TEQ(st.chunks_released, 4);
	TEQ(chunk_generation(b, 1), 1);
	TEQ(chunk_generation(b, 2), 1);
	/* a block larger than a chunk holds every chunk it spans */
	TEQ(buddy_alloc_at(b, 0x40000, 18), 0);
	buddy_stats(b, &st);
	TEQ(st.chunks_committed, 4);
	T(buddy_check(b) == 0);
	TEQ(buddy_free(b, 0x40000, 18), 0);
	buddy_stats(b, &st);
	TEQ(st.chunks_committed, 0);
	TEQ(st.chunks_idle, 2);          /* chunks 6 and 7 */
	TEQ(st.chunks_released, 6);      /* 4 and 5, retired by them */
	buddy_drain(b);
	buddy_stats(b, &st);
	TEQ(st.chunks_released, 8);
	for (uint64_t i = 4; i < 8; i++)
		TEQ(chunk_generation(b, i), 1);
	T(sched_setaffinity(0, sizeof(all), &all) == 0);
	TEQ(chunk_describe(b, 16, &d), -EINVAL);
	T(pristine(b));
	buddy_stats(b, &st);
	struct rlimit rl;
	if (geteuid() == 0 || (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur >= (1 << 20)))
		TEQ(st.pin_failures, 0); /* mlock() of what the test holds is allowed here */
	if (flags & BUDDY_F_MEMFD)
		T(buddy_data_fd(b) >= 0);
	else
		TEQ(buddy_data_fd(b), -1);
	buddy_destroy(b);
}

static void test_chunks_anon(void)
{
	test_chunks(0);
}

static void test_chunks_memfd(void)
{
	test_chunks(BUDDY_F_MEMFD);
}

static void test_chunks_pin(void)
{
	test_chunks(BUDDY_F_PIN);
}

/* Data in the caller's fd at an offset: what the heap writes lands in the file there, and a
 * released chunk is a hole again. */
static void test_caller_fd(void)
{
	int fd = memfd_create("heapfs-fd-test", MFD_CLOEXEC);
	struct buddy_params p = { .heap_order = 20, .min_order = 12, .chunk_order = 16,
				  .flags = BUDDY_F_FD | BUDDY_F_NOCACHE, .fd = fd, .fd_offset = 1 << 16 };
	struct buddy *b = NULL;
	char buf[8] = { 0 };
	int64_t o;

	T(fd >= 0);
	TEQ(buddy_create(&p, &b), 0);
	TEQ(buddy_data_fd(b), fd);
	o = buddy_alloc(b, 13);
	T(o >= 0);
	strcpy(buddy_ptr(b, (uint64_t)o), "in fd");
	TEQ(pread(fd, buf, sizeof(buf), (off_t)((1 << 16) + o)), sizeof(buf));
	T(strcmp(buf, "in fd") == 0);
	TEQ(buddy_free(b, (uint64_t)o, 13), 0);
	T(pristine(b)); /* drained: the chunk is released */
	TEQ(pread(fd, buf, sizeof(buf), (off_t)((1 << 16) + o)), sizeof(buf));
	TEQ(buf[0], 0);
	buddy_destroy(b);
	T(fcntl(fd, F_GETFD) >= 0); /* the caller's fd stays open */
	close(fd);
	p.fd_offset = 100; /* not page aligned */
	TEQ(buddy_create(&p, &b), -EINVAL);
}

static void test_cache_drain(void)
{
	struct buddy *b = mk(20, 12, 16, 0);
	struct buddy_stats st;
	int64_t o[8];

	T(b);
	for (int i = 0; i < 8; i++)
		T((o[i] = buddy_alloc(b, 12)) >= 0);
	for (int i = 0; i < 8; i++)
		TEQ(buddy_free(b, (uint64_t)o[i], 12), 0);
	buddy_stats(b, &st);
	TEQ(st.used, 0);
	TEQ(st.free, st.size);
	/* blocks parked in this CPU's cache count as free and as held by their chunk */
	T(st.cached > 0 && st.cached <= 8 * 4096);
	T(buddy_check(b) == 0);
	buddy_drain(b);
	buddy_stats(b, &st);
	TEQ(st.cached, 0);
	TEQ(st.chunks_committed, 0);
	T(pristine(b));
	/* a heap full of cached blocks still satisfies a big request: it drains first */
	for (int i = 0; i < 8; i++)
		T((o[i] = buddy_alloc(b, 12)) >= 0);
	for (int i = 0; i < 8; i++)
		TEQ(buddy_free(b, (uint64_t)o[i], 12), 0);
	TEQ(buddy_alloc(b, 20), 0);
	TEQ(buddy_free(b, 0, 20), 0);
	T(pristine(b));
	buddy_destroy(b);
}

static void test_create_at_attach(void)
{
	struct buddy_params p = { .heap_order = 20, .min_order = 12, .flags = BUDDY_F_MEMFD,
				  .fd = -1, .name = "heapfs-test" };
	int64_t need = buddy_meta_size(&p);
	struct buddy *a = NULL, *b = NULL;
	void *meta;
	int64_t o;

	T(need > 0);
	meta = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T(meta != MAP_FAILED);
	TEQ(buddy_create_at(&p, meta, (size_t)need, &a), 0);
	TEQ(buddy_attach(meta, (size_t)need, -1, &b), -EBADF);
	TEQ(buddy_attach(meta, (size_t)need, buddy_data_fd(a), &b), 0);
	o = buddy_alloc(a, 14);
	T(o >= 0);
	strcpy(buddy_ptr(a, (uint64_t)o), "shared");
	T(strcmp(buddy_ptr(b, (uint64_t)o), "shared") == 0); /* another mapping, same data */
	T(buddy_ptr(a, (uint64_t)o) != buddy_ptr(b, (uint64_t)o));
	TEQ(buddy_free(b, (uint64_t)o, 14), 0);
	T(pristine(a));
	buddy_destroy(b);
	buddy_destroy(a);
	munmap(meta, (size_t)need);
}

/* attach refuses metadata whose chunk table disagrees with the header's geometry: a
 * corrupt chunk_order or nchunks would index the table's slots out of bounds. */
static void test_attach_bad_chunk_table(void)
{
	struct buddy_params p = { .heap_order = 20, .min_order = 12, .chunk_order = 16,
				  .fd = -1 };
	int64_t need = buddy_meta_size(&p);
	struct buddy *a = NULL, *b = NULL;
	struct chunk_table *t;
	void *meta, *copy;

	T(need > 0);
	meta = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	copy = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T(meta != MAP_FAILED && copy != MAP_FAILED);
	TEQ(buddy_create_at(&p, meta, (size_t)need, &a), 0);
	memcpy(copy, meta, (size_t)need);
	TEQ(buddy_attach(copy, (size_t)need, -1, &b), 0); /* the intact copy is accepted */
	buddy_destroy(b);
	b = NULL;
	t = (struct chunk_table *)((char *)copy + ((struct buddy_meta *)copy)->chunk_off);
	T(t->chunk_order == 16);
	t->chunk_order = 12;
	TEQ(buddy_attach(copy, (size_t)need, -1, &b), -EINVAL);
	T(b == NULL);
	t->chunk_order = 16;
	t->nchunks = 1ull << 40;
	TEQ(buddy_attach(copy, (size_t)need, -1, &b), -EINVAL);
	T(b == NULL);
	T(pristine(a));
	buddy_destroy(a);
	munmap(copy, (size_t)need);
	munmap(meta, (size_t)need);
}

static void test_metadata_size(void)
{
	/* 1 GiB at 4 KiB blocks: metadata <= 0.1% of the heap, with and without tracking */
	struct buddy_params p = { .heap_order = 30, .min_order = 12, .fd = -1 };

	T(buddy_meta_size(&p) <= (1 << 30) / 1000);
	p.flags = BUDDY_F_TRACK;
	T(buddy_meta_size(&p) <= (1 << 30) / 1000);
	/* ... also with the slots of a 64-core host; each slot adds to it */
	p.nslots = 64;
	T(buddy_meta_size(&p) <= (1 << 30) / 1000);
	p.nslots = 2;
	T(buddy_meta_size(&p) < buddy_meta_size(&(struct buddy_params){ .heap_order = 30,
		.min_order = 12, .flags = BUDDY_F_TRACK, .fd = -1, .nslots = 3 }));
}

/* A sequential buddy after an allocation-only sequence, as free-block counts per order:
 * it splits the smallest free block that fits, and which one of equal blocks it picks does
 * not change the counts. */
struct seq_buddy {
	unsigned min, M;
	uint64_t nfree[BUDDY_MAX_ORDER + 1];
};

static bool seq_alloc(struct seq_buddy *s, unsigned k)
{
	unsigned j = k;

	while (j <= s->M && !s->nfree[j])
		j++;
	if (j > s->M)
		return false;
	s->nfree[j]--;
	while (j-- > k)
		s->nfree[j]++;
	return true;
}

static uint64_t seq_largest(const struct seq_buddy *s)
{
	for (unsigned j = s->M + 1; j-- > s->min; )
		if (s->nfree[j])
			return 1ull << j;
	return 0;
}

/* Issue 11: small blocks allocated from every CPU slot in turn, as on a 16- or 64-core
 * host, split no block that a sequential buddy keeps whole: after every step the largest
 * free block is the sequential buddy's, until the heap is full. */
static void test_big_blocks_many_slots(void)
{
	unsigned slots[] = { 2, 16, 64 }, flags[] = { 0, BUDDY_F_TRACK };

	for (int si = 0; si < 3; si++)
		for (int f = 0; f < 2; f++) {
			struct buddy_params p = { .heap_order = 24, .min_order = 12, .fd = -1,
						  .flags = flags[f], .nslots = slots[si] };
			struct seq_buddy seq = { .min = 12, .M = 24 };
			enum { MAXN = 1 << 12 };
			uint64_t *off = calloc(MAXN, sizeof(*off));
			unsigned *ord = calloc(MAXN, sizeof(*ord)), seed = 7 + (unsigned)si;
			struct buddy_stats st;
			struct buddy *b = NULL;
			size_t n = 0;

			T(off && ord);
			TEQ(buddy_create(&p, &b), 0);
			seq.nfree[24] = 1;
			for (unsigned step = 0; seq_largest(&seq); step++) {
				unsigned k = 12 + (unsigned)rand_r(&seed) % 4;
				bool fits = seq_alloc(&seq, k);
				int64_t o;

				buddy_set_slot((int)(step % slots[si]));
				o = buddy_alloc(b, k);
				T(fits == (o >= 0));
				if (o >= 0) {
					T(n < MAXN);
					off[n] = (uint64_t)o;
					ord[n++] = k;
				}
				buddy_stats(b, &st);
				TEQ(st.largest_free, seq_largest(&seq));
			}
			TEQ(st.used, st.size);
			T(buddy_check(b) == 0);
			for (size_t i = 0; i < n; i++) {
				buddy_set_slot((int)(i % slots[si]));
				TEQ(buddy_free(b, off[i], ord[i]), 0);
			}
			buddy_set_slot(-1);
			T(pristine(b));
			buddy_destroy(b);
			free(off);
			free(ord);
		}
}

struct unlock_arg {
	_Atomic uint32_t *lock;
	useconds_t after;
};

static void *unlock_later(void *v)
{
	struct unlock_arg *a = v;

	usleep(a->after);
	atomic_store(a->lock, 0);
	return NULL;
}

/* Issue 6: blocks cached by a CPU whose slot is busy are still obtainable: an allocation
 * about to fail waits for the slot instead of passing it by.  Slot 1 caches blocks, then
 * is held (as by a thread in the middle of an operation) while slot 0 fills the heap. */
static void test_full_heap_waits_for_busy_slot(void)
{
	struct buddy_params p = { .heap_order = 20, .min_order = 12, .chunk_order = 16,
				  .fd = -1, .nslots = 2 };
	struct unlock_arg ua;
	struct buddy_stats st;
	struct buddy *b = NULL;
	pthread_t t;
	int64_t o[8];
	uint64_t got = 0;

	TEQ(buddy_create(&p, &b), 0);
	buddy_set_slot(1);
	for (int i = 0; i < 8; i++)
		T((o[i] = buddy_alloc(b, 12)) >= 0);
	for (int i = 0; i < 8; i++)
		TEQ(buddy_free(b, (uint64_t)o[i], 12), 0);
	buddy_stats(b, &st);
	T(st.cached > 0);
	ua = (struct unlock_arg){ &b->pcp[1].lock, (useconds_t)(PCP_WAIT_NS / 4000) };
	atomic_store(ua.lock, 1);
	T(pthread_create(&t, NULL, unlock_later, &ua) == 0);
	buddy_set_slot(0);
	for (int64_t x; (x = buddy_alloc(b, 12)) >= 0; )
		got += 4096;
	pthread_join(t, NULL);
	TEQ(got, st.free);
	buddy_stats(b, &st);
	TEQ(st.used, st.size);
	T(buddy_check(b) == 0);
	for (uint64_t u = 0; u < 256; u++)
		TEQ(buddy_free(b, u << 12, 12), 0);
	buddy_set_slot(-1);
	T(pristine(b));
	buddy_destroy(b);
}

/* Seeded random alloc/free against a model: a byte per min block naming its owner. */
static void test_random_model(void)
{
	unsigned flags[] = { 0, BUDDY_F_TRACK, BUDDY_F_NOCACHE | BUDDY_F_TRACK };

	for (int f = 0; f < 3; f++) {
		struct buddy *b = mk(20, 12, 16, flags[f]);
		enum { N = 64 };
		uint64_t off[N];
		unsigned ord[N];
		bool held[N] = { false };
		unsigned char owner[256];
		unsigned seed = 12345;

		T(b);
		memset(owner, 0xff, sizeof(owner));
		for (int step = 0; step < 20000; step++) {
			unsigned i = (unsigned)rand_r(&seed) % N;

			if (held[i]) {
				for (uint64_t u = off[i] >> 12; u < (off[i] >> 12) + (1u << (ord[i] - 12)); u++)
					owner[u] = 0xff;
				TEQ(buddy_free(b, off[i], ord[i]), 0);
				held[i] = false;
			} else {
				unsigned k = 12 + (unsigned)rand_r(&seed) % 5;
				int64_t o = buddy_alloc(b, k);

				if (o == -ENOMEM)
					continue;
				T(o >= 0);
				for (uint64_t u = (uint64_t)o >> 12; u < ((uint64_t)o >> 12) + (1u << (k - 12)); u++) {
					TEQ(owner[u], 0xff);
					owner[u] = (unsigned char)i;
				}
				off[i] = (uint64_t)o;
				ord[i] = k;
				held[i] = true;
			}
			if (step % 97 == 0)
				TEQ(buddy_check(b), 0);
		}
		for (unsigned i = 0; i < N; i++)
			if (held[i])
				TEQ(buddy_free(b, off[i], ord[i]), 0);
		T(pristine(b));
		buddy_destroy(b);
	}
}

/* ---- a hostile writer of the metadata ---------------------------------------------- */

/* A direct_map heap's metadata is a memfd every client of the heap holds, sealed against
 * their writes (fs/core/dm.c).  Had a client a writable mapping anyway, it could put any
 * value in a CPU slot (a stack's count, its entries, the parked chunks) or in the header's
 * words.  Here the metadata is one memfd mapped twice: as the daemon's, its last byte just
 * before a PROT_NONE guard page (another one before it), and as the hostile client's
 * writable mapping.  Whatever that one writes, the allocator reads and writes nothing
 * outside the metadata (a step past it is a SIGSEGV, plain or under ASan), hands out only
 * blocks of the heap, and buddy_check() reports what is wrong instead of following it. */
struct hostile {
	struct buddy *b;
	char *region;   /* guard page, the daemon's mapping, guard page */
	size_t len;     /* of the mapping: whole pages */
	size_t need;    /* of the metadata, which ends where the mapping ends */
	char *meta;     /* the daemon's view */
	char *client;   /* the client's view: its own mapping of the same memfd */
	char *guard;    /* the first byte past the daemon's mapping */
	int fd;
};

#define H_SLOT   1u  /* the slot the test acts as (of 2): the last one */
#define H_ORDER  12u /* min_order: cached order c = 0 */

/* The client's view of a word the daemon's handle points at. */
#define CLIENT(h, ptr) ((__typeof__(ptr))((h)->client + ((char *)(ptr) - (h)->meta)))

static void hostile_close(struct hostile *h)
{
	long pg = sysconf(_SC_PAGESIZE);

	buddy_destroy(h->b);
	if (h->client)
		munmap(h->client - (h->len - h->need), h->len);
	if (h->region)
		munmap(h->region, h->len + 2 * (size_t)pg);
	if (h->fd >= 0)
		close(h->fd);
	*h = (struct hostile){ .fd = -1 };
	buddy_set_slot(-1);
}

/* A 16 MiB heap (4 KiB blocks, 64 KiB chunks, 2 slots, tracked as the daemon's heaps are)
 * whose slot H_SLOT caches 8 blocks of order 12: h->b, or NULL. */
static void hostile_open(struct hostile *h)
{
	struct buddy_params p = { .heap_order = 24, .min_order = H_ORDER, .chunk_order = 16,
				  .flags = BUDDY_F_MEMFD | BUDDY_F_TRACK, .fd = -1,
				  .nslots = 2 };
	long pg = sysconf(_SC_PAGESIZE);
	int64_t need = buddy_meta_size(&p), o[8];
	char *c;

	*h = (struct hostile){ .fd = -1 };
	T(need > 0 && pg > 0);
	h->need = (size_t)need;
	h->len = (h->need + (size_t)pg - 1) & ~((size_t)pg - 1);
	h->fd = memfd_create("heapfs-test-meta", MFD_CLOEXEC);
	T(h->fd >= 0 && ftruncate(h->fd, (off_t)h->len) == 0);
	h->region = mmap(NULL, h->len + 2 * (size_t)pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	T(h->region != MAP_FAILED);
	T(mmap(h->region + pg, h->len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, h->fd,
	       0) != MAP_FAILED);
	h->guard = h->region + pg + h->len;
	h->meta = h->guard - h->need; /* need is a multiple of 64: aligned as it must be */
	c = mmap(NULL, h->len, PROT_READ | PROT_WRITE, MAP_SHARED, h->fd, 0);
	T(c != MAP_FAILED);
	h->client = c + (h->len - h->need);
	TEQ(buddy_create_at(&p, h->meta, h->need, &h->b), 0);
	buddy_set_slot((int)H_SLOT);
	for (int i = 0; i < 8; i++)
		T((o[i] = buddy_alloc(h->b, H_ORDER)) >= 0);
	for (int i = 0; i < 8; i++)
		TEQ(buddy_free(h->b, (uint64_t)o[i], H_ORDER), 0);
	TEQ(atomic_load(&h->b->pcp[H_SLOT].n[0]), 8);
	T(h->b->pcp_depth[0] == 32 && buddy_check(h->b) == 0);
}

/* An offset buddy_alloc returned: a block of the heap, whose bytes are in the mapping. */
static int is_block(struct buddy *b, int64_t off, unsigned k)
{
	char *p;

	if (off < 0 || (off & ((1ll << k) - 1)) || (uint64_t)off >= 1ull << buddy_heap_order(b))
		return 0;
	p = buddy_ptr(b, (uint64_t)off);
	if (!p || !buddy_ptr(b, (uint64_t)off + (1ull << k) - 1))
		return 0;
	memset(p, 0xa5, 1ull << k);
	return 1;
}

/* Counts a client could write into the stack of order 12 of slot H_SLOT: one past its
 * depth (inside the array), the array's size and one past it (into the next order's
 * entries), the entry just past the metadata and the one after it (the guard page: read
 * by a pop of count g + 1, written by a push at count g), and the largest. */
static void hostile_counts(uint32_t v[7])
{
	struct hostile h;
	uint64_t g;

	hostile_open(&h);
	if (!h.b)
		return;
	g = (uint64_t)(h.guard - (char *)&h.b->pcp[H_SLOT].blk[0][0]) / 8;

	v[0] = 33;
	v[1] = PCP_DEPTH;
	v[2] = PCP_DEPTH + 1;
	v[3] = (uint32_t)g;
	v[4] = (uint32_t)g + 1;
	v[5] = 0x80000000u;
	v[6] = UINT32_MAX;
	hostile_close(&h);
}

static void test_hostile_stack_counts(void)
{
	uint32_t v[7] = { 0 };

	hostile_counts(v);
	T(v[3] > PCP_DEPTH);
	for (unsigned i = 0; i < 7; i++) {
		struct hostile h;
		_Atomic uint32_t *n;
		int64_t off, mine;

		/* buddy_check: reports the count, follows it nowhere; the right count back:
		 * the heap is as it was */
		hostile_open(&h);
		T(h.b && !tc_cur_failed);
		n = CLIENT(&h, &h.b->pcp[H_SLOT].n[0]);
		atomic_store(n, v[i]);
		TEQ(buddy_check(h.b), -EUCLEAN);
		atomic_store(n, 8);
		TEQ(buddy_check(h.b), 0);
		hostile_close(&h);

		/* allocations: pops read inside the stack only, and what they hand out is a
		 * block of the heap (stale entries the clamp exposes may repeat: a writer of
		 * the metadata owns the allocator's state, not the process's memory) */
		hostile_open(&h);
		T(h.b && !tc_cur_failed);
		atomic_store(CLIENT(&h, &h.b->pcp[H_SLOT].n[0]), v[i]);
		for (int j = 0; j < 40; j++)
			T(is_block(h.b, buddy_alloc(h.b, H_ORDER), H_ORDER));
		TEQ(buddy_check(h.b), -EUCLEAN);
		hostile_close(&h);

		/* a free pushes inside the stack only (a full one sends half down first) */
		hostile_open(&h);
		T(h.b && !tc_cur_failed);
		mine = buddy_alloc(h.b, H_ORDER + 1); /* not cached at order 12 */
		T(is_block(h.b, mine, H_ORDER + 1));
		off = mine + (1 << H_ORDER);
		TEQ(buddy_split(h.b, (uint64_t)mine, H_ORDER + 1), 0);
		atomic_store(CLIENT(&h, &h.b->pcp[H_SLOT].n[0]), v[i]);
		TEQ(buddy_free(h.b, (uint64_t)off, H_ORDER), 0);
		T(atomic_load(&h.b->pcp[H_SLOT].n[0]) <= h.b->pcp_depth[0]);
		buddy_drain(h.b); /* and a drain gives back no more than the stack holds */
		TEQ(atomic_load(&h.b->pcp[H_SLOT].n[0]), 0);
		hostile_close(&h);
	}
}

/* Entries that are no block of the heap (past it, misaligned, the largest values): a pop
 * drops them and takes a block from the shared bitmaps; a drain drops them too, and no
 * bitmap word past the heap is written; buddy_check names them. */
static void test_hostile_stack_entries(void)
{
	const uint64_t bad[8] = { 1ull << 24, 1, UINT64_MAX, (1ull << 24) - 4095,
				  1ull << 40, 4096 + 8, UINT64_MAX - 4095, 1ull << 63 };

	for (int drain = 0; drain < 2; drain++) {
		struct hostile h;
		uint64_t *e;

		hostile_open(&h);
		T(h.b && !tc_cur_failed);
		e = CLIENT(&h, &h.b->pcp[H_SLOT].blk[0][0]);
		memcpy(e, bad, sizeof(bad));
		TEQ(buddy_check(h.b), -EUCLEAN);
		if (drain) {
			buddy_drain(h.b);
			TEQ(atomic_load(&h.b->pcp[H_SLOT].n[0]), 0);
		} else {
			for (int j = 0; j < 8; j++) {
				int64_t off = buddy_alloc(h.b, H_ORDER);

				T(is_block(h.b, off, H_ORDER));
				for (int x = 0; x < 8; x++)
					T((uint64_t)off != bad[x]);
			}
		}
		hostile_close(&h);
	}
}

/* Parked chunks (index + 1 in a slot's park words) past the chunk table: one whose state
 * word would lie in the guard page, and the largest (whose index wraps to just before the
 * table).  A drain or a chunk that empties (retiring what was parked there) ignores them;
 * buddy_check names them.  And a bit of nonempty_orders past the heap's orders: a full
 * heap's allocation finds no bitmap of that order to walk (-ENOMEM), buddy_check names it. */
static void test_hostile_park_and_orders(void)
{
	struct hostile h;
	_Atomic uint64_t *park, *nonempty;
	struct chunk_table *t;
	uint64_t g;
	int64_t whole, o;

	hostile_open(&h);
	T(h.b && !tc_cur_failed);
	t = h.b->cm.t;
	g = (uint64_t)(h.guard - (char *)&t->slot[0]) / sizeof(t->slot[0]);
	T(g > t->nchunks);
	park = CLIENT(&h, &h.b->pcp[H_SLOT].park[0]);
	atomic_store(&park[0], g + 1);
	atomic_store(&park[1], UINT64_MAX);
	TEQ(buddy_check(h.b), -EUCLEAN);
	o = buddy_alloc(h.b, 18); /* four chunks, not cached: their free parks them, each
				     retiring what park[index % 2] held */
	T(is_block(h.b, o, 18));
	TEQ(buddy_free(h.b, (uint64_t)o, 18), 0);
	atomic_store(&park[0], g + 1);
	atomic_store(&park[1], UINT64_MAX);
	buddy_drain(h.b);
	T(pristine(h.b));
	hostile_close(&h);

	hostile_open(&h);
	T(h.b && !tc_cur_failed);
	buddy_drain(h.b);
	whole = buddy_alloc(h.b, 24);
	TEQ(whole, 0);
	nonempty = CLIENT(&h, &h.b->meta->nonempty);
	atomic_fetch_or(nonempty, (1ull << 63) | (1ull << 41) | (1ull << 25));
	TEQ(buddy_alloc(h.b, H_ORDER), -ENOMEM);
	TEQ(buddy_check(h.b), -EUCLEAN);
	TEQ(buddy_free(h.b, 0, 24), 0);
	atomic_fetch_and(nonempty, (1ull << 25) - 1);
	T(pristine(h.b));
	hostile_close(&h);
}

/* The header's words are read once, checked (attach) or made (create_at): a client that
 * changes a bitmap's length there changes nothing the allocator reads. */
static void test_hostile_header(void)
{
	struct hostile h;
	struct buddy_stats st0, st;
	struct buddy_meta *m;

	hostile_open(&h);
	T(h.b && !tc_cur_failed);
	buddy_stats(h.b, &st0);
	m = CLIENT(&h, h.b->meta);
	for (unsigned k = H_ORDER; k <= 24; k++)
		m->ord[k].lv_words[0] = m->ord[k].lv_words[1] = UINT64_MAX / 16;
	m->ord[H_ORDER].nblocks = 1ull << 40;
	m->ord[H_ORDER].nlev = 7;
	buddy_stats(h.b, &st);
	T(!memcmp(st.free_blocks, st0.free_blocks, sizeof(st.free_blocks)));
	TEQ(st.free, st0.free);
	TEQ(buddy_check(h.b), 0);
	T(pristine(h.b));
	hostile_close(&h);
}

int main(void)
{
	RUN(test_order_of);
	RUN(test_bad_params);
	RUN(test_split_merge_all);
	RUN(test_every_order);
	RUN(test_small_heap_min_orders);
	RUN(test_bad_args);
	RUN(test_alloc_at);
	RUN(test_walk);
	RUN(test_chunks_anon);
	RUN(test_chunks_memfd);
	RUN(test_chunks_pin);
	RUN(test_caller_fd);
	RUN(test_cache_drain);
	RUN(test_create_at_attach);
	RUN(test_attach_bad_chunk_table);
	RUN(test_metadata_size);
	RUN(test_split_block);
	RUN(test_random_model);
	RUN(test_big_blocks_many_slots);
	RUN(test_full_heap_waits_for_busy_slot);
	RUN(test_hostile_stack_counts);
	RUN(test_hostile_stack_entries);
	RUN(test_hostile_park_and_orders);
	RUN(test_hostile_header);
	return tc_failed != 0;
}
