/*
 * heapfsctl.c — the heapfs control CLI.
 *
 * It talks to a mount only through the read-only JSON files under MOUNT/.heapfs/ (stats,
 * heaps/NAME, maps/NAME, partner, donors), so it needs no daemon-side code and works for
 * any user that can read the mount.  Each command loads the file it needs with jansson,
 * then prints either a human table or (--json, accepted anywhere on the line) the JSON.
 *
 * `map` draws a heap by offset: the heap is cut into a grid of rows of equal power-of-two
 * byte ranges; the text form prints one ASCII bar per row (each cell free, used or both),
 * the SVG form draws every buddy block as a rectangle (split at row ends), coloured by
 * order, saturated when used and pale when free, so fragmentation shows at a glance.
 *
 * `image ls|cat FILE` reads image files with no daemon (image.c, through img/).
 *
 * Exit status: 0 ok, 1 operation failed (not a heapfs mount, heap not found, I/O error,
 * a corrupt image), 2 usage error.  Internal functions return 0 or -errno and report errors (once, where
 * they are understood) through err_msg(); main() maps results to exit codes.
 * Single-threaded, no locking.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>
#include <sys/xattr.h>

#include <jansson.h>

#include "ctl_i.h"
#include "heapfs.h"
#include "img.h"

#ifndef HEAPFS_VERSION
#define HEAPFS_VERSION "unknown"
#endif

void err_msg(const char *fmt, ...)
{
	va_list ap;

	fputs("heapfsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void usage(FILE *out)
{
	fputs("usage: heapfsctl [--json] COMMAND ARGS...\n"
	      "\n"
	      "commands:\n"
	      "  status MOUNT              one-screen summary: daemon, heaps, partner\n"
	      "  stats MOUNT [HEAP]        per-heap figures and free blocks per order\n"
	      "  map MOUNT HEAP [--svg FILE]\n"
	      "                            the heap's blocks by offset (text), or a picture (SVG)\n"
	      "  donors MOUNT              donor processes of the pool\n"
	      "  partner MOUNT             replication state\n"
	      "  clients MOUNT             libheapfs client processes: pid, heaps, mapped bytes\n"
	      "  image ls FILE             what an image file holds (object segment: names,\n"
	      "                            offsets, sizes, free space; heap image: paths)\n"
	      "  image cat FILE NAME       one object's bytes, or one file's (path in the heap)\n"
	      "  save MOUNT HEAP FILE      a consistent image of a live heap, saved atomically\n"
	      "  promote MOUNT [HEAP] [--force | --discard-peer]\n"
	      "                            this node owns HEAP (all replicated heaps) from now on;\n"
	      "                            --force: even while the partner is connected;\n"
	      "                            --discard-peer: end a split brain, this side wins\n"
	      "  demote MOUNT [HEAP]       this node's HEAP (all) becomes a read-only mirror,\n"
	      "                            keeping its data (a cluster manager moves ownership)\n"
	      "  verify MOUNT [HEAP]       compare this copy with the partner's (exit 1: differ)\n"
	      "\n"
	      "options:\n"
	      "  --json        print JSON instead of tables (anywhere on the line)\n"
	      "  --svg FILE    map: write an SVG picture of the heap to FILE (- for stdout)\n"
	      "  -h, --help    this help\n"
	      "  -V, --version print the version\n"
	      "\n"
	      "exit status: 0 ok, 1 operation failed, 2 usage error\n",
	      out);
}

/* ---- reading .heapfs/ files ---------------------------------------------------------- */

/* Read a whole file; status files are served with direct I/O and may report size 0, so
 * read until EOF rather than trusting st_size. */
