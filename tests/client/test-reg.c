/*
 * test-reg.c — unit tests of libheapfs's registration table (fs/client/reg.c) against a
 * real direct_map-style heap: buddy metadata made with buddy_create_at in a memfd (as the
 * daemon makes it), the data in a memfd, the generations found with chunk_gen_layout.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chunk.h"
#include "reg_i.h"
#include "tcheck.h"

struct heap {
	struct buddy *b;
	int meta_fd;
	void *meta;
	size_t meta_size;
	struct hc_geom geom;
};

static int mkheap(struct heap *h, uint64_t key)
{
	struct buddy_params p = { .heap_order = 24, .min_order = 12, .chunk_order = 16,
				  .flags = BUDDY_F_MEMFD | BUDDY_F_TRACK, .nslots = 1 };
	int64_t need = buddy_meta_size(&p);

	if (need < 0)
		return -1;
	h->meta_size = ((size_t)need + 4095) & ~(size_t)4095;
	h->meta_fd = memfd_create("test-reg-meta", MFD_CLOEXEC);
	if (h->meta_fd < 0 || ftruncate(h->meta_fd, (off_t)h->meta_size) < 0)
		return -1;
	h->meta = mmap(NULL, h->meta_size, PROT_READ | PROT_WRITE, MAP_SHARED, h->meta_fd, 0);
	if (h->meta == MAP_FAILED || buddy_create_at(&p, h->meta, h->meta_size, &h->b))
		return -1;
	h->geom = (struct hc_geom){ .key = key, .heap_size = 1ull << 24,
				    .meta_size = h->meta_size, .nchunks = chunk_count(h->b),
				    .chunk_order = chunk_order(h->b) };
	return chunk_gen_layout(h->b, &h->geom.gen_off, &h->geom.gen_stride);
}

static void rmheap(struct heap *h)
{
	buddy_destroy(h->b);
	munmap(h->meta, h->meta_size);
	close(h->meta_fd);
}

static int reg(struct hc_table *t, struct heap *h, uint64_t key, struct hc_reg **r)
{
	struct hc_geom g = h->geom;

	g.key = key;
	return hc_add(t, &g, dup(buddy_data_fd(h->b)), dup(h->meta_fd), r);
}

/* The view is the heap's memory; a chunk that went back to the OS is noticed once. */
static void test_generations(void)
{
	struct hc_table t = { 0 };
	struct hc_reg *r;
	struct heap h;
	int64_t off;

	T(mkheap(&h, 1) == 0);
	T(chunk_gen_layout(h.b, &h.geom.gen_off, &h.geom.gen_stride) == 0);
	TEQ(reg(&t, &h, 1, &r), 0);
	off = buddy_alloc(h.b, 12);
	T(off >= 0);
	TEQ(hc_check(&t, r, (uint64_t)off, 4096), 0); /* first sight */
	memcpy(r->data + off, "client", 6);
	T(memcmp(buddy_ptr(h.b, (uint64_t)off), "client", 6) == 0);
	TEQ(hc_gen(r, (uint64_t)off >> 16), chunk_generation(h.b, (uint64_t)off >> 16));
	TEQ(buddy_free(h.b, (uint64_t)off, 12), 0);
	buddy_drain(h.b); /* the chunk goes back: generation + 1 */
	TEQ(hc_gen(r, (uint64_t)off >> 16), chunk_generation(h.b, (uint64_t)off >> 16));
	T(hc_gen(r, (uint64_t)off >> 16) > 0);
	T(buddy_alloc_at(h.b, (uint64_t)off, 12) == 0); /* another owner */
	TEQ(hc_check(&t, r, (uint64_t)off, 4096), 1);
	T(r->data[off] == 0); /* the view shows the memfd's fresh page, not "client" */
	TEQ(hc_check(&t, r, (uint64_t)off, 4096), 0); /* renewed */
	TEQ(t.stale, 1);
	/* a range over chunks 0..3: the ones not seen before are noted, none is stale */
	TEQ(hc_check(&t, r, (1u << 16) - 1, (1u << 17) + 2), 0);
	for (unsigned c = 0; c < 4; c++)
		TEQ(r->seen[c], chunk_generation(h.b, c));
	TEQ(r->seen[4], UINT64_MAX);
	hc_clear(&t);
	TEQ(hc_count(&t), 0);
	rmheap(&h);
}

/* At most HC_MAX_REGS: the least recently used idle one goes; all in use: EMFILE. */
static void test_bound(void)
{
	struct hc_table t = { 0 };
	struct hc_reg *r, *first = NULL;
	struct heap h;
	int fd;

	T(mkheap(&h, 1) == 0);
	for (uint64_t k = 1; k <= HC_MAX_REGS; k++) {
		TEQ(reg(&t, &h, k, &r), 0);
		if (k == 1)
			first = r;
	}
	TEQ(hc_count(&t), HC_MAX_REGS);
	T(hc_find(&t, 1) == first); /* 1 is now the most recently used; 2 the least */
	TEQ(reg(&t, &h, 100, &r), 0);
	TEQ(hc_count(&t), HC_MAX_REGS);
	TEQ(t.dropped, 1);
	T(hc_find(&t, 2) == NULL);
	T(hc_find(&t, 1) != NULL && hc_find(&t, 100) != NULL);
	/* replacing a key: only while it has no mapping open */
	r = hc_find(&t, 100);
	r->active = 1;
	TEQ(reg(&t, &h, 100, &r), -EBUSY);
	for (unsigned k = 0; k < HC_MAX_REGS; k++)
		t.r[k].active = 1;
	fd = dup(h.meta_fd);
	h.geom.key = 200; /* new: a slot is needed */
	TEQ(hc_add(&t, &h.geom, dup(h.meta_fd), fd, &r), -EMFILE);
	T(fcntl(fd, F_GETFD) < 0 && errno == EBADF); /* the descriptors were closed */
	for (unsigned k = 0; k < HC_MAX_REGS; k++)
		t.r[k].active = 0;
	TEQ(reg(&t, &h, 7, &r), 0); /* 7 was there: replaced in place */
	TEQ(hc_count(&t), HC_MAX_REGS);
	hc_clear(&t);
	rmheap(&h);
}

/* Geometry that would read outside the metadata is refused. */
static void test_bad_geometry(void)
{
	struct hc_table t = { 0 };
	struct hc_reg *r;
	struct heap h;

	T(mkheap(&h, 1) == 0);
	h.geom.meta_size = h.geom.gen_off; /* the generations would lie past it */
	TEQ(reg(&t, &h, 1, &r), -EINVAL);
	h.geom.meta_size = h.meta_size;
	h.geom.nchunks++;
	TEQ(reg(&t, &h, 1, &r), -EINVAL);
	TEQ(hc_count(&t), 0);
	rmheap(&h);
}

int main(void)
{
	RUN(test_generations);
	RUN(test_bound);
	RUN(test_bad_geometry);
	return tc_failed != 0;
}
