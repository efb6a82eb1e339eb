/*
 * buddy_i.h — layout of a buddy heap's metadata and of the process-local handle.
 *
 * The metadata area is position independent (offsets only) so several processes can map
 * it at different addresses:
 *   struct buddy_meta   header: geometry, offsets of everything below, the hint words
 *   struct buddy_pcp[]  per-CPU slots: try-lock, cached free blocks per small order, counters,
 *                       parked empty chunks
 *   struct chunk_table  chunk state words and generations
 *   free bitmaps        per order k, levels 0..nlev-1: level 0 has one bit per block of
 *                       order k (set = that block is free as a whole); level l+1 has one
 *                       bit per word of level l (set = that word may be non-empty); the
 *                       top level is one word whose "parent" is bit k of meta->nonempty
 *   track bitmaps       (BUDDY_F_TRACK) per order k one bit per block: allocated at order k
 */
#ifndef HEAPFS_BUDDY_I_H
#define HEAPFS_BUDDY_I_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buddy.h"
#include "chunk_i.h"

#define BUDDY_MAGIC   0x3162736670616568ull /* "heapfsb1" */
#define BUDDY_VERSION 1u
#define BUDDY_LV_MAX  7        /* 64^7 > 2^34 blocks */
#define PCP_ORDERS    12       /* cached orders: at most min_order .. min_order + 11 */
#define PCP_DEPTH     64       /* at most this many blocks per cached order and CPU */
#define PCP_BUDGET    6        /* and all CPUs together at most heap_size >> 6 bytes per order */
#define PCP_MIN_DEPTH 8        /* ... except min_order, which gets at least 8 */
#define PCP_MIN_SPAN  8        /* caches only when the heap holds >= 2^8 min blocks */
#define PCP_MAX_SLOTS BUDDY_MAX_SLOTS
#define PCP_WAIT_NS   200000000ll /* how long to wait for a busy slot (buddy.c) */

struct buddy_order {
	uint64_t nblocks;                 /* 2^(heap_order - k) */
	uint32_t nlev;
	uint32_t pad;
	uint64_t lv_off[BUDDY_LV_MAX];    /* byte offset of level l in the metadata */
	uint64_t lv_words[BUDDY_LV_MAX];
	uint64_t track_off;               /* 0 without BUDDY_F_TRACK */
};

struct buddy_pcp {
	_Atomic uint32_t lock;
	/* Counters and stacks change only under lock (relaxed load + store), read by stats. */
	_Atomic uint32_t n[PCP_ORDERS];
	_Atomic uint64_t cached;  /* bytes */
	_Atomic uint64_t used;    /* bytes handed out minus bytes freed through this slot */
	_Atomic uint64_t allocs, frees, failures;
	_Atomic uint64_t park[CHUNK_PARK]; /* this CPU's recently emptied chunks (chunk_i.h) */
	uint64_t blk[PCP_ORDERS][PCP_DEPTH]; /* offsets */
} __attribute__((aligned(64)));

struct buddy_meta {
	uint64_t magic;
	uint32_t version;
	uint32_t flags;
	uint64_t meta_size;
	uint32_t heap_order, min_order, chunk_order, nslots;
	uint32_t pcp_orders, pad;
	uint32_t pcp_depth[PCP_ORDERS];   /* stack depth per cached order */
	uint64_t fd_offset;
	uint64_t pcp_off;
	uint64_t chunk_off;
	uint64_t nchunks;
	struct buddy_order ord[BUDDY_MAX_ORDER + 1];
	/* bit k: order k may have a free block (a hint kept by the protocol in buddy.c) */
	_Alignas(64) _Atomic uint64_t nonempty;
	/* counters of operations whose CPU slot was busy (rare) */
	_Alignas(64) _Atomic uint64_t used_spill;
	_Atomic uint64_t allocs_spill, frees_spill, failures_spill;
};

struct buddy {
	/* what every operation reads first, together */
	struct buddy_meta *meta;
	struct buddy_pcp *pcp;
	unsigned heap_order, min_order, flags, nslots, pcp_orders;
	uint32_t pcp_depth[PCP_ORDERS];
	/* the rest */
	size_t meta_size;
	bool own_meta;                     /* buddy_create: metadata mapped here */
	uint32_t nlev[BUDDY_MAX_ORDER + 1];
	_Atomic uint64_t *lv[BUDDY_MAX_ORDER + 1][BUDDY_LV_MAX];
	_Atomic uint64_t *track[BUDDY_MAX_ORDER + 1];
	struct chunk_map cm;
};

#endif
