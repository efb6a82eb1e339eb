/*
 * objects.h — the object segment behind objects/ (objects.c).
 * Register: before the mount tree is made (objects/'s namespace, .heapfs/segment and the
 * "objects" part of .heapfs/stats).  Start: after the heaps, before the mount (format, or
 * load objects.image); 0, or -errno after printing why (exit 2).  Stop: after the session
 * loop (save objects.image); 0 or -errno after printing why.
 */
#ifndef HEAPFS_OBJECTS_H
#define HEAPFS_OBJECTS_H

#include "core.h"

void hfs_objects_register(void);
int hfs_objects_start(void);
int hfs_objects_stop(void);
/* The segment's heap (NULL before start): libheapfs maps it (fs/direct). */
struct hfs_heap *hfs_objects_heap(void);

#endif