static int read_all(const char *path, char **out, size_t *outlen)
{
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap), *nbuf;
	ssize_t n;
	int fd, ret = 0;

	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		goto out_free;
	}
	for (;;) {
		if (len == cap) {
			nbuf = realloc(buf, cap * 2);
			if (!nbuf) {
				ret = -ENOMEM;
				goto out_close;
			}
			buf = nbuf;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			goto out_close;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*out = buf;
	*outlen = len;
	buf = NULL;
out_close:
	close(fd);
out_free:
	free(buf);
	return ret;
}

/* Load MOUNT/.heapfs/REL as JSON.  -EBADMSG when it is not a JSON object. */
static int load_json(const char *mount, const char *rel, json_t **out)
{
	json_error_t jerr;
	char *path = NULL, *buf = NULL;
	size_t len = 0;
	int ret;

	if (asprintf(&path, "%s/.heapfs/%s", mount, rel) < 0)
		return -ENOMEM;
	ret = read_all(path, &buf, &len);
	if (ret)
		goto out;
	*out = json_loadb(buf, len, 0, &jerr);
	if (!*out || !json_is_object(*out)) {
		json_decref(*out);
		*out = NULL;
		ret = -EBADMSG;
	}
out:
	free(buf);
	free(path);
	return ret;
}

/* The mount's .heapfs/stats; reports "not a heapfs mount" itself. */
static int load_stats(const char *mount, json_t **out)
{
	int ret = load_json(mount, "stats", out);

	if (!ret && !json_is_array(json_object_get(*out, "heaps"))) {
		json_decref(*out);
		ret = -EBADMSG;
	}
	if (ret)
		err_msg("%s: not a heapfs mount (.heapfs/stats: %s)", mount,
			ret == -EBADMSG ? "not heapfs status JSON" : strerror(-ret));
	return ret;
}

/* MOUNT/.heapfs/REL of a heapfs mount (checked through .heapfs/stats first); reports its
 * own errors, `missing` (when not NULL) for a file that does not exist. */
static int load_status(const char *mount, const char *rel, const char *missing, json_t **out)
{
	json_t *stats;
	int ret;

	ret = load_stats(mount, &stats);
	if (ret)
		return ret;
	json_decref(stats);
	ret = load_json(mount, rel, out);
	if (ret == -ENOENT && missing)
		err_msg("%s", missing);
	else if (ret)
		err_msg("%s/.heapfs/%s: %s", mount, rel,
			ret == -EBADMSG ? "not valid JSON" : strerror(-ret));
	return ret;
}

/* .heapfs/DIR/HEAP for one heap (DIR is "heaps" or "maps"); reports its own errors. */
static int load_heap(const char *mount, const char *dir, const char *heap, json_t **out)
{
	char *rel = NULL, *missing = NULL;
	int ret;

	if (!*heap || strchr(heap, '/') || !strcmp(heap, ".") || !strcmp(heap, "..")) {
		err_msg("%s: not a heap name", heap);
		return -EINVAL;
	}
	if (asprintf(&rel, "%s/%s", dir, heap) < 0 ||
	    asprintf(&missing, "%s: no heap named '%s'", mount, heap) < 0) {
		ret = -ENOMEM;
		goto out;
	}
	ret = load_status(mount, rel, missing, out);
out:
	free(missing);
	free(rel);
	return ret;
}

static int print_json(const json_t *j)
{
	if (json_dumpf(j, stdout, JSON_INDENT(2)) < 0)
		return -EIO;
	putchar('\n');
	return 0;
}

/* An integer member, or -1 when absent or not a number. */
static int64_t jint(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	if (json_is_integer(v))
		return json_integer_value(v);
	if (json_is_real(v))
		return (int64_t)json_real_value(v);
	return -1;
}

static const char *jstr(const json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : dflt;
}

/* ---- formatting ---------------------------------------------------------------------- */

/* Binary size: exact multiples as "4K"/"256M", others with one decimal ("1.5M"); "?" for
 * negative (absent) values.  Returns buf. */
const char *fmt_size(int64_t v, char *buf, size_t len)
{
	static const char units[] = "KMGTPE";
	double d = (double)v;
	int u = -1;

	if (v < 0) {
		snprintf(buf, len, "?");
		return buf;
	}
	if (v < 1024) {
		snprintf(buf, len, "%" PRId64 "B", v);
		return buf;
	}
	while (d >= 1024 && u < 5) {
		d /= 1024;
		u++;
	}
	if (d == floor(d))
		snprintf(buf, len, "%.0f%c", d, units[u]);
	else
		snprintf(buf, len, "%.1f%c", d, units[u]);
	return buf;
}

/* Like fmt_size but in long IEC units for titles ("4 KiB", "1.5 MiB"). */
static const char *fmt_size_long(int64_t v, char *buf, size_t len)
{
	char tmp[32];
	size_t n;

	fmt_size(v, tmp, sizeof(tmp));
	n = strlen(tmp);
	if (v >= 1024)
		snprintf(buf, len, "%.*s %ciB", (int)(n - 1), tmp, tmp[n - 1]);
	else
		snprintf(buf, len, "%" PRId64 " B", v < 0 ? 0 : v);
	return buf;
}

static unsigned log2u(uint64_t v)
{
	unsigned k = 0;

	while (v > 1) {
		v >>= 1;
		k++;
	}
	return k;
}

static double pct(int64_t part, int64_t whole)
{
	return whole > 0 ? 100.0 * (double)part / (double)whole : 0.0;
}

/* ---- status -------------------------------------------------------------------------- */

/* A status file a feature adds (partner, donors): NULL when absent or unreadable,
 * so the summary still shows what there is. */
static json_t *load_optional(const char *mount, const char *rel)
{
	json_t *j = NULL;

	if (load_json(mount, rel, &j))
		return NULL;
	return j;
}

static void print_heap_row(const json_t *h)
{
	char size[32], used[32], free_[32], largest[32];

	printf("%-16s %-6s %-9s %8s %8s %8s %8s %7" PRId64 "\n", jstr(h, "name", "?"),
	       jstr(h, "role", "?"), jstr(h, "replicate", "?"),
	       fmt_size(jint(h, "size"), size, sizeof(size)),
	       fmt_size(jint(h, "used"), used, sizeof(used)),
	       fmt_size(jint(h, "free"), free_, sizeof(free_)),
	       fmt_size(jint(h, "largest_free"), largest, sizeof(largest)), jint(h, "files"));
}

static void print_status_objects(const json_t *ob)
{
	char a[32], b[32];

	printf("\nobjects  ");
	if (!ob) {
		printf("(none)\n");
		return;
	}
	printf("%" PRId64 " in a segment of %s, %s used (%.0f%%), largest free %s\n",
	       jint(ob, "objects"), fmt_size(jint(ob, "size"), a, sizeof(a)),
	       fmt_size(jint(ob, "used"), b, sizeof(b)), pct(jint(ob, "used"), jint(ob, "size")),
	       fmt_size(jint(ob, "largest_free"), a, sizeof(a)));
}

/* libheapfs clients on one line: how many, what they map, which processes */
static void print_status_clients(const json_t *cl)
{
	int64_t mapped = 0;
	const json_t *c;
	char a[32];
	size_t i, n = json_array_size(cl);

	json_array_foreach(cl, i, c)
		mapped += jint(c, "mapped_bytes");
	printf("clients  %zu", n);
	if (n)
		printf(", %s mapped, pids", fmt_size(mapped, a, sizeof(a)));
	json_array_foreach(cl, i, c) {
		if (i == 8) {
			printf(" ...");
			break;
		}
		printf(" %" PRId64, jint(c, "pid"));
	}
	printf("\n");
}

static int cmd_status(char **args, const struct ctl_opts *o)
{
	const char *mount = args[0];
	json_t *stats, *partner, *donors, *heaps, *h, *out;
	size_t i;
	int ret;

	ret = load_stats(mount, &stats);
	if (ret)
		return ret;
	partner = load_optional(mount, "partner");
	donors = load_optional(mount, "donors");
	heaps = json_object_get(stats, "heaps");
	if (o->json) {
		out = json_pack("{s:s, s:O?, s:O?, s:O, s:O?, s:O?, s:O?, s:O?}", "mount", mount,
				"pid", json_object_get(stats, "pid"), "version",
				json_object_get(stats, "version"), "heaps", heaps, "objects",
				json_object_get(stats, "objects"), "clients",
				json_object_get(stats, "clients"), "partner", partner, "donors",
				donors);
		ret = out ? print_json(out) : -ENOMEM;
		json_decref(out);
		goto out;
	}
	printf("mount    %s\n", mount);
	printf("daemon   heapfs %s, pid %" PRId64 "\n", jstr(stats, "version", "?"),
	       jint(stats, "pid"));
	printf("heaps    %zu\n\n", json_array_size(heaps));
	printf("%-16s %-6s %-9s %8s %8s %8s %8s %7s\n", "HEAP", "ROLE", "REPLICATE", "SIZE",
	       "USED", "FREE", "LARGEST", "FILES");
	json_array_foreach(heaps, i, h)
		print_heap_row(h);
	print_status_objects(json_object_get(stats, "objects"));
	print_status_clients(json_object_get(stats, "clients"));
	printf("partner  ");
	if (!partner)
		printf("(no .heapfs/partner)\n");
	else if (!strcmp(jstr(partner, "state", "?"), "none"))
		printf("none\n");
	else
		printf("%s, node %s, peer %s, epoch %" PRId64 ", lag %" PRId64 " bytes\n",
		       jstr(partner, "state", "?"), jstr(partner, "node", "?"),
		       jstr(partner, "peer", "?"), jint(partner, "epoch"),
		       jint(partner, "lag_bytes"));
	printf("donors   ");
	if (!donors)
		printf("(no .heapfs/donors)\n");
	else
		printf("%zu\n", json_array_size(json_object_get(donors, "donors")));
out:
	json_decref(donors);
	json_decref(partner);
	json_decref(stats);
	return ret;
}

/* ---- stats --------------------------------------------------------------------------- */

static void print_heap_stats(const json_t *h)
{
	const json_t *fb = json_object_get(h, "free_blocks");
	int64_t size = jint(h, "size"), min_block = jint(h, "min_block");
	unsigned lo = min_block > 0 ? log2u((uint64_t)min_block) : 0;
	unsigned hi = size > 0 ? log2u((uint64_t)size) : 0, k;
	char a[32], b[32], key[16];
	int64_t used = jint(h, "used"), count;
	bool any = false;

	printf("heap %s  (%s, layout %s, cache %s, writers %s, replicate %s)\n",
	       jstr(h, "name", "?"), jstr(h, "role", "?"), jstr(h, "layout", "?"),
	       jstr(h, "cache", "?"), jstr(h, "writers", "?"), jstr(h, "replicate", "?"));
	printf("  %-14s %10s  (%" PRId64 " bytes)\n", "size", fmt_size(size, a, sizeof(a)),
	       size);
	printf("  %-14s %10s\n", "min_block", fmt_size(min_block, a, sizeof(a)));
	printf("  %-14s %10s  (%.1f%%)\n", "used", fmt_size(used, a, sizeof(a)),
	       pct(used, size));
	printf("  %-14s %10s\n", "free", fmt_size(jint(h, "free"), a, sizeof(a)));
	printf("  %-14s %10s\n", "largest_free", fmt_size(jint(h, "largest_free"), a, sizeof(a)));
	printf("  %-14s %10" PRId64 " committed, %" PRId64 " released (chunk %s)\n", "chunks",
	       jint(h, "chunks_committed"), jint(h, "chunks_released"),
	       fmt_size(jint(h, "chunk"), b, sizeof(b)));
	printf("  %-14s %10" PRId64 "\n", "files", jint(h, "files"));
	printf("  free blocks per order:\n");
	for (k = lo; k <= hi && json_is_object(fb); k++) {
		snprintf(key, sizeof(key), "%u", k);
		count = json_integer_value(json_object_get(fb, key));
		if (count <= 0)
			continue;
		if (!any)
			printf("    %5s %10s %8s\n", "ORDER", "BLOCK", "COUNT");
		any = true;
		printf("    %5u %10s %8" PRId64 "\n", k, fmt_size((int64_t)1 << k, a, sizeof(a)),
		       count);
	}
	if (!any)
		printf("    (none)\n");
}

static void print_all_stats(const json_t *stats)
{
	const json_t *h;
	size_t i;

	json_array_foreach(json_object_get(stats, "heaps"), i, h) {
		if (i)
			putchar('\n');
		print_heap_stats(h);
	}
}

/* Print j as JSON (--json) or with the human printer; takes the reference to j. */
int show(json_t *j, const struct ctl_opts *o, void (*human)(const json_t *))
{
	int ret = 0;

	if (o->json)
		ret = print_json(j);
	else
		human(j);
	json_decref(j);
	return ret;
}

static int cmd_stats(char **args, const struct ctl_opts *o)
{
	const char *mount = args[0], *heap = args[1];
	json_t *j;
	int ret;

	ret = heap ? load_heap(mount, "heaps", heap, &j) : load_stats(mount, &j);
	if (ret)
		return ret;
	return show(j, o, heap ? print_heap_stats : print_all_stats);
}

/* ---- map ----------------------------------------------------------------------------- */

struct block {
	uint64_t off;
	unsigned order;
	bool free;
};

struct heap_map {
	const char *name;
	uint64_t size, min_block;
	struct block *blocks;
	size_t n;
	uint64_t used, free, largest_free, nfree;
};

static int cmp_block(const void *a, const void *b)
{
	const struct block *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* Decode .heapfs/maps/NAME into m (m->name points into j). */
static int parse_map(const json_t *j, struct heap_map *m)
{
	const json_t *arr = json_object_get(j, "blocks"), *e;
	int64_t size = jint(j, "size"), min_block = jint(j, "min_block");
	size_t i;

	memset(m, 0, sizeof(*m));
	if (size <= 0 || min_block <= 0 || !json_is_array(arr))
		return -EBADMSG;
	m->name = jstr(j, "name", "?");
	m->size = (uint64_t)size;
	m->min_block = (uint64_t)min_block;
	m->blocks = calloc(json_array_size(arr) + 1, sizeof(*m->blocks));
	if (!m->blocks)
		return -ENOMEM;
	json_array_foreach(arr, i, e) {
		struct block *b = &m->blocks[m->n];
		int64_t off = json_integer_value(json_array_get(e, 0));
		int64_t order = json_integer_value(json_array_get(e, 1));
		uint64_t len;

		if (!json_is_array(e) || json_array_size(e) < 3 || off < 0 || order < 0 ||
		    order > 62 || (uint64_t)off + ((uint64_t)1 << order) > m->size)
			return -EBADMSG;
		b->off = (uint64_t)off;
		b->order = (unsigned)order;
		b->free = json_is_true(json_array_get(e, 2)) ||
			  json_integer_value(json_array_get(e, 2)) != 0;
		len = (uint64_t)1 << b->order;
		if (b->free) {
			m->free += len;
			m->nfree++;
			if (len > m->largest_free)
				m->largest_free = len;
		} else {
			m->used += len;
		}
		m->n++;
	}
	qsort(m->blocks, m->n, sizeof(*m->blocks), cmp_block);
	return 0;
}

/* The grid both pictures use: rows of row_bytes, a power of two, at most max_rows rows,
 * and enough of them that a min_block is about one cell/pixel of a row of `width`. */
static uint64_t grid_row_bytes(const struct heap_map *m, uint64_t width, uint64_t max_rows)
{
	uint64_t rows = m->size / m->min_block / width;

	if (rows < 1)
		rows = 1;
	if (rows > max_rows)
		rows = max_rows;
	return m->size / rows;
}

#define MAP_COLS 64

static int print_map_text(const struct heap_map *m)
{
	uint64_t row_bytes = grid_row_bytes(m, MAP_COLS, 32), cell, ncells, c, first, last;
	uint64_t *used = NULL, *freeb = NULL, s, e;
	char a[32], b[32], f[32], l[32], g[32];
	size_t i;
	int ret = 0;

	cell = row_bytes / MAP_COLS ? row_bytes / MAP_COLS : 1;
	if (cell < m->min_block)
		cell = m->min_block;
	ncells = m->size / cell;
	used = calloc(ncells, sizeof(*used));
	freeb = calloc(ncells, sizeof(*freeb));
	if (!used || !freeb) {
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < m->n; i++) {
		s = m->blocks[i].off;
		e = s + ((uint64_t)1 << m->blocks[i].order);
		first = s / cell;
		last = (e - 1) / cell;
		for (c = first; c <= last; c++) {
			uint64_t lo = c * cell > s ? c * cell : s;
			uint64_t hi = (c + 1) * cell < e ? (c + 1) * cell : e;

			*(m->blocks[i].free ? &freeb[c] : &used[c]) += hi - lo;
		}
	}
	printf("heap %s: %s, min_block %s, used %s, free %s, largest_free %s\n", m->name,
	       fmt_size((int64_t)m->size, a, sizeof(a)),
	       fmt_size((int64_t)m->min_block, b, sizeof(b)),
	       fmt_size((int64_t)m->used, f, sizeof(f)),
	       fmt_size((int64_t)m->free, l, sizeof(l)),
	       fmt_size((int64_t)m->largest_free, g, sizeof(g)));
	for (c = 0; c < ncells; c++) {
		if (c % MAP_COLS == 0)
			printf("%9s |", fmt_size((int64_t)(c * cell), a, sizeof(a)));
		putchar(!used[c] && !freeb[c] ? ' ' : !used[c] ? '.' : !freeb[c] ? '#' : ':');
		if (c % MAP_COLS == MAP_COLS - 1 || c == ncells - 1)
			printf("|\n");
	}
	printf("one cell = %s;  '#' used  '.' free  ':' both (split blocks)  ' ' not reported\n",
	       fmt_size((int64_t)cell, a, sizeof(a)));
out:
	free(used);
	free(freeb);
	return ret;
}

/* SVG geometry. */
#define SVG_W 1024.0  /* width of the heap drawing */
#define SVG_LEFT 78.0 /* room for the row offset labels */
#define SVG_TOP 74.0  /* room for the title */
#define SVG_GAP 3.0   /* between rows */

/* Turbo colour map (Google's polynomial approximation), t in 0..1: dark blue, cyan, green,
 * yellow, red: perceptually even steps, so neighbouring orders stay distinguishable. */
static void turbo(double t, double rgb[3])
{
	static const double k[3][6] = {
		{ 0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943 },
		{ 0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604 },
		{ 0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973 },
	};
	int c, i;

	for (c = 0; c < 3; c++) {
		double v = 0;

		for (i = 5; i >= 0; i--)
			v = v * t + k[c][i];
		rgb[c] = v < 0 ? 0 : v > 1 ? 1 : v;
	}
}

/* One colour per order across the heap's range: small blocks hot (red), big blocks cool
 * (blue). */
static void order_colour(const struct heap_map *m, unsigned order, bool free, char out[8])
{
	unsigned lo = log2u(m->min_block), hi = log2u(m->size);
	double t = hi > lo ? (double)(order - lo) / (double)(hi - lo) : 0, rgb[3];
	int c;

	turbo(0.92 - 0.84 * t, rgb);
	/* used a shade darker, free a pale tint: the two read apart at a glance */
	for (c = 0; c < 3; c++)
		rgb[c] = free ? rgb[c] + (1 - rgb[c]) * 0.72 : rgb[c] * 0.8;
	snprintf(out, 8, "#%02x%02x%02x", (unsigned)lround(rgb[0] * 255),
		 (unsigned)lround(rgb[1] * 255), (unsigned)lround(rgb[2] * 255));
}

static void xml_escaped(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
	}
}

static void svg_rect(FILE *f, double x, double y, double w, double h, const char *fill,
		     bool outline)
{
	fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"%s/>\n",
		x, y, w, h, fill, outline ? " stroke=\"#ffffff\" stroke-width=\"0.6\"" : "");
}

