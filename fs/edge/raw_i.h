/*
 * raw_i.h — requests heapfs answers before libfuse sees them: FUSE_TMPFILE and FUSE_STATX,
 * which libfuse 3.14 answers ENOSYS.  The parser (raw.c) is pure: it knows no libfuse and
 * no core, so tests/fuzz/fuzz-raw.c feeds it bytes.  The parts of protocol 7.39 that the
 * system's <linux/fuse.h> (7.38) lacks are here with an hfs_ prefix (from the kernel's
 * uapi), so a newer system header cannot clash with them.
 * Locking: none (the parser reads only its arguments).
 */
#ifndef HFS_RAW_I_H
#define HFS_RAW_I_H

#include <stddef.h>
#include <stdint.h>
#include <linux/fuse.h>

#define HFS_FUSE_TMPFILE 51
#define HFS_FUSE_STATX 52

struct hfs_fuse_sx_time {
	int64_t tv_sec;
	uint32_t tv_nsec;
	int32_t reserved;
};

struct hfs_fuse_statx {
	uint32_t mask;
	uint32_t blksize;
	uint64_t attributes;
	uint32_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint16_t mode;
	uint16_t spare0[1];
	uint64_t ino;
	uint64_t size;
	uint64_t blocks;
	uint64_t attributes_mask;
	struct hfs_fuse_sx_time atime, btime, ctime, mtime;
	uint32_t rdev_major, rdev_minor, dev_major, dev_minor;
	uint64_t spare2[14];
};

struct hfs_fuse_statx_in {
	uint32_t getattr_flags;
	uint32_t reserved;
	uint64_t fh;
	uint32_t sx_flags;
	uint32_t sx_mask;
};

struct hfs_fuse_statx_out {
	uint64_t attr_valid;
	uint32_t attr_valid_nsec;
	uint32_t flags;
	uint64_t spare[2];
	struct hfs_fuse_statx stat;
};

_Static_assert(sizeof(struct hfs_fuse_statx) == 256 && sizeof(struct hfs_fuse_statx_out) == 288 &&
	       sizeof(struct hfs_fuse_statx_in) == 24, "the kernel's layout");

/* One parsed request of ours. */
struct hfs_raw {
	uint32_t opcode;  /* HFS_FUSE_TMPFILE or HFS_FUSE_STATX */
	uint64_t unique;
	uint64_t nodeid;
	uint32_t uid, gid, pid;
	struct fuse_create_in create; /* TMPFILE */
	struct hfs_fuse_statx_in statx; /* STATX */
};

/* buf, n: one whole request as read from the device (or rebuilt from a ring entry).
 * 0: not ours (libfuse's); 1: ours, *out filled; -EINVAL: ours but malformed (the caller
 * replies EINVAL to out->unique when out->unique is nonzero). */
int hfs_raw_parse(const void *buf, size_t n, struct hfs_raw *out);

#endif
