/*
 * tcheck.h — the few assertion macros the alloc C tests share.
 *
 * T(cond) fails the running test with file:line and the condition; TEQ(a, b) also prints
 * both values.  A test is a function returning void; RUN(fn) runs it and counts failures;
 * main returns tc_failed != 0.
 */
#ifndef HEAPFS_TCHECK_H
#define HEAPFS_TCHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
