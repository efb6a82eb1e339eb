/*
 * rec.c — the record set of the heap image stream (docs/IMAGE.md, "Records"): each
 * type's payload shape (fixed part, variable tails and where their lengths are) and the
 * limits a reader enforces.  The writer validates what it writes with the same rules, so
 * it cannot produce a stream the reader refuses.  Pure functions; no locking.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>

#include "img_i.h"

#define NOTAIL { 0, 0 }, { IMG_T_NONE, IMG_T_NONE }

static const struct img_shape shapes[IMG_NTYPES] = {
	[IMG_INODE] = { sizeof(struct img_inode), NOTAIL },
	[IMG_LINK] = { sizeof(struct img_link), { offsetof(struct img_link, name_len), 0 },
		       { IMG_T_NAME, IMG_T_NONE } },
	[IMG_DATA] = { sizeof(struct img_data), { IMG_REST, 0 }, { IMG_T_BYTES, IMG_T_NONE } },
	[IMG_SYMLINK] = { sizeof(struct img_symlink), { IMG_REST, 0 },
			  { IMG_T_TARGET, IMG_T_NONE } },
	[IMG_XATTR] = { sizeof(struct img_xattr),
			{ offsetof(struct img_xattr, name_len), offsetof(struct img_xattr, value_len) },
			{ IMG_T_XNAME, IMG_T_VALUE } },
	[IMG_TRUNCATE] = { sizeof(struct img_truncate), NOTAIL },
	[IMG_RENAME] = { sizeof(struct img_rename),
			 { offsetof(struct img_rename, old_len), offsetof(struct img_rename, new_len) },
			 { IMG_T_NAME, IMG_T_NAME } },
	[IMG_UNLINK] = { sizeof(struct img_unlink), { offsetof(struct img_unlink, name_len), 0 },
			 { IMG_T_NAME, IMG_T_NONE } },
	[IMG_SETATTR] = { sizeof(struct img_setattr), NOTAIL },
	[IMG_REMOVEXATTR] = { sizeof(struct img_removexattr),
			      { offsetof(struct img_removexattr, name_len), 0 },
			      { IMG_T_XNAME, IMG_T_NONE } },
	[IMG_PUNCH] = { sizeof(struct img_punch), NOTAIL },
};

_Static_assert(sizeof(struct img_hdr) == 320, "stream header");
_Static_assert(sizeof(struct img_inode) == 72, "INODE");
_Static_assert(sizeof(struct img_link) == 24, "LINK");
_Static_assert(sizeof(struct img_data) == 16, "DATA");
_Static_assert(sizeof(struct img_xattr) == 16, "XATTR");
_Static_assert(sizeof(struct img_rename) == 32, "RENAME");
_Static_assert(sizeof(struct img_unlink) == 16, "UNLINK");
_Static_assert(sizeof(struct img_setattr) == 56, "SETATTR");
_Static_assert(sizeof(struct img_removexattr) == 16, "REMOVEXATTR");
_Static_assert(sizeof(struct img_punch) == 24, "PUNCH");

const struct img_shape *img_shape(uint32_t type)
{
	return type && type < IMG_NTYPES ? &shapes[type] : NULL;
}

static const char *const type_names[IMG_NTYPES] = {
	[IMG_INODE] = "INODE", [IMG_LINK] = "LINK", [IMG_DATA] = "DATA",
	[IMG_SYMLINK] = "SYMLINK", [IMG_XATTR] = "XATTR", [IMG_TRUNCATE] = "TRUNCATE",
	[IMG_RENAME] = "RENAME", [IMG_UNLINK] = "UNLINK", [IMG_SETATTR] = "SETATTR",
	[IMG_REMOVEXATTR] = "REMOVEXATTR", [IMG_PUNCH] = "PUNCH",
};

/* Smallest and largest length of a tail of this kind. */
static void tail_bounds(enum img_tail k, uint32_t *lo, uint32_t *hi)
{
	static const uint32_t b[][2] = {
		[IMG_T_NONE] = { 0, 0 }, [IMG_T_NAME] = { 1, IMG_NAME_MAX },
		[IMG_T_XNAME] = { 1, IMG_NAME_MAX }, [IMG_T_TARGET] = { 1, IMG_SYMLINK_MAX },
		[IMG_T_VALUE] = { 0, IMG_XATTR_MAX }, [IMG_T_BYTES] = { 1, IMG_DATA_MAX },
	};

	*lo = b[k][0];
	*hi = b[k][1];
}

/* A file size or offset: an off_t (a size or an end past INT64_MAX is no file's). */
#define FILE_MAX ((uint64_t)INT64_MAX)

