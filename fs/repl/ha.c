/*
 * ha.c — replication under a cluster manager (issue 19; README "Running under
 * Pacemaker"): demote, the on_peer_lost hook and the gate it puts before sync writes,
 * and the promotion score .heapfs/partner shows.
 *
 * Demote.  An owner becomes a mirror and keeps its data (users get EROFS); its next HELLO
 * lists the heap as mirrored with no image (gen 0), so whoever owns it next sends it
 * whole.  On a side of a split brain the heap stays split (r->split and wrote_apart are
 * kept; the owner's sync thread skips a split heap): nothing moves until
 * `promote --discard-peer`.
 *
 * The gate.  With `on_peer_lost` set, an owner that loses its partner (or is promoted
 * while it has none) may not acknowledge a sync write until the program said it may go
 * on alone: the program is run once per owned heap with HEAP EPOCH STATE (through
 * /bin/sh, so the setting may carry arguments); exit 0, 3, 4 or 7 (DRBD's fence-peer
 * codes for "nothing to fence", "peer outdated already", "peer outdated", "peer fenced")
 * opens the gate; anything else, or no answer within on_peer_lost_timeout (the program is
 * killed), shuts it: waiting writes fail (EIO) and the owner demotes itself, so a node
 * that could not fence never carries on alone.  Writes wait in gate_wait (a FUSE worker),
 * deferred replies stay in deferq until the answer.  Once the pair is connected again
 * (the partner has everything), the program is run with STATE "connected" so it can lift
 * what it placed.
 *
 * Locking: ha.mu guards the round, the hook's thread handle and the gate's changes (the
 * gate itself is atomic: send_rec reads it under r->lock); it is taken under nothing of
 * ours, and under it only r->lock (to list the owned heaps) and deferq.lock (to read what
 * is acknowledged).  The hook's thread is joined with ha.mu released.  Demote takes
 * r->alock then r->lock like every takeover (repl.c).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "repl_i.h"

enum { GATE_OPEN, GATE_PENDING, GATE_REFUSED };

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	_Atomic int gate;
	/* bumped at each loss and reconnect: an old answer is dropped */
	atomic_uint_fast64_t round;
	bool fenced;        /* the hook ran for this absence: say "connected" when back */
	pthread_t th;
	bool th_on;
	atomic_int child;   /* the running program's pid (its group), 0: none */
	atomic_bool stopping;
} ha = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* ---- demote ------------------------------------------------------------------------ */

/* r->alock and r->lock held: the owner becomes a mirror with its data as it is (empty:
 * read before r->lock). */
static void __demote(struct hfs_repl_heap *r, bool empty)
{
	pend_drop(r);
	r->gen = r->recno = 0; /* no image of the next owner's: it sends one whole */
	r->loaded = !empty;    /* promoted again, it is not an owner "back empty" */
	r->streaming = false;
	r->peer_has = r->resume = r->discard = r->behind = false;
	if (!r->split)
		r->wrote_apart = false;
	rh_set_mirror(r, true);
}

/* Demote every owned heap named heap (NULL or "": all); how many were owned. */
static int demote(const char *heap, bool *any)
{
	struct hfs_repl_heap *r;
	bool empty;
	int n = 0;

	FOR_EACH_REPL(r) {
		if (heap && heap[0] && strcmp(r->h->pol.name, heap))
			continue;
		*any = true;
		pthread_mutex_lock(&r->alock);
		empty = ha_mirror_empty(r); /* hfs.ns: inside r->alock, outside r->lock */
		pthread_mutex_lock(&r->lock);
		if (!r->mirror) {
			__demote(r, empty);
			n++;
			hfs_log(HFS_LOG_NOTICE, "partner: %s: demoted: a read-only mirror now "
				"(epoch %llu)%s", r->h->pol.name, (unsigned long long)r->epoch,
				r->split ? ", still split brain" : "");
		}
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_unlock(&r->alock);
	}
	return n;
}

int hfs_repl_demote(const char *heap)
{
	bool any = false;
	int n;

	if (!rg.on)
		return -ENOTCONN;
	n = demote(heap, &any);
	if (!any)
		return -ENOENT;
	/* the partner learns at once that nobody here owns it (no reconnect: a mirror of
	 * ours keeps its link and its score) */
	if (n && atomic_load(&rg.up) && rg.l)
		send_hello();
	return 0;
}

/* ---- the gate ----------------------------------------------------------------------- */

bool ha_hooked(void)
{
	return hfs.conf->partner.present && hfs.conf->partner.on_peer_lost;
}

