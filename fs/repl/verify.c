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

/* What one verify may cost (issue 16): the partner's requests are answered on a thread of
 * their own (never the receive thread), one at a time, at most one per VERIFY_GAP_MS; a
 * request that comes while one is answered or waits is folded into the next answer.  An
 * answer goes in messages of at most about VERIFY_CHUNK of JSON, so a big heap verifies
 * however many files it holds.  Paths are keys of at most KEY_MAX bytes: a longer one is
 * named by the hash of its parent's key and its name (both sides derive it alike). */
#define VERIFY_GAP_MS 1000
#define VERIFY_CHUNK (1u << 20)
#define KEY_MAX 1024

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool busy, have;
	uint64_t id;     /* of the request in flight */
	json_t *peer;    /* heap -> path -> description, merged from the reply's parts */
	size_t limit;    /* the most entries a heap of the reply may have */
} verif = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* The answering thread's state: started at the first request, joined by verify_stop. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t th;
	bool on, stop, pending;
	uint64_t id;     /* the latest request */
	int64_t last;    /* when the last answer began (hfs_now_ns) */
} ans = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* One name of a heap: taken (with a reference) under hfs.ns, described without it. */
struct ent {
	struct hfs_inode *i;
	char *key;
};

struct walk {
	struct ent *v;
	size_t n, cap;
};

/* The length of the strict UTF-8 sequence at s (what jansson accepts), 0 if none. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len, k;
	uint32_t c;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, c = s[0] & 0x1f;
	else if ((s[0] & 0xf0) == 0xe0)
		len = 3, c = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, c = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (k = 1; k < len; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[k] & 0x3f);
	}
	if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff)) ||
	    (c >= 0xd800 && c <= 0xdfff))
		return 0;
	return len;
}

/* A file name is bytes: its key keeps valid UTF-8 as it is, writes a byte that is not
 * part of any as \xHH and a backslash as \\, so every name has one key and back. */
static size_t name_enc(char *out, const char *name, size_t len)
{
	const unsigned char *s = (const unsigned char *)name;
	size_t o = 0;

	for (size_t k = 0; k < len;) {
		size_t n = s[k] == '\\' ? 0 : utf8_seq(s + k, len - k);

		if (s[k] == '\\') {
			out[o++] = '\\';
			out[o++] = '\\';
			k++;
		} else if (!n) {
			o += (size_t)sprintf(out + o, "\\x%02x", s[k]);
			k++;
		} else {
			memcpy(out + o, s + k, n);
			o += n;
			k += n;
		}
	}
	out[o] = 0;
	return o;
}

/* hfs.ns held shared: add i, named name in the directory whose key is pkey (NULL: the
 * heap's root), with a reference. */
static int __ent_add(struct walk *w, struct hfs_inode *i, const char *pkey, const char *name,
		     size_t nlen)
{
	size_t plen = pkey ? strlen(pkey) + 1 : 0;
	char *key = malloc(plen + 4 * nlen + 1); /* \xHH: four bytes for one */

	if (!key)
		return -ENOMEM;
	if (pkey)
		sprintf(key, "%s/", pkey);
	if (name_enc(key + plen, name, nlen) + plen > KEY_MAX) {
		XXH128_hash_t x = XXH3_128bits(key, strlen(key));

		/* no encoded path starts with \l (a backslash is \\ there) */
		snprintf(key, plen + 4 * nlen + 1, "\\long:%016llx%016llx",
			 (unsigned long long)x.high64, (unsigned long long)x.low64);
	}
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 256;
		struct ent *v = realloc(w->v, cap * sizeof(*v));

		if (!v) {
			free(key);
			return -ENOMEM;
		}
		w->v = v;
		w->cap = cap;
	}
	hfs_iref(i, 1);
	w->v[w->n++] = (struct ent){ .i = i, .key = key };
	return 0;
}

/* hfs.ns held shared: every name below root, breadth first (w->v is the queue of the
 * directories still to read: no recursion, whatever the depth). */
static int __collect(struct hfs_inode *root, struct walk *w)
{
	struct hfs_dirent *de, *tmp;
	int ret = 0;

	HASH_ITER(hh, root->dir.ents, de, tmp)
		if (!ret)
			ret = __ent_add(w, de->inode, NULL, de->name, de->len);
	for (size_t k = 0; k < w->n && !ret; k++) {
		struct hfs_inode *dir = w->v[k].i;

		if (dir->kind != HFS_DIR)
			continue;
		HASH_ITER(hh, dir->dir.ents, de, tmp)
			if (!ret)
				ret = __ent_add(w, de->inode, w->v[k].key, de->name, de->len);
	}
	return ret;
}