/* Draw the blocks: each block is split into its pieces per row; a run of neighbouring
 * blocks of the same order and state narrower than 3 px each is merged into one rect (so
 * a heap of 64Ki tiny blocks stays a small file); wider blocks get a white outline. */
static void svg_blocks(FILE *f, const struct heap_map *m, uint64_t row_bytes, double rowh)
{
	double px = SVG_W / (double)row_bytes;
	char fill[8], lbl[32];
	size_t i, j;

	for (i = 0; i < m->n; i = j) {
		const struct block *b = &m->blocks[i];
		uint64_t len = (uint64_t)1 << b->order, end = b->off + len, s;
		bool tiny = (double)len * px < 3.0;

		/* extend a run of tiny, adjacent, same-looking blocks within one row */
		for (j = i + 1; tiny && j < m->n && m->blocks[j].off == end &&
				m->blocks[j].order == b->order && m->blocks[j].free == b->free &&
				end % row_bytes; j++)
			end += len;
		order_colour(m, b->order, b->free, fill);
		for (s = b->off; s < end;) {
			uint64_t row = s / row_bytes, e = (row + 1) * row_bytes;

			if (e > end)
				e = end;
			double x = SVG_LEFT + (double)(s % row_bytes) * px, w = (double)(e - s) * px;
			double y = SVG_TOP + (double)row * (rowh + SVG_GAP);

			svg_rect(f, x, y, w, rowh, fill, !tiny);
			/* name the block size where it fits, so big blocks read without the legend */
			if (w >= 44 && rowh >= 16)
				fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"%s\">%s%s</text>\n",
					x + w / 2, y + rowh / 2 + 4, b->free ? "b" : "b u",
					b->free ? "free " : "",
					fmt_size((int64_t)len, lbl, sizeof(lbl)));
			s = e;
		}
	}
}

