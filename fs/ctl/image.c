/*
 * image.c — `heapfsctl image ls FILE` and `heapfsctl image cat FILE NAME`: what an image
 * file holds, with no daemon running (formats: docs/IMAGE.md; reading: img/).
 *
 * How: the first 8 bytes tell the kind.  An object segment (HEAPFSEG) is mapped read-only
 * and checked whole (img_seg_check) before anything is printed; `ls` lists its objects by
 * offset with the free space, `cat` writes one object's bytes.  A heap image (HEAPFSIM) is
 * read in one pass into a small model of the namespace — inodes by identity (uthash) and
 * the directory entries, with the change records applied — which is trusted only after
 * END verified and every entry's path is found from the root (no loops, no orphaned
 * directories); `ls` lists every path (a hard link under each of its names), `cat` finds
 * the path's inode, then reads the image a second time and writes that file's DATA (holes
 * as zeros).  Every refusal prints `heapfsctl: FILE: what is wrong` and fails (exit 1);
 * the file is only ever opened read-only.
 *
 * Single-threaded, no locking.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uthash.h>

#include "ctl_i.h"
#include "img.h"

#define DEPTH_MAX 4096 /* deepest path; deeper means a directory loop */

/* ---- object segments ----------------------------------------------------------------- */

static int obj_json(const struct img_obj *ob, void *arg)
{
	json_t *o = json_pack("{s:s, s:I, s:I, s:i, s:I, s:I, s:i, s:i, s:i, s:I, s:I}",
			      "name", ob->name, "offset", (json_int_t)ob->off,
			      "size", (json_int_t)ob->size, "order", ob->order,
			      "block", (json_int_t)(1ull << ob->order), "id", (json_int_t)ob->id,
			      "mode", ob->mode, "uid", ob->uid, "gid", ob->gid,
			      "mtime_ns", (json_int_t)ob->mtime_ns,
			      "ctime_ns", (json_int_t)ob->ctime_ns);

	return o && !json_array_append_new(arg, o) ? 0 : -ENOMEM;
}

static int by_offset(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "offset"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "offset"));

	return x < y ? -1 : x > y;
}

