/*
 * fuzz-apply.c — the heap image applier (fs/core/image.c) and the core functions it calls
 * (hfs_create, hfs_link, hfs_write, hfs_truncate, hfs_setattr, hfs_rename, hfs_unlink,
 * xattrs): what a restore does with an image file from anywhere, and a mirror with the
 * records its partner sends.  Each input gets a heap of its own (a run-time heap, as
 * `mkdir heaps/NAME` makes) in a core set up as the daemon sets it up, without FUSE:
 *   - an input that starts with the stream's magic is a whole image: hfs_image_restore
 *     reads it from a memfd (the reader, then the applier);
 *   - else its first byte chooses the heap (bit 0: contiguous layout, bit 1: apply as a
 *     live mirror, bit 2: settle at the end) and the rest is a run of records as the
 *     stream and the partner link carry them (16-byte header, payload), each decoded by
 *     img_rec_decode as a mirror does and applied whatever became of the ones before (a
 *     refused record must leave the heap consistent for the next).
 * After the input: the allocator's own check (buddy_check), and every file's extents
 * against its size and the heap's count of held bytes; then every name is removed and the
 * heap must be one free block again (nothing leaked, nothing freed twice), and it goes.
 * The walks below keep their own stack: a fuzzed tree may be deep.  The seeds in
 * corpus/apply/ are written by corpus-apply.py (img-mk): a tree, the change records, and
 * the inputs that crashed the applier before issue 16, as images and as record runs.
 * No locking needed beyond what the core takes: single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"
#include "img.h"

#define HEAP_ORDER 22 /* a 4 MiB heap: room for what an input's records ask */
#define MIN_BLOCK 64


static const char config[] =
	"objects { size = 64K  min_block = 64 }\n"
	"pool { size = 1M  max_process_memory = 1M }\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	FILE *devnull = fopen("/dev/null", "w");

	(void)argc;
	(void)argv;
	pthread_rwlock_init(&hfs.ns, NULL);
	hfs.uid = getuid();
	hfs.gid = getgid();
	if (!devnull || conf_load_string(config, "fuzz-apply", devnull, &hfs.conf) ||
	    hfs_itable_init() || hfs_mount_tree())
		abort();
	fclose(devnull);
	return 0;
}

/* A stack of directories for the walks (on the heap: a tree may be as deep as it likes),
 * each with its name in the one below. */
struct frame {
	struct hfs_inode *dir;
	char name[HFS_NAME_MAX + 1];
};

struct dirs {
	struct frame *v;
	size_t n, cap;
};

static void push(struct dirs *d, struct hfs_inode *dir, const char *name)
{
	if (d->n == d->cap) {
		d->cap = d->cap ? 2 * d->cap : 16;
		d->v = realloc(d->v, d->cap * sizeof(*d->v));
		if (!d->v)
			abort();
	}
	d->v[d->n].dir = dir;
	snprintf(d->v[d->n++].name, sizeof(d->v->name), "%s", name);
}

/* Every directory's entries point back at it; every regular file's extents lie back to
 * back from 0, cap and held are their sum and size is within cap. */
static void check_tree(struct hfs_heap *h)
{
	struct dirs d = { 0 };

	push(&d, h->dir, "");
	while (d.n) {
		struct hfs_inode *dir = d.v[--d.n].dir;
		struct hfs_dirent *de, *tmp;

		HASH_ITER(hh, dir->dir.ents, de, tmp) {
			struct hfs_inode *i = de->inode;
			uint64_t cap = 0, held = 0;

			if (i->heap != h || !i->nlink)
				abort();
			if (i->kind == HFS_DIR) {
				if (i->dir.parent != dir)
					abort();
				push(&d, i, de->name);
			}
			if (i->kind != HFS_REG)
				continue;
			/* sorted, apart, min_block aligned; holes between them allowed */
			for (size_t k = 0; k < i->file.n; k++) {
				if (i->file.ext[k].foff < cap || i->file.ext[k].order > HEAP_ORDER ||
				    i->file.ext[k].foff % h->pol.min_block)
					abort();
				cap = i->file.ext[k].foff + (1ull << i->file.ext[k].order);
				held += 1ull << i->file.ext[k].order;
			}
			if (cap != i->file.cap || held != i->file.held)
				abort();
		}
	}
	free(d.v);
}

