/*
 * source.h — memory sources: where a buddy heap's bytes live, and every OS call on them
 * (public part of alloc/; prefix msrc_).
 *
 * A buddy heap hands out offsets; its source turns them into memory.  One small table of
 * operations per kind of memory (struct msrc_ops, in source.c), as mimalloc keeps every OS
 * call behind its "prim" layer:
 *   commit   the chunk [off, off+len) is about to hold blocks (mlock when pinned)
 *   release  the chunk holds nothing any more: give its pages back (or keep them)
 *   zero     make [off, off+len) read as zeros
 *   read     copy heap bytes out / write: copy bytes in
 *   map      a pointer to [off, off+len) in this process, or NULL when the source cannot
 *            map it now (then read/write are the way in); unmap: done with that pointer
 * Kinds:
 *   anonymous  private anonymous mapping of the whole heap (MADV_DONTNEED to release)
 *   memfd      MAP_SHARED mapping of a memfd or a caller's fd (FALLOC_FL_PUNCH_HOLE)
 *   donor      memory held as descriptors: a fixed layout of ranges (range 0 of first_len
 *              bytes, then ranges of slot_len bytes) each backed, when present, by a memfd
 *              registered at run time (msrc_donor_add); writes and zeroing are pwrite on
 *              the range's descriptor, reads map 32 MiB windows (at most map_budget bytes
 *              of them at a time, least recently used evicted, a window pinned from map to
 *              unmap) or fall back to pread, so the process never maps more than the budget.
 *
 * Locking: the ops are safe from any thread.  A donor range is added before any block in
 * it is handed out and removed only once none is (the caller's rule, see fs/pool/pool.c): the
 * descriptor is published with release/acquire atomics.  Functions return 0 / a count,
 * or -errno.
 */
#ifndef HEAPFS_SOURCE_H
#define HEAPFS_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct msrc;

/* Anonymous private memory of size bytes (huge-page aligned when chunk_order >= 21). */
int msrc_anon_open(uint64_t size, unsigned chunk_order, bool pin, struct msrc **out);
/* Shared memory of fd at fd_offset (grown to hold size bytes); own_fd: closed at the end.
 * fd < 0: a new memfd named name. */
int msrc_memfd_open(uint64_t size, int fd, uint64_t fd_offset, bool pin, const char *name,
		    struct msrc **out);
/* Donor memory: ranges [0, first_len), then nslots ranges of slot_len (the last ones cut
 * at size); no range has memory until msrc_donor_add. */
int msrc_donor_open(uint64_t size, uint64_t first_len, uint64_t slot_len, unsigned nslots,
		    uint64_t map_budget, struct msrc **out);
/* Range r (0 .. nslots) is backed by fd (at least len bytes, the range's length or less):
 * the source takes the descriptor.  punch: release gives pages back (the daemon's own
 * memory); else they stay with the range (a donor's pages are charged to the donor). */
int msrc_donor_add(struct msrc *s, unsigned r, int fd, uint64_t len, bool punch);
/* Forget range r: its descriptor is closed.  No block in it may be in use. */
void msrc_donor_remove(struct msrc *s, unsigned r);
/* Range r: its offset and length in the heap (-EINVAL past the last). */
int msrc_donor_range(const struct msrc *s, unsigned r, uint64_t *off, uint64_t *len);

void msrc_close(struct msrc *s);

const char *msrc_kind(const struct msrc *s);
int msrc_commit(struct msrc *s, uint64_t off, uint64_t len);
/* Make [off, off+len) memory now: -ENOSPC when the host (its memory cgroup) has none. */
int msrc_populate(struct msrc *s, uint64_t off, uint64_t len);
void msrc_release(struct msrc *s, uint64_t off, uint64_t len);
int msrc_zero(struct msrc *s, uint64_t off, uint64_t len);
int msrc_read(struct msrc *s, void *dst, uint64_t off, size_t len);
int msrc_write(struct msrc *s, const void *src, uint64_t off, size_t len);
void *msrc_map(struct msrc *s, uint64_t off, uint64_t len);
void msrc_unmap(struct msrc *s, uint64_t off, uint64_t len);
/* Must every successful msrc_map be followed by msrc_unmap (windows)?  Else unmap is a
 * no-op and callers of a hot path may skip it. */
bool msrc_map_pins(const struct msrc *s);
/* Copy len bytes from heap offset from to heap offset to (non-overlapping). */
int msrc_copy(struct msrc *s, uint64_t to, uint64_t from, uint64_t len);
/* The descriptor of a memfd source (-1 for the other kinds). */
int msrc_fd(const struct msrc *s);
/* mlock() refusals so far (pinned sources). */
uint64_t msrc_pin_failures(const struct msrc *s);

#endif
