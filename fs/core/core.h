/*
 * core.h — the daemon's core (fs/core/): namespaces, inodes, file data, heaps, images,
 * status, the change seam.
 * No FUSE type appears here: images restore through these functions and a mirror applies
 * its partner's changes through them (the applier, image.c).  The FUSE edge (fs/edge/) is
 * the only code that includes libfuse.
 *
 * Layers: ops.c translates FUSE requests (the only caller of fuse_reply_*) into the
 * hfs_* functions below; every mutation of file data or namespace is one hfs_* function
 * (hfs_write, hfs_truncate, hfs_create, hfs_unlink, hfs_rename, hfs_link, hfs_setattr, ...)
 * which, while it still holds the lock that orders the change, hands it as one value to
 * the observers registered for the heap (change.c: replication's records, ...).  The
 * caller passes a completion (struct hfs_completion) that comes back filled when an
 * observer must be waited for.  All functions return 0 / a non-negative value or -errno.
 *
 * Locking rule (see docs/DESIGN.md "Filesystem"):
 *   - hfs.ns (rwlock): the namespace — every directory's entry table, dir.parent, the heap
 *     list.  Lookup/readdir take it shared (status snapshots only to copy the heap list,
 *     not to render); create/unlink/rename/link/mkdir/rmdir take it exclusive, so a
 *     rename is atomic.
 *   - inode.lock (rwlock): the inode's attributes and file data (extents).  Taken after
 *     hfs.ns when both are needed; two inode locks are only taken under hfs.ns exclusive.
 *   - inode.refs (atomic): lookups held by the kernel + directory entries + open handles
 *     (+1 forever for the fixed inodes).  The thread that drops it to 0 destroys the inode
 *     (frees its blocks), so nothing else may touch an inode it holds no reference to.
 *   - heap.refs (atomic): the heap list + every inode of the heap; the last put destroys
 *     the buddy heap.
 * A name starting with __ expects the caller to hold the lock its comment names.
 */
#ifndef HEAPFS_CORE_H
#define HEAPFS_CORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <uthash.h>

#include "buddy.h"
#include "conf.h"

/* Inode numbers as the kernel sees them (FUSE's fuse_ino_t is the same 64 bits); the
 * root of the mount is 1. */
typedef uint64_t hfs_ino_t;
#define HFS_ROOT_INO 1

#define HFS_NAME_MAX 255
#define HFS_TIMEOUT 86400.0 /* attr/entry cache: everything changes only through us */
#define HFS_BLKSIZE (128 * 1024) /* st_blksize: cp and friends size their buffers by it */

enum hfs_kind { HFS_DIR, HFS_REG, HFS_LNK, HFS_SPECIAL, HFS_STATUS };

/* Which namespace a directory belongs to: indexes the table of per-namespace operations
 * (dir.c, struct hfs_ns_ops), which alone decides what may be created, removed, linked. */
enum hfs_role {
	HFS_R_PLAIN,  /* a directory inside a heap */
	HFS_R_HEAPDIR, /* heaps/NAME */
	HFS_R_HEAPS,  /* heaps/: mkdir makes a heap, rmdir removes one */
	HFS_R_FIXED,  /* root, pool/, .heapfs/...: read-only (EPERM) */
	HFS_R_OBJECTS, /* objects/: flat, regular files only, each one named object */
	HFS_R_POOL,   /* pool/: flat, regular files only, in donor memory (pool.c) */
	HFS_R_N,
};

enum hfs_status_kind { HFS_ST_STATS, HFS_ST_HEAP, HFS_ST_MAP,
		       HFS_ST_FEATURE, /* .heapfs/NAME a feature registered (status.c) */
		       HFS_ST_IMAGE /* .heapfs/images/NAME: a stream, not rendered */ };

struct hfs_inode;
struct hfs_heap;
struct hfs_snap; /* status.c */
struct hfs_completion; /* change.c */

/* What the feature behind a heap does around the core's changes to it: set by whoever
 * creates the heap (h->ops, never NULL; a NULL member: nothing to do).  The core calls
 * each as one indirect call, never a feature by name. */
struct hfs_heap_ops {
	/* pool/: make `bytes` more bytes available before a file grows (donors) */
	void (*make_room)(struct hfs_heap *h, uint64_t bytes);
	/* direct/: does a client map a range of i now?  Then its blocks must neither move
	 * nor go (EBUSY).  i->lock held for writing. */
	bool (*busy)(struct hfs_inode *i);
	/* objects/: around every change of i's data or attributes (hfs_change_lock/unlock,
	 * i->lock held for writing): hold the segment, then write i's slot when it changed
	 * and let the segment go. */
	void (*hold)(struct hfs_inode *i);
	void (*release)(struct hfs_inode *i, bool changed);
};

