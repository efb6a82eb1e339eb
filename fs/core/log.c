/*
 * log.c — the daemon's one logging call: hfs_log(level, fmt, ...), with syslog's levels
 * (error, warning, notice, info, debug).  A message at or below the threshold goes to
 * the sink: stderr ("heapfs: MESSAGE") until the edge installs another (the syslog sink,
 * fs/edge/syslog.c, when the daemon detaches or -o log=syslog).  The core only formats
 * and hands over: it opens no socket.
 * hfs_log_stream() makes a stdio stream whose lines become messages, for libraries that
 * log to a FILE * (replica/).
 * Locking: a log stream has its own mutex (several threads write one); the threshold and sink are set once by main() before any thread starts
 * (and when it detaches, before the threads that log are started).  A sink must accept
 * calls from any thread.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

static const char *const names[] = {
	[HFS_LOG_ERR] = "error", [HFS_LOG_WARNING] = "warning", [HFS_LOG_NOTICE] = "notice",
	[HFS_LOG_INFO] = "info", [HFS_LOG_DEBUG] = "debug",
};

static void to_stderr(int level, const char *msg, void *arg)
{
	char line[HFS_LOG_MAX + 16];
	int n;

	(void)level;
	(void)arg;
	/* one write per line: lines of several threads never interleave */
	n = snprintf(line, sizeof(line), "heapfs: %s\n", msg);
	fwrite(line, 1, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1, stderr);
}

static struct {
	int max;
	hfs_log_sink sink;
	void *arg;
} lg = { HFS_LOG_INFO, to_stderr, NULL };

void hfs_log_to(int max, hfs_log_sink sink, void *arg)
{
	lg.max = max;
	lg.sink = sink ? sink : to_stderr;
	lg.arg = sink ? arg : NULL;
}

void hfs_log_stderr(int level, const char *msg, void *arg)
{
	to_stderr(level, msg, arg);
}

bool hfs_log_on(int level)
{
	return level <= lg.max;
}

void hfs_log(int level, const char *fmt, ...)
{
	char msg[HFS_LOG_MAX];
	va_list ap;

	if (level > lg.max)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	lg.sink(level, msg, lg.arg);
}

int hfs_log_level(const char *name)
{
	for (int k = HFS_LOG_ERR; k <= HFS_LOG_DEBUG; k++)
		if (!strcmp(name, names[k]))
			return k;
	return -1;
}

/* A stdio stream whose lines become messages (for a library that logs to a FILE *, such
 * as replica/): each complete line is one hfs_log(level, ...) call. */
struct line_log {
	pthread_mutex_t lock; /* several threads write one stream (the link's): stdio's own
				 lock is libc's, which the sanitizers cannot see */
	int level;
	size_t n;
	char buf[HFS_LOG_MAX];
};

static ssize_t line_write(void *cookie, const char *p, size_t len)
{
	struct line_log *ll = cookie;

	pthread_mutex_lock(&ll->lock);
	for (size_t k = 0; k < len; k++) {
		if (p[k] != '\n' && ll->n < sizeof(ll->buf) - 1) {
			ll->buf[ll->n++] = p[k];
			continue;
		}
		if (p[k] != '\n')
			continue; /* past the bound: the rest of the line is cut */
		ll->buf[ll->n] = 0;
		hfs_log(ll->level, "%s", ll->buf);
		ll->n = 0;
	}
	pthread_mutex_unlock(&ll->lock);
	return (ssize_t)len;
}

static int line_close(void *cookie)
{
	struct line_log *ll = cookie;

	pthread_mutex_destroy(&ll->lock);
	free(cookie);
	return 0;
}

FILE *hfs_log_stream(int level)
{
	static const cookie_io_functions_t io = { .write = line_write, .close = line_close };
	struct line_log *ll = calloc(1, sizeof(*ll));
	FILE *f;

	if (!ll)
		return NULL;
	ll->level = level;
	pthread_mutex_init(&ll->lock, NULL);
	f = fopencookie(ll, "w", io);
	if (!f) {
		pthread_mutex_destroy(&ll->lock);
		free(ll);
		return NULL;
	}
	setvbuf(f, NULL, _IOLBF, 0); /* a line is handed over when it ends */
	return f;
}
