/*
 * test-seg.c — unit tests of the object segment (img/seg.c), with the real buddy
 * allocator handing out the blocks the way the daemon will: format, put/lookup/del, map
 * growth, seal/check round trips, the allocator state rebuilt from the segment alone
 * (buddy_alloc_at of every listed block), and every refusal of img_seg_check and
 * img_seg_put — each checked to leave the segment's bytes unchanged; saving to and loading
 * from a file (img_seg_save/load) with its refusals.
 * Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img.h"
#include "img_i.h"
#include "tcheck.h"

#define SEG_ORDER 20 /* 1 MiB segment */
#define SEG_SIZE (1ull << SEG_ORDER)
#define MIN_ORDER 6

static char why[256];

/* A formatted segment with an allocator whose used blocks are the segment's. */
struct seg {
	unsigned char *base;
	struct buddy *b;
};

static int claim(uint64_t off, unsigned order, void *arg)
{
	return buddy_alloc_at(arg, off, order);
}

static int seg_new(struct seg *s)
{
	s->base = calloc(1, SEG_SIZE);
	s->b = mk(SEG_ORDER, MIN_ORDER, 0, BUDDY_F_NODATA | BUDDY_F_TRACK | BUDDY_F_NOCACHE);
	if (!s->base || !s->b || img_seg_format(s->base, SEG_SIZE, MIN_ORDER))
		return -1;
	return img_seg_blocks(s->base, claim, s->b);
}

static void seg_free(struct seg *s)
{
	free(s->base);
	if (s->b)
		buddy_destroy(s->b);
}

/* Put an object of size bytes called name, growing the map when it is full, as the daemon
 * will; its bytes are a pattern of its name. */
static int seg_add(struct seg *s, const char *name, uint64_t size)
{
	struct img_obj o = { .size = size, .id = 100 + strlen(name), .mode = 0100644,
			     .uid = 7, .gid = 8, .mtime_ns = 1, .ctime_ns = 2 };
	int64_t off, moff;
	uint64_t old_off;
	unsigned old_order;
	int ret, order = buddy_order_of(size ? size : 1, MIN_ORDER);

	snprintf(o.name, sizeof(o.name), "%s", name);
	off = buddy_alloc(s->b, (unsigned)order);
	if (off < 0)
		return (int)off;
	o.off = (uint64_t)off;
	o.order = (unsigned)order;
	for (uint64_t i = 0; i < size; i++)
		s->base[off + (int64_t)i] = (unsigned char)(name[i % strlen(name)] + i);
	while ((ret = img_seg_put(s->base, &o)) == -ENOSPC) {
		int mo = img_seg_map_next_order(s->base);

		if (mo < 0 || (moff = buddy_alloc(s->b, (unsigned)mo)) < 0)
			return -ENOSPC;
		ret = img_seg_map_grow(s->base, (uint64_t)moff, (unsigned)mo, &old_off, &old_order);
		if (ret)
			return ret;
		ret = buddy_free(s->b, old_off, old_order);
		if (ret)
			return ret;
	}
	return ret;
}

static void t_format(void)
{
	unsigned char *base = calloc(1, SEG_SIZE);
	struct img_seg_info in;
	struct img_obj o;

	T(base);
	TEQ(img_seg_format(base, SEG_SIZE, MIN_ORDER), 0);
	img_seg_seal(base);
	TEQ(img_seg_check(base, SEG_SIZE, 0, why, sizeof(why)), 0);
	img_seg_info(base, &in);
	TEQ(in.size, SEG_SIZE);
	TEQ(in.hdr_order, 12);
	TEQ(in.map_off, 4096);
	TEQ(in.map_order, 12);
	TEQ(in.map_slots, 12);
	TEQ(in.nobjects, 0);
	TEQ(in.used, 8192);
	T(!memcmp(base, "HEAPFSEG", 8));
	TEQ(img_seg_lookup(base, "x", &o), -ENOENT);
	TEQ(img_seg_del(base, "x"), -ENOENT);
	/* min_block above 4 KiB: the header block is one min_block */
	TEQ(img_seg_format(base, SEG_SIZE, 16), 0);
	img_seg_info(base, &in);
	TEQ(in.hdr_order, 16);
	TEQ(in.map_off, 65536);
	/* refusals */
	TEQ(img_seg_format(base, SEG_SIZE + 4096, MIN_ORDER), -EINVAL);
	TEQ(img_seg_format(base, SEG_SIZE, 5), -EINVAL);
	TEQ(img_seg_format(base, SEG_SIZE, 21), -EINVAL);
	TEQ(img_seg_format(base, 4096, MIN_ORDER), -EINVAL); /* no room for the map */
	free(base);
}

