/*
 * status.c — the JSON of the .heapfs/ files (jansson): stats, heaps/NAME, maps/NAME,
 * partner, donors.  Rendered once when the file is opened (a consistent snapshot served
 * from the file handle).  Each heap's per-CPU caches are drained first so the figures show
 * a coalesced heap.  Holds hfs.ns shared while rendering so the heap list stays put.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "fs_i.h"

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
	bad |= set(o, "role", json_string("owner"));
	bad |= set(o, "layout", json_string(conf_layout_name(p->layout)));
	bad |= set(o, "cache", json_string(conf_cache_name(p->cache)));
	bad |= set(o, "writers", json_string(conf_writers_name(p->writers)));
	bad |= set(o, "pin", json_boolean(p->pin));
	bad |= set(o, "pin_failures", json_integer((json_int_t)st.pin_failures));
	bad |= set(o, "metadata_bytes", json_integer((json_int_t)st.metadata_bytes));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *stats_json(void)
{
	json_t *o = json_object(), *a = json_array();
	int bad = !o || !a;

	for (unsigned k = 0; k < hfs.nheaps && !bad; k++)
		bad |= json_array_append_new(a, heap_json(hfs.heapv[k]));
	bad |= set(o, "heaps", a);
	bad |= set(o, "version", json_string(HEAPFS_VERSION));
	bad |= set(o, "mount", json_string(hfs.mountpoint));
	bad |= set(o, "pid", json_integer(getpid()));
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int walk_fn(void *arg, uint64_t off, unsigned order, bool free)
{
	json_t *blk = json_pack("[I, I, i]", (json_int_t)off, (json_int_t)order, free ? 1 : 0);

	return blk ? json_array_append_new(arg, blk) : -ENOMEM;
}

static json_t *map_json(struct hfs_heap *h)
{
	json_t *blocks = json_array();

	if (!blocks)
		return NULL;
	buddy_drain(h->b);
	if (buddy_walk(h->b, walk_fn, blocks)) {
		json_decref(blocks);
		return NULL;
	}
	return json_pack("{s:s, s:I, s:I, s:o}", "name", h->pol.name,
			 "size", (json_int_t)(1ull << buddy_heap_order(h->b)),
			 "min_block", (json_int_t)h->pol.min_block, "blocks", blocks);
}

static json_t *partner_json(void)
{
	json_t *heaps = json_object();

	for (unsigned k = 0; heaps && k < hfs.nheaps; k++)
		if (set(heaps, hfs.heapv[k]->pol.name, json_string("owner"))) {
			json_decref(heaps);
			return NULL;
		}
	/* No partner section: nothing is replicated, this node owns every heap. */
	return json_pack("{s:s, s:s?, s:s?, s:I, s:I, s:I, s:I, s:o}", "state", "none",
			 "node", hfs.conf->partner.present ? hfs.conf->partner.node : NULL,
			 "peer", hfs.conf->partner.present ? hfs.conf->partner.connect : NULL,
			 "epoch", (json_int_t)0, "lag_bytes", (json_int_t)0,
			 "resync_done", (json_int_t)0, "resync_total", (json_int_t)0,
			 "heaps", heaps);
}

static json_t *donors_json(void)
{
	return json_pack("{s:s?, s:[]}", "socket", hfs.conf->pool.socket, "donors");
}

int hfs_status_render(struct hfs_inode *i, char **buf, size_t *len)
{
	json_t *j = NULL;
	size_t flags = JSON_INDENT(2) | JSON_PRESERVE_ORDER;
	char *s;

	if (i->kind != HFS_STATUS)
		return -EINVAL;
	pthread_rwlock_rdlock(&hfs.ns);
	switch (i->st.what) {
	case HFS_ST_STATS:
		j = stats_json();
		break;
	case HFS_ST_HEAP:
		j = heap_json(i->st.heap);
		break;
	case HFS_ST_MAP:
		j = map_json(i->st.heap);
		flags = JSON_COMPACT | JSON_PRESERVE_ORDER; /* can be long */
		break;
	case HFS_ST_PARTNER:
		j = partner_json();
		break;
	case HFS_ST_DONORS:
		j = donors_json();
		break;
	}
	pthread_rwlock_unlock(&hfs.ns);
	if (!j)
		return -ENOMEM;
	s = json_dumps(j, flags);
	json_decref(j);
	if (!s)
		return -ENOMEM;
	*len = strlen(s);
	s[(*len)++] = '\n'; /* replaces the terminator: the buffer is bytes, not a string */
	*buf = s;
	return 0;
}
