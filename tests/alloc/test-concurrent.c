/*
 * test-concurrent.c — the allocator under concurrent use: threads and processes.
 *
 *   race_fill     threads allocate blocks of random orders until the heap is exhausted:
 *                 the blocks they got never overlap and add up to the whole heap, then
 *                 all free at once and the heap coalesces back to one block.
 *   fill_free_refill  two threads pinned to two CPUs fill the heap to the last block, free
 *                 it (blocks stay in both CPUs' caches) and fill it again: every byte the
 *                 stats called free is obtained, again and again.
 *   chunk_churn   threads allocate, fill, verify and free blocks in a heap of few small
 *                 chunks, so chunk commit and release (with its generation bump) race
 *                 allocations all the time: data written is never wiped by a release.
 *   alloc_at_race threads claim the same blocks with buddy_alloc_at while others allocate:
 *                 exactly one claimant wins each block.
 *   deep_churn    threads churn small blocks in a 4 GiB heap whose bitmaps have four
 *                 summary levels; afterwards it is one block and every hint is right.
 *   fork_memfd    two forked processes share a heap (metadata in a MAP_SHARED mapping,
 *                 data in a memfd): they allocate, stamp and free concurrently; the parent
 *                 then sees the stamps of what they kept and a coalesced heap after freeing.
 * The multi-threaded stamp stress is `alloc-bench --verify` (also run under TSan).
 * ROUNDS scales the work: the TSan build passes a smaller figure.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buddy.h"
#include "chunk.h"
#include "tcheck.h"

#ifndef ROUNDS
#define ROUNDS 1000
#endif
#define NTHREADS 4


struct held {
	uint64_t off;
	unsigned order;
};

struct fill_arg {
	struct buddy *b;
	unsigned seed;
	struct held *h;
	size_t n, cap;
	pthread_barrier_t *bar;
};

/* Random orders m..m+3 while they come, then the smallest order until it fails `tries`
 * times (a miss may be transient: another thread was splitting).  Adds to h; new count. */
static size_t fill(struct buddy *b, unsigned *seed, struct held *h, size_t n, size_t cap,
		   int tries)
{
	unsigned m = buddy_min_order(b);
	int misses = 0;

	while (n < cap && misses < tries) {
		unsigned k = misses ? m : m + (unsigned)rand_r(seed) % 4;
		int64_t o = buddy_alloc(b, k);

		if (o < 0) {
			misses += k == m;
			continue;
		}
		h[n++] = (struct held){ (uint64_t)o, k };
	}
	return n;
}

/* Free h[0..n): how many frees failed. */
static int free_all(struct buddy *b, const struct held *h, size_t n)
{
	int bad = 0;

	for (size_t i = 0; i < n; i++)
		bad += buddy_free(b, h[i].off, h[i].order) != 0;
	return bad;
}

static void *fill_thread(void *v)
{
	struct fill_arg *a = v;

	pthread_barrier_wait(a->bar);
	a->n = fill(a->b, &a->seed, a->h, a->n, a->cap, 2);
	pthread_barrier_wait(a->bar); /* filled */
	pthread_barrier_wait(a->bar); /* main has looked */
	return free_all(a->b, a->h, a->n) ? (void *)1 : NULL;
}

static void race_fill(void)
{
	unsigned flags[] = { 0, BUDDY_F_TRACK | BUDDY_F_NODATA, BUDDY_F_NOCACHE };

	for (int f = 0; f < 3; f++)
		for (int r = 0; r < ROUNDS / 4 + 1; r++) {
			struct buddy *b = mk(20, 12, 16, flags[f]);
			struct fill_arg a[NTHREADS];
			pthread_t t[NTHREADS];
			pthread_barrier_t bar;
			unsigned char *owner = calloc(256, 1);
			uint64_t total = 0;
			void *res;

			T(b && owner);
			pthread_barrier_init(&bar, NULL, NTHREADS + 1);
			for (int i = 0; i < NTHREADS; i++) {
				a[i] = (struct fill_arg){ b, (unsigned)(r * 31 + i), calloc(256, sizeof(struct held)),
							  0, 256, &bar };
				pthread_create(&t[i], NULL, fill_thread, &a[i]);
			}
			pthread_barrier_wait(&bar); /* go */
			pthread_barrier_wait(&bar); /* all filled, nobody frees yet */
			/* until the next barrier only this thread works: a thread may have stopped
			 * on a transient miss (another was splitting), so take what is left here */
			for (int64_t o; (o = buddy_alloc(b, 12)) >= 0; ) {
				T(!owner[o >> 12]);
				owner[o >> 12] = 0xff;
				total += 4096;
			}
			for (int i = 0; i < NTHREADS; i++)
				for (size_t j = 0; j < a[i].n; j++) {
					uint64_t u0 = a[i].h[j].off >> 12, nu = 1ull << (a[i].h[j].order - 12);

					for (uint64_t u = u0; u < u0 + nu; u++) {
						T(!owner[u]);
						owner[u] = (unsigned char)(i + 1);
					}
					total += nu << 12;
				}
			TEQ(total, 1ull << 20);
			pthread_barrier_wait(&bar); /* threads free theirs */
			for (uint64_t u = 0; u < 256; u++)
				if (owner[u] == 0xff)
					TEQ(buddy_free(b, u << 12, 12), 0);
			for (int i = 0; i < NTHREADS; i++) {
				pthread_join(t[i], &res);
				T(res == NULL);
				free(a[i].h);
			}
			T(pristine(b));
			pthread_barrier_destroy(&bar);
			free(owner);
			buddy_destroy(b);
		}
}

