/*
 * test_conf.c — unit tests of conf/: every validation gives its message on the right line
 * and -EINVAL; good configs give the right policy structs (rounding, suffixes, defaults);
 * the embedded default loads; the size/duration parsers' edge cases; file errors.
 *
 * How: each case loads a text through conf_load_string with an open_memstream error
 * stream and compares the whole error output with the expected lines.  No locking: the
 * only threads are in test_parallel_loads, which checks that loads may run at once.
 */
#include "conf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures, checks;

#define CHECK(cond, ...)                                                               \
	do {                                                                           \
		checks++;                                                              \
		if (!(cond)) {                                                         \
			failures++;                                                    \
			fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                  \
			fputc('\n', stderr);                                           \
		}                                                                      \
	} while (0)

#define CHECK_INT(a, b) CHECK((long long)(a) == (long long)(b), "%lld != %lld", \
			      (long long)(a), (long long)(b))
#define CHECK_STR(a, b) check_str(__LINE__, #a, (a), (b))

static void check_str(int line, const char *expr, const char *a, const char *b)
{
	checks++;
	if (!a || !b || strcmp(a, b) != 0) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s: '%s' != '%s'\n", __FILE__, line, expr,
			a ? a : "(null)", b ? b : "(null)");
	}
}

#define K (UINT64_C(1) << 10)
#define M (UINT64_C(1) << 20)
#define G (UINT64_C(1) << 30)

/* Load text as "t.conf"; *errs gets everything printed (caller frees). */
static int load(const char *text, char **errs, struct conf **c)
{
	size_t len;
	FILE *f = open_memstream(errs, &len);
	int rc;

	if (!f)
		abort();
	rc = conf_load_string(text, "t.conf", f, c);
	fclose(f);
	return rc;
}

/* text must fail with -EINVAL printing exactly want (all lines, in order). */
static void expect_errors(int line, const char *text, const char *want)
{
	struct conf *c = (struct conf *)1;
	char *errs = NULL;
	int rc = load(text, &errs, &c);

	checks++;
	if (rc != -EINVAL || strcmp(errs, want) != 0 || c != NULL) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: rc %d (want %d), conf %p\n--- config:\n%s"
			"--- printed:\n%s--- wanted:\n%s---\n", __FILE__, line, rc, -EINVAL,
			(void *)c, text, errs, want);
	}
	free(errs);
}
#define EXPECT_ERRORS(text, want) expect_errors(__LINE__, text, want)

/* text must load with no output; returns the conf (caller frees). */
static struct conf *expect_ok(int line, const char *text)
{
	struct conf *c = NULL;
	char *errs = NULL;
	int rc = load(text, &errs, &c);

	checks++;
	if (rc != 0 || errs[0] || !c) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: rc %d, printed:\n%s--- config:\n%s---\n", __FILE__,
			line, rc, errs, text);
	}
	free(errs);
	return c;
}
#define EXPECT_OK(text) expect_ok(__LINE__, text)

static const struct conf_heap *find_heap(const struct conf *c, const char *name)
{
	unsigned i;

	for (i = 0; c && i < c->nheaps; i++)
		if (strcmp(c->heaps[i].name, name) == 0)
			return &c->heaps[i];
	return NULL;
}

/* h has every option at its default ("Options left out"), and the given size. */
static void check_heap_policy_defaults(const struct conf_heap *h, uint64_t size)
{
	CHECK(h, "no heap");
	if (!h)
		return;
	CHECK_INT(h->size, size);
	CHECK_INT(h->min_block, 4 * K);
	CHECK_INT(h->chunk, 2 * M);
	CHECK_INT(h->layout, CONF_LAYOUT_EXTENTS);
	CHECK_INT(h->cache, CONF_CACHE_AUTO);
	CHECK_INT(h->writers, CONF_WRITERS_MANY);
	CHECK_INT(h->replicate, CONF_REPLICATE_NONE);
	CHECK_INT(h->pin, false);
	CHECK_INT(h->direct_map, false);
	CHECK_INT(h->inodes, 0);
	CHECK(h->image == NULL, "image %s", h->image);
}

static void check_default_conf(const struct conf *c)
{
	const struct conf_heap *h;

	if (!c) {
		CHECK(c, "no conf");
		return;
	}
	CHECK_INT(c->default_heap_size, 64 * M);
	CHECK_INT(c->nheaps, 1);
	h = find_heap(c, "scratch");
	check_heap_policy_defaults(h, 256 * M);
	CHECK(h && h->line > 0, "line %d", h ? h->line : -1);
	CHECK_INT(c->objects.size, 16 * M);
	CHECK_INT(c->objects.min_block, 64);
	CHECK_INT(c->objects.writers, CONF_WRITERS_SINGLE);
	CHECK(c->objects.image == NULL, "objects image %s", c->objects.image);
	CHECK_INT(c->pool.size, 1 * G);
	CHECK_INT(c->pool.donor_size, 256 * M);
	CHECK_INT(c->pool.max_donors, 16);
	CHECK_INT(c->pool.max_process_memory, 256 * M);
	CHECK_STR(c->pool.socket, "/run/heapfs/pool.sock");
	CHECK_INT(c->partner.present, false);
}

static void test_default(void)
{
	struct conf *c = NULL;
	int rc;

	/* the text --print-default-config prints loads cleanly and is the default */
	c = EXPECT_OK(conf_default_text());
	check_default_conf(c);
	CHECK_STR(c ? c->source : NULL, "t.conf");
	conf_free(c);

	c = NULL;
	rc = conf_load_default(&c);
	CHECK_INT(rc, 0);
	check_default_conf(c);
	CHECK_STR(c ? c->source : NULL, "<default>");
	conf_free(c);

	/* an empty config: no heaps, every section at its defaults */
	c = EXPECT_OK("");
	if (c) {
		CHECK_INT(c->nheaps, 0);
		CHECK_INT(c->default_heap_size, 64 * M);
		CHECK_INT(c->objects.size, 16 * M);
		CHECK_INT(c->objects.min_block, 64);
		CHECK_INT(c->objects.writers, CONF_WRITERS_SINGLE);
		CHECK_INT(c->pool.size, 1 * G);
		CHECK_INT(c->pool.max_donors, 16);
		CHECK_STR(c->pool.socket, "/run/heapfs/pool.sock");
		CHECK_INT(c->partner.present, false);
		CHECK_INT(c->partner.timeout_ms, 2000);
	}
	conf_free(c);
}

