/*
 * mirror.c — the mirror: HELLO, mirrors made and settled, takeover decisions, the image
 * restore thread and the live applier of the owner's records (repl.c, "Takeover").
 * Locking: repl.c's opening comment.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/uio.h>

#include <jansson.h>
#include <xxhash.h>

#include "repl_i.h"

/* ---- the mirror ------------------------------------------------------------------- */

/* The replicated heap of that name, or NULL. */
struct hfs_repl_heap *repl_named(const char *name)
{
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r)
		if (!strcmp(r->h->pol.name, name))
			return r;
	return NULL;
}

/* Any heap of that name (a mirror must not shadow one of ours). */
static bool heap_exists(const char *name)
{
	bool found = false;

	pthread_rwlock_rdlock(&hfs.ns);
	for (unsigned k = 0; k < hfs.nheaps && !found; k++)
		found = !strcmp(hfs.heapv[k]->pol.name, name);
	pthread_rwlock_unlock(&hfs.ns);
	return found;
}

/* HELLO: one of these per replicated heap of the sender, owned (the receiver mirrors it)
 * or mirrored (gen, recno: the copy it holds, so the owner may resume). */
struct hello_heap {
	uint64_t size, min_block;
	uint32_t layout, replicate, name_len, mirror;
	uint64_t gen, recno, epoch;
	uint32_t wrote_apart, discard;
	uint32_t fresh;             /* an owner back empty (restarted, nothing written) */
	uint32_t flags;             /* HH_* */
}; /* + name */
#define HH_DECLARED 1u /* the sender's config declares the heap (not only a takeover) */
#define HH_LOCAL 2u    /* declared there and not replicated: listed so a clash shows */
#define HH_DIRECT 4u   /* direct_map: the mirror's heap is one too (clients after a takeover) */

static bool fresh(const struct hfs_repl_heap *r);

/* The heap of our config named name, or NULL. */
static const struct conf_heap *declared(const char *name)
{
	for (unsigned k = 0; k < hfs.conf->nheaps; k++)
		if (!strcmp(hfs.conf->heaps[k].name, name))
			return &hfs.conf->heaps[k];
	return NULL;
}

static const char *mode_name(uint32_t replicate)
{
	return replicate == CONF_REPLICATE_SYNC ? "sync" : replicate == CONF_REPLICATE_ASYNC ?
	       "async" : "not replicated";
}

/* The partner's config declares heap name (hh) too: the configs clash.  Said once, on
 * this side (the partner finds the same in our HELLO); r (NULL: we do not replicate it)
 * stops replicating the heap until the configs agree; .heapfs/partner says why. */
