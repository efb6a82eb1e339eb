/*
 * dirty.c — resync bookkeeping: one bit per fixed-size region of a heap, set when the
 * region changes while the partner is away (replica.h, rep_dirty_*).
 *
 * How: an array of 64-bit words updated with atomic or/and, so memory is bounded by the
 * heap size (a 1 GiB heap with 64 KiB regions: 2 KiB) and writers never take a lock.
 * The resync side walks it with rep_dirty_next and clears a region *before* it reads the
 * region's bytes to send them: a write that lands meanwhile sets the bit again, so it is
 * sent by a later pass rather than lost.
 *
 * Locking: none; every word is accessed atomically, so set/clear/next/bytes may run
 * concurrently (next and bytes see some recent state).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "replica.h"

struct rep_dirty {
	uint64_t size;
	unsigned order;
	uint64_t nregions;
	uint64_t nwords;
	_Atomic uint64_t w[];
};

int rep_dirty_new(uint64_t heap_size, unsigned region_order, struct rep_dirty **out)
{
	uint64_t nr, nw;
	struct rep_dirty *d;

	if (!heap_size || region_order < 6 || region_order > 40)
		return -EINVAL;
	nr = ((heap_size - 1) >> region_order) + 1;
	nw = (nr + 63) / 64;
	if (nw > (SIZE_MAX - sizeof(*d)) / sizeof(uint64_t))
		return -ENOMEM;
	d = calloc(1, sizeof(*d) + nw * sizeof(uint64_t));
	if (!d)
		return -ENOMEM;
	d->size = heap_size;
	d->order = region_order;
	d->nregions = nr;
	d->nwords = nw;
	*out = d;
	return 0;
}

/* Regions [*first, *last] touched by [off, off + len) cut at the heap; false if none. */
static bool span(const struct rep_dirty *d, uint64_t off, uint64_t len, uint64_t *first,
		 uint64_t *last)
{
	if (!len || off >= d->size)
		return false;
	if (len > d->size - off)
		len = d->size - off;
	*first = off >> d->order;
	*last = (off + len - 1) >> d->order;
	return true;
}

/* Bits first..last (inclusive) of word i, relative to the word. */
static uint64_t word_mask(uint64_t i, uint64_t first, uint64_t last)
{
	uint64_t lo = i * 64 > first ? 0 : first - i * 64;
	uint64_t hi = last >= i * 64 + 63 ? 63 : last - i * 64;

	return (hi == 63 ? ~0ull : (1ull << (hi + 1)) - 1) & ~((1ull << lo) - 1);
}

void rep_dirty_set(struct rep_dirty *d, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (!span(d, off, len, &first, &last))
		return;
	for (uint64_t i = first / 64; i <= last / 64; i++)
		atomic_fetch_or(&d->w[i], word_mask(i, first, last));
}

void rep_dirty_clear(struct rep_dirty *d, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (!span(d, off, len, &first, &last))
		return;
	for (uint64_t i = first / 64; i <= last / 64; i++)
		atomic_fetch_and(&d->w[i], ~word_mask(i, first, last));
}

int rep_dirty_next(struct rep_dirty *d, uint64_t *off, uint64_t *len)
{
	uint64_t r, end;

	if (*off >= d->size)
		return 0;
	r = *off >> d->order;
	for (uint64_t i = r / 64; i < d->nwords; i++) {
		uint64_t w = atomic_load(&d->w[i]);

		if (i == r / 64)
			w &= ~0ull << (r % 64);
		if (!w)
			continue;
		r = i * 64 + (uint64_t)__builtin_ctzll(w);
		*off = r << d->order;
		end = *off + (1ull << d->order);
		*len = (end > d->size ? d->size : end) - *off;
		return 1;
	}
	return 0;
}

uint64_t rep_dirty_bytes(const struct rep_dirty *d)
{
	uint64_t n = 0, last = d->nregions - 1;

	for (uint64_t i = 0; i < d->nwords; i++)
		n += (uint64_t)__builtin_popcountll(atomic_load(&d->w[i]));
	n <<= d->order;
	/* the last region may be cut short by the heap's end */
	if (atomic_load(&d->w[last / 64]) & (1ull << (last % 64)))
		n -= ((last + 1) << d->order) - d->size;
	return n;
}

void rep_dirty_free(struct rep_dirty *d)
{
	free(d);
}
