/*
 * conf.c — the heapfs config: libconfuse schema, validation, policy structs.
 *
 * How it works.  The text is copied and its comments are blanked out (newlines kept)
 * before libconfuse sees it, because libconfuse 3.3's lexer miscounts lines after '#',
 * '//' and C comments and so would blame the wrong line.  Every value goes through one
 * of our parse callbacks (sizes, durations, enums, booleans, counts): a bad value is
 * reported with the line the lexer is on and the parse goes on, so one run shows every
 * bad value; libconfuse's own errors (unknown option, syntax) stop the parse and are
 * reformatted by an error function.  A validate callback on every option records the
 * line each option was set on, per section; cross-option rules (min_block against the
 * heap size, replication needs a partner, names) run after the parse and use those
 * lines.  Errors are collected, sorted by line and printed as "heapfs: FILE:LINE: ...".
 *
 * The line of a section's header: while libconfuse parses a top-level section the root
 * section's line counter stays on the line of the section's '{', so the first callback
 * inside a section records root->line as the section's line.  A heap section always has
 * such a callback, even when empty: its "size" has a default that libconfuse parses from
 * text when it creates the section (that default is a placeholder: a heap whose size was
 * not set gets default_heap_size).
 *
 * Locking: libconfuse's lexer is one global flex scanner, and the callbacks find the load
 * in progress through a static pointer, so loads are serialised by load_lock.  The other
 * functions touch no shared state.
 */
#include "conf.h"

#include <confuse.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* Defaults of options left out (SPEC "Defaults"). */
#define DEF_HEAP_SIZE (64 * MiB)
#define DEF_MIN_BLOCK (4 * KiB)
#define DEF_CHUNK (2 * MiB)
#define DEF_OBJ_SIZE (16 * MiB)
#define DEF_OBJ_MIN_BLOCK UINT64_C(64)
#define DEF_POOL_SIZE GiB
#define DEF_DONOR_SIZE (256 * MiB)
#define DEF_MAX_DONORS 16
#define DEF_MAX_PROC_MEM (256 * MiB)
#define DEF_SOCKET "/run/heapfs/pool.sock"
#define DEF_TIMEOUT_MS 2000
#define DEF_PEER_LOST_TIMEOUT_MS 60000

#define MIN_CHUNK (4 * KiB)
#define SUN_PATH_MAX 107 /* sizeof(sockaddr_un.sun_path) - 1 */

static const char default_text[] =
	"# heapfs configuration: the embedded default (heapfs --print-default-config).\n"
	"# Sizes take K, M, G suffixes (powers of 1024) or are plain byte counts;\n"
	"# durations take ms or s.  Options left out take the values shown here.\n"
	"\n"
	"# size of a heap made at run time with mkdir MOUNT/heaps/NAME\n"
	"default_heap_size = 64M\n"
	"\n"
	"# one section per heap: MOUNT/heaps/NAME\n"
	"heap \"scratch\" {\n"
	"  size      = 256M     # rounded up to a power of two\n"
	"  min_block = 4K       # smallest buddy block: a power of two, 64 .. 1M\n"
	"  layout    = extents  # extents (a list of blocks) | contiguous (one block)\n"
	"  cache     = auto     # auto | keep (across opens) | direct (no page cache, no mmap)\n"
	"  writers   = many     # many | single (a second open for writing gets EBUSY)\n"
	"  chunk     = 2M       # memory comes from and goes back to the OS in chunks\n"
	"  pin       = false    # mlock() committed chunks\n"
	"  replicate = none     # none | async | sync (needs a partner section)\n"
	"  image     = \"\"       # if set: loaded at mount if it exists, saved at unmount\n"
	"  inodes    = 0        # most files+dirs+links; 0: size / 8K, within 1024 .. 1048576\n"
	"  direct_map = false   # true: libheapfs clients may map this heap's memory\n"
	"}\n"
	"\n"
	"# the named-object segment: MOUNT/objects/NAME\n"
	"objects {\n"
	"  size      = 16M\n"
	"  min_block = 64\n"
	"  writers   = single\n"
	"  image     = \"\"\n"
	"  direct_map = false\n"
	"}\n"
	"\n"
	"# memory pooled from donor processes: MOUNT/pool/NAME\n"
	"pool {\n"
	"  size               = 1G\n"
	"  donor_size         = 256M\n"
	"  max_donors         = 16\n"
	"  max_process_memory = 256M\n"
	"  socket             = \"/run/heapfs/pool.sock\"\n"
	"}\n"
	"\n"
	"# No partner section: no replication.  To pair two mounts:\n"
	"# partner {\n"
	"#   node        = \"a\"\n"
	"#   listen      = \"127.0.0.1:7410\"\n"
	"#   connect     = \"127.0.0.1:7411\"\n"
	"#   secret_file = \"/etc/heapfs/secret\"\n"
	"#   timeout     = 2s\n"
	"#   auto_failover = false\n"
	"#   managed     = false  # true: roles only by promote/demote (Pacemaker)\n"
	"#   on_peer_lost = \"\"  # asked whether an owner may go on alone\n"
	"#   on_peer_lost_timeout = 60s\n"
	"#   encrypt     = true    # false: frames in the clear (a link private already)\n"
	"# }\n";

/* ---- the load in progress ---------------------------------------------------------- */

#define SEC_MAX_OPTS 12

struct opt_line {
	const char *name; /* the option's name in the section's own option array */
	int line;
	bool bad;         /* its value was rejected (and reported) */
};

/* What we learnt about one section while libconfuse parsed it. */
struct sec_info {
	cfg_t *sec;
	int line;           /* the line of its '{' */
	bool bad;           /* one of its values was rejected: skip cross-option checks */
	bool bad_pending;   /* ... and note_line() is about to record which */
	bool skip_note;     /* the next note_line() is the placeholder default, not the user */
	unsigned nset;
	struct opt_line set[SEC_MAX_OPTS];
};