static void test_good(void)
{
	const struct conf_heap *h;
	struct conf *c;

	c = EXPECT_OK("# a comment\n"
		      "/* a C comment\n"
		      "   over two lines */\n"
		      "// and another\n"
		      "default_heap_size = 3M   # rounded up for mkdir heaps\n"
		      "heap \"a\" {\n"                              /* line 6 */
		      "  size = 100M\n"
		      "  min_block = 64\n"
		      "  layout = contiguous\n"
		      "  cache = direct\n"
		      "  writers = single\n"
		      "  chunk = 4K\n"
		      "  pin = true  direct_map = true\n"
		      "  image = \"/tmp/a#b.img\"  # '#' in a string is no comment\n"
		      "}\n"
		      "heap \"b\" { size = 1000 min_block = 1K }\n"   /* line 16 */
		      "heap \"c\" {\n"                               /* line 17 */
		      "}\n"
		      "heap 'd e' { size = 5g  cache = keep }\n"     /* line 19 */
		      "heap \"f\" { size = 4096  min_block = 4k }\n"
		      "heap \"g\" { size = 1M  replicate = sync }\n"
		      "heap \"h\" { size = 1M  replicate = async }\n"
		      "objects { size = 3M  min_block = 1K  writers = many  image = /tmp/o.img direct_map = true }\n"
		      "pool { size = 4G donor_size = 64M max_donors = 0 max_process_memory = 1G\n"
		      "       socket = \"/tmp/p.sock\" }\n"
		      "partner { node = \"a\"  listen = \"127.0.0.1:7410\"  connect = \"[::1]:7411\"\n"
		      "          secret_file = \"/etc/heapfs/secret\"  timeout = 500ms\n"
		      "          auto_failover = true }\n");
	if (!c)
		return;
	CHECK_INT(c->default_heap_size, 3 * M);
	CHECK_INT(c->nheaps, 7);
	CHECK_STR(c->heaps[0].name, "a"); /* declaration order */
	CHECK_STR(c->heaps[3].name, "d e");
	CHECK_STR(c->heaps[6].name, "h");
	h = find_heap(c, "a");
	if (h) {
		CHECK_INT(h->size, 128 * M);
		CHECK_INT(h->min_block, 64);
		CHECK_INT(h->layout, CONF_LAYOUT_CONTIGUOUS);
		CHECK_INT(h->cache, CONF_CACHE_DIRECT);
		CHECK_INT(h->writers, CONF_WRITERS_SINGLE);
		CHECK_INT(h->chunk, 4 * K);
		CHECK_INT(h->pin, true);
		CHECK_INT(h->direct_map, true);
		CHECK_STR(h->image, "/tmp/a#b.img");
		CHECK_INT(h->line, 6);
	}
	h = find_heap(c, "b");
	if (h) {
		CHECK_INT(h->size, 1024);
		CHECK_INT(h->min_block, 1 * K); /* more than the 1000 asked, not than the heap */
		CHECK_INT(h->line, 16);
	}
	h = find_heap(c, "c"); /* everything left out; default_heap_size 3M rounded up */
	check_heap_policy_defaults(h, 4 * M);
	CHECK_INT(h ? h->line : -1, 17);
	h = find_heap(c, "d e");
	if (h) {
		CHECK_INT(h->size, 8 * G);
		CHECK_INT(h->cache, CONF_CACHE_KEEP);
		CHECK_INT(h->line, 19);
	}
	h = find_heap(c, "f");
	if (h) {
		CHECK_INT(h->size, 4096);
		CHECK_INT(h->min_block, 4096);
	}
	CHECK_INT(find_heap(c, "g") ? (int)find_heap(c, "g")->replicate : -1, CONF_REPLICATE_SYNC);
	CHECK_INT(find_heap(c, "h") ? (int)find_heap(c, "h")->replicate : -1, CONF_REPLICATE_ASYNC);
	CHECK_INT(c->objects.size, 4 * M);
	CHECK_INT(c->objects.min_block, 1 * K);
	CHECK_INT(c->objects.writers, CONF_WRITERS_MANY);
	CHECK_STR(c->objects.image, "/tmp/o.img");
	CHECK_INT(c->pool.size, 4 * G);
	CHECK_INT(c->pool.donor_size, 64 * M);
	CHECK_INT(c->pool.max_donors, 0);
	CHECK_INT(c->pool.max_process_memory, 1 * G);
	CHECK_STR(c->pool.socket, "/tmp/p.sock");
	CHECK_INT(c->partner.present, true);
	CHECK_STR(c->partner.node, "a");
	CHECK_STR(c->partner.listen, "127.0.0.1:7410");
	CHECK_STR(c->partner.connect, "[::1]:7411");
	CHECK_STR(c->partner.secret_file, "/etc/heapfs/secret");
	CHECK_INT(c->partner.timeout_ms, 500);
	CHECK_INT(c->partner.auto_failover, true);
	CHECK_INT(c->objects.direct_map, true);
	conf_free(c);

	/* the example of SPEC "Config", as written there */
	c = EXPECT_OK("default_heap_size = 64M\n"
		      "heap \"scratch\" {\n"
		      "  size      = 256M     # rounded up to a power of two: a heap is 2^M bytes "
		      "(HeapCreate(n))\n"
		      "  min_block = 4K       # smallest buddy block: 64 (cache line) .. 1M (stripe);"
		      " power of two\n"
		      "  layout    = extents  # extents: a file is a list of buddy blocks | "
		      "contiguous: one block 2^N >= size\n"
		      "  cache     = auto     # auto | keep (page cache kept across opens) | direct "
		      "(no page cache; no mmap)\n"
		      "  writers   = many     # many | single (a second open for writing gets "
		      "EBUSY)\n"
		      "  chunk     = 2M       # memory is taken from and given back to the OS in "
		      "chunks of this size\n"
		      "  pin       = false    # mlock() committed chunks\n"
		      "  replicate = none     # none | async | sync   (needs a partner section)\n"
		      "  image     = \"\"       # if set: load at mount when the file exists, save "
		      "at clean unmount\n"
		      "  direct_map = false   # true: libheapfs clients may map this heap's memory "
		      "(the heap is one trust domain)\n"
		      "}\n"
		      "objects { size = 16M  min_block = 64  writers = single  image = \"\"  "
		      "direct_map = false }\n"
		      "pool    { size = 4G  donor_size = 256M  max_donors = 16  "
		      "max_process_memory = 1G\n"
		      "          socket = \"/run/heapfs/pool.sock\" }\n"
		      "partner { node = \"a\"  listen = \"127.0.0.1:7410\"  connect = "
		      "\"127.0.0.1:7411\"\n"
		      "          secret_file = \"/etc/heapfs/secret\"  timeout = 2s  "
		      "auto_failover = false }\n");
	if (c) {
		check_heap_policy_defaults(find_heap(c, "scratch"), 256 * M);
		CHECK_INT(c->nheaps, 1);
		CHECK_INT(c->objects.size, 16 * M);
		CHECK_INT(c->pool.size, 4 * G);
		CHECK_INT(c->pool.max_process_memory, 1 * G);
		CHECK_INT(c->partner.present, true);
		CHECK_STR(c->partner.node, "a");
		CHECK_STR(c->partner.connect, "127.0.0.1:7411");
		CHECK_STR(c->partner.secret_file, "/etc/heapfs/secret");
		CHECK_INT(c->partner.timeout_ms, 2000);
		CHECK_INT(c->partner.auto_failover, false);
	}
	conf_free(c);

	/* a partner section with only what must be set: timeout defaults to 2s */
	c = EXPECT_OK("partner { node = b  listen = :7411  connect = host:7410  secret_file = s }\n");
	if (c) {
		CHECK_INT(c->partner.present, true);
		CHECK_INT(c->partner.timeout_ms, 2000);
		CHECK_INT(c->partner.auto_failover, false);
		CHECK_INT(c->partner.managed, false);
		CHECK_INT(c->partner.on_peer_lost == NULL, true);
		CHECK_INT(c->partner.on_peer_lost_timeout_ms, 60000);
	}
	conf_free(c);

	/* under a cluster manager (issue 19) */
	c = EXPECT_OK("partner { node = b  listen = :7411  connect = host:7410  secret_file = s\n"
		      "  managed = true  on_peer_lost = \"/bin/fence --clone=x\"\n"
		      "  on_peer_lost_timeout = 90s }\n");
	if (c) {
		CHECK_INT(c->partner.managed, true);
		CHECK_STR(c->partner.on_peer_lost, "/bin/fence --clone=x");
		CHECK_INT(c->partner.on_peer_lost_timeout_ms, 90000);
	}
	conf_free(c);

	/* the longest heap name is fine; a later value overrides an earlier one */
	{
		char text[512], name[CONF_NAME_MAX + 1];

		memset(name, 'n', CONF_NAME_MAX);
		name[CONF_NAME_MAX] = '\0';
		snprintf(text, sizeof(text), "heap \"%s\" { size = 1M  size = 2M }\n", name);
		c = EXPECT_OK(text);
		h = find_heap(c, name);
		CHECK(h, "no heap with a 255-byte name");
		CHECK_INT(h ? h->size : 0, 2 * M);
		conf_free(c);
	}
}