static int count_obj(const struct img_obj *o, void *arg)
{
	(void)o;
	++*(unsigned *)arg;
	return 0;
}

/* 100 objects (the map grows 12 -> 25 -> 51 -> 102 slots), lookups, deletes, seal and
 * check; then the allocator state rebuilt from the segment equals the live one. */
static void t_round_trip(void)
{
	struct seg s = { 0 }, r = { 0 };
	struct buddy_stats a, c;
	struct img_seg_info in;
	struct img_obj o;
	char name[32];
	unsigned count = 0;

	T(seg_new(&s) == 0);
	for (int i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "obj-%d", i);
		TEQ(seg_add(&s, name, (uint64_t)(i * 37 % 3000)), 0);
	}
	img_seg_info(s.base, &in);
	TEQ(in.nobjects, 100);
	TEQ(in.map_order, 15);
	T(in.map_slots >= 100);
	TEQ(img_seg_lookup(s.base, "obj-42", &o), 0);
	TEQ(o.size, 42 * 37 % 3000);
	TEQ(o.mode, 0100644);
	TEQ(o.id, 100 + strlen("obj-42"));
	for (uint64_t i = 0; i < o.size; i++)
		TEQ(s.base[o.off + i], (unsigned char)("obj-42"[i % 6] + i));
	/* replace keeps the count */
	o.size = 5;
	TEQ(img_seg_put(s.base, &o), 0);
	img_seg_info(s.base, &in);
	TEQ(in.nobjects, 100);
	TEQ(img_seg_lookup(s.base, "obj-42", &o), 0);
	TEQ(o.size, 5);
	for (int i = 0; i < 100; i += 3) {
		snprintf(name, sizeof(name), "obj-%d", i);
		TEQ(img_seg_lookup(s.base, name, &o), 0);
		TEQ(img_seg_del(s.base, name), 0);
		TEQ(buddy_free(s.b, o.off, o.order), 0);
		TEQ(img_seg_lookup(s.base, name, &o), -ENOENT);
	}
	img_seg_info(s.base, &in);
	TEQ(in.nobjects, 66);
	img_seg_seal(s.base);
	TEQ(img_seg_check(s.base, SEG_SIZE, 0, why, sizeof(why)), 0);

	/* restore: the segment alone gives back the allocator state */
	r.b = mk(SEG_ORDER, MIN_ORDER, 0, BUDDY_F_NODATA | BUDDY_F_TRACK | BUDDY_F_NOCACHE);
	T(r.b);
	TEQ(img_seg_blocks(s.base, claim, r.b), 0);
	buddy_stats(s.b, &a);
	buddy_stats(r.b, &c);
	TEQ(c.used, a.used);
	TEQ(c.used, in.used);
	for (unsigned k = MIN_ORDER; k <= SEG_ORDER; k++)
		TEQ(c.free_blocks[k], a.free_blocks[k]);
	TEQ(buddy_check(r.b), 0);

	/* foreach sees each object once */
	TEQ(img_seg_foreach(s.base, count_obj, &count), 0);
	TEQ(count, 66);
	seg_free(&r);
	seg_free(&s);
}

/* The map cannot grow past half the segment. */
static void t_map_full(void)
{
	unsigned char *base = calloc(1, 1u << 14);
	uint64_t oo;
	unsigned oord;

	T(base);
	TEQ(img_seg_format(base, 1u << 14, MIN_ORDER), 0); /* header 4K, map 4K, 8K free */
	TEQ(img_seg_map_next_order(base), 13);
	TEQ(img_seg_map_grow(base, 8192, 13, &oo, &oord), 0);
	TEQ(oo, 4096);
	TEQ(oord, 12);
	TEQ(img_seg_map_next_order(base), -E2BIG);
	TEQ(img_seg_map_grow(base, 8192, 13, &oo, &oord), -EINVAL); /* not larger */
	free(base);
}

