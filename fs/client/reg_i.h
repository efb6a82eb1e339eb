/*
 * reg_i.h — libheapfs's per-process registration table (reg.c).
 *
 * One registration per heap this process maps from: the heap's data memfd mapped
 * read-write once (the heap view), its metadata memfd mapped read-only (the shared chunk
 * descriptor table: chunk i's generation is a 64-bit atomic at gen_off + i * gen_stride),
 * and per chunk the generation this process saw when it last used the chunk.  Each map
 * checks the chunks it spans: a changed generation means the chunk went back to the OS
 * since, and anything this process kept of it is stale; the chunk's pages in the view are
 * dropped (the next touch maps the memfd's current pages) and the new generation noted.
 * At most HC_MAX_REGS registrations: adding one past that drops the least recently used
 * idle one (no mapping open), or fails with -EMFILE if all are in use.
 * Locking: none; the caller (heapfs.c) serialises.
 */
#ifndef HEAPFS_CLIENT_REG_I_H
#define HEAPFS_CLIENT_REG_I_H

#include <stddef.h>
#include <stdint.h>

#define HC_MAX_REGS 8

struct hc_geom {
	uint64_t key;          /* the heap, for the daemon's life */
	uint64_t heap_size, meta_size, gen_off, gen_stride, nchunks;
	unsigned chunk_order;
};

struct hc_reg {
	struct hc_geom geom;   /* the heap as the daemon described it */
	int data_fd, meta_fd;
	char *data;            /* the heap view: heap_size bytes, read-write */
	const char *meta;      /* read-only */
	uint64_t *seen;        /* per chunk: generation seen, UINT64_MAX: never */
	uint64_t last_use;
	unsigned active;       /* mappings open */
	int used;              /* slot in use */
};

struct hc_table {
	struct hc_reg r[HC_MAX_REGS];
	uint64_t tick;
	uint64_t registered, dropped, stale;
};

struct hc_reg *hc_find(struct hc_table *t, uint64_t key);
/* Register: takes both descriptors (closed on failure too).  Replaces a registration of
 * the same key that has no mapping open (-EBUSY if it has). */
int hc_add(struct hc_table *t, const struct hc_geom *g, int data_fd, int meta_fd,
	   struct hc_reg **out);
void hc_drop(struct hc_table *t, struct hc_reg *r);
void hc_clear(struct hc_table *t);
uint64_t hc_gen(const struct hc_reg *r, uint64_t chunk);
/* Check the chunks of heap bytes [hoff, hoff + len): the number found stale (renewed). */
unsigned hc_check(struct hc_table *t, struct hc_reg *r, uint64_t hoff, uint64_t len);
unsigned hc_count(const struct hc_table *t);

#endif