/* A hash of i's xattrs (the listed ones, trusted.* and ACLs included: names in order,
 * each with its value); 0: none.  Each call takes i's lock on its own: a value that
 * changes in between shows as a difference, and the next verify settles it. */
static XXH64_hash_t xattrs_hash(struct hfs_inode *i)
{
	ssize_t n = hfs_listxattr(i, NULL, 0, true), len;
	XXH64_hash_t hash = 0;
	char *names, *value = NULL;

	if (n <= 0)
		return 0;
	names = malloc((size_t)n);
	if (!names)
		return 1; /* differs from a copy that could say */
	len = hfs_listxattr(i, names, (size_t)n, true);
	for (char *p = names; len > 0 && p < names + len; p += strlen(p) + 1) {
		ssize_t v = hfs_getxattr(i, p, NULL, 0);

		free(value);
		value = v >= 0 ? malloc((size_t)v + 1) : NULL;
		v = value ? hfs_getxattr(i, p, value, (size_t)v + 1) : -ENOMEM;
		hash = XXH3_64bits_withSeed(p, strlen(p) + 1, hash);
		hash = v >= 0 ? XXH3_64bits_withSeed(value, (size_t)v, hash) : hash + 1;
	}
	free(value);
	free(names);
	return len < 0 ? 1 : hash;
}

/* "kind size mode hash xattrs" of one inode (referenced), under its own lock. */
static json_t *describe(struct hfs_inode *i)
{
	char d[160];
	XXH64_hash_t hash = 0, xhash = xattrs_hash(i);

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
	snprintf(d, sizeof(d), "%s %llu %o %016llx %016llx", i->kind == HFS_DIR ? "dir" :
		 i->kind == HFS_REG ? "file" : i->kind == HFS_LNK ? "symlink" : "special",
		 (unsigned long long)(i->kind == HFS_DIR ? 0 : i->size), (unsigned)i->mode,
		 (unsigned long long)hash, (unsigned long long)xhash);
	pthread_rwlock_unlock(&i->lock);
	return json_string(d);
}

/* Where the descriptions of the heaps go: fn(arg, heap, NULL, NULL) as a heap begins,
 * then fn(arg, heap, key, description) for each name (fn takes the description). */
typedef int (*sum_fn)(void *arg, const char *heap, const char *key, json_t *d);

/* Every replicated heap here, described name by name.  hfs.ns is held only to take the
 * names (with references); each file is hashed under its own lock. */
static int sums(sum_fn fn, void *arg)
{
	struct hfs_repl_heap *r;
	int ret = 0;

	FOR_EACH_REPL(r) {
		struct walk w = { 0 };
		size_t k;

		if (ret || !r->h->dir)
			continue;
		ret = fn(arg, r->h->pol.name, NULL, NULL);
		pthread_rwlock_rdlock(&hfs.ns);
		if (!ret)
			ret = __collect(r->h->dir, &w);
		pthread_rwlock_unlock(&hfs.ns);
		for (k = 0; k < w.n; k++) {
			json_t *d = ret ? NULL : describe(w.v[k].i);

			if (!ret)
				ret = d ? fn(arg, r->h->pol.name, w.v[k].key, d) : -ENOMEM;
			hfs_iput(w.v[k].i, 1);
			free(w.v[k].key);
		}
		free(w.v);
	}
	return ret;
}

/* sum_fn: into heap name -> {key: description}. */
static int sum_json(void *arg, const char *heap, const char *key, json_t *d)
{
	json_t *all = arg, *one = json_object_get(all, heap);

	if (!one && json_object_set_new(all, heap, one = json_object()))
		one = NULL;
	if (!key)
		return one ? 0 : -ENOMEM;
	return one && !json_object_set_new(one, key, d) ? 0 : -ENOMEM;
}

/* This node's: heap name -> {path: description} for every replicated heap here. */
static json_t *checksums(void)
{
	json_t *all = json_object();

	if (all && sums(sum_json, all)) {
		json_decref(all);
		all = NULL;
	}
	return all;
}

/* An answer in parts: {"id", "end", "heaps": {heap: {key: description}}}. */
struct chunk {
	uint64_t id;
	json_t *heaps;
	size_t bytes; /* what the JSON of heaps may take, from above */
};

static int chunk_send(struct chunk *c, bool end)
{
	json_t *j = json_pack("{s:I, s:b, s:O}", "id", (json_int_t)c->id, "end", end,
			      "heaps", c->heaps);
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	int64_t seq = -ENOMEM;

	json_decref(j);
	if (s)
		seq = strlen(s) <= REP_PAYLOAD_MAX ? rep_send(rg.l, MSG_VERIFY_REPLY, s, strlen(s))
						   : -EMSGSIZE;
	free(s);
	json_object_clear(c->heaps);
	c->bytes = 0;
	return seq < 0 ? (int)seq : 0;
}

