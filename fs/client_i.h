/*
 * client_i.h — libheapfs's daemon side (fs/client.c): direct_map heaps and the client
 * socket.  Core code: no FUSE type; the page-cache invalidation a written range needs is
 * an edge call, reached through hfs_client_inval (set by main.c).
 * Locking: see fs/client.c.
 */
#ifndef HEAPFS_CLIENT_I_H
#define HEAPFS_CLIENT_I_H

#include <jansson.h>

#include "fs_i.h"

/* A direct_map heap: its buddy metadata in a memfd that clients map read-only (the chunk
 * generations), its data in a memfd (BUDDY_F_MEMFD).  heap.c calls these for
 * pol.direct_map; 0 or -errno. */
int hfs_dm_heap_create(struct hfs_heap *h, struct buddy_params *bp);
void hfs_dm_heap_destroy(struct hfs_heap *h);
/* Around every change of the object segment's name map (objects.c, under its map mutex):
 * the sequence counter clients read the map under (odd while it changes). */
void hfs_dm_seq_begin(struct hfs_heap *h);
void hfs_dm_seq_end(struct hfs_heap *h);

/* The client socket: start after the mount exists (after daemonizing); stop after the
 * unmount (the server thread may be waiting on the mount), before the session and the
 * heaps go.  Start: 0 or -errno (said on stderr). */
int hfs_client_start(void);
void hfs_client_stop(void);
/* Set by the edge: drop the kernel's cached pages of [off, off + len) of inode ino. */
extern void (*hfs_client_inval)(hfs_ino_t ino, int64_t off, int64_t len);

/* A client released range [off, off + len) of i after writing it through its mapping:
 * the one place such a write is accounted — mtime/ctime as for write(), the object's map
 * slot, the kernel's cached pages of the range invalidated.  Replication connects here
 * (the write-range change record: async queued, sync waited for). */
void hfs_client_range_written(struct hfs_inode *i, uint64_t off, uint64_t len);

/* Is a range of i mapped by a client now?  Leases of i that no client maps at the moment
 * are revoked on the way (their clients ask again at their next map).  file.c: a truncate
 * that shrinks, and moving a contiguous file's block, get EBUSY while it is.  i->lock
 * held for writing. */
bool hfs_client_busy(struct hfs_inode *i);

/* .heapfs/stats: "client_socket" and "clients" [{pid, heaps, maps, mapped_bytes}]. */
int hfs_client_status(json_t *stats);

#endif
