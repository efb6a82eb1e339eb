/*
 * img.h — heapfs images (public interface of img/): the object segment and the heap
 * image stream.  The byte formats are specified in docs/IMAGE.md; this header is the C
 * view of them.  No FUSE, no allocator, no daemon: the daemon and heapfsctl both link it.
 *
 * 1. The object segment (img_seg_*): S = 2^k bytes that describe themselves.  Offset 0
 *    holds the header block, one buddy block holds the name map, every object one block;
 *    everything else is free.  The functions work on a caller's memory buffer (live
 *    segment memory in the daemon, a mapped file in heapfsctl): offsets only, so the same
 *    bytes are valid at any address.  img/ never allocates segment blocks: the caller owns
 *    the allocator and hands blocks in (img_seg_put's object block, img_seg_map_grow's new
 *    map block) — img/ does not depend on alloc/.
 *
 * 2. The heap image stream (img_w_*, img_r_*): a header, typed records (a whole heap, or
 *    changes to one: the replication stream uses the same records), and an END trailer
 *    with an XXH3-64 checksum of every byte before it.  Written in one streaming pass
 *    through a 1 MiB buffer; read in one pass with a bounded buffer.
 *
 * 3. Saving either kind atomically (img_save_*): temporary file, fsync, rename.
 *
 * Integers on disk are little-endian; the structs below are the on-disk layouts and this
 * code assumes a little-endian host (checked at compile time).  Every function returns 0
 * (or a non-negative value) or -errno; a reader's refusal is -EBADMSG with the reason in
 * the caller's `why` buffer.  Locking: none inside; a caller serialises use of one
 * segment / one writer / one reader.
 */
#ifndef HEAPFS_IMG_H
#define HEAPFS_IMG_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "img/: the on-disk structs are little-endian and used as is"
#endif

#define IMG_NAME_MAX 255 /* object and file names, xattr names */

/* ---- 1. the object segment ---------------------------------------------------------- */

#define IMG_SEG_MAGIC "HEAPFSEG"
#define IMG_SEG_VERSION 1
#define IMG_SEG_HDR_MIN_ORDER 12 /* the header block is 2^max(12, min_order) bytes */
#define IMG_SEG_MIN_ORDER 6      /* smallest min_block: 64 */
#define IMG_SEG_MAX_MIN_ORDER 20 /* largest min_block: 1 MiB */
#define IMG_SEG_MAX_ORDER 40
#define IMG_SEG_SLOT_SIZE 320    /* bytes of one map slot: a map block of 2^k holds
				    2^k / 320 slots */

/* One named object as the API sees it (a map slot, decoded). */
struct img_obj {
	char name[IMG_NAME_MAX + 1];
	uint64_t off;   /* of its block */
	unsigned order; /* block is 2^order bytes at off */
	uint64_t size;  /* logical size, <= 2^order */
	uint64_t id;    /* inode identity */
	uint32_t mode, uid, gid;
	int64_t mtime_ns, ctime_ns;
	uint32_t slot;  /* its map slot (set by lookup and foreach; put ignores it) */
};

struct img_seg_info {
	uint64_t size;       /* S */
	unsigned seg_order, min_order, hdr_order;
	uint64_t map_off;
	unsigned map_order;
	uint32_t map_slots, nobjects;
	uint64_t generation;
	uint64_t used;       /* bytes in header, map and object blocks */
	uint64_t checksum;   /* as stored */
};

/* IMG_CHECK_NOSUM: skip the checksum (a live segment is sealed only when it is saved). */
#define IMG_CHECK_NOSUM 1u

/* Make an empty segment in base[0, size): size a power of two, min_order 6..20; the map
 * takes the buddy of the header block.  -EINVAL for sizes/orders out of range. */
int img_seg_format(void *base, uint64_t size, unsigned min_order);
/* Everything a reader must trust before using a segment of len bytes: magic, version,
 * size == len, header fields in range, map and every object block inside, aligned, not
 * overlapping, names valid and unique, nobjects, checksum.  0, or -EBADMSG with why. */
int img_seg_check(const void *base, uint64_t len, unsigned flags, char *why, size_t whylen);
void img_seg_info(const void *base, struct img_seg_info *out);
/* 0 and *out, or -ENOENT. */
int img_seg_lookup(const void *base, const char *name, struct img_obj *out);
/* Insert, or replace the object of the same name.  The caller allocated o->off/o->order
 * (and freed the block a replaced object had).  -EINVAL bad name or block outside the
 * segment / misaligned / size past the block; -ENOSPC the map is full: grow it first. */