/* sum_fn: into the answer, sent whenever the next entry might not fit.  An entry's JSON
 * takes at most six bytes per byte of its key (\u00XX) and its description's. */
static int sum_chunk(void *arg, const char *heap, const char *key, json_t *d)
{
	struct chunk *c = arg;
	size_t est = 6 * (strlen(heap) + (key ? strlen(key) : 0)) + 160;
	int ret = 0;

	if (c->bytes + est > VERIFY_CHUNK)
		ret = chunk_send(c, false);
	c->bytes += est;
	if (ret) {
		json_decref(d);
		return ret;
	}
	return sum_json(c->heaps, heap, key, d);
}

static void *answer_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&ans.lock);
	while (!ans.stop) {
		struct timespec dl;
		int64_t at = ans.last + (int64_t)VERIFY_GAP_MS * 1000000;
		struct chunk c;
		int ret;

		if (!ans.pending) {
			pthread_cond_wait(&ans.cond, &ans.lock);
			continue;
		}
		if (hfs_now_ns() < at) { /* the last answer was too recent: wait for its gap */
			clock_gettime(CLOCK_REALTIME, &dl);
			at -= hfs_now_ns();
			dl.tv_sec += at / 1000000000;
			dl.tv_nsec += at % 1000000000;
			if (dl.tv_nsec >= 1000000000) {
				dl.tv_sec++;
				dl.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&ans.cond, &ans.lock, &dl);
			continue;
		}
		ans.pending = false;
		ans.last = hfs_now_ns();
		c = (struct chunk){ .id = ans.id, .heaps = json_object() };
		pthread_mutex_unlock(&ans.lock);
		ret = c.heaps ? sums(sum_chunk, &c) : -ENOMEM;
		if (!ret)
			ret = chunk_send(&c, true);
		if (ret && ret != -ENOTCONN)
			hfs_log(HFS_LOG_ERR, "partner: cannot answer its verify: %s",
				strerror(-ret));
		json_decref(c.heaps);
		pthread_mutex_lock(&ans.lock);
	}
	pthread_mutex_unlock(&ans.lock);
	return NULL;
}

/* The partner asks (receive thread; p: the request's id): answered by answer_thread,
 * after every change it sent before (applied here by now), and maybe some after. */
int verify_answer(const char *p, size_t len)
{
	int ret = 0;

	if (len != sizeof(ans.id))
		return -EBADMSG;
	pthread_mutex_lock(&ans.lock);
	memcpy(&ans.id, p, sizeof(ans.id));
	ans.pending = true;
	if (!ans.on && !ans.stop)
		ans.on = !(ret = -pthread_create(&ans.th, NULL, answer_thread, NULL));
	pthread_cond_signal(&ans.cond);
	pthread_mutex_unlock(&ans.lock);
	return ret;
}

/* Before the link stops: no answer is sent after this. */
void verify_stop(void)
{
	bool on;

	pthread_mutex_lock(&ans.lock);
	ans.stop = true;
	on = ans.on;
	ans.on = false;
	pthread_cond_signal(&ans.cond);
	pthread_mutex_unlock(&ans.lock);
	if (on)
		pthread_join(ans.th, NULL);
}

/* verif.lock held: merge one part of the partner's answer.  A heap of it may not hold
 * more names than verif.limit: a peer cannot make this side keep what it likes. */
static int __merge(json_t *heaps)
{
	const char *name;
	json_t *files;

	if (!json_is_object(heaps))
		return -EBADMSG;
	json_object_foreach(heaps, name, files) {
		json_t *have = json_object_get(verif.peer, name);

		if (!repl_named(name) || !json_is_object(files))
			return -EBADMSG;
		if (!have && json_object_set_new(verif.peer, name, have = json_object()))
			return -ENOMEM;
		if (json_object_size(files) > verif.limit - json_object_size(have))
			return -EFBIG;
		if (json_object_update(have, files))
			return -ENOMEM;
	}
	return 0;
}

