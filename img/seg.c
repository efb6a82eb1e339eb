/*
 * seg.c — the object segment: a self-describing S = 2^k byte area (docs/IMAGE.md,
 * "The object segment").
 *
 * How: block 0 (2^hdr_order bytes) holds struct img_seg_hdr; the name map is an array of
 * 320-byte struct img_seg_slot in one buddy block at map_off; each object is one buddy
 * block named by a used slot.  The used blocks are the header, the map and the objects;
 * everything else is free, so the allocator state is rebuilt from the map alone.  All
 * positions are offsets from base, so the functions work on live memory and on a mapped
 * file alike.  Lookups scan the map (the daemon keeps its own index); every change bumps
 * the generation; the checksum (XXH3-64 over all S bytes, its own field read as zero) is
 * only brought up to date by img_seg_seal.
 *
 * Locking: none; the caller serialises changes to one segment and seals a snapshot.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "img_i.h"

#define SLOT_SIZE ((uint32_t)sizeof(struct img_seg_slot))
_Static_assert(sizeof(struct img_seg_slot) == IMG_SEG_SLOT_SIZE, "slot layout");

static struct img_seg_hdr *hdr(void *base)
{
	return base;
}

static const struct img_seg_hdr *chdr(const void *base)
{
	return base;
}

static struct img_seg_slot *slots(void *base)
{
	return (struct img_seg_slot *)((char *)base + hdr(base)->map_off);
}

static const struct img_seg_slot *cslots(const void *base)
{
	return (const struct img_seg_slot *)((const char *)base + chdr(base)->map_off);
}

static unsigned hdr_order_for(unsigned min_order)
{
	return min_order > IMG_SEG_HDR_MIN_ORDER ? min_order : IMG_SEG_HDR_MIN_ORDER;
}

static unsigned log2_exact(uint64_t v)
{
	return v && !(v & (v - 1)) ? (unsigned)__builtin_ctzll(v) : 0;
}

/* Block (off, order) is aligned and lies inside [0, size).  order is range-checked before
 * any shift and the end is never computed (off + 2^order may wrap past 2^64). */
static bool blk_inside(uint64_t off, unsigned order, uint64_t size)
{
	uint64_t bytes;

	if (order > IMG_SEG_MAX_ORDER)
		return false;
	bytes = 1ull << order;
	return !(off & (bytes - 1)) && bytes <= size && off <= size - bytes;
}

int img_refuse(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EBADMSG;
}

int img_seg_format(void *base, uint64_t size, unsigned min_order)
{
	unsigned k = log2_exact(size), h = hdr_order_for(min_order);
	struct img_seg_hdr *sh = hdr(base);

	if (min_order < IMG_SEG_MIN_ORDER || min_order > IMG_SEG_MAX_MIN_ORDER ||
	    k <= h || k > IMG_SEG_MAX_ORDER)
		return -EINVAL;
	memset(base, 0, 2ull << h); /* header block and its buddy, the first map */
	memcpy(sh->magic, IMG_SEG_MAGIC, 8);
	sh->version = IMG_SEG_VERSION;
	sh->hdr_size = sizeof(*sh);
	sh->seg_size = size;
	sh->seg_order = k;
	sh->min_order = min_order;
	sh->hdr_order = h;
	sh->slot_size = SLOT_SIZE;
	sh->map_off = 1ull << h;
	sh->map_order = h;
	sh->map_slots = (1u << h) / SLOT_SIZE;
	return 0;
}

/* The checksum of the segment whose header is sh and whose other bytes are base's. */
static uint64_t seg_sum_h(const struct img_seg_hdr *sh, const void *base)
{
	static const uint64_t zero;
	size_t at = offsetof(struct img_seg_hdr, checksum);
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, sh, at);
	XXH3_64bits_update(&st, &zero, sizeof(zero));
	XXH3_64bits_update(&st, (const char *)sh + at + 8, sizeof(*sh) - at - 8);
	XXH3_64bits_update(&st, (const char *)base + sizeof(*sh), sh->seg_size - sizeof(*sh));
	return XXH3_64bits_digest(&st);
}

static uint64_t seg_sum(const void *base)
{
	return seg_sum_h(chdr(base), base);
}

void img_seg_seal(void *base)
{
	hdr(base)->checksum = seg_sum(base);
}

void img_seg_seal_h(void *hdrp, const void *base)
{
	struct img_seg_hdr *sh = hdrp;

	sh->checksum = seg_sum_h(sh, base);
}

static void slot_to_obj(const struct img_seg_slot *s, uint32_t slot, struct img_obj *o)
{
	o->slot = slot;
	memcpy(o->name, s->name, s->name_len);
	o->name[s->name_len] = 0;
	o->off = s->off;
	o->order = s->order;
	o->size = s->size;
	o->id = s->id;
	o->mode = s->mode;
	o->uid = s->uid;
	o->gid = s->gid;
	o->mtime_ns = s->mtime_ns;
	o->ctime_ns = s->ctime_ns;
}

