/*
 * acl.c — POSIX ACLs in their xattr form (system.posix_acl_access/_default), as the
 * kernel hands them to a FUSE filesystem that asked for FUSE_POSIX_ACL: a little-endian
 * version word (2), then entries {u16 tag, u16 perm, u32 id}.  The kernel checks
 * permissions against them itself (default_permissions); what is ours is what Linux's
 * fs/posix_acl.c does for a local filesystem: keep the mode and the access ACL in step
 * (a set ACL moves the mode, a chmod moves the ACL) and give new inodes their
 * directory's default ACL.  Pure functions on caller buffers; no locks.  Every value is
 * checked by hfs_acl_valid first (it may come from an image or the partner), so the
 * owner, owning group and other entries are there.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"

enum { USER_OBJ = 0x01, USER = 0x02, GROUP_OBJ = 0x04, GROUP = 0x08, MASK = 0x10,
       OTHER = 0x20 };

struct ent {
	uint16_t tag, perm;
	uint32_t id;
};

#define HDR 4u
#define VERSION 2u

static size_t count(size_t size)
{
	return (size - HDR) / sizeof(struct ent);
}

static struct ent *ent(void *v, size_t k)
{
	return (struct ent *)((char *)v + HDR) + k;
}

int hfs_acl_valid(const void *v, size_t size)
{
	uint32_t ver, prev_id = 0;
	unsigned seen = 0, prev_tag = 0;

	if (size < HDR || (size - HDR) % sizeof(struct ent) || size == HDR)
		return -EINVAL;
	memcpy(&ver, v, sizeof(ver));
	if (le32toh(ver) != VERSION)
		return -EINVAL;
	for (size_t k = 0; k < count(size); k++) {
		struct ent e;

		memcpy(&e, (const char *)v + HDR + k * sizeof(e), sizeof(e));
		e.tag = le16toh(e.tag);
		e.perm = le16toh(e.perm);
		e.id = le32toh(e.id);
		/* sorted by tag, named entries by id, each unnamed tag once (posix_acl_valid) */
		if (e.perm & ~7u || (e.tag != USER_OBJ && e.tag != USER && e.tag != GROUP_OBJ &&
				     e.tag != GROUP && e.tag != MASK && e.tag != OTHER))
			return -EINVAL;
		if (e.tag < prev_tag || (e.tag == prev_tag && (e.tag != USER && e.tag != GROUP)))
			return -EINVAL;
		if (e.tag == prev_tag && e.id <= prev_id)
			return -EINVAL;
		seen |= e.tag;
		prev_tag = e.tag;
		prev_id = e.id;
	}
	if ((seen & (USER_OBJ | GROUP_OBJ | OTHER)) != (USER_OBJ | GROUP_OBJ | OTHER))
		return -EINVAL;
	if (seen & (USER | GROUP) && !(seen & MASK))
		return -EINVAL;
	return 0;
}

static unsigned perm(const struct ent *e)
{
	return le16toh(e->perm);
}

static void set_perm(struct ent *e, unsigned p)
{
	e->perm = htole16((uint16_t)p);
}

bool hfs_acl_equiv(const void *v, size_t size, mode_t *mode)
{
	mode_t m = 0;
	bool equiv = true;

	for (size_t k = 0; k < count(size); k++) {
		struct ent e;

		memcpy(&e, (const char *)v + HDR + k * sizeof(e), sizeof(e));
		switch (le16toh(e.tag)) {
		case USER_OBJ:
			m |= (mode_t)perm(&e) << 6;
			break;
		case GROUP_OBJ:
			m |= (mode_t)perm(&e) << 3;
			break;
		case OTHER:
			m |= perm(&e);
			break;
		case MASK: /* the mask is what the mode's group bits show */
			m = (m & ~(mode_t)S_IRWXG) | (mode_t)perm(&e) << 3;
			equiv = false;
			break;
		default:
			equiv = false;
		}
	}
	*mode = (*mode & ~(mode_t)0777) | m;
	return equiv;
}

/* The entries the mode's classes map to: owner, owning group, mask, other (a valid ACL
 * has all but the mask), and whether any named user or group is there. */
struct classes {
	struct ent *user, *group, *mask, *other;
	bool named;
};

static struct classes classes(void *v, size_t size)
{
	struct classes c = { 0 };

	for (size_t k = 0; k < count(size); k++) {
		struct ent *e = ent(v, k);

		switch (le16toh(e->tag)) {
		case USER_OBJ:
			c.user = e;
			break;
		case GROUP_OBJ:
			c.group = e;
			break;
		case MASK:
			c.mask = e;
			break;
		case OTHER:
			c.other = e;
			break;
		default:
			c.named = true;
		}
	}
	return c;
}

void hfs_acl_chmod(void *v, size_t size, mode_t mode)
{
	struct classes c = classes(v, size);

	set_perm(c.user, (mode >> 6) & 7);
	/* the group bits are the mask's when there is one (posix_acl_chmod_masq) */
	set_perm(c.mask ? c.mask : c.group, (mode >> 3) & 7);
	set_perm(c.other, mode & 7);
}

bool hfs_acl_create(void *v, size_t size, mode_t *mode)
{
	struct classes c = classes(v, size);
	struct ent *group = c.mask ? c.mask : c.group;
	mode_t m = *mode & 0777;

	/* posix_acl_create_masq: each class gets what both the ACL and the mode allow (the
	 * mask, else the owning group, stands for the group class) */
	set_perm(c.user, perm(c.user) & ((m >> 6) & 7));
	set_perm(group, perm(group) & ((m >> 3) & 7));
	set_perm(c.other, perm(c.other) & (m & 7));
	m = (mode_t)(perm(c.user) << 6 | perm(group) << 3 | perm(c.other));
	*mode = (*mode & ~(mode_t)0777) | m;
	return !c.mask && !c.named;
}