/* inodes: a whole number; 0 derives the limit from the heap size, within bounds. */
/* Values the daemon's parts cannot take, refused here with their line rather than at
 * mount: an object segment too small for its header and map, a pool larger than any
 * heap, a node name or timeout the replication link refuses. */
static void test_hostile_values(void)
{
	char text[512];
	struct conf *c;

	EXPECT_ERRORS("objects {\n  size = 4K\n}\n",
		      "heapfs: t.conf:2: objects: size = 4K is too small for the segment: its "
		      "header and name map take 8K (two blocks of max(4K, min_block))\n");
	EXPECT_ERRORS("objects {\n  min_block = 64K\n  size = 65536\n}\n",
		      "heapfs: t.conf:3: objects: size = 64K is too small for the segment: its "
		      "header and name map take 128K (two blocks of max(4K, min_block))\n");
	c = EXPECT_OK("objects { size = 5K }\n"); /* rounded up to 8K: header and map */
	if (c)
		CHECK_INT(c->objects.size, 8 * K);
	conf_free(c);
	conf_free(EXPECT_OK("objects { size = 128K min_block = 64K }\n"));
	EXPECT_ERRORS("pool {\n  size = 1025G\n  donor_size = 9223372036854775807\n}\n",
		      "heapfs: t.conf:2: pool: size = 1025G is larger than the largest heap "
		      "(1024G)\n"
		      "heapfs: t.conf:3: pool: donor_size = 9223372036854775807 is larger than "
		      "the largest heap (1024G)\n");
	conf_free(EXPECT_OK("pool { size = 1024G  donor_size = 1024G  max_donors = 4294967295 }\n"));
	/* a chunk past the largest heap: buddy_create refused it at mount */
	EXPECT_ERRORS("heap \"a\" {\n  chunk = 2048G\n}\n",
		      "heapfs: t.conf:2: heap \"a\": chunk = 2048G is larger than the largest heap "
		      "(1024G)\n");
	conf_free(EXPECT_OK("heap \"a\" { size = 1M  chunk = 1024G }\n"));
	EXPECT_ERRORS("partner {\n  node = \"a b\"  listen = :1  connect = :2  secret_file = s\n"
		      "  timeout = 19ms\n}\n",
		      "heapfs: t.conf:2: partner: node = \"a b\" must be 1 .. 64 printable "
		      "characters, no spaces\n"
		      "heapfs: t.conf:3: partner: timeout = 19ms is shorter than 20ms\n");
	snprintf(text, sizeof(text), "partner {\n  listen = :1  connect = :2  secret_file = s\n"
		 "  node = %065d\n}\n", 0);
	EXPECT_ERRORS(text, "heapfs: t.conf:3: partner: node = \"" /* 64 shown, then ... */
		      "0000000000000000000000000000000000000000000000000000000000000000...\" must "
		      "be 1 .. 64 printable characters, no spaces\n");
	snprintf(text, sizeof(text), "partner {\n  listen = :1  connect = :2  secret_file = s\n"
		 "  node = %064d  timeout = 20ms\n}\n", 0);
	conf_free(EXPECT_OK(text)); /* the longest name, the shortest timeout */
}

