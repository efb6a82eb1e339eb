/*
 * img-mk.c — test-only: write an image file from a JSON description, with no daemon
 * (tests/fs/test_image_ctl.py runs it through $IMG_MK; the fuzz seeds come from it).
 *
 *   img-mk seg DESC.json OUT    {"size": S, "min_block": B,
 *                                "objects": [{"name": N, "text": T | "pattern": LEN}, ...]}
 *   img-mk heap DESC.json OUT   {"name": N, "size": S, "min_block": B, "contiguous": true?,
 *                                "entries": [{"path": P, "kind": "dir"|"file"|"symlink",
 *                                 "mode": M, "text": T | "pattern": LEN, "target": T,
 *                                 "link": EXISTING_PATH, "xattrs": {NAME: VALUE}}, ...]}
 *
 * Object blocks come from the real buddy allocator, the map grows as the daemon's will.
 * Heap entries get ids 2, 3, ... in order (the root is 1); a directory comes before what
 * it holds; "link" makes a hard link.  An entry {"raw": TYPE, ...} is written as that
 * one record with the fields given (ids as numbers; to build change streams and images
 * that are well-formed but say impossible things): inode {id, kind, mode}, link {parent,
 * child, name}, unlink {parent, name}, rename {old_parent, old, new_parent, new, flags},
 * (inode also takes size; its kind may be a number) data {id, off, text}, symlink {id,
 * target}, xattr {id, name, value}, removexattr {id, name}, truncate {id, size},
 * punch {id, off, len},
 * setattr {id, mask, mode, size};
 * "noroot": true leaves the root's INODE out.  A pattern's byte i is (i * 7 + strlen(name)) % 251,
 * the name being the object's name or the entry's path.  Exit 0, or 1 with a message.
 * Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "buddy.h"
#include "img.h"

static int fail(const char *what)
{
	fprintf(stderr, "img-mk: %s\n", what);
	return 1;
}

/* The bytes an object or file gets: "text", or a pattern of "pattern" bytes.  Caller frees. */
static unsigned char *content(const json_t *e, const char *name, size_t *len)
{
	const char *text = json_string_value(json_object_get(e, "text"));
	unsigned char *p;

	*len = text ? strlen(text) : (size_t)json_integer_value(json_object_get(e, "pattern"));
	p = malloc(*len + 1);
	if (p && text)
		memcpy(p, text, *len);
	for (size_t i = 0; p && !text && i < *len; i++)
		p[i] = (unsigned char)((i * 7 + strlen(name)) % 251);
	return p;
}

static int claim(uint64_t off, unsigned order, void *arg)
{
	return buddy_alloc_at(arg, off, order);
}

/* One object into the segment, growing the map when it is full. */
static int put_obj(unsigned char *seg, struct buddy *b, unsigned min, const json_t *e)
{
	const char *name = json_string_value(json_object_get(e, "name"));
	struct img_obj o = { .mode = 0100644, .id = 1000 };
	size_t len;
	unsigned char *data = name ? content(e, name, &len) : NULL;
	int64_t off;
	uint64_t oo;
	unsigned oord;
	int order, ret = -EINVAL;

	if (!data)
		goto out;
	order = buddy_order_of(len ? len : 1, min);
	off = order < 0 ? order : buddy_alloc(b, (unsigned)order);
	if (off < 0)
		goto out;
	snprintf(o.name, sizeof(o.name), "%s", name);
	o.off = (uint64_t)off;
	o.order = (unsigned)order;
	o.size = len;
	memcpy(seg + off, data, len);
	while ((ret = img_seg_put(seg, &o)) == -ENOSPC) {
		order = img_seg_map_next_order(seg);
		off = order < 0 ? order : buddy_alloc(b, (unsigned)order);
		if (off < 0 || img_seg_map_grow(seg, (uint64_t)off, (unsigned)order, &oo, &oord) ||
		    buddy_free(b, oo, oord))
			break;
	}
out:
	free(data);
	return ret;
}

static int mk_seg(const json_t *d, int fd)
{
	uint64_t size = (uint64_t)json_integer_value(json_object_get(d, "size"));
	unsigned min = (unsigned)__builtin_ctzll((uint64_t)json_integer_value(json_object_get(d, "min_block")));
	struct buddy_params p = { .heap_order = (unsigned)__builtin_ctzll(size), .min_order = min,
				  .flags = BUDDY_F_NODATA | BUDDY_F_NOCACHE, .fd = -1 };
	struct buddy *b = NULL;
	unsigned char *seg = calloc(1, size);
	const json_t *e;
	size_t i;
	int ret = -ENOMEM;

	if (!seg || (ret = buddy_create(&p, &b)) || (ret = img_seg_format(seg, size, min)) ||
	    (ret = img_seg_blocks(seg, claim, b)))
		goto out;
	json_array_foreach(json_object_get(d, "objects"), i, e)
		if ((ret = put_obj(seg, b, min, e)))
			goto out;
	img_seg_seal(seg);
	ret = write(fd, seg, size) == (ssize_t)size ? 0 : -EIO;
out:
	if (b)
		buddy_destroy(b);
	free(seg);
	return ret;
}