/* Legend: one entry per order present, a used and a free swatch and the block size. */
static double svg_legend(FILE *f, const struct heap_map *m, double y)
{
	bool present[64] = { false };
	char used[8], freec[8], a[32];
	double x = SVG_LEFT;
	unsigned k;
	size_t i;

	for (i = 0; i < m->n; i++)
		present[m->blocks[i].order] = true;
	fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" class=\"l\">block order (size): "
		   "strong colour = used, pale = free</text>\n", SVG_LEFT, y);
	y += 10;
	for (k = 0; k < 64; k++) {
		if (!present[k])
			continue;
		if (x + 118 > SVG_LEFT + SVG_W) {
			x = SVG_LEFT;
			y += 24;
		}
		order_colour(m, k, false, used);
		order_colour(m, k, true, freec);
		svg_rect(f, x, y, 14, 14, used, false);
		svg_rect(f, x + 14, y, 14, 14, freec, false);
		fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" class=\"l\">%u (%s)</text>\n", x + 33,
			y + 11.5, k, fmt_size((int64_t)1 << k, a, sizeof(a)));
		x += 118;
	}
	return y + 24;
}

static int write_map_svg(const struct heap_map *m, FILE *f)
{
	uint64_t row_bytes = grid_row_bytes(m, (uint64_t)SVG_W, 64), rows = m->size / row_bytes, r;
	double rowh = rows <= 4 ? 48 : rows <= 16 ? 26 : rows <= 32 ? 16 : 11, y, height;
	char a[32], b[32], c[32], d[32], e[32];
	double frag = m->free ? 100.0 * (1.0 - (double)m->largest_free / (double)m->free) : 0;

	y = SVG_TOP + (double)rows * (rowh + SVG_GAP) + 22;
	height = y + 24 * (1 + (double)(log2u(m->size) - log2u(m->min_block) + 1) / 8.0) + 40;
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		   "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
		   "viewBox=\"0 0 %.0f %.0f\">\n",
		SVG_LEFT + SVG_W + 20, height, SVG_LEFT + SVG_W + 20, height);
	fputs("<style>text{font-family:DejaVu Sans,Verdana,sans-serif;fill:#222}"
	      ".t{font-size:18px;font-weight:bold}.s{font-size:13px}.l{font-size:11px}"
	      ".o{font-size:10px;fill:#555;text-anchor:end}"
	      ".b{font-size:10px;fill:#333;text-anchor:middle}.u{fill:#fff}</style>\n"
	      "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n", f);
	fputs("<title>heapfs heap ", f);
	xml_escaped(f, m->name);
	fputs("</title>\n<text x=\"12\" y=\"26\" class=\"t\">heap ", f);
	xml_escaped(f, m->name);
	fprintf(f, " \xe2\x80\x94 %s in blocks of %s .. %s</text>\n",
		fmt_size_long((int64_t)m->size, a, sizeof(a)),
		fmt_size_long((int64_t)m->min_block, b, sizeof(b)),
		fmt_size_long((int64_t)m->size, c, sizeof(c)));
	fprintf(f, "<text x=\"12\" y=\"48\" class=\"s\">used %s (%.1f%%) \xc2\xb7 free %s in %"
		   PRIu64 " blocks \xc2\xb7 largest_free %s \xc2\xb7 fragmentation %.1f%% "
		   "(1 \xe2\x88\x92 largest_free/free) \xc2\xb7 %zu blocks</text>\n",
		fmt_size_long((int64_t)m->used, a, sizeof(a)), pct((int64_t)m->used, (int64_t)m->size),
		fmt_size_long((int64_t)m->free, b, sizeof(b)), m->nfree,
		fmt_size_long((int64_t)m->largest_free, d, sizeof(d)), frag, m->n);
	fprintf(f, "<text x=\"12\" y=\"64\" class=\"l\">offset \xe2\x86\x92, one row = %s; "
		   "grey: not reported</text>\n", fmt_size_long((int64_t)row_bytes, e, sizeof(e)));
	for (r = 0; r < rows; r++) {
		double ry = SVG_TOP + (double)r * (rowh + SVG_GAP);

		svg_rect(f, SVG_LEFT, ry, SVG_W, rowh, "#d0d0d0", false);
		if (rows <= 16 || r % 4 == 0)
			fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" class=\"o\">%s</text>\n",
				SVG_LEFT - 6, ry + rowh / 2 + 3.5,
				fmt_size((int64_t)(r * row_bytes), a, sizeof(a)));
	}
	svg_blocks(f, m, row_bytes, rowh);
	svg_legend(f, m, y);
	fputs("</svg>\n", f);
	return ferror(f) ? -EIO : 0;
}