/* Run the program for one heap; true: the owner may go on alone. */
static bool run_hook(const char *heap, uint64_t epoch, const char *state)
{
	char ep[24], *cmd = NULL;
	char *argv[] = { "/bin/sh", "-c", NULL, "heapfs-on-peer-lost", (char *)heap, ep,
			 (char *)state, NULL };
	extern char **environ;
	posix_spawnattr_t at;
	sigset_t none;
	int64_t until = hfs_now_ns() + (int64_t)hfs.conf->partner.on_peer_lost_timeout_ms * 1000000;
	pid_t pid;
	int ret, st = 0;

	snprintf(ep, sizeof(ep), "%llu", (unsigned long long)epoch);
	if (asprintf(&cmd, "%s \"$@\"", hfs.conf->partner.on_peer_lost) < 0)
		return false;
	argv[2] = cmd;
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setpgroup(&at, 0); /* its own group: a timeout kills all of it */
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
	ret = posix_spawn(&pid, "/bin/sh", NULL, &at, argv, environ);
	posix_spawnattr_destroy(&at);
	free(cmd);
	if (ret) {
		hfs_log(HFS_LOG_ERR, "partner: on_peer_lost: cannot run: %s", strerror(ret));
		return false;
	}
	atomic_store(&ha.child, pid);
	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid || (w < 0 && errno != EINTR))
			break;
		if (hfs_now_ns() > until || atomic_load(&ha.stopping)) {
			kill(-pid, SIGKILL);
			waitpid(pid, &st, 0);
			hfs_log(HFS_LOG_ERR, "partner: on_peer_lost %s %s: no answer in %ums: "
				"killed", heap, state, hfs.conf->partner.on_peer_lost_timeout_ms);
			st = -1;
			break;
		}
		usleep(20000);
	}
	atomic_store(&ha.child, 0);
	if (st == -1 || !WIFEXITED(st)) {
		if (st != -1)
			hfs_log(HFS_LOG_ERR, "partner: on_peer_lost %s %s: killed by a signal",
				heap, state);
		return false;
	}
	ret = WEXITSTATUS(st);
	hfs_log(HFS_LOG_NOTICE, "partner: on_peer_lost %s %llu %s: exit %d", heap,
		(unsigned long long)epoch, state, ret);
	return ret == 0 || ret == 3 || ret == 4 || ret == 7;
}

struct hook_job {
	uint64_t round;
	bool wait; /* a loss (the answer opens or shuts the gate), or "connected" */
	unsigned n;
	struct { char name[CONF_NAME_MAX + 1]; uint64_t epoch; } h[];
};

/* What the program is asked about: the owned heaps (their names and epochs now, so the
 * thread does not touch the heaps while it waits). */
static struct hook_job *job_new(uint64_t round, bool wait)
{
	struct hook_job *j = calloc(1, sizeof(*j) + REPL_MAX * sizeof(j->h[0]));
	struct hfs_repl_heap *r;

	if (!j)
		return NULL;
	j->round = round;
	j->wait = wait;
	FOR_EACH_REPL(r) {
		pthread_mutex_lock(&r->lock);
		if (!r->mirror && j->n < REPL_MAX) {
			snprintf(j->h[j->n].name, sizeof(j->h[0].name), "%s", r->h->pol.name);
			j->h[j->n++].epoch = r->epoch;
		}
		pthread_mutex_unlock(&r->lock);
	}
	return j;
}

static void *hook_thread(void *arg)
{
	struct hook_job *j = arg;
	bool ok = true, current;

	for (unsigned k = 0; k < j->n && !atomic_load(&ha.stopping) &&
	     atomic_load(&ha.round) == j->round; k++)
		ok = run_hook(j->h[k].name, j->h[k].epoch, j->wait ? "degraded" : "connected") &&
		     ok;
	if (!j->wait) {
		free(j);
		return NULL;
	}
	pthread_mutex_lock(&ha.mu);
	current = ha.round == j->round && !atomic_load(&ha.stopping);
	if (current) {
		atomic_store(&ha.gate, ok ? GATE_OPEN : GATE_REFUSED);
		pthread_cond_broadcast(&ha.cv);
	}
	pthread_mutex_unlock(&ha.mu);
	if (current && ok) {
		hfs_log(HFS_LOG_NOTICE, "partner: on_peer_lost allows it: the owner goes on alone");
		deferred_run(UINT64_MAX);
	} else if (current) {
		bool any = false;

		hfs_log(HFS_LOG_ERR, "partner: on_peer_lost does not allow going on alone: "
			"waiting writes fail, the owned heaps are demoted");
		deferred_fail(-EIO);
		demote(NULL, &any);
	}
	free(j);
	return NULL;
}