int img_seg_put(void *base, const struct img_obj *o);
int img_seg_del(void *base, const char *name); /* 0 or -ENOENT */
/* The same by slot index, in O(1), for a writer that tracks which slots it uses (the
 * daemon): put_at writes o into slot, which must be free or hold o's name (-EINVAL
 * otherwise, or for what img_seg_put refuses); del_at empties a used slot (-ENOENT). */
int img_seg_put_at(void *base, uint32_t slot, const struct img_obj *o);
int img_seg_del_at(void *base, uint32_t slot);
/* The _h forms take the header from hdr (IMG_SEG_HDR_SIZE bytes, the caller's own copy)
 * instead of base's first bytes, and change it there: a writer whose segment memory
 * others may write (the daemon with objects { direct_map = true }: every client that maps
 * an object for writing can store into the segment) keeps the header private, trusts only
 * that, and copies it to base for readers after each change.  The map's slots stay in
 * base; only those of the header's map block are touched. */
#define IMG_SEG_HDR_SIZE 128
int img_seg_put_at_h(void *hdr, void *base, uint32_t slot, const struct img_obj *o);
int img_seg_del_at_h(void *hdr, void *base, uint32_t slot);
int img_seg_map_next_order_h(const void *hdr);
int img_seg_map_grow_h(void *hdr, void *base, uint64_t new_off, unsigned new_order,
		       uint64_t *old_off, unsigned *old_order);
void img_seg_info_h(const void *hdr, const void *base, struct img_seg_info *out);
/* Seal / save the segment whose header is hdr (sealed there) and whose other bytes are
 * base's: the image written is hdr followed by base's bytes after the header. */
void img_seg_seal_h(void *hdr, const void *base);
int img_seg_save_h(void *hdr, const void *base, const char *path);
/* Calls fn for each object in map order; stops at and returns fn's first non-zero. */
int img_seg_foreach(const void *base, int (*fn)(const struct img_obj *o, void *arg), void *arg);
/* Calls fn for every used block: the header, the map, each object (a restore claims each
 * with buddy_alloc_at; what is left is the free state).  Stops at fn's first non-zero. */
int img_seg_blocks(const void *base, int (*fn)(uint64_t off, unsigned order, void *arg),
		   void *arg);
/* Order of the block the map should move to when img_seg_put says -ENOSPC, or -E2BIG. */
int img_seg_map_next_order(const void *base);
/* Move the map to the caller's free block (new_off, new_order), which must be larger than
 * the current one; the old block is returned for the caller to free. */
int img_seg_map_grow(void *base, uint64_t new_off, unsigned new_order, uint64_t *old_off,
		     unsigned *old_order);
/* Compute and store the checksum (before the bytes leave the process). */
void img_seg_seal(void *base);

/* ---- 2. the heap image stream ------------------------------------------------------- */

#define IMG_MAGIC "HEAPFSIM"
#define IMG_VERSION 1
#define IMG_HEAP_MAX_ORDER 40   /* largest heap_size 2^40 (the allocator's BUDDY_MAX_ORDER) */
#define IMG_ROOT_ID 1           /* the heap's root directory */
#define IMG_DATA_MAX (1u << 20) /* bytes in one DATA record */
#define IMG_REC_MAX (1u << 17)  /* payload of any other record */
#define IMG_XATTR_MAX 65536     /* xattr value */
#define IMG_SYMLINK_MAX 4095

enum img_rec_type {
	IMG_INODE = 1, IMG_LINK, IMG_DATA, IMG_SYMLINK, IMG_XATTR,
	IMG_TRUNCATE, IMG_RENAME, IMG_UNLINK, IMG_SETATTR, IMG_REMOVEXATTR,
	IMG_PUNCH,
	IMG_NTYPES,
	IMG_END = 0xffff,
};

enum img_kind { IMG_K_REG = 1, IMG_K_DIR, IMG_K_LNK, IMG_K_SPECIAL };

