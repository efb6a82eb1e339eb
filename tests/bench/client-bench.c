/*
 * client-bench — libheapfs against tmpfs and memcpy, in one run (tests/bench/clientbench.py
 * mounts heapfs and runs it; `make bench`).
 *
 *   client-bench --mount M --tmpfs DIR [--size BYTES] [--daemon-pid PID]
 *
 * Measures, each against its baseline in the same run (ratios printed side by side):
 *   seq write/read  SIZE bytes in 1 MiB memcpy pieces through a libheapfs mapping of
 *                   M/heaps/bench/big, through mmap of a tmpfs file of the same size, and
 *                   between anonymous buffers (memcpy); GB/s, best of 3, each target
 *                   touched once first (not timed)
 *   4k rand r/w     4 KiB memcpy at random offsets through the mapping, against
 *                   pread/pwrite of the tmpfs file (same offsets)
 *   find            heapfs_find of an object, against open+close of MOUNT/objects/NAME
 *   map+release     of an already registered 4 KiB range (served from the lease libheapfs
 *                   keeps: no message to the daemon)
 *   memory          /proc/meminfo Cached (the page cache, memfd pages included) and the
 *                   daemon's private RSS (RssAnon), before creating the file and after writing all of it
 *                   through the mapping: the file is in RAM once (the heap's memfd pages;
 *                   no FUSE page-cache copy, and the daemon maps the same pages)
 * Single-threaded; the machine may be shared, so figures move between runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "heapfs.h"

#define PIECE (1u << 20)

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "client-bench: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

/* best of 3 passes of SIZE bytes: write (memcpy into dst) or read (out of it), GB/s */
static double seq(char *p, uint64_t size, const char *buf, char *sink, int write)
{
	double best = 0;

	for (int r = 0; r < 3; r++) {
		double t0 = now(), gbs;

		for (uint64_t off = 0; off < size; off += PIECE) {
			if (write)
				memcpy(p + off, buf, PIECE);
			else
				memcpy(sink, p + off, PIECE);
		}
		__asm__ volatile("" ::: "memory");
		gbs = (double)size / (now() - t0) / 1e9;
		if (gbs > best)
			best = gbs;
	}
	return best;
}

