/*
 * fuzz-client.c — what the daemon does with one message on the libheapfs client socket
 * (fs/direct/direct.c serve): the descriptors that came with it (fs/client/msg.c) and the
 * request's checks (fs/client/proto.c: the message, then a MAP's range against a file).
 * Input: byte 0 the recvmsg flags (bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC), byte 1 the
 * descriptors attached (0..4, 5: the -EBADMSG of hfs_msg_fds), bytes 2..9 the file's size,
 * byte 10 how many of the following bytes are the control buffer, then the control buffer,
 * then the message.  The control buffer is walked as received; msg.c is compiled in here
 * with close() redirected, since its descriptor numbers are the fuzzer's bytes.
 * No locking: single-threaded.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../fs/client/proto_i.h"

static unsigned closes;

static int fuzz_close(int fd)
{
	(void)fd;
	closes++;
	return 0;
}

#define close fuzz_close
#include "../../fs/client/msg.c"
#undef close

/* The control buffer as a recvmsg would leave it: its own allocation (an overread is
 * ASan's), the descriptors in it not ours to close. */
static void control(const uint8_t *p, size_t n, int flags)
{
	struct msghdr msg = { .msg_controllen = n, .msg_flags = flags };
	int fds[4], got;

	if (n < sizeof(struct cmsghdr))
		return;
	msg.msg_control = malloc(n);
	if (!msg.msg_control)
		return;
	memcpy(msg.msg_control, p, n);
	closes = 0;
	got = hfs_msg_fds(&msg, fds, 4);
	if (got > 4 || (got < 0 && got != -EBADMSG) || ((flags & MSG_CTRUNC) && got >= 0))
		abort();
	if (got > 0 && closes)
		abort(); /* descriptors handed out were all there was to keep */
	free(msg.msg_control);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct hfs_cl_req q;
	uint64_t fsize;
	int flags, nfds;
	size_t cn;

	if (size < 11)
		return 0;
	flags = (data[0] & 1 ? MSG_TRUNC : 0) | (data[0] & 2 ? MSG_CTRUNC : 0);
	nfds = data[1] % 6 == 5 ? -EBADMSG : data[1] % 6;
	memcpy(&fsize, data + 2, sizeof(fsize));
	cn = data[10] < size - 11 ? data[10] : size - 11;
	control(data + 11, cn, flags);
	data += 11 + cn;
	size -= 11 + cn;
	if (hfs_cl_req_parse(data, size, flags, nfds, &q))
		return 0;
	/* what serve() lets through: a whole request, the descriptor only where one belongs */
	if (size != sizeof(q) || flags || q.magic != HFS_CL_MAGIC || q.version != HFS_CL_VERSION ||
	    q.op < HFS_CL_MAP || q.op > HFS_CL_SAVE ||
	    (nfds == 2) != (q.op == HFS_CL_SAVE) ||
	    (nfds == 1) != (q.op == HFS_CL_MAP || q.op == HFS_CL_SEGMENT))
		abort();
	if (hfs_cl_range_check(&q, UINT64_MAX) == 0 && (!q.len || q.off > UINT64_MAX - q.len))
		abort();
	if (hfs_cl_range_check(&q, fsize) == 0 && (!q.len || q.off > fsize || q.len > fsize - q.off))
		abort(); /* do_map's extents would run past the file */
	return 0;
}
