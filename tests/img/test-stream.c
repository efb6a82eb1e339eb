/*
 * test-stream.c — unit tests of the heap image stream (img/write.c, read.c, rec.c): a
 * sample heap with every record type (files of several DATA records, hard links, a
 * symlink, xattrs, a device, and the change records) written then read back equal, from a
 * file and through a pipe in small pieces; then every refusal: truncation at each record
 * boundary and inside records, flipped bits across the image, bad magic, wrong version,
 * wrong size, unknown type, lengths past limits, flags, bad names, END counts, bytes after
 * END — and the writer refusing bad records without writing any of them.
 * Single-threaded (one forked child feeds the pipe).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "img.h"
#include "img_i.h"
#include "tcheck.h"

#define HEAP_SIZE (64ull << 20)
#define BIG (3u * IMG_DATA_MAX + 12345) /* four DATA records, three of them direct */

static char why[256];
static unsigned char *big;
static const char xval[] = { 'v', 0, 'w' }; /* an xattr value with a NUL in it */

/* The sample, in order.  s1/s2 and data as img_rec carries them. */
static struct img_rec sample[32];
static const void *sample_data[32];
static int nsample;

static void add(uint32_t type, const void *fixed, size_t flen, const char *s1, const char *s2,
		const void *data, uint32_t data_len)
{
	struct img_rec *r = &sample[nsample];

	r->type = type;
	memcpy(&r->u, fixed, flen);
	r->s1 = s1;
	r->s2 = s2;
	r->data_len = data_len;
	sample_data[nsample++] = data;
}

#define ADD(type, val, ...) add(type, &(val), sizeof(val), __VA_ARGS__)

static void make_sample(void)
{
	struct img_inode root = { 1, IMG_K_DIR, 040755, 0, 0, 0, 3, 0, 0, 1, 2, 3 };
	struct img_inode dir = { 2, IMG_K_DIR, 040700, 1000, 1000, 0, 2, 0, 0, 4, 5, 6 };
	struct img_inode file = { 3, IMG_K_REG, 0100644, 1000, 100, 0, 2, 0, BIG, 7, 8, 9 };
	struct img_inode small = { 4, IMG_K_REG, 0100600, 0, 0, 0, 1, 0, 5, 7, 8, 9 };
	struct img_inode lnk = { 5, IMG_K_LNK, 0120777, 0, 0, 0, 1, 0, 6, 7, 8, 9 };
	struct img_inode dev = { 6, IMG_K_SPECIAL, 020644, 0, 0, 0x0103, 1, 0, 0, 7, 8, 9 };
	struct img_link l[] = { { 1, 2, 3, 0 }, { 2, 3, 8, 0 }, { 1, 3, 4, 0 }, { 1, 4, 5, 0 },
				{ 1, 5, 4, 0 }, { 1, 6, 4, 0 } };
	struct img_data d0 = { 3, 0 }, d1 = { 4, 0 };
	struct img_symlink sl = { 5 };
	struct img_xattr x0 = { 3, 10, 3 }, x1 = { 1, 9, 0 };
	struct img_truncate tr = { 3, 100 };
	struct img_rename rn = { 1, 2, 5, 7, 1, 0 };
	struct img_unlink ul = { 1, 4, 0 };
	struct img_setattr sa = { 3, IMG_SET_MODE | IMG_SET_MTIME, 0100600, 0, 0, 0, 0, 42, 0 };
	struct img_removexattr rx = { 3, 10, 0 };
	struct img_punch pu = { 3, 10, 20 };

	for (uint32_t i = 0; i < BIG; i++)
		big[i] = (unsigned char)(i * 2654435761u >> 13);
	ADD(IMG_INODE, root, NULL, NULL, NULL, 0);
	ADD(IMG_XATTR, x1, "user.void", "", NULL, 0);
	ADD(IMG_INODE, dir, NULL, NULL, NULL, 0);
	ADD(IMG_LINK, l[0], "sub", NULL, NULL, 0);
	ADD(IMG_INODE, file, NULL, NULL, NULL, 0);
	ADD(IMG_LINK, l[1], "data.bin", NULL, NULL, 0);
	ADD(IMG_LINK, l[2], "hard", NULL, NULL, 0);
	ADD(IMG_XATTR, x0, "user.three", xval, NULL, 0);
	for (uint32_t off = 0; off < BIG; off += IMG_DATA_MAX) {
		d0.off = off;
		ADD(IMG_DATA, d0, NULL, NULL, big + off, BIG - off < IMG_DATA_MAX ? BIG - off
										 : IMG_DATA_MAX);
	}
	ADD(IMG_INODE, small, NULL, NULL, NULL, 0);
	ADD(IMG_LINK, l[3], "small", NULL, NULL, 0);
	ADD(IMG_DATA, d1, NULL, NULL, "hello", 5);
	ADD(IMG_INODE, lnk, NULL, NULL, NULL, 0);
	ADD(IMG_LINK, l[4], "link", NULL, NULL, 0);
	ADD(IMG_SYMLINK, sl, "sub/data.bin", NULL, NULL, 0);
	ADD(IMG_INODE, dev, NULL, NULL, NULL, 0);
	ADD(IMG_LINK, l[5], "null", NULL, NULL, 0);
	ADD(IMG_TRUNCATE, tr, NULL, NULL, NULL, 0);
	ADD(IMG_RENAME, rn, "small", "renamed", NULL, 0);
	ADD(IMG_UNLINK, ul, "hard", NULL, NULL, 0);
	ADD(IMG_SETATTR, sa, NULL, NULL, NULL, 0);
	ADD(IMG_REMOVEXATTR, rx, "user.three", NULL, NULL, 0);
	ADD(IMG_PUNCH, pu, NULL, NULL, NULL, 0);
}