/* map_grow refuses blocks that are not a free-able place for the map, changing nothing. */
static void t_map_grow_refusals(void)
{
	unsigned char *base = calloc(1, SEG_SIZE), *copy = malloc(SEG_SIZE);
	uint64_t oo = 7;
	unsigned oord = 7;

	T(base && copy);
	TEQ(img_seg_format(base, SEG_SIZE, MIN_ORDER), 0);
	memcpy(copy, base, SEG_SIZE);
	TEQ(img_seg_map_grow(base, 8192 + 4096, 13, &oo, &oord), -EINVAL); /* misaligned */
	TEQ(img_seg_map_grow(base, 0, 13, &oo, &oord), -EINVAL);           /* the header */
	TEQ(img_seg_map_grow(base, SEG_SIZE, 13, &oo, &oord), -EINVAL);    /* outside */
	TEQ(img_seg_map_grow(base, 0, SEG_ORDER, &oo, &oord), -EINVAL);    /* the whole */
	TEQ(img_seg_map_grow(base, 4096, 12, &oo, &oord), -EINVAL);        /* not larger */
	/* an end past 2^64 that wraps to inside, and orders no shift may take */
	TEQ(img_seg_map_grow(base, -(1ull << 13), 13, &oo, &oord), -EINVAL);
	TEQ(img_seg_map_grow(base, 1ull << 13, 64, &oo, &oord), -EINVAL);
	TEQ(img_seg_map_grow(base, 1ull << 13, 200, &oo, &oord), -EINVAL);
	T(!memcmp(copy, base, SEG_SIZE));
	TEQ(oo, 7);
	TEQ(oord, 7);
	free(copy);
	free(base);
}

/* Every refusal of put: bad names, bad blocks; the segment is unchanged after each. */
static void t_put_refusals(void)
{
	struct seg s = { 0 };
	unsigned char *copy = malloc(SEG_SIZE);
	static const char *bad_names[] = { "", ".", "..", "a/b", "/" };
	struct img_obj o = { .off = 1u << 16, .order = 16, .size = 10, .mode = 0100644 };

	T(seg_new(&s) == 0 && copy);
	TEQ(seg_add(&s, "keep", 100), 0);
	memcpy(copy, s.base, SEG_SIZE);
	for (unsigned i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		snprintf(o.name, sizeof(o.name), "%s", bad_names[i]);
		TEQ(img_seg_put(s.base, &o), -EINVAL);
	}
	memset(o.name, 'n', IMG_NAME_MAX + 1); /* 256 bytes, no NUL */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	snprintf(o.name, sizeof(o.name), "ok");
	o.off = (1u << 16) + 64; /* misaligned */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.off = SEG_SIZE; /* outside */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.off = 0; /* the header block */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.off = -(1ull << 16); /* its end wraps past 2^64 to 0 */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	TEQ(img_seg_put_at(s.base, 0, &o), -EINVAL);
	o.off = 1u << 16;
	o.order = 70; /* no shift takes it */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.order = 16;
	o.mode = 020644; /* not a regular file */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.mode = 0100644;
	o.off = 1u << 16;
	o.size = (1u << 16) + 1; /* past its block */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	o.size = 1;
	o.order = 5; /* below min_block */
	TEQ(img_seg_put(s.base, &o), -EINVAL);
	T(!memcmp(copy, s.base, SEG_SIZE));
	free(copy);
	seg_free(&s);
}

/* The slot-addressed calls: O(1) puts and deletes, refusing another name's slot. */
static void t_put_del_at(void)
{
	struct seg s = { 0 };
	struct img_obj o = { .off = 1u << 16, .order = 16, .size = 10, .mode = 0100644 }, got;
	struct img_seg_info si;

	T(seg_new(&s) == 0);
	snprintf(o.name, sizeof(o.name), "a");
	TEQ(img_seg_put_at(s.base, 3, &o), 0);
	TEQ(img_seg_lookup(s.base, "a", &got), 0);
	TEQ(got.slot, 3);
	TEQ(got.size, 10);
	o.size = 20;
	TEQ(img_seg_put_at(s.base, 3, &o), 0); /* the same name: replaced */
	snprintf(o.name, sizeof(o.name), "b");
	TEQ(img_seg_put_at(s.base, 3, &o), -EINVAL); /* another name's slot */
	img_seg_info(s.base, &si);
	TEQ(img_seg_put_at(s.base, si.map_slots, &o), -EINVAL);
	TEQ(si.nobjects, 1);
	TEQ(img_seg_check(s.base, SEG_SIZE, IMG_CHECK_NOSUM, why, sizeof(why)), 0);
	TEQ(img_seg_del_at(s.base, 2), -ENOENT);
	TEQ(img_seg_del_at(s.base, 3), 0);
	TEQ(img_seg_lookup(s.base, "a", &got), -ENOENT);
	img_seg_info(s.base, &si);
	TEQ(si.nobjects, 0);
	seg_free(&s);
}

