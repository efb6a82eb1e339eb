/*
 * edge_i.h — the FUSE edge of the daemon: what ops.c, io.c, uring.c and main.c share.
 * The core (core.h and the files that include only it: inode, dir, file, heap, status,
 * xattr, image, objects) knows no FUSE type; this header is where libfuse comes in.
 * Locking: see each file.
 */
#ifndef HEAPFS_EDGE_I_H
#define HEAPFS_EDGE_I_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "core.h"
#include "repl.h"

_Static_assert(sizeof(fuse_ino_t) == sizeof(hfs_ino_t) && FUSE_ROOT_ID == HFS_ROOT_INO,
	       "the core's inode numbers are the kernel's");

/* io.c */
int hfs_io_setup(struct fuse_session *se);

/* uring.c — experimental FUSE-over-io_uring transport (-o io_uring). */
int hfs_uring_enable(void);
void hfs_uring_start(struct fuse_session *se, int fd, size_t payload);
bool hfs_uring_reply(const struct iovec *iov, int count, ssize_t *res);
void hfs_uring_stop(void);

/* ops.c */
extern const struct fuse_lowlevel_ops hfs_ops;

#endif
