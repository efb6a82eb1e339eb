/*
 * fuzz-seg.c — the object segment's check and every reader behind it (img/seg.c): what
 * `heapfsctl image ls/cat` and a restore of objects.image do with a file from anywhere.
 *
 * Two shapes of input, so that mutations land on the bytes that matter:
 *   - a whole image (its size is the seg_size its header states, or it is padded with
 *     zeros to a power of two of at least 4 KiB): checked as heapfsctl checks a file;
 *   - compact: the 128-byte header, then the name map's bytes, when the header states a
 *     seg_size (a power of two, 4 KiB .. 1 MiB) larger than the input: the segment is
 *     that many zero bytes with the header at 0 and the map bytes at the header's map_off
 *     (when map_off lies inside: a map_off that does not is the check's to refuse).
 * The checksum is skipped (a mutated image never has a right one; test-seg.c covers it).
 * Whatever img_seg_check accepts must be safe to walk: every listed object is found
 * again, every block lies inside the segment.  No locking: single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "img_i.h"

#define SEG_MIN 4096u
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

/* The segment's size for this input: what a compact input's header states, else the
 * input's own size rounded up to a power of two (at least 4 KiB). */
static uint64_t seg_len(const uint8_t *data, size_t size, bool *compact)
{
	struct img_seg_hdr h;
	uint64_t len = SEG_MIN;

	*compact = false;
	if (size >= sizeof(h)) {
		memcpy(&h, data, sizeof(h));
		if (h.seg_size > size && h.seg_size >= SEG_MIN && h.seg_size <= SEG_MAX &&
		    !(h.seg_size & (h.seg_size - 1))) {
			*compact = true;
			return h.seg_size;
		}
	}
	while (len < size)
		len <<= 1;
	return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_seg_info si;
	struct img_seg_hdr h;
	char why[256];
	bool compact;
	uint64_t len;
	void *seg;

	if (size > SEG_MAX)
		return 0;
	len = seg_len(data, size, &compact);
	seg = aligned_alloc(4096, len);
	if (!seg)
		return 0;
	memset(seg, 0, len);
	if (compact) {
		memcpy(&h, data, sizeof(h));
		memcpy(seg, &h, sizeof(h));
		if (h.map_off >= sizeof(h) && h.map_off < len)
			memcpy((char *)seg + h.map_off, data + sizeof(h),
			       size - sizeof(h) < len - h.map_off ? size - sizeof(h)
								  : len - h.map_off);
	} else {
		memcpy(seg, data, size);
	}
	if (!img_seg_check(seg, len, IMG_CHECK_NOSUM, why, sizeof(why))) {
		img_seg_info(seg, &si);
		img_seg_foreach(seg, each_obj, seg);
		img_seg_blocks(seg, each_block, &si);
	}
	free(seg);
	return 0;
}