static int save_map_svg(const struct heap_map *m, const char *file)
{
	bool std = !strcmp(file, "-");
	FILE *f = std ? stdout : fopen(file, "w");
	int ret;

	if (!f) {
		ret = -errno;
		err_msg("%s: %s", file, strerror(errno));
		return ret;
	}
	ret = write_map_svg(m, f);
	if (!std && fclose(f) && !ret)
		ret = -errno;
	if (ret)
		err_msg("%s: %s", file, strerror(-ret));
	return ret;
}

static int cmd_map(char **args, const struct ctl_opts *o)
{
	const char *mount = args[0], *heap = args[1];
	struct heap_map m;
	json_t *j;
	int ret;

	ret = load_heap(mount, "maps", heap, &j);
	if (ret)
		return ret;
	ret = parse_map(j, &m);
	if (ret) {
		err_msg("%s/.heapfs/maps/%s: %s", mount, heap,
			ret == -EBADMSG ? "not a heap map" : strerror(-ret));
		goto out;
	}
	if (o->svg)
		ret = save_map_svg(&m, o->svg);
	else if (o->json)
		ret = print_json(j);
	else
		ret = print_map_text(&m);
out:
	free(m.blocks);
	json_decref(j);
	return ret;
}

/* ---- donors, partner ----------------------------------------------------------------- */