static void clash(struct hfs_repl_heap *r, const char *name, const struct hello_heap *hh,
		  const struct conf_heap *ours)
{
	char why[sizeof(r->misconf)], a[CONF_SIZE_BUF], b[CONF_SIZE_BUF];
	bool said = false;

	/* (a long name is cut: the reason fits the status; the log says as much) */
	snprintf(why, sizeof(why), "heap %.64s is declared on both nodes (here: %s %s, at %.32s: "
		 "%s %s); declare it on one", name, conf_format_size(ours->size, a),
		 mode_name(ours->replicate), rg.peer, conf_format_size(hh->size, b),
		 mode_name(hh->flags & HH_LOCAL ? CONF_REPLICATE_NONE : hh->replicate));
	if (r) {
		pthread_mutex_lock(&r->lock);
		said = !strcmp(r->misconf, why);
		snprintf(r->misconf, sizeof(r->misconf), "%s", why);
		r->clash_seen = true;
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_lock(&rg.lock);
	said = !strcmp(rg.misconf, why) || (r && said);
	if (!rg.clash_seen) /* the first clash of this HELLO is the one the status shows */
		snprintf(rg.misconf, sizeof(rg.misconf), "%s", why);
	rg.clash_seen = true;
	pthread_mutex_unlock(&rg.lock);
	if (!said)
		hfs_log(HFS_LOG_ERR, "partner: %s", why);
}

int send_hello(void)
{
	/* every heap, whatever their number (a heap left out would read as "the partner no
	 * longer has it" there): REPL_MAX of them fit a message */
	size_t len = 0, size = REPL_MAX * (sizeof(struct hello_heap) + CONF_NAME_MAX);
	char *buf = malloc(size);
	int64_t seq;

	struct hfs_repl_heap *r;

	if (!buf)
		return -ENOMEM;
	FOR_EACH_REPL(r) {
		struct hfs_heap *h = r->h;
		struct hello_heap hh = { .size = h->pol.size, .min_block = h->pol.min_block,
					 .layout = h->pol.layout, .replicate = h->pol.replicate,
					 .name_len = (uint32_t)strlen(h->pol.name) };

		bool empty;

		if (hh.name_len > size - len - sizeof(hh)) /* cannot be: REPL_MAX, CONF_NAME_MAX */
			break;
		empty = r->mirror && ha_mirror_empty(r); /* hfs.ns: before r->lock */
		pthread_mutex_lock(&r->lock);
		hh.mirror = r->mirror;
		hh.gen = !r->mirror || r->apply ? r->gen : 0;
		hh.recno = r->recno;
		hh.epoch = r->epoch;
		hh.wrote_apart = r->wrote_apart;
		hh.discard = r->discard;
		/* a mirror says it holds nothing the same way (the promotion score, ha.c) */
		hh.fresh = fresh(r) || (empty && !r->apply && !r->gen && !r->restoring);
		pthread_mutex_unlock(&r->lock);
		hh.flags = (declared(h->pol.name) ? HH_DECLARED : 0) |
			   (h->pol.direct_map ? HH_DIRECT : 0);
		memcpy(buf + len, &hh, sizeof(hh));
		memcpy(buf + len + sizeof(hh), h->pol.name, hh.name_len);
		len += sizeof(hh) + hh.name_len;
	}
	/* the heaps of our config that we do not replicate: a partner that does replicate
	 * one of them learns that the two configs clash (it would mirror it over ours) */
	for (unsigned k = 0; k < hfs.conf->nheaps; k++) {
		const struct conf_heap *c = &hfs.conf->heaps[k];
		struct hello_heap hh = { .size = c->size, .min_block = c->min_block,
					 .layout = c->layout, .replicate = c->replicate,
					 .name_len = (uint32_t)strlen(c->name), .flags = HH_LOCAL };

		if (c->replicate != CONF_REPLICATE_NONE ||
		    hh.name_len > size - len - sizeof(hh))
			continue;
		memcpy(buf + len, &hh, sizeof(hh));
		memcpy(buf + len + sizeof(hh), c->name, hh.name_len);
		len += sizeof(hh) + hh.name_len;
	}
	seq = rep_send(rg.l, MSG_HELLO, buf, len);
	free(buf);
	return seq < 0 ? (int)seq : 0;
}

static int make_mirror(const struct hello_heap *hh, const char *name)
{
	struct hfs_repl_heap *r = repl_named(name);
	struct conf_heap pol;
	struct hfs_inode *dir;
	int ret;

	if (r || heap_exists(name)) { /* made at an earlier connect, or ours */
		if (r && r->mirror && r->h->pol.size == hh->size)
			return 0;
		hfs_log(HFS_LOG_ERR, "partner: heap %s exists here and there (made with mkdir "
			"here?); not mirrored", name);
		return -EEXIST;
	}
	if (atomic_load(&rg.nr) >= REPL_MAX) { /* no heap made that could not be a mirror */
		static atomic_bool said; /* a HELLO may list thousands */

		if (!atomic_exchange(&said, true))
			hfs_log(HFS_LOG_WARNING, "partner: heap %s (and any more): no room for more "
				"than %u replicated heaps; not mirrored", name, REPL_MAX);
		return -ENOSPC;
	}
	if (conf_heap_defaults(hfs.conf, name, &pol))
		return -EINVAL;
	pol.size = hh->size;
	pol.min_block = hh->min_block;
	pol.layout = hh->layout ? CONF_LAYOUT_CONTIGUOUS : CONF_LAYOUT_EXTENTS;
	pol.replicate = hh->replicate == CONF_REPLICATE_SYNC ? CONF_REPLICATE_SYNC
							      : CONF_REPLICATE_ASYNC;
	pol.direct_map = hh->flags & HH_DIRECT;
	pthread_rwlock_wrlock(&hfs.ns);
	ret = __hfs_heap_mkdir(name, &pol, true, &dir);
	if (!ret) {
		dir->heap->repl = rh_new(dir->heap, true);
		if (!dir->heap->repl)
			ret = -ENOMEM; /* the heap stays, unreplicated, and writable */
		else
			dir->heap->repl->epoch = hh->epoch;
	}
	pthread_rwlock_unlock(&hfs.ns);
	if (ret)
		hfs_log(HFS_LOG_ERR, "partner: cannot make mirror heap %s: %s", name,
			strerror(-ret));
	return ret;
}

/* An owner that never had data here: restarted (memory is gone) and not written to. */
static bool fresh(const struct hfs_repl_heap *r)
{
	return !r->mirror && r->gen == 0 && r->recno == 0 && !r->loaded;
}

void wopen_clear(struct hfs_repl_heap *r)
{
	struct wid *w, *tmp;

	HASH_ITER(hh, r->wopen, w, tmp) {
		HASH_DEL(r->wopen, w);
		free(w);
	}
}

/* r->alock and r->lock held: the files open for writing on the owner we take over from,
 * referenced,
 * for mark_interrupted() (which cannot run under r->lock: it changes the heap). */
static void __collect_marks(struct hfs_repl_heap *r)
{
	struct wid *w, *tmp;

	free(r->marks);
	r->nmarks = 0;
	r->marks = calloc(HASH_COUNT(r->wopen) + 1, sizeof(*r->marks));
	HASH_ITER(hh, r->wopen, w, tmp) {
		struct hfs_inode *i = r->apply ? hfs_apply_inode(r->apply, w->id) : NULL;

		if (i && r->marks) {
			hfs_iref(i, 1);
			r->marks[r->nmarks++] = i;
		}
	}
	wopen_clear(r);
}

/* After a takeover: files that were open for writing on the old owner say so. */
void mark_interrupted(struct hfs_repl_heap *r)
{
	struct hfs_inode **m;
	size_t n;

	pthread_mutex_lock(&r->lock);
	m = r->marks;
	n = r->nmarks;
	r->marks = NULL;
	r->nmarks = 0;
	pthread_mutex_unlock(&r->lock);
	for (size_t k = 0; k < n; k++) {
		hfs_setxattr(m[k], HFS_XATTR_STATE, "interrupted", strlen("interrupted"),
			     HFS_XATTR_RESTORE, NULL);
		hfs_iput(m[k], 1);
	}
	free(m);
}

static void mark_all(void)
{
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r)
		mark_interrupted(r);
}

