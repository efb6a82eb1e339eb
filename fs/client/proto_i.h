/*
 * proto_i.h — the libheapfs client protocol: what the daemon (fs/direct/direct.c) and libheapfs
 * (fs/client/heapfs.c) say over the client socket.  Private to the two.
 *
 * Transport: a SOCK_SEQPACKET Unix socket (one message per request and per reply, so a
 * short, long or garbled message is recognisable as a whole).  The daemon learns the
 * client's pid and uid from SO_PEERCRED.  Requests:
 *   MAP    SCM_RIGHTS: one open heapfs file descriptor (the proof of access); off, len,
 *          flags HFS_CL_WRITE (map for writing: the descriptor must be open for writing)
 *          and HFS_CL_RESEND (send the heap's descriptors even if this connection got
 *          them already).  Reply: err 0, a lease (index and tag) on the range, the heap's
 *          key and geometry, the extents covering [off, off + len) and SCM_RIGHTS: the
 *          first time for this heap on this connection (or with RESEND) [data memfd,
 *          metadata memfd] (fdmask HFS_CL_FD_HEAP), the first time on this connection
 *          [lease table memfd] (HFS_CL_FD_LEASES), in that order.
 *   UNMAP  id = lease index, tag: drop an idle lease.  Reply: err (EBUSY: still mapped).
 *   WRITTEN id = lease index, tag: the client wrote the leased range (a write for mtime,
 *          the page cache, replication).  Reply: err.
 *
 * Leases.  The lease table is HFS_CL_MAX_LEASES 64-bit words shared by the daemon and one
 * client: (tag << 32) | count, count = mappings the client has open on the lease.  The
 * daemon makes a lease with count 1; the client adds 1 per map of the same range (CAS,
 * with the tag it was given: a reused index has a new tag) and subtracts 1 per release,
 * with no message.  A lease pins the range's blocks.  The daemon revokes an idle lease
 * (count 0) when a truncate or a move needs the blocks, or the file was unlinked:
 * CAS (tag << 32) -> (tag << 32) | HFS_CL_REVOKED; the client then asks again.
 *   SEGMENT SCM_RIGHTS: a descriptor of the directory MOUNT/objects (the proof).  Reply: the
 *          object segment's registration (geometry, seq_off, both memfds); find() then
 *          reads the segment's name map in place, under the sequence counter at seq_off
 *          in the metadata memfd (odd while the daemon changes the map).
 *   SAVE   SCM_RIGHTS: [a descriptor of MOUNT/.heapfs/images/HEAP (O_PATH is enough: it
 *          names the heap; the asker's uid must be one that may open that 0400 file),
 *          the output (open for writing)].  The daemon writes the heap's image (a frozen
 *          snapshot, as that file streams) straight into the output and replies once it
 *          is complete: err, and size = the bytes written.  (heapfsctl save)
 * Every reply starts with struct hfs_cl_rep; err is 0 or -errno.
 * The checks of a request are functions (proto.c) the daemon and the fuzzer share.
 * Locking: none (plain data).
 */
#ifndef HEAPFS_CLIENT_PROTO_I_H
#define HEAPFS_CLIENT_PROTO_I_H

#include <stddef.h>
#include <stdint.h>

#define HFS_CL_MAGIC   0x6c63666870616568ull /* "heapfhcl" */
#define HFS_CL_VERSION 1u
#define HFS_CL_MAX_EXT 512 /* extents in one reply (adjacent blocks merged first) */

enum { HFS_CL_MAP = 1, HFS_CL_UNMAP = 2, HFS_CL_SEGMENT = 3, HFS_CL_WRITTEN_OP = 4,
       HFS_CL_SAVE = 5 };
enum { HFS_CL_FD_HEAP = 1u << 0, HFS_CL_FD_LEASES = 1u << 1 };

#define HFS_CL_MAX_LEASES 4096
#define HFS_CL_REVOKED    (1ull << 63)
#define HFS_CL_COUNT      0xffffffffull
#define HFS_CL_TAG(w)     ((uint32_t)(((w) >> 32) & 0x7fffffffu))
enum { HFS_CL_WRITE = 1u << 0, HFS_CL_RESEND = 1u << 1 };

struct hfs_cl_req {
	uint64_t magic;
	uint32_t version;
	uint32_t op;
	uint32_t flags;
	uint32_t tag;      /* UNMAP, WRITTEN: the lease's tag */
	uint64_t off, len; /* MAP */
	uint64_t id;       /* UNMAP, WRITTEN: the lease's index */
};

struct hfs_cl_ext {
	uint64_t hoff, foff, len;
};

struct hfs_cl_rep {
	uint64_t magic;
	int32_t err;
	uint32_t nfds;        /* descriptors attached (fdmask says which) */
	uint64_t id;          /* MAP: the lease's index */
	uint64_t heap_key;    /* identifies the heap for this daemon's life */
	uint64_t heap_size;   /* bytes of the data memfd mapping */
	uint64_t meta_size;   /* bytes of the metadata memfd (map read-only) */
	uint64_t gen_off;     /* byte offset of chunk 0's generation (a uint64_t) in it */
	uint64_t gen_stride;  /* bytes between the generations of chunks i and i + 1 */
	uint64_t nchunks;
	uint32_t chunk_order;
	uint32_t next;        /* extents that follow */
	uint64_t size;        /* the file's size now */
	uint64_t seq_off;     /* byte offset of the map's sequence counter in the metadata */
	uint32_t tag;         /* MAP: the lease's tag */
	uint32_t fdmask;      /* HFS_CL_FD_* */
	struct hfs_cl_ext ext[];
};

/* The daemon's checks of a request (proto.c, no other dependency: tests/fuzz/fuzz-client.c
 * calls them as the daemon does).  A request message: n bytes of buf, the recvmsg flags,
 * nfds descriptors attached (hfs_msg_fds, or -EBADMSG); 0 with the request in *q, or
 * -EBADMSG. */
int hfs_cl_req_parse(const void *buf, size_t n, int msg_flags, int nfds, struct hfs_cl_req *q);

/* A MAP request's range against a file of size bytes: -EINVAL (empty, or past 2^64),
 * -ENXIO (past size), or 0 (off + len <= size).  size UINT64_MAX checks the range alone. */
int hfs_cl_range_check(const struct hfs_cl_req *q, uint64_t size);

#endif
