/*
 * test_change.c — unit test of the change seam (fs/core/change.c) on its own: the
 * observer list (nobody registered, registration order, per-heap watching, the bound),
 * the completion's wait and defer, the writable decision, the kernel-cache registration.
 * Heaps here are bare structs: change.c reads only their observer bits and mirror flag.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

static int failed;

#define T(cond)                                                                            \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			failed = 1;                                                        \
		}                                                                          \
	} while (0)

/* What the observers saw: "<observer><kind>" per call, in call order. */
static char seen[64];
static const struct hfs_change *seen_ch;

static void note(const struct hfs_change *ch, void *arg)
{
	size_t n = strlen(seen);

	if (n + 2 < sizeof(seen)) {
		seen[n] = *(const char *)arg;
		seen[n + 1] = (char)('0' + ch->kind);
	}
	T(!seen_ch || seen_ch == ch); /* every observer gets the same value */
	seen_ch = ch;
}

static void change(struct hfs_heap *h, enum hfs_change_kind kind)
{
	memset(seen, 0, sizeof(seen));
	seen_ch = NULL;
	if (hfs_observed(h))
		__hfs_changed(&(struct hfs_change){ .kind = kind, .heap = h });
}

static void test_observers(void)
{
	static struct hfs_heap h1, h2, none;
	int a, b, c;

	/* nobody registered: no heap is watched, and a change reaches nobody */
	T(!hfs_observed(&h1) && !hfs_observed(NULL));
	__hfs_changed(&(struct hfs_change){ .kind = HFS_CH_WRITE, .heap = &h1 });
	a = hfs_observer_add(note, "a");
	b = hfs_observer_add(note, "b");
	c = hfs_observer_add(note, "c");
	T(a == 0 && b == 1 && c == 2);
	/* registered but watching nothing: still the one test, still nobody */
	T(!hfs_observed(&none));
	change(&none, HFS_CH_CREATE);
	T(!strcmp(seen, ""));
	/* registered first, called first, whatever order the heap was watched in */
	hfs_observe(&h1, c, true);
	hfs_observe(&h1, a, true);
	hfs_observe(&h2, b, true);
	T(hfs_observed(&h1) && hfs_observed(&h2));
	change(&h1, HFS_CH_RENAME);
	T(!strcmp(seen, "a3c3"));
	change(&h2, HFS_CH_XATTR);
	T(!strcmp(seen, "b7"));
	/* watching twice is watching; unwatching one leaves the others */
	hfs_observe(&h1, a, true);
	hfs_observe(&h1, a, false);
	change(&h1, HFS_CH_UNLINK);
	T(!strcmp(seen, "c2"));
	hfs_observe(&h1, c, false);
	T(!hfs_observed(&h1));
	change(&h1, HFS_CH_UNLINK);
	T(!strcmp(seen, ""));
	/* the table is bounded */
	for (int k = 3; k < HFS_OBSERVERS_MAX; k++)
		T(hfs_observer_add(note, "x") == k);
	T(hfs_observer_add(note, "y") == -ENOSPC);
}

static int waits, defers, deferred_arg;

static int fake_wait(struct hfs_completion *c)
{
	waits++;
	return c->last == 7 ? -ENOSPC : 0;
}

static bool fake_defer(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg)
{
	(void)c;
	defers++;
	fn(arg, 0);
	return true;
}

static void done(void *arg, int err)
{
	deferred_arg = *(int *)arg + err;
}

static void test_completion(void)
{
	static const struct hfs_completion_ops ops = { .wait = fake_wait, .defer = fake_defer };
	struct hfs_completion c = { 0 };
	int arg = 42;

	/* nothing filled in: nothing to wait for, nothing deferred */
	T(hfs_complete_wait(NULL) == 0 && hfs_complete_wait(&c) == 0);
	T(!hfs_complete_defer(NULL, done, &arg) && !hfs_complete_defer(&c, done, &arg));
	T(waits == 0 && defers == 0);
	/* an observer filled it: one wait, its result; a second wait has nothing left */
	c.ops = &ops;
	c.last = 7;
	T(hfs_complete_wait(&c) == -ENOSPC);
	T(hfs_complete_wait(&c) == 0 && waits == 1);
	/* deferred: the callback runs once, and the completion is spent */
	c.ops = &ops;
	T(hfs_complete_defer(&c, done, &arg) && defers == 1 && deferred_arg == 42);
	T(hfs_complete_wait(&c) == 0 && waits == 1);
}

static void test_writable(void)
{
	static struct hfs_heap h;
	struct hfs_completion user = { 0 }, applier = { .applier = true };

	T(hfs_writable(NULL, NULL) == 0);
	T(hfs_writable(&h, NULL) == 0 && hfs_writable(&h, &user) == 0);
	atomic_store(&h.mirror, true);
	T(hfs_mirror(&h));
	T(hfs_writable(&h, NULL) == -EROFS && hfs_writable(&h, &user) == -EROFS);
	T(hfs_writable(&h, &applier) == 0);
	atomic_store(&h.mirror, false);
	T(hfs_writable(&h, NULL) == 0);
}

static char kc[64];

static void kc_entry(hfs_ino_t parent, const char *name)
{
	snprintf(kc, sizeof(kc), "entry %llu %s", (unsigned long long)parent, name);
}

static void kc_range(hfs_ino_t ino, int64_t off, int64_t len)
{
	snprintf(kc, sizeof(kc), "range %llu %lld %lld", (unsigned long long)ino,
		 (long long)off, (long long)len);
}

static void test_kcache(void)
{
	static const struct hfs_kcache_ops ops = { .entry = kc_entry, .range = kc_range };

	hfs_kcache_entry(5, "x"); /* nothing registered: nothing happens */
	hfs_kcache_range(5, 0, 1);
	T(!strcmp(kc, ""));
	hfs_kcache_register(&ops);
	hfs_kcache_entry(5, "x");
	T(!strcmp(kc, "entry 5 x"));
	hfs_kcache_range(6, 4096, 8192);
	T(!strcmp(kc, "range 6 4096 8192"));
}

int main(void)
{
	test_observers();
	test_completion();
	test_writable();
	test_kcache();
	if (failed)
		return 1;
	printf("change: ok\n");
	return 0;
}
