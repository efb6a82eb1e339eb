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
/* A reply made outside libfuse (hfs_raw_dispatch) for a request read from fd: into the
 * ring entry this thread serves, else written to fd.  writev's result. */
ssize_t hfs_io_reply(int fd, struct iovec *iov, int count);
void hfs_inval_inode(hfs_ino_t ino, int64_t off, int64_t len);
/* This worker is about to wait in a handler (a status file renders, .heapfs/verify asks
 * the partner for seconds) or for a page lock a READ holds: it gives the watcher's token
 * up, as a bulk request does, so the other workers read the device meanwhile (io.c, 2).
 * Nothing to give with io_uring: a ring worker serves its CPU's requests one at a time. */
void hfs_io_will_wait(void);

/* Reads and writes at least this big are bulk: /dev/fuse workers hand them off (io.c),
 * ring workers serve bulk reads off the caller's CPU (uring.c). */
#define HFS_BULK_BYTES (64 * 1024)

/* uring.c — the FUSE-over-io_uring transport (default; -o io_uring=off). */
int hfs_uring_enable(void);
void hfs_uring_settle(void);
void hfs_uring_start(struct fuse_session *se, int fd, size_t payload);
bool hfs_uring_reply(const struct iovec *iov, int count, ssize_t *res);
bool hfs_uring_serving(void);
void hfs_uring_stop(void);

/* syslog.c — the syslog sink of the log: start (0 or -errno, said on stderr) makes every
 * message at or below max a datagram to /dev/log (also to stderr until detached). */
int hfs_syslog_start(const char *mountpoint, int max);
void hfs_syslog_detached(void);
uint64_t hfs_syslog_dropped(void); /* messages no log daemon took */
void hfs_syslog_stop(void);

/* ops.c */
extern const struct fuse_lowlevel_ops hfs_ops;
/* Answer the request buf (n bytes, read from fd) if libfuse cannot (FUSE_TMPFILE,
 * FUSE_STATX: raw.c): true when it was one of those (answered, or refused as malformed). */
bool hfs_raw_dispatch(int fd, const void *buf, size_t n);

#endif
