/*
 * out.c — the owner's records out: every change to an owned heap leaves as one image
 * change record, logged until the partner acknowledges it (repl.c, "One mutation path").
 * Locking: repl.c's opening comment.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/uio.h>

#include <jansson.h>
#include <xxhash.h>

#include "repl_i.h"

/* ---- the owner: records out ------------------------------------------------------- */

void pend_pop(struct hfs_repl_heap *r)
{
	struct pend *p = r->pend;

	r->pend = p->next;
	if (!r->pend)
		r->pend_tail = &r->pend;
	r->log_bytes -= p->len;
	free(p);
}

void pend_drop(struct hfs_repl_heap *r)
{
	while (r->pend)
		pend_pop(r);
}

/* The heap's name as the first part of a message: one length byte, then the name. */
int name_iov(struct hfs_heap *h, uint8_t *len, struct iovec *iov)
{
	size_t n = strlen(h->pol.name);

	*len = (uint8_t)n;
	iov[0] = (struct iovec){ .iov_base = len, .iov_len = 1 };
	iov[1] = (struct iovec){ .iov_base = h->pol.name, .iov_len = n };
	return 2;
}

/* r->lock held: log the record message (unless the log is lost), send it unless a
 * resync holds records back. */
static void send_rec(struct hfs_repl_heap *r, struct iovec *iov, int n)
{
	struct pend *p = NULL;
	size_t len = 0;
	int64_t seq;

	for (int k = 0; k < n; k++)
		len += iov[k].iov_len;
	if (r->streaming && !rg.up)
		r->wrote_apart = true;
	if (!r->lost && r->log_bytes + len <= LOG_MAX(r->h))
		p = malloc(sizeof(*p) + len);
	if (p) {
		p->next = NULL;
		p->recno = r->recno;
		p->seq = 0;
		p->len = 0;
		for (int k = 0; k < n; k++) {
			memcpy(p->data + p->len, iov[k].iov_base, iov[k].iov_len);
			p->len += iov[k].iov_len;
		}
		*r->pend_tail = p;
		r->pend_tail = &p->next;
		r->log_bytes += len;
	} else if (!r->lost) {
		r->lost = true; /* too much to keep: the partner will need a full image */
		pend_drop(r);
	}
	if (r->streaming)
		return;
	seq = rep_sendv(rg.l, MSG_REC, iov, n);
	if (seq > 0 && p)
		p->seq = (uint64_t)seq;
	if (seq > 0 && r->h->pol.replicate == CONF_REPLICATE_SYNC) {
		if (!wait_seq)
			wait_first = (uint64_t)seq;
		wait_seq = (uint64_t)seq;
		wait_conn = atomic_load(&rg.conn);
	}
}

void __hfs_repl_out(struct hfs_heap *h, uint32_t type, const void *fixed, const void *t0,
		    uint32_t l0, const void *t1, uint32_t l1)
{
	struct hfs_repl_heap *r = h->repl;
	char hdr[IMG_REC_HDR];
	struct iovec iov[7];
	uint64_t recno;
	uint8_t nl;
	int n;

	if (!rg.l || r->mirror)
		return;
	n = name_iov(h, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &recno, .iov_len = sizeof(recno) };
	n += img_rec_iov(hdr, type, fixed, t0, l0, t1, l1, iov + n);
	pthread_mutex_lock(&r->lock);
	recno = ++r->recno;
	send_rec(r, iov, n);
	pthread_mutex_unlock(&r->lock);
}

void __hfs_repl_data(struct hfs_heap *h, uint64_t id, uint64_t off, const void *buf,
		     uint64_t len)
{
	while (len) {
		uint32_t n = len > IMG_DATA_MAX ? IMG_DATA_MAX : (uint32_t)len;
		struct img_data d = { .id = id, .off = off };

		__hfs_repl_out(h, IMG_DATA, &d, buf, n, NULL, 0);
		buf = (const char *)buf + n;
		off += n;
		len -= n;
	}
}