/* r->alock and r->lock held: become the owner (a promotion, or the partner came back
 * with nothing).  Not while an image restore runs (r->restoring): its thread would go on
 * writing into a heap users now change. */
void __become_owner(struct hfs_repl_heap *r, uint64_t above)
{
	if (r->mirror)
		__collect_marks(r);
	if (r->mirror && r->apply) {
		hfs_apply_end(r->apply, false);
		r->apply = NULL;
	}
	r->refused = r->noroom = false;
	r->epoch = (above > r->epoch ? above : r->epoch) + 1;
	r->lost = true; /* what the other side holds is unknown: it gets a whole image */
	pend_drop(r);
	r->streaming = true;
	rh_set_mirror(r, false);
}

/* r->alock and r->lock held: become the mirror (the partner won); its image replaces
 * ours. */
static void __become_mirror(struct hfs_repl_heap *r, uint64_t epoch)
{
	pend_drop(r);
	r->epoch = epoch;
	r->gen = r->recno = 0;
	r->wrote_apart = r->discard = r->split = r->loaded = false;
	r->streaming = false;
	rh_set_mirror(r, true);
}

/* The partner holds a copy of our heap (hh): resume from it, or it takes over when we
 * came back with nothing and it has the data. */
static void peer_holds(const char *name, const struct hello_heap *hh)
{
	struct hfs_repl_heap *r = repl_named(name);

	if (!r)
		return;
	pthread_mutex_lock(&r->alock);
	pthread_mutex_lock(&r->lock);
	r->peer_empty = hh->fresh;
	r->peer_listed = true; /* mirrored there (demoted): not "gone" */
	if (r->mirror && hh->gen && r->apply && hh->epoch >= r->epoch) {
		/* both mirrors: nobody owns it; nothing to do */
	} else if (!r->mirror && fresh(r) && hh->gen) {
		hfs_log(HFS_LOG_NOTICE, "partner: %s: we came back empty, the partner holds it: "
			"we mirror it now", name);
		__become_mirror(r, hh->epoch + 1);
	} else if (!r->mirror) {
		r->peer_has = hh->gen != 0;
		r->peer_gen = hh->gen;
		r->peer_recno = hh->recno;
	}
	pthread_mutex_unlock(&r->lock);
	pthread_mutex_unlock(&r->alock);
}