/* Issue 6: two threads on two CPUs fill the heap to the last block, free it all (each
 * CPU's cache keeps some), and fill it again, many times: every time, the last allocation
 * to fail has taken every byte the stats called free, those in the caches included. */
struct refill_arg {
	struct buddy *b;
	int cpu;
	unsigned seed;
	struct held *h;
	size_t n, cap;
	pthread_barrier_t *bar;
	_Atomic int *filled;
	int bad;
};

#define REFILLS (ROUNDS / 20 + 1)

static void *refill_thread(void *v)
{
	struct refill_arg *a = v;
	cpu_set_t one;

	CPU_ZERO(&one);
	CPU_SET(a->cpu, &one);
	a->bad += pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0;
	for (int r = 0; r < REFILLS; r++) {
		pthread_barrier_wait(a->bar);
		a->n = fill(a->b, &a->seed, a->h, 0, a->cap, 1);
		atomic_fetch_add(a->filled, 1);
		pthread_barrier_wait(a->bar); /* full: main looks */
		pthread_barrier_wait(a->bar);
		a->bad += free_all(a->b, a->h, a->n);
		pthread_barrier_wait(a->bar); /* free: main looks */
	}
	return NULL;
}

static void fill_free_refill(void)
{
	unsigned flags[] = { 0, BUDDY_F_TRACK };
	cpu_set_t all;
	int cpus[2], nc = 0;

	T(sched_getaffinity(0, sizeof(all), &all) == 0);
	for (int c = 0; c < CPU_SETSIZE && nc < 2; c++)
		if (CPU_ISSET(c, &all))
			cpus[nc++] = c;
	if (nc == 1) /* one CPU: both threads on it */
		cpus[nc++] = cpus[0];
	for (int f = 0; f < 2; f++) {
		struct buddy *b = mk(22, 12, 16, flags[f]); /* 4 MiB: 1024 blocks of 4 KiB */
		struct refill_arg a[2];
		pthread_t t[2];
		pthread_barrier_t bar;
		struct buddy_stats st;
		_Atomic int filled = 0;

		T(b);
		pthread_barrier_init(&bar, NULL, 3);
		for (int i = 0; i < 2; i++) {
			a[i] = (struct refill_arg){ b, cpus[i], (unsigned)(f * 2 + i + 1),
						    calloc(1024, sizeof(struct held)), 0, 1024, &bar,
						    &filled, 0 };
			pthread_create(&t[i], NULL, refill_thread, &a[i]);
		}
		for (int r = 0; r < REFILLS; r++) {
			pthread_barrier_wait(&bar); /* fill */
			/* meanwhile drain as the daemon's status files do: that holds the CPU
			 * slots for moments, and a failing allocation must wait for them */
			while (atomic_load(&filled) < 2 * (r + 1))
				buddy_drain(b);
			pthread_barrier_wait(&bar);
			buddy_stats(b, &st);
			TEQ(st.used, st.size);
			TEQ(st.cached, 0);
			T(buddy_check(b) == 0);
			pthread_barrier_wait(&bar); /* free */
			pthread_barrier_wait(&bar);
			buddy_stats(b, &st);
			TEQ(st.free, st.size);
			T(st.cached > 0); /* the next fill has to take these back */
			T(buddy_check(b) == 0);
		}
		for (int i = 0; i < 2; i++) {
			pthread_join(t[i], NULL);
			TEQ(a[i].bad, 0);
			free(a[i].h);
		}
		T(pristine(b));
		pthread_barrier_destroy(&bar);
		buddy_destroy(b);
	}
}

struct churn_arg {
	struct buddy *b;
	unsigned seed;
	int id;
	int bad;
};