/* The stream header (320 bytes on disk). */
struct img_hdr {
	char magic[8];
	uint32_t version, hdr_size;
	uint64_t heap_size;
	uint32_t min_order, layout; /* layout: 0 extents, 1 contiguous */
	uint32_t flags, name_len;   /* flags: 0 in version 1 */
	uint8_t reserved[24];
	char name[IMG_NAME_MAX + 1]; /* NUL-padded */
};

/* Fixed parts of the record payloads (the on-disk layouts). */
struct img_inode {
	uint64_t id;
	uint32_t kind, mode, uid, gid; /* mode: the full st_mode, type bits included */
	uint64_t rdev;
	uint32_t nlink, pad;
	uint64_t size;
	int64_t atime_ns, mtime_ns, ctime_ns;
};
struct img_link { uint64_t parent, child; uint32_t name_len, pad; };         /* + name */
struct img_data { uint64_t id, off; };                                      /* + bytes */
struct img_symlink { uint64_t id; };                                        /* + target */
struct img_xattr { uint64_t id; uint32_t name_len, value_len; };            /* + name, value */
struct img_truncate { uint64_t id, size; };
struct img_rename {
	uint64_t old_parent, new_parent;
	uint32_t old_len, new_len, flags, pad; /* flags: RENAME_NOREPLACE/EXCHANGE */
};                                                                          /* + old, new */
struct img_unlink { uint64_t parent; uint32_t name_len, pad; };             /* + name */
#define IMG_SET_MODE 1u
#define IMG_SET_UID 2u
#define IMG_SET_GID 4u
#define IMG_SET_SIZE 8u
#define IMG_SET_ATIME 16u
#define IMG_SET_MTIME 32u
#define IMG_SET_CTIME 64u
struct img_setattr {
	uint64_t id;
	uint32_t mask, mode, uid, gid;
	uint64_t size;
	int64_t atime_ns, mtime_ns, ctime_ns;
};
struct img_removexattr { uint64_t id; uint32_t name_len, pad; };            /* + name */
struct img_punch { uint64_t id, off, len; }; /* [off, off + len) reads as zeros (a hole) */

/* A record as the reader returns it.  The strings point into the reader (NUL-terminated,
 * valid until the next img_r_next); a DATA record's bytes come from img_r_data. */
struct img_rec {
	uint32_t type;
	union {
		struct img_inode inode;
		struct img_link link;
		struct img_data data;
		struct img_symlink symlink;
		struct img_xattr xattr;
		struct img_truncate truncate;
		struct img_rename rename;
		struct img_unlink unlink;
		struct img_setattr setattr;
		struct img_removexattr removexattr;
		struct img_punch punch;
	} u;
	const char *s1, *s2; /* LINK/UNLINK/REMOVEXATTR name; SYMLINK target; XATTR name and
				value (s2, value_len bytes, may hold NULs); RENAME old, new */
	uint32_t data_len;   /* DATA: bytes that follow */
};

struct img_w;
struct img_r;

/* Writer: streams to fd (which it neither fsyncs nor closes: img_w_finish, then the
 * caller fsyncs and renames).  After any error the writer only fails; free it. */
int img_w_open(int fd, const struct img_hdr *h, struct img_w **out);
int img_w_inode(struct img_w *w, const struct img_inode *in);
int img_w_link(struct img_w *w, uint64_t parent, uint64_t child, const char *name);
/* Any length: cut into DATA records of IMG_DATA_MAX, large ones written straight from buf. */
int img_w_data(struct img_w *w, uint64_t id, uint64_t off, const void *buf, uint64_t len);
int img_w_symlink(struct img_w *w, uint64_t id, const char *target);
int img_w_xattr(struct img_w *w, uint64_t id, const char *name, const void *value,
		uint32_t value_len);
int img_w_truncate(struct img_w *w, uint64_t id, uint64_t size);
int img_w_rename(struct img_w *w, uint64_t old_parent, const char *old_name,
		 uint64_t new_parent, const char *new_name, uint32_t flags);
int img_w_unlink(struct img_w *w, uint64_t parent, const char *name);
int img_w_setattr(struct img_w *w, const struct img_setattr *sa);
int img_w_removexattr(struct img_w *w, uint64_t id, const char *name);
int img_w_punch(struct img_w *w, uint64_t id, uint64_t off, uint64_t len);
/* Write END (record count, byte count, checksum) and flush. */
/* Tests only (img-mk): one record of type with payload as given, none of the checks the
 * other writers make, so a test can craft what a reader must refuse. */