void img_seg_info(const void *base, struct img_seg_info *out)
{
	img_seg_info_h(base, base, out);
}

void img_seg_info_h(const void *hdrp, const void *base, struct img_seg_info *out)
{
	const struct img_seg_hdr *sh = hdrp;
	const struct img_seg_slot *s = (const void *)((const char *)base + sh->map_off);

	*out = (struct img_seg_info){ .size = sh->seg_size, .seg_order = sh->seg_order,
		.min_order = sh->min_order, .hdr_order = sh->hdr_order, .map_off = sh->map_off,
		.map_order = sh->map_order, .map_slots = sh->map_slots, .nobjects = sh->nobjects,
		.generation = sh->generation, .checksum = sh->checksum };
	out->used = (1ull << sh->hdr_order) + (1ull << sh->map_order);
	for (uint32_t i = 0; i < sh->map_slots; i++)
		if (s[i].used && s[i].order < 64) /* a slot's bytes may be anyone's (direct_map) */
			out->used += 1ull << s[i].order;
}

/* Index of the used slot called name (len bytes), or -ENOENT. */
static int find(const void *base, const char *name, size_t len)
{
	const struct img_seg_slot *s = cslots(base);

	for (uint32_t i = 0; i < chdr(base)->map_slots; i++)
		if (s[i].used && s[i].name_len == len && !memcmp(s[i].name, name, len))
			return (int)i;
	return -ENOENT;
}

int img_seg_lookup(const void *base, const char *name, struct img_obj *out)
{
	int i = find(base, name, strlen(name));

	if (i < 0)
		return i;
	slot_to_obj(&cslots(base)[i], (uint32_t)i, out);
	return 0;
}

/* Is o a valid object for this segment (name, block, size)?  len: its name's length. */
static bool obj_ok(const struct img_seg_hdr *sh, const struct img_obj *o, size_t len)
{
	return img_name_ok(o->name, len) && S_ISREG(o->mode) && o->order >= sh->min_order &&
	       o->order < sh->seg_order && blk_inside(o->off, o->order, sh->seg_size) &&
	       o->off >= (1ull << sh->hdr_order) && o->size <= 1ull << o->order;
}

/* Write o into slot i (used by the same name, or free). */
static void put_slot(struct img_seg_hdr *sh, struct img_seg_slot *s, const struct img_obj *o,
		     size_t len)
{
	if (!s->used)
		sh->nobjects++;
	memset(s, 0, sizeof(*s));
	*s = (struct img_seg_slot){ .used = 1, .order = o->order, .off = o->off,
		.size = o->size, .id = o->id, .mode = o->mode, .uid = o->uid, .gid = o->gid,
		.name_len = (uint32_t)len, .mtime_ns = o->mtime_ns, .ctime_ns = o->ctime_ns };
	memcpy(s->name, o->name, len);
	sh->generation++;
}

int img_seg_put(void *base, const struct img_obj *o)
{
	struct img_seg_hdr *sh = hdr(base);
	struct img_seg_slot *s = slots(base);
	size_t len = strnlen(o->name, sizeof(o->name));
	int i = find(base, o->name, len);

	if (!obj_ok(sh, o, len))
		return -EINVAL;
	if (i < 0) {
		for (i = 0; i < (int)sh->map_slots && s[i].used; i++)
			;
		if (i == (int)sh->map_slots)
			return -ENOSPC;
	}
	put_slot(sh, &s[i], o, len);
	return 0;
}

int img_seg_put_at(void *base, uint32_t slot, const struct img_obj *o)
{
	return img_seg_put_at_h(base, base, slot, o);
}

int img_seg_put_at_h(void *hdrp, void *base, uint32_t slot, const struct img_obj *o)
{
	struct img_seg_hdr *sh = hdrp;
	struct img_seg_slot *s;
	size_t len = strnlen(o->name, sizeof(o->name));

	if (slot >= sh->map_slots || !obj_ok(sh, o, len))
		return -EINVAL;
	s = (struct img_seg_slot *)((char *)base + sh->map_off) + slot;
	if (s->used && (s->name_len != len || memcmp(s->name, o->name, len)))
		return -EINVAL;
	put_slot(sh, s, o, len);
	return 0;
}

static void del_slot(struct img_seg_hdr *sh, void *base, uint32_t i)
{
	memset((char *)base + sh->map_off + (uint64_t)i * SLOT_SIZE, 0, SLOT_SIZE);
	sh->nobjects--;
	sh->generation++;
}

int img_seg_del(void *base, const char *name)
{
	int i = find(base, name, strlen(name));

	if (i < 0)
		return i;
	del_slot(hdr(base), base, (uint32_t)i);
	return 0;
}

