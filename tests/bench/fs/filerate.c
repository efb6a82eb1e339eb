/*
 * filerate.c — files per second for small-file work on a directory (used by fsbench.py).
 *
 *   fs-filerate DIR COUNT [SIZE]
 *
 * Phase 1 creates COUNT files DIR/fNNNNNN, each with open(O_CREAT|O_EXCL|O_WRONLY),
 * one write of SIZE bytes (default 4096) and close; phase 2 unlinks them all.  Names are
 * resolved relative to an fd of DIR (openat/unlinkat), as tar or cp do, so the figure is
 * the filesystem's cost, not path walking from /.  Each phase is timed with
 * CLOCK_MONOTONIC and the result printed as one JSON line:
 *   {"files": N, "size": S, "create_s": T, "unlink_s": T, "create_per_s": R,
 *    "unlink_per_s": R}
 * Exit 0 ok, 1 a system call failed (message on stderr), 2 usage.  Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int create_one(int dirfd, const char *name, const char *buf, size_t size)
{
	int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644), ret = 0;

	if (fd < 0)
		return -errno;
	errno = 0; /* a short write leaves errno alone: not a stale value then */
	if (size && write(fd, buf, size) != (ssize_t)size)
		ret = errno ? -errno : -EIO;
	if (close(fd) && !ret)
		ret = -errno;
	return ret;
}

/* Run one phase over all names; 0 or -errno (and *failed names the file). */
static int phase(int dirfd, long count, int creating, const char *buf, size_t size,
		 double *secs, long *failed)
{
	char name[32];
	double t0 = now();
	long i;
	int ret = 0;

	for (i = 0; i < count && !ret; i++) {
		snprintf(name, sizeof(name), "f%06ld", i);
		ret = creating ? create_one(dirfd, name, buf, size)
			       : (unlinkat(dirfd, name, 0) ? -errno : 0);
	}
	*secs = now() - t0;
	*failed = i - 1;
	return ret;
}

int main(int argc, char **argv)
{
	double tc = 0, tu = 0;
	long count, failed;
	size_t size = 4096;
	char *buf = NULL;
	int dirfd = -1, ret;

	if (argc < 3 || argc > 4 || (count = atol(argv[2])) <= 0) {
		fprintf(stderr, "usage: fs-filerate DIR COUNT [SIZE]\n");
		return 2;
	}
	if (argc == 4)
		size = (size_t)atol(argv[3]);
	buf = malloc(size ? size : 1);
	if (!buf)
		return 1;
	memset(buf, 'x', size);
	dirfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		ret = -errno;
		fprintf(stderr, "fs-filerate: %s: %s\n", argv[1], strerror(-ret));
		goto out;
	}
	ret = phase(dirfd, count, 1, buf, size, &tc, &failed);
	if (ret) {
		fprintf(stderr, "fs-filerate: create f%06ld: %s\n", failed, strerror(-ret));
		goto out;
	}
	ret = phase(dirfd, count, 0, buf, size, &tu, &failed);
	if (ret) {
		fprintf(stderr, "fs-filerate: unlink f%06ld: %s\n", failed, strerror(-ret));
		goto out;
	}
	printf("{\"files\": %ld, \"size\": %zu, \"create_s\": %.6f, \"unlink_s\": %.6f, "
	       "\"create_per_s\": %.1f, \"unlink_per_s\": %.1f}\n",
	       count, size, tc, tu, (double)count / tc, (double)count / tu);
out:
	if (dirfd >= 0)
		close(dirfd);
	free(buf);
	return ret ? 1 : 0;
}
