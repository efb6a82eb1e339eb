/*
 * save.c — replacing an image file atomically (docs/IMAGE.md, "Saving atomically").
 *
 * How: mkstemp() makes PATH.XXXXXX in PATH's directory (same filesystem, so the rename is
 * atomic); the caller writes the whole image into it; commit fsyncs the file, renames it
 * over PATH and fsyncs the directory so the new name is durable too.  Any failure removes
 * the temporary file and leaves PATH as it was.
 *
 * Locking: none; one save at a time per img_save.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img_i.h"

int img_save_open(const char *path, struct img_save *s)
{
	*s = (struct img_save){ .fd = -1, .path = path };
	if (asprintf(&s->tmp, "%s.XXXXXX", path) < 0) {
		s->tmp = NULL;
		return -ENOMEM;
	}
	s->fd = mkostemp(s->tmp, O_CLOEXEC);
	if (s->fd < 0) {
		int ret = -errno;

		free(s->tmp);
		s->tmp = NULL;
		return ret;
	}
	return 0;
}

void img_save_abort(struct img_save *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->tmp)
		unlink(s->tmp);
	free(s->tmp);
	*s = (struct img_save){ .fd = -1 };
}

/* fsync the directory holding path. */
static int sync_dir(const char *path)
{
	char *copy = strdup(path);
	int fd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	int ret = !copy ? -ENOMEM : fd < 0 ? -errno : 0;

	if (fd >= 0 && fsync(fd) < 0)
		ret = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return ret;
}

int img_save_commit(struct img_save *s)
{
	int ret = 0;

	if (fsync(s->fd) < 0)
		ret = -errno;
	if (close(s->fd) < 0 && !ret)
		ret = -errno;
	s->fd = -1;
	if (!ret && rename(s->tmp, s->path) < 0)
		ret = -errno;
	if (ret) {
		img_save_abort(s);
		return ret;
	}
	free(s->tmp);
	s->tmp = NULL;
	return sync_dir(s->path);
}