static int emit(struct img_w *w, const struct img_rec *r, const void *data)
{
	switch (r->type) {
	case IMG_INODE: return img_w_inode(w, &r->u.inode);
	case IMG_LINK: return img_w_link(w, r->u.link.parent, r->u.link.child, r->s1);
	case IMG_DATA: return img_w_data(w, r->u.data.id, r->u.data.off, data, r->data_len);
	case IMG_SYMLINK: return img_w_symlink(w, r->u.symlink.id, r->s1);
	case IMG_XATTR: return img_w_xattr(w, r->u.xattr.id, r->s1, r->s2, r->u.xattr.value_len);
	case IMG_TRUNCATE: return img_w_truncate(w, r->u.truncate.id, r->u.truncate.size);
	case IMG_RENAME:
		return img_w_rename(w, r->u.rename.old_parent, r->s1, r->u.rename.new_parent,
				    r->s2, r->u.rename.flags);
	case IMG_UNLINK: return img_w_unlink(w, r->u.unlink.parent, r->s1);
	case IMG_SETATTR: return img_w_setattr(w, &r->u.setattr);
	case IMG_REMOVEXATTR: return img_w_removexattr(w, r->u.removexattr.id, r->s1);
	case IMG_PUNCH: return img_w_punch(w, r->u.punch.id, r->u.punch.off, r->u.punch.len);
	}
	return -EINVAL;
}

/* contiguous (layout 1): the reader bounds sizes by the heap (t_field_refusals) */
static const struct img_hdr hdr = { .heap_size = HEAP_SIZE, .min_order = 12, .layout = 1,
				    .name = "scratch" };

/* The sample as an image in a memfd; its length in *len. */
static int write_sample(size_t *len)
{
	int fd = memfd_create("img", 0);
	struct img_w *w = NULL;
	struct stat st;

	if (fd < 0 || img_w_open(fd, &hdr, &w))
		return -1;
	for (int i = 0; i < nsample; i++)
		if (emit(w, &sample[i], sample_data[i]))
			return -1;
	if (img_w_finish(w) || fstat(fd, &st))
		return -1;
	img_w_free(w);
	*len = (size_t)st.st_size;
	return lseek(fd, 0, SEEK_SET) == 0 ? fd : -1;
}