/* check on a damaged copy: refused with the expected words, original bytes untouched. */
static int refused(const unsigned char *img, uint64_t len, unsigned flags, const char *words)
{
	unsigned char *before = malloc(len);
	int ret;

	if (!before)
		return 0;
	memcpy(before, img, len);
	ret = img_seg_check(img, len, flags, why, sizeof(why));
	ret = ret == -EBADMSG && strstr(why, words) && !memcmp(before, img, len);
	if (!ret)
		fprintf(stderr, "  expected refusal '%s', got '%s'\n", words, why);
	free(before);
	return ret;
}

static void t_check_refusals(void)
{
	struct seg s = { 0 };
	unsigned char *bad = malloc(SEG_SIZE);
	struct img_seg_hdr *h = (struct img_seg_hdr *)bad;
	struct img_seg_slot *sl;
	struct img_obj a, b;

	T(seg_new(&s) == 0 && bad);
	TEQ(seg_add(&s, "alpha", 1000), 0);
	TEQ(seg_add(&s, "beta", 5000), 0);
	img_seg_seal(s.base);
	TEQ(img_seg_check(s.base, SEG_SIZE, 0, why, sizeof(why)), 0);
	TEQ(img_seg_lookup(s.base, "alpha", &a), 0);
	TEQ(img_seg_lookup(s.base, "beta", &b), 0);
#define FRESH() memcpy(bad, s.base, SEG_SIZE)
	FRESH();
	T(refused(bad, SEG_SIZE / 2, 0, "wrong size"));  /* truncated */
	T(refused(bad, 100, 0, "truncated"));
	memcpy(bad, "HEAPFSEX", 8);
	T(refused(bad, SEG_SIZE, 0, "bad magic"));
	FRESH();
	h->version = 2;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "unsupported segment version 2"));
	FRESH();
	h->map_off = 4096 + 64;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "name map"));
	FRESH();
	h->min_order = 5;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "bad segment header"));
	FRESH();
	h->reserved[47] = 1;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "bad segment header"));
	FRESH();
	h->map_slots++;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "name map"));
	/* a map whose end wraps past 2^64 to 0 (aligned, so only the bound can tell): it
	 * would put the map before the segment's first byte; sealed, so the position itself
	 * is refused, and also with the checksum skipped */
	FRESH();
	h->map_off = -(1ull << h->map_order);
	img_seg_seal(bad);
	T(refused(bad, SEG_SIZE, 0, "bad name map position or size"));
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "bad name map position or size"));
	FRESH();
	h->map_off = SEG_SIZE - (1ull << h->map_order) / 2; /* straddles the end */
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "name map"));
	FRESH();
	h->map_order = 64; /* no shift takes it */
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "name map"));
	FRESH();
	h->nobjects = 3;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "counts 3 objects"));
	/* one flipped bit anywhere: header, map, object bytes, free space */
	for (uint64_t pos = 0; pos < SEG_SIZE * 8; pos += SEG_SIZE * 8 / 97 + 13) {
		FRESH();
		bad[pos / 8] ^= (unsigned char)(1u << (pos % 8));
		T(img_seg_check(bad, SEG_SIZE, 0, why, sizeof(why)) == -EBADMSG);
	}
	FRESH();
	bad[a.off + 3] ^= 1;
	T(refused(bad, SEG_SIZE, 0, "checksum mismatch"));
	/* map damage (checked without the checksum: a live segment) */
	FRESH();
	h = (struct img_seg_hdr *)bad;
	sl = (struct img_seg_slot *)(bad + h->map_off);
	for (unsigned i = 0; i < h->map_slots; i++)
		if (sl[i].used && !strcmp(sl[i].name, "beta"))
			sl = &sl[i];
	sl->off = a.off; /* beta over alpha */
	sl->order = a.order;
	sl->size = 10;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "blocks overlap"));
	FRESH();
	sl->off = 0; /* over the header */
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "blocks overlap: 'header'"));
	FRESH();
	sl->off = b.off + 64; /* misaligned */
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "misaligned"));
	FRESH();
	sl->size = (1ull << b.order) + 1;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "outside the segment"));
	/* an object whose end wraps past 2^64 to 0: sorted last, it overlaps nothing, and a
	 * reader of its bytes would read before the segment; sealed, as a file would be */
	FRESH();
	sl->off = -(1ull << b.order);
	img_seg_seal(bad);
	T(refused(bad, SEG_SIZE, 0, "outside the segment"));
	FRESH();
	sl->order = 64;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "outside the segment"));
	FRESH();
	memcpy(sl->name, "be/a", 4);
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "invalid object name"));
	FRESH();
	memcpy(sl->name, "alpha", 6);
	sl->name_len = 5;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "duplicate object name 'alpha'"));
	FRESH();
	sl->name_len = 300;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "invalid object name"));
	FRESH();
	sl->mode = 040755; /* objects/beta would be a directory with a file's blocks */
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "object 'beta': mode 040755 is not a regular"));
	FRESH();
	sl->used = 2;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "bad used flag"));
	FRESH();
	sl->used = 0; /* a deleted slot must be all zero */
	h->nobjects = 1;
	T(refused(bad, SEG_SIZE, IMG_CHECK_NOSUM, "unused but not zero"));