struct hfs_heap {
	struct conf_heap pol;
	struct buddy *b;
	unsigned min_order;
	bool from_config;
	bool objects;                    /* the object segment (objects.c) */
	atomic_uint_fast64_t refs;
	atomic_uint_fast64_t files;      /* live regular files (linked or open) */
	atomic_uint_fast64_t freed;      /* bytes freed since the last drain */
	atomic_uint_fast64_t held;       /* bytes of blocks files hold (file.c's room check) */
	atomic_uint_fast64_t next_id;    /* identity of the next inode (the heap dir is 1) */
	uint64_t max_inodes;             /* the inode limit (conf_heap_inodes) */
	atomic_uint_fast64_t inodes;     /* charged: its inodes + extra hard links (as tmpfs) */
	atomic_uint_fast64_t ispace;     /* bytes of inode space taken: HFS_INODE_SPACE per
					  * inode or extra link, plus what its xattrs cost */
	atomic_uint_fast64_t meta;       /* daemon bytes of its inodes, entries, targets, xattrs */
	struct hfs_inode *dir;           /* heaps/NAME, NULL once removed (hfs.ns) */
	struct hfs_inode *st_heap, *st_map, *st_image; /* .heapfs/{heaps,maps,images}/NAME */
	const struct hfs_heap_ops *ops; /* the feature's (heap.c: none, dm.c: direct_map) */
	/* held shared by every change of file data or attributes in the heap (namespace
	 * changes hold hfs.ns): an image snapshot holds it exclusive while it forks */
	pthread_rwlock_t quiesce;
	struct hfs_repl_heap *repl;      /* replicated (fs/repl): owned here or a mirror */
	/* changes come from the partner only: users get EROFS (hfs_writable); set by
	 * replication when it adopts the heap and at every takeover */
	_Atomic bool mirror;
	atomic_uint observers;           /* bit k: observer k watches it (change.c) */
	struct hfs_dm *dm;               /* direct_map: shared metadata (dm.c), else NULL */
};

/* One buddy block of a file: file bytes [foff, foff + 2^order) live at heap offset hoff. */
struct hfs_ext {
	uint64_t foff;
	uint64_t hoff;
	unsigned order;
};

struct hfs_dirent {
	UT_hash_handle hh;
	struct hfs_inode *inode; /* holds one reference */
	size_t len;
	char name[];
};

struct hfs_xattr {
	UT_hash_handle hh;
	void *value;
	size_t size;
	char name[];
};

struct hfs_inode {
	hfs_ino_t ino;
	uint64_t gen;
	uint64_t id; /* identity in its heap, kept by images and the partner (0: no heap) */
	atomic_uint_fast64_t refs;
	pthread_rwlock_t lock;
	enum hfs_kind kind;
	struct hfs_heap *heap; /* NULL outside heaps */

	/* attributes: lock */
	mode_t mode;
	uid_t uid;
	gid_t gid;
	nlink_t nlink;
	uint64_t size;
	dev_t rdev;
	struct timespec atime, mtime, ctime;
	struct timespec btime; /* creation on this node (statx); set once, read without lock */
	bool tmpfile; /* hfs.ns: made by O_TMPFILE and never named yet (hfs_link may name it) */
	struct hfs_xattr *xattrs;
	size_t xattr_bytes; /* what its xattrs cost (charged to the heap's inode space) */

	union {
		struct { /* HFS_DIR: hfs.ns */
			enum hfs_role role;
			struct hfs_dirent *ents;
			struct hfs_inode *parent;
			uint64_t nents;
		} dir;
		struct { /* HFS_REG: lock */
			struct hfs_ext *ext;
			size_t n, alloc;
			uint64_t cap;     /* bytes covered by extents: [0, cap) */
			uint64_t held;    /* bytes of buddy blocks held */
			unsigned writers; /* opens for writing */
			unsigned opens;   /* all opens */
			char *oname;      /* an object's name in the segment map, NULL when
					     unlinked or not an object */
			uint32_t oslot;   /* its map slot + 1 (0: none) */
			atomic_uint maps; /* ranges mapped by libheapfs clients (fs/direct) */
		} file;
		struct { /* HFS_LNK */
			char *target;
		} lnk;
		struct { /* HFS_STATUS */
			enum hfs_status_kind what;
			struct hfs_heap *heap; /* HEAP and MAP files: holds a heap reference */
			const struct hfs_status_file *file; /* FEATURE files */
			struct hfs_snap *last;     /* lock: the newest snapshot while one is open */
		} st;
	};
};

/* When a read updates atime (the kernel leaves it to us: FUSE inodes are S_NOATIME). */
enum hfs_atime_mode {
	HFS_ATIME_REL,    /* when atime is not after mtime or ctime, or a day old (relatime) */
	HFS_ATIME_STRICT, /* every access */
	HFS_ATIME_NO,     /* never */
};

struct hfs_fs {
	struct conf *conf;
	char *mountpoint;
	pthread_rwlock_t ns;
	struct hfs_inode *root, *heaps, *objects, *pool, *dot, *dot_heaps, *dot_maps, *dot_images;
	struct hfs_heap **heapv; /* hfs.ns */
	unsigned nheaps;
	uid_t uid;
	gid_t gid;
	bool killpriv; /* FUSE_HANDLE_KILLPRIV_V2 negotiated: we clear suid/sgid (io.c) */
	bool no_killpriv; /* -o no_killpriv_v2: do not ask for it */
	unsigned readahead_kb; /* -o readahead_kb=N, 0: leave the kernel's */
	int64_t spin_ns; /* how long an idle worker polls the device before sleeping (io.c) */
	enum { HFS_URING_OFF, HFS_URING_OFFERED, HFS_URING_ASKED } io_uring; /* FUSE over io_uring:
		* -o io_uring=off, where the kernel offers it (default), -o io_uring[=on] (main.c) */
	_Atomic bool uring_live; /* the ring workers serve requests: .heapfs/stats "transport" */
	enum hfs_atime_mode atime; /* -o relatime (default), strictatime, noatime */
	bool nodiratime;           /* -o nodiratime: directories keep their atime */
};
extern struct hfs_fs hfs;

/* Who asks: credentials for new inodes, and whose write may clear suid/sgid (NULL where
 * a function takes one: the daemon itself, a restore or a partner's change).  in_group:
 * is the caller in group gid beyond its own gid (supplementary groups; NULL: no)?  Asked
 * only in the rare case that decides something (file.c, __kill_suid). */
struct hfs_ctx {
	uid_t uid;
	gid_t gid;
	bool (*in_group)(const struct hfs_ctx *ctx, gid_t gid);
	void *arg; /* in_group's */
	mode_t umask; /* with acl */
	bool acl;     /* a user's create: the parent's default ACL or else umask applies */
};

