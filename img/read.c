/*
 * read.c — the heap image stream reader (docs/IMAGE.md, "The heap image stream").
 *
 * How: one pass over the fd through a bounded buffer (1 MiB plus one largest non-DATA
 * record), filled with reads of what the next record needs plus 64 KiB: img_r_next parses a record header and its fixed part, checks the type, the
 * lengths against rec.c's limits and the names, and hands back the record; a DATA
 * record's bytes are then copied by img_r_data straight into the caller's memory (what is
 * already buffered, then read() into the destination).  Every byte goes through the
 * XXH3-64 state as it is consumed; END's counts and checksum are compared, and nothing
 * may follow END.  Any refusal is -EBADMSG with the reason (and byte position) in the
 * caller's why buffer, and the reader only fails from then on.  The caller applies
 * records as they come but must treat the image as valid only once img_r_next returned 0
 * (a restore builds into a fresh heap and discards it on failure: never half a heap).
 *
 * Locking: none; one reader is used by one thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img_i.h"

#define R_CAP (IMG_BUF_SIZE + IMG_REC_MAX + 64)
#define R_AHEAD (64u << 10) /* read-ahead beyond the bytes a record needs now */

struct img_r {
	int fd;
	int err;          /* first error; sticky */
	bool done;        /* END verified */
	char *why;
	size_t whylen;
	unsigned char *buf;
	size_t pos, end;  /* unread bytes are buf[pos..end) */
	uint64_t off;     /* stream offset of buf[pos] */
	uint64_t nrec;
	uint32_t data_left; /* of the current DATA record */
	struct img_hdr h;
	char str[IMG_REC_MAX + 2]; /* the current record's tails, NUL-terminated */
	XXH3_state_t st;
};

static int r_fail(struct img_r *r, int err)
{
	if (!r->err)
		r->err = err;
	return r->err;
}

#define REFUSE(r, ...) r_fail(r, img_refuse((r)->why, (r)->whylen, __VA_ARGS__))

static int r_truncated(struct img_r *r, uint64_t at)
{
	return REFUSE(r, "truncated: the image ends at byte %llu, before its END record",
		      (unsigned long long)at);
}

/* read() what is there, up to n bytes into p: the count (0 at EOF) or -errno. */
static ssize_t r_read(struct img_r *r, void *p, size_t n)
{
	ssize_t got;

	do
		got = read(r->fd, p, n);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return r_fail(r, -errno);
	return got;
}

/* Make n bytes contiguous at buf[pos]; EOF first is truncation. */
static int r_need(struct img_r *r, size_t n)
{
	if (r->err)
		return r->err;
	if (R_CAP - r->pos < n) {
		memmove(r->buf, r->buf + r->pos, r->end - r->pos);
		r->end -= r->pos;
		r->pos = 0;
	}
	while (r->end - r->pos < n) {
		/* a modest read past what is needed, so that most DATA bytes are left for
		 * img_r_data to read straight into their destination */
		size_t want = n - (r->end - r->pos) + R_AHEAD;
		ssize_t got = r_read(r, r->buf + r->end,
				     want < R_CAP - r->end ? want : R_CAP - r->end);

		if (got < 0)
			return (int)got;
		if (got == 0)
			return r_truncated(r, r->off + (r->end - r->pos));
		r->end += (size_t)got;
	}
	return 0;
}

/* Consume n buffered bytes (hashed unless they are the checksum field). */
static const void *r_take(struct img_r *r, size_t n, bool hash)
{
	const void *p = r->buf + r->pos;

	if (hash)
		XXH3_64bits_update(&r->st, p, n);
	r->pos += n;
	r->off += n;
	return p;
}

