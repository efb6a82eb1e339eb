/*
 * proto_i.h — the pool socket protocol between heapfs (fs/pool.c) and heapfs-donor.
 *
 * A SOCK_SEQPACKET Unix socket (message boundaries kept, EOF when either side dies).
 * Donor -> daemon, once: struct donor_hdr with the memfd attached (SCM_RIGHTS, one fd).
 * Daemon -> donor: DONOR_ACCEPT (one byte), or DONOR_REFUSE followed by a reason in text
 * (then the daemon closes); later DONOR_RELEASE when the donor's memory is free again.
 * The donor then exits; it also exits when the socket closes (the daemon died).
 */
#ifndef HEAPFS_DONOR_PROTO_I_H
#define HEAPFS_DONOR_PROTO_I_H

#include <stdint.h>

#define DONOR_MAGIC   "HFSDONR1"
#define DONOR_VERSION 1u
#define DONOR_ACCEPT  'A'
#define DONOR_REFUSE  'E'
#define DONOR_RELEASE 'R'
#define DONOR_MSG_MAX 256

struct donor_hdr {
	char magic[8];
	uint32_t version;
	uint32_t flags; /* 0 */
	uint64_t size;  /* bytes of the memfd the daemon may use, from offset 0 */
};

#endif