/* log.c — the daemon's one logging call, with syslog's levels (the numbers are
 * syslog's).  Messages name no "heapfs: " prefix: the sink adds what it needs.  main()
 * chooses the threshold (-o log_level, default info) and the sink (stderr, or syslog). */
enum { HFS_LOG_ERR = 3, HFS_LOG_WARNING, HFS_LOG_NOTICE, HFS_LOG_INFO, HFS_LOG_DEBUG };
#define HFS_LOG_MAX 1024 /* bytes of one message; longer ones are cut */
typedef void (*hfs_log_sink)(int level, const char *msg, void *arg);
void hfs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool hfs_log_on(int level);
/* Messages at or below max go to sink(arg) (NULL: stderr) from now on. */
void hfs_log_to(int max, hfs_log_sink sink, void *arg);
void hfs_log_stderr(int level, const char *msg, void *arg); /* the stderr sink */
int hfs_log_level(const char *name); /* "error" .. "debug": the level, or -1 */
/* A stream each of whose lines is logged at level (one stream per user; NULL: no memory). */
FILE *hfs_log_stream(int level);

/* inode.c — inode table (two-level, lock-free reads), generations, references. */
int hfs_itable_init(void);
void hfs_itable_fini(void);
struct hfs_inode *hfs_inode_new(enum hfs_kind kind, mode_t mode, uid_t uid, gid_t gid,
				struct hfs_heap *heap);
struct hfs_inode *hfs_iget(hfs_ino_t ino); /* caller knows the kernel holds a reference */
/* Inode number ino if it is still alive, with one reference taken for the caller, else
 * NULL: for a file handle, whose inode the kernel may have forgotten (export lookups). */
struct hfs_inode *hfs_iget_ref(hfs_ino_t ino);
void hfs_iref(struct hfs_inode *i, uint64_t n);
void hfs_iput(struct hfs_inode *i, uint64_t n);
/* Destroy an inode made by hfs_inode_new that nothing references yet. */
void hfs_inode_discard(struct hfs_inode *i);
/* Give i of a heap the identity a restore found (an image, a segment): the heap's next new
 * inode then gets a larger one. */
void hfs_inode_set_id(struct hfs_inode *i, uint64_t id);
void __hfs_stat(const struct hfs_inode *i, struct stat *st);
void hfs_stat(struct hfs_inode *i, struct stat *st);
void hfs_now(struct timespec *ts);
/* Times as images keep them: nanoseconds since the epoch (before it: negative). */
static inline int64_t hfs_ts_ns(struct timespec t)
{
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline struct timespec hfs_ns_ts(int64_t ns)
{
	int64_t s = ns / 1000000000, n = ns % 1000000000;

	if (n < 0) { /* tv_nsec is never negative */
		s--;
		n += 1000000000;
	}
	return (struct timespec){ .tv_sec = s, .tv_nsec = n };
}

/* Monotonic clock in nanoseconds, for spin windows. */
static inline int64_t hfs_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return hfs_ts_ns(t);
}

/* dir.c — namespace. Entry-returning calls take one lookup reference for the kernel. */
int hfs_mount_tree(void);
/* What may happen in the directories of a namespace (a row of dir.c's table; NULL hooks:
 * nothing to do).  The hooks run under hfs.ns exclusive, i->lock not held. */
#define HFS_KIND(k) (1u << (k))
struct hfs_ns_ops {
	unsigned kinds; /* HFS_KIND()s hfs_create may make here (0: entries are fixed, EPERM) */
	bool links;     /* hard links may be made here */
	/* mkdir/rmdir of name in dir, instead of the generic directory ones */
	int (*mkdir)(struct hfs_inode *dir, const char *name, struct hfs_inode **out);
	int (*rmdir)(struct hfs_inode *dir, struct hfs_inode *i);
	struct hfs_heap *(*heap)(void); /* heap of new entries (else the directory's) */
	int (*init)(struct hfs_inode *i);  /* a new inode before its first entry */
	int (*added)(struct hfs_inode *i, const char *name); /* an entry now names i */
	void (*removed)(struct hfs_inode *i);                /* i lost its entry */
};
/* A feature's namespace (HFS_R_OBJECTS, HFS_R_POOL): before its first entry is made, in
 * one thread (before the mount).  Unregistered, its directory is fixed. */
void hfs_ns_register(enum hfs_role role, const struct hfs_ns_ops *ops);
int hfs_lookup(struct hfs_inode *dir, const char *name, struct hfs_inode **out);
/* The directory that holds directory dir (the root's: itself), referenced for the kernel:
 * -ENOENT once dir is removed, -ENOTDIR. */
int hfs_lookup_parent(struct hfs_inode *dir, struct hfs_inode **out);
/* The mutations take the caller's completion c last (NULL: nobody waits; change.c). */
int hfs_create(struct hfs_inode *dir, const char *name, mode_t mode, dev_t rdev,
	       const char *target, const struct hfs_ctx *ctx, struct hfs_inode **out,
	       struct hfs_completion *c);
int hfs_unlink(struct hfs_inode *dir, const char *name, struct hfs_completion *c);
int hfs_rmdir(struct hfs_inode *dir, const char *name, struct hfs_completion *c);
int hfs_rename(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
	       const char *nname, unsigned flags, struct hfs_completion *c);
/* renameat2's RENAME_WHITEOUT (flags: RENAME_NOREPLACE or 0): as hfs_rename, and dir/name
 * then names a whiteout, a character device 0:0 of ctx's (overlayfs's upper layer). */
