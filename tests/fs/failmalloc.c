/*
 * failmalloc.c — an LD_PRELOAD shim for tests that need one allocation deep inside the
 * daemon to fail (test_replica.py: the last add of a rename).  malloc(n) returns NULL
 * (ENOMEM) once when n is $FAILMALLOC_SIZE and the file $FAILMALLOC_ARM exists: the
 * thread whose unlink() of that file succeeds is the one that fails, so exactly one
 * allocation fails per arming, and none before the test arms it.  Not for the sanitizer
 * daemons (they bring their own malloc).
 * Locking: none; the settings are read once at load, before the daemon's threads.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);

static size_t fail_size;
static const char *fail_arm;

__attribute__((constructor)) static void failmalloc_init(void)
{
	const char *s = getenv("FAILMALLOC_SIZE");

	fail_arm = getenv("FAILMALLOC_ARM");
	fail_size = s ? strtoul(s, NULL, 10) : 0;
}

void *malloc(size_t n)
{
	if (n && n == fail_size && fail_arm) {
		int saved = errno;

		if (unlink(fail_arm) == 0) {
			errno = ENOMEM;
			return NULL;
		}
		errno = saved;
	}
	return __libc_malloc(n);
}