static void test_inodes(void)
{
	static const struct {
		const char *size;
		uint64_t want;
	} derived[] = {
		{ "4K", 1024 }, { "1M", 1024 }, { "8M", 1024 }, { "16M", 2048 },
		{ "256M", 32768 }, { "1G", 131072 }, { "8G", 1048576 }, { "1024G", 1048576 },
	};
	const struct conf_heap *h;
	struct conf_heap d;
	struct conf *c;
	char text[128];

	c = EXPECT_OK("heap \"a\" { size = 1M  inodes = 5000 }\n"
		      "heap \"b\" { inodes = 0 }\n"
		      "heap \"c\" { size = 4K  inodes = 268435455 }\n"
		      "heap \"d\" { inodes = 1 }\n");
	h = find_heap(c, "a");
	CHECK_INT(h ? h->inodes : 0, 5000);
	CHECK_INT(h ? conf_heap_inodes(h) : 0, 5000); /* above the derived 1024: as asked */
	h = find_heap(c, "b");
	CHECK_INT(h ? h->inodes : 1, 0);
	CHECK_INT(h ? conf_heap_inodes(h) : 0, 8192); /* default_heap_size 64M / 8K */
	h = find_heap(c, "c");
	CHECK_INT(h ? conf_heap_inodes(h) : 0, CONF_INODES_MAX);
	h = find_heap(c, "d");
	CHECK_INT(h ? conf_heap_inodes(h) : 0, 1);
	conf_free(c);

	for (unsigned k = 0; k < sizeof(derived) / sizeof(derived[0]); k++) {
		snprintf(text, sizeof(text), "heap \"h\" { size = %s  min_block = 4K }\n",
			 derived[k].size);
		c = EXPECT_OK(text);
		h = find_heap(c, "h");
		CHECK(h && conf_heap_inodes(h) == derived[k].want, "size %s: %llu inodes, want %llu",
		      derived[k].size, h ? (unsigned long long)conf_heap_inodes(h) : 0ull,
		      (unsigned long long)derived[k].want);
		conf_free(c);
	}
	CHECK_INT(conf_heap_defaults(NULL, "n", &d), 0);
	CHECK_INT(d.inodes, 0);
	CHECK_INT(conf_heap_inodes(&d), 8192);

	EXPECT_ERRORS("heap \"a\" {\n  inodes = -1\n}\n",
		      "heapfs: t.conf:2: heap \"a\": inodes = -1 is not a whole number "
		      "(0 .. 268435455)\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n  inodes = 268435456\n}\n",
		      "heapfs: t.conf:3: heap \"a\": inodes = 268435456 is not a whole number "
		      "(0 .. 268435455)\n");
	EXPECT_ERRORS("heap \"a\" { inodes = 10K }\n",
		      "heapfs: t.conf:1: heap \"a\": inodes = 10K is not a whole number "
		      "(0 .. 268435455)\n");
	EXPECT_ERRORS("heap \"a\" { inodes = many }\nheap \"b\" {\n inodes = 1.5\n}\n",
		      "heapfs: t.conf:1: heap \"a\": inodes = many is not a whole number "
		      "(0 .. 268435455)\n"
		      "heapfs: t.conf:3: heap \"b\": inodes = 1.5 is not a whole number "
		      "(0 .. 268435455)\n");
	EXPECT_ERRORS("heap \"a\" { inodes = 99999999999999999999999 }\n",
		      "heapfs: t.conf:1: heap \"a\": inodes = 99999999999999999999999 is not a "
		      "whole number (0 .. 268435455)\n");
	EXPECT_ERRORS("objects {\n  inodes = 10\n}\n",
		      "heapfs: t.conf:2: unknown option 'inodes' in objects\n");
}