/* Does our side win the heap both nodes own?  Both sides compute it from the same two
 * HELLO entries, so exactly one wins (ties go to the smaller node name). */
static int owner_wins(const struct hfs_repl_heap *r, const struct hello_heap *hh)
{
	bool pfresh = hh->fresh;

	if (fresh(r) != pfresh)
		return pfresh ? 1 : 0;
	if (r->discard != (bool)hh->discard)
		return r->discard ? 1 : 0;
	if (r->wrote_apart && hh->wrote_apart)
		return -1; /* split brain */
	if (r->epoch != hh->epoch)
		return r->epoch > hh->epoch ? 1 : 0;
	if (r->wrote_apart != (bool)hh->wrote_apart)
		return r->wrote_apart ? 1 : 0;
	return strcmp(hfs.conf->partner.node, rg.peer) < 0 ? 1 : 0;
}

/* The partner says it owns heap name (hh).  0: we hold no such replicated heap (make the
 * mirror); 1: settled here (we mirror it already, or both own it: who keeps it). */
static int settle_owner(const char *name, const struct hello_heap *hh)
{
	struct hfs_repl_heap *r = repl_named(name);
	int win;

	if (!r)
		return 0;
	pthread_mutex_lock(&r->alock);
	pthread_mutex_lock(&r->lock);
	r->peer_empty = false;
	if (hh->discard)
		r->split = false; /* --discard-peer there: our copy goes (a demoted split side) */
	if (r->mirror) {
		if (r->apply && r->gen && hh->fresh && !hfs.conf->partner.managed) {
			/* the owner came back empty; we hold its data: we own it now */
			hfs_log(HFS_LOG_NOTICE, "partner: %s: the owner came back empty: we own it "
				"now", name);
			__become_owner(r, hh->epoch);
			r->peer_has = false;
		} else if (hh->epoch > r->epoch) {
			r->epoch = hh->epoch;
		}
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_unlock(&r->alock);
		return 1;
	}
	win = owner_wins(r, hh);
	r->split = win < 0;
	if (win < 0) {
		hfs_log(HFS_LOG_WARNING, "partner: %s: split brain (both sides wrote while apart); "
			"nothing is merged until `heapfsctl promote --discard-peer` on the side that "
			"wins", name);
		r->peer_has = false;
	} else if (win) {
		r->peer_has = false; /* its copy is not ours: it gets a whole image */
		r->lost = true;
	} else {
		hfs_log(HFS_LOG_NOTICE, "partner: %s: the partner owns it (epoch %llu): we mirror "
			"it now", name, (unsigned long long)hh->epoch);
		__become_mirror(r, hh->epoch);
	}
	pthread_mutex_unlock(&r->lock);
	pthread_mutex_unlock(&r->alock);
	return 1;
}

static void sync_start(void)
{
	pthread_t last;
	bool on;

	/* the last one first (it fails fast once the link is down); it takes rg.lock at its
	 * end, so not joined under it.  Only the receive thread starts sync threads. */
	pthread_mutex_lock(&rg.lock);
	last = rg.sync_th;
	on = rg.sync_on;
	rg.sync_on = false;
	pthread_mutex_unlock(&rg.lock);
	if (on)
		pthread_join(last, NULL);
	pthread_mutex_lock(&rg.lock);
	rg.sync_conn = atomic_load(&rg.conn); /* this connection's: the receive thread's */
	rg.syncing = true;
	/* not once hfs_repl_stop has looked for the last one (it sets stopping first) */
	rg.sync_on = !atomic_load(&rg.stopping) &&
		     !pthread_create(&rg.sync_th, NULL, sync_thread, NULL);
	if (!rg.sync_on)
		rg.syncing = false;
	pthread_mutex_unlock(&rg.lock);
}

static int recv_heaps(const char *p, size_t len);

