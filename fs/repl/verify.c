/*
 * verify.c — heapfsctl verify: each side hashes its copies, the asking side compares
 * (.heapfs/verify).
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

/* ---- verify ------------------------------------------------------------------------ */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool busy, have;
	json_t *peer;
} verif = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* "kind size mode hash" of one inode; hfs.ns held shared. */
static json_t *describe(struct hfs_inode *i)
{
	char d[128];
	XXH64_hash_t hash = 0;

	if (i->kind == HFS_REG) {
		XXH3_state_t *st = XXH3_createState();
		uint64_t off = 0, size;

		if (!st)
			return NULL;
		XXH3_64bits_reset(st);
		pthread_rwlock_rdlock(&i->lock);
		size = i->size;
		pthread_rwlock_unlock(&i->lock);
		while (off < size) {
			struct iovec iov[64];
			int niov = 64;
			void *bounce;
			ssize_t n = hfs_read_begin(i, 1u << 20, (off_t)off, iov, &niov, &bounce);

			if (n <= 0) {
				if (n == 0)
					break;
				XXH3_freeState(st);
				return NULL;
			}
			for (int k = 0; k < niov; k++)
				XXH3_64bits_update(st, iov[k].iov_base, iov[k].iov_len);
			hfs_read_end(i);
			free(bounce);
			off += (uint64_t)n;
		}
		hash = XXH3_64bits_digest(st);
		XXH3_freeState(st);
	} else if (i->kind == HFS_LNK) {
		hash = XXH3_64bits(i->lnk.target, strlen(i->lnk.target));
	}
	pthread_rwlock_rdlock(&i->lock);
	snprintf(d, sizeof(d), "%s %llu %o %016llx", i->kind == HFS_DIR ? "dir" :
		 i->kind == HFS_REG ? "file" : i->kind == HFS_LNK ? "symlink" : "special",
		 (unsigned long long)(i->kind == HFS_DIR ? 0 : i->size), (unsigned)i->mode,
		 (unsigned long long)hash);
	pthread_rwlock_unlock(&i->lock);
	return json_string(d);
}

/* A directory being walked: its path prefix ("" or "a/b/") and its entry to describe next. */
struct walk_frame {
	struct hfs_dirent *next;
	char *prefix;
};

/* {path: description} of everything below top into out.  Its own stack of directories on
 * the heap (one frame per level): however deep a tree is, no recursion.  hfs.ns shared. */
static int walk(struct hfs_inode *top, json_t *out)
{
	struct walk_frame *st = malloc(sizeof(*st)), *f;
	size_t n = 1, cap = 1;
	int ret = 0;

	if (!st || !(st[0].prefix = strdup(""))) {
		free(st);
		return -ENOMEM;
	}
	st[0].next = top->dir.ents;
	while (n && !ret) {
		struct hfs_dirent *de = st[n - 1].next;
		char *path, *sub = NULL;
		json_t *d;

		if (!de) {
			free(st[--n].prefix); /* this directory is done */
			continue;
		}
		st[n - 1].next = de->hh.next;
		if (asprintf(&path, "%s%s", st[n - 1].prefix, de->name) < 0) {
			ret = -ENOMEM;
			break;
		}
		d = describe(de->inode);
		if (!d || json_object_set_new(out, path, d))
			ret = -ENOMEM;
		else if (de->inode->kind == HFS_DIR && asprintf(&sub, "%s/", path) < 0)
			ret = -ENOMEM;
		free(path);
		if (!sub)
			continue;
		if (n == cap) {
			f = realloc(st, 2 * cap * sizeof(*st));
			if (!f) {
				free(sub);
				ret = -ENOMEM;
				break;
			}
			st = f;
			cap *= 2;
		}
		st[n++] = (struct walk_frame){ .next = de->inode->dir.ents, .prefix = sub };
	}
	while (n)
		free(st[--n].prefix);
	free(st);
	return ret;
}

/* heap name -> {path: description} for every replicated heap here. */
static json_t *checksums(void)
{
	json_t *all = json_object();
	struct hfs_repl_heap *r;

	FOR_EACH_REPL(r) {
		json_t *one = json_object();

		pthread_rwlock_rdlock(&hfs.ns);
		if (!one || !r->h->dir || walk(r->h->dir, one) ||
		    json_object_set_new(all, r->h->pol.name, one)) {
			pthread_rwlock_unlock(&hfs.ns);
			json_decref(all);
			return NULL;
		}
		pthread_rwlock_unlock(&hfs.ns);
	}
	return all;
}

/* The partner asks (receive thread): answer with ours, in order after every change it
 * sent before (so an owner's copy is compared with everything applied here). */