static int check_hdr(struct img_r *r, uint64_t expect)
{
	const struct img_hdr *h = &r->h;

	if (memcmp(h->magic, IMG_MAGIC, 8))
		return REFUSE(r, "not a heapfs heap image (bad magic)");
	if (h->version != IMG_VERSION)
		return REFUSE(r, "unsupported image version %u (this reader knows %u)",
			      h->version, IMG_VERSION);
	if (h->hdr_size != sizeof(*h) || h->flags || h->layout > 1 ||
	    !img_zero(h->reserved, sizeof(h->reserved)) ||
	    !img_heap_size_ok(h->heap_size, h->min_order) ||
	    h->name_len > IMG_NAME_MAX || !img_name_ok(h->name, h->name_len) ||
	    !img_zero(h->name + h->name_len, sizeof(h->name) - h->name_len))
		return REFUSE(r, "bad image header (fields out of range)");
	if (expect && h->heap_size != expect)
		return REFUSE(r, "wrong size: the image holds a heap of %llu bytes, the heap "
			      "is %llu", (unsigned long long)h->heap_size,
			      (unsigned long long)expect);
	return 0;
}

int img_r_open(int fd, uint64_t expect_size, struct img_r **out, char *why, size_t whylen)
{
	struct img_r *r = calloc(1, sizeof(*r));
	int ret = -ENOMEM;

	if (!r)
		return -ENOMEM;
	r->buf = malloc(R_CAP);
	if (!r->buf)
		goto fail;
	r->fd = fd;
	r->why = why;
	r->whylen = whylen;
	XXH3_64bits_reset(&r->st);
	ret = r_need(r, sizeof(r->h));
	if (ret)
		goto fail;
	memcpy(&r->h, r_take(r, sizeof(r->h), true), sizeof(r->h));
	ret = check_hdr(r, expect_size);
	if (ret)
		goto fail;
	*out = r;
	return 0;
fail:
	img_r_free(r);
	return ret;
}

void img_r_free(struct img_r *r)
{
	if (r)
		free(r->buf);
	free(r);
}

const struct img_hdr *img_r_hdr(const struct img_r *r)
{
	return &r->h;
}

/* A size or a DATA record's end past the heap of a contiguous layout: no file of this
 * heap can hold it (the daemon refuses such a write or truncate with EFBIG), so no image
 * of it says it.  An extents heap's files are sparse: any off_t (check_fields). */
static int r_in_heap(struct img_r *r, const struct img_rec *rec, uint64_t start)
{
	uint64_t hs = r->h.heap_size, size = 0;

	if (r->h.layout != 1)
		return 0;

	switch (rec->type) {
	case IMG_DATA:
		if (rec->data_len > hs || rec->u.data.off > hs - rec->data_len)
			return REFUSE(r, "DATA record at byte %llu: offset %llu + %u bytes past the "
				      "heap (%llu bytes)", (unsigned long long)start,
				      (unsigned long long)rec->u.data.off, rec->data_len,
				      (unsigned long long)hs);
		return 0;
	case IMG_INODE:
		size = rec->u.inode.size;
		break;
	case IMG_TRUNCATE:
		size = rec->u.truncate.size;
		break;
	case IMG_SETATTR:
		size = rec->u.setattr.mask & IMG_SET_SIZE ? rec->u.setattr.size : 0;
		break;
	}
	if (size > hs)
		return REFUSE(r, "record at byte %llu: size %llu past the heap (%llu bytes)",
			      (unsigned long long)start, (unsigned long long)size,
			      (unsigned long long)hs);
	return 0;
}

/* END: counts, checksum, and nothing after it. */
static int r_end(struct img_r *r, uint64_t start, uint64_t len)
{
	struct img_end e;
	uint64_t sum;
	char extra;

	if (len != sizeof(e))
		return REFUSE(r, "END record of %llu bytes", (unsigned long long)len);
	if (r_need(r, sizeof(e)))
		return r->err;
	memcpy(&e, r_take(r, offsetof(struct img_end, checksum), true),
	       offsetof(struct img_end, checksum));
	sum = XXH3_64bits_digest(&r->st);
	memcpy(&e.checksum, r_take(r, sizeof(e.checksum), false), sizeof(e.checksum));
	if (e.checksum != sum)
		return REFUSE(r, "checksum mismatch (corrupt image)");
	if (e.nrecords != r->nrec || e.nbytes != start)
		return REFUSE(r, "END counts %llu records in %llu bytes, the image has %llu in "
			      "%llu", (unsigned long long)e.nrecords, (unsigned long long)e.nbytes,
			      (unsigned long long)r->nrec, (unsigned long long)start);
	if (r->pos < r->end || r_read(r, &extra, 1) != 0)
		return r->err ? r->err : REFUSE(r, "bytes after the END record");
	r->done = true;
	return 0;
}