static size_t fixed_len(uint32_t type)
{
	return img_shape(type)->fixed;
}

/* Read fd to its end and compare with the sample: 0 when equal and END verified, the
 * reader's error, or -EDOM for records that differ (only when the reader accepted all). */
static int read_back(int fd)
{
	static unsigned char buf[IMG_DATA_MAX];
	struct img_r *r = NULL;
	struct img_rec rec;
	int i = 0, differs = 0, ret = img_r_open(fd, HEAP_SIZE, &r, why, sizeof(why));

	if (ret)
		return ret;
	while ((ret = img_r_next(r, &rec)) == 1) {
		const struct img_rec *e = &sample[i < nsample ? i : 0];

		if (i >= nsample || rec.type != e->type ||
		    memcmp(&rec.u, &e->u, fixed_len(e->type)) ||
		    (e->s1 && strcmp(rec.s1, e->s1)) ||
		    (e->s2 && memcmp(rec.s2, e->s2, e->type == IMG_XATTR ? e->u.xattr.value_len
									  : strlen(e->s2) + 1)) ||
		    rec.data_len != e->data_len)
			differs = 1;
		else if (rec.type == IMG_DATA &&
			 (img_r_data(r, buf) || memcmp(buf, sample_data[i], rec.data_len)))
			differs = 1;
		i++;
	}
	if (!ret && (differs || i != nsample || strcmp(img_r_hdr(r)->name, "scratch")))
		ret = -EDOM;
	img_r_free(r);
	return ret;
}

static unsigned char *img;  /* the sample image */
static size_t img_len;

/* The stream offsets at which records start (the last one is END's). */
static size_t bounds[64];
static int nbounds;

static void find_bounds(void)
{
	size_t at = sizeof(struct img_hdr);

	nbounds = 0;
	while (at < img_len) {
		struct img_rec_hdr rh;

		memcpy(&rh, img + at, sizeof(rh));
		bounds[nbounds++] = at;
		at += sizeof(rh) + rh.len;
	}
}

/* A memfd holding bytes p[0..n). */
static int fd_of(const void *p, size_t n)
{
	int fd = memfd_create("bad", 0);

	if (fd < 0 || write(fd, p, n) != (ssize_t)n || lseek(fd, 0, SEEK_SET))
		return -1;
	return fd;
}

/* Reading bytes p[0..n) fails with -EBADMSG and a message holding words. */
static int refused_with(const void *p, size_t n, const char *words)
{
	int fd = fd_of(p, n), ret;

	why[0] = 0;
	ret = read_back(fd);
	close(fd);
	if (ret != -EBADMSG || !strstr(why, words)) {
		fprintf(stderr, "  expected refusal '%s', got %d '%s'\n", words, ret, why);
		return 0;
	}
	return 1;
}

/* A copy of the image with its END checksum recomputed (structural checks alone). */
static unsigned char *resealed(unsigned char *c)
{
	size_t at = img_len - sizeof(uint64_t);
	uint64_t sum = XXH3_64bits(c, at);

	memcpy(c + at, &sum, sizeof(sum));
	return c;
}

static void t_round_trip(void)
{
	int fd = write_sample(&img_len);

	T(fd >= 0);
	TEQ(read_back(fd), 0);
	T(lseek(fd, 0, SEEK_SET) == 0);
	img = malloc(img_len);
	T(img && read(fd, img, img_len) == (ssize_t)img_len);
	close(fd);
	T(!memcmp(img, "HEAPFSIM", 8));
	find_bounds();
	TEQ(nbounds, nsample + 1);
	/* the hash covers every byte before the checksum field */
	uint64_t sum;
	memcpy(&sum, img + img_len - 8, 8);
	TEQ(sum, XXH3_64bits(img, img_len - 8));
}

