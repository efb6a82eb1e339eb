/*
 * direct.h — libheapfs's daemon side (fs/direct/): the client socket and its leases (the
 * direct_map memory of a heap is the core's: fs/core/dm.c).  No FUSE type; the page-cache
 * invalidation a written range needs goes through the core (hfs_kcache_range).
 * Locking: see fs/direct/direct.c.
 */
#ifndef HEAPFS_DIRECT_H
#define HEAPFS_DIRECT_H

#include "core.h"

/* Before the mount tree and the heaps are made: what direct_map heaps do for the client
 * socket (their heap ops: a range a client maps is busy), and the "clients" part of
 * .heapfs/stats. */
void hfs_client_register(void);
/* The client socket: start after the mount exists (after daemonizing); stop after the
 * unmount (the server thread may be waiting on the mount), before the session and the
 * heaps go.  Start: 0 or -errno (said on stderr). */
int hfs_client_start(void);
void hfs_client_stop(void);
/* A client released range [off, off + len) of i after writing it through its mapping:
 * the one place such a write is accounted — mtime/ctime as for write(), the object's map
 * slot, the kernel's cached pages of the range invalidated, and the change (HFS_CH_RANGE)
 * handed to the heap's observers (replication: DATA records of the range's bytes; done,
 * the caller's, says what to wait for in sync mode). */
void hfs_client_range_written(struct hfs_inode *i, uint64_t off, uint64_t len,
			      struct hfs_completion *done);

#endif
