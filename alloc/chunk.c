/*
 * chunk.c — data memory of a buddy heap: lazy commit and release in chunks.
 *
 * The heap's bytes come from a memory source (source.h): anonymous or memfd memory the
 * heap opens itself, or the caller's source (BUDDY_F_SOURCE: donor memory).  A chunk's
 * first hold commits it through the source and the last unhold releases it through the
 * source, which knows how (MADV_DONTNEED, FALLOC_FL_PUNCH_HOLE, or keeping a donor's pages).
 *
 * Accounting: the buddy layer calls chunk_hold() when a block leaves its shared free
 * structures and chunk_unhold() before a block goes back into them.  Lock-free: one CAS
 * per chunk spanned; see chunk_i.h for the release protocol and its one wait.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buddy_i.h"
#include "chunk.h"
#include "source.h"

size_t chunk_table_size(uint64_t nchunks)
{
	return sizeof(struct chunk_table) + nchunks * sizeof(struct chunk_slot);
}

void chunk_table_init(struct chunk_table *t, unsigned chunk_order, uint64_t nchunks)
{
	t->nchunks = nchunks;
	t->chunk_order = chunk_order;
	atomic_init(&t->released, 0);
	for (uint64_t i = 0; i < nchunks; i++) {
		atomic_init(&t->slot[i].state, 0);
		atomic_init(&t->slot[i].gen, 0);
	}
}

int chunk_map_open(struct chunk_map *cm, struct chunk_table *t, unsigned heap_order,
		   unsigned chunk_order, uint64_t nchunks, unsigned flags, int fd,
		   uint64_t fd_offset, const char *name, struct msrc *src)
{
	bool pin = flags & BUDDY_F_PIN;
	int ret = 0;

	memset(cm, 0, sizeof(*cm));
	cm->t = t;
	cm->chunk_order = chunk_order;
	cm->nchunks = nchunks;
	cm->size = 1ull << heap_order;
	cm->fd = -1;
	cm->flags = flags;
	cm->fd_offset = fd_offset;
	if (flags & BUDDY_F_NODATA)
		goto out;
	if (flags & BUDDY_F_SOURCE) {
		if (!src)
			return -EINVAL;
		cm->src = src; /* the caller's: not closed here */
	} else if (flags & (BUDDY_F_MEMFD | BUDDY_F_FD)) {
		if (fd < 0 && !(flags & BUDDY_F_MEMFD))
			return -EBADF;
		ret = msrc_memfd_open(cm->size, fd, fd_offset, pin, name, &cm->src);
		cm->own_src = true;
	} else {
		ret = msrc_anon_open(cm->size, chunk_order, pin, &cm->src);
		cm->own_src = true;
	}
	if (ret < 0) {
		cm->src = NULL;
		cm->own_src = false;
		goto out;
	}
	/* buddy_ptr() reads the mapping directly: NULL for a source that maps nothing */
	cm->base = msrc_map(cm->src, 0, cm->size);
	cm->fd = msrc_fd(cm->src);
out:
	return ret;
}

void chunk_map_close(struct chunk_map *cm)
{
	if (cm->own_src)
		msrc_close(cm->src);
	cm->src = NULL;
	cm->base = NULL;
	cm->fd = -1;
	cm->own_src = false;
}

static uint64_t chunk_bytes(const struct chunk_map *cm)
{
	return 1ull << cm->chunk_order;
}

static void chunk_commit(struct chunk_map *cm, uint64_t idx)
{
	if (cm->src)
		msrc_commit(cm->src, idx * chunk_bytes(cm), chunk_bytes(cm));
}

static void chunk_release(struct chunk_map *cm, uint64_t idx)
{
	if (cm->src)
		msrc_release(cm->src, idx * chunk_bytes(cm), chunk_bytes(cm));
}

/* Loop over the chunks [off, off+len) spans; n: the bytes of the block in each. */
#define FOR_EACH_CHUNK(cm, off, len, idx, n)                                              \
	for (uint64_t idx = (off) >> (cm)->chunk_order,                                \
		      n = (len) < chunk_bytes(cm) ? (len) : chunk_bytes(cm),              \
		      _end = ((off) + (len) - 1) >> (cm)->chunk_order;                 \
	     idx <= _end; idx++)

