/*
 * objects.c — the object segment behind objects/ (docs/IMAGE.md §1, docs/DESIGN.md
 * "Named objects").
 *
 * What: objects/NAME are regular files of one heap (struct hfs_heap, `objects` set) whose
 * buddy allocator spans the whole segment [0, S) with the contiguous layout, so each object
 * is one block, and whose memory *is* the segment: offset 0 holds the header block and one
 * block the name map (img_seg_*), claimed with buddy_alloc_at at start.  Every change of a
 * named object — create, unlink, rename (dir.c's namespace hooks), write, truncate,
 * fallocate, setattr, xattrs (the heap ops hold/release around hfs_change_lock/unlock) —
 * rewrites its map slot, so the segment describes itself at every moment a snapshot can
 * be taken.
 *
 * How: start formats the segment, or loads objects.image (img_seg_load checks it whole)
 * and makes an inode per listed object; stop saves the image (img_seg_save: atomic).
 * .heapfs/segment is a sealed copy of all S bytes (snapshot(), registered with status.c).
 *
 * Locking: obj.seg (rwlock, writer-preferring) is held shared by every mutation of object
 * bytes or the map and exclusive by a snapshot, so a copy never holds a torn object or map.
 * obj.map (mutex) serialises the img_seg_* map changes among the shared holders, and
 * guards the slot bookkeeping: the daemon knows which slots it uses (file.oslot, a stack
 * of freed slots, a high-water mark), so a slot is written or emptied in O(1) with
 * img_seg_put_at / img_seg_del_at, never searched for.  Order:
 * hfs.ns -> inode.lock -> obj.seg -> obj.map.  An object's name (file.oname) changes under
 * hfs.ns exclusive and its inode lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "img.h"
#include "objects.h"

static struct {
	struct hfs_heap *h;
	struct hfs_heap_ops ops; /* h's */
	char *base; /* buddy_ptr(h->b, 0): the segment */
	uint64_t size;
	/* obj.map: the segment's header as we made it, the only one we trust (with
	 * direct_map = true a client that maps an object for writing can store into base's
	 * header); published to base after each change (map_unlock) for clients and copies */
	_Alignas(8) char hdr[IMG_SEG_HDR_SIZE];
	pthread_rwlock_t seg;
	pthread_mutex_t map;
	uint32_t *free_slots; /* obj.map: slots below hw that are free, as a stack */
	uint32_t nfree, hw;   /* slots at and above hw were never used */
	uint32_t nslots;      /* obj.map: the map's slots */
} obj = { .map = PTHREAD_MUTEX_INITIALIZER };

struct hfs_heap *hfs_objects_heap(void)
{
	return obj.h;
}

