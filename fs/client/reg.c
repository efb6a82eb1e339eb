/*
 * reg.c — libheapfs's per-process registration table: see reg_i.h for what and how.
 * Locking: none (the caller serialises).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "reg_i.h"

struct hc_reg *hc_find(struct hc_table *t, uint64_t key)
{
	for (unsigned k = 0; k < HC_MAX_REGS; k++)
		if (t->r[k].used && t->r[k].geom.key == key) {
			t->r[k].last_use = ++t->tick;
			return &t->r[k];
		}
	return NULL;
}

unsigned hc_count(const struct hc_table *t)
{
	unsigned n = 0;

	for (unsigned k = 0; k < HC_MAX_REGS; k++)
		n += t->r[k].used != 0;
	return n;
}

static void release(struct hc_reg *r)
{
	if (r->data && r->data != MAP_FAILED)
		munmap(r->data, r->geom.heap_size);
	if (r->meta && r->meta != MAP_FAILED)
		munmap((void *)r->meta, r->geom.meta_size);
	free(r->seen);
	close(r->data_fd);
	close(r->meta_fd);
	memset(r, 0, sizeof(*r));
}

void hc_drop(struct hc_table *t, struct hc_reg *r)
{
	(void)t;
	if (r->used)
		release(r);
}

void hc_clear(struct hc_table *t)
{
	for (unsigned k = 0; k < HC_MAX_REGS; k++)
		hc_drop(t, &t->r[k]);
}

/* A free slot, dropping the least recently used idle registration if there is none. */
static struct hc_reg *slot(struct hc_table *t)
{
	struct hc_reg *lru = NULL;

	for (unsigned k = 0; k < HC_MAX_REGS; k++) {
		struct hc_reg *r = &t->r[k];

		if (!r->used)
			return r;
		if (!r->active && (!lru || r->last_use < lru->last_use))
			lru = r;
	}
	if (lru) {
		release(lru);
		t->dropped++;
	}
	return lru;
}

static bool geom_ok(const struct hc_geom *g)
{
	return g->heap_size && g->chunk_order < 64 && g->nchunks &&
	       g->nchunks == (g->heap_size + (1ull << g->chunk_order) - 1) >> g->chunk_order &&
	       g->gen_stride >= 8 && g->gen_off % 8 == 0 && g->gen_stride % 8 == 0 &&
	       g->gen_off + (g->nchunks - 1) * g->gen_stride + 8 <= g->meta_size;
}

int hc_add(struct hc_table *t, const struct hc_geom *g, int data_fd, int meta_fd,
	   struct hc_reg **out)
{
	struct hc_reg *r = NULL, *old;
	int ret = -EINVAL;

	if (!geom_ok(g))
		goto fail;
	old = hc_find(t, g->key);
	if (old && old->active) {
		ret = -EBUSY;
		goto fail;
	}
	if (old)
		release(old);
	r = old ? old : slot(t);
	ret = -EMFILE;
	if (!r)
		goto fail;
	r->geom = *g;
	r->data_fd = data_fd;
	r->meta_fd = meta_fd;
	r->seen = malloc(g->nchunks * sizeof(*r->seen));
	r->data = mmap(NULL, g->heap_size, PROT_READ | PROT_WRITE, MAP_SHARED, data_fd, 0);
	r->meta = mmap(NULL, g->meta_size, PROT_READ, MAP_SHARED, meta_fd, 0);
	r->used = 1;
	if (!r->seen || r->data == MAP_FAILED || r->meta == MAP_FAILED) {
		ret = r->seen ? -errno : -ENOMEM;
		release(r);
		return ret;
	}
	memset(r->seen, 0xff, g->nchunks * sizeof(*r->seen));
	r->last_use = ++t->tick;
	t->registered++;
	*out = r;
	return 0;
fail:
	close(data_fd);
	close(meta_fd);
	return ret;
}

uint64_t hc_gen(const struct hc_reg *r, uint64_t chunk)
{
	const _Atomic uint64_t *p =
		(const _Atomic uint64_t *)(r->meta + r->geom.gen_off + chunk * r->geom.gen_stride);

	return atomic_load_explicit(p, memory_order_acquire);
}

unsigned hc_check(struct hc_table *t, struct hc_reg *r, uint64_t hoff, uint64_t len)
{
	uint64_t first, last;
	unsigned stale = 0;

	if (!len || hoff >= r->geom.heap_size)
		return 0;
	first = hoff >> r->geom.chunk_order;
	last = (hoff + len - 1) >> r->geom.chunk_order;
	for (uint64_t c = first; c <= last && c < r->geom.nchunks; c++) {
		uint64_t gen = hc_gen(r, c);

		if (r->seen[c] == gen)
			continue;
		if (r->seen[c] != UINT64_MAX) {
			/* went back to the OS since: drop whatever this view kept of it */
			uint64_t csz = 1ull << r->geom.chunk_order;

			madvise(r->data + (c << r->geom.chunk_order),
				csz < r->geom.heap_size ? csz : r->geom.heap_size, MADV_DONTNEED);
			stale++;
		}
		r->seen[c] = gen;
	}
	t->stale += stale;
	return stale;
}