int verify_answer(void)
{
	json_t *j = checksums();
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	int64_t seq;

	json_decref(j);
	if (!s)
		return -ENOMEM;
	seq = strlen(s) <= REP_PAYLOAD_MAX ? rep_send(rg.l, MSG_VERIFY_REPLY, s, strlen(s))
					   : -EMSGSIZE;
	free(s);
	return seq < 0 ? (int)seq : 0;
}

int verify_reply(const char *p, size_t len)
{
	json_t *j = json_loadb(p, len, 0, NULL);

	pthread_mutex_lock(&verif.lock);
	if (verif.busy && !verif.have) {
		verif.peer = j;
		verif.have = true;
		j = NULL;
		pthread_cond_broadcast(&verif.cond);
	}
	pthread_mutex_unlock(&verif.lock);
	json_decref(j);
	return 0;
}

/* Both copies of every replicated heap, compared file by file (xxh3 of the data, size,
 * mode, kind): {"state", "differences": N, "heaps": {name: {"role", "files",
 * "differences": [{"path", "here", "partner"}]}}}.  Online: changes in flight while it
 * runs may show up as differences. */
json_t *hfs_repl_verify_json(void)
{
	json_t *mine = NULL, *peer = NULL, *heaps = json_object(), *out = NULL;
	struct hfs_repl_heap *r;
	struct timespec dl;
	uint64_t total = 0;
	int ret = 0;
	const char *state = "none";

	if (!heaps)
		return NULL;
	if (rg.on && rg.l) {
		pthread_mutex_lock(&verif.lock);
		while (verif.busy) /* one verify at a time */
			pthread_cond_wait(&verif.cond, &verif.lock);
		verif.busy = true;
		verif.have = false;
		pthread_mutex_unlock(&verif.lock);
		rep_flush(rg.l, hfs.conf->partner.timeout_ms); /* what we sent is applied there */
		mine = checksums();
		ret = rep_send(rg.l, MSG_VERIFY, "", 0) < 0 ? -ENOTCONN : 0;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 30 + hfs.conf->partner.timeout_ms / 1000;
		pthread_mutex_lock(&verif.lock);
		while (!ret && !verif.have)
			ret = pthread_cond_timedwait(&verif.cond, &verif.lock, &dl) ? -ETIMEDOUT : 0;
		peer = verif.peer;
		verif.peer = NULL;
		verif.busy = false;
		pthread_cond_broadcast(&verif.cond);
		pthread_mutex_unlock(&verif.lock);
		state = ret || !mine || !peer ? "unreachable" : "compared";
	}
	FOR_EACH_REPL(r) {
		json_t *a = json_object_get(mine, r->h->pol.name);
		json_t *b = json_object_get(peer, r->h->pol.name);
		json_t *diffs = json_array(), *h, *v;
		const char *path;
		void *iter;

		if (!a || !b) {
			json_decref(diffs);
			continue;
		}
		json_object_foreach(a, path, v) {
			json_t *w = json_object_get(b, path);

			if (!w || !json_equal(v, w))
				json_array_append_new(diffs, json_pack("{s:s, s:O, s:O?}", "path", path,
								       "here", v, "partner", w));
		}
		for (iter = json_object_iter(b); iter; iter = json_object_iter_next(b, iter)) {
			path = json_object_iter_key(iter);
			if (!json_object_get(a, path))
				json_array_append_new(diffs, json_pack("{s:s, s:n, s:O}", "path", path,
								       "here", "partner",
								       json_object_iter_value(iter)));
		}
		total += json_array_size(diffs);
		h = json_pack("{s:s, s:I, s:o}", "role", hfs_repl_role(r->h), "files",
			      (json_int_t)json_object_size(a), "differences", diffs);
		json_object_set_new(heaps, r->h->pol.name, h);
	}
	out = json_pack("{s:s, s:I, s:o}", "state", state, "differences", (json_int_t)total,
			"heaps", heaps);
	json_decref(mine);
	json_decref(peer);
	return out;
}

/* heapfsctl's requests, as xattrs set on .heapfs/partner: user.heapfs.promote (value: the
 * heap, empty for all), user.heapfs.promote.force, user.heapfs.promote.discard-peer. */
int hfs_repl_setxattr(const char *name, const void *value, size_t size)
{
	char heap[CONF_NAME_MAX + 1];

	if (size > CONF_NAME_MAX)
		return -EINVAL;
	memcpy(heap, value, size);
	heap[size] = 0;
	if (!strcmp(name, "user.heapfs.promote"))
		return hfs_repl_promote(heap, false, false);
	if (!strcmp(name, "user.heapfs.promote.force"))
		return hfs_repl_promote(heap, true, false);
	if (!strcmp(name, "user.heapfs.promote.discard-peer"))
		return hfs_repl_promote(heap, false, true);
	return -EPERM;
}