static void print_donors(const json_t *j)
{
	const json_t *d;
	char a[32], b[32];
	size_t i;

	printf("socket  %s\n", jstr(j, "socket", "?"));
	printf("%8s %10s %10s  %s\n", "PID", "SIZE", "USED", "STATE");
	json_array_foreach(json_object_get(j, "donors"), i, d)
		printf("%8" PRId64 " %10s %10s  %s\n", jint(d, "pid"),
		       fmt_size(jint(d, "size"), a, sizeof(a)),
		       fmt_size(jint(d, "used"), b, sizeof(b)), jstr(d, "state", "?"));
	if (!json_array_size(json_object_get(j, "donors")))
		printf("(no donors)\n");
}

/* resync   [##########----------]  50%  1.0M / 2.0M */
static void print_resync(int64_t done, int64_t total)
{
	char a[32], b[32];
	int fill = total > 0 ? (int)(20 * (done > total ? total : done) / total) : 20;

	printf("resync   [%.*s%.*s] %3.0f%%  %s / %s\n", fill, "####################", 20 - fill,
	       "--------------------", total > 0 ? pct(done, total) : 100.0,
	       fmt_size(done, a, sizeof(a)), fmt_size(total, b, sizeof(b)));
}

static void print_partner(const json_t *j)
{
	const json_t *v;
	const char *k;

	printf("state    %s\n", jstr(j, "state", "?"));
	if (json_object_get(j, "reason"))
		printf("reason   %s\n", jstr(j, "reason", "?"));
	if (!strcmp(jstr(j, "state", "?"), "none"))
		return;
	printf("node     %s\npeer     %s\nepoch    %" PRId64 "\nlag      %" PRId64 " bytes\n",
	       jstr(j, "node", "?"), jstr(j, "peer", "?"), jint(j, "epoch"),
	       jint(j, "lag_bytes"));
	print_resync(jint(j, "resync_done"), jint(j, "resync_total"));
	printf("score    %" PRId64 "%s\n", jint(j, "score"),
	       json_is_true(json_object_get(j, "managed")) ? " (managed)" : "");
	if (json_object_get(j, "on_peer_lost"))
		printf("fence    %s\n", jstr(j, "on_peer_lost", "?"));
	if (json_object_get(j, "cipher"))
		printf("cipher   %s\nrekeyed  %s (%" PRId64 " rekeys since start)\n",
		       jstr(j, "cipher", "?"), jstr(j, "key_rotated", "never"), jint(j, "rekeys"));
	json_object_foreach((json_t *)json_object_get(j, "heaps"), k, v)
		printf("heap     %-16s %s\n", k, json_string_value(v) ? json_string_value(v) : "?");
}

/* ---- clients (libheapfs) -------------------------------------------------------------- */

static void print_clients(const json_t *j)
{
	const json_t *c, *h;
	char a[32];
	size_t i, k;

	printf("socket  %s\n", jstr(j, "client_socket", "(none)"));
	printf("%8s %6s %6s %10s  %s\n", "PID", "UID", "MAPS", "MAPPED", "HEAPS");
	json_array_foreach(json_object_get(j, "clients"), i, c) {
		printf("%8" PRId64 " %6" PRId64 " %6" PRId64 " %10s ", jint(c, "pid"),
		       jint(c, "uid"), jint(c, "maps"),
		       fmt_size(jint(c, "mapped_bytes"), a, sizeof(a)));
		json_array_foreach(json_object_get(c, "heaps"), k, h)
			printf(" %s", json_string_value(h) ? json_string_value(h) : "?");
		printf("\n");
	}
	if (!json_array_size(json_object_get(j, "clients")))
		printf("(no clients)\n");
}