/* Heap names appear in JSON (jansson takes only UTF-8): anything else is refused. */
static void test_utf8_names(void)
{
	static const char *const bad[] = {
		"\xff\xfe", "a\x80", "\xc0\xaf" /* overlong '/' */, "\xe0\x80\xaf",
		"\xed\xa0\x80" /* surrogate */, "\xe2\x82" /* cut short */,
		"\xf4\x90\x80\x80" /* past U+10FFFF */, "\xf8\x88\x80\x80\x80",
	};
	static const char *const good[] = { "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
					     "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "\x7f" };
	struct conf_heap h;
	char text[128], want[160];
	struct conf *c;

	for (unsigned k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		CHECK(conf_check_heap_name(bad[k]) == -EINVAL, "bad name #%u accepted", k);
		CHECK(conf_heap_defaults(NULL, bad[k], &h) == -EINVAL, "mkdir of bad #%u", k);
		snprintf(text, sizeof(text), "\nheap \"%s\" { size = 1M }\n", bad[k]);
		snprintf(want, sizeof(want), "heapfs: t.conf:2: heap \"%s\": a heap name must be "
			 "valid UTF-8\n", bad[k]);
		EXPECT_ERRORS(text, want);
	}
	for (unsigned k = 0; k < sizeof(good) / sizeof(good[0]); k++) {
		CHECK(conf_check_heap_name(good[k]) == 0, "good name #%u refused", k);
		snprintf(text, sizeof(text), "heap \"%s\" { size = 1M }\n", good[k]);
		c = EXPECT_OK(text);
		CHECK(find_heap(c, good[k]), "good name #%u: no heap", k);
		conf_free(c);
	}
}

static void test_errors(void)
{
	char text[1024], want[1024], name[CONF_NAME_MAX + 2];

	/* unknown option, at the top and in each section */
	EXPECT_ERRORS("default_heap_size = 1G\n\nfoo = 1\n",
		      "heapfs: t.conf:3: unknown option 'foo'\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n  sise = 2M\n}\n",
		      "heapfs: t.conf:3: unknown option 'sise' in heap \"a\"\n");
	EXPECT_ERRORS("objects {\n chunk = 2M\n}\n",
		      "heapfs: t.conf:2: unknown option 'chunk' in objects\n");
	EXPECT_ERRORS("pool { size = 1G }\npartner {\n  node = a\n  peer = b\n}\n",
		      "heapfs: t.conf:4: unknown option 'peer' in partner\n");

	/* wrong type */
	EXPECT_ERRORS("heap \"a\" {\n  pin = 12\n}\n",
		      "heapfs: t.conf:2: heap \"a\": pin = 12 is not a boolean (true or false)\n");
	EXPECT_ERRORS("pool {\n  max_donors = many\n}\n",
		      "heapfs: t.conf:2: pool: max_donors = many is not a whole number "
		      "(0 .. 4294967295)\n");
	EXPECT_ERRORS("\nobjects = 16M\n",
		      "heapfs: t.conf:2: missing opening brace for section 'objects'\n");
	EXPECT_ERRORS("heap = 1M\n", "heapfs: t.conf:1: missing title for section 'heap'\n");
	EXPECT_ERRORS("heap \"a\" {\n  size {\n}\n}\n",
		      "heapfs: t.conf:2: heap \"a\": missing equal sign after option 'size'\n");
	EXPECT_ERRORS("partner {\n node = a listen = :1 connect = :2 secret_file = s\n"
		      " managed = true\n auto_failover = true\n}\n",
		      "heapfs: t.conf:4: partner: auto_failover = true and managed = true: a "
		      "cluster manager decides failover; drop one\n");
	EXPECT_ERRORS("partner {\n node = a listen = :1 connect = :2 secret_file = s\n"
		      " on_peer_lost_timeout = 500ms\n}\n",
		      "heapfs: t.conf:3: partner: on_peer_lost_timeout = 500ms is shorter than "
		      "1000ms\n");
	EXPECT_ERRORS("partner {\n node = a listen = :1 connect = :2 secret_file = s\n"
		      " auto_failover = sometimes\n}\n",
		      "heapfs: t.conf:3: partner: auto_failover = sometimes is not a boolean "
		      "(true or false)\n");

	/* size not a size */
	EXPECT_ERRORS("heap \"a\" {\n  size = lots\n}\n",
		      "heapfs: t.conf:2: heap \"a\": size = lots is not a size (a byte count, "
		      "or a number with K, M or G)\n");
	EXPECT_ERRORS("default_heap_size = 12Q\n",
		      "heapfs: t.conf:1: default_heap_size = 12Q is not a size (a byte count, "
		      "or a number with K, M or G)\n");
	EXPECT_ERRORS("pool {\n\n  donor_size = -1M\n}\n",
		      "heapfs: t.conf:3: pool: donor_size = -1M is not a size (a byte count, "
		      "or a number with K, M or G)\n");
	EXPECT_ERRORS("heap \"a\" { size = 99999999999G }\n",
		      "heapfs: t.conf:1: heap \"a\": size = 99999999999G is too large\n");

	/* min_block: a power of two in 64 .. 1M */
	EXPECT_ERRORS("heap \"a\" {\n  min_block = 3K\n}\n",
		      "heapfs: t.conf:2: heap \"a\": min_block = 3K is not a power of two\n");
	EXPECT_ERRORS("heap \"a\" {\n  min_block = 32\n}\n",
		      "heapfs: t.conf:2: heap \"a\": min_block = 32 is outside 64 .. 1M\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 1G\n  min_block = 2M\n}\n",
		      "heapfs: t.conf:3: heap \"a\": min_block = 2M is outside 64 .. 1M\n");
	EXPECT_ERRORS("objects {\n  min_block = 0\n}\n",
		      "heapfs: t.conf:2: objects: min_block = 0 is not a power of two\n");

	/* min_block larger than the heap: blamed on min_block if set, else on size */
	EXPECT_ERRORS("heap \"a\" {\n  size = 16K\n  min_block = 64K\n}\n",
		      "heapfs: t.conf:3: heap \"a\": min_block = 64K is larger than the heap "
		      "(16K)\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 1000\n}\n",
		      "heapfs: t.conf:2: heap \"a\": min_block = 4K is larger than the heap "
		      "(1K)\n");
	EXPECT_ERRORS("objects {\n  size = 1K\n  min_block = 4K\n}\n",
		      "heapfs: t.conf:3: objects: min_block = 4K is larger than the heap (1K)\n");

	/* duplicate heap name: on the second declaration */
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n}\nheap \"b\" { }\n\nheap \"a\" {\n}\n",
		      "heapfs: t.conf:6: heap \"a\" is declared twice (first on line 1)\n");

	/* replication needs a partner */
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n  replicate = async\n}\n",
		      "heapfs: t.conf:3: heap \"a\": replicate = async needs a partner section\n");
	EXPECT_ERRORS("heap \"a\" { replicate = sync }\n",
		      "heapfs: t.conf:1: heap \"a\": replicate = sync needs a partner section\n");
	/* a direct_map heap is replicable (issue 21: its resync freezes no memory, its
	 * clients' released ranges are records) */
	{
		struct conf *dc = EXPECT_OK("partner { node = \"a\" listen = \"127.0.0.1:1\" "
					    "connect = \"127.0.0.1:2\"\n  secret_file = \"/s\" }\n"
					    "heap \"a\" {\n  replicate = sync\n  direct_map = true\n}\n");

		CHECK(dc && dc->heaps[0].direct_map &&
		      dc->heaps[0].replicate == CONF_REPLICATE_SYNC, "direct_map + sync");
		conf_free(dc);
	}

	/* enum values */
	EXPECT_ERRORS("heap \"a\" {\n  layout = packed\n}\n",
		      "heapfs: t.conf:2: heap \"a\": layout = packed is not one of: extents, "
		      "contiguous\n");
	EXPECT_ERRORS("heap \"a\" { cache = none }\n",
		      "heapfs: t.conf:1: heap \"a\": cache = none is not one of: auto, keep, "
		      "direct\n");
	EXPECT_ERRORS("objects { writers = few }\n",
		      "heapfs: t.conf:1: objects: writers = few is not one of: many, single\n");
	EXPECT_ERRORS("heap \"a\" { replicate = Sync }\n",
		      "heapfs: t.conf:1: heap \"a\": replicate = Sync is not one of: none, async, "
		      "sync\n");

	/* heap names, blamed on the heap's line even when its section is empty */
	EXPECT_ERRORS("\nheap \"\" {\n}\n",
		      "heapfs: t.conf:2: heap \"\": a heap name must not be empty, \".\", \"..\" "
		      "or contain '/'\n");
	EXPECT_ERRORS("heap \"a/b\" { size = 1M }\n",
		      "heapfs: t.conf:1: heap \"a/b\": a heap name must not be empty, \".\", "
		      "\"..\" or contain '/'\n");
	EXPECT_ERRORS("heap \".\" {\n\n}\n",
		      "heapfs: t.conf:1: heap \".\": a heap name must not be empty, \".\", \"..\" "
		      "or contain '/'\n");
	EXPECT_ERRORS("# c\n# c\nheap \"..\" {}\n",
		      "heapfs: t.conf:3: heap \"..\": a heap name must not be empty, \".\", "
		      "\"..\" or contain '/'\n");
	memset(name, 'x', CONF_NAME_MAX + 1);
	name[CONF_NAME_MAX + 1] = '\0';
	snprintf(text, sizeof(text), "heap \"%s\" {\n}\n", name);
	EXPECT_ERRORS(text, "heapfs: t.conf:1: heap \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\": "
		      "a heap name is at most 255 bytes\n");

	/* chunk: a power of two, at least 4K */
	EXPECT_ERRORS("heap \"a\" {\n  chunk = 3M\n}\n",
		      "heapfs: t.conf:2: heap \"a\": chunk = 3M is not a power of two\n");
	EXPECT_ERRORS("heap \"a\" {\n  chunk = 2K\n}\n",
		      "heapfs: t.conf:2: heap \"a\": chunk = 2K is smaller than 4K\n");

	/* heap size 0, and sizes out of the allocator's range */
	EXPECT_ERRORS("heap \"a\" {\n  size = 0\n}\n",
		      "heapfs: t.conf:2: heap \"a\": size must not be 0\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 2049G\n}\n",
		      "heapfs: t.conf:2: heap \"a\": size = 2049G is larger than the largest "
		      "heap (1024G)\n");
	EXPECT_ERRORS("objects {\n  size = 0\n}\n",
		      "heapfs: t.conf:2: objects: size must not be 0\n");
	EXPECT_ERRORS("default_heap_size = 0\nheap \"a\" { }\n",
		      "heapfs: t.conf:1: default_heap_size must not be 0\n");
	EXPECT_ERRORS("default_heap_size = 1K\n",
		      "heapfs: t.conf:1: default_heap_size = 1K is smaller than the min_block of "
		      "a heap made with mkdir (4K)\n");
	/* a heap that takes a too-small default_heap_size is blamed on that line */
	EXPECT_ERRORS("default_heap_size = 8K\nheap \"a\" {\n  min_block = 16K\n}\n",
		      "heapfs: t.conf:3: heap \"a\": min_block = 16K is larger than the heap "
		      "(8K)\n");
	/* a bad default_heap_size is reported once, not again by each heap that takes it */
	EXPECT_ERRORS("default_heap_size = 1K\nheap \"a\" { }\n",
		      "heapfs: t.conf:1: default_heap_size = 1K is smaller than the min_block of "
		      "a heap made with mkdir (4K)\n");
	EXPECT_ERRORS("default_heap_size = 2049G\nheap \"a\" { }\n",
		      "heapfs: t.conf:1: default_heap_size = 2049G is larger than the largest "
		      "heap (1024G)\n");
	EXPECT_ERRORS("default_heap_size = 12Q\nheap \"a\" { }\n",
		      "heapfs: t.conf:1: default_heap_size = 12Q is not a size (a byte count, "
		      "or a number with K, M or G)\n");
	/* ... but a heap with its own size is still checked */
	EXPECT_ERRORS("default_heap_size = 0\nheap \"a\" {\n  size = 0\n}\n",
		      "heapfs: t.conf:1: default_heap_size must not be 0\n"
		      "heapfs: t.conf:3: heap \"a\": size must not be 0\n");

	/* the other sections */
	EXPECT_ERRORS("pool {\n  donor_size = 0\n  socket = \"\"\n}\n",
		      "heapfs: t.conf:2: pool: donor_size must not be 0\n"
		      "heapfs: t.conf:3: pool: socket must not be empty\n");
	memset(name, 's', 108);
	name[108] = '\0';
	snprintf(text, sizeof(text), "pool {\n  socket = /%s\n}\n", name);
	EXPECT_ERRORS(text, "heapfs: t.conf:2: pool: socket path is longer than 107 bytes\n");
	EXPECT_ERRORS("pool { }\n\npool { size = 1G }\n",
		      "heapfs: t.conf:3: section pool is given twice\n");
	EXPECT_ERRORS("\npartner {\n}\n",
		      "heapfs: t.conf:3: partner: node must be set\n"
		      "heapfs: t.conf:3: partner: secret_file must be set\n"
		      "heapfs: t.conf:3: partner: listen must be set (HOST:PORT)\n"
		      "heapfs: t.conf:3: partner: connect must be set (HOST:PORT)\n");
	EXPECT_ERRORS("partner {\n  node = a\n  listen = 127.0.0.1\n  connect = x:99999\n"
		      "  secret_file = s\n  timeout = 5\n}\n",
		      "heapfs: t.conf:3: partner: listen = 127.0.0.1 is not HOST:PORT\n"
		      "heapfs: t.conf:4: partner: connect = x:99999 is not HOST:PORT\n"
		      "heapfs: t.conf:6: partner: timeout = 5 is not a duration (a number with "
		      "ms or s, e.g. 500ms, 2s)\n");
	EXPECT_ERRORS("partner {\n  node = a  listen = :1  connect = :2  secret_file = s\n"
		      "  timeout = 0\n}\n",
		      "heapfs: t.conf:3: partner: timeout must not be 0\n");

	/* syntax errors from libconfuse, reworded into our form */
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n",
		      "heapfs: t.conf:1: this '{' is never closed\n");
	EXPECT_ERRORS("heap \"a\" {\n  size = 1M\n}\npool {\n  socket = \"/x}\" # }\n",
		      "heapfs: t.conf:4: this '{' is never closed\n");
	EXPECT_ERRORS("heap \"a\" {\n  size =\n", "heapfs: t.conf:1: this '{' is never closed\n"
		      "heapfs: t.conf:3: heap \"a\": premature end of file\n");
	EXPECT_ERRORS("heap \"a\" { }\n}\n", "heapfs: t.conf:2: unexpected closing brace\n");
	/* nested unclosed braces, deeper than 8: the outermost '{' is the one reported */
	EXPECT_ERRORS("heap \"a\" { }\n\nheap \"b\" {\n{\n{{{{{{{{{\n",
		      "heapfs: t.conf:3: this '{' is never closed\n"
		      "heapfs: t.conf:4: heap \"b\": unexpected token '{'\n");

	/* every bad value in one run, in line order; libconfuse's '#' and C comment line
	 * miscounts do not shift the lines */
	EXPECT_ERRORS("# heapfs config\n"
		      "/* two\n"
		      "   lines */\n"
		      "heap \"a\" {   # first\n"
		      "  layout = wide   // no\n"
		      "  min_block = 5K\n"
		      "}\n"
		      "heap \"b\" {\n"
		      "  size = 1K\n"
		      "  replicate = async\n"
		      "}\n"
		      "pool { size = huge }\n",
		      "heapfs: t.conf:5: heap \"a\": layout = wide is not one of: extents, "
		      "contiguous\n"
		      "heapfs: t.conf:6: heap \"a\": min_block = 5K is not a power of two\n"
		      "heapfs: t.conf:9: heap \"b\": min_block = 4K is larger than the heap (1K)\n"
		      "heapfs: t.conf:10: heap \"b\": replicate = async needs a partner section\n"
		      "heapfs: t.conf:12: pool: size = huge is not a size (a byte count, or a "
		      "number with K, M or G)\n");

	/* a libconfuse error stops the parse: what came before is still reported */
	snprintf(want, sizeof(want), "%s%s",
		 "heapfs: t.conf:2: heap \"a\": chunk = 6K is not a power of two\n",
		 "heapfs: t.conf:4: unknown option 'bogus'\n");
	EXPECT_ERRORS("heap \"a\" {\n  chunk = 6K\n}\nbogus = 1\nheap \"b\" { chunk = 3 }\n", want);
}