static void *churn_thread(void *v)
{
	struct churn_arg *a = v;

	for (int i = 0; i < ROUNDS * 100; i++) {
		unsigned k = 12 + (unsigned)rand_r(&a->seed) % 3;
		int64_t o = buddy_alloc(a->b, k);
		unsigned char *p;

		if (o < 0)
			continue;
		p = buddy_ptr(a->b, (uint64_t)o);
		memset(p, a->id, 1u << k);
		sched_yield(); /* let a release of this chunk try to happen */
		for (uint64_t j = 0; j < (1u << k); j += 512)
			a->bad += p[j] != a->id;
		buddy_free(a->b, (uint64_t)o, k);
	}
	return NULL;
}

static void chunk_churn(void)
{
	unsigned flags[] = { BUDDY_F_NOCACHE, BUDDY_F_MEMFD | BUDDY_F_NOCACHE, BUDDY_F_TRACK };

	for (int f = 0; f < 3; f++) {
		/* 256 KiB heap in 16 KiB chunks */
		struct buddy *b = mk(18, 12, 14, flags[f]);
		struct churn_arg a[NTHREADS];
		pthread_t t[NTHREADS];
		struct buddy_stats st;

		T(b);
		for (int i = 0; i < NTHREADS; i++) {
			a[i] = (struct churn_arg){ b, (unsigned)i * 7 + 1, i + 1, 0 };
			pthread_create(&t[i], NULL, churn_thread, &a[i]);
		}
		for (int i = 0; i < NTHREADS; i++) {
			pthread_join(t[i], NULL);
			TEQ(a[i].bad, 0);
		}
		buddy_stats(b, &st);
		T(st.chunks_released > 0);
		T(pristine(b));
		buddy_destroy(b);
	}
}

struct at_arg {
	struct buddy *b;
	atomic_int *wins;
	int claimer;
	pthread_barrier_t *bar;
};

static void *at_thread(void *v)
{
	struct at_arg *a = v;

	pthread_barrier_wait(a->bar);
	if (a->claimer) {
		/* both claimers try every 16 KiB block */
		for (uint64_t i = 0; i < 64; i++)
			if (buddy_alloc_at(a->b, i << 14, 14) == 0)
				atomic_fetch_add(&a->wins[i], 1);
		return NULL;
	}
	/* meanwhile small blocks come and go, splitting blocks the claimers want */
	for (int i = 0; i < ROUNDS * 20; i++) {
		int64_t o = buddy_alloc(a->b, 12);

		if (o >= 0 && buddy_free(a->b, (uint64_t)o, 12) != 0)
			return (void *)1;
	}
	return NULL;
}

static void alloc_at_race(void)
{
	for (int r = 0; r < ROUNDS / 4 + 1; r++) {
		struct buddy *b = mk(20, 12, 16, BUDDY_F_TRACK | BUDDY_F_NODATA);
		atomic_int wins[64];
		struct at_arg a[3];
		pthread_t t[3];
		pthread_barrier_t bar;
		void *res;

		T(b);
		for (int i = 0; i < 64; i++)
			atomic_init(&wins[i], 0);
		pthread_barrier_init(&bar, NULL, 3);
		for (int i = 0; i < 3; i++) {
			a[i] = (struct at_arg){ b, wins, i != 0, &bar };
			pthread_create(&t[i], NULL, at_thread, &a[i]);
		}
		for (int i = 0; i < 3; i++) {
			pthread_join(t[i], &res);
			T(res == NULL);
		}
		/* each block claimed at most once; one both missed (held split for a moment)
		 * is free now that nobody else runs */
		for (int i = 0; i < 64; i++) {
			T(atomic_load(&wins[i]) <= 1);
			if (!atomic_load(&wins[i]))
				TEQ(buddy_alloc_at(b, (uint64_t)i << 14, 14), 0);
		}
		TEQ(buddy_check(b), 0);
		for (int i = 0; i < 64; i++)
			TEQ(buddy_free(b, (uint64_t)i << 14, 14), 0);
		T(pristine(b));
		pthread_barrier_destroy(&bar);
		buddy_destroy(b);
	}
}

struct deep_arg {
	struct buddy *b;
	unsigned seed;
	int bad;
};

