/*
 * rtest.h — what the replica/ C tests share: check macros (a failed check ends the
 * running test function; RUN counts failures, main returns rt_failed != 0) and a test
 * "node": a rep_link with callbacks that record what happened, under a mutex, so a test
 * can wait for a condition with a deadline.  RT_ONLY=NAME in the environment runs only the
 * tests whose function name contains NAME.
 */
#ifndef HEAPFS_RTEST_H
#define HEAPFS_RTEST_H

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "replica.h"

static int rt_failed, rt_cur;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			rt_cur = 1;                                                        \
			goto done;                                                         \
		}                                                                          \
	} while (0)

#define CHECK_EQ(a, b)                                                                     \
	do {                                                                               \
		long long _a = (long long)(a), _b = (long long)(b);                        \
		if (_a != _b) {                                                            \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,  \
				__LINE__, #a, _a, #b, _b);                                 \
			rt_cur = 1;                                                        \
			goto done;                                                         \
		}                                                                          \
	} while (0)

#define RUN(fn)                                                                            \
	do {                                                                               \
		struct timespec _t0, _t1;                                                  \
		const char *_only = getenv("RT_ONLY");                                     \
		if (_only && !strstr(#fn, _only))                                          \
			break;                                                             \
		rt_cur = 0;                                                                \
		clock_gettime(CLOCK_MONOTONIC, &_t0);                                      \
		fn();                                                                      \
		clock_gettime(CLOCK_MONOTONIC, &_t1);                                      \
		fprintf(stderr, "%s %s (%.2f s)\n", rt_cur ? "FAIL" : "ok  ", #fn,          \
			(double)(_t1.tv_sec - _t0.tv_sec) + (_t1.tv_nsec - _t0.tv_nsec) / 1e9); \
		rt_failed += rt_cur;                                                       \
	} while (0)

static inline double rt_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif
