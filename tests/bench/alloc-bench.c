/*
 * alloc-bench.c — throughput and fragmentation of the heapfs buddy allocator against a
 * buddy of the same semantics under one global mutex, glibc malloc and jemalloc.
 *
 * Workloads (1 GiB heap, orders 12..20; with --touch every block allocated gets a word
 * written into it, so page faults and cache misses on the block count too):
 *   cached  each thread allocates and frees one 4 KiB block in a loop
 *   steady  prefill half the heap with random orders; each step frees a random held block
 *           and allocates a new random order in its place
 *   larson  thread i allocates blocks (orders 12..15) and hands them to thread i+1 through
 *           a single-producer ring; the receiver frees them (a full ring: the producer
 *           frees the block itself)
 *   frag    `steady`, then (after buddy_drain) the share of the free space still obtainable
 *           as 1 MiB blocks (usable_max_order_fraction) and 1 - largest_free/free; buddy
 *           allocators only
 *   slots   one thread acting as every CPU slot in turn (buddy_set_slot), as on a 2-, 16-
 *           and 64-core host: allocate 3/8 of the heap in 4..32 KiB blocks, free a random
 *           half of them through other slots, allocate back to 3/8; then (caches drained)
 *           largest_free / free, heapfs next to the mutex buddy for the same sequence
 * An op is one allocation or one free; ops_per_s sums all threads; cpu_share is the time
 * the threads really ran over the wall time (other load on a small machine shows here).
 *
 * --verify: a multi-threaded stress of the heapfs allocator (per-CPU caches and tracking
 * on, a 64 MiB heap): every 4 KiB unit of a block is stamped with its owner and serial,
 * stamps are checked before every free (a block handed out twice shows as an overwritten
 * stamp), blocks also travel between threads, one thread drains and walks concurrently;
 * then everything is freed, the heap drained and it must be one free block of 2^M with
 * buddy_check() passing.  Exit 0 only then.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "buddy.h"

#define HEAP_ORDER 30
#define MIN_ORDER  12
#define MAX_ORDER  20
#define MAX_THREADS 64
#define RING 1024

/* ---- a classic buddy under one mutex: the baseline -------------------------------- */

struct mbuddy {
	pthread_mutex_t lock;
	unsigned M, m;
	uint64_t nonempty;              /* bit k: list k non-empty */
	uint32_t head[64];              /* per order, UINT32_MAX = empty */
	uint32_t *next, *prev;          /* per min block: list links of free block heads */
	uint8_t *forder;                /* per min block: order if a free block starts here, else 0xff */
	char *data;
};

static void mb_push(struct mbuddy *b, uint32_t u, unsigned k)
{
	b->forder[u] = (uint8_t)k;
	b->prev[u] = UINT32_MAX;
	b->next[u] = b->head[k];
	if (b->head[k] != UINT32_MAX)
		b->prev[b->head[k]] = u;
	b->head[k] = u;
	b->nonempty |= 1ull << k;
}

static void mb_unlink(struct mbuddy *b, uint32_t u, unsigned k)
{
	b->forder[u] = 0xff;
	if (b->prev[u] != UINT32_MAX)
		b->next[b->prev[u]] = b->next[u];
	else
		b->head[k] = b->next[u];
	if (b->next[u] != UINT32_MAX)
		b->prev[b->next[u]] = b->prev[u];
	if (b->head[k] == UINT32_MAX)
		b->nonempty &= ~(1ull << k);
}

static struct mbuddy *mb_create(unsigned M, unsigned m)
{
	struct mbuddy *b = calloc(1, sizeof(*b));
	uint64_t n = 1ull << (M - m);

	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	b->M = M;
	b->m = m;
	b->next = malloc(n * 4);
	b->prev = malloc(n * 4);
	b->forder = malloc(n);
	b->data = mmap(NULL, 1ull << M, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (!b->next || !b->prev || !b->forder || b->data == MAP_FAILED) {
		fprintf(stderr, "alloc-bench: out of memory\n");
		exit(1);
	}
	memset(b->forder, 0xff, n);
	for (int k = 0; k < 64; k++)
		b->head[k] = UINT32_MAX;
	mb_push(b, 0, M);
	return b;
}

static void mb_destroy(struct mbuddy *b)
{
	munmap(b->data, 1ull << b->M);
	free(b->next);
	free(b->prev);
	free(b->forder);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static int64_t mb_alloc(struct mbuddy *b, unsigned k)
{
	uint64_t mask;
	unsigned j;
	uint32_t u;

	pthread_mutex_lock(&b->lock);
	mask = b->nonempty & (~0ull << k);
	if (!mask) {
		pthread_mutex_unlock(&b->lock);
		return -ENOMEM;
	}
	j = (unsigned)__builtin_ctzll(mask);
	u = b->head[j];
	mb_unlink(b, u, j);
	while (j > k) {
		j--;
		mb_push(b, u + (1u << (j - b->m)), j);
	}
	pthread_mutex_unlock(&b->lock);
	return (int64_t)u << b->m;
}

static void mb_free(struct mbuddy *b, uint64_t off, unsigned k)
{
	uint32_t u = (uint32_t)(off >> b->m);

	pthread_mutex_lock(&b->lock);
	while (k < b->M) {
		uint32_t bu = u ^ (1u << (k - b->m));

		if (b->forder[bu] != k)
			break;
		mb_unlink(b, bu, k);
		u &= ~(1u << (k - b->m));
		k++;
	}
	mb_push(b, u, k);
	pthread_mutex_unlock(&b->lock);
}

/* ---- allocators under test -------------------------------------------------------- */

enum { A_HEAPFS, A_MUTEX, A_MALLOC, A_JEMALLOC, A_N };
static const char *alloc_names[A_N] = { "heapfs", "mutex", "malloc", "jemalloc" };

struct heap {
	int kind;
	struct buddy *b;
	struct mbuddy *mb;
};

static bool touch; /* --touch: write a word into every block allocated */

/* Debian's jemalloc has no symbol prefix: linked in, it is this process's malloc, and glibc's
 * allocator stays reachable as __libc_malloc/__libc_free (it cannot be dlopen'ed: it needs
 * static TLS).  Without jemalloc both names are glibc's. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
#ifdef HAVE_JEMALLOC
#define je_malloc malloc
#define je_free free
static bool have_jemalloc = true;
#else
#define je_malloc __libc_malloc
#define je_free __libc_free
static bool have_jemalloc = false;
#endif

/* nslots: heapfs's CPU slots, 0 for one per CPU */
static int heap_open(struct heap *h, int kind, unsigned heap_order, unsigned nslots)
{
	struct buddy_params p = { .heap_order = heap_order, .min_order = MIN_ORDER,
				  .fd = -1, .nslots = nslots };

	memset(h, 0, sizeof(*h));
	h->kind = kind;
	if (kind == A_HEAPFS)
		return buddy_create(&p, &h->b);
	if (kind == A_MUTEX)
		h->mb = mb_create(heap_order, MIN_ORDER);
	return 0;
}

static void heap_close(struct heap *h)
{
	if (h->b)
		buddy_destroy(h->b);
	if (h->mb)
		mb_destroy(h->mb);
}

/* A block as one word: its offset (buddies) or address (malloc), which has at least 4 low
 * zero bits, or-ed with order - MIN_ORDER + 1; 0 means "no block". */
struct blk {
	uint64_t h;
};

static inline uint64_t blk_addr(struct blk x)
{
	return x.h & ~(uint64_t)15;
}

static inline unsigned blk_order(struct blk x)
{
	return MIN_ORDER - 1 + (unsigned)(x.h & 15);
}

static inline struct blk blk_make(uint64_t addr, unsigned k)
{
	return (struct blk){ addr | (k - MIN_ORDER + 1) };
}

static bool h_alloc(struct heap *h, unsigned k, struct blk *x)
{
	int64_t o;
	char *p;

	switch (h->kind) {
	case A_HEAPFS:
		o = buddy_alloc(h->b, k);
		p = o < 0 ? NULL : buddy_ptr(h->b, (uint64_t)o);
		break;
	case A_MUTEX:
		o = mb_alloc(h->mb, k);
		p = o < 0 ? NULL : h->mb->data + o;
		break;
	case A_MALLOC:
		p = __libc_malloc(1ull << k);
		o = (int64_t)(uintptr_t)p;
		break;
	default:
		p = je_malloc(1ull << k);
		o = (int64_t)(uintptr_t)p;
		break;
	}
	if (!p)
		return false;
	if (touch)
		*(volatile uint64_t *)p = (uint64_t)k;
	*x = blk_make((uint64_t)o, k);
	return true;
}

static void h_free(struct heap *h, struct blk x)
{
	switch (h->kind) {
	case A_HEAPFS:
		buddy_free(h->b, blk_addr(x), blk_order(x));
		break;
	case A_MUTEX:
		mb_free(h->mb, blk_addr(x), blk_order(x));
		break;
	case A_MALLOC:
		__libc_free((void *)(uintptr_t)blk_addr(x));
		break;
	default:
		je_free((void *)(uintptr_t)blk_addr(x));
		break;
	}
}

/* ---- workloads -------------------------------------------------------------------- */

enum { W_CACHED, W_STEADY, W_LARSON, W_FRAG, W_SLOTS, W_N };
static const char *work_names[W_N] = { "cached", "steady", "larson", "frag", "slots" };

static inline uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Single producer / single consumer ring between neighbour threads (larson).  Each side
 * publishes its index every RING_BATCH blocks, keeps its private state on a line of its
 * own, and re-reads the other side's index only when the ring looks full/empty, and then
 * only every RING_BATCH-th time, so shared lines move once per batch, not once per block.
 * ring_flush() publishes what the producer holds back when it stops. */
#define RING_BATCH 8

struct ring {
	_Alignas(64) _Atomic uint64_t head; /* published by the consumer */
	_Alignas(64) _Atomic uint64_t tail; /* published by the producer */
	_Alignas(64) uint64_t head_local, tail_seen, empty_tries; /* consumer's own */
	_Alignas(64) uint64_t tail_local, head_seen, full_tries;  /* producer's own */
	_Alignas(64) struct blk v[RING];
};

static bool ring_push(struct ring *r, struct blk x)
{
	uint64_t t = r->tail_local;

	if (t - r->head_seen == RING) {
		if (++r->full_tries % RING_BATCH)
			return false;
		r->head_seen = atomic_load_explicit(&r->head, memory_order_acquire);
		if (t - r->head_seen == RING)
			return false;
	}
	r->v[t % RING] = x;
	r->tail_local = ++t;
	if (t % RING_BATCH == 0)
		atomic_store_explicit(&r->tail, t, memory_order_release);
	return true;
}

static void ring_flush(struct ring *r)
{
	atomic_store_explicit(&r->tail, r->tail_local, memory_order_release);
}

static bool ring_pop(struct ring *r, struct blk *x)
{
	uint64_t h = r->head_local;

	if (h == r->tail_seen) {
		if (++r->empty_tries % RING_BATCH)
			return false;
		r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (h == r->tail_seen)
			return false;
	}
	*x = r->v[h % RING];
	r->head_local = ++h;
	if (h % RING_BATCH == 0)
		atomic_store_explicit(&r->head, h, memory_order_release);
	return true;
}

/* Pop after the producer stopped (and flushed): look at its index right away. */
static bool ring_pop_last(struct ring *r, struct blk *x)
{
	r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
	r->empty_tries = 0;
	return ring_pop(r, x);
}

struct run;

struct worker {
	struct run *run;
	pthread_t t;
	uint64_t seed;
	uint64_t ops;
	double cpu; /* seconds of CPU this thread got while measured */
	struct blk *held;
	size_t nheld, cap;
	struct ring *in, *out;
	_Alignas(64) char pad;
};

struct run {
	struct heap h;
	int work, nthreads;
	_Atomic bool stop;
	pthread_barrier_t bar;
	struct worker w[MAX_THREADS];
	struct ring *rings;
};

static double clock_s(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

static double cpu_now(void)
{
	return clock_s(CLOCK_THREAD_CPUTIME_ID);
}

/* Uniform in [0, n) without a division (multiply-shift; the harness should cost little). */
static inline uint64_t below(uint64_t *s, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)rnd(s) * n) >> 64);
}

static unsigned rnd_order(uint64_t *s, unsigned lo, unsigned hi)
{
	return lo + (unsigned)below(s, hi - lo + 1);
}

/* steady/frag: hold about a 1/nthreads share of half the heap */
static void prefill(struct worker *w)
{
	uint64_t want = (1ull << (HEAP_ORDER - 1)) / (uint64_t)w->run->nthreads, got = 0;

	w->cap = 2 * want / (1ull << MIN_ORDER) / 16 + 64;
	w->held = calloc(w->cap, sizeof(*w->held));
	while (got < want && w->nheld < w->cap) {
		struct blk x;

		if (!h_alloc(&w->run->h, rnd_order(&w->seed, MIN_ORDER, MAX_ORDER), &x))
			break;
		w->held[w->nheld++] = x;
		got += 1ull << blk_order(x);
	}
}

static void *worker_main(void *v)
{
	struct worker *w = v;
	struct run *r = w->run;
	struct heap *h = &r->h;
	uint64_t ops = 0;
	struct blk x;

	if (r->work == W_STEADY || r->work == W_FRAG)
		prefill(w);
	pthread_barrier_wait(&r->bar);
	w->cpu = -cpu_now();
	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		for (int i = 0; i < 64; i++) {
			switch (r->work) {
			case W_CACHED:
				if (h_alloc(h, MIN_ORDER, &x)) {
					h_free(h, x);
					ops += 2;
				}
				break;
			case W_STEADY:
			case W_FRAG: {
				size_t j = (size_t)below(&w->seed, w->nheld);

				if (w->held[j].h) {
					h_free(h, w->held[j]);
					w->held[j].h = 0;
					ops++;
				}
				if (h_alloc(h, rnd_order(&w->seed, MIN_ORDER, MAX_ORDER), &w->held[j]))
					ops++;
				break;
			}
			default: /* W_LARSON */
				if (h_alloc(h, rnd_order(&w->seed, MIN_ORDER, MIN_ORDER + 3), &x)) {
					ops++;
					if (!ring_push(w->out, x)) {
						h_free(h, x); /* receiver behind: keep going */
						ops++;
					}
				}
				if (ring_pop(w->in, &x)) {
					h_free(h, x);
					ops++;
				}
				break;
			}
		}
	}
	w->ops = ops;
	w->cpu += cpu_now();
	ring_flush(w->out);
	pthread_barrier_wait(&r->bar); /* stopped: frag looks at the heap now */
	pthread_barrier_wait(&r->bar);
	for (size_t j = 0; j < w->nheld; j++)
		if (w->held[j].h)
			h_free(h, w->held[j]);
	free(w->held);
	return NULL;
}

struct frag_result {
	double usable, fragmentation;
	uint64_t metadata, heap;
};

static void measure_frag(struct heap *h, struct frag_result *f)
{
	uint64_t free_b = 0, usable = 0, largest = 0;

	f->heap = 1ull << HEAP_ORDER;
	if (h->kind == A_HEAPFS) {
		struct buddy_stats st;

		buddy_drain(h->b);
		buddy_stats(h->b, &st);
		for (unsigned k = MIN_ORDER; k <= HEAP_ORDER; k++) {
			free_b += st.free_blocks[k] << k;
			if (k >= MAX_ORDER)
				usable += st.free_blocks[k] << k;
		}
		largest = st.largest_free;
		f->metadata = st.metadata_bytes;
	} else {
		struct mbuddy *b = h->mb;

		for (unsigned k = MIN_ORDER; k <= HEAP_ORDER; k++)
			for (uint32_t u = b->head[k]; u != UINT32_MAX; u = b->next[u]) {
				free_b += 1ull << k;
				usable += k >= MAX_ORDER ? 1ull << k : 0;
				largest = 1ull << k;
			}
		f->metadata = (1ull << (HEAP_ORDER - MIN_ORDER)) * 9 + sizeof(*b);
	}
	f->usable = free_b ? (double)usable / (double)free_b : 0;
	f->fragmentation = free_b ? 1.0 - (double)largest / (double)free_b : 0;
}

/* ---- slots ------------------------------------------------------------------------ */

static const unsigned slot_counts[] = { 2, 16, 64 };
#define N_SLOT_COUNTS (sizeof(slot_counts) / sizeof(slot_counts[0]))

/* Allocate random orders MIN_ORDER..MIN_ORDER+3 into held[*n..] until *used reaches want,
 * step i acting as slot i % nslots. */
static void slots_alloc(struct heap *h, unsigned nslots, uint64_t *seed, struct blk *held,
			size_t *n, uint64_t *used, uint64_t want)
{
	while (*used < want) {
		struct blk x;

		buddy_set_slot((int)(*n % nslots));
		if (!h_alloc(h, rnd_order(seed, MIN_ORDER, MIN_ORDER + 3), &x))
			break;
		held[(*n)++] = x;
		*used += 1ull << blk_order(x);
	}
}

/* The `slots` sequence on one allocator: largest_free / free after it (caches drained), or
 * -1 when the heap cannot be made. */
static double slots_run(int kind, unsigned nslots)
{
	uint64_t seed = 0x51075eedull, used = 0, want = 3ull << (HEAP_ORDER - 3);
	size_t n = 0, kept = 0, cap = (size_t)(want >> MIN_ORDER);
	struct blk *held = calloc(cap, sizeof(*held));
	struct frag_result f;
	struct heap h;

	if (!held || heap_open(&h, kind, HEAP_ORDER, nslots) < 0) {
		free(held);
		return -1;
	}
	slots_alloc(&h, nslots, &seed, held, &n, &used, want);
	for (size_t i = 0; i < n; i++) {
		if (below(&seed, 2)) {
			held[kept++] = held[i];
			continue;
		}
		buddy_set_slot((int)((i + 1) % nslots)); /* another slot than the allocating one */
		h_free(&h, held[i]);
		used -= 1ull << blk_order(held[i]);
	}
	n = kept;
	slots_alloc(&h, nslots, &seed, held, &n, &used, want);
	measure_frag(&h, &f);
	for (size_t i = 0; i < n; i++)
		h_free(&h, held[i]);
	buddy_set_slot(-1);
	heap_close(&h);
	free(held);
	return 1.0 - f.fragmentation;
}

static int run_one(int work, int kind, int nthreads, double seconds, double *ops_per_s,
		   double *cpu_share, struct frag_result *f)
{
	double cpu = 0;
	struct run *r = calloc(1, sizeof(*r));
	uint64_t ops = 0;
	double t0, t1;

	if (!r || heap_open(&r->h, kind, HEAP_ORDER, 0) < 0) {
		free(r);
		return -1;
	}
	r->work = work;
	r->nthreads = nthreads;
	r->rings = calloc((size_t)nthreads, sizeof(*r->rings));
	pthread_barrier_init(&r->bar, NULL, (unsigned)nthreads + 1);
	for (int i = 0; i < nthreads; i++) {
		struct worker *w = &r->w[i];

		w->run = r;
		w->seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		w->out = &r->rings[(i + 1) % nthreads];
		w->in = &r->rings[i];
		pthread_create(&w->t, NULL, worker_main, w);
	}
	pthread_barrier_wait(&r->bar);
	t0 = now();
	usleep((useconds_t)(seconds * 1e6));
	atomic_store(&r->stop, true);
	pthread_barrier_wait(&r->bar);
	t1 = now();
	if (work == W_FRAG)
		measure_frag(&r->h, f);
	pthread_barrier_wait(&r->bar);
	for (int i = 0; i < nthreads; i++) {
		pthread_join(r->w[i].t, NULL);
		ops += r->w[i].ops;
		cpu += r->w[i].cpu;
	}
	for (int i = 0; i < nthreads; i++) { /* larson blocks still in flight */
		struct blk x;

		while (ring_pop_last(&r->rings[i], &x))
			h_free(&r->h, x);
	}
	*ops_per_s = (double)ops / (t1 - t0);
	*cpu_share = cpu / (t1 - t0) / nthreads;
	pthread_barrier_destroy(&r->bar);
	heap_close(&r->h);
	free(r->rings);
	free(r);
	return 0;
}

/* ---- --verify --------------------------------------------------------------------- */

#define V_HEAP 26
#define V_MAX  20

struct vworker {
	struct buddy *b;
	int id, nthreads;
	uint64_t seed, serial, violations, ops;
	struct ring *in, *out;
	_Atomic bool *stop;
	pthread_t t;
};

static uint64_t stamp_of(int id, uint64_t serial)
{
	return (uint64_t)(id + 1) << 48 | serial;
}

/* Stamp every min-block unit of x with s, or count the units not stamped s. */
static uint64_t stamp(struct buddy *b, struct blk x, uint64_t s, bool check)
{
	char *p = buddy_ptr(b, blk_addr(x));
	uint64_t bad = 0;

	for (uint64_t u = 0; u < (1ull << blk_order(x)); u += 1ull << MIN_ORDER) {
		if (check)
			bad += *(uint64_t *)(p + u) != s;
		else
			*(uint64_t *)(p + u) = s;
	}
	return bad;
}

/* The receiver of a ring checks the hand-over stamp of its producer, then frees. */
static uint64_t receive(struct buddy *b, struct blk x, int producer)
{
	return stamp(b, x, stamp_of(producer, 0), true) +
	       (buddy_free(b, blk_addr(x), blk_order(x)) != 0);
}

