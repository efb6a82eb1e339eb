/*
 * fuzz-seg.c — the object segment's check and every reader behind it (img/seg.c): what
 * `heapfsctl image ls/cat` and a restore of objects.image do with a file from anywhere.
 * The input is the segment (padded with zeros to a power of two, at least 4 KiB, so the
 * size check passes and the fields behind it are reached); with the checksum skipped
 * the fuzzer reaches past it.  Whatever img_seg_check accepts must be safe to walk.
 * No locking: single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

#define SEG_MAX (1u << 20)

static int each_obj(const struct img_obj *o, void *arg)
{
	struct img_obj again;

	/* a listed name must be found again, with the same block */
	if (img_seg_lookup(arg, o->name, &again) || again.off != o->off || again.order != o->order)
		abort();
	return 0;
}

static int each_block(uint64_t off, unsigned order, void *arg)
{
	const struct img_seg_info *si = arg;

	if (order > 63 || off > si->size || (1ull << order) > si->size - off)
		abort(); /* a block the check let through lies outside the segment */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t len = 4096;
	struct img_seg_info si;
	char why[256];
	void *seg;

	if (size > SEG_MAX)
		return 0;
	while (len < size)
		len <<= 1;
	seg = aligned_alloc(4096, len);
	if (!seg)
		return 0;
	memset(seg, 0, len);
	memcpy(seg, data, size);
	if (!img_seg_check(seg, len, IMG_CHECK_NOSUM, why, sizeof(why))) {
		img_seg_info(seg, &si);
		img_seg_foreach(seg, each_obj, seg);
		img_seg_blocks(seg, each_block, &si);
	}
	free(seg);
	return 0;
}
