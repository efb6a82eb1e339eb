/*
 * fuzz-rec.c — one change record from memory (img_rec_decode, img/mem.c with rec.c's
 * rules): what a mirror does with a record its partner sent over the link.  The input is
 * the message's bytes, exactly (the fuzzer's buffer ends where the message ends, so any
 * read past it is caught).  What the decoder accepts must agree with itself: DATA bytes
 * inside the message, strings NUL-terminated within their stated lengths, sizes and
 * DATA's end within an off_t, INODE kinds in their set.
 * No locking: single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

static char str[IMG_REC_STR];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_rec rec;
	const void *bytes = NULL;
	char why[256];

	if (img_rec_decode(data, size, &rec, &bytes, str, why, sizeof(why)))
		return 0;
	switch (rec.type) {
	case IMG_DATA:
		if (!bytes || (const uint8_t *)bytes < data || rec.data_len > size ||
		    (const uint8_t *)bytes - data != (ptrdiff_t)(size - rec.data_len))
			abort(); /* the bytes are the message's tail */
		if (rec.u.data.off > (uint64_t)INT64_MAX - rec.data_len)
			abort(); /* its end is an off_t */
		break;
	case IMG_INODE:
		if (rec.u.inode.size > (uint64_t)INT64_MAX || rec.u.inode.kind < IMG_K_REG ||
		    rec.u.inode.kind > IMG_K_SPECIAL)
			abort();
		break;
	case IMG_TRUNCATE:
		if (rec.u.truncate.size > (uint64_t)INT64_MAX)
			abort();
		break;
	case IMG_PUNCH:
		if (!rec.u.punch.len || rec.u.punch.off > (uint64_t)INT64_MAX ||
		    rec.u.punch.len > (uint64_t)INT64_MAX - rec.u.punch.off)
			abort();
		break;
	case IMG_XATTR:
		if (strlen(rec.s1) != rec.u.xattr.name_len || rec.s2[rec.u.xattr.value_len])
			abort();
		break;
	case IMG_LINK:
		if (strlen(rec.s1) != rec.u.link.name_len)
			abort();
		break;
	case IMG_RENAME:
		if (strlen(rec.s1) != rec.u.rename.old_len || strlen(rec.s2) != rec.u.rename.new_len)
			abort();
		break;
	}
	return 0;
}
