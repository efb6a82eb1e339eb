/*
 * dm.c — the direct_map memory mode of a heap (pol.direct_map): its buddy metadata (and
 * so its chunk descriptor table, with the generations) lives in a memfd that libheapfs
 * clients map read-only (sealed: only the daemon's own mapping, made before the seal,
 * writes it), its data in a memfd (BUDDY_F_MEMFD).  The client socket and the
 * leases that hand these out are fs/direct/; this is only the heap's memory, which the
 * core creates with the heap (heap.c) and the object segment's map writer brackets with
 * the sequence counter (objects/).  Its heaps start with the ops fs/direct registered
 * (hfs_dm_set_ops: a range a client maps must not move).
 * Locking: create/destroy run with the heap (no one else sees it yet / any more); the
 * sequence counter is bumped by the map's one writer (under its map mutex).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chunk.h"
#include "core.h"

#define PAGE 4096u

static atomic_uint_fast64_t next_key = 1;
static const struct hfs_heap_ops *dm_ops; /* set once, before the first heap */

void hfs_dm_set_ops(const struct hfs_heap_ops *ops)
{
	dm_ops = ops;
}

int hfs_dm_heap_create(struct hfs_heap *h, struct buddy_params *bp)
{
	struct hfs_dm *dm = calloc(1, sizeof(*dm));
	int64_t need;
	int ret;

	if (!dm)
		return -ENOMEM;
	bp->flags |= BUDDY_F_MEMFD;
	dm->meta = MAP_FAILED;
	need = buddy_meta_size(bp);
	ret = (int)need;
	if (need < 0)
		goto fail;
	dm->seq_off = ((uint64_t)need + PAGE - 1) & ~(uint64_t)(PAGE - 1);
	dm->meta_size = dm->seq_off + PAGE;
	dm->meta_fd = memfd_create("heapfs-meta", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ret = -errno;
	if (dm->meta_fd < 0)
		goto fail;
	if (ftruncate(dm->meta_fd, (off_t)dm->meta_size) < 0) {
		ret = -errno;
		goto fail_fd;
	}
	dm->meta = mmap(NULL, dm->meta_size, PROT_READ | PROT_WRITE, MAP_SHARED, dm->meta_fd, 0);
	if (dm->meta == MAP_FAILED) {
		ret = -errno;
		goto fail_fd;
	}
	/* every client of the heap gets this descriptor (read-only access is enough): from
	 * now on only our mapping writes it — no writable mapping, write() or size change
	 * through any descriptor (F_SEAL_FUTURE_WRITE keeps mappings made before it) */
	if (fcntl(dm->meta_fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
		  F_SEAL_SEAL) < 0) {
		ret = -errno;
		goto fail_map;
	}
	dm->seq = (_Atomic uint64_t *)((char *)dm->meta + dm->seq_off);
	ret = buddy_create_at(bp, dm->meta, dm->seq_off, &h->b);
	if (ret)
		goto fail_map;
	ret = chunk_gen_layout(h->b, &dm->gen_off, &dm->gen_stride);
	if (ret)
		goto fail_buddy;
	dm->key = atomic_fetch_add(&next_key, 1);
	h->dm = dm;
	if (dm_ops)
		h->ops = dm_ops;
	return 0;
fail_buddy:
	buddy_destroy(h->b);
	h->b = NULL;
fail_map:
	munmap(dm->meta, dm->meta_size);
fail_fd:
	close(dm->meta_fd);
fail:
	free(dm);
	return ret;
}

void hfs_dm_heap_destroy(struct hfs_heap *h)
{
	if (!h->dm)
		return;
	munmap(h->dm->meta, h->dm->meta_size);
	close(h->dm->meta_fd);
	free(h->dm);
	h->dm = NULL;
}

void hfs_dm_seq_begin(struct hfs_heap *h)
{
	if (h->dm) {
		atomic_fetch_add(h->dm->seq, 1); /* odd: readers retry */
		atomic_thread_fence(memory_order_release);
	}
}

void hfs_dm_seq_end(struct hfs_heap *h)
{
	if (h->dm)
		atomic_fetch_add_explicit(h->dm->seq, 1, memory_order_release);
}
