/*
 * proto.c — the daemon's checks of a donor's offer (proto_i.h): the header, the size it
 * announces and the memfd that came with it, in a file that links alone, so tests/fuzz/
 * fuzz-donor.c drives exactly what fs/pool/pool.c runs.  The memfd is sealed before it is
 * measured: a donor that shrinks it after sending loses the race either way (refused, or
 * its ftruncate fails), never leaving the daemon a mapping past the end (SIGBUS).
 * Locking: none.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "proto_i.h"

int donor_offer_parse(const void *buf, size_t n, int msg_flags, int nfds, struct donor_hdr *hdr,
		      char *why, size_t wl)
{
	if (n == 0) {
		snprintf(why, wl, "closed before sending its header");
		return -EINVAL;
	}
	if (n != sizeof(*hdr) || (msg_flags & MSG_TRUNC)) {
		snprintf(why, wl, "not a heapfs-donor header (%zu bytes)", n);
		return -EINVAL;
	}
	memmove(hdr, buf, sizeof(*hdr)); /* buf may be hdr itself */
	if (memcmp(hdr->magic, DONOR_MAGIC, 8) || hdr->version != DONOR_VERSION) {
		snprintf(why, wl, "not a heapfs-donor header (%zu bytes)", n);
		return -EINVAL;
	}
	if (nfds != 1 || (msg_flags & MSG_CTRUNC)) {
		snprintf(why, wl, "expected one descriptor, got %d", nfds < 0 ? 0 : nfds);
		return -EINVAL;
	}
	return 0;
}

int donor_size_check(const struct donor_hdr *hdr, uint64_t chunk, uint64_t max)
{
	return !chunk || !hdr->size || hdr->size % chunk || hdr->size > max ? -EINVAL : 0;
}

int donor_memfd_check(int fd, uint64_t size, char *why, size_t wl)
{
	int fl = fcntl(fd, F_GETFL), seals = fcntl(fd, F_GET_SEALS);
	struct stat st;

	if (fl < 0 || seals < 0) {
		snprintf(why, wl, "the descriptor is not a memfd");
		return -EINVAL;
	}
	if ((fl & O_ACCMODE) != O_RDWR) {
		snprintf(why, wl, "the memfd is not open for reading and writing");
		return -EINVAL;
	}
	/* first the seals: nobody may shrink it under us, nor seal it against our writes
	 * later; only then its size and seals mean anything */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
		snprintf(why, wl, "cannot seal the memfd (create it with MFD_ALLOW_SEALING)");
		return -EINVAL;
	}
	seals = fcntl(fd, F_GET_SEALS);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || seals < 0) {
		snprintf(why, wl, "the descriptor is not a memfd");
		return -EINVAL;
	}
	if (st.st_size < 0 || (uint64_t)st.st_size < size) {
		snprintf(why, wl, "the memfd has %lld bytes, fewer than the %llu announced",
			 (long long)st.st_size, (unsigned long long)size);
		return -EINVAL;
	}
	if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) {
		snprintf(why, wl, "the memfd is sealed against writing");
		return -EINVAL;
	}
	return 0;
}
