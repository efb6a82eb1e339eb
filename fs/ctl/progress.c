/*
 * progress.c — a progress bar on stderr for heapfsctl's long operations (save): shown
 * only when stderr is a terminal and only once the operation has run for a second
 * ($HEAPFSCTL_PROGRESS_AFTER_MS changes that, for tests), redrawn at most ten times a
 * second on one line ("\r"), and ended with a newline.  A total that is only an estimate
 * (a heap's used bytes for its image stream) is never shown as reached before the end.
 * Single-threaded, no locking.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ctl_i.h"

#define WIDTH 30

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

void progress_start(struct progress *p, const char *what, int64_t total)
{
	const char *after = getenv("HEAPFSCTL_PROGRESS_AFTER_MS");

	*p = (struct progress){ .what = what, .total = total, .start = now_ms(),
				.on = isatty(STDERR_FILENO) };
	p->after = after && *after ? atoll(after) : 1000;
}

static void draw(struct progress *p, int64_t done, bool end)
{
	char a[32], b[32];
	int64_t shown = !end && p->total > 0 && done >= p->total ? p->total - 1 : done;
	int fill = p->total > 0 ? (int)(WIDTH * (shown > p->total ? p->total : shown) / p->total)
				: WIDTH;
	double pc = p->total > 0 ? 100.0 * (double)(shown > p->total ? p->total : shown) /
				   (double)p->total : 100.0;

	if (end)
		fill = WIDTH, pc = 100.0;
	fprintf(stderr, "\r%s [%.*s%.*s] %3.0f%%  %s / %s ", p->what, fill,
		"##############################", WIDTH - fill,
		"------------------------------", pc, fmt_size(done, a, sizeof(a)),
		fmt_size(p->total > done ? p->total : done, b, sizeof(b)));
	fflush(stderr);
	p->drawn = true;
}

void progress_update(struct progress *p, int64_t done)
{
	int64_t t;

	if (!p->on)
		return;
	t = now_ms();
	if (t - p->start < p->after || (p->drawn && t - p->last < 100))
		return;
	p->last = t;
	draw(p, done, false);
}

void progress_end(struct progress *p, int64_t done, bool ok)
{
	if (!p->drawn)
		return;
	if (ok)
		draw(p, done, true);
	fputc('\n', stderr);
}