static void *deep_thread(void *v)
{
	struct deep_arg *a = v;
	enum { HOLD = 128 };
	uint64_t off[HOLD];
	unsigned ord[HOLD], n = 0;

	for (int i = 0; i < ROUNDS * 200; i++) {
		if (n < HOLD && (rand_r(&a->seed) & 1)) {
			unsigned k = 12 + (unsigned)rand_r(&a->seed) % 3;
			int64_t o = buddy_alloc(a->b, k);

			a->bad += o < 0;
			if (o >= 0) {
				off[n] = (uint64_t)o;
				ord[n++] = k;
			}
		} else if (n) {
			unsigned j = (unsigned)rand_r(&a->seed) % n;

			a->bad += buddy_free(a->b, off[j], ord[j]) != 0;
			off[j] = off[--n];
			ord[j] = ord[n];
		}
	}
	while (n--)
		a->bad += buddy_free(a->b, off[n], ord[n]) != 0;
	return NULL;
}

/* A 4 GiB heap of 4 KiB blocks (offsets only): the small orders have four summary levels,
 * so words empty and refill at every level while threads race. */
static void deep_churn(void)
{
	struct buddy *b = mk(32, 12, 0, BUDDY_F_NODATA | BUDDY_F_TRACK);
	struct deep_arg a[NTHREADS];
	pthread_t t[NTHREADS];

	T(b);
	for (int i = 0; i < NTHREADS; i++) {
		a[i] = (struct deep_arg){ b, (unsigned)i * 13 + 5, 0 };
		pthread_create(&t[i], NULL, deep_thread, &a[i]);
	}
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(t[i], NULL);
		TEQ(a[i].bad, 0);
	}
	T(pristine(b));
	buddy_destroy(b);
}

/* Child of fork_memfd: attach, churn with stamps, keep every 4th block, report them. */
static int fork_child(void *meta, size_t meta_size, int fd, int id, struct held *kept)
{
	struct buddy *b;
	unsigned seed = (unsigned)id;
	int n = 0, bad = 0;

	if (buddy_attach(meta, meta_size, fd, &b) < 0)
		return 2;
	for (int i = 0; i < ROUNDS * 200; i++) {
		unsigned k = 12 + (unsigned)rand_r(&seed) % 4;
		int64_t o = buddy_alloc(b, k);
		uint64_t *p;

		if (o < 0)
			continue;
		p = buddy_ptr(b, (uint64_t)o);
		p[0] = (uint64_t)id << 32 | (uint64_t)i;
		p[(1u << k) / 8 - 1] = p[0];
		if (i % 4 == 0 && n < 64) {
			kept[n++] = (struct held){ (uint64_t)o, k };
			continue;
		}
		bad += p[0] != ((uint64_t)id << 32 | (uint64_t)i) || p[(1u << k) / 8 - 1] != p[0];
		if (buddy_free(b, (uint64_t)o, k) < 0)
			bad++;
	}
	kept[n].order = 0; /* end mark */
	buddy_destroy(b);
	return bad ? 1 : 0;
}

static void fork_memfd(void)
{
	struct buddy_params p = { .heap_order = 22, .min_order = 12, .chunk_order = 16,
				  .flags = BUDDY_F_MEMFD | BUDDY_F_TRACK, .fd = -1, .name = "heapfs-fork" };
	int64_t need = buddy_meta_size(&p);
	struct held *kept;
	struct buddy *b;
	void *meta;
	pid_t pid[2];

	T(need > 0);
	meta = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	kept = mmap(NULL, 2 * 65 * sizeof(*kept), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	T(meta != MAP_FAILED && kept != MAP_FAILED);
	TEQ(buddy_create_at(&p, meta, (size_t)need, &b), 0);
	for (int c = 0; c < 2; c++) {
		pid[c] = fork();
		T(pid[c] >= 0);
		if (pid[c] == 0)
			_exit(fork_child(meta, (size_t)need, buddy_data_fd(b), c + 1, kept + c * 65));
	}
	for (int c = 0; c < 2; c++) {
		int status;

		TEQ(waitpid(pid[c], &status, 0), pid[c]);
		T(WIFEXITED(status));
		TEQ(WEXITSTATUS(status), 0);
	}
	TEQ(buddy_check(b), 0);
	for (int c = 0; c < 2; c++)
		for (struct held *h = kept + c * 65; h->order; h++) {
			uint64_t *q = buddy_ptr(b, h->off);

			TEQ(q[0] >> 32, c + 1); /* the child's stamp, through this process's mapping */
			TEQ(q[(1u << h->order) / 8 - 1], q[0]);
			TEQ(buddy_free(b, h->off, h->order), 0);
		}
	T(pristine(b));
	buddy_destroy(b);
	munmap(kept, 2 * 65 * sizeof(*kept));
	munmap(meta, (size_t)need);
}

int main(void)
{
	RUN(race_fill);
	RUN(fill_free_refill);
	RUN(chunk_churn);
	RUN(alloc_at_race);
	RUN(deep_churn);
	RUN(fork_memfd);
	return tc_failed != 0;
}