/* Room in the free-slot stack for every slot of a map of n slots.  obj.map. */
static int stack_fit(uint32_t n)
{
	uint32_t *v = realloc(obj.free_slots, (n ? n : 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	obj.free_slots = v;
	return 0;
}

/* Move the map to a block twice as large; ENOSPC when the segment has none.  obj.map. */
static int __map_grow(void)
{
	int order = img_seg_map_next_order_h(obj.hdr);
	uint64_t old_off;
	unsigned old_order;
	int64_t off;
	int ret;

	if (order < 0)
		return -ENOSPC;
	ret = stack_fit(((uint32_t)1 << order) / IMG_SEG_SLOT_SIZE);
	if (ret)
		return ret;
	off = buddy_alloc(obj.h->b, (unsigned)order);
	if (off < 0)
		return -ENOSPC;
	ret = img_seg_map_grow_h(obj.hdr, obj.base, (uint64_t)off, (unsigned)order, &old_off,
				 &old_order);
	if (ret) {
		buddy_free(obj.h->b, (uint64_t)off, (unsigned)order);
		return ret;
	}
	buddy_free(obj.h->b, old_off, old_order);
	atomic_fetch_add(&obj.h->held, (1ull << order) - (1ull << old_order));
	obj.nslots = ((uint32_t)1 << order) / IMG_SEG_SLOT_SIZE;
	return 0;
}

/* The map mutex, and libheapfs's sequence counter around the changes made under it
 * (libheapfs clients read the map in place: fs/client/heapfs.c). */
static void map_lock(void)
{
	pthread_mutex_lock(&obj.map);
	hfs_dm_seq_begin(obj.h);
}

static void map_unlock(void)
{
	memcpy(obj.base, obj.hdr, sizeof(obj.hdr)); /* whatever a client stored there */
	hfs_dm_seq_end(obj.h);
	pthread_mutex_unlock(&obj.map);
}

/* A free slot: a freed one, else the next never used, else after growing the map.
 * obj.map. */
static int __slot_take(uint32_t *slot)
{
	int ret;

	if (obj.nfree) {
		*slot = obj.free_slots[--obj.nfree];
		return 0;
	}
	if (obj.hw == obj.nslots) {
		ret = __map_grow();
		if (ret)
			return ret;
	}
	*slot = obj.hw++;
	return 0;
}

/* Write i's slot.  i->lock, obj.seg. */
static int __put(struct hfs_inode *i)
{
	struct img_obj o = { 0 };
	int ret;

	if (!i->file.oslot || !i->file.n)
		return 0; /* unlinked: no slot */
	snprintf(o.name, sizeof(o.name), "%s", i->file.oname);
	o.off = i->file.ext[0].hoff;
	o.order = i->file.ext[0].order;
	o.size = i->size;
	o.id = i->id;
	o.mode = i->mode;
	o.uid = i->uid;
	o.gid = i->gid;
	o.mtime_ns = hfs_ts_ns(i->mtime);
	o.ctime_ns = hfs_ts_ns(i->ctime);
	map_lock();
	ret = img_seg_put_at_h(obj.hdr, obj.base, i->file.oslot - 1, &o);
	map_unlock();
	return ret;
}

/* Empty i's slot (if it has one) and give it back.  i->lock, obj.seg. */
static void __slot_give(struct hfs_inode *i)
{
	if (!i->file.oslot)
		return;
	map_lock();
	img_seg_del_at_h(obj.hdr, obj.base, i->file.oslot - 1);
	obj.free_slots[obj.nfree++] = i->file.oslot - 1;
	map_unlock();
	i->file.oslot = 0;
}

/* The segment heap's ops, around every change of an object's data or attributes. */
static void hold(struct hfs_inode *i)
{
	(void)i;
	pthread_rwlock_rdlock(&obj.seg);
}

static void release(struct hfs_inode *i, bool changed)
{
	if (changed)
		__put(i); /* its own slot: cannot fail */
	pthread_rwlock_unlock(&obj.seg);
}

/* objects/'s namespace hooks (dir.c's table): under hfs.ns exclusive.  i->lock not held. */
static int obj_init(struct hfs_inode *i)
{
	return hfs_file_reserve(i, obj.h->pol.min_block); /* an object always has its block */
}

static int __obj_added(struct hfs_inode *i, const char *name)
{
	char *n = strdup(name);
	uint32_t slot;
	int ret = 0;

	if (!n)
		return -ENOMEM;
	pthread_rwlock_wrlock(&i->lock);
	pthread_rwlock_rdlock(&obj.seg);
	if (!i->file.oslot) { /* a restored object comes with its slot */
		map_lock();
		ret = __slot_take(&slot);
		map_unlock();
		i->file.oslot = ret ? 0 : slot + 1;
	}
	i->file.oname = n;
	if (!ret)
		ret = __put(i);
	if (ret) {
		__slot_give(i);
		i->file.oname = NULL;
	}
	pthread_rwlock_unlock(&obj.seg);
	pthread_rwlock_unlock(&i->lock);
	if (ret)
		free(n);
	return ret;
}

static void __obj_removed(struct hfs_inode *i)
{
	pthread_rwlock_wrlock(&i->lock);
	pthread_rwlock_rdlock(&obj.seg);
	__slot_give(i);
	free(i->file.oname);
	i->file.oname = NULL;
	pthread_rwlock_unlock(&obj.seg);
	pthread_rwlock_unlock(&i->lock);
}

static const struct hfs_ns_ops objects_ns = {
	.kinds = HFS_KIND(HFS_REG), .heap = hfs_objects_heap, .init = obj_init,
	.added = __obj_added, .removed = __obj_removed,
};

/* .heapfs/segment: a sealed consistent copy of the segment into dst. */
static void snapshot(void *dst)
{
	pthread_rwlock_wrlock(&obj.seg);
	memcpy(dst, obj.base, obj.size);
	pthread_mutex_lock(&obj.map);
	memcpy(dst, obj.hdr, sizeof(obj.hdr)); /* ours: the seal reads it */
	pthread_mutex_unlock(&obj.map);
	pthread_rwlock_unlock(&obj.seg);
	img_seg_seal(dst);
}

/* .heapfs/stats: "objects": {"size", "min_block", "used", "free", "largest_free",
 * "objects", "map_slots"}. */
static int stats_add(json_t *stats)
{
	struct img_seg_info si;
	struct buddy_stats bs;

	buddy_drain(obj.h->b);
	buddy_stats(obj.h->b, &bs);
	pthread_rwlock_rdlock(&obj.seg);
	pthread_mutex_lock(&obj.map);
	img_seg_info_h(obj.hdr, obj.base, &si);
	pthread_mutex_unlock(&obj.map);
	pthread_rwlock_unlock(&obj.seg);
	return json_object_set_new(stats, "objects",
		json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "size", (json_int_t)bs.size,
			  "min_block", (json_int_t)bs.min_block, "used", (json_int_t)bs.used,
			  "free", (json_int_t)bs.free, "largest_free",
			  (json_int_t)bs.largest_free, "objects", (json_int_t)si.nobjects,
			  "map_slots", (json_int_t)si.map_slots)) ? -ENOMEM : 0;
}

void hfs_objects_register(void)
{
	static struct hfs_status_file segment = { .name = "segment", .copy = snapshot };
	static struct hfs_stats_part part = { .at = HFS_STATS_AFTER_HEAPS, .add = stats_add };

	segment.size = hfs.conf->objects.size;
	hfs_ns_register(HFS_R_OBJECTS, &objects_ns);
	hfs_status_register(&segment);
	hfs_stats_register(&part);
}

static int claim_fn(uint64_t off, unsigned order, void *arg)
{
	(void)arg;
	if (buddy_alloc_at(obj.h->b, off, order))
		return -EBADMSG;
	atomic_fetch_add(&obj.h->held, 1ull << order);
	return 0;
}

/* An inode for a listed object, named in objects/.  hfs.ns exclusive. */
static int restore_fn(const struct img_obj *o, void *arg)
{
	struct hfs_inode *i;
	int ret;

	(void)arg;
	i = hfs_inode_new(HFS_REG, o->mode, o->uid, o->gid, obj.h);
	if (!i)
		return -ENOSPC;
	hfs_inode_set_id(i, o->id);
	i->file.oslot = o->slot + 1;
	ret = hfs_file_adopt(i, o->off, o->order, o->size);
	i->mtime = hfs_ns_ts(o->mtime_ns);
	i->ctime = hfs_ns_ts(o->ctime_ns);
	i->atime = i->mtime;
	if (!ret)
		ret = __hfs_dir_add(hfs.objects, o->name, i);
	if (ret) {
		hfs_inode_discard(i);
		return ret;
	}
	i->ctime = hfs_ns_ts(o->ctime_ns); /* the add touched it */
	return 0;
}

static int mark_used(const struct img_obj *o, void *arg)
{
	((bool *)arg)[o->slot] = true;
	return 0;
}

/* The slot bookkeeping of the segment as it is (formatted or loaded). */
static int free_slots_init(void)
{
	struct img_seg_info si;
	bool *used;
	int ret;

	memcpy(obj.hdr, obj.base, sizeof(obj.hdr)); /* formatted or checked whole: before any
						      client can reach the segment */
	img_seg_info(obj.base, &si);
	used = calloc(si.map_slots, sizeof(*used));
	ret = used ? stack_fit(si.map_slots) : -ENOMEM;
	if (!ret) {
		img_seg_foreach(obj.base, mark_used, used);
		obj.nfree = 0;
		for (uint32_t k = si.map_slots; k-- > 0;)
			if (!used[k])
				obj.free_slots[obj.nfree++] = k;
		obj.hw = obj.nslots = si.map_slots;
	}
	free(used);
	return ret;
}

/* Load PATH into the segment: 1 when it does not exist, 0 loaded, else -errno (printed). */
static int load(const char *path)
{
	char why[256] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret;

	if (fd < 0 && errno == ENOENT)
		return 1;
	if (fd < 0) {
		ret = -errno;
		hfs_log(HFS_LOG_ERR, "%s: %s", path, strerror(-ret));
		return ret;
	}
	ret = img_seg_load(fd, obj.base, obj.size, obj.h->min_order, why, sizeof(why));
	close(fd);
	if (!ret)
		ret = img_seg_blocks(obj.base, claim_fn, NULL);
	if (!ret)
		ret = free_slots_init();
	if (!ret) {
		pthread_rwlock_wrlock(&hfs.ns);
		ret = img_seg_foreach(obj.base, restore_fn, NULL);
		pthread_rwlock_unlock(&hfs.ns);
		if (ret)
			snprintf(why, sizeof(why), "cannot restore its objects: %s", strerror(-ret));
	}
	if (ret)
		hfs_log(HFS_LOG_ERR, "%s: %s", path, why[0] ? why : strerror(-ret));
	return ret;
}

/* An empty segment: claim the header block and its buddy (the map), then format. */
static int format(void)
{
	unsigned hdr = obj.h->min_order > IMG_SEG_HDR_MIN_ORDER ? obj.h->min_order
							       : IMG_SEG_HDR_MIN_ORDER;
	int ret;

	ret = claim_fn(0, hdr, NULL);
	if (!ret)
		ret = claim_fn(1ull << hdr, hdr, NULL);
	if (!ret)
		ret = img_seg_format(obj.base, obj.size, obj.h->min_order);
	if (!ret)
		ret = free_slots_init();
	if (ret)
		hfs_log(HFS_LOG_ERR, "objects: cannot format the segment: %s", strerror(-ret));
	return ret;
}

int hfs_objects_start(void)
{
	const struct conf_objects *c = &hfs.conf->objects;
	struct conf_heap pol = { .size = c->size, .min_block = c->min_block,
				 .chunk = 2u << 20, .layout = CONF_LAYOUT_CONTIGUOUS,
				 .cache = CONF_CACHE_AUTO, .writers = c->writers,
				 .direct_map = c->direct_map };
	int ret;

	snprintf(pol.name, sizeof(pol.name), "objects");
	/* the inode limit: as many objects as could ever fit (a min_block and a slot each) */
	pol.inodes = c->size / (c->min_block + IMG_SEG_SLOT_SIZE);
	if (pol.inodes > CONF_INODES_MAX)
		pol.inodes = CONF_INODES_MAX;
	ret = hfs_heap_new(&pol, true, &obj.h);
	if (ret) {
		hfs_log(HFS_LOG_ERR, "objects: %s", strerror(-ret));
		return ret;
	}
	obj.h->objects = true;
	/* ours, and what the heap came with (direct_map: a range a client maps is busy) */
	obj.ops = *obj.h->ops;
	obj.ops.hold = hold;
	obj.ops.release = release;
	obj.h->ops = &obj.ops;
	obj.base = buddy_ptr(obj.h->b, 0);
	obj.size = c->size;
	/* writers first: a snapshot must not starve behind a stream of writes */
	hfs_rwlock_init_writers(&obj.seg);
	ret = c->image ? load(c->image) : 1;
	if (ret == 1)
		ret = format();
	return ret;
}

int hfs_objects_stop(void)
{
	const char *path = hfs.conf->objects.image;
	int ret = 0;

	if (!obj.h)
		return 0;
	if (path) {
		pthread_rwlock_wrlock(&obj.seg);
		pthread_mutex_lock(&obj.map);
		ret = img_seg_save_h(obj.hdr, obj.base, path); /* the header we trust */
		pthread_mutex_unlock(&obj.map);
		pthread_rwlock_unlock(&obj.seg);
		if (ret)
			hfs_log(HFS_LOG_ERR, "%s: cannot save the object segment: %s", path,
				strerror(-ret));
	}
	return ret;
}
