/*
 * msg.c — the descriptors a message brought (msg_i.h).  Everything a peer attached is
 * either handed to the caller or closed here, so a peer cannot fill our descriptor table;
 * a control header is used only where its length fits the buffer.
 * Locking: none.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "msg_i.h"

int hfs_msg_fds(struct msghdr *msg, int *fds, unsigned max)
{
	const char *end = (const char *)msg->msg_control + msg->msg_controllen;
	bool bad = msg->msg_flags & MSG_CTRUNC;
	unsigned n = 0;

	if (!msg->msg_control)
		return bad ? -EBADMSG : 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		size_t room = (size_t)(end - (const char *)cm), k;

		if (cm->cmsg_len < CMSG_LEN(0) || cm->cmsg_len > room) {
			bad = true;
			break;
		}
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue; /* carries no descriptors */
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t j = 0; j < k; j++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + j * sizeof(int), sizeof(int));
			if (n < max) {
				fds[n++] = fd;
			} else {
				close(fd);
				bad = true;
			}
		}
	}
	if (bad) {
		hfs_msg_close(fds, (int)n);
		return -EBADMSG;
	}
	return (int)n;
}

void hfs_msg_close(const int *fds, int n)
{
	for (int k = 0; k < n; k++)
		close(fds[k]);
}