/* Start the program for a new round (ha.mu held); the previous thread is joined first. */
static void __hook_start(bool wait)
{
	struct hook_job *j;

	if (ha.th_on) {
		pthread_t t = ha.th;
		int pid = atomic_load(&ha.child);

		ha.th_on = false;
		if (pid > 0) /* its answer would be dropped: the round moved on */
			kill(-pid, SIGKILL);
		/* it takes ha.mu at its end: not joined under it */
		pthread_mutex_unlock(&ha.mu);
		pthread_join(t, NULL);
		pthread_mutex_lock(&ha.mu);
	}
	j = job_new(ha.round, wait);
	if (!j || !j->n || atomic_load(&ha.stopping)) {
		if (wait) /* nothing owned here: nothing waits */
			atomic_store(&ha.gate, GATE_OPEN);
		pthread_cond_broadcast(&ha.cv);
		free(j);
		return;
	}
	ha.th_on = !pthread_create(&ha.th, NULL, hook_thread, j);
	if (!ha.th_on) {
		free(j);
		if (wait)
			atomic_store(&ha.gate, GATE_REFUSED);
		pthread_cond_broadcast(&ha.cv);
	}
}

/* The link's down (first thing: before a writer can see the link down): an owner asks
 * the program; true when it does (the caller leaves the waiting replies to it). */
bool ha_down(void)
{
	struct hfs_repl_heap *r;
	bool owns = false;

	if (!ha_hooked())
		return false;
	FOR_EACH_REPL(r)
		owns = owns || !r->mirror;
	if (!owns)
		return false;
	pthread_mutex_lock(&ha.mu);
	ha.round++;
	ha.fenced = true;
	atomic_store(&ha.gate, GATE_PENDING);
	__hook_start(true);
	pthread_mutex_unlock(&ha.mu);
	return true;
}

/* Promoted with no partner connected: the same question before going on alone. */
void ha_promoted_alone(void)
{
	if (!atomic_load(&rg.up))
		ha_down();
}

/* The link is up: the gate opens (records go out again); replies still waiting on the
 * round that never answered were never acknowledged by anyone: they fail. */
void ha_up(void)
{
	bool pending;

	if (!ha_hooked())
		return;
	pthread_mutex_lock(&ha.mu);
	ha.round++;
	pending = atomic_load(&ha.gate) == GATE_PENDING;
	atomic_store(&ha.gate, GATE_OPEN);
	pthread_cond_broadcast(&ha.cv);
	pthread_mutex_unlock(&ha.mu);
	if (pending)
		deferred_fail(-EIO);
}

/* The partner has everything again: the program may lift what it placed. */
void ha_connected(void)
{
	if (!ha_hooked())
		return;
	pthread_mutex_lock(&ha.mu);
	if (ha.fenced) {
		ha.fenced = false;
		ha.round++;
		__hook_start(false);
	}
	pthread_mutex_unlock(&ha.mu);
}

/* Is record seq of connection conn acknowledged? */
static bool acked(uint64_t seq, uint64_t conn)
{
	bool ret;

	pthread_mutex_lock(&deferq.lock);
	ret = seq && deferq.conn == conn && deferq.acked >= seq;
	pthread_mutex_unlock(&deferq.lock);
	return ret;
}

/* A sync change not acknowledged by the partner (its record seq of connection conn, or
 * none: 0): 0 once it is, or once the program let the owner go on alone; -EIO when it
 * did not or the wait is over (the change stands here, unacknowledged). */
int64_t ha_gate_wait_ms(void)
{
	return (int64_t)hfs.conf->partner.on_peer_lost_timeout_ms +
	       hfs.conf->partner.timeout_ms + 1000;
}

int ha_gate_wait(uint64_t seq, uint64_t conn)
{
	int64_t until = hfs_now_ns() + ha_gate_wait_ms() * 1000000;
	int ret = -EIO;

	if (!ha_hooked())
		return 0;
	pthread_mutex_lock(&ha.mu);
	while (hfs_now_ns() < until) {
		struct timespec ts;
		int gate = atomic_load(&ha.gate);

		if (acked(seq, conn)) {
			ret = 0;
			break;
		}
		/* the connection it went out on (or was not sent on) is gone: the program's
		 * answer decides; back before it answered: acknowledged by nobody, it fails */
		if (atomic_load(&rg.conn) != conn && atomic_load(&rg.up))
			break;
		if ((atomic_load(&rg.conn) != conn || !atomic_load(&rg.up)) &&
		    gate != GATE_PENDING) {
			ret = gate == GATE_OPEN ? 0 : -EIO;
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&ha.cv, &ha.mu, &ts);
	}
	pthread_mutex_unlock(&ha.mu);
	return ret;
}

static int gate_c_wait(struct hfs_completion *c)
{
	c->wrote.i = NULL;
	return ha_gate_wait(0, c->conn);
}