static void write_file(const char *path, const char *text, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		abort();
	close(fd);
}

/* conf_load_file(path) returns want_rc and prints exactly want ("%s" = path).  Returns
 * whether it did; *out gets the conf when the load succeeded (else NULL). */
static bool load_file_is(int line, const char *path, int want_rc, const char *want,
			 struct conf **out)
{
	char expect[512], *errs = NULL;
	struct conf *c = (struct conf *)1;
	size_t len;
	FILE *f = open_memstream(&errs, &len);
	int rc = conf_load_file(path, f, &c);
	bool ok;

	fclose(f);
	snprintf(expect, sizeof(expect), want, path);
	ok = rc == want_rc && strcmp(errs, expect) == 0 && (rc ? c == NULL : c != NULL);
	if (!ok)
		fprintf(stderr, "%s:%d: %s: rc %d (want %d), printed:\n%s--- wanted:\n%s---\n",
			__FILE__, line, path, rc, want_rc, errs, expect);
	free(errs);
	if (out)
		*out = rc ? NULL : c;
	else if (!rc)
		conf_free(c);
	return ok;
}
#define EXPECT_FILE(path, rc, want, out) \
	CHECK(load_file_is(__LINE__, path, rc, want, out), "conf_load_file")

static void test_files(void)
{
	char dir[] = "/tmp/heapfs-conf-test.XXXXXX", path[128], bad[128];
	struct conf *c = NULL;
	int status;
	pid_t pid;

	if (!mkdtemp(dir))
		abort();
	if (chmod(dir, 0755))
		abort();

	snprintf(path, sizeof(path), "%s/missing.conf", dir);
	EXPECT_FILE(path, -ENOENT, "heapfs: %s: No such file or directory\n", NULL);
	EXPECT_FILE(dir, -EISDIR, "heapfs: %s: Is a directory\n", NULL);

	snprintf(bad, sizeof(bad), "%s/bad.conf", dir);
	write_file(bad, "heap \"a\" {\n  size = 1K\n  min_block = 4K\n}\n", 42, 0600);
	EXPECT_FILE(bad, -EINVAL,
		    "heapfs: %s:3: heap \"a\": min_block = 4K is larger than the heap (1K)\n",
		    NULL);

	/* EACCES: read as an unprivileged user (we may be root, who reads anything) */
	pid = fork();
	if (pid == 0) {
		if (geteuid() == 0 && setresuid(65534, 65534, 65534))
			_exit(3);
		_exit(load_file_is(__LINE__, bad, -EACCES, "heapfs: %s: Permission denied\n",
				   NULL) ? 0 : 1);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "EACCES case: status %d", status);

	snprintf(path, sizeof(path), "%s/good.conf", dir);
	write_file(path, conf_default_text(), strlen(conf_default_text()), 0644);
	EXPECT_FILE(path, 0, "", &c);
	CHECK_STR(c ? c->source : NULL, path);
	check_default_conf(c);
	conf_free(c);
	unlink(path);

	snprintf(path, sizeof(path), "%s/binary.conf", dir);
	write_file(path, "heap \"a\" {\0}\n", 13, 0600);
	EXPECT_FILE(path, -EINVAL, "heapfs: %s: not a text file\n", NULL);
	unlink(path);

	unlink(bad);
	rmdir(dir);
}