void __hfs_repl_inode(struct hfs_inode *i, const char *target)
{
	struct img_inode in = {
		.id = i->id, .mode = i->mode, .uid = i->uid, .gid = i->gid, .rdev = i->rdev,
		.nlink = (uint32_t)i->nlink, .size = i->size, .atime_ns = hfs_ts_ns(i->atime),
		.mtime_ns = hfs_ts_ns(i->mtime), .ctime_ns = hfs_ts_ns(i->ctime),
	};
	struct img_symlink sl = { .id = i->id };

	in.kind = i->kind == HFS_DIR ? IMG_K_DIR : i->kind == HFS_REG ? IMG_K_REG
		: i->kind == HFS_LNK ? IMG_K_LNK : IMG_K_SPECIAL;
	__hfs_repl_out(i->heap, IMG_INODE, &in, NULL, 0, NULL, 0);
	if (target)
		__hfs_repl_out(i->heap, IMG_SYMLINK, &sl, target, (uint32_t)strlen(target), NULL, 0);
}

void __hfs_repl_created(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	__hfs_repl_inode(i, i->kind == HFS_LNK ? i->lnk.target : NULL);
	__hfs_repl_link(dir, name, i);
}

void __hfs_repl_link(struct hfs_inode *dir, const char *name, struct hfs_inode *i)
{
	struct img_link l = { .parent = dir->id, .child = i->id,
			      .name_len = (uint32_t)strlen(name) };

	__hfs_repl_out(dir->heap, IMG_LINK, &l, name, l.name_len, NULL, 0);
}

void __hfs_repl_unlink(struct hfs_inode *dir, const char *name)
{
	struct img_unlink u = { .parent = dir->id, .name_len = (uint32_t)strlen(name) };

	__hfs_repl_out(dir->heap, IMG_UNLINK, &u, name, u.name_len, NULL, 0);
}

void __hfs_repl_rename(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
		       const char *nname, unsigned flags)
{
	struct img_rename rn = { .old_parent = dir->id, .new_parent = ndir->id,
				 .old_len = (uint32_t)strlen(name),
				 .new_len = (uint32_t)strlen(nname), .flags = flags };

	__hfs_repl_out(dir->heap, IMG_RENAME, &rn, name, rn.old_len, nname, rn.new_len);
}

void __hfs_repl_truncate(struct hfs_inode *i)
{
	struct img_truncate t = { .id = i->id, .size = i->size };

	__hfs_repl_out(i->heap, IMG_TRUNCATE, &t, NULL, 0, NULL, 0);
}

void __hfs_repl_attr(struct hfs_inode *i)
{
	struct img_setattr sa = {
		.id = i->id, .mask = IMG_SET_MODE | IMG_SET_UID | IMG_SET_GID | IMG_SET_ATIME |
			IMG_SET_MTIME | IMG_SET_CTIME,
		.mode = i->mode, .uid = i->uid, .gid = i->gid, .atime_ns = hfs_ts_ns(i->atime),
		.mtime_ns = hfs_ts_ns(i->mtime), .ctime_ns = hfs_ts_ns(i->ctime),
	};

	if (i->kind == HFS_REG) {
		sa.mask |= IMG_SET_SIZE;
		sa.size = i->size;
	}
	__hfs_repl_out(i->heap, IMG_SETATTR, &sa, NULL, 0, NULL, 0);
}

void __hfs_repl_xattr(struct hfs_inode *i, const char *name, const void *value, size_t size)
{
	uint32_t nl = (uint32_t)strlen(name);

	if (value) {
		struct img_xattr x = { .id = i->id, .name_len = nl, .value_len = (uint32_t)size };

		__hfs_repl_out(i->heap, IMG_XATTR, &x, name, nl, value, x.value_len);
	} else {
		struct img_removexattr x = { .id = i->id, .name_len = nl };

		__hfs_repl_out(i->heap, IMG_REMOVEXATTR, &x, name, nl, NULL, 0);
	}
}

void __hfs_repl_writers(struct hfs_inode *i, bool open)
{
	struct hfs_repl_heap *r = i->heap->repl;
	uint8_t nl, o = open;
	struct iovec iov[4];
	int n;

	if (!rg.l || r->mirror)
		return;
	n = name_iov(i->heap, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &i->id, .iov_len = sizeof(i->id) };
	iov[n++] = (struct iovec){ .iov_base = &o, .iov_len = 1 };
	pthread_mutex_lock(&r->lock);
	if (!r->streaming) /* best effort: what a resync sends does not include it */
		rep_sendv(rg.l, MSG_WRITERS, iov, n);
	pthread_mutex_unlock(&r->lock);
}
