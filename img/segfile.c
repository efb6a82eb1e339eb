/*
 * segfile.c — the object segment as an image file: saving the live segment (sealed, then
 * written whole through the atomic save) and loading one into the daemon's segment memory.
 *
 * How: the file is exactly the S bytes of the segment (docs/IMAGE.md, "The object
 * segment").  Loading checks the file's size against the configured size before reading
 * anything, reads it whole, checks it (img_seg_check, checksum included) and compares
 * min_order with the configuration; any failure zeroes the header again, so no caller can
 * go on with half a segment.
 *
 * Locking: none; the caller holds the segment still (no puts or deletes) meanwhile.
 */
#include <errno.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "img_i.h"

int img_seg_save(void *base, const char *path)
{
	return img_seg_save_h(base, base, path);
}

int img_seg_save_h(void *hdr, const void *base, const char *path)
{
	struct img_seg_info in;
	struct img_save s;
	struct iovec iov[2];
	int ret = img_save_open(path, &s);

	if (ret)
		return ret;
	img_seg_seal_h(hdr, base);
	img_seg_info_h(hdr, base, &in);
	iov[0] = (struct iovec){ hdr, IMG_SEG_HDR_SIZE };
	iov[1] = (struct iovec){ (char *)base + IMG_SEG_HDR_SIZE, in.size - IMG_SEG_HDR_SIZE };
	ret = img_writev_all(s.fd, iov, 2);
	if (ret) {
		img_save_abort(&s);
		return ret;
	}
	return img_save_commit(&s);
}

static int read_all(int fd, void *base, uint64_t size)
{
	for (uint64_t at = 0; at < size;) {
		ssize_t got = pread(fd, (char *)base + at, size - at, (off_t)at);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return -EBADMSG; /* shrank while read */
		at += (uint64_t)got;
	}
	return 0;
}

int img_seg_load(int fd, void *base, uint64_t size, unsigned min_order, char *why,
		 size_t whylen)
{
	struct img_seg_info in;
	struct stat st;
	int ret;

	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if ((uint64_t)st.st_size != size) {
		ret = img_refuse(why, whylen, "wrong size: the image is %llu bytes, the segment "
				 "is %llu", (unsigned long long)st.st_size,
				 (unsigned long long)size);
		goto out;
	}
	ret = read_all(fd, base, size);
	if (ret == -EBADMSG)
		ret = img_refuse(why, whylen, "truncated while read");
	if (!ret)
		ret = img_seg_check(base, size, 0, why, whylen);
	if (!ret) {
		img_seg_info(base, &in);
		if (in.min_order != min_order)
			ret = img_refuse(why, whylen, "min_block of the image is %llu, the "
					 "segment's is %llu", 1ull << in.min_order,
					 1ull << min_order);
	}
out:
	if (ret)
		memset(base, 0, sizeof(struct img_seg_hdr));
	return ret;
}
