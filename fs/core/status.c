/*
 * status.c — the JSON of the .heapfs/ files (jansson): stats and each heap's heaps/NAME and
 * maps/NAME; and the files features register (hfs_status_register: partner, verify,
 * donors, segment — JSON or bytes), with their parts of stats (hfs_stats_register:
 * "objects", "clients").  Rendered once when the file is opened (a consistent snapshot
 * served from the file handle).  Each heap's per-CPU caches are drained first so the
 * figures show a coalesced heap.
 *
 * Bounds (README "Limits"): a map lists at most HFS_MAP_MAX_BLOCKS blocks (then
 * "truncated": true).  Snapshots are immutable and shared: an open whose rendering equals
 * the last snapshot of that file takes a reference to it instead of keeping its own, so
 * any number of opens of an unchanged file hold one copy.  Distinct snapshots are charged
 * to the snapshot budget (HFS_SNAPSHOT_BUDGET, shared with directory listings, dir.c):
 * past it an open gets ENFILE.
 *
 * Locking: rendering holds no namespace lock.  A heap's and map's file holds a reference
 * to its heap; stats takes hfs.ns shared only to copy the heap list (hfs_heaps_get) and
 * renders from the copy.  A status inode's last snapshot (st.last) and every snapshot's
 * reference count are under that inode's lock.  The registrations are made before the
 * mount, in one thread, and only read after.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "core.h"

static atomic_size_t held; /* bytes charged to the snapshot budget */
static struct hfs_status_file *files, **files_end = &files; /* registration order */
static struct hfs_stats_part *parts, **parts_end = &parts;

static const char *owner_role(const struct hfs_heap *h)
{
	(void)h;
	return "owner";
}

static const char *(*role_of)(const struct hfs_heap *h) = owner_role;

void hfs_status_register(struct hfs_status_file *f)
{
	f->next = NULL;
	*files_end = f;
	files_end = &f->next;
}

void hfs_stats_register(struct hfs_stats_part *p)
{
	p->next = NULL;
	*parts_end = p;
	parts_end = &p->next;
}

void hfs_status_role(const char *(*role)(const struct hfs_heap *h))
{
	role_of = role;
}

int __hfs_status_files(struct hfs_inode *dot)
{
	for (struct hfs_status_file *f = files; f; f = f->next) {
		struct hfs_inode *i = __hfs_fixed_add(dot, f->name, HFS_STATUS,
						      S_IFREG | (f->mode ? f->mode : 0444),
						      HFS_ST_FEATURE);

		if (!i)
			return -ENOMEM;
		i->st.file = f;
		if (!f->json)
			i->size = f->size; /* fixed: cp and sendfile go by st_size */
	}
	return 0;
}

static int set(json_t *o, const char *key, json_t *v)
{
	return json_object_set_new(o, key, v);
}

