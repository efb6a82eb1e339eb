/*
 * fuzz-conf.c — the config loader (conf/conf.c over libconfuse): what `heapfs -c FILE`
 * and `--check-config FILE` do with a config file from anywhere.  The input is the file,
 * in a memfd loaded by its /proc/self/fd path (conf_load_file, as heapfs loads one).
 * Errors go to /dev/null.  A config that loads must keep conf.h's promises: heap sizes
 * powers of two up to CONF_HEAP_MAX, min_block a power of two 64 .. 1M and at most the
 * size, chunk a power of two 4K .. CONF_HEAP_MAX, inodes within CONF_INODES_MAX, names
 * valid; an object segment with room for its header and map; a pool no larger than a
 * heap, its socket short enough for a sockaddr_un; a partner's node name and timeout what
 * the link takes.
 * (LeakSanitizer stays on: 120 s of fuzzing found no leak, in conf.c nor in libconfuse.)
 * No locking: single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conf.h"

static bool pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static bool heap_ok(const struct conf_heap *h)
{
	return pow2(h->size) && h->size <= CONF_HEAP_MAX && pow2(h->min_block) &&
	       h->min_block >= CONF_MIN_BLOCK_MIN && h->min_block <= CONF_MIN_BLOCK_MAX &&
	       h->min_block <= h->size && pow2(h->chunk) && h->chunk >= 4096 &&
	       h->chunk <= CONF_HEAP_MAX &&
	       h->inodes <= CONF_INODES_MAX && !conf_check_heap_name(h->name);
}

static bool node_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	for (size_t i = 0; i < n; i++)
		if (s[i] < '!' || s[i] > '~')
			return false;
	return n >= 1 && n <= CONF_NODE_MAX;
}

static void check(const struct conf *c)
{
	struct conf_heap d;

	for (unsigned i = 0; i < c->nheaps; i++)
		if (!heap_ok(&c->heaps[i]))
			abort();
	if (!pow2(c->objects.size) || c->objects.size > CONF_HEAP_MAX ||
	    c->objects.min_block > c->objects.size ||
	    c->objects.size < 2 * CONF_SEG_HDR_BLOCK || c->objects.size < 2 * c->objects.min_block ||
	    !c->pool.socket || strlen(c->pool.socket) > 107 || !c->pool.donor_size ||
	    c->pool.size > CONF_HEAP_MAX || c->pool.donor_size > CONF_HEAP_MAX ||
	    (c->partner.present && (c->partner.timeout_ms < CONF_TIMEOUT_MIN_MS ||
				    !node_ok(c->partner.node))))
		abort();
	if (conf_heap_defaults(c, "mkdir", &d) || !heap_ok(&d))
		abort(); /* a heap made at run time gets a valid policy too */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FILE *null;
	int fd = memfd_create("fuzz-conf", MFD_CLOEXEC);
	struct conf *c = NULL;
	char path[64];

	if (!null)
		null = fopen("/dev/null", "w");
	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (!conf_load_file(path, null, &c))
			check(c);
		conf_free(c);
	}
	close(fd);
	return 0;
}