int img_w_unchecked(struct img_w *w, uint32_t type, const void *payload, uint32_t len);
int img_w_finish(struct img_w *w);
/* Flush what is buffered to the current descriptor, then go on writing to fd (one stream
 * in two places: a live save writes its frozen part to memory, the rest to a pipe). */
int img_w_redirect(struct img_w *w, int fd);
void img_w_free(struct img_w *w);

/* Reader: expect_size 0 accepts any heap size, else a different one is refused.  why
 * (whylen bytes, the caller's, kept for the reader's life) receives every refusal. */
int img_r_open(int fd, uint64_t expect_size, struct img_r **out, char *why, size_t whylen);
const struct img_hdr *img_r_hdr(const struct img_r *r);
/* 1 and *rec; 0 after a verified END; -EBADMSG (the reason in why) or -errno of read().
 * Nothing read is to be trusted before the 0: a restore builds into a fresh heap and
 * discards it on an error. */
int img_r_next(struct img_r *r, struct img_rec *rec);
/* The current DATA record's bytes into dst (data_len bytes; dst NULL skips them). */
int img_r_data(struct img_r *r, void *dst);
void img_r_free(struct img_r *r);

/* One change record in memory (the replication link sends these): the stream's bytes
 * for it, header included.  img_rec_iov gathers a record of type from its fixed part and
 * tails into iov (hdr: IMG_REC_HDR bytes of the caller's) and returns the iovec count, or
 * -EINVAL.  img_rec_decode checks a received one with the reader's rules: 0 and *rec (its
 * strings NUL-terminated in str; a DATA record's bytes at *data, data_len of them), or
 * -EBADMSG with why. */
#define IMG_REC_HDR 16
#define IMG_REC_STR (IMG_NAME_MAX + 1 + IMG_XATTR_MAX + 1)
struct iovec;
int img_rec_iov(void *hdr, uint32_t type, const void *fixed, const void *t0, uint32_t l0,
		const void *t1, uint32_t l1, struct iovec *iov);
int img_rec_decode(const void *buf, size_t len, struct img_rec *rec, const void **data,
		   char str[IMG_REC_STR], char *why, size_t whylen);

/* ---- 3. saving atomically ---------------------------------------------------------- */

/* An image is written to a temporary file beside PATH (PATH.XXXXXX, mode 0600) and only
 * replaces PATH when complete: commit fsyncs it, renames it over PATH and fsyncs the
 * directory, so a crash leaves the old image or the new one, never a mix. */
struct img_save {
	int fd;         /* write the image here */
	const char *path;
	char *tmp;      /* the temporary file's name */
};
int img_save_open(const char *path, struct img_save *s);
/* 0, or -errno with the temporary file removed and PATH untouched.  Closes fd either way. */
int img_save_commit(struct img_save *s);
/* Give up: close and remove the temporary file. */
void img_save_abort(struct img_save *s);
/* Write every byte of iov[0..n) to fd, through short writes and EINTR (the iovecs are
 * consumed): 0 or -errno.  What the writers and heapfsctl save use. */
struct iovec;
int img_writev_all(int fd, struct iovec *iov, int n);

/* The object segment as a file (objects { image = PATH }): seal base[0, size) and save it
 * atomically to path. */
int img_seg_save(void *base, const char *path);
/* Read the segment image in fd into base (size bytes: the configured objects.size) and
 * check it whole, including that its size and min_order are the configured ones.  0, or
 * -EBADMSG with why ("wrong size", ...) / -errno; on an error base holds no segment (its
 * header is zeroed), so nothing of a bad image is ever used. */
int img_seg_load(int fd, void *base, uint64_t size, unsigned min_order, char *why,
		 size_t whylen);

/* ---- progress.c: a bar for long image operations ------------------------------------ */

/* Drawn on out only when it is a terminal and the operation has run a second: start,
 * update with the bytes done so far, end (ok: drawn full) with a newline. */
struct img_progress {
	const char *what;
	FILE *out;
	int64_t total, start, last, after;
	bool on, drawn;
};
void img_progress_start(struct img_progress *p, FILE *out, const char *what, int64_t total);
void img_progress_update(struct img_progress *p, int64_t done);
void img_progress_end(struct img_progress *p, int64_t done, bool ok);

#endif
