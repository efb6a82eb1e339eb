/*
 * fuzz-donor.c — what the daemon does with a donor's offer on the pool socket
 * (fs/pool/pool.c join): the header (fs/donor/proto.c donor_offer_parse), the size it
 * announces against the pool's chunk and donor_size (donor_size_check), and the memfd
 * that came with it (donor_memfd_check) — a real memfd made as the input says: sealable
 * or not, its size, seals already on it, open read-only or not.
 * Input: byte 0 the recvmsg flags (bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC), byte 1 the
 * descriptors attached (0..4, 5: -EBADMSG), byte 2 the chunk's order (mod 40), bytes 3..10
 * donor_size, byte 11 the memfd (bit 0 sealable, bit 1 read-only, bits 2..6 seals on it:
 * SEAL, SHRINK, GROW, WRITE, FUTURE_WRITE), bytes 12..13 its size in 4 KiB pages, then the
 * message.
 * No locking: single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../fs/donor/proto_i.h"

static const int seal_bit[] = { F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE,
				F_SEAL_FUTURE_WRITE };

/* A memfd as the input byte says; -1 if the system will not make it. */
static int make_memfd(uint8_t how, uint64_t bytes)
{
	int fd = memfd_create("fuzz-donor", MFD_CLOEXEC | (how & 1 ? MFD_ALLOW_SEALING : 0));
	int seals = 0, ro;
	char path[64];

	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)bytes) < 0) {
		close(fd);
		return -1;
	}
	for (unsigned k = 0; k < sizeof(seal_bit) / sizeof(seal_bit[0]); k++)
		if (how & (4u << k))
			seals |= seal_bit[k];
	if (seals)
		fcntl(fd, F_ADD_SEALS, seals); /* refused without MFD_ALLOW_SEALING: as it comes */
	if (!(how & 2))
		return fd;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	close(fd);
	return ro;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct donor_hdr hdr;
	uint64_t chunk, max, bytes;
	int flags, nfds, fd, seals;
	struct stat st;
	char why[200];

	if (size < 14)
		return 0;
	flags = (data[0] & 1 ? MSG_TRUNC : 0) | (data[0] & 2 ? MSG_CTRUNC : 0);
	nfds = data[1] % 6 == 5 ? -EBADMSG : data[1] % 6;
	chunk = 1ull << (data[2] % 40);
	memcpy(&max, data + 3, sizeof(max));
	bytes = ((uint64_t)data[12] | (uint64_t)data[13] << 8) * 4096;
	if (donor_offer_parse(data + 14, size - 14, flags, nfds, &hdr, why, sizeof(why))) {
		if (!memchr(why, 0, sizeof(why)) || !why[0])
			abort(); /* a refusal says why */
		return 0;
	}
	if (size - 14 != sizeof(hdr) || flags || nfds != 1 || memcmp(hdr.magic, DONOR_MAGIC, 8) ||
	    hdr.version != DONOR_VERSION)
		abort();
	if (donor_size_check(&hdr, chunk, max))
		return 0;
	if (!hdr.size || hdr.size % chunk || hdr.size > max)
		abort();
	fd = make_memfd(data[11], bytes);
	if (fd < 0)
		return 0;
	if (!donor_memfd_check(fd, hdr.size, why, sizeof(why))) {
		/* kept: as large as announced, nobody can shrink it or stop our writes */
		seals = fcntl(fd, F_GET_SEALS);
		if (fstat(fd, &st) || (uint64_t)st.st_size < hdr.size || seals < 0 ||
		    (seals & (F_SEAL_SHRINK | F_SEAL_SEAL)) != (F_SEAL_SHRINK | F_SEAL_SEAL) ||
		    (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) ||
		    (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR)
			abort();
		if (st.st_size && ftruncate(fd, 0) == 0)
			abort();
	}
	close(fd);
	return 0;
}
