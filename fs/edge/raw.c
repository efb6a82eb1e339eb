/*
 * raw.c — the parser of the requests heapfs answers itself before libfuse (raw_i.h):
 * FUSE_TMPFILE (fuse_create_in, then a name the kernel makes up) and FUSE_STATX
 * (fuse_getattr-like statx_in).  Every byte comes from the kernel, but the rules for bytes
 * from outside hold: the header's length must agree with the bytes read, each argument
 * must lie inside it, checked before it is read.  The answer is ops.c's (hfs_raw_dispatch).
 * Locking: none.
 */
#include <errno.h>
#include <string.h>

#include "raw_i.h"

int hfs_raw_parse(const void *buf, size_t n, struct hfs_raw *out)
{
	struct fuse_in_header h;
	const char *arg;
	size_t left;

	memset(out, 0, sizeof(*out));
	if (n < sizeof(h))
		return 0; /* libfuse refuses a short read itself */
	memcpy(&h, buf, sizeof(h));
	if (h.opcode != HFS_FUSE_TMPFILE && h.opcode != HFS_FUSE_STATX)
		return 0;
	out->opcode = h.opcode;
	out->unique = h.unique;
	out->nodeid = h.nodeid;
	out->uid = h.uid;
	out->gid = h.gid;
	out->pid = h.pid;
	if (h.len != n || h.len < sizeof(h))
		return -EINVAL;
	arg = (const char *)buf + sizeof(h);
	left = n - sizeof(h);
	if (h.opcode == HFS_FUSE_TMPFILE) {
		/* the name after the fixed part is the kernel's own ("/"): not used, but it
		 * must be a string inside the request if it is there */
		if (left < sizeof(out->create))
			return -EINVAL;
		memcpy(&out->create, arg, sizeof(out->create));
		left -= sizeof(out->create);
		if (left && !memchr(arg + sizeof(out->create), 0, left))
			return -EINVAL;
	} else {
		if (left < sizeof(out->statx))
			return -EINVAL;
		memcpy(&out->statx, arg, sizeof(out->statx));
	}
	if (!h.nodeid)
		return -EINVAL;
	return 1;
}
