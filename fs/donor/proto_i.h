/*
 * proto_i.h — the pool socket protocol between heapfs (fs/pool/pool.c) and heapfs-donor.
 *
 * A SOCK_SEQPACKET Unix socket (message boundaries kept, EOF when either side dies).
 * Donor -> daemon, once: struct donor_hdr with the memfd attached (SCM_RIGHTS, one fd).
 * Daemon -> donor: DONOR_ACCEPT (one byte), or DONOR_REFUSE followed by a reason in text
 * (then the daemon closes); later DONOR_RELEASE when the donor's memory is free again.
 * The donor then exits; it also exits when the socket closes (the daemon died).
 */
#ifndef HEAPFS_DONOR_PROTO_I_H
#define HEAPFS_DONOR_PROTO_I_H

#include <stddef.h>
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

/* The daemon's checks of an offer (proto.c, no other dependency: tests/fuzz/fuzz-donor.c
 * calls them as fs/pool/pool.c does).  Each returns 0, or -EINVAL with the reason in why
 * (wl bytes).  The message: n bytes of buf, the recvmsg flags, nfds descriptors attached
 * (hfs_msg_fds, or -EBADMSG); the header into *hdr. */
int donor_offer_parse(const void *buf, size_t n, int msg_flags, int nfds, struct donor_hdr *hdr,
		      char *why, size_t wl);
/* The announced size: a multiple of chunk, at least one, at most max bytes. */
int donor_size_check(const struct donor_hdr *hdr, uint64_t chunk, uint64_t max);
/* The descriptor: a memfd open for writing, sealed by us against shrinking and further
 * seals before its size is looked at (so the donor cannot shrink it after the check), of at
 * least size bytes, not sealed against our writes. */
int donor_memfd_check(int fd, uint64_t size, char *why, size_t wl);

#endif
