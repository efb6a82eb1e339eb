/*
 * buddy.h — concurrent binary buddy allocator (public interface of alloc/).
 *
 * A heap is 2^heap_order bytes split on demand into blocks of 2^order bytes,
 * min_order <= order <= heap_order.  All allocator state is offset-based and
 * lives in one metadata area, so it may sit in memory shared by several
 * processes (buddy_create_at + buddy_attach); the handle is process-local.
 * Allocation hands out offsets; buddy_ptr() turns an offset into an address in
 * this process's mapping of the heap's data (absent with BUDDY_F_NODATA).
 *
 * Data memory is reserved as address space and committed lazily in chunks of
 * 2^chunk_order bytes; a chunk none of whose bytes are allocated goes back to
 * the OS and its generation number increases (see chunk.h: each CPU keeps its two
 * most recently emptied chunks until it empties others or buddy_drain() runs).
 *
 * Every function returns 0 / a non-negative value, or -errno.  No FUSE here.
 */
#ifndef HEAPFS_BUDDY_H
#define HEAPFS_BUDDY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BUDDY_MIN_MIN_ORDER  6   /* 64 B: a cache line */
#define BUDDY_MAX_MIN_ORDER  20  /* 1 MiB: a stripe */
#define BUDDY_MAX_ORDER      40  /* 1 TiB heap */
#define BUDDY_MAX_SLOTS      256 /* per-CPU slots of one heap */

/* buddy_params.flags */
#define BUDDY_F_PIN     (1u << 0) /* mlock() committed chunks */
#define BUDDY_F_MEMFD   (1u << 1) /* data in a memfd (shareable, punch-hole release); default anonymous */
#define BUDDY_F_FD      (1u << 2) /* data in the caller's fd at fd_offset (donor memory, images) */
#define BUDDY_F_TRACK   (1u << 3) /* allocated-block bitmap: bad and double frees return -EINVAL,
                                     buddy_walk() reports used blocks with their order */
#define BUDDY_F_NOCACHE (1u << 4) /* no per-CPU caches in front of the shared free structures */
#define BUDDY_F_NODATA  (1u << 5) /* offsets only, no data memory (chunks still counted) */
#define BUDDY_F_SOURCE  (1u << 6) /* data in the caller's memory source (source.h), which
				     outlives the heap; no buddy_attach */

struct msrc;

struct buddy; /* process-local handle */

struct buddy_params {
	unsigned heap_order;  /* heap is 2^heap_order bytes */
	unsigned min_order;   /* smallest block, BUDDY_MIN_MIN_ORDER..BUDDY_MAX_MIN_ORDER */
	unsigned chunk_order; /* commit/release granularity; 0 means 21 (2 MiB), capped at heap_order */
	unsigned flags;       /* BUDDY_F_* */
	int fd;               /* with BUDDY_F_FD */
	uint64_t fd_offset;   /* with BUDDY_F_FD */
	const char *name;     /* memfd name (shows in /proc/PID/maps); may be NULL */
	struct msrc *src;     /* with BUDDY_F_SOURCE */
	unsigned nslots;      /* per-CPU slots, 1..BUDDY_MAX_SLOTS; 0: one per configured CPU
				 (capped); CPU c uses slot c % nslots */
};

/* Smallest order k >= min such that 2^k >= n (n = 0 -> -EINVAL, too big -> -E2BIG). */
int buddy_order_of(uint64_t n, unsigned min_order);

/* A heap with its own (private) metadata. */
int buddy_create(const struct buddy_params *p, struct buddy **out);

/* Multi-process use: metadata in caller-provided memory (e.g. a MAP_SHARED memfd). */
int64_t buddy_meta_size(const struct buddy_params *p);
int buddy_create_at(const struct buddy_params *p, void *meta, size_t meta_size, struct buddy **out);
/* Attach to metadata made by buddy_create_at in another process; data_fd is the heap's
 * data fd for BUDDY_F_MEMFD/BUDDY_F_FD heaps (mapped again here), ignored otherwise. */
int buddy_attach(void *meta, size_t meta_size, int data_fd, struct buddy **out);
void buddy_destroy(struct buddy *b);