static uint64_t num(const json_t *e, const char *key)
{
	return (uint64_t)json_integer_value(json_object_get(e, key));
}

static const char *str(const json_t *e, const char *key)
{
	const char *s = json_string_value(json_object_get(e, key));

	return s ? s : "";
}

static uint32_t kind_of(const char *kind)
{
	return !strcmp(kind, "dir") ? IMG_K_DIR : !strcmp(kind, "symlink") ? IMG_K_LNK : IMG_K_REG;
}

/* The id of path among the entries made so far (index + 2), or the root for "". */
static uint64_t id_of(const json_t *entries, size_t upto, const char *path)
{
	for (size_t i = 0; i < upto; i++)
		if (!strcmp(str(json_array_get(entries, i), "path"), path))
			return i + 2;
	return IMG_ROOT_ID;
}

static int mk_checked(struct img_w *w, const json_t *e, const char *type);

/* The same record with none of the writer's checks: what a reader must refuse (the
 * writer refuses to make it).  Fixed part, then the text (data) if any. */
static int mk_unchecked(struct img_w *w, const json_t *e, const char *type)
{
	const json_t *kind = json_object_get(e, "kind");
	unsigned char buf[4096];
	uint32_t n;

	if (!strcmp(type, "inode")) {
		struct img_inode in = { .id = num(e, "id"),
					.kind = json_is_integer(kind) ? (uint32_t)num(e, "kind")
								      : kind_of(str(e, "kind")),
					.mode = (uint32_t)num(e, "mode"), .nlink = 1,
					.size = num(e, "size") };
		return img_w_unchecked(w, IMG_INODE, &in, sizeof(in));
	}
	if (!strcmp(type, "data")) {
		struct img_data d = { num(e, "id"), num(e, "off") };
		size_t tl = strlen(str(e, "text"));

		if (tl > sizeof(buf) - sizeof(d))
			return -EINVAL;
		memcpy(buf, &d, sizeof(d));
		memcpy(buf + sizeof(d), str(e, "text"), tl);
		n = (uint32_t)(sizeof(d) + tl);
		return img_w_unchecked(w, IMG_DATA, buf, n);
	}
	if (!strcmp(type, "truncate")) {
		struct img_truncate t = { num(e, "id"), num(e, "size") };

		return img_w_unchecked(w, IMG_TRUNCATE, &t, sizeof(t));
	}
	if (!strcmp(type, "punch")) {
		struct img_punch p = { num(e, "id"), num(e, "off"), num(e, "len") };

		return img_w_unchecked(w, IMG_PUNCH, &p, sizeof(p));
	}
	if (!strcmp(type, "setattr")) {
		struct img_setattr sa = { .id = num(e, "id"), .mask = (uint32_t)num(e, "mask"),
					  .mode = (uint32_t)num(e, "mode"), .size = num(e, "size") };
		return img_w_unchecked(w, IMG_SETATTR, &sa, sizeof(sa));
	}
	return -EINVAL;
}

/* One record as described; one the writer refuses is written unchecked (a test of what
 * readers refuse). */
static int mk_raw(struct img_w *w, const json_t *e, const char *type)
{
	int ret = mk_checked(w, e, type);

	return ret == -EINVAL ? mk_unchecked(w, e, type) : ret;
}

static int mk_checked(struct img_w *w, const json_t *e, const char *type)
{
	if (!strcmp(type, "inode")) {
		const json_t *kind = json_object_get(e, "kind");
		struct img_inode in = { .id = num(e, "id"),
					.kind = json_is_integer(kind) ? (uint32_t)num(e, "kind")
								      : kind_of(str(e, "kind")),
					.mode = (uint32_t)num(e, "mode"), .nlink = 1,
					.size = num(e, "size") };
		return img_w_inode(w, &in);
	}
	if (!strcmp(type, "link"))
		return img_w_link(w, num(e, "parent"), num(e, "child"), str(e, "name"));
	if (!strcmp(type, "unlink"))
		return img_w_unlink(w, num(e, "parent"), str(e, "name"));
	if (!strcmp(type, "rename"))
		return img_w_rename(w, num(e, "old_parent"), str(e, "old"), num(e, "new_parent"),
				    str(e, "new"), (uint32_t)num(e, "flags"));
	if (!strcmp(type, "data"))
		return img_w_data(w, num(e, "id"), num(e, "off"), str(e, "text"),
				  strlen(str(e, "text")));
	if (!strcmp(type, "symlink"))
		return img_w_symlink(w, num(e, "id"), str(e, "target"));
	if (!strcmp(type, "xattr")) /* a value may hold NULs (\u0000: an ACL's bytes) */
		return img_w_xattr(w, num(e, "id"), str(e, "name"), str(e, "value"),
				   (uint32_t)json_string_length(json_object_get(e, "value")));
	if (!strcmp(type, "removexattr"))
		return img_w_removexattr(w, num(e, "id"), str(e, "name"));
	if (!strcmp(type, "truncate"))
		return img_w_truncate(w, num(e, "id"), num(e, "size"));
	if (!strcmp(type, "punch"))
		return img_w_punch(w, num(e, "id"), num(e, "off"), num(e, "len"));
	if (!strcmp(type, "setattr")) {
		struct img_setattr sa = { .id = num(e, "id"), .mask = (uint32_t)num(e, "mask"),
					  .mode = (uint32_t)num(e, "mode"), .size = num(e, "size") };
		return img_w_setattr(w, &sa);
	}
	return -EINVAL;
}