/* Sort a JSON array in place with cmp over its elements. */
static int sort_array(json_t *arr, int (*cmp)(const void *, const void *))
{
	size_t n = json_array_size(arr);
	json_t **v = malloc((n ? n : 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		v[i] = json_incref(json_array_get(arr, i));
	qsort(v, n, sizeof(*v), cmp);
	json_array_clear(arr);
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, v[i]);
	free(v);
	return 0;
}

static void print_segment(const json_t *j)
{
	const json_t *ob;
	size_t i;
	char a[32], b[32], c[32];

	printf("object segment, version %" JSON_INTEGER_FORMAT ", %s, min_block %s\n",
	       json_integer_value(json_object_get(j, "version")),
	       fmt_size(json_integer_value(json_object_get(j, "total")), a, sizeof(a)),
	       fmt_size(json_integer_value(json_object_get(j, "min_block")), b, sizeof(b)));
	printf("%-32s %12s %12s %8s\n", "NAME", "OFFSET", "SIZE", "BLOCK");
	json_array_foreach(json_object_get(j, "objects"), i, ob)
		printf("%-32s %12" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT " %8s\n",
		       json_string_value(json_object_get(ob, "name")),
		       json_integer_value(json_object_get(ob, "offset")),
		       json_integer_value(json_object_get(ob, "size")),
		       fmt_size(json_integer_value(json_object_get(ob, "block")), a, sizeof(a)));
	printf("%zu objects, used %s, free %s, total %s\n",
	       json_array_size(json_object_get(j, "objects")),
	       fmt_size(json_integer_value(json_object_get(j, "used")), a, sizeof(a)),
	       fmt_size(json_integer_value(json_object_get(j, "free")), b, sizeof(b)),
	       fmt_size(json_integer_value(json_object_get(j, "total")), c, sizeof(c)));
}

static int seg_ls(const void *base, const struct ctl_opts *o)
{
	struct img_seg_info in;
	json_t *objs = json_array(), *j;

	img_seg_info(base, &in);
	if (!objs || img_seg_foreach(base, obj_json, objs) || sort_array(objs, by_offset)) {
		json_decref(objs);
		return -ENOMEM;
	}
	j = json_pack("{s:s, s:i, s:I, s:I, s:I, s:{s:I, s:I, s:i}, s:o, s:I, s:I, s:I}",
		      "kind", "segment", "version", IMG_SEG_VERSION,
		      "min_block", (json_int_t)(1ull << in.min_order),
		      "generation", (json_int_t)in.generation,
		      "header_block", (json_int_t)(1ull << in.hdr_order),
		      "map", "offset", (json_int_t)in.map_off,
		      "block", (json_int_t)(1ull << in.map_order), "slots", in.map_slots,
		      "objects", objs, "used", (json_int_t)in.used,
		      "free", (json_int_t)(in.size - in.used), "total", (json_int_t)in.size);
	return j ? show(j, o, print_segment) : -ENOMEM;
}

static int write_out(const void *p, size_t n)
{
	return fwrite(p, 1, n, stdout) == n ? 0 : -EIO;
}

static int seg_cat(const char *file, const void *base, const char *name)
{
	struct img_obj ob;

	if (img_seg_lookup(base, name, &ob)) {
		err_msg("%s: no object '%s'", file, name);
		return -ENOENT;
	}
	return write_out((const char *)base + ob.off, ob.size);
}

static int segment(const char *file, int fd, uint64_t len, char **args,
		   const struct ctl_opts *o)
{
	char why[256];
	void *base = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	int ret;

	if (base == MAP_FAILED) {
		ret = -errno;
		err_msg("%s: %s", file, strerror(-ret));
		return ret;
	}
	ret = img_seg_check(base, len, 0, why, sizeof(why));
	if (ret)
		err_msg("%s: %s", file, why);
	else
		ret = args[2] ? seg_cat(file, base, args[2]) : seg_ls(base, o);
	munmap(base, len);
	return ret;
}

/* ---- heap images --------------------------------------------------------------------- */

struct node {
	uint64_t id;
	struct img_inode in;
	char *target;  /* symlink */
	long up;       /* an entry naming it (a directory's only one), -1: none */
	int depth;     /* while building its path: loop guard */
	UT_hash_handle hh;
};

struct ent {
	uint64_t parent, child;
	char *name;
	char *path; /* built at the end */
	bool gone;
};

struct model {
	const char *file;
	struct node *nodes;
	struct ent *ents;
	size_t nents, cap;
	char why[256];  /* the model's refusal */
	char rwhy[256]; /* the reader's */
};

static struct node *node_get(struct model *m, uint64_t id)
{
	struct node *n;

	HASH_FIND(hh, m->nodes, &id, sizeof(id), n);
	return n;
}

static int bad(struct model *m, const char *what, uint64_t id)
{
	snprintf(m->why, sizeof(m->why), "%s (inode %" PRIu64 ")", what, id);
	return -EBADMSG;
}

static long ent_find(struct model *m, uint64_t parent, const char *name)
{
	for (size_t i = 0; i < m->nents; i++)
		if (!m->ents[i].gone && m->ents[i].parent == parent && !strcmp(m->ents[i].name, name))
			return (long)i;
	return -1;
}

static int ent_add(struct model *m, uint64_t parent, uint64_t child, const char *name)
{
	struct node *p = node_get(m, parent);

	if (!p || p->in.kind != IMG_K_DIR)
		return bad(m, "LINK into a directory the image does not have", parent);
	if (!node_get(m, child))
		return bad(m, "LINK to an inode the image does not have", child);
	if (ent_find(m, parent, name) >= 0)
		return bad(m, "two entries of the same name in one directory", parent);
	if (m->nents == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 64;
		struct ent *e = realloc(m->ents, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		m->ents = e;
		m->cap = cap;
	}
	m->ents[m->nents] = (struct ent){ parent, child, strdup(name), NULL, false };
	return m->ents[m->nents++].name ? 0 : -ENOMEM;
}

static int node_put(struct model *m, const struct img_inode *in)
{
	struct node *n = node_get(m, in->id);

	if (!n) {
		n = calloc(1, sizeof(*n));
		if (!n)
			return -ENOMEM;
		n->id = in->id;
		HASH_ADD(hh, m->nodes, id, sizeof(n->id), n);
	}
	n->in = *in;
	return 0;
}

static int rename_ent(struct model *m, const struct img_rec *r)
{
	long a = ent_find(m, r->u.rename.old_parent, r->s1);
	long b = ent_find(m, r->u.rename.new_parent, r->s2);
	char *name = strdup(r->s2);

	if (a < 0 || !name) {
		free(name);
		return name ? bad(m, "RENAME of an entry the image does not have",
				  r->u.rename.old_parent) : -ENOMEM;
	}
	if (b >= 0 && r->u.rename.flags & 2) { /* RENAME_EXCHANGE */
		uint64_t child = m->ents[a].child;

		m->ents[a].child = m->ents[b].child;
		m->ents[b].child = child;
		free(name);
		return 0;
	}
	if (b >= 0)
		m->ents[b].gone = true;
	free(m->ents[a].name);
	m->ents[a].name = name;
	m->ents[a].parent = r->u.rename.new_parent;
	return 0;
}

static void setattr(struct node *n, const struct img_setattr *sa)
{
	if (sa->mask & IMG_SET_MODE)
		n->in.mode = sa->mode;
	if (sa->mask & IMG_SET_UID)
		n->in.uid = sa->uid;
	if (sa->mask & IMG_SET_GID)
		n->in.gid = sa->gid;
	if (sa->mask & IMG_SET_SIZE)
		n->in.size = sa->size;
}

/* Apply one record to the model. */
static int apply(struct model *m, const struct img_rec *r)
{
	uint64_t id = r->u.inode.id; /* every record but LINK, RENAME, UNLINK starts with it */
	struct node *n = node_get(m, id);
	long e;

	switch (r->type) {
	case IMG_INODE:
		return node_put(m, &r->u.inode);
	case IMG_LINK:
		return ent_add(m, r->u.link.parent, r->u.link.child, r->s1);
	case IMG_RENAME:
		return rename_ent(m, r);
	case IMG_UNLINK:
		e = ent_find(m, r->u.unlink.parent, r->s1);
		if (e < 0)
			return bad(m, "UNLINK of an entry the image does not have", r->u.unlink.parent);
		m->ents[e].gone = true;
		return 0;
	}
	if (!n)
		return bad(m, "a record for an inode the image does not have", id);
	if (r->type == IMG_SYMLINK) {
		free(n->target);
		n->target = strdup(r->s1);
		return n->target ? 0 : -ENOMEM;
	}
	if (r->type == IMG_TRUNCATE)
		n->in.size = r->u.truncate.size;
	else if (r->type == IMG_DATA && r->data_len > UINT64_MAX - r->u.data.off)
		return bad(m, "DATA past the largest file", id); /* (the reader bounds it) */
	else if (r->type == IMG_DATA && r->u.data.off + r->data_len > n->in.size)
		/* past the end: the file grows, as the daemon's applier writes it (a sparse file
		 * of an extents heap) */
		n->in.size = r->u.data.off + r->data_len;
	else if (r->type == IMG_SETATTR)
		setattr(n, &r->u.setattr);
	return 0;
}

static void model_free(struct model *m)
{
	struct node *n, *tmp;

	HASH_ITER(hh, m->nodes, n, tmp) {
		HASH_DEL(m->nodes, n);
		free(n->target);
		free(n);
	}
	for (size_t i = 0; i < m->nents; i++) {
		free(m->ents[i].name);
		free(m->ents[i].path);
	}
	free(m->ents);
}

/* Open the stream (again) from its start; the reader's refusals go to m->rwhy. */
static int stream_open(struct model *m, int fd, struct img_r **r)
{
	if (lseek(fd, 0, SEEK_SET) < 0)
		return -errno;
	return img_r_open(fd, 0, r, m->rwhy, sizeof(m->rwhy));
}

/* Report a refusal (the model's, else the reader's) or an error. */
static int refused(struct model *m, int ret)
{
	err_msg("%s: %s", m->file, ret != -EBADMSG ? strerror(-ret)
				   : m->why[0] ? m->why : m->rwhy);
	return ret;
}

/* Read the whole image into the model; 0 only with END verified. */
static int model_load(struct model *m, int fd, json_t **hdr)
{
	struct img_r *r = NULL;
	struct img_rec rec;
	int ret = stream_open(m, fd, &r);

	if (ret)
		return refused(m, ret);
	while ((ret = img_r_next(r, &rec)) == 1 && !(ret = apply(m, &rec)))
		;
	if (!ret && !node_get(m, IMG_ROOT_ID))
		ret = bad(m, "no root directory", IMG_ROOT_ID);
	if (!ret)
		*hdr = json_pack("{s:s, s:i, s:s, s:I, s:I, s:s}", "kind", "heap", "version",
				 IMG_VERSION, "name", img_r_hdr(r)->name,
				 "heap_size", (json_int_t)img_r_hdr(r)->heap_size,
				 "min_block", (json_int_t)(1ull << img_r_hdr(r)->min_order),
				 "layout", img_r_hdr(r)->layout ? "contiguous" : "extents");
	img_r_free(r);
	if (!ret && !*hdr)
		ret = -ENOMEM;
	return ret ? refused(m, ret) : 0;
}

/* The path of live entry i, built from its parent's. */
static int ent_path(struct model *m, size_t i, int depth)
{
	struct ent *e = &m->ents[i];
	struct node *p = node_get(m, e->parent);
	int ret;

	if (e->path)
		return 0;
	if (depth > DEPTH_MAX)
		return bad(m, "a directory loop", e->parent);
	if (e->parent == IMG_ROOT_ID) {
		e->path = strdup(e->name);
		return e->path ? 0 : -ENOMEM;
	}
	if (!p || p->up < 0)
		return bad(m, "a directory not reachable from the root", e->parent);
	ret = ent_path(m, (size_t)p->up, depth + 1);
	if (ret)
		return ret;
	return asprintf(&e->path, "%s/%s", m->ents[p->up].path, e->name) < 0 ? -ENOMEM : 0;
}

static int all_paths(struct model *m)
{
	struct node *n, *tmp;
	int ret = 0;

	HASH_ITER(hh, m->nodes, n, tmp) {
		n->up = -1;
		n->in.nlink = n->id == IMG_ROOT_ID ? 1 : 0;
	}
	for (size_t i = 0; i < m->nents; i++) {
		if (m->ents[i].gone)
			continue;
		n = node_get(m, m->ents[i].child);
		n->in.nlink++;
		if (n->up < 0)
			n->up = (long)i;
	}
	for (size_t i = 0; !ret && i < m->nents; i++)
		if (!m->ents[i].gone)
			ret = ent_path(m, i, 0);
	return ret;
}

static const char *const kind_names[] = { "?", "file", "dir", "symlink", "special" };

static json_t *file_json(const char *path, const struct node *n)
{
	json_t *f = json_pack("{s:s, s:I, s:s, s:I, s:i, s:i, s:i, s:i}", "path", path,
			      "id", (json_int_t)n->id,
			      "kind", kind_names[n->in.kind <= IMG_K_SPECIAL ? n->in.kind : 0],
			      "size", (json_int_t)n->in.size, "mode", n->in.mode, "uid", n->in.uid,
			      "gid", n->in.gid, "nlink", n->in.nlink);

	if (f && n->target && json_object_set_new(f, "target", json_string(n->target))) {
		json_decref(f);
		return NULL;
	}
	return f;
}

static int by_path(const void *a, const void *b)
{
	return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "path")),
		      json_string_value(json_object_get(*(json_t *const *)b, "path")));
}