int img_seg_del_at(void *base, uint32_t slot)
{
	return img_seg_del_at_h(base, base, slot);
}

int img_seg_del_at_h(void *hdrp, void *base, uint32_t slot)
{
	struct img_seg_hdr *sh = hdrp;
	const struct img_seg_slot *s = (const void *)((char *)base + sh->map_off);

	if (slot >= sh->map_slots || !s[slot].used)
		return -ENOENT;
	del_slot(sh, base, slot);
	return 0;
}

int img_seg_foreach(const void *base, int (*fn)(const struct img_obj *o, void *arg), void *arg)
{
	const struct img_seg_slot *s = cslots(base);
	struct img_obj o;
	int ret;

	for (uint32_t i = 0; i < chdr(base)->map_slots; i++) {
		if (!s[i].used)
			continue;
		slot_to_obj(&s[i], i, &o);
		ret = fn(&o, arg);
		if (ret)
			return ret;
	}
	return 0;
}

int img_seg_blocks(const void *base, int (*fn)(uint64_t off, unsigned order, void *arg),
		   void *arg)
{
	const struct img_seg_hdr *sh = chdr(base);
	const struct img_seg_slot *s = cslots(base);
	int ret = fn(0, sh->hdr_order, arg);

	if (!ret)
		ret = fn(sh->map_off, sh->map_order, arg);
	for (uint32_t i = 0; !ret && i < sh->map_slots; i++)
		if (s[i].used)
			ret = fn(s[i].off, s[i].order, arg);
	return ret;
}

int img_seg_map_next_order(const void *base)
{
	const struct img_seg_hdr *sh = chdr(base);

	return img_seg_map_next_order_h(sh);
}

int img_seg_map_next_order_h(const void *hdrp)
{
	const struct img_seg_hdr *sh = hdrp;

	return sh->map_order + 1 < sh->seg_order ? (int)sh->map_order + 1 : -E2BIG;
}

int img_seg_map_grow(void *base, uint64_t new_off, unsigned new_order, uint64_t *old_off,
		     unsigned *old_order)
{
	return img_seg_map_grow_h(base, base, new_off, new_order, old_off, old_order);
}

int img_seg_map_grow_h(void *hdrp, void *base, uint64_t new_off, unsigned new_order,
		       uint64_t *old_off, unsigned *old_order)
{
	struct img_seg_hdr *sh = hdrp;
	uint64_t old_bytes, new_bytes;

	if (new_order <= sh->map_order || new_order >= sh->seg_order ||
	    !blk_inside(new_off, new_order, sh->seg_size) || new_off == 0)
		return -EINVAL;
	old_bytes = 1ull << sh->map_order;
	new_bytes = 1ull << new_order;
	memcpy((char *)base + new_off, (char *)base + sh->map_off, old_bytes);
	memset((char *)base + new_off + old_bytes, 0, new_bytes - old_bytes);
	*old_off = sh->map_off;
	*old_order = sh->map_order;
	sh->map_off = new_off;
	sh->map_order = new_order;
	sh->map_slots = (uint32_t)(new_bytes / SLOT_SIZE);
	sh->generation++;
	return 0;
}

/* ---- checking ------------------------------------------------------------------------ */

struct blk {
	uint64_t off, end;
	const char *what; /* "header", "map" or an object's name */
};

