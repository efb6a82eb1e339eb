/*
 * test-core.c — the core (fs/core/) alone: linked with nothing but alloc/, conf/ and img/
 * (no feature folder, no libfuse), it mounts its tree, makes two heaps, writes a file in
 * one, writes that heap's image and restores it into the other, and reads the bytes back
 * through the core.  That it links at all is half the test: a call from the core into a
 * feature or into libfuse is an undefined symbol here.  Without features, .heapfs/ holds
 * only the core's files and objects/ and pool/ are fixed (EPERM).  Last, a tree 20,000
 * levels deep is emptied (what a mirror does before a whole image) on a thread with a
 * 256 KiB stack: no walk of the core recurses once per level.  Between, O_TMPFILE's
 * nameless inodes and their first name (check_tmpfile).
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

/* What the observer of heap "t" saw: one letter per change (C create, L link, R range,
 * S setattr, W write, X xattr, others '?'), in order. */
static char seen[32];

static void note(const struct hfs_change *ch, void *arg)
{
	size_t n = strlen(seen);

	(void)arg;
	if (n + 1 < sizeof(seen))
		seen[n] = ch->kind == HFS_CH_CREATE ? 'C' : ch->kind == HFS_CH_LINK ? 'L' :
			  ch->kind == HFS_CH_RANGE ? 'R' : ch->kind == HFS_CH_SETATTR ? 'S' :
			  ch->kind == HFS_CH_WRITE ? 'W' : ch->kind == HFS_CH_XATTR ? 'X' : '?';
}

/* O_TMPFILE: a nameless inode counted in its heap; its first name is a create to the
 * observers (then its bytes and attributes), a second one an ordinary link; one without
 * a name goes whole at its last release. */
static void check_tmpfile(void)
{
	const struct hfs_ctx ctx = { .uid = getuid(), .gid = getgid(), .umask = 022,
				     .acl = true };
	struct hfs_inode *dt, *t, *u;
	struct hfs_heap *h = mkheap("t", &dt);
	uint64_t inodes = atomic_load(&h->inodes);
	int obs = hfs_observer_add(note, NULL);

	CHECK(obs >= 0);
	hfs_observe(h, obs, true);
	CHECK(hfs_tmpfile(dt, S_IFDIR | 0700, &ctx, &t, NULL) == -EINVAL);
	CHECK(hfs_tmpfile(hfs.objects, S_IFREG | 0600, &ctx, &t, NULL) == -EPERM);
	CHECK(hfs_tmpfile(dt, S_IFREG | 0666, &ctx, &t, NULL) == 0);
	CHECK(t->nlink == 0 && (t->mode & 07777) == 0644 && t->heap == h);
	CHECK(atomic_load(&h->inodes) == inodes + 1 && dt->dir.nents == 0);
	CHECK(hfs_open(t, O_RDWR, &ctx, NULL) == 0);
	CHECK(hfs_write(t, "nameless", 8, 0, &ctx, NULL) == 8);
	CHECK(strcmp(seen, "?W") == 0); /* the first writer, the write */
	memset(seen, 0, sizeof(seen));
	CHECK(hfs_link(t, dt, "now", NULL) == 0);
	CHECK(strcmp(seen, "CRS") == 0); /* not a link: the observers never heard of it */
	CHECK(t->nlink == 1 && !t->tmpfile && atomic_load(&h->inodes) == inodes + 1);
	memset(seen, 0, sizeof(seen));
	CHECK(hfs_link(t, dt, "again", NULL) == 0);
	CHECK(strcmp(seen, "L") == 0 && atomic_load(&h->inodes) == inodes + 2);
	check_bytes(t, (const unsigned char *)"nameless", 8);
	hfs_release(t, O_RDWR);
	hfs_iput(t, 3); /* the tmpfile's lookup, the two links' */
	/* unlinked again: no name may come back */
	CHECK(hfs_unlink(dt, "now", NULL) == 0 && hfs_unlink(dt, "again", NULL) == 0);
	/* never named: gone at its release and last reference, inode and all */
	CHECK(hfs_tmpfile(dt, S_IFREG | 0600, &ctx, &u, NULL) == 0);
	CHECK(hfs_open(u, O_WRONLY, &ctx, NULL) == 0);
	CHECK(hfs_write(u, "gone", 4, 0, &ctx, NULL) == 4);
	hfs_release(u, O_WRONLY);
	CHECK(u->file.held == 0); /* its bytes went at the release */
	hfs_iput(u, 1);
	CHECK(atomic_load(&h->inodes) == inodes);
	hfs_observe(h, obs, false);
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
	check_tmpfile();
	check_deep_clear();
	printf("core alone: heap a written, its image restored into b, bytes equal; a tree "
	       "%d deep emptied on a 256 KiB stack\n", DEPTH);
	return 0;
}