int img_r_next(struct img_r *r, struct img_rec *rec)
{
	const struct img_shape *sh;
	struct img_rec_hdr rh;
	const char *t[2];
	uint32_t tl[2];
	uint64_t start;
	int ret;

	if (r->data_left && (ret = img_r_data(r, NULL)))
		return ret;
	if (r->err || r->done)
		return r->err;
	start = r->off;
	if (r_need(r, sizeof(rh)))
		return r->err;
	memcpy(&rh, r_take(r, sizeof(rh), true), sizeof(rh));
	if (rh.type == IMG_END)
		return r_end(r, start, rh.len);
	sh = img_shape(rh.type);
	if (!sh)
		return REFUSE(r, "unknown record type %u at byte %llu", rh.type,
			      (unsigned long long)start);
	if (rh.flags)
		return REFUSE(r, "record at byte %llu has flags %#x (none defined)",
			      (unsigned long long)start, rh.flags);
	if (rh.len < sh->fixed ||
	    rh.len > sh->fixed + (rh.type == IMG_DATA ? IMG_DATA_MAX : IMG_REC_MAX))
		return REFUSE(r, "record at byte %llu: length %llu out of range",
			      (unsigned long long)start, (unsigned long long)rh.len);
	if (r_need(r, sh->fixed))
		return r->err;
	memset(rec, 0, sizeof(*rec));
	rec->type = rh.type;
	memcpy(&rec->u, r_take(r, sh->fixed, true), sh->fixed);
	if (img_rec_layout(rh.type, &rec->u, rh.len, tl, r->why, r->whylen))
		return r_fail(r, -EBADMSG);
	r->nrec++;
	if (rh.type == IMG_DATA) {
		rec->data_len = tl[0];
		if (r_in_heap(r, rec, start))
			return r->err;
		r->data_left = tl[0];
		return 1;
	}
	if (r_in_heap(r, rec, start))
		return r->err;
	if (r_need(r, (size_t)tl[0] + tl[1]))
		return r->err;
	memcpy(r->str, r_take(r, tl[0], true), tl[0]);
	r->str[tl[0]] = 0;
	memcpy(r->str + tl[0] + 1, r_take(r, tl[1], true), tl[1]);
	r->str[tl[0] + 1 + tl[1]] = 0;
	t[0] = rec->s1 = r->str;
	t[1] = rec->s2 = r->str + tl[0] + 1;
	if (img_rec_tails(rh.type, t, tl, r->why, r->whylen))
		return r_fail(r, -EBADMSG);
	return 1;
}

int img_r_data(struct img_r *r, void *dst)
{
	while (!r->err && r->data_left) {
		size_t have = r->end - r->pos, n;

		if (!have && dst && r->data_left >= IMG_DIRECT_MIN) {
			/* large and nothing buffered: read into the destination itself */
			ssize_t got = r_read(r, dst, r->data_left);

			if (got == 0)
				return r_truncated(r, r->off);
			if (got < 0)
				return (int)got;
			XXH3_64bits_update(&r->st, dst, (size_t)got);
			r->off += (uint64_t)got;
			n = (size_t)got;
		} else {
			if (!have && r_need(r, 1))
				return r->err;
			have = r->end - r->pos;
			n = have < r->data_left ? have : r->data_left;
			if (dst)
				memcpy(dst, r->buf + r->pos, n);
			r_take(r, n, true);
		}
		r->data_left -= (uint32_t)n;
		if (dst)
			dst = (char *)dst + n;
	}
	return r->err;
}
