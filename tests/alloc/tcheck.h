/*
 * tcheck.h — the few assertion macros the alloc C tests share.
 *
 * T(cond) fails the running test with file:line and the condition; TEQ(a, b) also prints
 * both values.  A test is a function returning void; RUN(fn) runs it and counts failures;
 * main returns tc_failed != 0.  mk() makes a heap, pristine() tells whether a heap is back
 * to one free block of 2^M with every invariant holding and no chunk committed.
 */
#ifndef HEAPFS_TCHECK_H
#define HEAPFS_TCHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "buddy.h"

static int tc_failed, tc_cur_failed;

#define T(cond)                                                                            \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			tc_cur_failed = 1;                                                 \
			return;                                                            \
		}                                                                          \
	} while (0)

#define TEQ(a, b)                                                                          \
	do {                                                                               \
		long long _a = (long long)(a), _b = (long long)(b);                        \
		if (_a != _b) {                                                            \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,  \
				__LINE__, #a, _a, #b, _b);                                 \
			tc_cur_failed = 1;                                                 \
			return;                                                            \
		}                                                                          \
	} while (0)

#define RUN(fn)                                                                            \
	do {                                                                               \
		tc_cur_failed = 0;                                                         \
		fn();                                                                      \
		fprintf(stderr, "%s %s\n", tc_cur_failed ? "FAIL" : "ok  ", #fn);          \
		tc_failed += tc_cur_failed;                                                \
	} while (0)

static inline struct buddy *mk(unsigned heap, unsigned min, unsigned chunk, unsigned flags)
{
	struct buddy_params p = { .heap_order = heap, .min_order = min, .chunk_order = chunk,
				  .flags = flags, .fd = -1 };
	struct buddy *b = NULL;

	return buddy_create(&p, &b) < 0 ? NULL : b;
}

static inline int pristine(struct buddy *b)
{
	unsigned M = buddy_heap_order(b);
	struct buddy_stats st;

	buddy_drain(b);
	buddy_stats(b, &st);
	if (buddy_check(b) < 0 || st.used || st.free != st.size || st.cached ||
	    st.free_blocks[M] != 1 || st.nonempty_orders != 1ull << M || st.chunks_committed)
		return 0;
	for (unsigned k = buddy_min_order(b); k < M; k++)
		if (st.free_blocks[k])
			return 0;
	return 1;
}

#endif
