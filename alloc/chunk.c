/*
 * chunk.c — data memory of a buddy heap: reservation, lazy commit and release in chunks.
 *
 * The heap's bytes are one mapping made up front (anonymous MAP_NORESERVE, or MAP_SHARED
 * of a memfd / the caller's fd), so "commit" is only the first touch (plus mlock() with
 * BUDDY_F_PIN) and "release" gives the pages back: MADV_DONTNEED for anonymous private
 * memory, FALLOC_FL_PUNCH_HOLE for file-backed memory (which also drops the pages from
 * every other process mapping them).
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

#define HUGE_ORDER 21 /* x86-64 and arm64 (4K pages) PMD huge page: 2 MiB */

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

static int map_fd_data(struct chunk_map *cm)
{
	struct stat st;

	if (fstat(cm->fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size < cm->fd_offset + cm->size &&
	    ftruncate(cm->fd, (off_t)(cm->fd_offset + cm->size)) < 0)
		return -errno;
	cm->base = mmap(NULL, cm->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
			cm->fd, (off_t)cm->fd_offset);
	if (cm->base == MAP_FAILED) {
		cm->base = NULL;
		return -errno;
	}
	return 0;
}

/* Anonymous private data.  When a chunk is a whole number of huge pages, the mapping is
 * aligned to the huge page size and asks for transparent huge pages: committing a chunk
 * then takes it from the OS in 2 MiB pages (one fault instead of 512), which is what the
 * chunk policy says anyway, and releasing a chunk frees whole huge pages. */
static int map_anon_data(struct chunk_map *cm)
{
	uint64_t extra = cm->chunk_order >= HUGE_ORDER ? 1ull << HUGE_ORDER : 0;
	char *p = mmap(NULL, cm->size + extra, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t head;

	if (p == MAP_FAILED)
		return -errno;
	if (extra) {
		head = (((uintptr_t)p + extra - 1) & ~(uintptr_t)(extra - 1)) - (uintptr_t)p;
		if (head)
			munmap(p, head);
		if (extra - head)
			munmap(p + head + cm->size, extra - head);
		p += head;
		/* advisory: without THP the heap works the same with small pages */
		madvise(p, cm->size, MADV_HUGEPAGE);
	}
	cm->base = p;
	return 0;
}

int chunk_map_open(struct chunk_map *cm, struct chunk_table *t, unsigned heap_order,
		   unsigned chunk_order, uint64_t nchunks, unsigned flags, int fd,
		   uint64_t fd_offset, const char *name)
{
	int ret = 0;

	memset(cm, 0, sizeof(*cm));
	cm->t = t;
	cm->chunk_order = chunk_order;
	cm->nchunks = nchunks;
	cm->size = 1ull << heap_order;
	cm->fd = -1;
	cm->flags = flags;
	cm->fd_offset = fd_offset;
	atomic_init(&cm->pin_failures, 0);
	if (flags & BUDDY_F_NODATA)
		goto out;
	if (!(flags & (BUDDY_F_MEMFD | BUDDY_F_FD))) {
		ret = map_anon_data(cm);
		goto out;
	}
	if (fd < 0 && (flags & BUDDY_F_MEMFD)) {
		fd = memfd_create(name ? name : "heapfs", MFD_CLOEXEC);
		if (fd < 0) {
			ret = -errno;
			goto out;
		}
		cm->own_fd = true;
	}
	if (fd < 0) {
		ret = -EBADF;
		goto out;
	}
	cm->fd = fd;
	ret = map_fd_data(cm);
	if (ret < 0)
		goto fail_fd;
	goto out;

fail_fd:
	if (cm->own_fd)
		close(cm->fd);
	cm->fd = -1;
	cm->own_fd = false;
out:
	return ret;
}

void chunk_map_close(struct chunk_map *cm)
{
	if (cm->base)
		munmap(cm->base, cm->size);
	if (cm->own_fd)
		close(cm->fd);
	cm->base = NULL;
	cm->fd = -1;
	cm->own_fd = false;
}

static uint64_t chunk_bytes(const struct chunk_map *cm)
{
	return 1ull << cm->chunk_order;
}

static void chunk_commit(struct chunk_map *cm, uint64_t idx)
{
	uint64_t cs = chunk_bytes(cm);

	if (cm->base && (cm->flags & BUDDY_F_PIN) && mlock(cm->base + idx * cs, cs) < 0)
		atomic_fetch_add_explicit(&cm->pin_failures, 1, memory_order_relaxed);
}

static void chunk_release(struct chunk_map *cm, uint64_t idx)
{
	uint64_t cs = chunk_bytes(cm);
	char *addr = cm->base ? cm->base + idx * cs : NULL;

	/* A chunk smaller than a page shares its page with neighbours: count it only. */
	if (!addr || cs < (uint64_t)sysconf(_SC_PAGESIZE))
		return;
	if (cm->flags & BUDDY_F_PIN)
		munlock(addr, cs);
	if (cm->fd < 0)
		madvise(addr, cs, MADV_DONTNEED);
	else if (fallocate(cm->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			   (off_t)(cm->fd_offset + idx * cs), (off_t)cs) < 0)
		madvise(addr, cs, MADV_REMOVE); /* same effect where fallocate is refused */
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

/* Give chunk idx back to the OS if its state is still `from` (0 held bytes). */
static void chunk_release_if(struct chunk_map *cm, uint64_t idx, uint64_t from)
{
	struct chunk_slot *cs = &cm->t->slot[idx];

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
