/*
 * mem.c — one change record in memory, for the replication link: the same bytes a record
 * has in the heap image stream (16-byte header, fixed part, tails; docs/IMAGE.md
 * "Records"), gathered as iovecs by the sender (a DATA record's bytes are not copied) and
 * checked by the receiver with the rules the stream reader applies (rec.c), so a peer's
 * message is trusted exactly as far as an image file is.  Pure functions; no locking.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "img_i.h"

_Static_assert(sizeof(struct img_rec_hdr) == IMG_REC_HDR, "record header");

int img_rec_iov(void *hdr, uint32_t type, const void *fixed, const void *t0, uint32_t l0,
		const void *t1, uint32_t l1, struct iovec *iov)
{
	const struct img_shape *sh = img_shape(type);
	struct img_rec_hdr rh = { .type = type };
	int n = 0;

	if (!sh)
		return -EINVAL;
	rh.len = (uint64_t)sh->fixed + l0 + l1;
	memcpy(hdr, &rh, sizeof(rh));
	iov[n++] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(rh) };
	iov[n++] = (struct iovec){ .iov_base = (void *)fixed, .iov_len = sh->fixed };
	if (l0)
		iov[n++] = (struct iovec){ .iov_base = (void *)t0, .iov_len = l0 };
	if (l1)
		iov[n++] = (struct iovec){ .iov_base = (void *)t1, .iov_len = l1 };
	return n;
}

int img_rec_decode(const void *buf, size_t len, struct img_rec *rec, const void **data,
		   char str[IMG_REC_STR], char *why, size_t whylen)
{
	const char *p = buf;
	const struct img_shape *sh;
	struct img_rec_hdr rh;
	const char *t[2];
	uint32_t tl[2];

	if (len < sizeof(rh))
		return img_refuse(why, whylen, "a record of %zu bytes", len);
	memcpy(&rh, p, sizeof(rh));
	sh = img_shape(rh.type);
	if (!sh || rh.flags)
		return img_refuse(why, whylen, "unknown record type %u", rh.type);
	if (rh.len != len - sizeof(rh) || rh.len < sh->fixed)
		return img_refuse(why, whylen, "record length %llu in a message of %zu bytes",
				  (unsigned long long)rh.len, len);
	memset(rec, 0, sizeof(*rec));
	rec->type = rh.type;
	memcpy(&rec->u, p + sizeof(rh), sh->fixed);
	if (img_rec_layout(rh.type, &rec->u, rh.len, tl, why, whylen))
		return -EBADMSG;
	p += sizeof(rh) + sh->fixed;
	*data = NULL;
	if (rh.type == IMG_DATA) {
		rec->data_len = tl[0];
		*data = p;
		return 0;
	}
	/* the tails NUL-terminated, as the stream reader hands them out */
	memcpy(str, p, tl[0]);
	str[tl[0]] = 0;
	memcpy(str + tl[0] + 1, p + tl[0], tl[1]);
	str[tl[0] + 1 + tl[1]] = 0;
	t[0] = rec->s1 = str;
	t[1] = rec->s2 = str + tl[0] + 1;
	return img_rec_tails(rh.type, t, tl, why, whylen);
}