#undef FRESH
	free(bad);
	seg_free(&s);
}

/* Load path into a fresh buffer: the result, and the header zeroed after a refusal. */
static int load(const char *path, unsigned min_order, unsigned char *into)
{
	int fd = open(path, O_RDONLY), ret;

	if (fd < 0)
		return -errno;
	memset(into, 0xab, SEG_SIZE);
	ret = img_seg_load(fd, into, SEG_SIZE, min_order, why, sizeof(why));
	close(fd);
	if (ret && memcmp(into, (unsigned char[128]){ 0 }, 128))
		return -EDOM;
	return ret;
}

static void t_file(void)
{
	char dir[] = "/tmp/img-seg-XXXXXX", path[64], other[64];
	unsigned char *in = malloc(SEG_SIZE), *file = malloc(SEG_SIZE + 4096);
	struct seg s = { 0 };
	struct img_obj o;
	int fd;

	T(in && file && mkdtemp(dir) && seg_new(&s) == 0);
	snprintf(path, sizeof(path), "%s/objects.img", dir);
	snprintf(other, sizeof(other), "%s/bad.img", dir);
	TEQ(seg_add(&s, "alpha", 1000), 0);
	TEQ(seg_add(&s, "beta", 100000), 0);
	TEQ(img_seg_save(s.base, path), 0);
	TEQ(load(path, MIN_ORDER, in), 0);
	T(!memcmp(in, s.base, SEG_SIZE));
	TEQ(img_seg_lookup(in, "beta", &o), 0);
	TEQ(o.size, 100000);
	/* refusals; the image file is only read */
	fd = open(path, O_RDONLY);
	T(fd >= 0 && read(fd, file, SEG_SIZE) == (ssize_t)SEG_SIZE);
	close(fd);
	TEQ(load(path, MIN_ORDER + 1, in), -EBADMSG);
	T(strstr(why, "min_block of the image is 64, the segment's is 128"));
#define BAD(len) do {                                                             \
		fd = open(other, O_WRONLY | O_CREAT | O_TRUNC, 0600);            \
		T(fd >= 0 && write(fd, file, len) == (ssize_t)(len) && !close(fd)); \
	} while (0)
	BAD(SEG_SIZE / 2);
	TEQ(load(other, MIN_ORDER, in), -EBADMSG);
	T(strstr(why, "wrong size: the image is 524288 bytes, the segment is 1048576"));
	memset(file + SEG_SIZE, 0, 4096);
	BAD(SEG_SIZE + 4096);
	TEQ(load(other, MIN_ORDER, in), -EBADMSG);
	T(strstr(why, "wrong size"));
	file[SEG_SIZE - 1] ^= 1;
	BAD(SEG_SIZE);
	TEQ(load(other, MIN_ORDER, in), -EBADMSG);
	T(strstr(why, "checksum mismatch"));
#undef BAD
	fd = open(path, O_RDONLY);
	T(fd >= 0 && read(fd, in, SEG_SIZE) == (ssize_t)SEG_SIZE);
	close(fd);
	file[SEG_SIZE - 1] ^= 1;
	T(!memcmp(in, file, SEG_SIZE)); /* the saved image is as it was */
	snprintf(other, sizeof(other), "%s/none/x.img", dir);
	TEQ(img_seg_save(s.base, other), -ENOENT);
	TEQ(load(other, MIN_ORDER, in), -ENOENT);
	snprintf(other, sizeof(other), "%s/bad.img", dir);
	unlink(other);
	unlink(path);
	rmdir(dir);
	free(in);
	free(file);
	seg_free(&s);
}

int main(void)
{
	RUN(t_format);
	RUN(t_round_trip);
	RUN(t_map_full);
	RUN(t_map_grow_refusals);
	RUN(t_put_refusals);
	RUN(t_put_del_at);
	RUN(t_check_refusals);
	RUN(t_file);
	return tc_failed != 0;
}
