/*
 * heapfs.h — libheapfs: direct access to heapfs heap memory (pkg-config heapfs).
 *
 * A process that has a heapfs file open maps a range of it and gets a pointer into the
 * heap's memory: reads and writes are plain loads and stores, with no system call and no
 * FUSE round trip.  Only on heaps with `direct_map = true` (such a heap is one trust
 * domain: a client sees all of its memory).  The daemon checks the descriptor (same mount,
 * the inode, the access mode) and pins the range's blocks until the release.
 *
 *   struct heapfs *h;  struct heapfs_map *m;
 *   heapfs_connect_fd(fd, &h);                 // or heapfs_connect("/mnt", &h)
 *   heapfs_map(h, fd, 0, len, HEAPFS_WRITE, &m);
 *   memcpy(m->addr, "hello", 5);
 *   heapfs_sync(h, m);                         // optional: written so far, kept mapped
 *   heapfs_release(h, m, true);                // written: mtime, page cache, replication
 *   heapfs_disconnect(h);
 *
 * Every function returns 0 or -errno.  A connection may be used by several threads.
 */
#ifndef HEAPFS_H
#define HEAPFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct heapfs;

struct heapfs_map {
	void *addr;   /* the range's first byte: one contiguous virtual range of len bytes */
	size_t len;
};

#define HEAPFS_WRITE 1u /* map for writing (the descriptor must be open for writing) */

/* Connect to the daemon of mount point `mount` (its socket is named in .heapfs/stats). */
int heapfs_connect(const char *mount, struct heapfs **out);
/* Connect to the daemon of the heapfs mount that holds the open file fd. */
int heapfs_connect_fd(int fd, struct heapfs **out);
/* Close the connection: the daemon drops what it still holds for it. */
void heapfs_disconnect(struct heapfs *h);

/* Map bytes [off, off + len) of the open file fd (inside its size).  Errors: EPERM (the
 * heap has direct_map = false), EACCES (a write-only descriptor, or HEAPFS_WRITE on a read-only one),
 * EXDEV (not a file of this mount), EISDIR, ENXIO (past the end), ENODATA (the range holds a
 * hole of a sparse file: write or fallocate it first, then map), EINVAL. */
int heapfs_map(struct heapfs *h, int fd, uint64_t off, uint64_t len, unsigned flags,
	       struct heapfs_map **out);
/* Release a mapping; written: the range was written (counts as a write of it: mtime,
 * the page cache, and in a replicated heap the range's bytes go to the partner, as a
 * write() would; with replicate = sync the call returns once the partner has them).
 * Until then, bytes stored through the mapping are like unsynced data in an mmap. */
int heapfs_release(struct heapfs *h, struct heapfs_map *m, bool written);
/* The same for a mapping kept: the whole mapped range counts as written now (sent to the
 * partner, waited for in sync mode), and stays mapped.  EBADF: a read-only mapping. */
int heapfs_sync(struct heapfs *h, struct heapfs_map *m);

/* An image of a live heap (what heapfsctl save writes): image_fd is a descriptor of
 * MOUNT/.heapfs/images/HEAP (O_PATH is enough; the caller's uid must be one that may
 * read that file: its owner, or root), out_fd a file open for writing; the daemon's
 * snapshot writes the image straight into out_fd from where its offset is, and the call
 * returns when it is complete, with *bytes written.  The caller fsyncs and renames.
 * Errors: EACCES, EXDEV, EINVAL (not an image file), EBADF (out_fd not writable),
 * EOPNOTSUPP (a direct_map heap: no frozen snapshot of it), EIO (the snapshot failed). */
int heapfs_save(struct heapfs *h, int image_fd, int out_fd, uint64_t *bytes);

/* Named objects (MOUNT/objects/NAME, with objects { direct_map = true }).  find reads the
 * segment's name map in this process, with no round trip (the first call registers the
 * segment), retrying while the daemon changes the map; *ptr is the object's first byte,
 * *size its size.  The pointer is not pinned: it stays valid while the object exists and
 * its block does not move (an object keeps its offset while it fits its block); use
 * heapfs_map on an open object for a pinned range.  ENOENT: no such object; EPERM: the
 * segment has direct_map = false; EAGAIN: the map stayed in mid-change (daemon stopped).  find_or_construct creates MOUNT/objects/NAME of size
 * bytes (zeros) through the filesystem when it is missing, then finds it. */
int heapfs_find(struct heapfs *h, const char *name, void **ptr, size_t *size);
int heapfs_find_or_construct(struct heapfs *h, const char *name, size_t size, void **ptr,
			     size_t *out_size);

/* The process's registrations (one per heap it maps from). */
struct heapfs_stats {
	uint64_t registrations;  /* held now */
	uint64_t registered;     /* made so far */
	uint64_t dropped;        /* idle ones dropped to stay under the bound */
	uint64_t stale_chunks;   /* chunks found with a new generation, and renewed */
	uint64_t leases_made;    /* maps that asked the daemon */
	uint64_t lease_hits;     /* maps served from a lease this process kept (no message) */
};
void heapfs_stats(struct heapfs *h, struct heapfs_stats *st);

#ifdef __cplusplus
}
#endif

#endif