void chunk_hold(struct chunk_map *cm, uint64_t off, uint64_t len)
{
	FOR_EACH_CHUNK(cm, off, len, idx, n) {
		_Atomic uint64_t *st = &cm->t->slot[idx].state;
		uint64_t s = atomic_load(st);
		unsigned spins = 0;

		for (;;) {
			if (s & CHUNK_RELEASING) {
				/* a release that started before us: our block must not be wiped */
				if (++spins > 64)
					sched_yield();
				s = atomic_load(st);
				continue;
			}
			/* an idle chunk still has its memory: take it back as it is */
			if (atomic_compare_exchange_weak(st, &s, (s & CHUNK_HELD_MASK) + n))
				break;
		}
		if (s == 0)
			chunk_commit(cm, idx);
	}
}

/* Give chunk idx back to the OS if its state is still `from` (0 held bytes).  A parked
 * index comes from a CPU slot's park word, in the metadata (which may be shared, buddy.c):
 * one past the table names no chunk and is dropped. */
static void chunk_release_if(struct chunk_map *cm, uint64_t idx, uint64_t from)
{
	struct chunk_slot *cs;

	if (idx >= cm->nchunks)
		return;
	cs = &cm->t->slot[idx];
	if (!atomic_compare_exchange_strong(&cs->state, &from, CHUNK_RELEASING))
		return;
	chunk_release(cm, idx);
	atomic_fetch_add(&cs->gen, 1);
	atomic_fetch_add(&cm->t->released, 1);
	atomic_store(&cs->state, 0);
}

void chunk_unpark(struct chunk_map *cm, _Atomic uint64_t *park)
{
	for (unsigned i = 0; i < CHUNK_PARK; i++) {
		uint64_t old = atomic_exchange(&park[i], 0);

		if (old)
			chunk_release_if(cm, old - 1, CHUNK_IDLE);
	}
}

void chunk_unhold(struct chunk_map *cm, uint64_t off, uint64_t len, _Atomic uint64_t *park)
{
	FOR_EACH_CHUNK(cm, off, len, idx, n) {
		struct chunk_slot *cs = &cm->t->slot[idx];
		uint64_t s = atomic_load(&cs->state), old;

		while (!atomic_compare_exchange_weak(&cs->state, &s, s - n))
			;
		if (s - n)
			continue;
		if (!park) {
			chunk_release_if(cm, idx, 0);
			continue;
		}
		s = 0;
		if (!atomic_compare_exchange_strong(&cs->state, &s, CHUNK_IDLE))
			continue; /* taken again already */
		old = atomic_exchange(&park[idx % CHUNK_PARK], idx + 1);
		if (old && old != idx + 1)
			chunk_release_if(cm, old - 1, CHUNK_IDLE);
	}
}

uint64_t chunk_count(const struct buddy *b)
{
	return b->cm.nchunks;
}

unsigned chunk_order(const struct buddy *b)
{
	return b->cm.chunk_order;
}

int64_t chunk_index_of(const struct buddy *b, uint64_t off)
{
	if (off >= b->cm.size)
		return -EINVAL;
	return (int64_t)(off >> b->cm.chunk_order);
}

int chunk_describe(const struct buddy *b, uint64_t index, struct chunk_desc *d)
{
	const struct chunk_table *t = b->cm.t;
	uint64_t s;

	if (index >= b->cm.nchunks)
		return -EINVAL;
	s = atomic_load((_Atomic uint64_t *)&t->slot[index].state);
	d->index = index;
	d->generation = atomic_load((_Atomic uint64_t *)&t->slot[index].gen);
	d->size = 1ull << b->cm.chunk_order;
	d->addr = b->cm.base ? b->cm.base + index * d->size : NULL;
	d->held = s & CHUNK_HELD_MASK;
	d->committed = s != 0; /* held, parked idle or being released */
	return 0;
}

uint64_t chunk_generation(const struct buddy *b, uint64_t index)
{
	const struct chunk_table *t = b->cm.t;

	if (index >= b->cm.nchunks)
		return 0;
	return atomic_load((_Atomic uint64_t *)&t->slot[index].gen);
}

int chunk_gen_layout(const struct buddy *b, uint64_t *off, uint64_t *stride)
{
	if (b->own_meta)
		return -EINVAL; /* private metadata: no one else can map it */
	*off = b->meta->chunk_off + offsetof(struct chunk_table, slot) +
	       offsetof(struct chunk_slot, gen);
	*stride = sizeof(struct chunk_slot);
	return 0;
}