static int cmp_blk(const void *a, const void *b)
{
	const struct blk *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static int cmp_name(const void *a, const void *b)
{
	const struct img_seg_slot *x = *(const struct img_seg_slot *const *)a;
	const struct img_seg_slot *y = *(const struct img_seg_slot *const *)b;

	return strcmp(x->name, y->name);
}

/* The header fields that locate everything else. */
static int check_hdr(const struct img_seg_hdr *sh, uint64_t len, char *why, size_t wl)
{
	if (len < sizeof(*sh))
		return img_refuse(why, wl, "truncated: %llu bytes, shorter than a segment header",
				  (unsigned long long)len);
	if (memcmp(sh->magic, IMG_SEG_MAGIC, 8))
		return img_refuse(why, wl, "not a heapfs segment (bad magic)");
	if (sh->version != IMG_SEG_VERSION)
		return img_refuse(why, wl, "unsupported segment version %u (this reader knows %u)",
				  sh->version, IMG_SEG_VERSION);
	if (sh->seg_size != len)
		return img_refuse(why, wl, "wrong size: header says %llu bytes, image has %llu",
				  (unsigned long long)sh->seg_size, (unsigned long long)len);
	if (sh->hdr_size != sizeof(*sh) || sh->slot_size != SLOT_SIZE ||
	    sh->min_order < IMG_SEG_MIN_ORDER || sh->min_order > IMG_SEG_MAX_MIN_ORDER ||
	    sh->hdr_order != hdr_order_for(sh->min_order) || sh->seg_order > IMG_SEG_MAX_ORDER ||
	    sh->seg_order <= sh->hdr_order || log2_exact(sh->seg_size) != sh->seg_order ||
	    sh->pad || !img_zero(sh->reserved, sizeof(sh->reserved)))
		return img_refuse(why, wl, "bad segment header (fields out of range)");
	if (sh->map_order < sh->hdr_order || sh->map_order >= sh->seg_order ||
	    !blk_inside(sh->map_off, sh->map_order, sh->seg_size) || sh->map_off == 0 ||
	    sh->map_slots != (1ull << sh->map_order) / SLOT_SIZE)
		return img_refuse(why, wl, "bad name map position or size");
	return 0;
}

/* One used slot on its own: its name and block. */
static int check_slot(const struct img_seg_hdr *sh, const struct img_seg_slot *s, uint32_t i,
		      char *why, size_t wl)
{
	if (s->used != 1)
		return img_refuse(why, wl, "map slot %u: bad used flag %u", i, s->used);
	if (s->name_len > IMG_NAME_MAX || s->name[s->name_len] != 0 ||
	    !img_name_ok(s->name, s->name_len))
		return img_refuse(why, wl, "map slot %u: invalid object name", i);
	if (!S_ISREG(s->mode)) /* objects/NAME is a regular file */
		return img_refuse(why, wl, "object '%s': mode %#o is not a regular file's", s->name,
				  s->mode);
	if (s->order < sh->min_order || s->order >= sh->seg_order ||
	    !blk_inside(s->off, s->order, sh->seg_size) || s->size > 1ull << s->order)
		return img_refuse(why, wl, "object '%s': block (offset %llu, order %u, size %llu) "
				  "outside the segment or misaligned", s->name,
				  (unsigned long long)s->off, s->order, (unsigned long long)s->size);
	return 0;
}

/* Blocks sorted by offset must not overlap; names sorted must differ. */
static int check_disjoint(struct blk *b, uint32_t nb, const struct img_seg_slot **byname,
			  uint32_t n, char *why, size_t wl)
{
	qsort(b, nb, sizeof(*b), cmp_blk);
	for (uint32_t i = 1; i < nb; i++)
		if (b[i].off < b[i - 1].end)
			return img_refuse(why, wl, "blocks overlap: '%s' at %llu and '%s' at %llu",
					  b[i - 1].what, (unsigned long long)b[i - 1].off,
					  b[i].what, (unsigned long long)b[i].off);
	qsort(byname, n, sizeof(*byname), cmp_name);
	for (uint32_t i = 1; i < n; i++)
		if (!strcmp(byname[i]->name, byname[i - 1]->name))
			return img_refuse(why, wl, "duplicate object name '%s'", byname[i]->name);
	return 0;
}

int img_seg_check(const void *base, uint64_t len, unsigned flags, char *why, size_t whylen)
{
	const struct img_seg_hdr *sh = chdr(base);
	const struct img_seg_slot *s, **byname = NULL;
	struct blk *b = NULL;
	uint32_t n = 0;
	int ret = check_hdr(sh, len, why, whylen);

	if (ret)
		return ret;
	if (!(flags & IMG_CHECK_NOSUM) && seg_sum(base) != sh->checksum)
		return img_refuse(why, whylen, "checksum mismatch (corrupt image)");
	s = cslots(base);
	/* map_slots * 320 <= 2^map_order <= len: the counts are what the buffer holds */
	b = malloc(((size_t)sh->map_slots + 2) * sizeof(*b));
	byname = malloc(((size_t)sh->map_slots + 1) * sizeof(*byname));
	if (!b || !byname) {
		ret = -ENOMEM;
		goto out;
	}
	b[0] = (struct blk){ 0, 1ull << sh->hdr_order, "header" };
	b[1] = (struct blk){ sh->map_off, sh->map_off + (1ull << sh->map_order), "map" };
	for (uint32_t i = 0; i < sh->map_slots; i++) {
		if (!s[i].used && !img_zero(&s[i], SLOT_SIZE)) {
			ret = img_refuse(why, whylen, "map slot %u: unused but not zero", i);
			goto out;
		}
		if (!s[i].used)
			continue;
		ret = check_slot(sh, &s[i], i, why, whylen);
		if (ret)
			goto out;
		b[n + 2] = (struct blk){ s[i].off, s[i].off + (1ull << s[i].order), s[i].name };
		byname[n++] = &s[i];
	}
	if (n != sh->nobjects) {
		ret = img_refuse(why, whylen, "header counts %u objects, map holds %u",
				 sh->nobjects, n);
		goto out;
	}
	ret = check_disjoint(b, n + 2, byname, n, why, whylen);
out:
	free(byname);
	free(b);
	return ret;
}
