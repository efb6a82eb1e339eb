/*
 * syslog.c — the syslog sink of the daemon's log (fs/core/log.c): each message is one
 * datagram in syslog's format, "<PRI>Mmm dd hh:mm:ss heapfs[PID]: MOUNTPOINT: MESSAGE",
 * facility daemon, sent to /dev/log ($HEAPFS_SYSLOG_SOCKET replaces the path: the tests
 * bind their own socket there).  Not syslog(3): that one may block in send() when the
 * log daemon falls behind, and a filesystem daemon must not stop serving for its log.
 * Here the socket is non-blocking and unconnected: with no log daemon (no /dev/log), a
 * full queue or a restarting one, a message is dropped (and counted), never waited for;
 * a daemon that comes back is reached again by the next message.  Until the process
 * detaches, messages also go to stderr, so start-up errors reach the terminal.
 * Locking: the socket is set up by main() before threads start; sendto on a datagram
 * socket is atomic per message; the counter is atomic.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "edge_i.h"

static struct {
	int fd;
	struct sockaddr_un addr;
	socklen_t alen;
	_Atomic bool tee;    /* also to stderr: until the process detaches */
	const char *mnt;
	atomic_uint_fast64_t dropped;
} sl = { .fd = -1 };

static void to_syslog(int level, const char *msg, void *arg)
{
	char line[HFS_LOG_MAX + PATH_MAX + 64], ts[32];
	struct tm tm;
	time_t now = time(NULL);
	int n;

	(void)arg;
	if (!localtime_r(&now, &tm) || !strftime(ts, sizeof(ts), "%b %e %H:%M:%S", &tm))
		ts[0] = 0;
	n = snprintf(line, sizeof(line), "<%d>%s heapfs[%d]: %s: %s", LOG_DAEMON | level, ts,
		     (int)getpid(), sl.mnt, msg);
	if (n >= (int)sizeof(line))
		n = (int)sizeof(line) - 1;
	if (sendto(sl.fd, line, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL,
		   (const struct sockaddr *)&sl.addr, sl.alen) < 0)
		atomic_fetch_add(&sl.dropped, 1);
	if (atomic_load(&sl.tee))
		hfs_log_stderr(level, msg, NULL);
}

int hfs_syslog_start(const char *mountpoint, int max)
{
	const char *path = getenv("HEAPFS_SYSLOG_SOCKET");

	if (!path || !*path)
		path = "/dev/log";
	if (strlen(path) >= sizeof(sl.addr.sun_path)) {
		fprintf(stderr, "heapfs: syslog socket %s: path too long\n", path);
		return -ENAMETOOLONG;
	}
	sl.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (sl.fd < 0) {
		fprintf(stderr, "heapfs: syslog: %s\n", strerror(errno));
		return -errno;
	}
	sl.addr.sun_family = AF_UNIX;
	strcpy(sl.addr.sun_path, path);
	sl.alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
	sl.mnt = mountpoint;
	sl.tee = true;
	hfs_log_to(max, to_syslog, NULL);
	return 0;
}

void hfs_syslog_detached(void)
{
	atomic_store(&sl.tee, false);
}

uint64_t hfs_syslog_dropped(void)
{
	return atomic_load(&sl.dropped);
}

void hfs_syslog_stop(void)
{
	if (sl.fd < 0)
		return;
	hfs_log_to(HFS_LOG_INFO, NULL, NULL);
	close(sl.fd);
	sl.fd = -1;
}