static void print_heap(const json_t *j)
{
	const json_t *f;
	size_t i;
	char a[32], b[32];

	printf("heap image '%s', version %" JSON_INTEGER_FORMAT ", %s, min_block %s, %s\n",
	       json_string_value(json_object_get(j, "name")),
	       json_integer_value(json_object_get(j, "version")),
	       fmt_size(json_integer_value(json_object_get(j, "heap_size")), a, sizeof(a)),
	       fmt_size(json_integer_value(json_object_get(j, "min_block")), b, sizeof(b)),
	       json_string_value(json_object_get(j, "layout")));
	printf("%-8s %6s %12s  %s\n", "KIND", "MODE", "SIZE", "PATH");
	json_array_foreach(json_object_get(j, "files"), i, f) {
		const char *t = json_string_value(json_object_get(f, "target"));

		printf("%-8s %6llo %12" JSON_INTEGER_FORMAT "  %s%s%s\n",
		       json_string_value(json_object_get(f, "kind")),
		       (unsigned long long)json_integer_value(json_object_get(f, "mode")) & 07777,
		       json_integer_value(json_object_get(f, "size")),
		       json_string_value(json_object_get(f, "path")), t ? " -> " : "", t ? t : "");
	}
}

static int heap_ls(struct model *m, json_t *j, const struct ctl_opts *o)
{
	json_t *files = json_array();
	int ret = files ? 0 : -ENOMEM;

	if (!ret && json_array_append_new(files, file_json(".", node_get(m, IMG_ROOT_ID))))
		ret = -ENOMEM;
	for (size_t i = 0; !ret && i < m->nents; i++)
		if (!m->ents[i].gone &&
		    json_array_append_new(files, file_json(m->ents[i].path,
							   node_get(m, m->ents[i].child))))
			ret = -ENOMEM;
	if (!ret)
		ret = sort_array(files, by_path);
	if (ret || json_object_set_new(j, "files", files)) {
		json_decref(j);
		return refused(m, ret ? ret : -ENOMEM);
	}
	return show(j, o, print_heap);
}