int hfs_rename_whiteout(struct hfs_inode *dir, const char *name, struct hfs_inode *ndir,
			const char *nname, unsigned flags, const struct hfs_ctx *ctx,
			struct hfs_completion *c);
int hfs_link(struct hfs_inode *i, struct hfs_inode *ndir, const char *nname,
	     struct hfs_completion *c);
/* O_TMPFILE: a new regular file of mode (umask/ACL as hfs_create) in dir's heap with no
 * name (nlink 0), counted against the heap while it lives, freed at its last release
 * unless hfs_link names it first; *out holds the kernel's lookup reference. */
int hfs_tmpfile(struct hfs_inode *dir, mode_t mode, const struct hfs_ctx *ctx,
		struct hfs_inode **out, struct hfs_completion *c);
/* May name be a new entry?  0, -EINVAL ("", "." "..", a '/') or -ENAMETOOLONG.  create,
 * link and rename check the names they add. */
int hfs_name_check(const char *name);
/* The heap whose files a directory holds (its namespace decides; NULL: none). */
struct hfs_heap *hfs_dir_heap(const struct hfs_inode *dir);
/* Fixed tree building and heap directories (called by heap.c under hfs.ns exclusive). */
int __hfs_dir_add(struct hfs_inode *dir, const char *name, struct hfs_inode *i);
int __hfs_dir_del(struct hfs_inode *dir, const char *name);
struct hfs_inode *__hfs_dir_find(struct hfs_inode *dir, const char *name);
/* A node owned by the mount (mounting user, no heap) added to dir: NULL on failure. */
struct hfs_inode *__hfs_fixed_add(struct hfs_inode *dir, const char *name,
				  enum hfs_kind kind, mode_t mode, int what);

/* A directory listing taken at readdir offset 0; later offsets index into it. */
struct hfs_dirsnap {
	pthread_mutex_t lock;
	char **names;
	size_t n;
	size_t bytes; /* charged to the snapshot budget (hfs_snapshot_charge) */
};
int hfs_dir_snapshot(struct hfs_inode *dir, struct hfs_dirsnap *s);
void hfs_dirsnap_clear(struct hfs_dirsnap *s);
/* Entry idx of the snapshot, re-checked against the live directory (".", ".." first).
 * 0 with *st (and *out referenced when ref, NULL for "." and "..") if it still exists,
 * -ENOENT if it is gone, 1 past the end. */
int hfs_dir_entry(struct hfs_inode *dir, struct hfs_dirsnap *s, size_t idx, bool ref,
		  const char **name, struct stat *st, struct hfs_inode **out);

/* heap.c — heaps from policy, mkdir/rmdir of heaps, statfs. */
int hfs_heaps_init(void);
/* A heap of policy pol, in no list (the object segment's): 0 or -errno. */
int hfs_heap_new(const struct conf_heap *pol, bool from_config, struct hfs_heap **out);
/* A copy of the heap list, each heap referenced (hfs_heaps_put() drops them); NULL when
 * out of memory.  Takes hfs.ns shared only while it copies. */
struct hfs_heap **hfs_heaps_get(unsigned *n);
void hfs_heaps_put(struct hfs_heap **v, unsigned n);
/* The same with its memory from the caller's source (alloc/source.h), kept by the caller. */
struct msrc;
int hfs_heap_new_src(const struct conf_heap *pol, struct msrc *src, struct hfs_heap **out);
int __hfs_heap_mkdir(const char *name, const struct conf_heap *pol, bool from_config,
		     struct hfs_inode **dir);
int __hfs_heap_rmdir(struct hfs_inode *dir);
void hfs_heap_get(struct hfs_heap *h);
void hfs_heap_put(struct hfs_heap *h);
/* The inode limit: take one (0, or -ENOSPC at the limit) / give one back.  Every inode of
 * a heap takes one, and so does every hard link beyond a file's first name. */
int hfs_heap_inode_take(struct hfs_heap *h);
void hfs_heap_inode_give(struct hfs_heap *h);
/* The heap's inode space (max_inodes * HFS_INODE_SPACE bytes, as tmpfs's ispace): an
 * inode or link takes HFS_INODE_SPACE of it, an xattr its cost (xattr.c); -ENOSPC when
 * full. */
#define HFS_INODE_SPACE 1024
int hfs_heap_space_take(struct hfs_heap *h, uint64_t bytes);
void hfs_heap_space_give(struct hfs_heap *h, uint64_t bytes);
/* Whole inodes still free in h's inode space (what `df -i` shows free). */
uint64_t hfs_heap_ifree(struct hfs_heap *h);
/* Charge (delta > 0) or credit daemon memory used for the heap's metadata; h may be NULL. */
void hfs_heap_meta(struct hfs_heap *h, int64_t delta);
int hfs_statfs(struct hfs_inode *i, struct statvfs *st);
/* Freed blocks park in per-CPU caches and empty chunks stay committed until a drain:
 * hfs_heap_settle() drains once a chunk's worth was freed; the housekeeper drains every
 * heap with anything freed once a second, so RSS follows what files hold. */
void hfs_heap_settle(struct hfs_heap *h);
/* A writer-preferring rwlock: a writer waits only for the readers already in, so a stream
 * of readers cannot starve it (hfs.ns, a heap's quiesce, the object segment's lock). */
void hfs_rwlock_init_writers(pthread_rwlock_t *l);
/* A condition variable whose timed waits take CLOCK_MONOTONIC deadlines (hfs_now_ns), so a
 * change of the wall clock neither shortens nor stretches them; 0 or -errno. */
int hfs_cond_init_monotonic(pthread_cond_t *cv);
int hfs_housekeeper_start(void);
void hfs_housekeeper_stop(void);