int recv_hello(const char *p, size_t len)
{
	struct hfs_repl_heap *r;
	bool took = false;
	int ret;

	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		r->peer_owns = r->peer_listed = false;
		r->clash_seen = false;
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_lock(&rg.lock);
	rg.clash_seen = false;
	pthread_mutex_unlock(&rg.lock);
	ret = recv_heaps(p, len);
	ha_hello(); /* what the partner owns is known (a promote may go ahead, ha.c) */
	/* what this HELLO no longer clashes over replicates again (and is not said again) */
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		if (!r->clash_seen)
			r->misconf[0] = 0;
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_lock(&rg.lock);
	if (!rg.clash_seen)
		rg.misconf[0] = 0;
	pthread_mutex_unlock(&rg.lock);
	mark_all(); /* a takeover in settle_owner */
	/* a heap we mirror, with data, that the partner no longer has at all: its owner came
	 * back empty (a restart of a node whose config does not declare it): we own it */
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->alock);
		pthread_mutex_lock(&r->lock);
		if (!ret && r->mirror && !r->peer_owns && !r->peer_listed && r->apply && r->gen &&
		    !hfs.conf->partner.managed) { /* managed: promote alone changes roles */
			hfs_log(HFS_LOG_NOTICE, "partner: %s: the partner no longer has it: we own "
				"it now", r->h->pol.name);
			__become_owner(r, r->epoch);
			r->peer_has = false;
			took = true;
		}
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_unlock(&r->alock);
	}
	mark_all();
	if (took)
		send_hello(); /* so that the partner makes its mirror before our image */

	/* what the partner holds is known: resync what it lacks */
	sync_start();
	return ret;
}

/* managed (ha.c): both nodes run one config, so each declares the heap; alike, that is
 * no clash */
static bool managed_twin(const struct conf_heap *ours, const struct hello_heap *hh)
{
	return hfs.conf->partner.managed && hh->flags & HH_DECLARED && !(hh->flags & HH_LOCAL) &&
	       ours->size == hh->size && ours->replicate == hh->replicate;
}

static int recv_heaps(const char *p, size_t len)
{
	while (len) {
		const struct conf_heap *ours;
		struct hello_heap hh;
		char name[CONF_NAME_MAX + 1];

		if (len < sizeof(hh))
			return -EBADMSG;
		memcpy(&hh, p, sizeof(hh));
		if (!hh.name_len || hh.name_len > CONF_NAME_MAX || len - sizeof(hh) < hh.name_len ||
		    hh.size > CONF_HEAP_MAX || hh.size & (hh.size - 1) ||
		    hh.min_block < CONF_MIN_BLOCK_MIN || hh.min_block > CONF_MIN_BLOCK_MAX ||
		    hh.min_block & (hh.min_block - 1) || hh.min_block > hh.size ||
		    hh.epoch > INT64_MAX || /* epochs only rise by one: never near wrapping */
		    hh.flags & ~(HH_DECLARED | HH_LOCAL | HH_DIRECT))
			return -EBADMSG;
		memcpy(name, p + sizeof(hh), hh.name_len);
		name[hh.name_len] = 0;
		if (conf_check_heap_name(name))
			return -EBADMSG;
		ours = declared(name);
		if (ours && !managed_twin(ours, &hh) && (hh.flags & HH_DECLARED || (hh.flags & HH_LOCAL &&
							 ours->replicate != CONF_REPLICATE_NONE))) {
			struct hfs_repl_heap *r = repl_named(name);

			if (r && !r->mirror) { /* it is there: no takeover for "gone" */
				pthread_mutex_lock(&r->lock);
				r->peer_owns = true;
				pthread_mutex_unlock(&r->lock);
			}
			clash(r, name, &hh, ours);
		} else if (hh.flags & HH_LOCAL) {
			/* theirs alone, unreplicated: nothing to do here */
		} else if (hh.mirror) {
			peer_holds(name, &hh);
		} else {
			struct hfs_repl_heap *r = repl_named(name);

			if (r) {
				pthread_mutex_lock(&r->lock);
				r->peer_owns = true;
				pthread_mutex_unlock(&r->lock);
			}
			if (!settle_owner(name, &hh) && !make_mirror(&hh, name) &&
			    (r = repl_named(name))) { /* made now: it owns it */
				pthread_mutex_lock(&r->lock);
				r->peer_owns = true;
				pthread_mutex_unlock(&r->lock);
			}
		}
		p += sizeof(hh) + hh.name_len;
		len -= sizeof(hh) + hh.name_len;
	}
	return 0;
}

struct restore_arg {
	struct hfs_repl_heap *r;
	int fd;
};

/* The image restore: its own applier, which becomes r->apply (the live one) only when
 * the whole image is in.  It never holds r->alock while it reads the pipe (the receive
 * thread, which fills it, takes r->alock). */
