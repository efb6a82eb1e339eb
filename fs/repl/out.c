/*
 * out.c — the owner's records out: replication's observer of the core's changes
 * (change.c) turns every change to an owned heap into image change records, logged until
 * the partner acknowledges them (repl.c, "One mutation path").
 * Locking: repl.c's opening comment; the observer runs under the change's core lock.
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
	if (p->cap == PEND_BIG && r->nspare < PEND_SPARE) {
		p->next = r->spare;
		r->spare = p;
		r->nspare++;
		return;
	}
	free(p);
}

/* r->lock held: a log entry for len bytes (a spare one for a DATA record's), or NULL. */
static struct pend *pend_new(struct hfs_repl_heap *r, size_t len)
{
	bool big = len > PEND_BIG / 2 && len <= PEND_BIG;
	struct pend *p = big ? r->spare : NULL;

	if (p) {
		r->spare = p->next;
		r->nspare--;
		return p;
	}
	p = malloc(sizeof(*p) + (big ? PEND_BIG : len));
	if (p)
		p->cap = big ? PEND_BIG : len;
	return p;
}

void pend_drop(struct hfs_repl_heap *r)
{
	struct pend *p;

	while (r->pend)
		pend_pop(r);
	while ((p = r->spare)) { /* a drop is rare (overflow, a full resync, stop): the
				    spares come back with the next stream of writes */
		r->spare = p->next;
		free(p);
	}
	r->nspare = 0;
	r->drops++; /* a resync sending the log lets go of r->lock: it learns of this */
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
 * resync holds records back.  sync mode: c (the change's completion, if any) is told what
 * to wait for. */
static void send_rec(struct hfs_repl_heap *r, struct iovec *iov, int n, struct hfs_completion *c)
{
	struct pend *p = NULL;
	size_t len = 0;
	int64_t seq;

	for (int k = 0; k < n; k++)
		len += iov[k].iov_len;
	if (r->misconf[0]) { /* the configs clash over this heap: nothing goes there */
		if (!r->lost)
			pend_drop(r);
		r->lost = true; /* once they agree, the partner gets it whole */
		return;
	}
	if (r->streaming && !rg.up)
		r->wrote_apart = true;
	if (!r->lost && r->log_bytes + len <= LOG_MAX(r->h))
		p = pend_new(r, len);
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
	if (r->streaming) {
		ha_gate(r, c, false); /* no partner: an on_peer_lost answer first (ha.c) */
		return;
	}
	seq = rep_sendv(rg.l, MSG_REC, iov, n);
	if (seq <= 0)
		ha_gate(r, c, true); /* the link just went: as if it were down already */
	if (seq > 0 && p)
		p->seq = (uint64_t)seq;
	if (seq > 0 && c && r->h->pol.replicate == CONF_REPLICATE_SYNC)
		repl_wait_for(c, (uint64_t)seq, atomic_load(&rg.conn));
}

/* One image change record of heap h out (the change's lock held). */
static void out_rec(struct hfs_heap *h, struct hfs_completion *c, uint32_t type,
		    const void *fixed, const void *t0, uint32_t l0, const void *t1, uint32_t l1)
{
	struct hfs_repl_heap *r = h->repl;
	char hdr[IMG_REC_HDR];
	struct iovec iov[7];
	uint64_t recno;
	uint8_t nl;
	int n;

	if (!rg.l || !r || r->mirror)
		return;
	n = name_iov(h, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &recno, .iov_len = sizeof(recno) };
	n += img_rec_iov(hdr, type, fixed, t0, l0, t1, l1, iov + n);
	pthread_mutex_lock(&r->lock);
	recno = ++r->recno;
	send_rec(r, iov, n, c);
	pthread_mutex_unlock(&r->lock);
}

static void out_data(struct hfs_heap *h, struct hfs_completion *c, uint64_t id, uint64_t off,
		     const void *buf, uint64_t len)
{
	while (len) {
		uint32_t n = len > IMG_DATA_MAX ? IMG_DATA_MAX : (uint32_t)len;
		struct img_data d = { .id = id, .off = off };

		out_rec(h, c, IMG_DATA, &d, buf, n, NULL, 0);
		buf = (const char *)buf + n;
		off += n;
		len -= n;
	}
}

/* A direct client's written range (HFS_CH_RANGE, sent at its release or heapfs_sync):
 * the bytes as they are now, read from the heap (the client wrote them in place and the
 * range is still pinned), out as DATA records through the same path as a write()'s.
 * Nothing to give back if the partner has no room (the bytes are written here): c->wrote
 * stays empty.  What cannot be read (no memory for the bounce) costs a full resync. */
static void out_range(struct hfs_heap *h, struct hfs_completion *c, struct hfs_inode *i,
		      uint64_t off, uint64_t len)
{
	struct hfs_repl_heap *r = h->repl;
	uint64_t cap = IMG_DATA_MAX;
	char *buf;

	if (!rg.l || !r || r->mirror || off >= i->size)
		return;
	if (len > i->size - off)
		len = i->size - off; /* shrunk since the map: its truncate went out already */
	buf = malloc(len < cap ? len : cap);
	while (buf && len) {
		uint64_t n = len < cap ? len : cap;

		if (__hfs_file_read(i, off, n, buf))
			break;
		out_data(h, c, i->id, off, buf, n);
		off += n;
		len -= n;
	}
	free(buf);
	if (!len)
		return;
	pthread_mutex_lock(&r->lock);
	r->lost = true;
	pend_drop(r);
	pthread_mutex_unlock(&r->lock);
	rep_kick(rg.l);
}

static void out_created(struct hfs_completion *c, struct hfs_inode *i)
{
	struct img_inode in;
	struct img_symlink sl = { .id = i->id };

	hfs_img_inode(i, &in);
	out_rec(i->heap, c, IMG_INODE, &in, NULL, 0, NULL, 0);
	if (i->kind == HFS_LNK)
		out_rec(i->heap, c, IMG_SYMLINK, &sl, i->lnk.target,
			(uint32_t)strlen(i->lnk.target), NULL, 0);
}

static void out_link(struct hfs_completion *c, struct hfs_inode *dir, const char *name,
		     struct hfs_inode *i)
{
	struct img_link l = { .parent = dir->id, .child = i->id,
			      .name_len = (uint32_t)strlen(name) };

	out_rec(i->heap, c, IMG_LINK, &l, name, l.name_len, NULL, 0);
}

static void out_unlink(struct hfs_completion *c, struct hfs_inode *dir, const char *name)
{
	struct img_unlink u = { .parent = dir->id, .name_len = (uint32_t)strlen(name) };

	out_rec(dir->heap, c, IMG_UNLINK, &u, name, u.name_len, NULL, 0);
}

static void out_rename(const struct hfs_change *ch)
{
	struct img_rename rn = { .old_parent = ch->rename.dir->id,
				 .new_parent = ch->rename.ndir->id,
				 .old_len = (uint32_t)strlen(ch->rename.name),
				 .new_len = (uint32_t)strlen(ch->rename.nname),
				 .flags = ch->rename.flags };

	out_rec(ch->heap, ch->done, IMG_RENAME, &rn, ch->rename.name, rn.old_len,
		ch->rename.nname, rn.new_len);
}

static void out_truncate(struct hfs_completion *c, struct hfs_inode *i)
{
	struct img_truncate t = { .id = i->id, .size = i->size };

	out_rec(i->heap, c, IMG_TRUNCATE, &t, NULL, 0, NULL, 0);
}

static void out_punch(struct hfs_completion *c, struct hfs_inode *i, uint64_t off, uint64_t len)
{
	struct img_punch p = { .id = i->id, .off = off, .len = len };

	out_rec(i->heap, c, IMG_PUNCH, &p, NULL, 0, NULL, 0);
}

static void out_attr(struct hfs_completion *c, struct hfs_inode *i)
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
	out_rec(i->heap, c, IMG_SETATTR, &sa, NULL, 0, NULL, 0);
}

static void out_xattr(struct hfs_completion *c, struct hfs_inode *i, const char *name,
		      const void *value, size_t size)
{
	uint32_t nl = (uint32_t)strlen(name);

	if (value) {
		struct img_xattr x = { .id = i->id, .name_len = nl, .value_len = (uint32_t)size };

		out_rec(i->heap, c, IMG_XATTR, &x, name, nl, value, x.value_len);
	} else {
		struct img_removexattr x = { .id = i->id, .name_len = nl };

		out_rec(i->heap, c, IMG_REMOVEXATTR, &x, name, nl, NULL, 0);
	}
}

/* Not a record: the mirror keeps which files are open for writing on the owner (to mark
 * them "interrupted" if it takes over). */
static void out_writers(struct hfs_inode *i, bool open)
{
	struct hfs_repl_heap *r = i->heap->repl;
	uint8_t nl, o = open;
	struct iovec iov[4];
	int n;

	if (!rg.l || !r || r->mirror)
		return;
	n = name_iov(i->heap, &nl, iov);
	iov[n++] = (struct iovec){ .iov_base = &i->id, .iov_len = sizeof(i->id) };
	iov[n++] = (struct iovec){ .iov_base = &o, .iov_len = 1 };
	pthread_mutex_lock(&r->lock);
	if (!r->streaming) /* best effort: what a resync sends does not include it */
		rep_sendv(rg.l, MSG_WRITERS, iov, n);
	pthread_mutex_unlock(&r->lock);
}

/* The observer (change.c) of every replicated heap, owned or mirrored (a mirror sends
 * nothing: out_rec): each change leaves as the image change records that make it. */
void repl_changed(const struct hfs_change *ch, void *arg)
{
	struct hfs_completion *c = ch->done;

	(void)arg;
	switch (ch->kind) {
	case HFS_CH_CREATE:
		out_created(c, ch->entry.i);
		out_link(c, ch->entry.dir, ch->entry.name, ch->entry.i);
		break;
	case HFS_CH_LINK:
		out_link(c, ch->entry.dir, ch->entry.name, ch->entry.i);
		break;
	case HFS_CH_UNLINK:
		out_unlink(c, ch->entry.dir, ch->entry.name);
		break;
	case HFS_CH_RENAME:
		out_rename(ch);
		break;
	case HFS_CH_WRITE:
		out_data(ch->heap, c, ch->write.i->id, ch->write.off, ch->write.buf, ch->write.len);
		if (c) /* what to give back if the partner has no room for it (wait.c) */
			c->wrote = (struct hfs_wrote){ .i = ch->write.i, .old = ch->write.old,
						       .off = ch->write.off,
						       .end = ch->write.off + ch->write.len };
		break;
	case HFS_CH_TRUNCATE:
		out_truncate(c, ch->inode.i);
		break;
	case HFS_CH_SETATTR:
		out_attr(c, ch->inode.i);
		break;
	case HFS_CH_PUNCH:
		out_punch(c, ch->punch.i, ch->punch.off, ch->punch.len);
		break;
	case HFS_CH_XATTR:
		out_xattr(c, ch->xattr.i, ch->xattr.name, ch->xattr.value, ch->xattr.size);
		break;
	case HFS_CH_WRITERS:
		out_writers(ch->writers.i, ch->writers.open);
		break;
	case HFS_CH_RANGE:
		out_range(ch->heap, c, ch->write.i, ch->write.off, ch->write.len);
		break;
	}
}
