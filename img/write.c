/*
 * write.c — the heap image stream writer (docs/IMAGE.md, "The heap image stream").
 *
 * How: one streaming pass.  Bytes collect in a 1 MiB buffer that goes out with one
 * write() when full; DATA bytes of 64 KiB or more go straight from the caller's memory
 * with one writev() beside the buffered record header (no copy).  Every byte passes
 * through the XXH3-64 state on its way, so the END trailer costs nothing extra.  Each
 * record is validated with rec.c's rules before any of it is written; an I/O error makes
 * the writer fail from then on (the caller discards the temporary file).
 *
 * Locking: none; one writer is used by one thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "img_i.h"

struct img_w {
	int fd;
	int err;          /* first error; sticky */
	unsigned char *buf;
	size_t len;       /* bytes in buf */
	uint64_t nrec;    /* records written, END excluded */
	uint64_t nbytes;  /* bytes written (or buffered) so far */
	XXH3_state_t st;
};

int img_writev_all(int fd, struct iovec *iov, int n)
{
	while (n) {
		ssize_t got = writev(fd, iov, n);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		while (n && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (char *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}

/* Send the buffer, and then (if any) the caller's bytes p[0..n). */
static int w_flush(struct img_w *w, const void *p, size_t n)
{
	struct iovec iov[2] = { { w->buf, w->len }, { (void *)p, n } };
	int ret = w->err ? w->err : img_writev_all(w->fd, iov, n ? 2 : 1);

	w->len = 0;
	if (ret)
		w->err = ret;
	return ret;
}

/* Append bytes to the stream (hash is false only for the checksum field itself). */
static int w_put(struct img_w *w, const void *p, size_t n, bool hash)
{
	if (hash)
		XXH3_64bits_update(&w->st, p, n);
	w->nbytes += n;
	if (n >= IMG_DIRECT_MIN)
		return w_flush(w, p, n);
	while (n) {
		size_t k = IMG_BUF_SIZE - w->len < n ? IMG_BUF_SIZE - w->len : n;

		memcpy(w->buf + w->len, p, k);
		w->len += k;
		p = (const char *)p + k;
		n -= k;
		if (w->len == IMG_BUF_SIZE && w_flush(w, NULL, 0))
			return w->err;
	}
	return w->err;
}

/* One record: header, fixed part, tails t[0], t[1] (lengths already in the fixed part, or
 * the rest of the payload).  Refused with -EINVAL before anything is written. */
static int w_rec(struct img_w *w, uint32_t type, const void *fixed, const void *t0,
		 uint32_t l0, const void *t1, uint32_t l1)
{
	const struct img_shape *sh = img_shape(type);
	const char *t[2] = { t0, t1 };
	uint32_t tl[2] = { l0, l1 }, chk[2];
	struct img_rec_hdr rh = { type, 0, sh->fixed + (uint64_t)l0 + l1 };

	if (w->err)
		return w->err;
	if (img_rec_layout(type, fixed, rh.len, chk, NULL, 0) ||
	    memcmp(chk, tl, sizeof(tl)) || img_rec_tails(type, t, tl, NULL, 0))
		return -EINVAL;
	w_put(w, &rh, sizeof(rh), true);
	w_put(w, fixed, sh->fixed, true);
	for (int i = 0; i < 2; i++)
		if (tl[i])
			w_put(w, t[i], tl[i], true);
	w->nrec++;
	return w->err;
}

int img_w_unchecked(struct img_w *w, uint32_t type, const void *payload, uint32_t len)
{
	struct img_rec_hdr rh = { type, 0, len };

	if (w->err)
		return w->err;
	w_put(w, &rh, sizeof(rh), true);
	if (len)
		w_put(w, payload, len, true);
	w->nrec++;
	return w->err;
}

int img_w_open(int fd, const struct img_hdr *h, struct img_w **out)
{
	struct img_w *w = calloc(1, sizeof(*w));
	struct img_hdr hd = { .magic = IMG_MAGIC, .version = IMG_VERSION,
			      .hdr_size = sizeof(hd), .heap_size = h->heap_size,
			      .min_order = h->min_order, .layout = h->layout };
	size_t nl = strnlen(h->name, sizeof(h->name));
	int ret = -EINVAL;

	if (!w)
		return -ENOMEM;
	if (!img_name_ok(h->name, nl) || !img_heap_size_ok(h->heap_size, h->min_order) ||
	    h->layout > 1 || h->flags)
		goto fail;
	memcpy(hd.name, h->name, nl);
	hd.name_len = (uint32_t)nl;
	ret = -ENOMEM;
	w->buf = malloc(IMG_BUF_SIZE);
	if (!w->buf)
		goto fail;
	w->fd = fd;
	XXH3_64bits_reset(&w->st);
	w_put(w, &hd, sizeof(hd), true);
	*out = w;
	return 0;
fail:
	img_w_free(w);
	return ret;
}

void img_w_free(struct img_w *w)
{
	if (w)
		free(w->buf);
	free(w);
}

int img_w_inode(struct img_w *w, const struct img_inode *in)
{
	struct img_inode c = *in;

	c.pad = 0;
	return w_rec(w, IMG_INODE, &c, NULL, 0, NULL, 0);
}

int img_w_link(struct img_w *w, uint64_t parent, uint64_t child, const char *name)
{
	struct img_link l = { parent, child, (uint32_t)strlen(name), 0 };

	return w_rec(w, IMG_LINK, &l, name, l.name_len, NULL, 0);
}

int img_w_data(struct img_w *w, uint64_t id, uint64_t off, const void *buf, uint64_t len)
{
	int ret = 0;

	while (!ret && len) {
		uint32_t n = len > IMG_DATA_MAX ? IMG_DATA_MAX : (uint32_t)len;
		struct img_data d = { id, off };

		ret = w_rec(w, IMG_DATA, &d, buf, n, NULL, 0);
		buf = (const char *)buf + n;
		off += n;
		len -= n;
	}
	return ret;
}

int img_w_symlink(struct img_w *w, uint64_t id, const char *target)
{
	struct img_symlink s = { id };
	size_t n = strlen(target);

	return n > IMG_SYMLINK_MAX ? -EINVAL : w_rec(w, IMG_SYMLINK, &s, target, (uint32_t)n,
						       NULL, 0);
}

int img_w_xattr(struct img_w *w, uint64_t id, const char *name, const void *value,
		uint32_t value_len)
{
	struct img_xattr x = { id, (uint32_t)strlen(name), value_len };

	return w_rec(w, IMG_XATTR, &x, name, x.name_len, value, value_len);
}

int img_w_truncate(struct img_w *w, uint64_t id, uint64_t size)
{
	struct img_truncate t = { id, size };

	return w_rec(w, IMG_TRUNCATE, &t, NULL, 0, NULL, 0);
}

int img_w_punch(struct img_w *w, uint64_t id, uint64_t off, uint64_t len)
{
	struct img_punch p = { id, off, len };

	return w_rec(w, IMG_PUNCH, &p, NULL, 0, NULL, 0);
}

int img_w_rename(struct img_w *w, uint64_t old_parent, const char *old_name,
		 uint64_t new_parent, const char *new_name, uint32_t flags)
{
	struct img_rename r = { old_parent, new_parent, (uint32_t)strlen(old_name),
				(uint32_t)strlen(new_name), flags, 0 };

	return w_rec(w, IMG_RENAME, &r, old_name, r.old_len, new_name, r.new_len);
}

int img_w_unlink(struct img_w *w, uint64_t parent, const char *name)
{
	struct img_unlink u = { parent, (uint32_t)strlen(name), 0 };

	return w_rec(w, IMG_UNLINK, &u, name, u.name_len, NULL, 0);
}

int img_w_setattr(struct img_w *w, const struct img_setattr *sa)
{
	return w_rec(w, IMG_SETATTR, sa, NULL, 0, NULL, 0);
}

int img_w_removexattr(struct img_w *w, uint64_t id, const char *name)
{
	struct img_removexattr x = { id, (uint32_t)strlen(name), 0 };

	return w_rec(w, IMG_REMOVEXATTR, &x, name, x.name_len, NULL, 0);
}

int img_w_redirect(struct img_w *w, int fd)
{
	int ret = w_flush(w, NULL, 0);

	w->fd = fd;
	return ret;
}

int img_w_finish(struct img_w *w)
{
	struct img_rec_hdr rh = { IMG_END, 0, sizeof(struct img_end) };
	struct img_end e = { w->nrec, w->nbytes, 0 };

	w_put(w, &rh, sizeof(rh), true);
	w_put(w, &e, offsetof(struct img_end, checksum), true);
	e.checksum = XXH3_64bits_digest(&w->st);
	w_put(w, &e.checksum, sizeof(e.checksum), false);
	return w_flush(w, NULL, 0);
}