static uint64_t kib_of(const char *file, const char *key)
{
	char line[256];
	uint64_t v = 0;
	size_t n = strlen(key);
	FILE *f = fopen(file, "re");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':')
			v = strtoull(line + n + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

/* The daemon's private memory (RssAnon): its shared memfd pages are the page cache's */
static uint64_t daemon_rss(int pid)
{
	char p[64];

	snprintf(p, sizeof(p), "/proc/%d/status", pid);
	return pid ? kib_of(p, "RssAnon") : 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = { { "mount", 1, 0, 'm' }, { "tmpfs", 1, 0, 't' },
					    { "size", 1, 0, 's' }, { "daemon-pid", 1, 0, 'p' },
					    { 0, 0, 0, 0 } };
	const char *mnt = NULL, *tdir = "/dev/shm";
	uint64_t size = 1ull << 30, shm0, shm1, rss0, rss1, n4k = 200000;
	char path[4096], *buf, *sink, *anon, *tp;
	struct heapfs_map *m;
	struct heapfs *h;
	int c, pid = 0, hfd, tfd, ret;
	double r[3][2], t0, rr[2][2], find_s, open_s, mr_s;
	uint64_t *offs;
	void *optr;
	size_t osz;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'm': mnt = optarg; break;
		case 't': tdir = optarg; break;
		case 's': size = strtoull(optarg, NULL, 0) & ~(uint64_t)(PIECE - 1); break;
		case 'p': pid = atoi(optarg); break;
		default: return 2;
		}
	}
	if (!mnt || size < PIECE) {
		fprintf(stderr, "usage: client-bench --mount M [--tmpfs DIR] [--size BYTES] "
				"[--daemon-pid PID]\n");
		return 2;
	}
	buf = malloc(PIECE);
	sink = malloc(PIECE);
	offs = malloc(n4k * sizeof(*offs));
	if (!buf || !sink || !offs)
		die("malloc", ENOMEM);
	memset(buf, 0x5a, PIECE);
	memset(sink, 0, PIECE);
	srand(42);
	for (uint64_t k = 0; k < n4k; k++)
		offs[k] = ((uint64_t)rand() * 4096) % (size - 4096);

	/* the heapfs file, mapped; memory before and after */
	shm0 = kib_of("/proc/meminfo", "Cached"); /* page cache, memfd and tmpfs pages included */
	rss0 = daemon_rss(pid);
	snprintf(path, sizeof(path), "%s/heaps/bench/big", mnt);
	hfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	/* blocks, not a hole (a range that holds a hole maps as ENODATA) */
	if (hfd < 0 || fallocate(hfd, 0, 0, (off_t)size) < 0)
		die(path, errno);
	ret = heapfs_connect_fd(hfd, &h);
	if (ret)
		die("heapfs_connect_fd", ret);
	ret = heapfs_map(h, hfd, 0, size, HEAPFS_WRITE, &m);
	if (ret)
		die("heapfs_map", ret);
	for (uint64_t off = 0; off < size; off += PIECE) /* first touch, not timed */
		memcpy((char *)m->addr + off, buf, PIECE);
	shm1 = kib_of("/proc/meminfo", "Cached");
	rss1 = daemon_rss(pid);
	if (shm1 < shm0)
		shm1 = shm0; /* others on the machine freed page cache meanwhile */
	if (rss1 < rss0)
		rss1 = rss0;
	/* tmpfs file of the same size */
	snprintf(path, sizeof(path), "%s/heapfs-client-bench.%d", tdir, (int)getpid());
	tfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (tfd < 0 || ftruncate(tfd, (off_t)size) < 0)
		die(path, errno);
	unlink(path);
	tp = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, 0);
	anon = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (tp == MAP_FAILED || anon == MAP_FAILED)
		die("mmap", errno);
	for (uint64_t off = 0; off < size; off += PIECE) { /* first touch, not timed */
		memcpy(tp + off, buf, PIECE);
		memcpy(anon + off, buf, PIECE);
	}
	r[0][0] = seq(m->addr, size, buf, sink, 1);
	r[1][0] = seq(tp, size, buf, sink, 1);
	r[2][0] = seq(anon, size, buf, sink, 1);
	r[0][1] = seq(m->addr, size, buf, sink, 0);
	r[1][1] = seq(tp, size, buf, sink, 0);
	r[2][1] = seq(anon, size, buf, sink, 0);

	/* 4 KiB random: through the mapping against pread/pwrite of tmpfs */
	for (int w = 0; w < 2; w++) {
		t0 = now();
		for (uint64_t k = 0; k < n4k; k++) {
			if (w)
				memcpy((char *)m->addr + offs[k], buf, 4096);
			else
				memcpy(sink, (char *)m->addr + offs[k], 4096);
		}
		rr[w][0] = (double)n4k / (now() - t0);
		t0 = now();
		for (uint64_t k = 0; k < n4k; k++) {
			if ((w ? pwrite(tfd, buf, 4096, (off_t)offs[k])
			       : pread(tfd, sink, 4096, (off_t)offs[k])) != 4096)
				die("tmpfs pread/pwrite", errno);
		}
		rr[w][1] = (double)n4k / (now() - t0);
	}
	ret = heapfs_release(h, m, true);
	if (ret)
		die("heapfs_release", ret);
	munmap(anon, size);
	munmap(tp, size);
	close(tfd);

	/* objects: find against open+close through FUSE */
	ret = heapfs_find_or_construct(h, "bench-object", 4096, &optr, &osz);
	if (ret)
		die("heapfs_find_or_construct", ret);
	t0 = now();
	for (int k = 0; k < 200000; k++)
		if (heapfs_find(h, "bench-object", &optr, &osz))
			die("heapfs_find", EIO);
	find_s = 200000 / (now() - t0);
	snprintf(path, sizeof(path), "%s/objects/bench-object", mnt);
	t0 = now();
	for (int k = 0; k < 20000; k++) {
		int fd = open(path, O_RDONLY);

		if (fd < 0)
			die(path, errno);
		close(fd);
	}
	open_s = 20000 / (now() - t0);
	/* map + release of a registered range */
	t0 = now();
	for (int k = 0; k < 20000; k++) {
		if (heapfs_map(h, hfd, 0, 4096, 0, &m) || heapfs_release(h, m, false))
			die("map+release", EIO);
	}
	mr_s = 20000 / (now() - t0);
	unlink(path);
	close(hfd);
	heapfs_disconnect(h);

	printf("libheapfs, %" PRIu64 " MiB file, one thread (machine shared: figures move)\n",
	       size >> 20);
	printf("%-18s %12s %12s %12s %10s %10s\n", "job", "libheapfs", "tmpfs", "memcpy",
	       "vs tmpfs", "vs memcpy");
	printf("%-18s %9.2f GB/s %7.2f GB/s %7.2f GB/s %9.2fx %9.2fx\n", "seq write", r[0][0],
	       r[1][0], r[2][0], r[0][0] / r[1][0], r[0][0] / r[2][0]);
	printf("%-18s %9.2f GB/s %7.2f GB/s %7.2f GB/s %9.2fx %9.2fx\n", "seq read", r[0][1],
	       r[1][1], r[2][1], r[0][1] / r[1][1], r[0][1] / r[2][1]);
	printf("%-18s %10.0f/s %10.0f/s %12s %9.2fx   (mapping vs pread)\n", "4k rand read",
	       rr[0][0], rr[0][1], "-", rr[0][0] / rr[0][1]);
	printf("%-18s %10.0f/s %10.0f/s %12s %9.2fx   (mapping vs pwrite)\n", "4k rand write",
	       rr[1][0], rr[1][1], "-", rr[1][0] / rr[1][1]);
	printf("%-18s %10.0f/s %10.0f/s %12s %9.2fx   (find vs FUSE open+close)\n", "object find",
	       find_s, open_s, "-", find_s / open_s);
	printf("%-18s %10.0f/s   (the lease this process keeps: no message; target 1M/s)\n",
	       "map+release", mr_s);
	printf("%-18s page cache +%" PRIu64 " MiB for a %" PRIu64 " MiB file (%.2fx); daemon "
	       "private RSS +%" PRIu64 " MiB\n", "memory", (shm1 - shm0) >> 10, size >> 20,
	       (double)((shm1 - shm0) << 10) / (double)size, (rss1 - rss0) >> 10);
	return 0;
}
