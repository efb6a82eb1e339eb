/*
 * conf.h — heapfs configuration: the one place that reads config (libconfuse) and turns
 * it into policy structs.  Everything else reads only these structs.
 *
 * Errors are printed as "heapfs: FILE:LINE: what is wrong" (one line each) to the stream
 * the caller passes; loading fails with -EINVAL when there was any.
 *
 * Threads: loads are serialised internally (libconfuse's lexer is global); a struct conf
 * is read-only after loading and may be shared.
 */
#ifndef HEAPFS_CONF_H
#define HEAPFS_CONF_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum conf_layout { CONF_LAYOUT_EXTENTS, CONF_LAYOUT_CONTIGUOUS };
enum conf_cache { CONF_CACHE_AUTO, CONF_CACHE_KEEP, CONF_CACHE_DIRECT };
enum conf_writers { CONF_WRITERS_MANY, CONF_WRITERS_SINGLE };
enum conf_replicate { CONF_REPLICATE_NONE, CONF_REPLICATE_ASYNC, CONF_REPLICATE_SYNC };

#define CONF_NAME_MAX 255

/* Limits the config enforces (added by B; the allocator's: buddy.h BUDDY_*_ORDER). */
#define CONF_MIN_BLOCK_MIN UINT64_C(64)         /* min_block range: a cache line .. */
#define CONF_MIN_BLOCK_MAX (UINT64_C(1) << 20)  /* .. a stripe */
#define CONF_HEAP_MAX (UINT64_C(1) << 40)       /* largest heap (BUDDY_MAX_ORDER) */
#define CONF_SIZE_BUF 24                        /* room for conf_format_size() */
/* Inode limits of a heap (`inodes`): the most a config may ask for (the daemon's inode
 * table), and the rule for `inodes = 0` (conf_heap_inodes): one inode per
 * CONF_INODES_PER bytes of heap, clamped to CONF_INODES_DERIVED_MIN .. _MAX. */
#define CONF_INODES_MAX ((UINT64_C(1) << 28) - 1)
#define CONF_INODES_PER (UINT64_C(8) << 10)          /* like tmpfs: one per 2 pages */
#define CONF_INODES_DERIVED_MIN UINT64_C(1024)
#define CONF_INODES_DERIVED_MAX (UINT64_C(1) << 20)
/* What the replication link takes (replica.h REP_NODE_MAX, rep_start): a node name of
 * 1..64 bytes '!'..'~', a timeout of at least 20 ms. */
#define CONF_NODE_MAX 64
#define CONF_TIMEOUT_MIN_MS 20u
/* The object segment's smallest size: its header block and its map block, each of
 * max(4K, min_block) bytes (docs/IMAGE.md). */
#define CONF_SEG_HDR_BLOCK (UINT64_C(4) << 10)

struct conf_heap {
	char name[CONF_NAME_MAX + 1];
	uint64_t size;      /* bytes, already rounded up to a power of two */
	uint64_t min_block; /* power of two, 64 .. 1M, <= size */
	uint64_t chunk;     /* power of two, 4K .. CONF_HEAP_MAX; may exceed size (the
			       allocator caps it) */
	enum conf_layout layout;
	enum conf_cache cache;
	enum conf_writers writers;
	enum conf_replicate replicate;
	bool pin;
	bool direct_map;    /* libheapfs clients may map the heap's memory (a memfd) */
	uint64_t inodes;    /* most inodes (files, dirs, links) in the heap; 0: derived */
	char *image;        /* NULL when unset/empty */
	int line;           /* where it was declared (0 for heaps made at run time) */
};

struct conf_objects {
	uint64_t size;      /* power of two, >= 2 * max(CONF_SEG_HDR_BLOCK, min_block) */
	uint64_t min_block;
	enum conf_writers writers;
	bool direct_map;    /* libheapfs clients may map the segment (find without a round trip) */
	char *image;        /* NULL when unset */
};

struct conf_pool {
	uint64_t size;      /* as given (not rounded); size and donor_size 1 .. CONF_HEAP_MAX;
			       socket <= 107 bytes */
	uint64_t donor_size;
	unsigned max_donors;
	uint64_t max_process_memory;
	char *socket;
	bool configured;    /* the config has a pool section (the embedded default does):
			       only then is the socket made and do donors join */
};

struct conf_partner {
	bool present;       /* a partner section was given */
	char *node, *listen, *connect, *secret_file;
	unsigned timeout_ms; /* >= CONF_TIMEOUT_MIN_MS; 2000 when there is no partner section */
	bool auto_failover;
	/* Pacemaker (issue 19): managed: every replicated heap starts as a mirror, only
	 * promote/demote change roles (auto_failover is refused); on_peer_lost: a program
	 * asked whether an owner that lost its partner may go on alone (NULL: none), given
	 * on_peer_lost_timeout_ms to answer */
	bool managed;
	char *on_peer_lost;
	unsigned on_peer_lost_timeout_ms;
	bool encrypt;       /* seal every frame of the link (default true) */
};  /* when present: node (CONF_NODE_MAX bytes '!'..'~'), listen, connect (HOST:PORT),
       secret_file are all set */

struct conf {
	char *source;       /* file name, or "<default>" for the embedded default */
	uint64_t default_heap_size;
	struct conf_heap *heaps;
	unsigned nheaps;
	struct conf_objects objects;
	struct conf_pool pool;
	struct conf_partner partner;
};

/* The embedded default config, as text (what --print-default-config prints). */
const char *conf_default_text(void);

/* Load and validate; on success *out is owned by the caller (conf_free).  On any problem
 * every error is printed to errs as "heapfs: FILE:LINE: message" and -EINVAL returned.
 * -ENOENT/-EACCES (also printed) when the file cannot be read. */
int conf_load_file(const char *path, FILE *errs, struct conf **out);
int conf_load_string(const char *text, const char *source, FILE *errs, struct conf **out);
int conf_load_default(struct conf **out);
void conf_free(struct conf *c);

/* The policy of a heap made at run time (mkdir heaps/NAME): defaults plus default_heap_size.
 * -ENAMETOOLONG / -EINVAL for a bad name. */
int conf_heap_defaults(const struct conf *c, const char *name, struct conf_heap *out);

/* The inode limit of a heap: inodes when set, else derived from the size (see
 * CONF_INODES_PER). */
uint64_t conf_heap_inodes(const struct conf_heap *h);
/* Every option the parser accepts, from its schema: fn(section, option, arg) with section
 * "" for the top level ("heap", "objects", "pool", "partner" for the sections' options;
 * a section itself is reported at its parent's level).  For the manual's test. */
void conf_each_option(void (*fn)(const char *section, const char *option, void *arg),
		      void *arg);

/* Parsing helpers shared with the command-line tools. */
int conf_parse_size(const char *s, uint64_t *out);        /* "64M", "4K", "1G", "123" */
int conf_parse_duration_ms(const char *s, unsigned *out); /* "2s", "500ms" */
/* (Added by B.)  "4K", "256M", "1G" when v is an exact multiple, else plain bytes. */
const char *conf_format_size(uint64_t v, char buf[CONF_SIZE_BUF]);
/* (Added by B.)  0, or -EINVAL (empty, ".", "..", contains '/', not valid UTF-8: the name
 * appears in JSON) / -ENAMETOOLONG (> 255). */
int conf_check_heap_name(const char *name);
const char *conf_layout_name(enum conf_layout l);
const char *conf_cache_name(enum conf_cache c);
const char *conf_writers_name(enum conf_writers w);
const char *conf_replicate_name(enum conf_replicate r);

#endif
