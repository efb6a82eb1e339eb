/*
 * ctl_i.h — private to heapfsctl (fs/ctl): what heapfsctl.c shares with image.c — error
 * messages, the JSON-or-table printer, size formatting, and the image command.
 * Single-threaded, no locking.
 */
#ifndef HEAPFS_CTL_I_H
#define HEAPFS_CTL_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define EXIT_FAILED 1
#define EXIT_USAGE 2

struct ctl_opts {
	bool json;
	const char *svg; /* map: write an SVG picture here ("-" = stdout) */
	bool force, discard_peer; /* promote */
};

/* "heapfsctl: " + the message + newline, on stderr. */
void err_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print j as JSON (--json) or with the human printer; takes the reference to j. */
int show(json_t *j, const struct ctl_opts *o, void (*human)(const json_t *));
/* Binary size: "4K", "1.5M"; "?" for negative values.  Returns buf. */
const char *fmt_size(int64_t v, char *buf, size_t len);

/* image ls FILE | image cat FILE NAME: 0, -errno, or EXIT_USAGE. */
int cmd_image(char **args, const struct ctl_opts *o);

#endif
