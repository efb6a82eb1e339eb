/*
 * progress.c — a progress bar for long image operations (heapfsctl save, a heap restored
 * at mount): drawn on a stream only when it is a terminal and only once the operation has
 * run for a second ($HEAPFS_PROGRESS_AFTER_MS changes that, for tests), redrawn at most
 * ten times a second on one line ("\r"), and ended with a newline.  A total that is only
 * an estimate (a heap's used bytes for its image stream) is never shown as reached before
 * the end.
 * Locking: one struct img_progress is driven by one thread at a time.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "img.h"

#define WIDTH 30

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* "1.5G", "300M", "4K", "12B" */
static const char *human(int64_t v, char *buf, size_t len)
{
	static const char units[] = "BKMGTP";
	double d = (double)v;
	unsigned u = 0;

	while (d >= 1024 && u < sizeof(units) - 2) {
		d /= 1024;
		u++;
	}
	snprintf(buf, len, u && d < 10 ? "%.1f%c" : "%.0f%c", d, units[u]);
	return buf;
}

void img_progress_start(struct img_progress *p, FILE *out, const char *what, int64_t total)
{
	const char *after = getenv("HEAPFS_PROGRESS_AFTER_MS");

	*p = (struct img_progress){ .what = what, .out = out, .total = total, .start = now_ms(),
				    .on = isatty(fileno(out)) };
	p->after = after && *after ? atoll(after) : 1000;
}

static void draw(struct img_progress *p, int64_t done, bool end)
{
	char a[32], b[32];
	int64_t shown = !end && p->total > 0 && done >= p->total ? p->total - 1 : done;
	int fill;
	double pc;

	if (shown > p->total)
		shown = p->total;
	fill = p->total > 0 ? (int)(WIDTH * shown / p->total) : WIDTH;
	pc = p->total > 0 ? 100.0 * (double)shown / (double)p->total : 100.0;
	if (end)
		fill = WIDTH, pc = 100.0;
	fprintf(p->out, "\r%s [%.*s%.*s] %3.0f%%  %s / %s ", p->what, fill,
		"##############################", WIDTH - fill,
		"------------------------------", pc, human(done, a, sizeof(a)),
		human(p->total > done ? p->total : done, b, sizeof(b)));
	fflush(p->out);
	p->drawn = true;
}

void img_progress_update(struct img_progress *p, int64_t done)
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

void img_progress_end(struct img_progress *p, int64_t done, bool ok)
{
	/* one that ran past the threshold is shown done even if no update came in time */
	if (!p->drawn && (!p->on || !ok || now_ms() - p->start < p->after))
		return;
	if (ok)
		draw(p, done, true);
	fputc('\n', p->out);
	fflush(p->out);
}
