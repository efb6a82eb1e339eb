/*
 * uring_i.h — the FUSE-over-io_uring part of the kernel's FUSE protocol (7.42, Linux 6.14+),
 * which the system's <linux/fuse.h> (7.38) lacks.  Written from the kernel's uapi facts;
 * names carry an hfs_ prefix so a newer system header cannot clash with them.
 *
 * A server registers ring entries with IORING_OP_URING_CMD on the /dev/fuse fd (SQE128:
 * the command below sits in the SQE's cmd area).  REGISTER gives an entry's two buffers
 * (sqe->addr: struct iovec[2] = {header, payload}, sqe->len = 2); the entry's CQE
 * completes when the kernel has put a request in it.  COMMIT_AND_FETCH hands the reply
 * back (commit_id = the request's unique) and re-arms the entry in one step.
 */
#ifndef HFS_URING_I_H
#define HFS_URING_I_H

#include <stdint.h>

#define HFS_FUSE_OVER_IO_URING2 (1u << 9) /* in flags2 (FUSE_OVER_IO_URING, bit 41) */

#define HFS_FUSE_URING_IN_OUT_HEADER_SZ 128
#define HFS_FUSE_URING_OP_IN_OUT_SZ 128

/* Per request facts, in the header buffer after the two headers. */
struct hfs_fuse_uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id; /* request -> server: the id to commit with */
	uint32_t payload_sz; /* bytes in the payload buffer (both directions) */
	uint32_t padding;
	uint64_t reserved;
};

/* The header buffer of a ring entry.  Request: fuse_in_header in in_out, the op's first
 * argument (fuse_write_in, ...) in op_in, every further argument in the payload buffer.
 * Reply: fuse_out_header in in_out, all reply arguments in the payload buffer. */
struct hfs_fuse_uring_req_header {
	char in_out[HFS_FUSE_URING_IN_OUT_HEADER_SZ];
	char op_in[HFS_FUSE_URING_OP_IN_OUT_SZ];
	struct hfs_fuse_uring_ent_in_out ring_ent_in_out;
};

enum hfs_fuse_uring_cmd {
	HFS_FUSE_IO_URING_CMD_INVALID = 0,
	HFS_FUSE_IO_URING_CMD_REGISTER = 1, /* register an entry's buffers, wait for a request */
	HFS_FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2, /* reply, then wait for the next */
};

/* In the SQE's cmd area (the second 64 bytes of an SQE128). */
struct hfs_fuse_uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid; /* the queue = the CPU whose requests it serves */
	uint8_t padding[6];
};

#endif
