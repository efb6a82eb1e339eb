/*
 * test-save.c — unit tests of the atomic image save (img/save.c): a commit replaces the
 * file whole and leaves no temporary behind; an abort, a missing directory and a rename
 * that cannot happen leave the old file as it was and no temporary behind.
 * Single-threaded; works in a fresh directory under /tmp.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"
#include "tcheck.h"

static char dir[] = "/tmp/img-save-XXXXXX";
static char path[256];

/* Number of entries in dir (without . and ..). */
static int entries(const char *d)
{
	DIR *dp = opendir(d);
	struct dirent *e;
	int n = 0;

	while (dp && (e = readdir(dp)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	if (dp)
		closedir(dp);
	return dp ? n : -1;
}

/* The file's content is exactly s. */
static int holds(const char *p, const char *s)
{
	char buf[64] = "";
	int fd = open(p, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

	if (fd >= 0)
		close(fd);
	return n == (ssize_t)strlen(s) && !memcmp(buf, s, (size_t)n);
}

static int put(const char *p, const char *s)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int ok = fd >= 0 && write(fd, s, strlen(s)) == (ssize_t)strlen(s);

	return fd >= 0 && !close(fd) && ok ? 0 : -1;
}

static void t_commit(void)
{
	struct img_save s;
	struct stat st;

	TEQ(put(path, "old"), 0);
	TEQ(img_save_open(path, &s), 0);
	TEQ(entries(dir), 2); /* the old file and the temporary */
	T(holds(path, "old"));
	T(write(s.fd, "new image", 9) == 9);
	TEQ(img_save_commit(&s), 0);
	T(holds(path, "new image"));
	TEQ(entries(dir), 1);
	T(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
}

static void t_abort(void)
{
	struct img_save s;

	TEQ(put(path, "old"), 0);
	TEQ(img_save_open(path, &s), 0);
	T(write(s.fd, "half", 4) == 4);
	img_save_abort(&s);
	T(holds(path, "old"));
	TEQ(entries(dir), 1);
}

static void t_refusals(void)
{
	char missing[300], sub[300];
	struct img_save s;

	snprintf(missing, sizeof(missing), "%s/nodir/x.img", dir);
	TEQ(img_save_open(missing, &s), -ENOENT);
	TEQ(entries(dir), 1);
	/* the target is a non-empty directory: the rename fails, nothing changes */
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	snprintf(missing, sizeof(missing), "%s/sub/inside", dir);
	T(mkdir(sub, 0755) == 0 && put(missing, "keep") == 0);
	TEQ(img_save_open(sub, &s), 0);
	T(write(s.fd, "new", 3) == 3);
	TEQ(img_save_commit(&s), -EISDIR);
	T(holds(missing, "keep"));
	TEQ(entries(dir), 2); /* the old file and sub: no temporary left */
	T(unlink(missing) == 0 && rmdir(sub) == 0);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/heap.img", dir);
	RUN(t_commit);
	RUN(t_abort);
	RUN(t_refusals);
	unlink(path);
	rmdir(dir);
	return tc_failed != 0;
}
