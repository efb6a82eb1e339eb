/*
 * test-source.c — memory sources (alloc/source.h): the donor source's ranges, reads and
 * writes across ranges, bounded pinned windows, copies, and a buddy heap over a source of
 * the caller (BUDDY_F_SOURCE).  Single-threaded; memfds stand in for donors.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "source.h"
#include "tcheck.h"

#define MiB (1ull << 20)

static int memfd(uint64_t size)
{
	int fd = memfd_create("t", MFD_CLOEXEC);

	if (fd >= 0 && ftruncate(fd, (off_t)size) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* 256M heap: range 0 of 32M, then 7 slots of 32M; windows budget 64M (two windows). */
static struct msrc *donor_src(void)
{
	struct msrc *s = NULL;

	if (msrc_donor_open(256 * MiB, 32 * MiB, 32 * MiB, 7, 64 * MiB, &s))
		return NULL;
	if (msrc_donor_add(s, 0, memfd(32 * MiB), 32 * MiB, true) ||
	    msrc_donor_add(s, 1, memfd(32 * MiB), 32 * MiB, false) ||
	    msrc_donor_add(s, 2, memfd(16 * MiB), 16 * MiB, false)) {
		msrc_close(s);
		return NULL;
	}
	return s;
}

static void test_ranges(void)
{
	struct msrc *s = donor_src();
	uint64_t off, len;

	T(s);
	T(!strcmp(msrc_kind(s), "donor"));
	TEQ(msrc_donor_range(s, 0, &off, &len), 0);
	TEQ(off, 0);
	TEQ(len, 32 * MiB);
	TEQ(msrc_donor_range(s, 7, &off, &len), 0);
	TEQ(off, 32 * MiB + 6 * 32 * MiB);
	TEQ(msrc_donor_range(s, 8, &off, &len), -EINVAL);
	TEQ(msrc_donor_add(s, 1, 0, 32 * MiB, false), -EBUSY);     /* taken */
	TEQ(msrc_donor_add(s, 3, 0, 64 * MiB, false), -EINVAL);    /* larger than the slot */
	TEQ(msrc_fd(s), -1);
	msrc_close(s);
}

static void test_read_write_across_ranges(void)
{
	struct msrc *s = donor_src();
	size_t n = 4 * MiB;
	char *a = malloc(n), *b = malloc(n);

	T(s && a && b);
	for (size_t k = 0; k < n; k++)
		a[k] = (char)(k * 7 + 3);
	/* [30M, 34M) spans range 0 and range 1 */
	TEQ(msrc_write(s, a, 30 * MiB, n), 0);
	memset(b, 0, n);
	TEQ(msrc_read(s, b, 30 * MiB, n), 0);
	T(!memcmp(a, b, n));
	TEQ(msrc_zero(s, 31 * MiB, 2 * MiB), 0);
	TEQ(msrc_read(s, b, 30 * MiB, n), 0);
	T(!memcmp(a, b, MiB) && !memcmp(a + 3 * MiB, b + 3 * MiB, MiB));
	for (size_t k = MiB; k < 3 * MiB; k++)
		T(b[k] == 0);
	/* no memory in range 3: EIO, never a crash */
	TEQ(msrc_read(s, b, 32 * MiB + 2 * 32 * MiB, 4096), -EIO);
	/* a copy between ranges */
	TEQ(msrc_copy(s, 64 * MiB, 30 * MiB, n), 0);
	TEQ(msrc_read(s, b, 64 * MiB, MiB), 0);
	T(!memcmp(a, b, MiB));
	free(a);
	free(b);
	msrc_close(s);
}

static void test_windows_are_bounded_and_pinned(void)
{
	struct msrc *s = donor_src();
	char *p, *q, *r;

	T(s);
	T(msrc_map_pins(s));
	TEQ(msrc_write(s, "hello", 40 * MiB, 5), 0);
	p = msrc_map(s, 40 * MiB, 4096);
	T(p && !memcmp(p, "hello", 5));
	q = msrc_map(s, 0, 4096);
	T(q);
	/* the same window again: mapped once, pinned twice */
	T(msrc_map(s, 48 * MiB, 4096) == p + 8 * MiB);
	/* two windows pinned, budget two: a third cannot be mapped (the caller reads) */
	r = msrc_map(s, 64 * MiB, 4096);
	T(r == NULL);
	msrc_unmap(s, 48 * MiB, 4096);
	msrc_unmap(s, 0, 4096);
	r = msrc_map(s, 64 * MiB, 4096); /* q's window was unpinned: evicted for this one */
	T(r);
	memcpy(r, "world", 5);
	{
		char buf[8] = { 0 };

		TEQ(msrc_read(s, buf, 64 * MiB, 5), 0); /* a window shares the memfd's pages */
		T(!memcmp(buf, "world", 5));
	}
	/* a piece crossing a range or a window is not mapped */
	T(msrc_map(s, 32 * MiB - 4096, 8192) == NULL);
	msrc_unmap(s, 64 * MiB, 4096);
	msrc_unmap(s, 40 * MiB, 4096);
	msrc_donor_remove(s, 2); /* its windows go with it */
	T(msrc_map(s, 64 * MiB, 4096) == NULL);
	msrc_close(s);
}

static void test_buddy_over_a_source(void)
{
	struct msrc *s = donor_src();
	struct buddy_params p = { .heap_order = 28, .min_order = 12, .chunk_order = 21,
				  .flags = BUDDY_F_TRACK | BUDDY_F_SOURCE, .fd = -1 };
	struct buddy *b = NULL;
	int64_t off;

	T(s);
	p.src = s;
	TEQ(buddy_create(&p, &b), 0);
	T(buddy_source(b) == s);
	T(buddy_ptr(b, 0) == NULL); /* nothing mapped for the whole heap */
	off = buddy_alloc(b, 20);
	T(off >= 0 && (uint64_t)off < 32 * MiB);
	TEQ(msrc_write(s, "x", (uint64_t)off, 1), 0);
	TEQ(buddy_free(b, (uint64_t)off, 20), 0);
	T(pristine(b));
	buddy_destroy(b);
	msrc_close(s); /* the caller's: still valid after the heap */
	p.src = NULL;
	TEQ(buddy_create(&p, &b), -EINVAL);
}

static void test_mapped_sources(void)
{
	struct msrc *s = NULL;
	char buf[4] = { 0 };

	TEQ(msrc_anon_open(4 * MiB, 21, false, &s), 0);
	T(!strcmp(msrc_kind(s), "anonymous") && !msrc_map_pins(s));
	TEQ(msrc_write(s, "abc", MiB, 3), 0);
	T(!memcmp(msrc_map(s, MiB, 3), "abc", 3));
	TEQ(msrc_zero(s, 0, 4 * MiB), 0);
	TEQ(msrc_read(s, buf, MiB, 3), 0);
	T(!buf[0] && !buf[1] && !buf[2]);
	msrc_close(s);
	TEQ(msrc_memfd_open(4 * MiB, -1, 0, false, "t", &s), 0);
	T(!strcmp(msrc_kind(s), "memfd") && msrc_fd(s) >= 0);
	TEQ(msrc_copy(s, 2 * MiB, 0, MiB), 0);
	msrc_close(s);
}

int main(void)
{
	RUN(test_ranges);
	RUN(test_read_write_across_ranges);
	RUN(test_windows_are_bounded_and_pinned);
	RUN(test_buddy_over_a_source);
	RUN(test_mapped_sources);
	return tc_failed != 0;
}