static void *vworker_main(void *v)
{
	struct vworker *w = v;
	enum { HOLD = 256 };
	struct blk held[HOLD];
	uint64_t stamps[HOLD];
	int producer = (w->id + w->nthreads - 1) % w->nthreads;
	size_t n = 0;
	struct blk x;

	while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
		uint64_t r = rnd(&w->seed);

		if (n < HOLD && (r & 1)) {
			/* mostly small (the cached orders), sometimes up to 1 MiB */
			unsigned k = (r & 0x70) ? MIN_ORDER + (unsigned)(r >> 8) % 4
						: MIN_ORDER + (unsigned)(r >> 8) % (V_MAX - MIN_ORDER + 1);
			int64_t o = buddy_alloc(w->b, k);

			w->ops++;
			if (o < 0)
				continue;
			held[n] = blk_make((uint64_t)o, k);
			stamps[n] = stamp_of(w->id, ++w->serial);
			stamp(w->b, held[n], stamps[n], false);
			n++;
		} else if (n) {
			size_t j = (size_t)(r >> 16) % n;

			x = held[j];
			w->violations += stamp(w->b, x, stamps[j], true);
			held[j] = held[n - 1];
			stamps[j] = stamps[--n];
			w->ops++;
			if ((r & 6) == 6 && w->nthreads > 1) {
				/* hand it over: the receiver checks the stamp and frees it */
				stamp(w->b, x, stamp_of(w->id, 0), false);
				if (ring_push(w->out, x))
					continue;
			}
			w->violations += buddy_free(w->b, blk_addr(x), blk_order(x)) != 0;
		}
		if (ring_pop(w->in, &x))
			w->violations += receive(w->b, x, producer);
		if (w->id == 0 && (r & 0xfff) == 0)
			buddy_drain(w->b); /* draining is safe at any time */
	}
	ring_flush(w->out);
	for (size_t j = 0; j < n; j++) {
		w->violations += stamp(w->b, held[j], stamps[j], true);
		w->violations += buddy_free(w->b, blk_addr(held[j]), blk_order(held[j])) != 0;
	}
	return NULL;
}

static int count_block(void *arg, uint64_t off, unsigned order, bool free)
{
	(void)off;
	(void)order;
	(void)free;
	++*(uint64_t *)arg;
	return 0;
}

static int verify(int nthreads, double seconds)
{
	struct buddy_params p = { .heap_order = V_HEAP, .min_order = MIN_ORDER,
				  .flags = BUDDY_F_TRACK, .fd = -1 };
	struct vworker w[MAX_THREADS];
	struct ring *rings = calloc((size_t)nthreads, sizeof(*rings));
	_Atomic bool stop = false;
	struct buddy_stats st;
	struct buddy *b;
	uint64_t violations = 0, ops = 0, walked = 0;
	int ret;

	if (!rings || buddy_create(&p, &b) < 0) {
		fprintf(stderr, "alloc-bench: cannot create the heap\n");
		return 1;
	}
	for (int i = 0; i < nthreads; i++) {
		w[i] = (struct vworker){ .b = b, .id = i, .nthreads = nthreads,
					 .seed = 0x2545f4914f6cdd1dull * (uint64_t)(i + 1),
					 .in = &rings[i], .out = &rings[(i + 1) % nthreads], .stop = &stop };
		pthread_create(&w[i].t, NULL, vworker_main, &w[i]);
	}
	for (double t0 = now(); now() - t0 < seconds; ) {
		usleep(20000);
		buddy_stats(b, &st);       /* introspection runs alongside */
		buddy_walk(b, count_block, &walked);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < nthreads; i++) {
		pthread_join(w[i].t, NULL);
		violations += w[i].violations;
		ops += w[i].ops;
	}
	for (int i = 0; i < nthreads; i++) { /* handed over after the receiver stopped */
		struct blk x;

		while (ring_pop_last(&rings[i], &x))
			violations += receive(b, x, (i + nthreads - 1) % nthreads);
	}
	buddy_drain(b);
	buddy_stats(b, &st);
	ret = buddy_check(b);
	printf("verify: %d threads, %.1f s, %lu ops, %lu stamp/free violations, used %lu, "
	       "free blocks of 2^%u: %lu, buddy_check %s\n", nthreads, seconds,
	       (unsigned long)ops, (unsigned long)violations, (unsigned long)st.used, V_HEAP,
	       (unsigned long)st.free_blocks[V_HEAP], ret ? "FAILED" : "ok");
	ret = violations || ret || st.used || st.free_blocks[V_HEAP] != 1 ||
	      st.free != st.size || ops == 0 || walked == 0;
	buddy_destroy(b);
	free(rings);
	printf("verify: %s\n", ret ? "FAILED" : "ok");
	return ret;
}

/* ---- command line and report ------------------------------------------------------ */

static int parse_list(const char *arg, const char *const *names, int n, bool *on)
{
	char *dup = strdup(arg), *save = NULL;

	memset(on, 0, sizeof(bool) * (size_t)n);
	for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int i = 0;

		while (i < n && strcmp(t, names[i]))
			i++;
		if (i == n) {
			fprintf(stderr, "alloc-bench: unknown name '%s'\n", t);
			free(dup);
			return -1;
		}
		on[i] = true;
	}
	free(dup);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: alloc-bench [--threads 1,2] [--seconds S]\n"
		   "                   [--workload cached,steady,larson,frag,slots]\n"
		   "                   [--allocator heapfs,mutex,malloc,jemalloc]\n"
		   "                   [--json] [--touch] [--verify]\n");
}

