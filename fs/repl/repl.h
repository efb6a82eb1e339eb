/*
 * repl.h — replication to the partner (SPEC "Replication"; the design: repl.c), as the
 * edge starts, stops and flushes it.  Replication follows the core's changes as an
 * observer (change.c) and keeps hfs_heap.mirror; nothing in the core calls it for that.
 * Locking: repl.c's opening comment.
 */
#ifndef HEAPFS_REPL_H
#define HEAPFS_REPL_H

#include "core.h"

/* init: before mounting (the secret; -errno after printing why: exit 2); start: after
 * daemonizing (the link); stop: after the session loop. */
int hfs_repl_init(void);
/* Before the mount tree is made: .heapfs/partner and verify, and each heap's role. */
void hfs_repl_register(void);
int hfs_repl_start(void);
void hfs_repl_stop(void);
/* flush/fsync: async mode waits until the partner has everything (0 / -EIO). */
int hfs_repl_flush(const struct hfs_heap *h);
bool hfs_repl_flushes(const struct hfs_heap *h); /* an owned replicated heap */
/* heapfsctl promote: this node owns heap (NULL or "": every replicated heap), with a higher
 * epoch.  -EBUSY while the partner is connected unless force (which drops the link) or
 * discard (--discard-peer: the partner's copy is replaced by ours, ending a split brain);
 * -ENOENT no such replicated heap; -ENOTCONN no partner section. */
int hfs_repl_promote(const char *heap, bool force, bool discard);

#endif
