/*
 * proto_i.h — the libheapfs client protocol: what the daemon (fs/client.c) and libheapfs
 * (fs/client/heapfs.c) say over the client socket.  Private to the two.
 *
 * Transport: a SOCK_SEQPACKET Unix socket (one message per request and per reply, so a
 * short, long or garbled message is recognisable as a whole).  The daemon learns the
 * client's pid and uid from SO_PEERCRED.  Requests:
 *   MAP    SCM_RIGHTS: one open heapfs file descriptor (the proof of access); off, len,
 *          flags HFS_CL_WRITE (map for writing: the descriptor must be open for writing)
 *          and HFS_CL_RESEND (send the heap's descriptors even if this connection got
 *          them already).  Reply: err 0, the map id, the heap's key and geometry, the
 *          extents covering [off, off + len) and, the first time for this heap on this
 *          connection (or with RESEND), SCM_RIGHTS [data memfd, metadata memfd].
 *   UNMAP  id, flags HFS_CL_WRITTEN (the range was written: a write for mtime, the page
 *          cache, replication).  Reply: err.
 *   SEGMENT SCM_RIGHTS: a descriptor of the directory MOUNT/objects (the proof).  Reply: the
 *          object segment's registration (geometry, seq_off, both memfds); find() then
 *          reads the segment's name map in place, under the sequence counter at seq_off
 *          in the metadata memfd (odd while the daemon changes the map).
 * Every reply starts with struct hfs_cl_rep; err is 0 or -errno.
 * Locking: none (plain data).
 */
#ifndef HEAPFS_CLIENT_PROTO_I_H
#define HEAPFS_CLIENT_PROTO_I_H

#include <stdint.h>

#define HFS_CL_MAGIC   0x6c63666870616568ull /* "heapfhcl" */
#define HFS_CL_VERSION 1u
#define HFS_CL_MAX_EXT 512 /* extents in one reply (adjacent blocks merged first) */

enum { HFS_CL_MAP = 1, HFS_CL_UNMAP = 2, HFS_CL_SEGMENT = 3 };
enum { HFS_CL_WRITE = 1u << 0, HFS_CL_RESEND = 1u << 1, HFS_CL_WRITTEN = 1u << 2 };

struct hfs_cl_req {
	uint64_t magic;
	uint32_t version;
	uint32_t op;
	uint32_t flags;
	uint32_t pad;
	uint64_t off, len; /* MAP */
	uint64_t id;       /* UNMAP */
};

struct hfs_cl_ext {
	uint64_t hoff, foff, len;
};

struct hfs_cl_rep {
	uint64_t magic;
	int32_t err;
	uint32_t nfds;        /* descriptors attached: 0 or 2 (data, metadata) */
	uint64_t id;          /* MAP: the map's id, for UNMAP */
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
	struct hfs_cl_ext ext[];
};

#endif
