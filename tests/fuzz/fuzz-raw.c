/*
 * fuzz-raw.c — the requests the daemon answers before libfuse (fs/edge/raw.c
 * hfs_raw_parse): FUSE_TMPFILE and FUSE_STATX as read from /dev/fuse or a ring entry.
 * What an accepted request promises is checked: its header length is the bytes given and
 * its arguments lie inside them.
 * No locking: single-threaded.
 */
#include <stdlib.h>
#include <string.h>

#include "../../fs/edge/raw_i.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	void *p = malloc(size ? size : 1); /* exactly size bytes: ASan sees any overread */
	struct hfs_raw r;
	size_t need;
	int ret;

	if (!p)
		return 0;
	memcpy(p, data, size);
	ret = hfs_raw_parse(p, size, &r);
	if (ret == 1) {
		need = sizeof(struct fuse_in_header) +
		       (r.opcode == HFS_FUSE_TMPFILE ? sizeof(struct fuse_create_in)
						     : sizeof(struct hfs_fuse_statx_in));
		if (size < need || !r.nodeid ||
		    ((const struct fuse_in_header *)p)->len != size)
			abort();
	} else if (ret != 0 && ret != -22) {
		abort();
	}
	free(p);
	return 0;
}
