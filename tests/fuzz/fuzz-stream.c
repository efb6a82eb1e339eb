/*
 * fuzz-stream.c — the heap image stream reader (img/read.c, with rec.c's record rules):
 * what a restore of `image =` and `heapfsctl image ls/cat` do with a heap image from
 * anywhere.  The input is the whole stream, in a memfd (as a file is read); every record
 * is read to the end, DATA bytes into a buffer (the large ones straight into it, the path
 * a restore takes) or skipped, alternately.  What the reader hands out must agree with
 * itself: strings NUL-terminated within their stated lengths, DATA within its limit,
 * sizes and DATA's end within the heap.
 * No locking: single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "img.h"

static unsigned char dst[IMG_DATA_MAX];

/* The strings of a record the reader accepted are what its fields say; sizes and DATA's
 * end lie within the largest file (hs bytes: the heap's for a contiguous layout). */
static void check_rec(const struct img_rec *rec, uint64_t hs)
{
	switch (rec->type) {
	case IMG_INODE:
		if (rec->u.inode.size > hs)
			abort();
		break;
	case IMG_TRUNCATE:
		if (rec->u.truncate.size > hs)
			abort();
		break;
	case IMG_PUNCH:
		if (!rec->u.punch.len || rec->u.punch.len > (uint64_t)INT64_MAX - rec->u.punch.off)
			abort();
		break;
	case IMG_LINK:
		if (strlen(rec->s1) != rec->u.link.name_len)
			abort();
		break;
	case IMG_XATTR:
		if (strlen(rec->s1) != rec->u.xattr.name_len || rec->s2[rec->u.xattr.value_len])
			abort();
		break;
	case IMG_RENAME:
		if (strlen(rec->s1) != rec->u.rename.old_len ||
		    strlen(rec->s2) != rec->u.rename.new_len)
			abort();
		break;
	case IMG_DATA:
		if (!rec->data_len || rec->data_len > IMG_DATA_MAX || rec->data_len > hs ||
		    rec->u.data.off > hs - rec->data_len)
			abort();
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1; /* one memfd, refilled for each input */
	struct img_rec rec;
	struct img_r *r;
	char why[256];
	unsigned n = 0;

	if (fd < 0)
		fd = memfd_create("fuzz-stream", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size ||
	    lseek(fd, 0, SEEK_SET))
		return 0;
	if (!img_r_open(fd, 0, &r, why, sizeof(why))) {
		while (img_r_next(r, &rec) == 1) {
			check_rec(&rec, img_r_hdr(r)->layout == 1 ? img_r_hdr(r)->heap_size
								  : (uint64_t)INT64_MAX);
			if (rec.type == IMG_DATA && n++ % 2 && img_r_data(r, dst))
				break;
		}
		img_r_free(r);
	}
	return 0;
}
