/*
 * pool.h — pooled donor memory (pool.c): the heap behind pool/ and its donors.
 * Start: after the objects, before the mount (sets up the heap, binds the socket: 0, or
 * -errno after printing why: exit 2).  Run: after daemonizing (the socket thread).
 * Stop: after the session loop (releases every donor, removes the socket).
 */
#ifndef HEAPFS_POOL_H
#define HEAPFS_POOL_H

#include "core.h"

/* Before the mount tree is made: pool/'s namespace and .heapfs/donors. */
void hfs_pool_register(void);
int hfs_pool_start(void);
int hfs_pool_run(void);
void hfs_pool_stop(void);

#endif