struct result {
	bool have;
	double ops, cpu;
	struct frag_result f;
};

static void target(const char *what, double value, double want, bool have)
{
	if (have)
		printf("  %-44s %8.3f  (>= %g)  %s\n", what, value, want,
		       value >= want ? "met" : "NOT MET");
}

/* The table: Mops/s per thread count, the ratios the targets are stated in, the share of
 * the time the threads really ran (other load on the machine lowers it, and so does
 * sleeping on a lock), the frag figures, and the targets with heapfs's values. */
static void print_tables(struct result res[W_N][A_N][MAX_THREADS + 1], const bool *won,
			 const bool *aon, const int *threads, int nt)
{
	int t1 = threads[0], t2 = threads[nt - 1];
	struct result *fh = &res[W_FRAG][A_HEAPFS][t2];
	char name[64];

	printf("%-8s %-9s", "workload", "allocator");
	for (int i = 0; i < nt; i++)
		printf(" %7dt Mops/s", threads[i]);
	if (nt > 1)
		printf("  %dt/%dt  vs mutex@%dt", t2, t1, t2);
	printf("  cpu%%");
	for (int i = 0; i < nt; i++)
		printf("%s%dt", i ? "/" : " ", threads[i]);
	printf("\n");
	for (int w = 0; w < W_N; w++) {
		for (int a = 0; a < A_N && won[w]; a++) {
			struct result *r = res[w][a], *m = res[w][A_MUTEX];

			if (!aon[a] || !r[t1].have)
				continue;
			printf("%-8s %-9s", work_names[w], alloc_names[a]);
			for (int i = 0; i < nt; i++)
				printf(" %15.2f", r[threads[i]].ops / 1e6);
			if (nt > 1) {
				printf("  %5.2fx", r[t2].ops / r[t1].ops);
				if (m[t2].have && a != A_MUTEX)
					printf("  %8.2fx  ", r[t2].ops / m[t2].ops);
				else
					printf("  %9s  ", "");
			}
			for (int i = 0; i < nt; i++)
				printf("%s%.0f", i ? "/" : "  ", 100 * r[threads[i]].cpu);
			printf("\n");
		}
	}
	if (won[W_FRAG]) {
		printf("\nfrag after steady (%dt), caches drained: usable_max_order_fraction  "
		       "fragmentation  metadata\n", t2);
		for (int a = 0; a < A_N; a++) {
			struct result *r = &res[W_FRAG][a][t2];

			if (!aon[a] || !r->have || (a != A_HEAPFS && a != A_MUTEX))
				continue;
			printf("  %-9s %54.3f  %13.3f  %lu B = %.4f%% of %lu MiB\n", alloc_names[a],
			       r->f.usable, r->f.fragmentation, (unsigned long)r->f.metadata,
			       100.0 * (double)r->f.metadata / (double)r->f.heap,
			       (unsigned long)(r->f.heap >> 20));
		}
	}
	if (t1 != 1 || t2 != 2 || !aon[A_HEAPFS])
		return;
	printf("\ntargets (heapfs, this run):\n");
	for (int w = 0; w < W_N; w++) {
		struct result *r = res[w][A_HEAPFS];

		if (!won[w] || w == W_FRAG)
			continue;
		snprintf(name, sizeof(name), "%s: 2t / 1t", work_names[w]);
		target(name, r[2].ops / r[1].ops, w == W_LARSON ? 1.0 : 1.8, r[1].have);
	}
	for (int w = 0; w < W_N; w++) {
		struct result *r = res[w][A_HEAPFS], *m = res[w][A_MUTEX];

		snprintf(name, sizeof(name), "%s: heapfs / mutex at 2t", work_names[w]);
		target(name, r[2].ops / m[2].ops, 2.0, won[w] && aon[A_MUTEX] && m[2].have);
	}
	target("usable_max_order_fraction", fh->f.usable, 0.8, fh->have);
	if (fh->have)
		printf("  %-44s %7.4f%%  (<= 0.1%%)  %s\n", "metadata, % of the heap (4 KiB blocks)",
		       100.0 * (double)fh->f.metadata / (double)fh->f.heap,
		       fh->f.metadata * 1000 <= fh->f.heap ? "met" : "NOT MET");
}

