/*
 * chunk.h — the chunk table of a buddy heap (public part of alloc/).
 *
 * A heap's data is one reserved range of address space, committed lazily and given back
 * to the OS in chunks of 2^chunk_order bytes.  Each chunk has a descriptor: index,
 * generation, address, size.  The generation increases every time the chunk goes back to
 * the OS (all its bytes free: MADV_DONTNEED for anonymous memory, FALLOC_FL_PUNCH_HOLE for
 * a memfd or the caller's fd), so whoever registered the chunk earlier (an RDMA-style
 * registration, a cached mapping) can tell it is stale by comparing one number.
 *
 * A chunk that becomes empty is not given back at once: each CPU keeps its two most
 * recently emptied chunks committed ("idle"), so a chunk emptied and refilled in quick
 * succession costs no syscall and no page faults; the idle chunk goes back when that CPU
 * empties another chunk, or at buddy_drain().  Blocks parked in per-CPU caches still count
 * as held by their chunk: buddy_drain() gives them back and then the chunk is released.
 */
#ifndef HEAPFS_CHUNK_H
#define HEAPFS_CHUNK_H

#include <stdbool.h>
#include <stdint.h>

struct buddy;

struct chunk_desc {
	uint64_t index;      /* chunk number: offset / size */
	uint64_t generation; /* number of times the chunk went back to the OS */
	void *addr;          /* in this process's mapping; NULL with BUDDY_F_NODATA */
	uint64_t size;       /* 2^chunk_order bytes */
	uint64_t held;       /* bytes of blocks allocated (or parked in caches) in the chunk */
	bool committed;      /* held, or idle: memory may be resident */
};

/* Number of chunks of the heap. */
uint64_t chunk_count(const struct buddy *b);
/* log2 of the chunk size. */
unsigned chunk_order(const struct buddy *b);
/* Index of the chunk holding heap offset off, or -EINVAL when off is outside the heap. */
int64_t chunk_index_of(const struct buddy *b, uint64_t off);
/* Describe chunk index: 0, or -EINVAL for an index out of range. */
int chunk_describe(const struct buddy *b, uint64_t index, struct chunk_desc *d);
/* Generation of chunk index (0 for an index out of range: never registered). */
uint64_t chunk_generation(const struct buddy *b, uint64_t index);
/* Where the generations lie in the metadata of a heap made by buddy_create_at, for another
 * process that maps that metadata read-only (libheapfs): chunk i's generation is the
 * 64-bit atomic at byte *off + i * *stride.  -EINVAL for private metadata (buddy_create). */
int chunk_gen_layout(const struct buddy *b, uint64_t *off, uint64_t *stride);

#endif
