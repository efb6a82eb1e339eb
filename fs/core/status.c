/*
 * status.c — the JSON of the .heapfs/ files (jansson): stats, heaps/NAME, maps/NAME,
 * partner, donors; and .heapfs/segment, the sealed bytes of the object segment.  Rendered once when the file is opened (a consistent snapshot served
 * from the file handle).  Each heap's per-CPU caches are drained first so the figures show
 * a coalesced heap.
 *
 * Bounds (README "Limits"): a map lists at most HFS_MAP_MAX_BLOCKS blocks (then
 * "truncated": true).  Snapshots are immutable and shared: an open whose rendering equals
 * the last snapshot of that file takes a reference to it instead of keeping its own, so
 * any number of opens of an unchanged file hold one copy.  Distinct snapshots are charged
 * to the snapshot budget (HFS_SNAPSHOT_BUDGET, shared with directory listings, dir.c):
 * past it an open gets ENFILE.
 *
 * Locking: rendering holds no namespace lock.  A heap's and map's file holds a reference
 * to its heap; stats and partner take hfs.ns shared only to copy the heap list (taking a
 * reference to each heap) and render from the copy.  A status inode's last snapshot
 * (st.last) and every snapshot's reference count are under that inode's lock.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "direct.h"
#include "core.h"
#include "pool.h"

static atomic_size_t held; /* bytes charged to the snapshot budget */

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
	bad |= set(o, "inodes_free", json_integer((json_int_t)(h->max_inodes - inodes)));
	bad |= set(o, "inode_metadata_bytes", json_integer((json_int_t)atomic_load(&h->meta)));
	bad |= set(o, "replicate", json_string(conf_replicate_name(p->replicate)));
	bad |= set(o, "role", json_string(hfs_repl_role(h)));
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

/* A copy of the heap list, each heap referenced (heaps_put() drops them); NULL when out
 * of memory. */
static struct hfs_heap **heaps_get(unsigned *n)
{
	struct hfs_heap **v;

	pthread_rwlock_rdlock(&hfs.ns);
	*n = hfs.nheaps;
	v = malloc((*n ? *n : 1) * sizeof(*v));
	for (unsigned k = 0; v && k < *n; k++) {
		v[k] = hfs.heapv[k];
		hfs_heap_get(v[k]);
	}
	pthread_rwlock_unlock(&hfs.ns);
	return v;
}

static void heaps_put(struct hfs_heap **v, unsigned n)
{
	for (unsigned k = 0; v && k < n; k++)
		hfs_heap_put(v[k]);
	free(v);
}

static json_t *objects_json(void)
{
	struct hfs_objects_stats st;
	json_t *o = json_object();
	int bad = !o;

	hfs_objects_stats(&st);
	bad |= set(o, "size", json_integer((json_int_t)st.size));
	bad |= set(o, "min_block", json_integer((json_int_t)st.min_block));
	bad |= set(o, "used", json_integer((json_int_t)st.used));
	bad |= set(o, "free", json_integer((json_int_t)st.free));
	bad |= set(o, "largest_free", json_integer((json_int_t)st.largest_free));
	bad |= set(o, "objects", json_integer(st.objects));
	bad |= set(o, "map_slots", json_integer(st.map_slots));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *stats_json(struct hfs_heap **v, unsigned n)
{
	json_t *o = json_object(), *a = json_array();
	int bad = !o || !a;

	for (unsigned k = 0; k < n && !bad; k++)
		bad |= json_array_append_new(a, heap_json(v[k]));
	bad |= set(o, "heaps", a);
	bad |= set(o, "objects", objects_json());
	bad |= set(o, "version", json_string(HEAPFS_VERSION));
	bad |= set(o, "mount", json_string(hfs.mountpoint));
	bad |= set(o, "pid", json_integer(getpid()));
	bad |= set(o, "spin_us", json_integer(hfs.spin_ns / 1000)); /* in force, after main.c */
	bad |= set(o, "snapshot_bytes", json_integer((json_int_t)atomic_load(&held)));
	bad |= set(o, "snapshot_budget", json_integer(HFS_SNAPSHOT_BUDGET));
	bad |= hfs_client_status(o) != 0;
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

static json_t *partner_json(struct hfs_heap **v, unsigned n)
{
	json_t *heaps = json_object();

	struct hfs_repl_status rs;

	hfs_repl_status(&rs);
	/* the replicated heaps (no partner section: none) */
	for (unsigned k = 0; heaps && k < n; k++)
		if (v[k]->repl && set(heaps, v[k]->pol.name, json_string(hfs_repl_role(v[k])))) {
			json_decref(heaps);
			return NULL;
		}
	return json_pack("{s:s, s:s?, s:s?, s:s?, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
			 "state", rs.state,
			 "node", hfs.conf->partner.present ? hfs.conf->partner.node : NULL,
			 "peer", rs.peer[0] ? rs.peer : NULL,
			 "connect", hfs.conf->partner.present ? hfs.conf->partner.connect : NULL,
			 "epoch", (json_int_t)rs.epoch, "lag_bytes", (json_int_t)rs.lag_bytes,
			 "sent_bytes", (json_int_t)rs.sent_bytes,
			 "recv_bytes", (json_int_t)rs.recv_bytes,
			 "resync_done", (json_int_t)rs.resync_done,
			 "resync_total", (json_int_t)rs.resync_total, "heaps", heaps);
}

static json_t *donors_json(void)
{
	return hfs_pool_json();
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

/* .heapfs/segment: a sealed copy of the object segment (objects.c).  Its S bytes are
 * charged while they are allocated and copied, so a burst of opens stays in the budget. */
static int render_segment(struct hfs_inode *i, struct hfs_snap **out)
{
	uint64_t len = hfs_objects_size();
	struct hfs_snap *sn;
	int ret = hfs_snapshot_charge(len);

	if (ret)
		return ret;
	sn = malloc(sizeof(*sn) + len);
	if (sn) {
		*sn = (struct hfs_snap){ .owner = i, .refs = 1, .len = len };
		hfs_objects_snapshot(sn->data);
	}
	hfs_snapshot_uncharge(len);
	*out = sn;
	return sn ? 0 : -ENOMEM;
}

/* The JSON of status file i as a new snapshot of it: 0 or -ENOMEM. */
static int render(struct hfs_inode *i, struct hfs_snap **out)
{
	size_t flags = JSON_INDENT(2) | JSON_PRESERVE_ORDER, len;
	struct hfs_heap **v = NULL;
	unsigned n = 0;
	struct hfs_snap *sn;
	json_t *j = NULL;
	char *s;

	if (i->st.what == HFS_ST_SEGMENT)
		return render_segment(i, out);
	if (i->st.what == HFS_ST_STATS || i->st.what == HFS_ST_PARTNER) {
		v = heaps_get(&n);
		if (!v)
			return -ENOMEM;
	}
	switch (i->st.what) {
	case HFS_ST_STATS:
		j = stats_json(v, n);
		break;
	case HFS_ST_HEAP:
		j = heap_json(i->st.heap);
		break;
	case HFS_ST_MAP:
		j = map_json(i->st.heap);
		flags = JSON_COMPACT | JSON_PRESERVE_ORDER; /* can be long */
		break;
	case HFS_ST_PARTNER:
		j = partner_json(v, n);
		break;
	case HFS_ST_DONORS:
		j = donors_json();
		break;
	case HFS_ST_VERIFY:
		j = hfs_repl_verify_json();
		break;
	case HFS_ST_SEGMENT:
	case HFS_ST_IMAGE: /* a stream (image.c), never rendered */
		break;
	}
	heaps_put(v, n);
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