static json_t *heap_json(struct hfs_heap *h)
{
	const struct conf_heap *p = &h->pol;
	json_t *o = json_object(), *fb = json_object(), *ne = json_array();
	struct buddy_stats st;
	uint64_t inodes = atomic_load(&h->inodes);
	unsigned top;
	int bad = !o || !fb || !ne;

	buddy_drain(h->b);
	buddy_stats(h->b, &st);
	top = buddy_heap_order(h->b);
	for (unsigned k = h->min_order; k <= top && !bad; k++) {
		char key[16];

		snprintf(key, sizeof(key), "%u", k);
		bad |= set(fb, key, json_integer((json_int_t)st.free_blocks[k]));
		if (st.nonempty_orders & (1ull << k))
			bad |= json_array_append_new(ne, json_integer(k));
	}
	bad |= set(o, "name", json_string(p->name));
	bad |= set(o, "size", json_integer((json_int_t)st.size));
	bad |= set(o, "min_block", json_integer((json_int_t)st.min_block));
	bad |= set(o, "used", json_integer((json_int_t)st.used));
	bad |= set(o, "free", json_integer((json_int_t)st.free));
	bad |= set(o, "largest_free", json_integer((json_int_t)st.largest_free));
	bad |= set(o, "free_blocks", fb);
	bad |= set(o, "nonempty_orders", ne);
	bad |= set(o, "chunk", json_integer((json_int_t)st.chunk_size));
	bad |= set(o, "chunks_committed", json_integer((json_int_t)st.chunks_committed));
	bad |= set(o, "chunks_released", json_integer((json_int_t)st.chunks_released));
	bad |= set(o, "chunks_idle", json_integer((json_int_t)st.chunks_idle));
	bad |= set(o, "files", json_integer((json_int_t)atomic_load(&h->files)));
	bad |= set(o, "inodes", json_integer((json_int_t)inodes));
	bad |= set(o, "inodes_max", json_integer((json_int_t)h->max_inodes));
	bad |= set(o, "inodes_free", json_integer((json_int_t)hfs_heap_ifree(h)));
	bad |= set(o, "inode_metadata_bytes", json_integer((json_int_t)atomic_load(&h->meta)));
	bad |= set(o, "replicate", json_string(conf_replicate_name(p->replicate)));
	bad |= set(o, "role", json_string(role_of(h)));
	bad |= set(o, "layout", json_string(conf_layout_name(p->layout)));
	bad |= set(o, "cache", json_string(conf_cache_name(p->cache)));
	bad |= set(o, "writers", json_string(conf_writers_name(p->writers)));
	bad |= set(o, "pin", json_boolean(p->pin));
	bad |= set(o, "direct_map", json_boolean(p->direct_map));
	bad |= set(o, "pin_failures", json_integer((json_int_t)st.pin_failures));
	bad |= set(o, "metadata_bytes", json_integer((json_int_t)st.metadata_bytes));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* The registered parts of stats that go at `at`: 0, or non-zero when one failed. */
static int add_parts(json_t *o, enum hfs_stats_at at)
{
	int bad = 0;

	for (struct hfs_stats_part *p = parts; p; p = p->next)
		if (p->at == at)
			bad |= p->add(o) != 0;
	return bad;
}

static json_t *stats_json(struct hfs_heap **v, unsigned n)
{
	json_t *o = json_object(), *a = json_array();
	int bad = !o || !a;

	for (unsigned k = 0; k < n && !bad; k++)
		bad |= json_array_append_new(a, heap_json(v[k]));
	bad |= set(o, "heaps", a);
	bad |= add_parts(o, HFS_STATS_AFTER_HEAPS);
	bad |= set(o, "version", json_string(HEAPFS_VERSION));
	bad |= set(o, "mount", json_string(hfs.mountpoint));
	bad |= set(o, "pid", json_integer(getpid()));
	bad |= set(o, "spin_us", json_integer(hfs.spin_ns / 1000)); /* in force, after main.c */
	bad |= set(o, "transport",
		   json_string(atomic_load(&hfs.uring_live) ? "io_uring" : "/dev/fuse"));
	bad |= set(o, "snapshot_bytes", json_integer((json_int_t)atomic_load(&held)));
	bad |= set(o, "snapshot_budget", json_integer(HFS_SNAPSHOT_BUDGET));
	bad |= add_parts(o, HFS_STATS_AT_END);
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

struct walk {
	json_t *blocks;
	size_t n;
	bool truncated;
};

#define WALK_FULL 1 /* walk_fn's "stop": the map holds HFS_MAP_MAX_BLOCKS blocks */

static int walk_fn(void *arg, uint64_t off, unsigned order, bool free)
{
	struct walk *w = arg;
	json_t *blk;

	if (w->n == HFS_MAP_MAX_BLOCKS) {
		w->truncated = true;
		return WALK_FULL;
	}
	blk = json_pack("[I, I, i]", (json_int_t)off, (json_int_t)order, free ? 1 : 0);
	w->n++;
	return blk ? json_array_append_new(w->blocks, blk) : -ENOMEM;
}

static json_t *map_json(struct hfs_heap *h)
{
	struct walk w = { .blocks = json_array() };
	int ret;

	if (!w.blocks)
		return NULL;
	buddy_drain(h->b);
	ret = buddy_walk(h->b, walk_fn, &w);
	if (ret && ret != WALK_FULL) {
		json_decref(w.blocks);
		return NULL;
	}
	return json_pack("{s:s, s:I, s:I, s:b, s:o}", "name", h->pol.name,
			 "size", (json_int_t)(1ull << buddy_heap_order(h->b)),
			 "min_block", (json_int_t)h->pol.min_block, "truncated", w.truncated,
			 "blocks", w.blocks);
}

/* An immutable rendering, shared by the opens that saw the same bytes. */
struct hfs_snap {
	struct hfs_inode *owner; /* the status file; refs is under its lock */
	uint64_t refs;
	size_t len;
	char data[];
};

int hfs_snapshot_charge(size_t bytes)
{
	if (atomic_fetch_add(&held, bytes) + bytes <= HFS_SNAPSHOT_BUDGET)
		return 0;
	atomic_fetch_sub(&held, bytes);
	return -ENFILE;
}

void hfs_snapshot_uncharge(size_t bytes)
{
	atomic_fetch_sub(&held, bytes);
}

static struct hfs_snap *snap_of(const char *data)
{
	return (struct hfs_snap *)(void *)(data - offsetof(struct hfs_snap, data));
}

/* Forget a snapshot that lost its last reference.  owner->lock held for writing. */
static void __snap_free(struct hfs_snap *sn)
{
	if (sn->owner->st.last == sn)
		sn->owner->st.last = NULL;
	hfs_snapshot_uncharge(sn->len);
	free(sn);
}

/* A registered file of bytes (.heapfs/segment: a sealed copy of the object segment).  Its
 * bytes are charged while they are allocated and copied, so a burst of opens stays in the
 * budget. */
static int render_bytes(struct hfs_inode *i, struct hfs_snap **out)
{
	const struct hfs_status_file *f = i->st.file;
	struct hfs_snap *sn;
	int ret = hfs_snapshot_charge(f->size);

	if (ret)
		return ret;
	sn = malloc(sizeof(*sn) + f->size);
	if (sn) {
		*sn = (struct hfs_snap){ .owner = i, .refs = 1, .len = f->size };
		f->copy(sn->data);
	}
	hfs_snapshot_uncharge(f->size);
	*out = sn;
	return sn ? 0 : -ENOMEM;
}

/* The JSON of status file i (a new value; NULL: out of memory), and how to print it. */
static json_t *status_json(struct hfs_inode *i, size_t *flags)
{
	struct hfs_heap **v;
	unsigned n;
	json_t *j;

	*flags = JSON_INDENT(2) | JSON_PRESERVE_ORDER;
	switch (i->st.what) {
	case HFS_ST_STATS:
		v = hfs_heaps_get(&n);
		j = v ? stats_json(v, n) : NULL;
		hfs_heaps_put(v, n);
		return j;
	case HFS_ST_HEAP:
		return heap_json(i->st.heap);
	case HFS_ST_MAP:
		*flags = JSON_COMPACT | JSON_PRESERVE_ORDER; /* can be long */
		return map_json(i->st.heap);
	case HFS_ST_FEATURE:
		return i->st.file->json();
	/* .heapfs/images/NAME is a stream (image.c; the edge reads the snapshot's pipe), never
	 * rendered.  Its case stays so that -Wswitch sees every kind here: a kind added later
	 * without a case fails the build. */
	case HFS_ST_IMAGE:
		break;
	}
	return NULL;
}

/* Status file i rendered as a new snapshot of it: 0 or -ENOMEM. */
static int render(struct hfs_inode *i, struct hfs_snap **out)
{
	struct hfs_snap *sn;
	size_t flags, len;
	json_t *j;
	char *s;

	if (i->st.what == HFS_ST_FEATURE && !i->st.file->json)
		return render_bytes(i, out);
	j = status_json(i, &flags);
	s = j ? json_dumps(j, flags) : NULL;
	json_decref(j);
	if (!s)
		return -ENOMEM;
	len = strlen(s);
	sn = malloc(sizeof(*sn) + len + 1);
	if (sn) {
		*sn = (struct hfs_snap){ .owner = i, .refs = 1, .len = len + 1 };
		memcpy(sn->data, s, len);
		sn->data[len] = '\n'; /* the buffer is bytes, not a string */
	}
	free(s);
	*out = sn;
	return sn ? 0 : -ENOMEM;
}

int hfs_status_render(struct hfs_inode *i, char **buf, size_t *len)
{
	struct hfs_snap *sn, *last;
	int ret;

	if (i->kind != HFS_STATUS)
		return -EINVAL;
	ret = render(i, &sn);
	if (ret)
		return ret;
	pthread_rwlock_wrlock(&i->lock);
	last = i->st.last;
	if (last && last->len == sn->len && memcmp(last->data, sn->data, sn->len) == 0) {
		free(sn);
		sn = last;
		sn->refs++;
	} else {
		ret = hfs_snapshot_charge(sn->len);
		if (ret)
			free(sn);
		else
			i->st.last = sn;
	}
	pthread_rwlock_unlock(&i->lock);
	if (ret)
		return ret;
	*buf = sn->data;
	*len = sn->len;
	return 0;
}

void hfs_status_put(struct hfs_inode *i, char *buf)
{
	struct hfs_snap *sn = snap_of(buf);

	pthread_rwlock_wrlock(&i->lock);
	if (--sn->refs == 0)
		__snap_free(sn);
	pthread_rwlock_unlock(&i->lock);
}