static void *restore_thread(void *arg)
{
	struct restore_arg *ra = arg;
	struct hfs_repl_heap *r = ra->r;
	struct hfs_apply *a = NULL;
	struct img_r *stream;
	struct img_rec rec;
	int ret;

	ret = img_r_open(ra->fd, r->h->pol.size, &stream, r->why, sizeof(r->why));
	if (!ret) {
		ret = hfs_apply_begin(r->h, r->why, sizeof(r->why), &a);
		while (!ret && (ret = img_r_next(stream, &rec)) == 1)
			ret = hfs_apply_rec(a, stream, &rec);
		if (!ret)
			ret = hfs_apply_settle(a);
		img_r_free(stream);
	}
	pthread_mutex_lock(&r->alock);
	pthread_mutex_lock(&r->lock);
	r->restoring = false;
	if (!ret && r->mirror) { /* a promote waits for this (it refuses while restoring) */
		hfs_apply_live(a);
		r->apply = a;
		a = NULL;
	}
	pthread_mutex_unlock(&r->lock);
	if (a)
		hfs_apply_end(a, false);
	pthread_mutex_unlock(&r->alock);
	/* read what is left so the writer never blocks on a dead reader */
	while (read(ra->fd, r->why + sizeof(r->why) - 1, 1) > 0)
		;
	close(ra->fd);
	free(ra);
	r->th_ret = ret;
	return NULL;
}

/* End the image restore (if one runs).  cut: the link went down under it, so a half
 * image is expected, not a refusal. */
int mirror_join(struct hfs_repl_heap *r, bool cut)
{
	if (r->pipe_w >= 0) {
		close(r->pipe_w);
		r->pipe_w = -1;
	}
	if (r->th_on) {
		pthread_join(r->th, NULL);
		r->th_on = false;
		if (r->th_ret && cut)
			hfs_log(HFS_LOG_NOTICE, "partner: the image of %s was cut off with the "
				"link; the next connect sends it again", r->h->pol.name);
		else if (r->th_ret)
			hfs_log(HFS_LOG_ERR, "partner: the image of %s was refused: %s",
				r->h->pol.name, r->why[0] ? r->why : strerror(-r->th_ret));
	}
	return r->th_on ? -EIO : r->th_ret;
}

/* RESET (gen): empty the copy and start the restore of the image that follows.  Under
 * r->alock throughout, so a promote either comes before (the heap is no longer a mirror:
 * refused) or after (the restore runs: the promote is refused). */
int mirror_reset(struct hfs_repl_heap *r, uint64_t gen)
{
	struct restore_arg *ra = NULL;
	int p[2] = { -1, -1 }, ret;

	mirror_join(r, true);
	pthread_mutex_lock(&r->alock);
	if (!r->mirror) { /* promoted since on_recv looked */
		ret = -ENOTCONN;
		goto out;
	}
	pthread_mutex_lock(&r->lock);
	r->gen = gen;
	r->recno = 0;
	wopen_clear(r);
	if (r->apply)
		hfs_apply_end(r->apply, false);
	r->apply = NULL;
	pthread_mutex_unlock(&r->lock);
	r->noroom = r->refused = false;
	ret = hfs_apply_clear(r->h);
	if (ret)
		goto out;
	ret = pipe2(p, O_CLOEXEC) ? -errno : (ra = malloc(sizeof(*ra))) ? 0 : -ENOMEM;
	if (ret)
		goto out;
	ra->r = r;
	ra->fd = p[0];
	r->why[0] = 0;
	r->th_ret = 0;
	pthread_mutex_lock(&r->lock);
	r->restoring = !pthread_create(&r->th, NULL, restore_thread, ra);
	ret = r->restoring ? 0 : -EAGAIN;
	pthread_mutex_unlock(&r->lock);
	if (!ret) {
		r->th_on = true;
		r->pipe_w = p[1];
		ra = NULL;
		p[0] = p[1] = -1;
	}
out:
	pthread_mutex_unlock(&r->alock);
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	free(ra);
	return ret;
}