static int parse_duration(const char *s, uint64_t *out)
{
	unsigned ms;
	int rc = conf_parse_duration_ms(s, &ms);

	if (!rc)
		*out = ms;
	return rc;
}

/* conf_parse_size and conf_parse_duration_ms on their edge cases */
static void test_parsers(void)
{
	static const struct {
		int (*fn)(const char *, uint64_t *);
		const char *s;
		int rc;
		uint64_t v;
	} cases[] = {
		{ conf_parse_size, "0", 0, 0 },
		{ conf_parse_size, "1", 0, 1 },
		{ conf_parse_size, "123", 0, 123 },
		{ conf_parse_size, "4K", 0, 4 * K },
		{ conf_parse_size, "4k", 0, 4 * K },
		{ conf_parse_size, "64M", 0, 64 * M },
		{ conf_parse_size, "64m", 0, 64 * M },
		{ conf_parse_size, "1G", 0, 1 * G },
		{ conf_parse_size, "0K", 0, 0 },
		{ conf_parse_size, "16777215G", 0, 16777215 * G },
		{ conf_parse_size, "18446744073709551615", 0, UINT64_MAX },
		{ conf_parse_size, "18446744073709551616", -ERANGE, 0 },
		{ conf_parse_size, "99999999999999999999999", -ERANGE, 0 },
		{ conf_parse_size, "17179869184G", -ERANGE, 0 }, /* 2^34 G = 2^64 */
		{ conf_parse_size, "18014398509481984K", -ERANGE, 0 },
		{ conf_parse_size, "", -EINVAL, 0 },
		{ conf_parse_size, "12Q", -EINVAL, 0 },
		{ conf_parse_size, "K", -EINVAL, 0 },
		{ conf_parse_size, "1KB", -EINVAL, 0 },
		{ conf_parse_size, "1T", -EINVAL, 0 },
		{ conf_parse_size, " 1", -EINVAL, 0 },
		{ conf_parse_size, "1 ", -EINVAL, 0 },
		{ conf_parse_size, "-1", -EINVAL, 0 },
		{ conf_parse_size, "+1", -EINVAL, 0 },
		{ conf_parse_size, "0x10", -EINVAL, 0 },
		{ conf_parse_size, "1.5G", -EINVAL, 0 },
		{ conf_parse_size, NULL, -EINVAL, 0 },
		{ parse_duration, "0", 0, 0 },
		{ parse_duration, "0s", 0, 0 },
		{ parse_duration, "0ms", 0, 0 },
		{ parse_duration, "2s", 0, 2000 },
		{ parse_duration, "500ms", 0, 500 },
		{ parse_duration, "4294967295ms", 0, 4294967295u },
		{ parse_duration, "4294967s", 0, 4294967000u },
		{ parse_duration, "4294967296ms", -ERANGE, 0 },
		{ parse_duration, "4294968s", -ERANGE, 0 },
		{ parse_duration, "99999999999999999999999s", -ERANGE, 0 },
		{ parse_duration, "", -EINVAL, 0 },
		{ parse_duration, "5", -EINVAL, 0 },
		{ parse_duration, "12Q", -EINVAL, 0 },
		{ parse_duration, "s", -EINVAL, 0 },
		{ parse_duration, "ms", -EINVAL, 0 },
		{ parse_duration, "1m", -EINVAL, 0 },
		{ parse_duration, "1min", -EINVAL, 0 },
		{ parse_duration, "1 s", -EINVAL, 0 },
		{ parse_duration, "1S", -EINVAL, 0 },
		{ parse_duration, "-1s", -EINVAL, 0 },
		{ parse_duration, "1.5s", -EINVAL, 0 },
		{ parse_duration, NULL, -EINVAL, 0 },
	};
	unsigned i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *fn = cases[i].fn == conf_parse_size ? "conf_parse_size"
								 : "conf_parse_duration_ms";
		uint64_t v = 12345;
		int rc = cases[i].fn(cases[i].s, &v);

		CHECK(rc == cases[i].rc, "%s(\"%s\") = %d, want %d", fn,
		      cases[i].s ? cases[i].s : "NULL", rc, cases[i].rc);
		if (!cases[i].rc)
			CHECK(v == cases[i].v, "%s(\"%s\") -> %llu", fn, cases[i].s,
			      (unsigned long long)v);
		else
			CHECK(v == 12345, "%s(\"%s\") wrote on error", fn,
			      cases[i].s ? cases[i].s : "NULL");
	}
}