struct err_msg {
	int line;
	unsigned seq;
	char *text;
};

struct load_ctx {
	const char *source;
	FILE *errs;
	cfg_t *root;
	struct sec_info *secs;
	unsigned nsecs, secs_cap;
	struct err_msg *msgs;
	unsigned nmsgs, msgs_cap;
	bool oom;
};

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static struct load_ctx *cur; /* under load_lock */

static void *grow(void *arr, unsigned *cap, unsigned need, size_t elem)
{
	unsigned ncap;
	void *p;

	if (need <= *cap)
		return arr;
	ncap = *cap ? *cap * 2 : 8;
	p = realloc(arr, (size_t)ncap * elem);
	if (p)
		*cap = ncap;
	return p;
}

static void report(struct load_ctx *ctx, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void vreport(struct load_ctx *ctx, int line, const char *fmt, va_list ap)
{
	struct err_msg *m;
	char *text;

	m = grow(ctx->msgs, &ctx->msgs_cap, ctx->nmsgs + 1, sizeof(*m));
	if (!m || vasprintf(&text, fmt, ap) < 0) {
		ctx->oom = true;
		return;
	}
	ctx->msgs = m;
	m[ctx->nmsgs] = (struct err_msg){ .line = line, .seq = ctx->nmsgs, .text = text };
	ctx->nmsgs++;
}

static void report(struct load_ctx *ctx, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(ctx, line, fmt, ap);
	va_end(ap);
}

static int msg_cmp(const void *a, const void *b)
{
	const struct err_msg *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Print every error, in line order, and forget them. */
static void flush_errors(struct load_ctx *ctx)
{
	unsigned i;

	if (ctx->nmsgs)
		qsort(ctx->msgs, ctx->nmsgs, sizeof(*ctx->msgs), msg_cmp);
	for (i = 0; i < ctx->nmsgs; i++) {
		if (ctx->errs && ctx->msgs[i].line > 0)
			fprintf(ctx->errs, "heapfs: %s:%d: %s\n", ctx->source, ctx->msgs[i].line,
				ctx->msgs[i].text);
		else if (ctx->errs)
			fprintf(ctx->errs, "heapfs: %s: %s\n", ctx->source, ctx->msgs[i].text);
		free(ctx->msgs[i].text);
	}
	free(ctx->msgs);
	ctx->msgs = NULL;
	ctx->nmsgs = ctx->msgs_cap = 0;
}

static bool is_heap_sec(const cfg_t *sec)
{
	return sec->name && strcmp(sec->name, "heap") == 0;
}

static struct sec_info *sec_find(struct load_ctx *ctx, const cfg_t *sec)
{
	unsigned i;

	for (i = 0; i < ctx->nsecs; i++)
		if (ctx->secs[i].sec == sec)
			return &ctx->secs[i];
	return NULL;
}

/* The sec_info of sec, made on first use during the parse (see the top comment for why
 * root->line is the section's line then).  NULL only when out of memory. */
static struct sec_info *sec_get(struct load_ctx *ctx, cfg_t *sec)
{
	struct sec_info *s = sec_find(ctx, sec);

	if (s)
		return s;
	s = grow(ctx->secs, &ctx->secs_cap, ctx->nsecs + 1, sizeof(*s));
	if (!s) {
		ctx->oom = true;
		return NULL;
	}
	ctx->secs = s;
	s = &ctx->secs[ctx->nsecs++];
	*s = (struct sec_info){ .sec = sec, .line = ctx->root->line,
				.skip_note = sec != ctx->root && is_heap_sec(sec) };
	return s;
}

static const struct opt_line *opt_find(struct load_ctx *ctx, const cfg_t *sec,
				       const char *name)
{
	const struct sec_info *s = sec_find(ctx, sec);
	unsigned i;

	for (i = 0; s && i < s->nset; i++)
		if (strcmp(s->set[i].name, name) == 0)
			return &s->set[i];
	return NULL;
}

/* Line where option name was set in sec, 0 when it was left out. */
static int set_line(struct load_ctx *ctx, const cfg_t *sec, const char *name)
{
	const struct opt_line *o = opt_find(ctx, sec, name);

	return o ? o->line : 0;
}

/* The value of name in sec was rejected: it is reported, so no follow-on checks. */
static bool opt_bad(struct load_ctx *ctx, const cfg_t *sec, const char *name)
{
	const struct opt_line *o = opt_find(ctx, sec, name);

	return o && o->bad;
}

/* "heap \"x\": ", "pool: " or "" (top level): what a message is about. */
static const char *sec_label(const cfg_t *sec, char *buf, size_t len)
{
	if (!sec || !sec->name || strcmp(sec->name, "root") == 0)
		buf[0] = '\0';
	else if (sec->title)
		snprintf(buf, len, "%s \"%s\": ", sec->name, sec->title);
	else
		snprintf(buf, len, "%s: ", sec->name);
	return buf;
}

#define LABEL_MAX (CONF_NAME_MAX + 32)

/* A value of opt in sec was rejected: report it at the lexer's line. */
static int bad_value(cfg_t *sec, cfg_opt_t *opt, const char *value, const char *why)
{
	char lbl[LABEL_MAX];
	struct sec_info *s = sec_get(cur, sec);

	if (s)
		s->bad = s->bad_pending = true;
	report(cur, sec->line, "%s%s = %s %s", sec_label(sec, lbl, sizeof(lbl)), opt->name,
	       value, why);
	return 0; /* go on parsing: the next bad value gets its own message */
}

/* ---- value parsing ------------------------------------------------------------------- */

/* Leading decimal digits of s into *out; the rest in *end.  -EINVAL without digits,
 * -ERANGE on overflow. */
static int parse_digits(const char *s, uint64_t *out, const char **end)
{
	uint64_t v = 0;
	const char *p;

	for (p = s; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (p == s)
		return -EINVAL;
	*out = v;
	*end = p;
	return 0;
}

int conf_parse_size(const char *s, uint64_t *out)
{
	static const char suffixes[] = "KMG";
	const char *end, *sfx;
	uint64_t v, mul = 1;
	int rc;

	if (!s)
		return -EINVAL;
	rc = parse_digits(s, &v, &end);
	if (rc)
		return rc;
	if (*end) {
		if (end[1] || !(sfx = strchr(suffixes, toupper((unsigned char)*end))))
			return -EINVAL;
		mul = UINT64_C(1) << (10 * (sfx - suffixes + 1));
	}
	if (v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

int conf_parse_duration_ms(const char *s, unsigned *out)
{
	const char *end;
	uint64_t v, mul;
	int rc;

	if (!s)
		return -EINVAL;
	rc = parse_digits(s, &v, &end);
	if (rc)
		return rc;
	if (strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "s") == 0)
		mul = 1000;
	else if (!*end && v == 0) /* zero needs no unit */
		mul = 1;
	else
		return -EINVAL;
	if (v > UINT_MAX / mul)
		return -ERANGE;
	*out = (unsigned)(v * mul);
	return 0;
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static uint64_t round_pow2(uint64_t v)
{
	return v <= 1 ? 1 : UINT64_C(1) << (64 - __builtin_clzll(v - 1));
}

const char *conf_format_size(uint64_t v, char buf[CONF_SIZE_BUF])
{
	static const char units[] = "GMK";
	unsigned i;

	for (i = 0; i < 3; i++) {
		unsigned shift = 10 * (3 - i);

		if (v && !(v & ((UINT64_C(1) << shift) - 1))) {
			snprintf(buf, CONF_SIZE_BUF, "%llu%c", (unsigned long long)(v >> shift),
				 units[i]);
			return buf;
		}
	}
	snprintf(buf, CONF_SIZE_BUF, "%llu", (unsigned long long)v);
	return buf;
}

/* A size into a libconfuse number (a long), with optional power-of-two and range rules. */
static int size_value(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result,
		      uint64_t min, uint64_t max, bool pow2)
{
	char a[CONF_SIZE_BUF], b[CONF_SIZE_BUF], why[96];
	uint64_t v;
	int rc;

	*(long *)result = 0;
	rc = conf_parse_size(value, &v);
	if (rc == -ERANGE || (!rc && v > (uint64_t)LONG_MAX))
		return bad_value(sec, opt, value, "is too large");
	if (rc)
		return bad_value(sec, opt, value,
				 "is not a size (a byte count, or a number with K, M or G)");
	if (pow2 && !is_pow2(v))
		return bad_value(sec, opt, value, "is not a power of two");
	if (v < min || v > max) {
		if (v > max && max == CONF_HEAP_MAX)
			snprintf(why, sizeof(why), "is larger than the largest heap (%s)",
				 conf_format_size(max, a));
		else if (max == UINT64_MAX || max == CONF_HEAP_MAX)
			snprintf(why, sizeof(why), "is smaller than %s", conf_format_size(min, a));
		else
			snprintf(why, sizeof(why), "is outside %s .. %s", conf_format_size(min, a),
				 conf_format_size(max, b));
		return bad_value(sec, opt, value, why);
	}
	*(long *)result = (long)v;
	return 0;
}

static int cb_size(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	return size_value(sec, opt, value, result, 0, UINT64_MAX, false);
}

static int cb_block(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	return size_value(sec, opt, value, result, CONF_MIN_BLOCK_MIN, CONF_MIN_BLOCK_MAX, true);
}

static int cb_chunk(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	/* above the size a heap caps it, but the allocator takes no chunk past its largest heap */
	return size_value(sec, opt, value, result, MIN_CHUNK, CONF_HEAP_MAX, true);
}

/* A whole number 0 .. max into a libconfuse number. */
static int count_value(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result,
		       uint64_t max)
{
	char why[64];
	const char *end;
	uint64_t v;

	*(long *)result = 0;
	if (parse_digits(value, &v, &end) || *end || v > max) {
		snprintf(why, sizeof(why), "is not a whole number (0 .. %llu)",
			 (unsigned long long)max);
		return bad_value(sec, opt, value, why);
	}
	*(long *)result = (long)v;
	return 0;
}

static int cb_count(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	return count_value(sec, opt, value, result, UINT_MAX);
}

static int cb_inodes(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	return count_value(sec, opt, value, result, CONF_INODES_MAX);
}

static int cb_duration(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	unsigned ms;

	*(long *)result = 0;
	if (conf_parse_duration_ms(value, &ms))
		return bad_value(sec, opt, value,
				 "is not a duration (a number with ms or s, e.g. 500ms, 2s)");
	*(long *)result = ms;
	return 0;
}

static int cb_bool(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	int b = cfg_parse_boolean(value);

	*(int *)result = b > 0;
	if (b < 0)
		return bad_value(sec, opt, value, "is not a boolean (true or false)");
	return 0;
}

/* Enum options: names in enum order, NULL-terminated. */
static const char *const layout_names[] = { "extents", "contiguous", NULL };
static const char *const cache_names[] = { "auto", "keep", "direct", NULL };
static const char *const writers_names[] = { "many", "single", NULL };
static const char *const replicate_names[] = { "none", "async", "sync", NULL };
#define NNAMES(a) (sizeof(a) / sizeof((a)[0]) - 1) /* names in a NULL-terminated array */

static const struct {
	const char *opt;
	const char *const *names;
} enum_opts[] = {
	{ "layout", layout_names },
	{ "cache", cache_names },
	{ "writers", writers_names },
	{ "replicate", replicate_names },
};

static int cb_enum(cfg_t *sec, cfg_opt_t *opt, const char *value, void *result)
{
	char why[96] = "is not one of:";
	const char *const *names = NULL;
	unsigned i;

	*(long *)result = 0;
	for (i = 0; i < sizeof(enum_opts) / sizeof(enum_opts[0]); i++)
		if (strcmp(enum_opts[i].opt, opt->name) == 0)
			names = enum_opts[i].names;
	for (i = 0; names && names[i]; i++) {
		if (strcmp(names[i], value) == 0) {
			*(long *)result = i;
			return 0;
		}
		snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s %s", i ? "," : "",
			 names[i]);
	}
	return bad_value(sec, opt, value, why);
}

static const char *enum_name(const char *const *names, unsigned n, unsigned v)
{
	return v < n ? names[v] : "?";
}

const char *conf_layout_name(enum conf_layout l)
{
	return enum_name(layout_names, NNAMES(layout_names), l);
}

const char *conf_cache_name(enum conf_cache c)
{
	return enum_name(cache_names, NNAMES(cache_names), c);
}

const char *conf_writers_name(enum conf_writers w)
{
	return enum_name(writers_names, NNAMES(writers_names), w);
}

const char *conf_replicate_name(enum conf_replicate r)
{
	return enum_name(replicate_names, NNAMES(replicate_names), r);
}

/* Validate callback on every option and section: remember where it was set. */
static int note_line(cfg_t *sec, cfg_opt_t *opt)
{
	struct sec_info *s = sec_get(cur, sec);
	unsigned i;

	if (!s)
		return 0;
	if (s->skip_note) { /* the heap size placeholder, parsed when the section was made */
		s->skip_note = false;
		return 0;
	}
	for (i = 0; i < s->nset && strcmp(s->set[i].name, opt->name); i++)
		;
	if (i < s->nset && opt->type == CFGT_SEC && !(opt->flags & CFGF_MULTI)) {
		report(cur, sec->line, "section %s is given twice", opt->name);
		return 0;
	}
	if (i == s->nset && i < SEC_MAX_OPTS)
		s->nset++;
	if (i < SEC_MAX_OPTS)
		s->set[i] = (struct opt_line){ .name = opt->name, .line = sec->line,
					       .bad = s->bad_pending };
	s->bad_pending = false;
	return 0;
}

/* libconfuse's own errors, reworded where ours says it better. */
static void on_cfg_error(cfg_t *sec, const char *fmt, va_list ap)
{
	char lbl[LABEL_MAX], msg[512];
	const char *opt;
	va_list aq;

	if (strcmp(fmt, "found duplicate title '%s'") == 0) {
		const char *title;
		unsigned i;
		int first = 0;

		va_copy(aq, ap);
		title = va_arg(aq, const char *);
		va_end(aq);
		for (i = 0; i < cur->nsecs; i++)
			if (cur->secs[i].sec->title && is_heap_sec(cur->secs[i].sec) &&
			    strcmp(cur->secs[i].sec->title, title) == 0)
				first = cur->secs[i].line;
		report(cur, sec->line, "heap \"%s\" is declared twice (first on line %d)", title,
		       first);
		return;
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	opt = strncmp(msg, "no such option ", 15) == 0 ? msg + 15 : NULL;
	if (opt && sec != cur->root)
		report(cur, sec->line, "unknown option %s in %.*s", opt,
		       (int)strlen(sec_label(sec, lbl, sizeof(lbl))) - 2, lbl);
	else if (opt)
		report(cur, sec->line, "unknown option %s", opt);
	else
		report(cur, sec->line, "%s%s", sec_label(sec, lbl, sizeof(lbl)), msg);
}

/* ---- the schema ------------------------------------------------------------------------ */

#define OPT_NUM(n, d, cb) { .name = (n), .type = CFGT_INT, .def.number = (long)(d), \
			    .parsecb = (cb), .validcb = note_line }
#define OPT_BOOL(n, d) { .name = (n), .type = CFGT_BOOL, .def.boolean = (d), \
			 .parsecb = cb_bool, .validcb = note_line }
#define OPT_STR(n, d) { .name = (n), .type = CFGT_STR, .def.string = (d), .validcb = note_line }
#define OPT_SEC(n, sub, fl) { .name = (n), .type = CFGT_SEC, .subopts = (sub), .flags = (fl), \
			      .validcb = note_line }

static cfg_opt_t heap_opts[] = {
	/* the placeholder default: parsed (so calling cb_size and note_line) when the section
	 * is made; a heap whose size is not set gets default_heap_size */
	{ .name = "size", .type = CFGT_INT, .def.parsed = (char *)"0", .parsecb = cb_size,
	  .validcb = note_line },
	OPT_NUM("min_block", DEF_MIN_BLOCK, cb_block),
	OPT_NUM("layout", CONF_LAYOUT_EXTENTS, cb_enum),
	OPT_NUM("cache", CONF_CACHE_AUTO, cb_enum),
	OPT_NUM("writers", CONF_WRITERS_MANY, cb_enum),
	OPT_NUM("chunk", DEF_CHUNK, cb_chunk),
	OPT_BOOL("pin", cfg_false),
	OPT_NUM("replicate", CONF_REPLICATE_NONE, cb_enum),
	OPT_STR("image", ""),
	OPT_NUM("inodes", 0, cb_inodes),
	OPT_BOOL("direct_map", cfg_false),
	CFG_END()
};

static cfg_opt_t objects_opts[] = {
	OPT_NUM("size", DEF_OBJ_SIZE, cb_size),
	OPT_NUM("min_block", DEF_OBJ_MIN_BLOCK, cb_block),
	OPT_NUM("writers", CONF_WRITERS_SINGLE, cb_enum),
	OPT_STR("image", ""),
	OPT_BOOL("direct_map", cfg_false),
	CFG_END()
};

static cfg_opt_t pool_opts[] = {
	OPT_NUM("size", DEF_POOL_SIZE, cb_size),
	OPT_NUM("donor_size", DEF_DONOR_SIZE, cb_size),
	OPT_NUM("max_donors", DEF_MAX_DONORS, cb_count),
	OPT_NUM("max_process_memory", DEF_MAX_PROC_MEM, cb_size),
	OPT_STR("socket", DEF_SOCKET),
	CFG_END()
};

static cfg_opt_t partner_opts[] = {
	OPT_STR("node", ""),
	OPT_STR("listen", ""),
	OPT_STR("connect", ""),
	OPT_STR("secret_file", ""),
	OPT_NUM("timeout", DEF_TIMEOUT_MS, cb_duration),
	OPT_BOOL("auto_failover", cfg_false),
	OPT_BOOL("managed", cfg_false),
	OPT_STR("on_peer_lost", ""),
	OPT_NUM("on_peer_lost_timeout", DEF_PEER_LOST_TIMEOUT_MS, cb_duration),
	OPT_BOOL("encrypt", cfg_true),
	CFG_END()
};

static cfg_opt_t root_opts[] = {
	OPT_NUM("default_heap_size", DEF_HEAP_SIZE, cb_size),
	OPT_SEC("heap", heap_opts, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	OPT_SEC("objects", objects_opts, CFGF_NONE),
	OPT_SEC("pool", pool_opts, CFGF_NONE),
	OPT_SEC("partner", partner_opts, CFGF_NONE),
	CFG_END()
};

/* ---- comments ---------------------------------------------------------------------------- */

/* Blank out '#', '//' and C comments (keeping newlines) the way libconfuse's lexer finds
 * them: outside "..." and '...' strings.  Returns the line of the first '{' that is never
 * closed, or 0: libconfuse takes the end of the file for a closing brace. */
static int strip_comments(char *t)
{
	int line = 1, depth = 0, open_line = 0;
	char *p = t, q;

	while (*p) {
		if (*p == '"' || *p == '\'') {
			for (q = *p++; *p && *p != q; p++) {
				if (*p == '\\' && p[1])
					p++;
				line += *p == '\n';
			}
			if (*p)
				p++;
		} else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
			for (; *p && *p != '\n'; p++)
				*p = ' ';
		} else if (p[0] == '/' && p[1] == '*') {
			p[0] = p[1] = ' ';
			for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++) {
				if (*p == '\n')
					line++;
				else
					*p = ' ';
			}
			if (*p)
				p[0] = p[1] = ' ';
		} else {
			if (*p == '{' && depth++ == 0)
				open_line = line; /* only the outermost '{' is ever reported */
			else if (*p == '}' && depth > 0)
				depth--;
			line += *p == '\n';
			p++;
		}
	}
	return depth ? open_line : 0;
}

/* ---- checks and structs ----------------------------------------------------------------- */

/* Is s valid UTF-8 (no stray continuation bytes, overlong forms, surrogates or code points
 * past U+10FFFF)?  The rule jansson applies to every string it is given. */
static bool is_utf8(const char *s)
{
	static const uint32_t min_cp[] = { 0, 0x80, 0x800, 0x10000 };
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		unsigned n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2 :
			     (*p & 0xf8) == 0xf0 ? 3 : 4;
		uint32_t cp;

		if (n == 4)
			return false;
		cp = *p++ & (0x7fu >> n);
		for (unsigned k = 0; k < n; k++, p++) {
			if ((*p & 0xc0) != 0x80) /* also stops at the terminator */
				return false;
			cp = cp << 6 | (*p & 0x3f);
		}
		if (cp < min_cp[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return false;
	}
	return true;
}

int conf_check_heap_name(const char *name)
{
	if (!name || !*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
	    !is_utf8(name))
		return -EINVAL;
	if (strlen(name) > CONF_NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

static char *dup_nonempty(const char *s, struct load_ctx *ctx)
{
	char *d;

	if (!s || !*s)
		return NULL;
	d = strdup(s);
	if (!d)
		ctx->oom = true;
	return d;
}

/* The first line of names[] that was set in sec, else fallback. */
static int first_set_line(struct load_ctx *ctx, const cfg_t *sec, const char *const *names,
			  int fallback)
{
	int line;

	for (; *names; names++)
		if ((line = set_line(ctx, sec, *names)))
			return line;
	return fallback;
}

/* Size, rounding and min_block of a heap-like section (heaps, objects).  size is what was
 * asked (0 only if set so); size_line where it came from.  true when it reported. */
static bool check_heap_size(struct load_ctx *ctx, const cfg_t *sec, const char *lbl,
			    uint64_t size, int size_line, uint64_t min_block)
{
	static const char *const block_first[] = { "min_block", "size", NULL };
	char a[CONF_SIZE_BUF], b[CONF_SIZE_BUF];
	uint64_t rounded;

	if (size == 0) {
		report(ctx, size_line, "%ssize must not be 0", lbl);
	} else if (size > CONF_HEAP_MAX) { /* first: 2^63 < size would not round */
		report(ctx, size_line, "%ssize = %s is larger than the largest heap (%s)", lbl,
		       conf_format_size(size, a), conf_format_size(CONF_HEAP_MAX, b));
	} else if (min_block > (rounded = round_pow2(size))) {
		report(ctx, first_set_line(ctx, sec, block_first, size_line),
		       "%smin_block = %s is larger than the heap (%s)", lbl,
		       conf_format_size(min_block, a), conf_format_size(rounded, b));
	} else {
		return false;
	}
	return true;
}

/* def_size_ok: build() found default_heap_size fine (else it reported why). */
static void build_heap(struct load_ctx *ctx, struct conf *c, cfg_t *h, bool partner,
		       bool def_size_ok, struct conf_heap *out)
{
	static const char *const defsize[] = { "default_heap_size", NULL };
	const struct sec_info *s = sec_find(ctx, h);
	const char *name = cfg_title(h);
	char lbl[LABEL_MAX];
	int decl = s ? s->line : 0, rc, size_line;
	uint64_t size;

	out->line = decl;
	rc = conf_check_heap_name(name);
	if (rc == -ENAMETOOLONG)
		report(ctx, decl, "heap \"%.32s...\": a heap name is at most %d bytes", name,
		       CONF_NAME_MAX);
	else if (rc && !is_utf8(name))
		report(ctx, decl, "heap \"%s\": a heap name must be valid UTF-8", name);
	else if (rc)
		report(ctx, decl, "heap \"%s\": a heap name must not be empty, \".\", \"..\" "
		       "or contain '/'", name);
	else
		strcpy(out->name, name);
	snprintf(lbl, sizeof(lbl), "heap \"%.*s%s\": ", rc == -ENAMETOOLONG ? 32 : CONF_NAME_MAX,
		 name, rc == -ENAMETOOLONG ? "..." : "");

	size_line = set_line(ctx, h, "size");
	size = (uint64_t)cfg_getint(h, "size");
	if (!size_line) {
		size = c->default_heap_size;
		size_line = first_set_line(ctx, ctx->root, defsize, decl);
	}
	out->size = round_pow2(size);
	out->min_block = (uint64_t)cfg_getint(h, "min_block");
	out->chunk = (uint64_t)cfg_getint(h, "chunk");
	out->layout = (enum conf_layout)cfg_getint(h, "layout");
	out->cache = (enum conf_cache)cfg_getint(h, "cache");
	out->writers = (enum conf_writers)cfg_getint(h, "writers");
	out->replicate = (enum conf_replicate)cfg_getint(h, "replicate");
	out->pin = cfg_getbool(h, "pin");
	out->direct_map = cfg_getbool(h, "direct_map");
	out->inodes = (uint64_t)cfg_getint(h, "inodes");
	out->image = dup_nonempty(cfg_getstr(h, "image"), ctx);
	/* a rejected value or a bad default_heap_size is reported already: no follow-ons */
	if (!(s && s->bad) && (set_line(ctx, h, "size") || def_size_ok))
		check_heap_size(ctx, h, lbl, size, size_line, out->min_block);
	if (out->replicate != CONF_REPLICATE_NONE && !partner)
		report(ctx, set_line(ctx, h, "replicate"),
		       "%sreplicate = %s needs a partner section", lbl,
		       conf_replicate_name(out->replicate));
}

static void build_objects(struct load_ctx *ctx, cfg_t *o, struct conf_objects *out)
{
	static const char *const size_first[] = { "size", "min_block", NULL };
	const struct sec_info *s = sec_find(ctx, o);
	uint64_t size = (uint64_t)cfg_getint(o, "size");

	int line = first_set_line(ctx, o, size_first, set_line(ctx, ctx->root, "objects"));
	char a[CONF_SIZE_BUF], b[CONF_SIZE_BUF];
	uint64_t least;

	out->size = round_pow2(size);
	out->min_block = (uint64_t)cfg_getint(o, "min_block");
	out->writers = (enum conf_writers)cfg_getint(o, "writers");
	out->direct_map = cfg_getbool(o, "direct_map");
	least = 2 * (out->min_block > CONF_SEG_HDR_BLOCK ? out->min_block : CONF_SEG_HDR_BLOCK);
	out->image = dup_nonempty(cfg_getstr(o, "image"), ctx);
	if (!(s && s->bad) && !check_heap_size(ctx, o, "objects: ", size, line, out->min_block) &&
	    out->size < least)
		report(ctx, line, "objects: size = %s is too small for the segment: its header and "
		       "name map take %s (two blocks of max(4K, min_block))",
		       conf_format_size(size, a), conf_format_size(least, b));
}
static void build_pool(struct load_ctx *ctx, cfg_t *p, struct conf_pool *out)
{
	const char *sock = cfg_getstr(p, "socket");
	char a[CONF_SIZE_BUF], b[CONF_SIZE_BUF];

	out->size = (uint64_t)cfg_getint(p, "size");
	out->donor_size = (uint64_t)cfg_getint(p, "donor_size");
	out->max_donors = (unsigned)cfg_getint(p, "max_donors");
	out->max_process_memory = (uint64_t)cfg_getint(p, "max_process_memory");
	out->socket = dup_nonempty(sock, ctx);
	if (out->donor_size == 0 && !opt_bad(ctx, p, "donor_size"))
		report(ctx, set_line(ctx, p, "donor_size"), "pool: donor_size must not be 0");
	/* the pool is one heap of size (rounded up): no larger than any heap */
	for (unsigned i = 0; i < 2; i++) {
		static const char *const big[] = { "size", "donor_size" };
		uint64_t v = (uint64_t)cfg_getint(p, big[i]);

		if (v > CONF_HEAP_MAX)
			report(ctx, set_line(ctx, p, big[i]), "pool: %s = %s is larger than the "
			       "largest heap (%s)", big[i], conf_format_size(v, a),
			       conf_format_size(CONF_HEAP_MAX, b));
	}
	if (!sock || !*sock)
		report(ctx, set_line(ctx, p, "socket"), "pool: socket must not be empty");
	else if (strlen(sock) > SUN_PATH_MAX)
		report(ctx, set_line(ctx, p, "socket"),
		       "pool: socket path is longer than %d bytes", SUN_PATH_MAX);
}

/* "HOST:PORT" with a port 1..65535 (HOST may be a [v6] address or empty). */
static bool is_host_port(const char *s)
{
	const char *colon = strrchr(s, ':'), *end;
	uint64_t port;

	return colon && !parse_digits(colon + 1, &port, &end) && !*end && port >= 1 &&
	       port <= 65535;
}

/* A node name the link can send: 1..CONF_NODE_MAX bytes, each '!'..'~'. */
static bool is_node_name(const char *s)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < '!' || (unsigned char)s[i] > '~')
			return false;
	return n >= 1 && n <= CONF_NODE_MAX;
}

static void build_partner(struct load_ctx *ctx, cfg_t *p, struct conf_partner *out)
{
	static const char *const addr_opts[] = { "listen", "connect" };
	const struct sec_info *s = sec_find(ctx, p);
	int line = s && s->nset ? s->line : set_line(ctx, ctx->root, "partner");
	unsigned i;

	out->present = true;
	out->node = dup_nonempty(cfg_getstr(p, "node"), ctx);
	out->listen = dup_nonempty(cfg_getstr(p, "listen"), ctx);
	out->connect = dup_nonempty(cfg_getstr(p, "connect"), ctx);
	out->secret_file = dup_nonempty(cfg_getstr(p, "secret_file"), ctx);
	out->timeout_ms = (unsigned)cfg_getint(p, "timeout");
	out->auto_failover = cfg_getbool(p, "auto_failover");
	out->managed = cfg_getbool(p, "managed");
	out->on_peer_lost = dup_nonempty(cfg_getstr(p, "on_peer_lost"), ctx);
	out->on_peer_lost_timeout_ms = (unsigned)cfg_getint(p, "on_peer_lost_timeout");
	if (out->managed && out->auto_failover)
		report(ctx, set_line(ctx, p, "auto_failover"), "partner: auto_failover = true "
		       "and managed = true: a cluster manager decides failover; drop one");
	if (out->on_peer_lost_timeout_ms < 1000 && !opt_bad(ctx, p, "on_peer_lost_timeout"))
		report(ctx, set_line(ctx, p, "on_peer_lost_timeout"), "partner: "
		       "on_peer_lost_timeout = %ums is shorter than 1000ms",
		       out->on_peer_lost_timeout_ms);
	out->encrypt = cfg_getbool(p, "encrypt");
	if (!out->node)
		report(ctx, line, "partner: node must be set");
	else if (!is_node_name(out->node))
		report(ctx, set_line(ctx, p, "node"), "partner: node = \"%.*s%s\" must be 1 .. %d "
		       "printable characters, no spaces", CONF_NODE_MAX, out->node,
		       strlen(out->node) > CONF_NODE_MAX ? "..." : "", CONF_NODE_MAX);
	if (!out->secret_file)
		report(ctx, line, "partner: secret_file must be set");
	for (i = 0; i < 2; i++) {
		const char *v = cfg_getstr(p, addr_opts[i]);

		if (!v || !*v)
			report(ctx, line, "partner: %s must be set (HOST:PORT)", addr_opts[i]);
		else if (!is_host_port(v))
			report(ctx, set_line(ctx, p, addr_opts[i]),
			       "partner: %s = %s is not HOST:PORT", addr_opts[i], v);
	}
	if (out->timeout_ms == 0 && !opt_bad(ctx, p, "timeout"))
		report(ctx, set_line(ctx, p, "timeout"), "partner: timeout must not be 0");
	else if (out->timeout_ms < CONF_TIMEOUT_MIN_MS && !opt_bad(ctx, p, "timeout"))
		report(ctx, set_line(ctx, p, "timeout"), "partner: timeout = %ums is shorter than "
		       "%ums", out->timeout_ms, CONF_TIMEOUT_MIN_MS);
}

static void build(struct load_ctx *ctx, cfg_t *root, struct conf *c)
{
	char a[CONF_SIZE_BUF], b[CONF_SIZE_BUF];
	int dline = set_line(ctx, root, "default_heap_size");
	bool partner = set_line(ctx, root, "partner") != 0, def_size_ok = false;
	unsigned i;

	c->default_heap_size = (uint64_t)cfg_getint(root, "default_heap_size");
	if (opt_bad(ctx, root, "default_heap_size"))
		; /* reported */
	else if (c->default_heap_size == 0)
		report(ctx, dline, "default_heap_size must not be 0");
	else if (round_pow2(c->default_heap_size) < DEF_MIN_BLOCK)
		report(ctx, dline, "default_heap_size = %s is smaller than the min_block of a "
		       "heap made with mkdir (%s)", conf_format_size(c->default_heap_size, a),
		       conf_format_size(DEF_MIN_BLOCK, b));
	else if (c->default_heap_size > CONF_HEAP_MAX)
		report(ctx, dline, "default_heap_size = %s is larger than the largest heap (%s)",
		       conf_format_size(c->default_heap_size, a),
		       conf_format_size(CONF_HEAP_MAX, b));
	else
		def_size_ok = true;

	c->nheaps = cfg_size(root, "heap");
	c->heaps = calloc(c->nheaps ? c->nheaps : 1, sizeof(*c->heaps));
	if (!c->heaps) {
		ctx->oom = true;
		c->nheaps = 0;
	}
	for (i = 0; i < c->nheaps; i++)
		build_heap(ctx, c, cfg_getnsec(root, "heap", i), partner, def_size_ok,
			   &c->heaps[i]);
	build_objects(ctx, cfg_getsec(root, "objects"), &c->objects);
	build_pool(ctx, cfg_getsec(root, "pool"), &c->pool);
	c->pool.configured = set_line(ctx, root, "pool") != 0;
	if (partner)
		build_partner(ctx, cfg_getsec(root, "partner"), &c->partner);
	else
		c->partner.timeout_ms = DEF_TIMEOUT_MS;
}

/* ---- loading ----------------------------------------------------------------------------- */

/* Parse text (comments already blanked) into *out; errors are left in ctx. */
static int parse(struct load_ctx *ctx, char *text, struct conf *c)
{
	cfg_t *root;
	int rc;

	root = cfg_init(root_opts, CFGF_NONE);
	if (!root)
		return -ENOMEM;
	ctx->root = root;
	cur = ctx;
	cfg_set_error_function(root, on_cfg_error);
	rc = cfg_parse_buf(root, text);
	if (rc == CFG_SUCCESS)
		build(ctx, root, c);
	else if (!ctx->nmsgs) /* libconfuse failed without telling why (e.g. no memory) */
		report(ctx, 0, "cannot parse the config");
	cfg_free(root);
	cur = NULL;
	ctx->root = NULL;
	return 0;
}

int conf_load_string(const char *text, const char *source, FILE *errs, struct conf **out)
{
	struct load_ctx ctx = { .source = source ? source : "<string>", .errs = errs };
	struct conf *c = NULL;
	char *buf = NULL;
	int rc = -ENOMEM, unclosed;

	*out = NULL;
	pthread_mutex_lock(&load_lock);
	c = calloc(1, sizeof(*c));
	buf = strdup(text ? text : "");
	if (!c || !buf)
		goto cleanup;
	c->source = strdup(ctx.source);
	if (!c->source)
		goto cleanup;
	unclosed = strip_comments(buf);
	if (unclosed)
		report(&ctx, unclosed, "this '{' is never closed");
	rc = parse(&ctx, buf, c);
	if (!rc && ctx.oom)
		rc = -ENOMEM;
	if (!rc && ctx.nmsgs)
		rc = -EINVAL;
cleanup:
	if (rc == -ENOMEM && errs)
		fprintf(errs, "heapfs: %s: %s\n", ctx.source, strerror(ENOMEM));
	flush_errors(&ctx);
	free(ctx.secs);
	pthread_mutex_unlock(&load_lock);
	free(buf);
	if (rc)
		conf_free(c);
	else
		*out = c;
	return rc;
}

/* The whole of path into a NUL-terminated buffer (works for pipes too). */
static int read_all(const char *path, char **out)
{
	size_t len = 0, cap = 0, n;
	char *buf = NULL, *p;
	FILE *f;
	int rc = 0;

	f = fopen(path, "r");
	if (!f)
		return -errno;
	errno = 0;
	do {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			p = realloc(buf, cap);
			if (!p) {
				rc = -ENOMEM;
				goto cleanup;
			}
			buf = p;
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	if (ferror(f))
		rc = errno ? -errno : -EIO;
	else if (memchr(buf, '\0', len))
		rc = -EILSEQ; /* not a text file */
	buf[len] = '\0';
cleanup:
	fclose(f);
	if (rc)
		free(buf);
	else
		*out = buf;
	return rc;
}

int conf_load_file(const char *path, FILE *errs, struct conf **out)
{
	char *text = NULL;
	int rc;

	*out = NULL;
	rc = read_all(path, &text);
	if (rc) {
		if (errs)
			fprintf(errs, "heapfs: %s: %s\n", path,
				rc == -EILSEQ ? "not a text file" : strerror(-rc));
		return rc == -EILSEQ ? -EINVAL : rc;
	}
	rc = conf_load_string(text, path, errs, out);
	free(text);
	return rc;
}

const char *conf_default_text(void)
{
	return default_text;
}

int conf_load_default(struct conf **out)
{
	return conf_load_string(default_text, "<default>", stderr, out);
}

void conf_free(struct conf *c)
{
	unsigned i;

	if (!c)
		return;
	for (i = 0; c->heaps && i < c->nheaps; i++)
		free(c->heaps[i].image);
	free(c->heaps);
	free(c->objects.image);
	free(c->pool.socket);
	free(c->partner.node);
	free(c->partner.listen);
	free(c->partner.connect);
	free(c->partner.secret_file);
	free(c->partner.on_peer_lost);
	free(c->source);
	free(c);
}

int conf_heap_defaults(const struct conf *c, const char *name, struct conf_heap *out)
{
	int rc = conf_check_heap_name(name);

	if (rc)
		return rc;
	*out = (struct conf_heap){
		.size = round_pow2(c ? c->default_heap_size : DEF_HEAP_SIZE),
		.min_block = DEF_MIN_BLOCK,
		.chunk = DEF_CHUNK,
		.layout = CONF_LAYOUT_EXTENTS,
		.cache = CONF_CACHE_AUTO,
		.writers = CONF_WRITERS_MANY,
		.replicate = CONF_REPLICATE_NONE,
		.pin = false,
		.direct_map = false,
		.inodes = 0,
		.image = NULL,
		.line = 0,
	};
	strcpy(out->name, name);
	return 0;
}

uint64_t conf_heap_inodes(const struct conf_heap *h)
{
	uint64_t n = h->size / CONF_INODES_PER;

	if (h->inodes)
		return h->inodes;
	return n < CONF_INODES_DERIVED_MIN ? CONF_INODES_DERIVED_MIN :
	       n > CONF_INODES_DERIVED_MAX ? CONF_INODES_DERIVED_MAX : n;
}

static void each_in(const cfg_opt_t *opts, const char *section,
		    void (*fn)(const char *section, const char *option, void *arg), void *arg)
{
	for (const cfg_opt_t *o = opts; o->name; o++) {
		fn(section, o->name, arg);
		if (o->type == CFGT_SEC)
			each_in(o->subopts, o->name, fn, arg);
	}
}

void conf_each_option(void (*fn)(const char *section, const char *option, void *arg),
		      void *arg)
{
	each_in(root_opts, "", fn, arg);
}