/* The same stream through a pipe written in 1000-byte pieces (short reads everywhere). */
static void t_pipe(void)
{
	int p[2];
	pid_t pid;
	int status;

	T(img && pipe(p) == 0);
	pid = fork();
	T(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		for (size_t at = 0; at < img_len; at += 1000)
			if (write(p[1], img + at, img_len - at < 1000 ? img_len - at : 1000) < 0)
				_exit(1);
		_exit(0);
	}
	close(p[1]);
	TEQ(read_back(p[0]), 0);
	close(p[0]);
	T(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status));
}

static void t_truncated(void)
{
	T(img);
	T(refused_with(img, 0, "truncated"));
	T(refused_with(img, 100, "truncated"));
	for (int i = 0; i < nbounds; i++) {
		T(refused_with(img, bounds[i], "truncated"));
		T(refused_with(img, bounds[i] + 7, "truncated"));
		T(refused_with(img, bounds[i] + 20, "truncated"));
	}
	T(refused_with(img, img_len - 1, "truncated"));
}

static void t_bitflips(void)
{
	unsigned char *c = malloc(img_len);
	int n = 0;

	T(img && c);
	for (size_t bit = 3; bit < img_len * 8; bit += img_len * 8 / 300 + 1, n++) {
		memcpy(c, img, img_len);
		c[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		T(refused_with(c, img_len, ""));
	}
	/* and specifically a bit in file data, in a record header, in END */
	memcpy(c, img, img_len);
	c[img_len / 2] ^= 0x10;
	T(refused_with(c, img_len, "checksum mismatch"));
	T(n >= 300);
	free(c);
}

static void t_refusals(void)
{
	unsigned char *c = malloc(img_len + 8);
	struct img_hdr *h = (struct img_hdr *)c;
	size_t at;
	int fd;
	struct img_r *r;

	T(img && c);
#define FRESH() memcpy(c, img, img_len)
	/* (fields past the header are unaligned in the image: memcpy them) */
	FRESH();
	memcpy(c, "HEAPFSEG", 8);
	T(refused_with(c, img_len, "bad magic"));
	FRESH();
	h->version = 2;
	T(refused_with(c, img_len, "unsupported image version 2"));
	FRESH();
	h->heap_size = 3 << 20;
	T(refused_with(c, img_len, "bad image header"));
	FRESH();
	h->reserved[3] = 1;
	T(refused_with(c, img_len, "bad image header"));
	FRESH();
	h->name[h->name_len + 1] = 'x'; /* past the name: padding */
	T(refused_with(c, img_len, "bad image header"));
	/* wrong size: the caller's heap is not the image's */
	FRESH();
	fd = fd_of(c, img_len);
	TEQ(img_r_open(fd, HEAP_SIZE * 2, &r, why, sizeof(why)), -EBADMSG);
	T(strstr(why, "wrong size: the image holds a heap of 67108864 bytes, the heap is 134217728"));
	close(fd);
	/* per record: unknown type, flags, lengths */
	FRESH();
	at = bounds[2];
	memcpy(c + at + offsetof(struct img_rec_hdr, type), &(uint32_t){ 77 }, 4);
	T(refused_with(c, img_len, "unknown record type 77"));
	FRESH();
	memcpy(c + at + offsetof(struct img_rec_hdr, flags), &(uint32_t){ 1 }, 4);
	T(refused_with(c, img_len, "flags"));
	FRESH();
	memcpy(c + at + offsetof(struct img_rec_hdr, len), &(uint64_t){ 1ull << 40 }, 8);
	T(refused_with(c, img_len, "out of range"));
	FRESH();
	memcpy(c + at + offsetof(struct img_rec_hdr, len), &(uint64_t){ 4 }, 8);
	T(refused_with(c, img_len, "out of range"));
	/* a LINK whose name holds '/', with a valid checksum: the name check itself */
	FRESH();
	T(!memcmp(c + bounds[3] + 16 + sizeof(struct img_link), "sub", 3));
	c[bounds[3] + 16 + sizeof(struct img_link) + 1] = '/';
	T(refused_with(resealed(c), img_len, "LINK record: invalid name"));
	/* a LINK name length that disagrees with the record length */
	FRESH();
	memcpy(c + bounds[3] + 16 + offsetof(struct img_link, name_len), &(uint32_t){ 4 }, 4);
	T(refused_with(resealed(c), img_len, "payload of 27 bytes, its fields say 28"));
	/* a LINK name of length 0 */
	FRESH();
	memcpy(c + bounds[3] + 16 + offsetof(struct img_link, name_len), &(uint32_t){ 0 }, 4);
	T(refused_with(resealed(c), img_len, "LINK record: a length of 0 is out of range (1..255)"));
	/* a NUL inside an xattr name (record 1 is XATTR "user.void") */
	FRESH();
	c[bounds[1] + 16 + sizeof(struct img_xattr) + 2] = 0;
	T(refused_with(resealed(c), img_len, "XATTR record: invalid name"));
	/* END of another length */
	FRESH();
	memcpy(c + bounds[nbounds - 1] + 8, &(uint64_t){ 16 }, 8);
	T(refused_with(c, img_len, "END record of 16 bytes"));
	/* END counts */
	FRESH();
	memcpy(c + img_len - 24, &(uint64_t){ 3 }, 8);
	T(refused_with(resealed(c), img_len, "END counts 3 records"));
	/* bytes after END */
	FRESH();
	memset(c + img_len, 0, 8);
	T(refused_with(c, img_len + 8, "bytes after the END record"));
#undef FRESH
	free(c);
}

/* Offset in the image of the fixed part of its first record of this type. */
static size_t fixed_at(uint32_t type)
{
	for (int i = 0; i < nbounds; i++) {
		uint32_t t;

		memcpy(&t, img + bounds[i], sizeof(t));
		if (t == type)
			return bounds[i] + sizeof(struct img_rec_hdr);
	}
	abort();
}

/* Set a field of the first record of type in a copy of the image (fields are unaligned). */
#define PATCH(c, type, st, field, v)                                                     \
	do {                                                                             \
		__typeof__(((struct st *)0)->field) v_ = (v);                             \
		memcpy((c) + fixed_at(type) + offsetof(struct st, field), &v_, sizeof(v_)); \
	} while (0)

/* Records whose fields say impossible things, each with a valid checksum: kinds against
 * modes, sizes and DATA ends that wrap or pass an off_t or the heap, flags, masks; and
 * headers whose heap_size disagrees with min_order or passes the largest heap. */
static void t_field_refusals(void)
{
	unsigned char *c = malloc(img_len);
	struct img_hdr *h = (struct img_hdr *)c;
	int fd;

	T(img && c);
#define FRESH() memcpy(c, img, img_len)
	FRESH();
	PATCH(c, IMG_INODE, img_inode, kind, IMG_K_REG); /* the root: a directory's mode */
	T(refused_with(resealed(c), img_len, "INODE record: kind 1 and mode 040755 disagree"));
	FRESH();
	PATCH(c, IMG_INODE, img_inode, kind, 9);
	T(refused_with(resealed(c), img_len, "INODE record: kind 9 and mode 040755 disagree"));
	FRESH();
	PATCH(c, IMG_INODE, img_inode, size, 1ull << 63);
	T(refused_with(resealed(c), img_len, "INODE record: size 9223372036854775808 out of"));
	FRESH();
	PATCH(c, IMG_INODE, img_inode, size, HEAP_SIZE + 1);
	T(refused_with(resealed(c), img_len, "size 67108865 past the heap (67108864 bytes)"));
	/* the first DATA record holds IMG_DATA_MAX bytes: its end wraps past 2^64 */
	FRESH();
	PATCH(c, IMG_DATA, img_data, off, UINT64_MAX - 100);
	T(refused_with(resealed(c), img_len, "DATA record: offset 18446744073709551515 + "
		       "1048576 bytes out of range"));
	FRESH();
	PATCH(c, IMG_DATA, img_data, off, (uint64_t)INT64_MAX - IMG_DATA_MAX + 1);
	T(refused_with(resealed(c), img_len, "out of range"));
	FRESH();
	PATCH(c, IMG_DATA, img_data, off, HEAP_SIZE - IMG_DATA_MAX + 1);
	T(refused_with(resealed(c), img_len, "+ 1048576 bytes past the heap (67108864 bytes)"));
	FRESH();
	PATCH(c, IMG_TRUNCATE, img_truncate, size, UINT64_MAX);
	T(refused_with(resealed(c), img_len, "TRUNCATE record: size 18446744073709551615 out"));
	FRESH();
	PATCH(c, IMG_TRUNCATE, img_truncate, size, 2 * HEAP_SIZE);
	T(refused_with(resealed(c), img_len, "size 134217728 past the heap"));
	FRESH();
	PATCH(c, IMG_RENAME, img_rename, flags, 3); /* NOREPLACE and EXCHANGE */
	T(refused_with(resealed(c), img_len, "RENAME record: flags 0x3"));
	FRESH();
	PATCH(c, IMG_SETATTR, img_setattr, mask, IMG_SET_MODE | 0x80);
	T(refused_with(resealed(c), img_len, "SETATTR record: mask 0x81"));
	FRESH();
	PATCH(c, IMG_SETATTR, img_setattr, mask, IMG_SET_SIZE);
	PATCH(c, IMG_SETATTR, img_setattr, size, 1ull << 63);
	T(refused_with(resealed(c), img_len, "SETATTR record: size 9223372036854775808 out"));
	FRESH();
	PATCH(c, IMG_SETATTR, img_setattr, mask, IMG_SET_SIZE);
	PATCH(c, IMG_SETATTR, img_setattr, size, HEAP_SIZE + 4096);
	T(refused_with(resealed(c), img_len, "past the heap"));
	/* an extents heap's files are sparse: a size or DATA past the heap is any file's */
	FRESH();
	h->layout = 0;
	PATCH(c, IMG_TRUNCATE, img_truncate, size, 2 * HEAP_SIZE);
	PATCH(c, IMG_DATA, img_data, off, 5 * HEAP_SIZE);
	fd = fd_of(resealed(c), img_len);
	TEQ(read_back(fd), -EDOM); /* read whole, and not the records written */
	close(fd);
	/* a PUNCH that is empty or whose end passes an off_t */
	FRESH();
	PATCH(c, IMG_PUNCH, img_punch, len, 0);
	T(refused_with(resealed(c), img_len, "PUNCH record: offset 10 + 0 bytes out of range"));
	FRESH();
	PATCH(c, IMG_PUNCH, img_punch, len, (uint64_t)INT64_MAX - 9);
	T(refused_with(resealed(c), img_len, "PUNCH record: offset 10 + 9223372036854775798"));
	FRESH();
	PATCH(c, IMG_SETATTR, img_setattr, size, 1ull << 63); /* no SIZE in the mask: unused */
	fd = fd_of(resealed(c), img_len);
	TEQ(read_back(fd), -EDOM);
	close(fd);
	/* heap_size below one min_block, and past the largest heap */
	FRESH();
	h->heap_size = 2048;
	T(refused_with(resealed(c), img_len, "bad image header"));
	FRESH();
	h->heap_size = 2ull << IMG_HEAP_MAX_ORDER;
	T(refused_with(resealed(c), img_len, "bad image header"));
#undef FRESH
	free(c);
}

/* One record in memory (the link's messages): decoded as the reader reads it, refused
 * when its lengths disagree with the message's or its fields are impossible. */
static void t_decode(void)
{
	static char str[IMG_REC_STR];
	unsigned char msg[IMG_REC_HDR + 64], hdrb[IMG_REC_HDR];
	struct img_data d = { 3, 4096 };
	struct img_xattr x = { 3, 6, 3 };
	struct img_rec rec;
	const void *bytes;
	struct iovec iov[4];
	size_t len;
	int n;

#define FLAT(type, fixed, t0, l0, t1, l1)                                              \
	do {                                                                           \
		n = img_rec_iov(hdrb, type, fixed, t0, l0, t1, l1, iov);               \
		len = 0;                                                               \
		for (int k = 0; k < n; k++, len += iov[k - 1].iov_len)                 \
			memcpy(msg + len, iov[k].iov_base, iov[k].iov_len);            \
	} while (0)
	FLAT(IMG_DATA, &d, "hello", 5, NULL, 0);
	TEQ(img_rec_decode(msg, len, &rec, &bytes, str, why, sizeof(why)), 0);
	T(rec.type == IMG_DATA && rec.data_len == 5 && bytes == msg + len - 5);
	TEQ(img_rec_decode(msg, len - 1, &rec, &bytes, str, why, sizeof(why)), -EBADMSG);
	T(strstr(why, "record length 21 in a message of 36 bytes"));
	TEQ(img_rec_decode(msg, 10, &rec, &bytes, str, why, sizeof(why)), -EBADMSG);
	T(strstr(why, "a record of 10 bytes"));
	d.off = UINT64_MAX - 2; /* off + 5 wraps */
	FLAT(IMG_DATA, &d, "hello", 5, NULL, 0);
	TEQ(img_rec_decode(msg, len, &rec, &bytes, str, why, sizeof(why)), -EBADMSG);
	T(strstr(why, "DATA record: offset 18446744073709551613 + 5 bytes out of range"));
	FLAT(IMG_XATTR, &x, "user.k", 6, xval, 3);
	TEQ(img_rec_decode(msg, len, &rec, &bytes, str, why, sizeof(why)), 0);
	T(!strcmp(rec.s1, "user.k") && !memcmp(rec.s2, xval, 3) && rec.s2[3] == 0);
	x.value_len = 4; /* one byte more than the message holds */
	FLAT(IMG_XATTR, &x, "user.k", 6, xval, 3);
	memcpy(msg + 8, &(uint64_t){ 16 + 6 + 4 }, 8);
	TEQ(img_rec_decode(msg, len, &rec, &bytes, str, why, sizeof(why)), -EBADMSG);
	memcpy(msg, &(uint32_t){ IMG_END }, 4);
	TEQ(img_rec_decode(msg, len, &rec, &bytes, str, why, sizeof(why)), -EBADMSG);
	T(strstr(why, "unknown record type 65535"));
#undef FLAT
}

/* The writer refuses bad records with -EINVAL and writes none of their bytes. */
static void t_writer_refusals(void)
{
	int fd = memfd_create("w", 0);
	struct img_w *w = NULL;
	struct img_hdr bad = hdr;
	char longname[300];
	struct img_rec rec;
	struct img_r *r = NULL;
	int n = 0;

	T(fd >= 0);
	bad.heap_size = 1000;
	TEQ(img_w_open(fd, &bad, &w), -EINVAL);
	bad.heap_size = 2048; /* below one min_block (4K) */
	TEQ(img_w_open(fd, &bad, &w), -EINVAL);
	bad.heap_size = 2ull << IMG_HEAP_MAX_ORDER;
	TEQ(img_w_open(fd, &bad, &w), -EINVAL);
	bad = hdr;
	bad.min_order = 21;
	TEQ(img_w_open(fd, &bad, &w), -EINVAL);
	bad = hdr;
	memcpy(bad.name, "a/b", 4);
	TEQ(img_w_open(fd, &bad, &w), -EINVAL);
	TEQ(img_w_open(fd, &hdr, &w), 0);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	TEQ(img_w_link(w, 1, 2, "a/b"), -EINVAL);
	TEQ(img_w_link(w, 1, 2, ""), -EINVAL);
	TEQ(img_w_link(w, 1, 2, ".."), -EINVAL);
	TEQ(img_w_link(w, 1, 2, longname), -EINVAL);
	TEQ(img_w_unlink(w, 1, "."), -EINVAL);
	TEQ(img_w_rename(w, 1, "ok", 1, "no/", 0), -EINVAL);
	TEQ(img_w_symlink(w, 1, ""), -EINVAL);
	{
		char *target = malloc(IMG_SYMLINK_MAX + 2);

		T(target);
		memset(target, 't', IMG_SYMLINK_MAX + 1);
		target[IMG_SYMLINK_MAX + 1] = 0;
		TEQ(img_w_symlink(w, 1, target), -EINVAL); /* 4096 bytes */
		target[IMG_SYMLINK_MAX] = 0;
		TEQ(img_w_symlink(w, 1, target), 0);       /* 4095: the longest */
		free(target);
	}
	TEQ(img_w_xattr(w, 1, longname, "v", 1), -EINVAL);
	TEQ(img_w_removexattr(w, 1, ""), -EINVAL);
	TEQ(img_w_rename(w, 1, "..", 1, "ok", 0), -EINVAL);
	TEQ(img_w_xattr(w, 1, "", "v", 1), -EINVAL);
	TEQ(img_w_xattr(w, 1, "user.big", big, IMG_XATTR_MAX + 1), -EINVAL);
	/* fields the reader refuses: kinds against modes, ends past an off_t, flags */
	TEQ(img_w_inode(w, &(struct img_inode){ .id = 2, .kind = IMG_K_DIR, .mode = 0100644 }),
	    -EINVAL);
	TEQ(img_w_inode(w, &(struct img_inode){ .id = 2, .kind = IMG_K_SPECIAL, .mode = 0644 }),
	    -EINVAL);
	TEQ(img_w_data(w, 2, UINT64_MAX - 3, "abcd", 4), -EINVAL);
	TEQ(img_w_truncate(w, 2, 1ull << 63), -EINVAL);
	TEQ(img_w_rename(w, 1, "a", 1, "b", 4), -EINVAL);
	TEQ(img_w_setattr(w, &(struct img_setattr){ .id = 2, .mask = 1u << 7 }), -EINVAL);
	TEQ(img_w_link(w, 1, 2, "fine"), 0);
	TEQ(img_w_data(w, 2, 0, big, 0), 0); /* nothing to write */
	TEQ(img_w_finish(w), 0);
	img_w_free(w);
	T(lseek(fd, 0, SEEK_SET) == 0);
	TEQ(img_r_open(fd, 0, &r, why, sizeof(why)), 0);
	while (img_r_next(r, &rec) == 1) {
		n++;
		T((rec.type == IMG_SYMLINK && strlen(rec.s1) == IMG_SYMLINK_MAX) ||
		  (rec.type == IMG_LINK && !strcmp(rec.s1, "fine")));
	}
	TEQ(img_r_next(r, &rec), 0); /* END verified: none of the refused bytes went out */
	TEQ(n, 2);
	img_r_free(r);
	close(fd);
}

/* A read error is -errno, not a refusal. */
static void t_read_error(void)
{
	int fd = open("/dev/null", O_WRONLY);
	struct img_r *r = NULL;

	T(fd >= 0);
	TEQ(img_r_open(fd, 0, &r, why, sizeof(why)), -EBADF);
	T(r == NULL);
	close(fd);
}

/* A write error (a read-only fd) is reported and sticks. */
static void t_write_error(void)
{
	int fd = open("/dev/null", O_RDONLY);
	struct img_w *w = NULL;

	T(fd >= 0);
	TEQ(img_w_open(fd, &hdr, &w), 0);
	TEQ(img_w_data(w, 3, 0, big, BIG), -EBADF); /* the direct writes fail at once */
	TEQ(img_w_link(w, 1, 2, "x"), -EBADF);
	TEQ(img_w_finish(w), -EBADF);
	img_w_free(w);
	close(fd);
}

int main(void)
{
	big = malloc(BIG);
	if (!big)
		return 1;
	make_sample();
	RUN(t_round_trip);
	RUN(t_pipe);
	RUN(t_truncated);
	RUN(t_bitflips);
	RUN(t_refusals);
	RUN(t_field_refusals);
	RUN(t_decode);
	RUN(t_writer_refusals);
	RUN(t_write_error);
	RUN(t_read_error);
	free(img);
	free(big);
	return tc_failed != 0;
}