/* file.c — file data in buddy blocks. */
/* who: the caller (root keeps suid/sgid bits on write, as with CAP_FSETID; NULL: the
 * daemon) */
int hfs_open(struct hfs_inode *i, int flags, const struct hfs_ctx *who,
	     struct hfs_completion *c);
void hfs_release(struct hfs_inode *i, int flags);
/* Writes buf at off: the bytes written (short when the heap runs out part-way), or -errno. */
int hfs_write(struct hfs_inode *i, const void *buf, size_t len, off_t off,
	      const struct hfs_ctx *who, struct hfs_completion *c);
/* Give back a write an observer could not follow (the partner had no room): size back to
 * old_size (when it is still end), the bytes below old_size written again.  -ESTALE: the
 * file changed since. */
int hfs_write_undo(struct hfs_inode *i, uint64_t old_size, uint64_t off, uint64_t end);
/* Copy bytes [off, off + len) of regular file i (inside its size) into dst; i->lock held
 * (either way).  0 or -errno (-EINVAL: not a file, or past its size). */
int __hfs_file_read(struct hfs_inode *i, uint64_t off, uint64_t len, void *dst);
/* Read: fills iov (up to *niov entries; may point into a bounce buffer *bounce the caller
 * frees) with the bytes; hfs_read_end() drops the lock taken on success. */
ssize_t hfs_read_begin(struct hfs_inode *i, size_t len, off_t off, struct iovec *iov,
		       int *niov, void **bounce);
void hfs_read_end(struct hfs_inode *i);
int hfs_truncate(struct hfs_inode *i, uint64_t size, struct hfs_completion *c);
/* Attribute changes, in the core's own terms (the FUSE edge translates its mask). */
enum {
	HFS_SET_MODE = 1u << 0,
	HFS_SET_UID = 1u << 1,
	HFS_SET_GID = 1u << 2,
	HFS_SET_SIZE = 1u << 3,
	HFS_SET_ATIME = 1u << 4,
	HFS_SET_MTIME = 1u << 5,
	HFS_SET_ATIME_NOW = 1u << 6,
	HFS_SET_MTIME_NOW = 1u << 7,
	HFS_SET_CTIME = 1u << 8, /* else ctime becomes now */
};
struct hfs_attr {
	mode_t mode;
	uid_t uid;
	gid_t gid;
	uint64_t size;
	struct timespec atime, mtime, ctime;
};
int hfs_setattr(struct hfs_inode *i, const struct hfs_attr *attr, unsigned to_set,
		const struct hfs_ctx *who, struct hfs_completion *c);
/* i (a file, directory or symlink of a heap) was read: its atime becomes now when the
 * mount's atime mode says so (hfs.atime), told to the partner and to the kernel's cache.
 * Nothing on a mirror. */
void hfs_accessed(struct hfs_inode *i);
/* What a change of i's data by who (fallocate) clears first, as a write does: suid, sgid
 * unless it is the group-exec-less kind and who is in the file's group, and
 * security.capability. */
int hfs_kill_priv(struct hfs_inode *i, const struct hfs_ctx *who, struct hfs_completion *c);
int hfs_fallocate(struct hfs_inode *i, int mode, off_t off, off_t len, struct hfs_completion *c);
/* The largest file of heap h: its size for layout = contiguous (one block), else
 * HFS_FILE_MAX (files are sparse: holes hold no block). */
#define HFS_FILE_MAX ((uint64_t)INT64_MAX)
uint64_t hfs_file_max(const struct hfs_heap *h);
/* SEEK_DATA / SEEK_HOLE (whence) from off: the offset, or -ENXIO (off at or past the
 * size), -EINVAL. */
int64_t hfs_lseek(struct hfs_inode *i, int64_t off, int whence);
/* copy_file_range: up to len bytes of in from ioff to out at ooff (any heaps of the mount;
 * in may be out), through the same core calls a write and a punch make, so replication
 * sees ordinary changes; a hole of in stays a hole in out.  The bytes copied (short at
 * in's end, or when out's heap fills after the first byte), or -errno. */
int64_t hfs_copy_range(struct hfs_inode *in, uint64_t ioff, struct hfs_inode *out, uint64_t ooff,
		       uint64_t len, const struct hfs_ctx *who, struct hfs_completion *c);
void hfs_file_free(struct hfs_inode *i);
/* Make the file hold blocks for at least cap bytes (an object always holds its block). */
int hfs_file_reserve(struct hfs_inode *i, uint64_t cap);
/* A new file takes the allocated block (hoff, order) as its data, size bytes of it. */
int hfs_file_adopt(struct hfs_inode *i, uint64_t hoff, unsigned order, uint64_t size);
void hfs_file_reclaim(struct hfs_inode *i);
unsigned hfs_file_max_order(struct hfs_inode *i);

/* Lock inode i of a heap for a change of its data or attributes: the heap's quiesce lock
 * shared (an image snapshot waits for changes in flight, and holds new ones off only while
 * it forks), then the inode lock, then what the heap's feature holds (ops->hold). */
static inline void hfs_change_lock(struct hfs_inode *i)
{
	if (i->heap)
		pthread_rwlock_rdlock(&i->heap->quiesce);
	pthread_rwlock_wrlock(&i->lock);
	if (i->heap && i->heap->ops->hold)
		i->heap->ops->hold(i);
}

/* changed: i's data or attributes changed (an object's slot is written again). */
static inline void hfs_change_unlock(struct hfs_inode *i, bool changed)
{
	if (i->heap && i->heap->ops->release)
		i->heap->ops->release(i, changed);
	pthread_rwlock_unlock(&i->lock);
	if (i->heap)
		pthread_rwlock_unlock(&i->heap->quiesce);
}