/* The regular file at path (relative to the heap). */
static struct node *resolve(struct model *m, const char *path)
{
	char *copy = strdup(path), *save = NULL, *c;
	uint64_t cur = IMG_ROOT_ID;
	long e = 0;
	struct node *n;

	for (c = copy ? strtok_r(copy, "/", &save) : NULL; c && e >= 0;
	     c = strtok_r(NULL, "/", &save))
		if (strcmp(c, ".") && (e = ent_find(m, cur, c)) >= 0)
			cur = m->ents[e].child;
	n = copy && e >= 0 ? node_get(m, cur) : NULL;
	free(copy);
	if (!n)
		err_msg("%s: no file '%s' in the image", m->file, path);
	else if (n->in.kind != IMG_K_REG)
		err_msg("%s: '%s' is not a regular file", m->file, path);
	return n && n->in.kind == IMG_K_REG ? n : NULL;
}

/* n zero bytes to stdout. */
static int write_zeros(uint64_t n)
{
	static const char zero[65536];
	int ret = 0;

	for (; !ret && n; n -= n < sizeof(zero) ? n : sizeof(zero))
		ret = write_out(zero, n < sizeof(zero) ? n : sizeof(zero));
	return ret;
}

/* Second pass: the file's DATA in offset order, holes and tail as zeros. */
static int heap_cat(struct model *m, int fd, const struct node *n)
{
	unsigned char *buf = malloc(IMG_DATA_MAX);
	struct img_r *r = NULL;
	struct img_rec rec;
	uint64_t pos = 0, size = n->in.size;
	int ret = buf ? stream_open(m, fd, &r) : -ENOMEM;

	while (!ret && (ret = img_r_next(r, &rec)) == 1) {
		ret = 0;
		if (rec.type != IMG_DATA || rec.u.data.id != n->id)
			continue;
		if (rec.u.data.off < pos) {
			ret = bad(m, "DATA records out of offset order", n->id);
			break;
		}
		ret = img_r_data(r, buf);
		if (!ret && rec.u.data.off < size)
			ret = write_zeros(rec.u.data.off - pos);
		if (!ret && rec.u.data.off < size) {
			uint64_t k = size - rec.u.data.off < rec.data_len ? size - rec.u.data.off
									 : rec.data_len;
			ret = write_out(buf, k);
			pos = rec.u.data.off + k;
		}
	}
	if (!ret)
		ret = write_zeros(size - pos);
	img_r_free(r);
	free(buf);
	return ret ? refused(m, ret) : 0;
}