static void test_heap_defaults(void)
{
	struct conf_heap h;
	struct conf *c;
	char name[CONF_NAME_MAX + 2];

	c = EXPECT_OK("default_heap_size = 100M\n");
	memset(&h, 0xff, sizeof(h));
	CHECK_INT(conf_heap_defaults(c, "new", &h), 0);
	CHECK_STR(h.name, "new");
	check_heap_policy_defaults(&h, 128 * M);
	CHECK_INT(h.line, 0);
	conf_free(c);

	CHECK_INT(conf_heap_defaults(NULL, "x", &h), 0);
	CHECK_INT(h.size, 64 * M);

	CHECK_INT(conf_heap_defaults(NULL, "", &h), -EINVAL);
	CHECK_INT(conf_heap_defaults(NULL, ".", &h), -EINVAL);
	CHECK_INT(conf_heap_defaults(NULL, "..", &h), -EINVAL);
	CHECK_INT(conf_heap_defaults(NULL, "a/b", &h), -EINVAL);
	CHECK_INT(conf_heap_defaults(NULL, "...", &h), 0);
	memset(name, 'x', CONF_NAME_MAX + 1);
	name[CONF_NAME_MAX + 1] = '\0';
	CHECK_INT(conf_heap_defaults(NULL, name, &h), -ENAMETOOLONG);
	name[CONF_NAME_MAX] = '\0';
	CHECK_INT(conf_heap_defaults(NULL, name, &h), 0);
	CHECK_STR(h.name, name);
}

static void test_names(void)
{
	char buf[CONF_SIZE_BUF];

	CHECK_STR(conf_layout_name(CONF_LAYOUT_EXTENTS), "extents");
	CHECK_STR(conf_layout_name(CONF_LAYOUT_CONTIGUOUS), "contiguous");
	CHECK_STR(conf_cache_name(CONF_CACHE_AUTO), "auto");
	CHECK_STR(conf_cache_name(CONF_CACHE_KEEP), "keep");
	CHECK_STR(conf_cache_name(CONF_CACHE_DIRECT), "direct");
	CHECK_STR(conf_writers_name(CONF_WRITERS_MANY), "many");
	CHECK_STR(conf_writers_name(CONF_WRITERS_SINGLE), "single");
	CHECK_STR(conf_replicate_name(CONF_REPLICATE_NONE), "none");
	CHECK_STR(conf_replicate_name(CONF_REPLICATE_ASYNC), "async");
	CHECK_STR(conf_replicate_name(CONF_REPLICATE_SYNC), "sync");
	CHECK_STR(conf_format_size(0, buf), "0");
	CHECK_STR(conf_format_size(1000, buf), "1000");
	CHECK_STR(conf_format_size(4096, buf), "4K");
	CHECK_STR(conf_format_size(1536 * K, buf), "1536K");
	CHECK_STR(conf_format_size(256 * M, buf), "256M");
	CHECK_STR(conf_format_size(1024 * G, buf), "1024G");
	CHECK_STR(conf_format_size(UINT64_MAX, buf), "18446744073709551615");
}

static void *load_many(void *arg)
{
	unsigned i;

	(void)arg;
	for (i = 0; i < 50; i++) {
		struct conf *c = NULL;
		char *errs = NULL;

		if (load(i % 2 ? conf_default_text() : "heap \"a\" {\n min_block = 3\n}\n", &errs,
			 &c) != (i % 2 ? 0 : -EINVAL) ||
		    strcmp(errs, i % 2 ? "" : "heapfs: t.conf:2: heap \"a\": min_block = 3 is "
			   "not a power of two\n") != 0)
			return (void *)1;
		conf_free(c);
		free(errs);
	}
	return NULL;
}

/* Loads from several threads at once (the daemon might) each get their own answer. */
static void test_parallel_loads(void)
{
	pthread_t t[4];
	void *ret;
	unsigned i;

	for (i = 0; i < 4; i++)
		CHECK_INT(pthread_create(&t[i], NULL, load_many, NULL), 0);
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], &ret);
		CHECK(ret == NULL, "thread %u got a wrong result", i);
	}
}

int main(void)
{
	test_default();
	test_good();
	test_errors();
	test_hostile_values();
	test_inodes();
	test_utf8_names();
	test_files();
	test_parsers();
	test_heap_defaults();
	test_names();
	test_parallel_loads();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