/* image.c — heap images (docs/IMAGE.md), and the record applier restores go through. */
struct img_r;
struct img_rec;
struct hfs_apply;
/* Write heap h as an image stream to fd; nothing may change h meanwhile. */
int hfs_image_write(struct hfs_heap *h, int fd);
/* Save atomically to path (temporary file, fsync, rename): 0, or -errno with path as it was. */
int hfs_image_save(struct hfs_heap *h, const char *path);
/* Restore the stream in fd into the empty heap h: 0, or -errno with the reason in why. */
int hfs_image_restore(struct hfs_heap *h, int fd, char *why, size_t whylen);
int hfs_apply_begin(struct hfs_heap *h, char *why, size_t whylen, struct hfs_apply **out);
int hfs_apply_rec(struct hfs_apply *a, struct img_r *r, const struct img_rec *rec);
/* The same for a record from memory (a DATA record's bytes at data: replication). */
int hfs_apply_mem(struct hfs_apply *a, struct img_r *r, const struct img_rec *rec,
		  const void *data);
/* From now on changes to inodes without a name (unlinked while open on the owner) are
 * dropped instead of refused: a mirror applying the owner's live changes. */
void hfs_apply_live(struct hfs_apply *a);
/* The inode the applier made for identity id (not referenced for the caller), or NULL. */
struct hfs_inode *hfs_apply_inode(struct hfs_apply *a, uint64_t id);
/* Set the attributes the applies so far disturbed, and go on applying (a mirror). */
int hfs_apply_settle(struct hfs_apply *a);
/* finish: set the attributes the applies disturbed; either way free the applier. */
int hfs_apply_end(struct hfs_apply *a, bool finish);
/* Remove everything in heap h as its applier (a mirror before a full image): 0, or the
 * first -errno (what could be removed is).  The kernel drops its cached names of it. */
int hfs_apply_clear(struct hfs_heap *h);
/* An inode as the image (and its change records) describe it. */
struct img_inode;
void hfs_img_inode(const struct hfs_inode *i, struct img_inode *in);
/* Every heap with image = PATH: restore from PATH if it exists (at mount; messages on
 * stderr as "heapfs: PATH: why") / save to PATH (at a clean unmount). */
int hfs_images_load(void);
int hfs_images_save(void);
/* A consistent image of live heap h, streamed: a child process forked while nothing
 * changes h writes it to the pipe whose read end is *fd (copy-on-write keeps its view).
 * hfs_image_snapshot_end reaps it (killing it if still running): 0 if it wrote a whole
 * image, else -EIO. */
int hfs_image_snapshot(struct hfs_heap *h, int *fd, pid_t *pid);
int hfs_image_snapshot_end(pid_t pid);
/* The same written by the child straight into out (a file the caller opened: no pipe,
 * no copy in this process); hfs_image_snapshot_end says whether it was written whole. */
int hfs_image_snapshot_to(struct hfs_heap *h, int out, pid_t *pid);
/* The same, calling frozen(arg) after the fork while the heap is still held still. */
int hfs_image_snapshot_at(struct hfs_heap *h, int *fd, pid_t *pid, void (*frozen)(void *),
			  void *arg);
/* A live image of heap h, pre-copied (no fork: also for a direct_map heap, whose memory
 * clients share): frozen (hfs.ns and the quiesce lock held) only while the tree without
 * the files' bytes is written into memory and frozen(arg) runs; then a thread streams that
 * into the pipe whose read end is *fd, and each file's bytes as they are at the moment it
 * copies them (under the file's lock, up to its size at the freeze).  So the stream is not
 * one instant's heap: replayed after it, the changes made since frozen() make it the
 * heap's (bytes are overwritten, sizes set, names changed by the same records).  The
 * files are held (a reference each) until hfs_image_live_end, which the caller calls after
 * closing *fd: 0 if the whole stream was written, or -errno. */
struct hfs_live;
int hfs_image_live(struct hfs_heap *h, int *fd, struct hfs_live **lv, void (*frozen)(void *),
		   void *arg);
int hfs_image_live_end(struct hfs_live *lv);

/* xattr.c — user.*, trusted.*, security.* and the POSIX ACL names, stored per inode;
 * each costs HFS_XATTR_ENTRY (its struct hfs_xattr) + name + NUL + value of its heap's
 * inode space (hfs_heap_space_take: ENOSPC when full).  The kernel decides who may set
 * which namespace (trusted.*: CAP_SYS_ADMIN; security.capability: CAP_SETFCAP). */
#define HFS_XATTR_ENTRY 80
#define HFS_ACL_ACCESS "system.posix_acl_access"
#define HFS_ACL_DEFAULT "system.posix_acl_default"
int hfs_setxattr(struct hfs_inode *i, const char *name, const void *value, size_t size,
		 int flags, struct hfs_completion *c);
/* flags: the daemon itself sets (a restore, a takeover) HFS_XATTR_STATE, which users may
 * only read: "interrupted" on a file that was open for writing on a lost owner. */
#define HFS_XATTR_RESTORE (1 << 30)
/* flags: the caller setting an access ACL is neither in the file's group nor privileged:
 * setgid goes (posix_acl_update_mode; the edge knows the caller's groups). */
#define HFS_XATTR_KILL_SGID (1 << 29)
#define HFS_XATTR_STATE "user.heapfs.state"
ssize_t hfs_getxattr(struct hfs_inode *i, const char *name, void *buf, size_t size);
/* The names, sorted (as tmpfs lists them), without the virtual user.heapfs.* ones (read
 * them by name) and, unless trusted (the caller is root), without trusted.*. */
ssize_t hfs_listxattr(struct hfs_inode *i, char *buf, size_t size, bool trusted);
/* i->lock held, i's mode just changed (chmod): its access ACL follows (as
 * posix_acl_chmod). */
