/*
 * change.c — the change seam: what the core does after a change besides making it.
 *
 * Observers.  A feature that follows changes (replication's records, ...) registers one
 * function at start and then marks the heaps it watches (a bit per observer in
 * hfs_heap.observers).  The core hands every change of a watched heap to those observers
 * as one value (struct hfs_change), in registration order, under the lock that orders
 * the change; an unwatched heap costs the one test of hfs_observed().  As in Linux's
 * fsnotify, the core calls one hook per change and knows nothing of who listens.
 *
 * Completions.  A change an observer must finish before the caller replies (sync
 * replication: the partner applied it) is waited for outside the core's locks, by the
 * caller, through the completion it passed in (struct hfs_completion): the observer fills
 * it under the lock, the caller waits on it or leaves a callback afterwards.
 *
 * Writable.  Whether a change may touch a heap is decided here, from the heap's state
 * (hfs_heap.mirror, set by replication) and who asks (the applier may change a mirror).
 *
 * Kernel caches.  The edge registers how the kernel drops what it cached; features call
 * through here and so name nothing of the edge.
 *
 * Locking: the observer table and the kernel-cache operations are set before the threads
 * that use them start (registration is single-threaded) and never change after; a heap's
 * observer bits are atomic.
 */
#include <errno.h>

#include "core.h"

static struct {
	hfs_observer_fn fn;
	void *arg;
} observers[HFS_OBSERVERS_MAX];
static int nobservers;

int hfs_observer_add(hfs_observer_fn fn, void *arg)
{
	if (nobservers == HFS_OBSERVERS_MAX)
		return -ENOSPC;
	observers[nobservers].fn = fn;
	observers[nobservers].arg = arg;
	return nobservers++;
}

void hfs_observe(struct hfs_heap *h, int id, bool on)
{
	if (on)
		atomic_fetch_or(&h->observers, 1u << id);
	else
		atomic_fetch_and(&h->observers, ~(1u << id));
}

void __hfs_changed(const struct hfs_change *ch)
{
	unsigned watch = atomic_load(&ch->heap->observers);

	for (int k = 0; k < nobservers; k++)
		if (watch & 1u << k)
			observers[k].fn(ch, observers[k].arg);
}

int hfs_complete_wait(struct hfs_completion *c)
{
	const struct hfs_completion_ops *ops = c ? c->ops : NULL;

	if (!ops)
		return 0;
	c->ops = NULL; /* waited for: a second wait has nothing left */
	return ops->wait(c);
}

bool hfs_complete_defer(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg)
{
	const struct hfs_completion_ops *ops = c ? c->ops : NULL;

	if (!ops || !ops->defer(c, fn, arg))
		return false; /* done already: the caller waits now, and still learns a refusal
				 (an ack that came before the defer - a fast partner, a writer
				 the CPU left waiting - may have said "no room") */
	c->ops = NULL; /* deferred: not waited for again */
	return true;
}

int hfs_writable(const struct hfs_heap *h, const struct hfs_completion *c)
{
	return hfs_mirror(h) && !(c && c->applier) ? -EROFS : 0;
}

static const struct hfs_kcache_ops *_Atomic kcache;

void hfs_kcache_register(const struct hfs_kcache_ops *ops)
{
	atomic_store(&kcache, ops);
}

void hfs_kcache_entry(hfs_ino_t parent, const char *name)
{
	const struct hfs_kcache_ops *ops = atomic_load(&kcache);

	if (ops && ops->entry)
		ops->entry(parent, name);
}

void hfs_kcache_range(hfs_ino_t ino, int64_t off, int64_t len)
{
	const struct hfs_kcache_ops *ops = atomic_load(&kcache);

	if (ops && ops->range)
		ops->range(ino, off, len);
}
