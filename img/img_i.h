/*
 * img_i.h — private to img/: the object segment's on-disk header and map slot (the
 * layouts docs/IMAGE.md describes field by field), and helpers seg.c, write.c and read.c
 * share (name rules, the refusal message).  No locking.
 */
#ifndef HEAPFS_IMG_I_H
#define HEAPFS_IMG_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t by value */
#include <xxhash.h>

#include "img.h"

struct img_seg_hdr {
	char magic[8];
	uint32_t version, hdr_size;
	uint64_t seg_size;
	uint32_t seg_order, min_order, hdr_order, slot_size;
	uint64_t map_off;
	uint32_t map_order, map_slots;
	uint32_t nobjects, pad;
	uint64_t generation;
	uint64_t checksum;
	uint8_t reserved[48];
};
_Static_assert(sizeof(struct img_seg_hdr) == 128, "segment header is 128 bytes");

struct img_seg_slot {
	uint32_t used, order;
	uint64_t off, size, id;
	uint32_t mode, uid, gid, name_len;
	int64_t mtime_ns, ctime_ns;
	char name[IMG_NAME_MAX + 1]; /* NUL-padded */
};
_Static_assert(sizeof(struct img_seg_slot) == 320, "map slot is 320 bytes");

/* A file or object name: 1..255 bytes, no '/' or NUL, not "." or "..". */
static inline bool img_name_ok(const char *s, size_t len)
{
	if (len == 0 || len > IMG_NAME_MAX || memchr(s, '/', len) || memchr(s, 0, len))
		return false;
	return !(s[0] == '.' && (len == 1 || (len == 2 && s[1] == '.')));
}

/* Put the reason in why (if any) and return -EBADMSG. */
int img_refuse(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