void __hfs_acl_chmod(struct hfs_inode *i, struct hfs_completion *c);
/* i->lock held, i written, truncated or chowned: its file capability goes (the kernel
 * leaves that to us under FUSE_HANDLE_KILLPRIV_V2, hfs.killpriv); not on the applier's
 * changes (the owner's record says it). */
void __hfs_xattr_kill_priv(struct hfs_inode *i, struct hfs_completion *c);
/* A user's new inode i (not yet named) in dir: dir's default ACL makes i's access ACL
 * (and a directory's default) and masks its mode, else the umask does (posix_acl_create).
 * hfs.ns held.  0 or -ENOSPC/-ENOMEM (i unchanged but its mode). */
int hfs_acl_inherit(struct hfs_inode *dir, struct hfs_inode *i, mode_t umask);
/* After the CREATE change of i: tell the observers of the xattrs i was created with. */
void hfs_xattr_announce(struct hfs_inode *i, struct hfs_completion *c);

/* acl.c — the xattr form of a POSIX ACL (little-endian version 2, {tag, perm, id}s). */
int hfs_acl_valid(const void *v, size_t size); /* 0, or -EINVAL: malformed */
/* The mode's rwx bits as the (valid) access ACL v says them; true when v says no more. */
bool hfs_acl_equiv(const void *v, size_t size, mode_t *mode);
void hfs_acl_chmod(void *v, size_t size, mode_t mode); /* v's owner/mask/other := mode */
/* A default ACL v (a copy) becomes a new inode's access ACL for the requested mode,
 * which it masks; true when the result says no more than the mode. */
bool hfs_acl_create(void *v, size_t size, mode_t *mode);
int hfs_removexattr(struct hfs_inode *i, const char *name, struct hfs_completion *c);
void hfs_xattr_free(struct hfs_inode *i);

/* status.c — JSON snapshots of .heapfs/ files: *buf is shared and read-only until
 * hfs_status_put(); -ENFILE when the snapshot budget is spent. */
#define HFS_MAP_MAX_BLOCKS 16384 /* a map lists at most this many blocks */
struct json_t;
/* A .heapfs/NAME file of a feature, rendered when opened: its JSON, or (json NULL) size
 * bytes that copy() writes (.heapfs/segment).  setxattr: a user.* name set on it (NULL:
 * EPERM as on every status file).  Registered before hfs_mount_tree, which makes the
 * files after .heapfs/stats in the order they were registered; in one thread. */
struct hfs_status_file {
	const char *name;
	struct json_t *(*json)(void); /* a new value, the caller's; NULL: out of memory */
	uint64_t size;
	void (*copy)(void *dst);
	int (*setxattr)(const char *name, const void *value, size_t size);
	mode_t mode;                  /* permission bits; 0: 0444 (readable by all) */
	struct hfs_status_file *next; /* status.c's */
};
void hfs_status_register(struct hfs_status_file *f);
/* A feature's part of .heapfs/stats: add() sets its keys in the object (0 or -ENOMEM),
 * right after "heaps" or at the end (registration order within each). */
enum hfs_stats_at { HFS_STATS_AFTER_HEAPS, HFS_STATS_AT_END };
struct hfs_stats_part {
	enum hfs_stats_at at;
	int (*add)(struct json_t *stats);
	struct hfs_stats_part *next; /* status.c's */
};
void hfs_stats_register(struct hfs_stats_part *p);
/* The "role" of a heap in .heapfs/heaps/NAME and stats (replication's; else "owner"). */
void hfs_status_role(const char *(*role)(const struct hfs_heap *h));
/* Make the registered files in .heapfs/ (dir.c's hfs_mount_tree, hfs.ns exclusive). */
int __hfs_status_files(struct hfs_inode *dot);
int hfs_status_render(struct hfs_inode *i, char **buf, size_t *len);
void hfs_status_put(struct hfs_inode *i, char *buf);
/* The snapshot budget: bytes of distinct status snapshots and directory listings held by
 * open handles, at most HFS_SNAPSHOT_BUDGET for the mount.  Charge: 0 or -ENFILE. */
#define HFS_SNAPSHOT_BUDGET (64 * 1024 * 1024)
int hfs_snapshot_charge(size_t bytes);
void hfs_snapshot_uncharge(size_t bytes);

/* dm.c — the direct_map memory of a heap.  The client socket that hands it out: fs/direct/. */
struct hfs_dm {
	int meta_fd;
	void *meta;
	size_t meta_size;
	uint64_t key;
	uint64_t gen_off, gen_stride;
	_Atomic uint64_t *seq; /* in the page after the buddy metadata: the segment map's
				  sequence counter (odd while it changes) */
	uint64_t seq_off;
};

struct buddy_params;
/* A direct_map heap: its buddy metadata in a memfd that clients map read-only (the chunk
 * generations), its data in a memfd (BUDDY_F_MEMFD).  heap.c calls these for
 * pol.direct_map; 0 or -errno.  (dm.c) */
int hfs_dm_heap_create(struct hfs_heap *h, struct buddy_params *bp);
/* The ops every direct_map heap starts with (fs/direct, before the heaps are made). */
void hfs_dm_set_ops(const struct hfs_heap_ops *ops);
void hfs_dm_heap_destroy(struct hfs_heap *h);
/* Around every change of the object segment's name map (objects.c, under its map mutex):
 * the sequence counter clients read the map under (odd while it changes). */
void hfs_dm_seq_begin(struct hfs_heap *h);
void hfs_dm_seq_end(struct hfs_heap *h);

