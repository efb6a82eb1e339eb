/*
 * img-bench.c — is the heap image format (records + XXH3-64) ever the limit of a save or
 * a restore?  One file of --size MiB (default 1024) held in memory is
 *   save:    written as a heap image (img_w_*) to DIR/img-bench.img
 *   restore: read back with img_r_* into other memory, END verified
 * against the same bytes with plain write() / read() in 1 MiB calls, and against `cp` of
 * the plain file (the yardstick: image save/restore >= 0.8x of cp of a tmpfs
 * file).  DIR defaults to /dev/shm (tmpfs: no disk in the way).  Each figure is the best
 * of --rounds runs (default 3).  Prints MiB/s and the ratios; exit 1 if a restore does not
 * give back the bytes.  Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "img.h"

#define CHUNK (1u << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int open_out(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
}

/* Before each round: the last round's files go, so freeing them is not timed. */
static void drop(const char *a, const char *b, const char *c)
{
	unlink(a);
	unlink(b);
	unlink(c);
}

static int plain_write(const char *path, const unsigned char *src, size_t n)
{
	int fd = open_out(path), ret = 0;

	for (size_t at = 0; fd >= 0 && !ret && at < n; at += CHUNK)
		ret = write(fd, src + at, n - at < CHUNK ? n - at : CHUNK) < 0 ? -errno : 0;
	return fd < 0 ? -errno : close(fd) ? -errno : ret;
}

static int plain_read(const char *path, unsigned char *dst, size_t n)
{
	int fd = open(path, O_RDONLY), ret = 0;

	for (size_t at = 0; fd >= 0 && !ret && at < n; at += CHUNK)
		ret = read(fd, dst + at, n - at < CHUNK ? n - at : CHUNK) < 0 ? -errno : 0;
	return fd < 0 ? -errno : close(fd) ? -errno : ret;
}

static int img_save(const char *path, const unsigned char *src, size_t n)
{
	struct img_hdr h = { .heap_size = 1ull << 40, .min_order = 12, .name = "bench" };
	struct img_inode root = { .id = IMG_ROOT_ID, .kind = IMG_K_DIR, .mode = 040755 };
	struct img_inode f = { .id = 2, .kind = IMG_K_REG, .mode = 0100644, .nlink = 1,
			       .size = n };
	struct img_w *w = NULL;
	int fd = open_out(path), ret = fd < 0 ? -errno : img_w_open(fd, &h, &w);

	if (!ret)
		ret = img_w_inode(w, &root);
	if (!ret)
		ret = img_w_inode(w, &f);
	if (!ret)
		ret = img_w_link(w, IMG_ROOT_ID, 2, "data");
	if (!ret)
		ret = img_w_data(w, 2, 0, src, n);
	if (!ret)
		ret = img_w_finish(w);
	img_w_free(w);
	if (fd >= 0 && close(fd) && !ret)
		ret = -errno;
	return ret;
}

static int img_restore(const char *path, unsigned char *dst, size_t n)
{
	char why[256] = "";
	struct img_r *r = NULL;
	struct img_rec rec;
	int fd = open(path, O_RDONLY), ret = fd < 0 ? -errno : img_r_open(fd, 0, &r, why, sizeof(why));

	while (!ret && (ret = img_r_next(r, &rec)) == 1) {
		ret = 0;
		if (rec.type == IMG_DATA)
			ret = rec.u.data.off + rec.data_len > n ? -EFBIG
				: img_r_data(r, dst + rec.u.data.off);
	}
	if (ret)
		fprintf(stderr, "img-bench: restore: %s\n", why[0] ? why : strerror(-ret));
	img_r_free(r);
	if (fd >= 0)
		close(fd);
	return ret;
}

static int cp(const char *from, const char *to)
{
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		execlp("cp", "cp", from, to, (char *)NULL);
		_exit(127);
	}
	return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && !WEXITSTATUS(st)
		       ? 0 : -EIO;
}

int main(int argc, char **argv)
{
	const char *dir = "/dev/shm";
	size_t mib = 1024;
	int rounds = 3, opt;
	char plain[4096], image[4096], copy[4096];
	double best[5] = { 1e9, 1e9, 1e9, 1e9, 1e9 }; /* write, save, read, restore, cp */
	unsigned char *src, *dst;
	size_t n;
	int ret = 0;

	while ((opt = getopt(argc, argv, "s:d:r:")) != -1) {
		if (opt == 's')
			mib = strtoul(optarg, NULL, 0);
		else if (opt == 'd')
			dir = optarg;
		else if (opt == 'r')
			rounds = atoi(optarg);
		else {
			fprintf(stderr, "usage: img-bench [-s MiB] [-d DIR] [-r ROUNDS]\n");
			return 2;
		}
	}
	n = mib << 20;
	snprintf(plain, sizeof(plain), "%s/img-bench.raw", dir);
	snprintf(image, sizeof(image), "%s/img-bench.img", dir);
	snprintf(copy, sizeof(copy), "%s/img-bench.cp", dir);
	src = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < n; i += 8)
		*(uint64_t *)(src + i) = i * 0x9e3779b97f4a7c15ull;
	memset(dst, 1, n); /* fault both in before timing */
	for (int r = 0; r < rounds && !ret; r++) {
		double t[5], a;

		drop(plain, image, copy);
		a = now();

		ret |= plain_write(plain, src, n);
		t[0] = now() - a;
		a = now();
		ret |= img_save(image, src, n);
		t[1] = now() - a;
		a = now();
		ret |= plain_read(plain, dst, n);
		t[2] = now() - a;
		memset(dst, 0, n);
		a = now();
		ret |= img_restore(image, dst, n);
		t[3] = now() - a;
		a = now();
		ret |= cp(plain, copy);
		t[4] = now() - a;
		for (int k = 0; k < 5; k++)
			if (t[k] < best[k])
				best[k] = t[k];
		if (!ret && memcmp(src, dst, n)) {
			fprintf(stderr, "img-bench: the restore did not give back the bytes\n");
			ret = 1;
		}
	}
	drop(plain, image, copy);
	if (ret)
		return 1;
	printf("img-bench: %zu MiB in %s, best of %d\n", mib, dir, rounds);
	printf("  %-28s %8.0f MiB/s\n", "plain write()", (double)mib / best[0]);
	printf("  %-28s %8.0f MiB/s  %.2fx plain write, %.2fx cp\n", "image save (img_w)",
	       (double)mib / best[1], best[0] / best[1], best[4] / best[1]);
	printf("  %-28s %8.0f MiB/s\n", "plain read()", (double)mib / best[2]);
	printf("  %-28s %8.0f MiB/s  %.2fx plain read, %.2fx cp\n", "image restore (img_r)",
	       (double)mib / best[3], best[2] / best[3], best[4] / best[3]);
	printf("  %-28s %8.0f MiB/s\n", "cp of the plain file", (double)mib / best[4]);
	return 0;
}
