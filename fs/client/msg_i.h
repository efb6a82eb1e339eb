/*
 * msg_i.h — the descriptors a message brought (SCM_RIGHTS), for every socket that takes
 * them: the daemon's client socket (fs/direct/) and pool socket (fs/pool/), and libheapfs.
 * Locking: none.
 */
#ifndef HEAPFS_CLIENT_MSG_I_H
#define HEAPFS_CLIENT_MSG_I_H

#include <sys/socket.h>

/* After a recvmsg that succeeded (returned >= 0; after a failed one the control buffer
 * holds nothing that was received, and its numbers are someone else's descriptors): the
 * descriptors that came, up to max of them into fds, in order.  Returns how many, or
 * -EBADMSG — truncated control data (MSG_CTRUNC), a control header that does not fit, or
 * more than max descriptors — with every received descriptor closed. */
int hfs_msg_fds(struct msghdr *msg, int *fds, unsigned max);

/* Close fds[0 .. n). */
void hfs_msg_close(const int *fds, int n);

#endif