/* change.c — the change seam.  Every mutation of a heap's files or names is one value,
 * struct hfs_change, handed to the observers registered for the heap while the core still
 * holds the lock that orders the change (hfs.ns for the namespace, the inode's lock for
 * data and attributes), so one heap's changes reach each observer in the order they were
 * made.  An observer must not block on anything that takes a core lock. */
enum hfs_change_kind {
	HFS_CH_CREATE,   /* entry: the new inode i, named dir/name (a symlink's target in i) */
	HFS_CH_LINK,     /* entry: one more name dir/name for i */
	HFS_CH_UNLINK,   /* entry: the name dir/name is gone (a file's, an empty directory's) */
	HFS_CH_RENAME,   /* rename: dir/name moved to ndir/nname, flags as renameat2 */
	HFS_CH_WRITE,    /* write: bytes [off, off + len) of i are buf; the size was old */
	HFS_CH_TRUNCATE, /* inode: i's size is now i->size */
	HFS_CH_SETATTR,  /* inode: i's attributes (mode, owner, times; a file's size) */
	HFS_CH_XATTR,    /* xattr: name of i set to value (NULL: removed) */
	HFS_CH_WRITERS,  /* writers: i has its first writer now (open) or lost its last */
	HFS_CH_RANGE,    /* write: [off, off + len) of i written by a direct client through
			    its mapping (buf NULL) */
	HFS_CH_PUNCH,    /* punch: [off, off + len) of i reads as zeros now (a hole punched,
			    or a range zeroed), within the size */
};

struct hfs_change {
	enum hfs_change_kind kind;
	struct hfs_heap *heap;
	struct hfs_completion *done; /* the caller's (NULL: nobody waits) */
	union {
		struct {
			struct hfs_inode *dir, *i; /* i: NULL for UNLINK */
			const char *name;
		} entry;
		struct {
			struct hfs_inode *dir, *ndir;
			const char *name, *nname;
			unsigned flags;
		} rename;
		struct {
			struct hfs_inode *i;
			const void *buf;
			uint64_t off, len, old;
		} write;
		struct {
			struct hfs_inode *i;
		} inode;
		struct {
			struct hfs_inode *i;
			const char *name;
			const void *value;
			size_t size;
		} xattr;
		struct {
			struct hfs_inode *i;
			bool open;
		} writers;
		struct {
			struct hfs_inode *i;
			uint64_t off, len;
		} punch;
	};
};

typedef void (*hfs_observer_fn)(const struct hfs_change *ch, void *arg);
#define HFS_OBSERVERS_MAX 8
/* Register an observer (before any thread that changes heaps starts; never removed):
 * its id (>= 0), or -ENOSPC.  Observers of one heap run in the order they registered. */
int hfs_observer_add(hfs_observer_fn fn, void *arg);
/* Observer id watches heap h from now on (on) / no longer. */
void hfs_observe(struct hfs_heap *h, int id, bool on);
/* Does anybody watch h?  The one test an unobserved heap's change costs. */
static inline bool hfs_observed(const struct hfs_heap *h)
{
	return h && atomic_load_explicit(&h->observers, memory_order_relaxed);
}
/* Hand ch to every observer of ch->heap; the lock that orders the change is held.
 * Callers test hfs_observed(heap) first. */
void __hfs_changed(const struct hfs_change *ch);

/* A change's completion: travels from the caller (the FUSE edge, on its stack) through
 * the core call into the change value.  An observer whose work must be waited for before
 * the caller replies (sync replication) fills it under the change's lock; the caller, with
 * no lock held, then waits (hfs_complete_wait) or leaves a callback (hfs_complete_defer).
 * One completion may gather several changes (an op of several core calls): it then stands
 * for all of them.  applier: the change comes from image.c's applier (a restore, or a
 * mirror applying its partner's changes), which alone may change a mirror. */
struct hfs_wrote {
	struct hfs_inode *i;
	uint64_t old, off, end; /* the size was old; [off, end) written */
};
struct hfs_completion_ops {
	int (*wait)(struct hfs_completion *c);
	bool (*defer)(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg);
};
struct hfs_completion {
	bool applier;
	const struct hfs_completion_ops *ops; /* set by the observer: something to wait for */
	uint64_t first, last, conn;           /* the observer's: what it sent, and where */
	struct hfs_wrote wrote;               /* the last write of the change (i: none) */
};
/* Wait until the observer is done with the changes c stands for: 0, or its -errno
 * (-ENOSPC: the partner had no room for the write, given back here).  c may be NULL. */
int hfs_complete_wait(struct hfs_completion *c);
/* Instead of waiting: fn(arg, err) runs (on another thread) once the observer is done;
 * true: deferred; false: nothing to wait for (or done already), reply now. */
bool hfs_complete_defer(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg);

/* May this change touch heap h?  The one place that decides: -EROFS on a mirror unless
 * the applier asks (c->applier), else 0.  c may be NULL (not the applier). */
int hfs_writable(const struct hfs_heap *h, const struct hfs_completion *c);
static inline bool hfs_mirror(const struct hfs_heap *h)
{
	return h && atomic_load(&h->mirror);
}

/* Kernel caches to drop: the edge registers at start how the kernel is told; the core
 * and features call these when something changed behind the kernel's back (a mirror's
 * tree, a range written through a client's mapping).  Before registration: nothing. */
struct hfs_kcache_ops {
	void (*entry)(hfs_ino_t parent, const char *name);
	void (*range)(hfs_ino_t ino, int64_t off, int64_t len);
};
void hfs_kcache_register(const struct hfs_kcache_ops *ops);
void hfs_kcache_entry(hfs_ino_t parent, const char *name);
void hfs_kcache_range(hfs_ino_t ino, int64_t off, int64_t len);

#endif
