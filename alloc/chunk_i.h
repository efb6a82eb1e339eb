/*
 * chunk_i.h — chunk table internals shared by buddy.c and chunk.c.
 *
 * struct chunk_table lives in the heap's (possibly shared) metadata area; struct chunk_map
 * is this process's view: the data mapping and how to give memory back.
 *
 * Per chunk one atomic state word: the bytes held in the chunk (bits 0..60), CHUNK_IDLE
 * and CHUNK_RELEASING.  The free that takes the count to 0 either
 *   - parks the chunk (state CHUNK_IDLE, memory kept) in a per-CPU "park" word, which
 *     retires the chunk parked there before: so each CPU keeps at most its most recently
 *     emptied chunks committed, and a chunk emptied and refilled at once costs no
 *     syscall and no page faults; or
 *   - releases it (no park given, e.g. buddy_drain): CHUNK_RELEASING, memory back to the
 *     OS, generation + 1, state 0.
 * Retiring a parked chunk is the same release, done only if the chunk is still exactly
 * CHUNK_IDLE (the CAS fails if an allocation took it back meanwhile).  An allocation that
 * meets CHUNK_RELEASING waits for that one release (a syscall) before it counts itself
 * in: its block must not be wiped by a release that started before it.
 */
#ifndef HEAPFS_CHUNK_I_H
#define HEAPFS_CHUNK_I_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHUNK_RELEASING (1ull << 62)
#define CHUNK_IDLE      (1ull << 61)
#define CHUNK_HELD_MASK (CHUNK_IDLE - 1)
#define CHUNK_PARK      2 /* park words per CPU: chunk i parks in word i % CHUNK_PARK */

struct chunk_slot {
	_Atomic uint64_t state;
	_Atomic uint64_t gen;
};

struct chunk_table {
	uint64_t nchunks;
	uint32_t chunk_order;
	uint32_t pad;
	_Alignas(64) _Atomic uint64_t released; /* releases so far */
	_Alignas(64) struct chunk_slot slot[];
};

struct chunk_map {
	struct chunk_table *t;
	/* geometry, from the validated metadata: never read back from the (shared) table */
	unsigned chunk_order;
	uint64_t nchunks;
	char *base;         /* data mapping, NULL with BUDDY_F_NODATA or an unmapped source */
	uint64_t size;      /* heap bytes */
	int fd;             /* memfd / caller's fd, -1 for anonymous */
	uint64_t fd_offset;
	unsigned flags;     /* BUDDY_F_* */
	struct msrc *src;   /* where the bytes live (source.h), NULL with BUDDY_F_NODATA */
	bool own_src;       /* opened here: closed by chunk_map_close */
};

size_t chunk_table_size(uint64_t nchunks);
void chunk_table_init(struct chunk_table *t, unsigned chunk_order, uint64_t nchunks);

/* Open the data's source: create (memfd made here when BUDDY_F_MEMFD and fd < 0), attach
 * (fd given), or the caller's src (BUDDY_F_SOURCE). */
struct msrc;
int chunk_map_open(struct chunk_map *cm, struct chunk_table *t, unsigned heap_order,
		   unsigned chunk_order, uint64_t nchunks, unsigned flags, int fd,
		   uint64_t fd_offset, const char *name, struct msrc *src);
void chunk_map_close(struct chunk_map *cm);

/* Count len bytes at off (one block) as held / no longer held by their chunks.  park: the
 * CPU's CHUNK_PARK park words for a chunk that becomes empty (chunk index + 1, 0 = none),
 * or NULL to release such a chunk at once. */
void chunk_hold(struct chunk_map *cm, uint64_t off, uint64_t len);
void chunk_unhold(struct chunk_map *cm, uint64_t off, uint64_t len, _Atomic uint64_t *park);
/* Release the chunks parked in park[0 .. CHUNK_PARK - 1] that are still idle. */
void chunk_unpark(struct chunk_map *cm, _Atomic uint64_t *park);

#endif