static int cmd_clients(char **args, const struct ctl_opts *o)
{
	json_t *stats, *j;
	int ret = load_status(args[0], "stats", NULL, &stats);

	if (ret)
		return ret;
	j = json_pack("{s:O?, s:O?}", "client_socket", json_object_get(stats, "client_socket"),
		      "clients", json_object_get(stats, "clients"));
	json_decref(stats);
	if (!j) {
		err_msg("%s: out of memory", args[0]);
		return -ENOMEM;
	}
	return show(j, o, print_clients);
}

static int cmd_donors(char **args, const struct ctl_opts *o)
{
	json_t *j;
	int ret = load_status(args[0], "donors", NULL, &j);

	return ret ? ret : show(j, o, print_donors);
}

/* Copy an image stream from fd into the save's temporary file: bytes copied, or -errno. */
static int64_t copy_stream(int fd, int out, struct img_progress *p)
{
	enum { BUF = 1 << 20 };
	char *buf = malloc(BUF);
	int64_t total = 0;
	ssize_t n;

	if (!buf)
		return -ENOMEM;
	while ((n = read(fd, buf, BUF)) > 0) {
		struct iovec iov = { buf, (size_t)n };
		int ret = img_writev_all(out, &iov, 1);

		if (ret) {
			total = ret;
			goto out;
		}
		total += n;
		img_progress_update(p, total);
	}
	if (n < 0)
		total = -errno;
out:
	free(buf);
	return total;
}

/* The daemon writes the image into out itself: out's descriptor goes to it over the
 * client socket (libheapfs heapfs_save, SCM_RIGHTS) with one of src naming the heap, and
 * its snapshot child writes the stream straight into the file (no copy through FUSE).
 * Bytes written, -errno, or 1 when the daemon's client socket cannot be reached. */
static int64_t save_direct(const char *mount, const char *src, int out)
{
	struct heapfs *h;
	uint64_t n = 0;
	int pfd, ret;

	if (heapfs_connect(mount, &h))
		return 1;
	pfd = open(src, O_PATH | O_CLOEXEC);
	ret = pfd < 0 ? -errno : heapfs_save(h, pfd, out, &n);
	if (pfd >= 0)
		close(pfd);
	heapfs_disconnect(h);
	return ret ? ret : (int64_t)n;
}

/* save MOUNT HEAP FILE: a consistent image of a live heap, written atomically to FILE by
 * the daemon (save_direct), or read from .heapfs/images/HEAP (the daemon snapshots the
 * heap when it is opened) when its client socket cannot be reached. */
static int cmd_save(char **args, const struct ctl_opts *o)
{
	const char *mount = args[0], *heap = args[1], *file = args[2];
	struct img_save sv;
	struct img_progress bar;
	char *src = NULL;
	int64_t n, used;
	json_t *j;
	int fd, ret;

	ret = load_heap(mount, "heaps", heap, &j); /* a heapfs mount with that heap */
	if (ret)
		return ret;
	used = jint(j, "used"); /* about what the stream holds: the bar's total */
	json_decref(j);
	if (asprintf(&src, "%s/.heapfs/images/%s", mount, heap) < 0)
		return -ENOMEM;
	fd = -1;
	ret = img_save_open(file, &sv);
	if (ret) {
		err_msg("%s: %s", file, strerror(-ret));
		goto out;
	}
	img_progress_start(&bar, stderr, "saving", used);
	n = save_direct(mount, src, sv.fd);
	if (n == 1) { /* no client socket: through the file system */
		fd = open(src, O_RDONLY | O_CLOEXEC);
		n = fd < 0 ? -errno : copy_stream(fd, sv.fd, &bar);
	}
	img_progress_end(&bar, n, n >= 0);
	if (n < 0) {
		img_save_abort(&sv);
		ret = (int)n;
		err_msg("%s: not saved (%s); %s is as it was", file, strerror(-ret), file);
		goto out_fd;
	}
	ret = img_save_commit(&sv);
	if (ret) {
		err_msg("%s: not saved (%s); %s is as it was", file, strerror(-ret), file);
		goto out_fd;
	}
	if (o->json) {
		j = json_pack("{s:s, s:s, s:I}", "heap", heap, "file", file, "bytes", (json_int_t)n);
		ret = j ? print_json(j) : -ENOMEM;
		json_decref(j);
	} else {
		printf("saved heap %s to %s (%" PRId64 " bytes)\n", heap, file, n);
	}
out_fd:
	if (fd >= 0)
		close(fd);
out:
	free(src);
	return ret;
}

static int cmd_partner(char **args, const struct ctl_opts *o)
{
	json_t *j;
	int ret = load_status(args[0], "partner", NULL, &j);

	return ret ? ret : show(j, o, print_partner);
}

/* promote/demote MOUNT [HEAP]: a request set as an xattr on .heapfs/partner (the
 * daemon's control point; nothing else can set one there). */
static int role_request(char **args, const struct ctl_opts *o, const char *name,
			const char *done)
{
	const char *heap = args[1] ? args[1] : "";
	char *path;
	int ret;

	if (asprintf(&path, "%s/.heapfs/partner", args[0]) < 0)
		return -ENOMEM;
	ret = setxattr(path, name, heap, strlen(heap), 0) ? -errno : 0;
	if (ret == -EBUSY)
		err_msg("%s: the partner is connected; promote with --force to take over anyway",
			args[0]);
	else if (ret == -ENOENT)
		err_msg("%s: no replicated heap %s", args[0], heap);
	else if (ret == -ENOTCONN)
		err_msg("%s: no partner section in the config", args[0]);
	else if (ret == -EINPROGRESS)
		err_msg("%s: a whole image of %s is still arriving here; promote once it is in",
			args[0], heap[0] ? heap : "a heap");
	else if (ret)
		err_msg("%s: %s", path, strerror(-ret));
	else if (!o->json)
		printf("%s %s\n", done, heap[0] ? heap : "every replicated heap");
	free(path);
	return ret;
}