static int heap(const char *file, int fd, char **args, const struct ctl_opts *o)
{
	struct model m = { .file = file };
	json_t *j = NULL;
	struct node *n;
	int ret = model_load(&m, fd, &j);

	if (!ret && (ret = all_paths(&m))) { /* every entry reachable from the root */
		json_decref(j);
		ret = refused(&m, ret);
	} else if (!ret && !args[2]) {
		ret = heap_ls(&m, j, o);
	} else if (!ret) {
		json_decref(j);
		n = resolve(&m, args[2]);
		ret = n ? heap_cat(&m, fd, n) : -ENOENT;
	}
	model_free(&m);
	return ret;
}

/* ---- the command --------------------------------------------------------------------- */

int cmd_image(char **args, const struct ctl_opts *o)
{
	const char *file = args[1];
	char magic[8];
	struct stat st;
	ssize_t got;
	int fd, ret;

	if (!(!strcmp(args[0], "ls") && !args[2]) && !(!strcmp(args[0], "cat") && args[2])) {
		err_msg("image: use 'image ls FILE' or 'image cat FILE NAME'");
		return EXIT_USAGE;
	}
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		err_msg("%s: %s", file, strerror(-ret));
		goto out;
	}
	ret = -EBADMSG;
	got = pread(fd, magic, sizeof(magic), 0);
	if (got < 0) {
		ret = -errno;
		err_msg("%s: %s", file, strerror(-ret));
	} else if (got != (ssize_t)sizeof(magic))
		err_msg("%s: truncated: %lld bytes, not a heapfs image", file, (long long)st.st_size);
	else if (!memcmp(magic, IMG_SEG_MAGIC, 8))
		ret = segment(file, fd, (uint64_t)st.st_size, args, o);
	else if (!memcmp(magic, IMG_MAGIC, 8))
		ret = heap(file, fd, args, o);
	else
		err_msg("%s: not a heapfs image (bad magic)", file);
out:
	if (fd >= 0)
		close(fd);
	return ret;
}