static bool gate_c_defer(struct hfs_completion *c, void (*fn)(void *arg, int err), void *arg)
{
	(void)c, (void)fn, (void)arg;
	return false; /* the caller waits (a FUSE worker, at most the hook's timeout) */
}

static const struct hfs_completion_ops gate_ops = { .wait = gate_c_wait,
						    .defer = gate_c_defer };

void ha_gate(struct hfs_repl_heap *r, struct hfs_completion *c, bool failed)
{
	if (!c || c->ops || r->h->pol.replicate != CONF_REPLICATE_SYNC || !ha_hooked())
		return;
	if (!failed && atomic_load(&ha.gate) == GATE_OPEN)
		return; /* alone, and allowed (or connected, resyncing) */
	c->ops = &gate_ops;
	c->first = c->last = 0;
	c->conn = atomic_load(&rg.conn); /* the wait ends once this one is gone */
}

void ha_stop(void)
{
	pthread_t t;
	bool on;
	int pid;

	atomic_store(&ha.stopping, true);
	pid = atomic_load(&ha.child);
	if (pid > 0)
		kill(-pid, SIGKILL);
	pthread_mutex_lock(&ha.mu);
	on = ha.th_on;
	t = ha.th;
	ha.th_on = false;
	pthread_cond_broadcast(&ha.cv);
	pthread_mutex_unlock(&ha.mu);
	if (on)
		pthread_join(t, NULL);
}

/* ---- the promotion score ----------------------------------------------------------- */

/* hfs.ns held shared: a mirror copy with nothing in it (an empty start, nothing came) */
static bool copy_empty(const struct hfs_repl_heap *r)
{
	return !r->h->dir || !r->h->dir->dir.nents;
}

bool ha_mirror_empty(struct hfs_repl_heap *r)
{
	bool empty;

	pthread_rwlock_rdlock(&hfs.ns);
	empty = copy_empty(r);
	pthread_rwlock_unlock(&hfs.ns);
	return empty;
}

/* r->lock held, and empty (ha_mirror_empty) read before it: the heap's worth */
static int __score(const struct hfs_repl_heap *r, bool up, bool syncing, bool empty)
{
	if (r->split || r->misconf[0])
		return 0;
	if (!r->mirror)
		return atomic_load(&ha.gate) == GATE_REFUSED ? 0 : HA_SCORE_OWNER;
	if (r->restoring || r->refused || r->noroom)
		return 0;
	if (up && !syncing && r->apply && r->gen)
		return HA_SCORE_MIRROR;
	/* both sides started empty and nobody owns it yet: either may be promoted */
	if (up && !syncing && !r->apply && !r->gen && empty && r->peer_empty && !r->peer_owns)
		return HA_SCORE_EMPTY;
	if (!up && r->apply && r->gen && r->h->pol.replicate == CONF_REPLICATE_SYNC)
		return HA_SCORE_DEGRADED;
	return 0;
}

int hfs_repl_score(void)
{
	struct hfs_repl_heap *r;
	int score = -1;
	bool up, syncing;

	if (!rg.on)
		return 0;
	pthread_mutex_lock(&rg.lock);
	up = rg.up;
	syncing = rg.syncing;
	pthread_mutex_unlock(&rg.lock);
	FOR_EACH_REPL(r) {
		bool empty = ha_mirror_empty(r);
		int s;

		pthread_mutex_lock(&r->lock);
		s = __score(r, up, syncing, empty);
		pthread_mutex_unlock(&r->lock);
		if (score < 0 || s < score)
			score = s; /* the node is worth its weakest copy */
	}
	return score < 0 ? 0 : score;
}

const char *ha_gate_name(void)
{
	static const char *const names[] = { "open", "pending", "refused" };

	if (!ha_hooked())
		return NULL;
	return names[atomic_load(&ha.gate)];
}

/* the connection (rg.conn) whose HELLO was read last */
static atomic_uint_fast64_t hello_conn;

void ha_hello(void)
{
	atomic_store(&hello_conn, atomic_load(&rg.conn));
}

/* Does the partner say it owns heap (NULL or "": any)?  promote refuses then, and while
 * a connection's HELLO has not been read yet (it may say so). */
bool ha_peer_owns(const char *heap)
{
	struct hfs_repl_heap *r;
	bool owns = atomic_load(&rg.up) && atomic_load(&hello_conn) != atomic_load(&rg.conn);

	FOR_EACH_REPL(r) {
		if (heap && heap[0] && strcmp(r->h->pol.name, heap))
			continue;
		pthread_mutex_lock(&r->lock);
		owns = owns || (r->mirror && r->peer_owns);
		pthread_mutex_unlock(&r->lock);
	}
	return owns;
}