/* promote MOUNT [HEAP] [--force | --discard-peer] */
static int cmd_promote(char **args, const struct ctl_opts *o)
{
	return role_request(args, o, o->discard_peer ? "user.heapfs.promote.discard-peer"
				     : o->force      ? "user.heapfs.promote.force"
						     : "user.heapfs.promote", "promoted");
}

/* demote MOUNT [HEAP]: an owner becomes a read-only mirror and keeps its data */
static int cmd_demote(char **args, const struct ctl_opts *o)
{
	return role_request(args, o, "user.heapfs.demote", "demoted");
}

static void print_verify(const json_t *j)
{
	const json_t *h, *d;
	const char *name;
	size_t k;

	printf("verify   %s, %" PRId64 " difference(s)\n", jstr(j, "state", "?"),
	       jint(j, "differences"));
	json_object_foreach((json_t *)json_object_get(j, "heaps"), name, h) {
		printf("heap     %-16s %-6s %" PRId64 " entries, %zu different\n", name,
		       jstr(h, "role", "?"), jint(h, "files"),
		       json_array_size(json_object_get(h, "differences")));
		json_array_foreach(json_object_get(h, "differences"), k, d)
			printf("  %s: here %s, partner %s\n", jstr(d, "path", "?"),
			       jstr(d, "here", "(missing)"), jstr(d, "partner", "(missing)"));
	}
}

/* verify MOUNT [HEAP]: both copies compared by the daemons (opening .heapfs/verify);
 * exit 1 when they differ or the partner cannot be asked. */
static int cmd_verify(char **args, const struct ctl_opts *o)
{
	json_t *j, *heaps;
	bool bad;
	int ret = load_status(args[0], "verify", NULL, &j);

	if (ret)
		return ret;
	if (!strcmp(jstr(j, "state", "?"), "none")) {
		err_msg("%s: no partner section in the config", args[0]);
		json_decref(j);
		return -ENOTCONN;
	}
	heaps = json_object_get(j, "heaps");
	if (args[1]) { /* one heap only */
		json_t *one = json_object_get(heaps, args[1]);
		json_t *keep = json_object();

		if (!one) {
			err_msg("%s: no replicated heap %s", args[0], args[1]);
			json_decref(keep);
			json_decref(j);
			return -ENOENT;
		}
		json_object_set(keep, args[1], one);
		json_object_set_new(j, "heaps", keep);
		json_object_set_new(j, "differences", json_integer((json_int_t)json_array_size(
							      json_object_get(one, "differences"))));
	}
	bad = jint(j, "differences") != 0 || strcmp(jstr(j, "state", "?"), "compared");
	ret = show(j, o, print_verify);
	return ret ? ret : bad ? -EIO : 0;
}

/* ---- main ---------------------------------------------------------------------------- */

struct command {
	const char *name;
	int min_args, max_args; /* after the command name */
	/* 0, -errno (exit 1) or EXIT_USAGE; NULL: not available yet */
	int (*fn)(char **args, const struct ctl_opts *o);
};

static const struct command commands[] = {
	{ "status", 1, 1, cmd_status },   { "stats", 1, 2, cmd_stats },
	{ "map", 2, 2, cmd_map },         { "donors", 1, 1, cmd_donors },
	{ "partner", 1, 1, cmd_partner }, { "image", 2, 3, cmd_image },
	{ "save", 3, 3, cmd_save },       { "promote", 1, 2, cmd_promote },
	{ "verify", 1, 2, cmd_verify },   { "clients", 1, 1, cmd_clients },
	{ "demote", 1, 2, cmd_demote },
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },    { "svg", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },    { "version", no_argument, NULL, 'V' },
		{ "force", no_argument, NULL, 'f' },   { "discard-peer", no_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl_opts o = { 0 };
	const struct command *c = NULL;
	char *args[4] = { NULL };
	int opt, nargs, i, ret;

	while ((opt = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': o.json = true; break;
		case 's': o.svg = optarg; break;
		case 'f': o.force = true; break;
		case 'd': o.discard_peer = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("heapfsctl %s\n", HEAPFS_VERSION); return 0;
		default:
			fputs("Try 'heapfsctl --help'.\n", stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (i = 0; i < (int)(sizeof(commands) / sizeof(commands[0])); i++)
		if (!strcmp(argv[optind], commands[i].name))
			c = &commands[i];
	if (!c) {
		err_msg("unknown command '%s' (see heapfsctl --help)", argv[optind]);
		return EXIT_USAGE;
	}
	nargs = argc - optind - 1;
	if (nargs < c->min_args || nargs > c->max_args) {
		err_msg("%s: wrong number of arguments (see heapfsctl --help)", c->name);
		return EXIT_USAGE;
	}
	if (o.svg && strcmp(c->name, "map")) {
		err_msg("--svg goes with the map command only");
		return EXIT_USAGE;
	}
	if ((o.force || o.discard_peer) && strcmp(c->name, "promote")) {
		err_msg("--force and --discard-peer go with the promote command only");
		return EXIT_USAGE;
	}
	if (!c->fn) {
		err_msg("%s: not available yet", c->name);
		return EXIT_FAILED;
	}
	for (i = 0; i < nargs; i++)
		args[i] = argv[optind + 1 + i];
	ret = c->fn(args, &o);
	return ret == EXIT_USAGE ? EXIT_USAGE : ret ? EXIT_FAILED : 0;
}