static int mk_entry(struct img_w *w, const json_t *entries, size_t i)
{
	const json_t *e = json_array_get(entries, i), *v;
	const char *path = json_string_value(json_object_get(e, "path"));
	const char *kind = json_string_value(json_object_get(e, "kind"));
	const char *link = json_string_value(json_object_get(e, "link"));
	const char *raw = json_string_value(json_object_get(e, "raw"));
	const char *slash = path ? strrchr(path, '/') : NULL, *x;
	char parent[4096] = "";
	struct img_inode in = { .id = i + 2, .nlink = 1, .mtime_ns = 1700000000000000000ll };
	unsigned char *data = NULL;
	size_t len = 0;
	int ret;

	if (raw)
		return mk_raw(w, e, raw);
	if (slash)
		snprintf(parent, sizeof(parent), "%.*s", (int)(slash - path), path);
	if (link)
		return img_w_link(w, id_of(entries, i, parent), id_of(entries, i, link),
				  slash ? slash + 1 : path);
	in.kind = kind_of(kind);
	in.mode = (uint32_t)json_integer_value(json_object_get(e, "mode")) |
		  (in.kind == IMG_K_DIR ? 040000 : in.kind == IMG_K_LNK ? 0120000 : 0100000);
	if (in.kind == IMG_K_REG && !(data = content(e, path, &len)))
		return -ENOMEM;
	if (in.kind == IMG_K_LNK)
		len = strlen(json_string_value(json_object_get(e, "target")));
	in.size = len;
	ret = img_w_inode(w, &in);
	if (!ret && in.kind == IMG_K_LNK) /* before its name: a symlink is made with its target */
		ret = img_w_symlink(w, in.id, json_string_value(json_object_get(e, "target")));
	if (!ret)
		ret = img_w_link(w, id_of(entries, i, parent), in.id, slash ? slash + 1 : path);
	json_object_foreach((json_t *)json_object_get(e, "xattrs"), x, v)
		if (!ret)
			ret = img_w_xattr(w, in.id, x, json_string_value(v),
					  (uint32_t)strlen(json_string_value(v)));
	if (!ret && data)
		ret = img_w_data(w, in.id, 0, data, len);
	free(data);
	return ret;
}

static int mk_heap(const json_t *d, int fd)
{
	struct img_hdr h = { .heap_size = (uint64_t)json_integer_value(json_object_get(d, "size")),
			     .min_order = (uint32_t)__builtin_ctzll((uint64_t)json_integer_value(
				     json_object_get(d, "min_block"))),
			     .layout = json_is_true(json_object_get(d, "contiguous")) };
	struct img_inode root = { .id = IMG_ROOT_ID, .kind = IMG_K_DIR, .mode = 040755,
				  .nlink = 2 };
	const json_t *entries = json_object_get(d, "entries");
	struct img_w *w = NULL;
	int ret;

	snprintf(h.name, sizeof(h.name), "%s", json_string_value(json_object_get(d, "name")));
	ret = img_w_open(fd, &h, &w);
	if (!ret && !json_is_true(json_object_get(d, "noroot")))
		ret = img_w_inode(w, &root);
	for (size_t i = 0; !ret && i < json_array_size(entries); i++)
		ret = mk_entry(w, entries, i);
	if (!ret)
		ret = img_w_finish(w);
	img_w_free(w);
	return ret;
}

int main(int argc, char **argv)
{
	json_error_t jerr;
	json_t *d;
	int fd, ret;

	if (argc != 4 || (strcmp(argv[1], "seg") && strcmp(argv[1], "heap")))
		return fail("usage: img-mk seg|heap DESC.json OUT");
	d = json_load_file(argv[2], JSON_ALLOW_NUL, &jerr);
	if (!d)
		return fail(jerr.text);
	fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return fail(strerror(errno));
	ret = !strcmp(argv[1], "seg") ? mk_seg(d, fd) : mk_heap(d, fd);
	json_decref(d);
	if (close(fd) || ret)
		return fail(ret ? strerror(-ret) : "close failed");
	return 0;
}