/* Remove every name below h's directory, deepest first. */
static void empty(struct hfs_heap *h)
{
	struct dirs d = { 0 };

	push(&d, h->dir, "");
	while (d.n) {
		struct frame *f = &d.v[d.n - 1];
		struct hfs_dirent *de = f->dir->dir.ents;
		char name[HFS_NAME_MAX + 1];

		if (de && de->inode->kind == HFS_DIR) {
			push(&d, de->inode, de->name);
		} else if (de) {
			snprintf(name, sizeof(name), "%s", de->name);
			if (hfs_unlink(f->dir, name, NULL))
				abort();
		} else if (--d.n && hfs_rmdir(d.v[d.n - 1].dir, d.v[d.n].name, NULL)) {
			abort(); /* an empty directory that would not go */
		}
	}
	free(d.v);
}

/* The records after the first byte, one at a time, as a mirror receives them. */
static void apply_records(struct hfs_apply *a, const uint8_t *p, size_t left, char *why,
			  size_t whylen)
{
	static char str[IMG_REC_STR];

	while (left >= IMG_REC_HDR) {
		uint64_t len;
		size_t n;
		struct img_rec rec;
		const void *data;

		memcpy(&len, p + 8, sizeof(len));
		n = len > left - IMG_REC_HDR ? left : IMG_REC_HDR + (size_t)len;
		if (!img_rec_decode(p, n, &rec, &data, str, why, whylen))
			hfs_apply_mem(a, NULL, &rec, data);
		p += n;
		left -= n;
	}
}

static void restore(struct hfs_heap *h, const uint8_t *data, size_t size, char *why,
		    size_t whylen)
{
	int fd = memfd_create("fuzz-apply", MFD_CLOEXEC);

	if (fd < 0 || write(fd, data, size) != (ssize_t)size || lseek(fd, 0, SEEK_SET))
		abort();
	hfs_image_restore(h, fd, why, whylen);
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conf_heap pol;
	struct hfs_inode *dir;
	struct hfs_apply *a;
	struct hfs_heap *h;
	struct buddy_stats st;
	char why[256];
	bool image = size >= 8 && !memcmp(data, IMG_MAGIC, 8);

	if (!size)
		return 0;
	if (conf_heap_defaults(hfs.conf, "f", &pol))
		abort();
	pol.size = 1ull << HEAP_ORDER;
	pol.min_block = MIN_BLOCK;
	pol.chunk = 1ull << 16;
	pol.inodes = 4096;
	pol.layout = !image && data[0] & 1 ? CONF_LAYOUT_CONTIGUOUS : CONF_LAYOUT_EXTENTS;
	pthread_rwlock_wrlock(&hfs.ns);
	if (__hfs_heap_mkdir("f", &pol, false, &dir))
		abort();
	pthread_rwlock_unlock(&hfs.ns);
	h = dir->heap;
	hfs_heap_get(h); /* ours, past the heap's removal: its allocator is checked last */
	why[0] = 0;
	if (image) {
		restore(h, data, size, why, sizeof(why));
	} else {
		if (hfs_apply_begin(h, why, sizeof(why), &a))
			abort();
		if (data[0] & 2)
			hfs_apply_live(a);
		apply_records(a, data + 1, size - 1, why, sizeof(why));
		hfs_apply_end(a, data[0] & 4);
	}
	buddy_drain(h->b);
	buddy_stats(h->b, &st);
	if (buddy_check(h->b) || st.used != atomic_load(&h->held))
		abort(); /* the allocator's blocks are the files' blocks */
	check_tree(h);
	empty(h);
	buddy_drain(h->b);
	buddy_stats(h->b, &st);
	if (buddy_check(h->b) || st.used || st.free != st.size || h->held ||
	    atomic_load(&h->files) || atomic_load(&h->inodes) != 1)
		abort(); /* the heap is not whole again: something leaked or was lost */
	pthread_rwlock_wrlock(&hfs.ns);
	if (__hfs_heap_rmdir(dir))
		abort();
	pthread_rwlock_unlock(&hfs.ns);
	hfs_heap_put(h);
	return 0;
}
