/*
 * donor.c — heapfs-donor: lend memory to a heapfs mount's pool (SPEC "heapfs-donor").
 *
 *   heapfs-donor --mount MOUNT --size SIZE     (finds the socket in MOUNT/.heapfs/donors)
 *   heapfs-donor --socket PATH --size SIZE     (how the daemon starts its own donors)
 *
 * How: memfd_create (sealable), size it, populate it with fallocate so every page is
 * allocated now and charged to this process's memory cgroup, send it with a header over
 * the pool socket (SCM_RIGHTS: the ownership transfer, proto_i.h), then block on the
 * socket: DONOR_RELEASE -> exit 0; EOF (the daemon died, even by kill -9) -> exit 0 at
 * once.  The memory itself goes when the daemon closes its descriptor.
 * Exit: 0 released / pool gone, 1 failed (refused, no memory, no mount), 2 usage.
 * Single-threaded; no locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"
#include "proto_i.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: heapfs-donor --mount MOUNT --size SIZE\n"
		   "       heapfs-donor --socket PATH --size SIZE\n"
		   "  SIZE: bytes with K, M, G suffixes (a multiple of 2M, at most the pool's\n"
		   "        donor_size)\n");
}

/* The pool socket named in MOUNT/.heapfs/donors: 0, or 1 after saying why. */
static int socket_of(const char *mount, char *path, size_t len)
{
	char file[4096];
	json_error_t err;
	json_t *j;
	const char *s;

	snprintf(file, sizeof(file), "%s/.heapfs/donors", mount);
	j = json_load_file(file, 0, &err);
	if (!j) {
		fprintf(stderr, "heapfs-donor: %s: %s\n", file, err.text);
		return 1;
	}
	s = json_string_value(json_object_get(j, "socket"));
	if (!s || strlen(s) >= len) {
		fprintf(stderr, "heapfs-donor: %s names no pool socket\n", file);
		json_decref(j);
		return 1;
	}
	snprintf(path, len, "%s", s);
	json_decref(j);
	return 0;
}

static int offer(int sock, int fd, uint64_t size)
{
	struct donor_hdr hdr = { .version = DONOR_VERSION, .size = size };
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct iovec iov = { .iov_base = &hdr, .iov_len = sizeof(hdr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	memcpy(hdr.magic, DONOR_MAGIC, sizeof(hdr.magic));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)sizeof(hdr) ? 0 : -errno;
}

int main(int argc, char **argv)
{
	const char *mount = NULL, *sockpath = NULL, *sizearg = NULL;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char msg[DONOR_MSG_MAX + 1];
	uint64_t size;
	int fd, sock, ret;
	ssize_t n;

	for (int k = 1; k < argc; k++) {
		if (!strcmp(argv[k], "--help")) {
			usage(stdout);
			return 0;
		}
		if (k + 1 < argc && !strcmp(argv[k], "--mount"))
			mount = argv[++k];
		else if (k + 1 < argc && !strcmp(argv[k], "--socket"))
			sockpath = argv[++k];
		else if (k + 1 < argc && !strcmp(argv[k], "--size"))
			sizearg = argv[++k];
		else {
			fprintf(stderr, "heapfs-donor: unexpected argument \"%s\"\n", argv[k]);
			usage(stderr);
			return 2;
		}
	}
	if (!sizearg || (!mount == !sockpath)) {
		usage(stderr);
		return 2;
	}
	if (conf_parse_size(sizearg, &size) || size == 0 || size % 4096) {
		fprintf(stderr, "heapfs-donor: bad size \"%s\": want a whole number of pages "
			"like 256M (K, M, G: powers of 1024)\n", sizearg);
		return 2;
	}
	if (mount && socket_of(mount, a.sun_path, sizeof(a.sun_path)))
		return 1;
	if (sockpath) {
		if (strlen(sockpath) >= sizeof(a.sun_path)) {
			fprintf(stderr, "heapfs-donor: socket path too long\n");
			return 2;
		}
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", sockpath);
	}
	fd = memfd_create("heapfs-donor", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
		perror("heapfs-donor: memfd");
		return 1;
	}
	/* allocate every page now: they are charged to this process's memory cgroup */
	ret = fallocate(fd, 0, 0, (off_t)size);
	if (ret < 0) {
		fprintf(stderr, "heapfs-donor: cannot populate %s bytes: %s\n", sizearg,
			strerror(errno));
		return 1;
	}
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0) {
		fprintf(stderr, "heapfs-donor: %s: %s\n", a.sun_path, strerror(errno));
		return 1;
	}
	ret = offer(sock, fd, size);
	if (ret) {
		fprintf(stderr, "heapfs-donor: cannot send the memory: %s\n", strerror(-ret));
		return 1;
	}
	n = recv(sock, msg, DONOR_MSG_MAX, 0);
	if (n <= 0 || msg[0] != DONOR_ACCEPT) {
		msg[n > 0 ? n : 0] = 0;
		fprintf(stderr, "heapfs-donor: refused: %s\n",
			n > 1 ? msg + 1 : "the pool closed the connection");
		return 1;
	}
	close(fd); /* the daemon holds the memory now */
	for (;;) {
		n = recv(sock, msg, DONOR_MSG_MAX, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0 && msg[0] != DONOR_RELEASE)
			continue;
		return 0; /* released, or the daemon is gone: either way the memory goes */
	}
}
