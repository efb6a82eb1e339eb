/*
 * proto.c — the daemon's checks of a client request (proto_i.h): one message from a client
 * is taken apart here and nowhere else, in a file that links alone, so tests/fuzz/
 * fuzz-client.c drives exactly what fs/direct/direct.c runs.  Bounds are checked before
 * arithmetic (a range is compared as off > size - len, never off + len > size).
 * Locking: none.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

#include "proto_i.h"

int hfs_cl_req_parse(const void *buf, size_t n, int msg_flags, int nfds, struct hfs_cl_req *q)
{
	bool wants_fd;

	/* a message of any other length, or cut short, is not a request */
	if (n != sizeof(*q) || (msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || nfds < 0)
		return -EBADMSG;
	memmove(q, buf, sizeof(*q)); /* buf may be q itself */
	if (q->magic != HFS_CL_MAGIC || q->version != HFS_CL_VERSION || q->op < HFS_CL_MAP ||
	    q->op > HFS_CL_SAVE)
		return -EBADMSG;
	if (q->op == HFS_CL_SAVE)
		return nfds == 2 ? 0 : -EBADMSG;
	wants_fd = q->op == HFS_CL_MAP || q->op == HFS_CL_SEGMENT;
	return nfds == (wants_fd ? 1 : 0) ? 0 : -EBADMSG;
}

int hfs_cl_range_check(const struct hfs_cl_req *q, uint64_t size)
{
	if (!q->len || q->off > UINT64_MAX - q->len)
		return -EINVAL;
	return q->len > size || q->off > size - q->len ? -ENXIO : 0;
}