int mirror_img(struct hfs_repl_heap *r, const char *p, size_t len)
{
	if (r->pipe_w < 0)
		return -EPROTO;
	while (len) {
		ssize_t n = write(r->pipe_w, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mirror_writers(struct hfs_repl_heap *r, const char *p, size_t len)
{
	uint64_t id;
	struct wid *w;

	if (len != sizeof(id) + 1)
		return -EBADMSG;
	memcpy(&id, p, sizeof(id));
	pthread_mutex_lock(&r->lock);
	HASH_FIND(hh, r->wopen, &id, sizeof(id), w);
	/* no more than this copy may hold inodes: past that a peer only fills our memory (a
	 * file this copy cannot hold is not marked anyway) */
	if (p[sizeof(id)] && !w && HASH_COUNT(r->wopen) < conf_heap_inodes(&r->h->pol) &&
	    (w = calloc(1, sizeof(*w)))) {
		w->id = id;
		HASH_ADD(hh, r->wopen, id, sizeof(w->id), w);
	} else if (!p[sizeof(id)] && w) {
		HASH_DEL(r->wopen, w);
		free(w);
	}
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/* The mirror: a data record did not fit (this host's memory, file.c alloc_block) and was
 * not applied at all.  sync: the owner gives the write back (a truncate follows) and this
 * copy stays whole: the record counts as seen.  async: the owner goes on, so this copy is
 * behind until the next image; later records are refused too (applied to a copy with a
 * hole they would hide it). */
static int no_room_here(struct hfs_repl_heap *r, uint64_t recno)
{
	bool sync = r->h->pol.replicate == CONF_REPLICATE_SYNC;

	hfs_log(HFS_LOG_WARNING, "partner: no room here for a change to %s%s", r->h->pol.name,
		sync ? ": refused, the owner gives it back" : ": this copy is behind until "
		"the next resync");
	pthread_mutex_lock(&r->lock);
	if (sync) {
		r->recno = recno;
	} else {
		r->noroom = true;
		r->gen = 0; /* ask for a whole image next time */
	}
	pthread_mutex_unlock(&r->lock);
	r->why[0] = 0;
	return -ENOSPC;
}

/* r->alock held: apply one record (recno, then the record) to the live copy.  A record
 * refused here leaves the copy as it was before it (the applier checks before it changes)
 * and none after it is applied: the owner is told (the ack's status; -ENOSPC and
 * -ENOTCONN mean room and a lost link there, so never those) and resyncs the heap whole. */
static int __mirror_rec(struct hfs_repl_heap *r, const char *p, size_t len)
{
	static char str[IMG_REC_STR]; /* the receive thread is the only caller */
	struct img_rec rec;
	const void *data;
	uint64_t recno;
	int ret;

	if (!r->mirror)
		return -ENOTCONN; /* promoted since on_recv looked: as there */
	if (!r->apply)
		return -EPROTO; /* no full image yet, or it failed */
	if (r->noroom)
		return -ENOSPC; /* async: this copy lacks a change until the next image */
	if (r->refused)
		return -ESTALE; /* said once: this copy waits for its image */
	if (len < sizeof(recno))
		return -EBADMSG;
	memcpy(&recno, p, sizeof(recno));
	if (recno <= r->recno)
		return 0; /* had it: the owner resent from before what we acknowledged */
	ret = recno == r->recno + 1 ? 0 : -EPROTO; /* a gap: this copy is no longer whole */
	if (!ret)
		ret = img_rec_decode(p + sizeof(recno), len - sizeof(recno), &rec, &data, str,
				     r->why, sizeof(r->why));
	if (!ret)
		ret = hfs_apply_mem(r->apply, NULL, &rec, data);
	if (ret == -ENOSPC && rec.type == IMG_DATA) /* whole or not at all (hfs_write) */
		return no_room_here(r, recno);
	pthread_mutex_lock(&r->lock);
	if (ret)
		r->gen = 0; /* ask for a whole image next time */
	else
		r->recno = recno;
	pthread_mutex_unlock(&r->lock);
	if (ret) {
		hfs_log(HFS_LOG_ERR, "partner: a change to %s (record %llu) failed: %s; the "
			"copy waits for a whole image", r->h->pol.name, (unsigned long long)recno,
			r->why[0] ? r->why : strerror(-ret));
		r->refused = true;
		if (ret == -ENOSPC || ret == -ENOTCONN)
			ret = -EIO;
	}
	r->why[0] = 0;
	return ret;
}

int mirror_rec(struct hfs_repl_heap *r, const char *p, size_t len)
{
	int ret;

	pthread_mutex_lock(&r->alock);
	ret = __mirror_rec(r, p, len);
	pthread_mutex_unlock(&r->alock);
	return ret;
}