/* The slots workload at each slot count, heapfs against the mutex buddy. */
static int slots_report(bool json)
{
	if (!json)
		printf("\nslots: one sequence from every slot in turn, caches drained: "
		       "largest_free / free\n  %5s  %8s  %8s  target: heapfs >= mutex\n", "slots",
		       "heapfs", "mutex");
	for (size_t i = 0; i < N_SLOT_COUNTS; i++) {
		unsigned n = slot_counts[i];
		double hf = slots_run(A_HEAPFS, n), mx = slots_run(A_MUTEX, n);

		if (hf < 0 || mx < 0) {
			fprintf(stderr, "alloc-bench: slots/%u failed\n", n);
			return -1;
		}
		if (json)
			printf("{\"workload\": \"slots\", \"slots\": %u, \"heapfs_largest_over_free\": "
			       "%.4f, \"mutex_largest_over_free\": %.4f}\n", n, hf, mx);
		else
			printf("  %5u  %8.4f  %8.4f  %s\n", n, hf, mx, hf >= mx ? "met" : "NOT MET");
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "seconds", required_argument, NULL, 's' },
		{ "workload", required_argument, NULL, 'w' },
		{ "allocator", required_argument, NULL, 'a' },
		{ "json", no_argument, NULL, 'j' },
		{ "verify", no_argument, NULL, 'v' },
		{ "touch", no_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct result res[W_N][A_N][MAX_THREADS + 1];
	bool won[W_N] = { true, true, true, true, true }, aon[A_N] = { true, true, true, true };
	bool json = false, do_verify = false;
	int threads[MAX_THREADS], nt = 0, c;
	double seconds = 2;
	char *tlist = strdup("1,2"), *save = NULL;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			free(tlist);
			tlist = strdup(optarg);
			break;
		case 's':
			seconds = atof(optarg);
			break;
		case 'w':
			if (parse_list(optarg, work_names, W_N, won) < 0)
				return 2;
			break;
		case 'a':
			if (parse_list(optarg, alloc_names, A_N, aon) < 0)
				return 2;
			break;
		case 'j':
			json = true;
			break;
		case 'v':
			do_verify = true;
			break;
		case 'T':
			touch = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	for (char *t = strtok_r(tlist, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int n = atoi(t);

		if (n < 1 || n > MAX_THREADS || nt == MAX_THREADS) {
			fprintf(stderr, "alloc-bench: --threads takes 1..%d\n", MAX_THREADS);
			return 2;
		}
		threads[nt++] = n;
	}
	free(tlist);
	if (optind != argc || nt == 0 || seconds <= 0) {
		usage(stderr);
		return 2;
	}
	if (do_verify) {
		int maxt = 1;

		for (int i = 0; i < nt; i++)
			maxt = threads[i] > maxt ? threads[i] : maxt;
		return verify(maxt < 2 ? 2 : maxt, seconds);
	}
	if (aon[A_JEMALLOC] && !have_jemalloc) {
		fprintf(stderr, "alloc-bench: built without jemalloc: skipping it\n");
		aon[A_JEMALLOC] = false;
	}
	for (int w = 0; w < W_N; w++)
		for (int a = 0; a < A_N; a++)
			for (int i = 0; i < nt && won[w] && aon[a]; i++) {
				struct result *r = &res[w][a][threads[i]];

				if (w == W_SLOTS || (w == W_FRAG && a != A_HEAPFS && a != A_MUTEX))
					continue; /* slots: below; free space is only defined for a buddy heap */
				if (run_one(w, a, threads[i], seconds, &r->ops, &r->cpu, &r->f) < 0) {
					fprintf(stderr, "alloc-bench: %s/%s failed\n", work_names[w],
						alloc_names[a]);
					return 1;
				}
				r->have = true;
				if (!json)
					continue;
				printf("{\"workload\": \"%s\", \"allocator\": \"%s\", \"threads\": %d, "
				       "\"ops_per_s\": %.0f, \"cpu_share\": %.2f", work_names[w], alloc_names[a],
				       threads[i], r->ops, r->cpu);
				if (w == W_FRAG)
					printf(", \"usable_max_order_fraction\": %.4f, \"fragmentation\": %.4f, "
					       "\"metadata_bytes\": %lu, \"heap_bytes\": %lu", r->f.usable,
					       r->f.fragmentation, (unsigned long)r->f.metadata,
					       (unsigned long)r->f.heap);
				printf("}\n");
				fflush(stdout);
			}
	if (!json && (won[W_CACHED] || won[W_STEADY] || won[W_LARSON] || won[W_FRAG]))
		print_tables(res, won, aon, threads, nt);
	if (won[W_SLOTS] && aon[A_HEAPFS] && aon[A_MUTEX])
		return slots_report(json) < 0;
	return 0;
}