int verify_reply(const char *p, size_t len)
{
	json_t *j = json_loadb(p, len, 0, NULL);
	json_int_t id = json_integer_value(json_object_get(j, "id"));
	int ret = 0;

	pthread_mutex_lock(&verif.lock);
	if (verif.busy && !verif.have && verif.peer && (uint64_t)id == verif.id) {
		ret = __merge(json_object_get(j, "heaps"));
		if (ret) {
			hfs_log(HFS_LOG_WARNING, "partner: its verify answer is refused: %s",
				strerror(-ret));
			json_decref(verif.peer);
			verif.peer = NULL;
		}
		if (ret || json_is_true(json_object_get(j, "end"))) {
			verif.have = true;
			pthread_cond_broadcast(&verif.cond);
		}
	}
	/* under the lock: its values are shared with verif.peer, whose last reference the
	 * asking thread drops (jansson's reference counts are not seen by TSan) */
	json_decref(j);
	pthread_mutex_unlock(&verif.lock);
	return 0;
}

/* The most names a heap of the partner's answer may have: the inode limit of that heap
 * here (it mirrors or owns the same heap), or twice what this side holds (hard links),
 * and some slack. */
static size_t reply_limit(json_t *mine)
{
	struct hfs_repl_heap *r;
	size_t most = 0;

	FOR_EACH_REPL(r) {
		size_t n = conf_heap_inodes(&r->h->pol);
		size_t m = 2 * json_object_size(json_object_get(mine, r->h->pol.name));

		n = n > m ? n : m;
		most = n > most ? n : most;
	}
	return most + 1024;
}

/* Ask the partner for its checksums and wait for the whole answer (one verify at a time;
 * mine: this side's, which bound how big the answer may be): the partner's, or NULL. */
static json_t *ask_partner(json_t *mine)
{
	struct timespec dl;
	json_t *peer;
	uint64_t id;
	int ret;

	if (getrandom(&id, sizeof(id), 0) != sizeof(id))
		id = (uint64_t)hfs_now_ns();
	id &= INT64_MAX; /* a JSON integer */
	pthread_mutex_lock(&verif.lock);
	verif.id = id;
	verif.limit = reply_limit(mine);
	verif.peer = json_object();
	pthread_mutex_unlock(&verif.lock);
	ret = rep_send(rg.l, MSG_VERIFY, &id, sizeof(id)) < 0 ? -ENOTCONN : 0;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 30 + hfs.conf->partner.timeout_ms / 1000;
	pthread_mutex_lock(&verif.lock);
	while (!ret && !verif.have)
		ret = pthread_cond_timedwait(&verif.cond, &verif.lock, &dl) ? -ETIMEDOUT : 0;
	peer = ret ? NULL : verif.peer; /* not half an answer */
	if (ret)
		json_decref(verif.peer);
	verif.peer = NULL;
	verif.busy = false;
	pthread_cond_broadcast(&verif.cond);
	pthread_mutex_unlock(&verif.lock);
	return peer;
}

/* This side's checksums and the partner's (*mine, *peer; NULL: none): "compared", or
 * "unreachable" when either is missing. */
static const char *exchange(json_t **mine, json_t **peer)
{
	pthread_mutex_lock(&verif.lock);
	while (verif.busy) /* one verify at a time */
		pthread_cond_wait(&verif.cond, &verif.lock);
	verif.busy = true;
	verif.have = false;
	pthread_mutex_unlock(&verif.lock);
	rep_flush(rg.l, hfs.conf->partner.timeout_ms); /* what we sent is applied there */
	*mine = checksums();
	*peer = ask_partner(*mine);
	return !*mine || !*peer ? "unreachable" : "compared";
}

/* One heap's copies, a (here) and b (the partner's), path -> description: the paths
 * whose descriptions differ or that one side lacks, [{"path", "here", "partner"}]. */
static json_t *differences(json_t *a, json_t *b)
{
	json_t *diffs = json_array(), *v;
	const char *path;
	void *iter;

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
	return diffs;
}

/* Both copies of every replicated heap, compared file by file (xxh3 of the data and of
 * the xattrs, size, mode, kind): {"state", "differences": N, "heaps": {name: {"role", "files",
 * "differences": [{"path", "here", "partner"}]}}}.  Online: changes in flight while it
 * runs may show up as differences. */
json_t *hfs_repl_verify_json(void)
{
	json_t *mine = NULL, *peer = NULL, *heaps = json_object(), *out;
	struct hfs_repl_heap *r;
	uint64_t total = 0;
	const char *state = "none";

	if (!heaps)
		return NULL;
	if (rg.on && rg.l)
		state = exchange(&mine, &peer);
	FOR_EACH_REPL(r) {
		json_t *a = json_object_get(mine, r->h->pol.name);
		json_t *b = json_object_get(peer, r->h->pol.name);
		json_t *diffs, *h;

		if (!a || !b)
			continue;
		diffs = differences(a, b);
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
	if (!strcmp(name, "user.heapfs.demote"))
		return hfs_repl_demote(heap);
	return -EPERM;
}