/* Allocate one block of 2^order bytes: its offset, or -ENOMEM (heap unchanged), -EINVAL.
 * It splits a block only when no smaller free block fits (as a sequential buddy), and
 * -ENOMEM comes only after every CPU's cache was taken back (see buddy.c). */
int64_t buddy_alloc(struct buddy *b, unsigned order);
/* Claim the block (off, order) if it is free (splitting the free block that holds it):
 * restore of saved heaps, mirrors that must allocate where the owner did. -EBUSY if taken. */
int buddy_alloc_at(struct buddy *b, uint64_t off, unsigned order);
/* Free a block: 0, or -EINVAL for a misaligned/out-of-range block, and (BUDDY_F_TRACK)
 * for a block that is not allocated at that order (never allocated, or freed twice). */
int buddy_free(struct buddy *b, uint64_t off, unsigned order);
/* The allocated block (off, order) becomes two allocated blocks of order - 1, its halves,
 * each to be freed on its own (a file punching a hole frees the half it no longer needs,
 * with no copy).  0, or -EINVAL for a block of min_order or a bad block, and
 * (BUDDY_F_TRACK) for a block that is not allocated at that order. */
int buddy_split(struct buddy *b, uint64_t off, unsigned order);

void *buddy_ptr(const struct buddy *b, uint64_t off);
int buddy_data_fd(const struct buddy *b); /* memfd/fd of the data, or -1 for anonymous */
/* The heap's memory source: every read, write and zeroing of heap bytes goes through it
 * (NULL with BUDDY_F_NODATA). */
struct msrc *buddy_source(const struct buddy *b);
unsigned buddy_heap_order(const struct buddy *b);
unsigned buddy_min_order(const struct buddy *b);

/* Tests and benchmarks: the calling thread acts as if it ran on CPU `slot` (slot % nslots
 * in every heap), so a small machine can show what a many-core host does; -1: follow the
 * CPU again. */
void buddy_set_slot(int slot);

/* Give blocks parked in per-CPU caches back to the shared structures (they coalesce), and
 * every empty chunk back to the OS.  Safe at any time; after it, with no concurrent users,
 * the heap is fully coalesced and only chunks holding allocated blocks are committed. */
void buddy_drain(struct buddy *b);

struct buddy_stats {
	uint64_t size;         /* 2^heap_order */
	uint64_t min_block;    /* 2^min_order */
	uint64_t used;         /* bytes in allocated blocks */
	uint64_t free;         /* size - used (includes cached) */
	uint64_t cached;       /* free bytes parked in per-CPU caches */
	uint64_t largest_free; /* largest block obtainable now without draining */
	uint64_t free_blocks[BUDDY_MAX_ORDER + 1]; /* free blocks per order (shared structures) */
	uint64_t nonempty_orders; /* bit k set: order k has a free block (the seed's bitmap) */
	uint64_t chunk_size;
	uint64_t chunks_total;
	uint64_t chunks_committed; /* chunks holding allocated bytes now */
	uint64_t chunks_released;  /* chunks given back to the OS so far */
	uint64_t metadata_bytes;   /* bytes of allocator metadata (bitmaps, chunk table, caches) */
	uint64_t allocs, frees, alloc_failures;
	uint64_t chunks_idle;      /* empty chunks still committed (each CPU keeps its last
				      two emptied; buddy_drain() gives them back) */
	uint64_t pin_failures;     /* BUDDY_F_PIN: mlock() refusals in this process */
};
void buddy_stats(struct buddy *b, struct buddy_stats *st);

/* Verify every invariant (no overlap, no mergeable free buddies, counts add up, chunk
 * counts match, per-CPU caches and parked chunks within their bounds: shared metadata
 * another process wrote out of range is reported, not followed).  Call with no concurrent
 * users.  0, or -EUCLEAN with a message on stderr. */
int buddy_check(struct buddy *b);

/* Visit every block in offset order: free blocks with their order; allocated blocks with
 * their order under BUDDY_F_TRACK, else each maximal used run as one or more aligned
 * pieces reported with free == false.  Stops early and returns fn's value if non-zero. */
typedef int (*buddy_walk_fn)(void *arg, uint64_t off, unsigned order, bool free);
int buddy_walk(struct buddy *b, buddy_walk_fn fn, void *arg);

#endif
