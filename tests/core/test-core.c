/*
 * test-core.c — the core (fs/core/) alone: linked with nothing but alloc/, conf/ and img/
 * (no feature folder, no libfuse), it mounts its tree, makes two heaps, writes a file in
 * one, writes that heap's image and restores it into the other, and reads the bytes back
 * through the core.  That it links at all is half the test: a call from the core into a
 * feature or into libfuse is an undefined symbol here.  Without features, .heapfs/ holds
 * only the core's files and objects/ and pool/ are fixed (EPERM).  Last, a tree 20,000
 * levels deep is emptied (what a mirror does before a whole image) on a thread with a
 * 256 KiB stack: no walk of the core recurses once per level.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

#define CHECK(c)                                                                       \
	do {                                                                           \
		if (!(c)) {                                                            \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			exit(1);                                                       \
		}                                                                      \
	} while (0)

#define FILE_LEN (300 * 1024 + 123) /* several blocks, the last one partial */

static struct hfs_heap *mkheap(const char *name, struct hfs_inode **dir)
{
	struct conf_heap pol;
	int ret;

	CHECK(conf_heap_defaults(hfs.conf, name, &pol) == 0);
	pol.size = 8u << 20;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __hfs_heap_mkdir(name, &pol, false, dir);
	pthread_rwlock_unlock(&hfs.ns);
	CHECK(ret == 0);
	return (*dir)->heap;
}

/* The bytes of file i, read through the core, equal want. */
static void check_bytes(struct hfs_inode *i, const unsigned char *want, size_t len)
{
	struct iovec iov[64];
	size_t at = 0;
	void *bounce;
	int niov = 64;
	ssize_t n = hfs_read_begin(i, len + 1, 0, iov, &niov, &bounce);

	CHECK(n == (ssize_t)len);
	for (int k = 0; k < niov; k++) {
		CHECK(at + iov[k].iov_len <= len);
		CHECK(memcmp(iov[k].iov_base, want + at, iov[k].iov_len) == 0);
		at += iov[k].iov_len;
	}
	CHECK(at == len);
	hfs_read_end(i);
	free(bounce);
}

static void check_tree_without_features(void)
{
	const struct hfs_ctx ctx = { .uid = getuid(), .gid = getgid() };
	struct hfs_inode *i;
	size_t len;
	char *buf;

	CHECK(hfs_lookup(hfs.dot, "stats", &i) == 0);
	CHECK(hfs_status_render(i, &buf, &len) == 0);
	CHECK(len > 2 && buf[0] == '{' && buf[len - 1] == '\n');
	CHECK(memmem(buf, len, "\"heaps\"", 7) && !memmem(buf, len, "\"objects\"", 9));
	hfs_status_put(i, buf);
	hfs_iput(i, 1);
	CHECK(hfs_lookup(hfs.dot, "partner", &i) == -ENOENT);
	CHECK(hfs_lookup(hfs.dot, "segment", &i) == -ENOENT);
	CHECK(hfs_create(hfs.objects, "o", S_IFREG | 0644, 0, NULL, &ctx, &i, NULL) == -EPERM);
	CHECK(hfs_create(hfs.pool, "p", S_IFREG | 0644, 0, NULL, &ctx, &i, NULL) == -EPERM);
}

#define DEPTH 20000

static void *clear_thread(void *arg)
{
	return (void *)(intptr_t)hfs_apply_clear(arg);
}

/* A tree DEPTH levels deep, emptied on a thread whose stack holds a few hundred frames at
 * most: it must not recurse once per level. */
static void check_deep_clear(void)
{
	const struct hfs_ctx ctx = { .uid = getuid(), .gid = getgid() };
	struct hfs_inode *top, *d, *next;
	struct conf_heap pol;
	pthread_attr_t at;
	pthread_t th;
	void *res;
	int ret;

	CHECK(conf_heap_defaults(hfs.conf, "deep", &pol) == 0);
	pol.size = 64u << 20;
	pol.inodes = DEPTH + 16;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __hfs_heap_mkdir("deep", &pol, false, &top);
	pthread_rwlock_unlock(&hfs.ns);
	CHECK(ret == 0);
	d = top;
	for (int k = 0; k < DEPTH; k++) {
		CHECK(hfs_create(d, "d", S_IFDIR | 0755, 0, NULL, &ctx, &next, NULL) == 0);
		if (d != top)
			hfs_iput(d, 1);
		d = next;
	}
	CHECK(hfs_create(d, "bottom", S_IFREG | 0644, 0, NULL, &ctx, &next, NULL) == 0);
	hfs_iput(next, 1);
	hfs_iput(d, 1);
	CHECK(atomic_load(&top->heap->files) == 1);
	pthread_attr_init(&at);
	CHECK(pthread_attr_setstacksize(&at, 256 * 1024) == 0);
	CHECK(pthread_create(&th, &at, clear_thread, top->heap) == 0);
	CHECK(pthread_join(th, &res) == 0);
	pthread_attr_destroy(&at);
	CHECK(res == NULL); /* 0: everything removed */
	CHECK(top->dir.nents == 0);
}

int main(void)
{
	const struct hfs_ctx ctx = { .uid = getuid(), .gid = getgid() };
	struct hfs_inode *da, *db, *f, *g;
	struct hfs_heap *a, *b;
	unsigned char *data = malloc(FILE_LEN);
	char why[256];
	int fd;

	CHECK(data);
	for (size_t k = 0; k < FILE_LEN; k++)
		data[k] = (unsigned char)(k * 7 + k / 4096);
	CHECK(conf_load_default(&hfs.conf) == 0);
	hfs_rwlock_init_writers(&hfs.ns);
	hfs.mountpoint = "/nowhere"; /* .heapfs/stats names it */
	hfs.uid = getuid();
	hfs.gid = getgid();
	CHECK(hfs_itable_init() == 0);
	CHECK(hfs_mount_tree() == 0);
	check_tree_without_features();

	a = mkheap("a", &da);
	CHECK(hfs_create(da, "f", S_IFREG | 0640, 0, NULL, &ctx, &f, NULL) == 0);
	CHECK(hfs_open(f, O_WRONLY, &ctx, NULL) == 0);
	CHECK(hfs_write(f, data, FILE_LEN, 0, &ctx, NULL) == FILE_LEN);
	hfs_release(f, O_WRONLY);
	check_bytes(f, data, FILE_LEN);

	/* a's image, restored into the empty heap b */
	fd = memfd_create("image", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(hfs_image_write(a, fd) == 0);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	b = mkheap("b", &db);
	CHECK(hfs_image_restore(b, fd, why, sizeof(why)) == 0);
	close(fd);
	CHECK(hfs_lookup(db, "f", &g) == 0);
	CHECK(g != f && g->heap == b && g->kind == HFS_REG);
	CHECK(g->size == FILE_LEN && (g->mode & 07777) == 0640);
	check_bytes(g, data, FILE_LEN);

	/* a change to the copy leaves the original as it was */
	CHECK(hfs_write(g, "xyz", 3, 10, &ctx, NULL) == 3);
	check_bytes(f, data, FILE_LEN);
	memcpy(data + 10, "xyz", 3);
	check_bytes(g, data, FILE_LEN);

	hfs_iput(g, 1);
	hfs_iput(f, 1);
	free(data);
	check_deep_clear();
	printf("core alone: heap a written, its image restored into b, bytes equal; a tree "
	       "%d deep emptied on a 256 KiB stack\n", DEPTH);
	return 0;
}