/* Does mode's file type (S_IFMT) agree with kind? */
static bool kind_ok(uint32_t kind, uint32_t mode)
{
	switch (kind) {
	case IMG_K_REG:
		return S_ISREG(mode);
	case IMG_K_DIR:
		return S_ISDIR(mode);
	case IMG_K_LNK:
		return S_ISLNK(mode);
	case IMG_K_SPECIAL:
		return S_ISCHR(mode) || S_ISBLK(mode) || S_ISFIFO(mode) || S_ISSOCK(mode);
	}
	return false;
}

/* The fixed part's values: kinds, flags and masks in their sets, sizes and DATA's end
 * within an off_t (so off + len cannot wrap).  tl: the tail lengths, already checked. */
static int check_fields(uint32_t type, const void *fixed, const uint32_t tl[2], char *why,
			size_t whylen)
{
	struct img_rec r; /* its union holds any fixed part, aligned */

	memcpy(&r.u, fixed, img_shape(type)->fixed);
	switch (type) {
	case IMG_INODE:
		if (!kind_ok(r.u.inode.kind, r.u.inode.mode))
			return img_refuse(why, whylen, "INODE record: kind %u and mode %#o disagree",
					  r.u.inode.kind, r.u.inode.mode);
		if (r.u.inode.size > FILE_MAX)
			return img_refuse(why, whylen, "INODE record: size %llu out of range",
					  (unsigned long long)r.u.inode.size);
		break;
	case IMG_DATA:
		if (r.u.data.off > FILE_MAX - tl[0])
			return img_refuse(why, whylen, "DATA record: offset %llu + %u bytes out of range",
					  (unsigned long long)r.u.data.off, tl[0]);
		break;
	case IMG_TRUNCATE:
		if (r.u.truncate.size > FILE_MAX)
			return img_refuse(why, whylen, "TRUNCATE record: size %llu out of range",
					  (unsigned long long)r.u.truncate.size);
		break;
	case IMG_PUNCH:
		if (!r.u.punch.len || r.u.punch.off > FILE_MAX || r.u.punch.len > FILE_MAX - r.u.punch.off)
			return img_refuse(why, whylen, "PUNCH record: offset %llu + %llu bytes out of "
					  "range", (unsigned long long)r.u.punch.off,
					  (unsigned long long)r.u.punch.len);
		break;
	case IMG_RENAME:
		if (r.u.rename.flags > 2) /* 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2) */
			return img_refuse(why, whylen, "RENAME record: flags %#x", r.u.rename.flags);
		break;
	case IMG_SETATTR:
		if (r.u.setattr.mask & ~(2 * IMG_SET_CTIME - 1))
			return img_refuse(why, whylen, "SETATTR record: mask %#x", r.u.setattr.mask);
		if (r.u.setattr.mask & IMG_SET_SIZE && r.u.setattr.size > FILE_MAX)
			return img_refuse(why, whylen, "SETATTR record: size %llu out of range",
					  (unsigned long long)r.u.setattr.size);
		break;
	}
	return 0;
}

int img_rec_layout(uint32_t type, const void *fixed, uint64_t paylen, uint32_t tl[2],
		   char *why, size_t whylen)
{
	const struct img_shape *sh = img_shape(type);
	uint64_t sum = sh->fixed;
	uint32_t lo, hi;

	for (int i = 0; i < 2; i++) {
		if (sh->tail[i] == IMG_T_NONE) {
			tl[i] = 0;
			continue;
		}
		if (sh->len_at[i] == IMG_REST)
			tl[i] = paylen > sh->fixed + (uint64_t)UINT32_MAX ? UINT32_MAX
									  : (uint32_t)(paylen - sh->fixed);
		else
			memcpy(&tl[i], (const char *)fixed + sh->len_at[i], sizeof(uint32_t));
		tail_bounds(sh->tail[i], &lo, &hi);
		if (tl[i] < lo || tl[i] > hi)
			return img_refuse(why, whylen, "%s record: a length of %u is out of range "
					  "(%u..%u)", type_names[type], tl[i], lo, hi);
		sum += tl[i];
	}
	if (sum != paylen)
		return img_refuse(why, whylen, "%s record: payload of %llu bytes, its fields "
				  "say %llu", type_names[type], (unsigned long long)paylen,
				  (unsigned long long)sum);
	return check_fields(type, fixed, tl, why, whylen);
}

int img_rec_tails(uint32_t type, const char *const t[2], const uint32_t tl[2], char *why,
		  size_t whylen)
{
	const struct img_shape *sh = img_shape(type);

	for (int i = 0; i < 2; i++) {
		bool ok = true;

		if (sh->tail[i] == IMG_T_NAME)
			ok = img_name_ok(t[i], tl[i]);
		else if (sh->tail[i] == IMG_T_XNAME || sh->tail[i] == IMG_T_TARGET)
			ok = !memchr(t[i], 0, tl[i]);
		if (!ok)
			return img_refuse(why, whylen, "%s record: invalid name", type_names[type]);
	}
	return 0;
}
