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
#if defined(__x86_64__) || defined(__i386__)
/* Debian's libxxhash picks SSE2/AVX2/AVX-512 at run time behind these names: AVX2 hashes
 * ~24 GiB/s here against ~14 for the default SSE2 path (measured with img-bench). */
#include <xxh_x86dispatch.h>
#endif

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
_Static_assert(sizeof(struct img_seg_hdr) == IMG_SEG_HDR_SIZE, "segment header is 128 bytes");

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

/* ---- the heap image stream: record shapes, shared by write.c and read.c ---- */

/* The stream header's sizes agree: heap_size a power of two 2^min_order .. 2^40,
 * min_order 6..20 (what the reader refuses, the writer does not write). */
static inline bool img_heap_size_ok(uint64_t heap_size, uint32_t min_order)
{
	return min_order >= IMG_SEG_MIN_ORDER && min_order <= IMG_SEG_MAX_MIN_ORDER &&
	       heap_size && !(heap_size & (heap_size - 1)) && heap_size >= 1ull << min_order &&
	       heap_size <= 1ull << IMG_HEAP_MAX_ORDER;
}

/* The 16-byte record header, and the END record's payload. */
struct img_rec_hdr { uint32_t type, flags; uint64_t len; };
struct img_end { uint64_t nrecords, nbytes, checksum; };
_Static_assert(sizeof(struct img_rec_hdr) == 16, "record header");
_Static_assert(sizeof(struct img_end) == 24, "END payload");

#define IMG_BUF_SIZE (1u << 20)     /* writer's and reader's buffer */
#define IMG_DIRECT_MIN (64u << 10)  /* DATA bytes at least this long bypass the writer's buffer */

/* A record's payload: its fixed part, then up to two variable tails.  Their lengths are
 * read from u32 fields of the fixed part (len_at), or the tail is the rest of the
 * payload (len_at == IMG_REST). */
#define IMG_REST 0xff
enum img_tail { IMG_T_NONE, IMG_T_NAME, IMG_T_XNAME, IMG_T_TARGET, IMG_T_VALUE, IMG_T_BYTES };
struct img_shape {
	uint32_t fixed;
	uint8_t len_at[2];
	uint8_t tail[2]; /* enum img_tail */
};
const struct img_shape *img_shape(uint32_t type); /* NULL: not a record type (nor END) */
/* Tail lengths of a record of this type whose fixed part is fixed and payload paylen
 * bytes; 0, or -EBADMSG with why when they do not add up or pass a limit, or when a
 * field of the fixed part is out of its set (INODE kind against mode, RENAME flags,
 * SETATTR mask) or a size or DATA's end passes INT64_MAX (an off_t). */
int img_rec_layout(uint32_t type, const void *fixed, uint64_t paylen, uint32_t tl[2],
		   char *why, size_t whylen);
/* The tails' contents follow the rules of their kind (names, targets). */
int img_rec_tails(uint32_t type, const char *const t[2], const uint32_t tl[2], char *why,
		  size_t whylen);

/* Every one of n bytes is zero (reserved fields, padding). */
static inline bool img_zero(const void *p, size_t n)
{
	const unsigned char *c = p;

	return n == 0 || (c[0] == 0 && !memcmp(c, c + 1, n - 1));
}

/* Put the reason in why (if any) and return -EBADMSG. */
int img_refuse(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
