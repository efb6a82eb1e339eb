/*
 * main.c — the heapfs command line: options, config, mount, daemonize, session loop.
 *
 *   heapfs [-c FILE] [-o opt,...] [-f] [-d] [-s] [SOURCE] MOUNTPOINT
 *
 * Our options are taken out of the argument vector first (fuse_opt_parse): -c FILE and
 * -o config=FILE, -o spin_us=N / readahead_kb=N / no_killpriv_v2 (speed knobs) and
 * io_uring=auto|on|off (the transport, chosen in run(); see docs/DESIGN.md "Speed"),
 * -o relatime / strictatime / noatime / nodiratime (hfs.atime; noatime also goes on to
 * libfuse, which sets the mount flag), -o log=stderr|syslog and log_level=LEVEL (where messages go: the
 * daemon's one logging call is hfs_log, fs/core/log.c; syslog.c is its syslog sink), --help, --version, --print-default-config, --check-config FILE, and the
 * positional arguments (an optional SOURCE, ignored, so mount.fuse3 and fstab lines work).
 * The rest goes to fuse_parse_cmdline / fuse_session_new, so standard FUSE options pass
 * through.  default_permissions is added unless given (the kernel checks permissions
 * against the modes and owners we report), and fsname/subtype default to heapfs.
 * Order: config (exit 2 on any problem, nothing mounted) -> heaps -> mount -> daemonize
 * (the parent exits once the mount exists) -> housekeeper (heap drains) and readahead
 * helper threads -> multi-threaded loop -> unmount and tear down.  Signals and unmount
 * end it with 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "direct.h"
#include "edge_i.h"
#include "objects.h"
#include "pool.h"

#define READAHEAD_KB_DEFAULT 1024
#define READAHEAD_KB_MAX (1024 * 1024) /* 1 GiB */
#define SPIN_US_DEFAULT 50
#define SPIN_US_MAX 1000000 /* 1 s: past that an idle worker would simply burn its CPU */

enum {
	KEY_HELP,
	KEY_VERSION,
	KEY_PRINT_DEFAULT,
	KEY_DEFPERM,
	KEY_FSNAME,
	KEY_SUBTYPE,
	KEY_RELATIME,
	KEY_STRICTATIME,
	KEY_NOATIME,
	KEY_NODIRATIME,
	KEY_IO_URING,
};

struct opts {
	char *config;
	char *check;
	int help, version, print_default, defperm, fsname, subtype;
	char *pos[3];
	int npos;
	char *spin_us, *readahead_kb; /* as given: checked by num_opt() */
	char *log, *log_level;        /* as given: checked by log_setup() */
	char *io_uring_val;           /* -o io_uring=auto|on|off as given: checked by knobs() */
	int no_killpriv;
	enum hfs_atime_mode atime; /* the last of relatime, strictatime, noatime given */
	bool nodiratime;
};

static const struct fuse_opt opt_spec[] = {
	{ "-c %s", offsetof(struct opts, config), 0 },
	{ "config=%s", offsetof(struct opts, config), 0 },
	{ "spin_us=%s", offsetof(struct opts, spin_us), 0 },
	{ "readahead_kb=%s", offsetof(struct opts, readahead_kb), 0 },
	{ "no_killpriv_v2", offsetof(struct opts, no_killpriv), 1 },
	FUSE_OPT_KEY("io_uring", KEY_IO_URING), /* = io_uring=on, in its place among them */
	{ "io_uring=%s", offsetof(struct opts, io_uring_val), 0 },
	{ "log=%s", offsetof(struct opts, log), 0 },
	{ "log_level=%s", offsetof(struct opts, log_level), 0 },
	{ "--check-config=%s", offsetof(struct opts, check), 0 },
	{ "--check-config %s", offsetof(struct opts, check), 0 },
	FUSE_OPT_KEY("--print-default-config", KEY_PRINT_DEFAULT),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("default_permissions", KEY_DEFPERM),
	FUSE_OPT_KEY("fsname=", KEY_FSNAME),
	FUSE_OPT_KEY("subtype=", KEY_SUBTYPE),
	FUSE_OPT_KEY("relatime", KEY_RELATIME),
	FUSE_OPT_KEY("strictatime", KEY_STRICTATIME),
	FUSE_OPT_KEY("noatime", KEY_NOATIME),
	FUSE_OPT_KEY("nodiratime", KEY_NODIRATIME),
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct opts *o = data;

	(void)outargs;
	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (o->npos == 2) {
			fprintf(stderr, "heapfs: too many arguments: %s\n", arg);
			return -1;
		}
		o->pos[o->npos] = strdup(arg);
		return o->pos[o->npos++] ? 0 : -1;
	case KEY_HELP:
		o->help = 1;
		return 0;
	case KEY_VERSION:
		o->version = 1;
		return 0;
	case KEY_PRINT_DEFAULT:
		o->print_default = 1;
		return 0;
	case KEY_DEFPERM:
		o->defperm = 1;
		return 1;
	case KEY_FSNAME:
		o->fsname = 1;
		return 1;
	case KEY_SUBTYPE:
		o->subtype = 1;
		return 1;
	case KEY_IO_URING: /* the last of -o io_uring[=...] given wins, as mount options do */
		free(o->io_uring_val);
		o->io_uring_val = strdup("on");
		return o->io_uring_val ? 0 : -1;
	/* atime: the kernel leaves it to us (hfs_accessed); libfuse knows only noatime (a
	 * mount flag it sets, shown in /proc/mounts) and refuses the others */
	case KEY_RELATIME:
		o->atime = HFS_ATIME_REL;
		return 0;
	case KEY_STRICTATIME:
		o->atime = HFS_ATIME_STRICT;
		return 0;
	case KEY_NOATIME:
		o->atime = HFS_ATIME_NO;
		return 1;
	case KEY_NODIRATIME:
		o->nodiratime = true;
		return 0;
	default:
		return 1;
	}
}

static int allowed_cpus(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set))
		return (int)sysconf(_SC_NPROCESSORS_ONLN);
	return CPU_COUNT(&set);
}

/* -o NAME=TEXT: TEXT (NULL: not given, *out = def) must be a whole number 0 .. max.
 * (fuse_opt's %u would take "-1" as 4294967295.)  0, or -EINVAL with a message. */
static int num_opt(const char *name, const char *text, unsigned def, unsigned max,
		   unsigned *out)
{
	unsigned long long v = 0;
	const char *p = text;

	*out = def;
	if (!text)
		return 0;
	for (; *p >= '0' && *p <= '9' && v <= max; p++)
		v = v * 10 + (unsigned)(*p - '0');
	if (p == text || *p || v > max) {
		fprintf(stderr, "heapfs: -o %s=%s: not a whole number in 0 .. %u\n", name, text,
			max);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

/* -o log=stderr|syslog (default: stderr with -f, syslog when the daemon detaches) and
 * -o log_level=error|warning|notice|info|debug (default info).  0, or -EINVAL with a
 * message (exit 2, nothing mounted). */
static int log_setup(const struct opts *o, const char *mountpoint, bool foreground)
{
	int level = o->log_level ? hfs_log_level(o->log_level) : HFS_LOG_INFO;
	bool to_syslog = !foreground;

	if (level < 0) {
		fprintf(stderr, "heapfs: -o log_level=%s: one of error, warning, notice, info, "
			"debug\n", o->log_level);
		return -EINVAL;
	}
	if (o->log && strcmp(o->log, "stderr") && strcmp(o->log, "syslog")) {
		fprintf(stderr, "heapfs: -o log=%s: stderr or syslog\n", o->log);
		return -EINVAL;
	}
	if (o->log)
		to_syslog = !strcmp(o->log, "syslog");
	if (to_syslog)
		return hfs_syslog_start(mountpoint, level);
	hfs_log_to(level, NULL, NULL);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: heapfs [-c FILE] [-o opt,...] [-f] [-d] [-s] [SOURCE] MOUNTPOINT\n"
		"       heapfs --check-config FILE | --print-default-config | --help | --version\n"
		"\n"
		"Mounts heaps of buddy-allocated memory as a filesystem (see README.md).\n"
		"\n"
		"heapfs options:\n"
		"    -c FILE, -o config=FILE  config file (default: the embedded default)\n"
		"    --check-config FILE      validate FILE, print problems, exit 0 or 2\n"
		"    --print-default-config   print the embedded default config\n"
		"    -o spin_us=N             idle workers poll for requests N microseconds before\n"
		"                             sleeping (default 50; 0 = never; at most 1000000)\n"
		"    -o readahead_kb=N        the mount's readahead (default 1024; 0 = kernel's;\n"
		"                             at most 1048576)\n"
		"    -o no_killpriv_v2        let the kernel check security.capability on writes\n"
		"    -o io_uring=auto|on|off  FUSE over io_uring, one worker per CPU (Linux 6.14+)\n"
		"                             or /dev/fuse; auto (default): io_uring where the\n"
		"                             kernel offers it, unless a heap is for big files\n"
		"                             (min_block >= 64K or layout = contiguous)\n"
		"    -o log=stderr|syslog     where messages go (default: stderr with -f, syslog\n"
		"                             (facility daemon) when the daemon detaches)\n"
		"    -o log_level=LEVEL       error, warning, notice, info (default) or debug\n"
		"    -o relatime|strictatime|noatime, -o nodiratime\n"
		"                             when a read updates atime (default relatime)\n"
		"    -h, --help               this help\n"
		"    -V, --version            print versions\n"
		"    SOURCE                   ignored (for mount -t fuse.heapfs and fstab)\n"
		"\n");
}

/* Raise the mount's readahead (the kernel offers FUSE only 128 KiB): once the loop runs,
 * stat(mountpoint) gives the connection's device, whose bdi holds the setting.  Failure
 * (not permitted) is harmless. */
static void *readahead_thread(void *arg)
{
	char path[64], kb[16];
	struct stat st;
	int fd;

	(void)arg;
	snprintf(kb, sizeof(kb), "%u", hfs.readahead_kb);
	if (stat(hfs.mountpoint, &st) || st.st_ino != FUSE_ROOT_ID)
		return NULL; /* not (or no longer) our mount: leave that device alone */
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev),
		 minor(st.st_dev));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, kb, strlen(kb)) < 0) {
			/* not permitted: keep the default */
		}
		close(fd);
	}
	return NULL;
}

static int fs_init(void)
{
	int ret;

	/* writers first: a rename must not starve behind a stream of lookups */
	hfs_rwlock_init_writers(&hfs.ns);
	hfs.uid = getuid();
	hfs.gid = getgid();
	ret = hfs_itable_init();
	if (!ret)
		ret = hfs_mount_tree();
	if (!ret)
		ret = hfs_heaps_init();
	return ret;
}

static void fs_fini(void)
{
	hfs_itable_fini();
	while (hfs.nheaps)
		hfs_heap_put(hfs.heapv[--hfs.nheaps]);
	free(hfs.heapv);
	pthread_rwlock_destroy(&hfs.ns);
}

static int loop(struct fuse_session *se, struct fuse_cmdline_opts *cmd)
{
	struct fuse_loop_config *lc;
	int ret;

	if (cmd->singlethread)
		return fuse_session_loop(se);
	lc = fuse_loop_cfg_create();
	if (!lc)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(lc, (unsigned)cmd->clone_fd);
	if (cmd->max_threads != UINT_MAX) /* UINT_MAX: not given */
		fuse_loop_cfg_set_max_threads(lc, cmd->max_threads);
	if (cmd->max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(lc, cmd->max_idle_threads);
	ret = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return ret;
}

/* The transport by the heap policies (issue 22).  FUSE over io_uring shortens every
 * round trip (small requests 1.2-1.5x of /dev/fuse), but serves 1 MiB reads and writes at
 * about 0.55x of /dev/fuse on a quiet machine (make bench, docs/DESIGN.md "Transports"):
 * the kernel reads replies only from the ring's buffers, one more copy.  A heap made for
 * big files (min_block >= 64 KiB: no file is smaller; or layout = contiguous: a file is
 * one block) makes the mount a mount of big files, served over /dev/fuse; any other mount
 * is one of small files, served over io_uring.  The heap's name, or NULL. */
static const char *big_file_heap(const struct conf *c)
{
	for (unsigned k = 0; k < c->nheaps; k++)
		if (c->heaps[k].min_block >= HFS_BULK_BYTES ||
		    c->heaps[k].layout == CONF_LAYOUT_CONTIGUOUS)
			return c->heaps[k].name;
	return NULL;
}

static int run(struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
	const char *big = big_file_heap(hfs.conf);

	struct fuse_session *se;
	pthread_t ra;
	int ret = 1;

	se = fuse_session_new(args, &hfs_ops, sizeof(hfs_ops), NULL);
	if (!se)
		return 2; /* libfuse printed what was wrong with the options */
	if (fuse_set_signal_handlers(se))
		goto out_destroy;
	/* the kernel offers io_uring in INIT, sent at mount, only when enabled; when it cannot
	 * be enabled the mount simply stays on /dev/fuse (said only when asked for by name) */
	if (hfs.io_uring == HFS_URING_OFFERED && big) {
		hfs_log(HFS_LOG_INFO, "heap %s is for big files (min_block >= 64K or layout = "
			"contiguous): serving over /dev/fuse (-o io_uring=on: io_uring)", big);
		hfs.io_uring = HFS_URING_OFF;
	}
	if (hfs.io_uring) {
		int err = hfs_uring_enable();

		if (err) {
			hfs_log(hfs.io_uring == HFS_URING_ASKED ? HFS_LOG_WARNING : HFS_LOG_DEBUG,
				"FUSE over io_uring is not available (%s); using /dev/fuse",
				strerror(-err));
			hfs.io_uring = HFS_URING_OFF;
			hfs_uring_settle();
		}
	}
	if (fuse_session_mount(se, cmd->mountpoint))
		goto out_signals;
	if (hfs_io_setup(se) || fuse_daemonize(cmd->foreground))
		goto out_unmount;
	hfs_syslog_detached(); /* started: from now on syslog alone (stderr is /dev/null) */
	if (hfs_housekeeper_start() || hfs_pool_run())
		goto out_unmount;
	if (hfs_client_start()) {
		hfs_housekeeper_stop();
		goto out_unmount;
	}
	if (hfs_repl_start()) /* threads: after daemonizing */
		goto out_housekeeper;
	if (hfs.readahead_kb && pthread_create(&ra, NULL, readahead_thread, NULL) == 0)
		pthread_detach(ra);
	/* a positive value is the signal that ended the loop: a clean stop */
	ret = loop(se, cmd) < 0 ? 1 : 0;
	/* the ring workers end with libfuse's loop, as its workers did: nothing serves
	 * requests while the features stop (a request queued meanwhile waits for the
	 * unmount, which fails it) */
	hfs_uring_stop();
	hfs_repl_stop();
out_housekeeper:
	hfs_housekeeper_stop();
out_unmount:
	fuse_session_unmount(se);
	/* after the unmount: a request of ours to the mount (fstat, stat) that nobody serves
	 * any more fails now instead of hanging the join; before the session goes */
	hfs_client_stop();
	hfs_uring_stop(); /* if the loop never ran */
	if (ret == 0 && hfs_images_save()) /* nothing changes the heaps any more */
		ret = 1;
out_signals:
	hfs_uring_settle(); /* the kernel's switch as found, if INIT never came */
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	return ret;
}

/* The options that print something and exit (--help, --version, --print-default-config,
 * --check-config): true, with *ret the exit status, if one was given. */
static bool info_only(const struct opts *o, int *ret)
{
	*ret = 0;
	if (o->help) {
		usage(stdout);
		fuse_cmdline_help();
		fuse_lowlevel_help();
	} else if (o->version) {
		printf("heapfs %s\nFUSE library version %s\n", HEAPFS_VERSION, fuse_pkgversion());
		fflush(stdout);
		fuse_lowlevel_version();
	} else if (o->print_default) {
		fputs(conf_default_text(), stdout);
	} else if (o->check) {
		*ret = conf_load_file(o->check, stderr, &hfs.conf) ? 2 : 0;
		if (!*ret)
			printf("%s: ok\n", o->check);
	} else {
		return false;
	}
	return true;
}

/* The mountpoint and our defaults added to what goes to libfuse, which parses it into
 * cmd: 0, or -1 after saying why. */
static int fuse_cmdline(struct opts *o, struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
	if (!o->npos) {
		fprintf(stderr, "heapfs: no mountpoint given\n");
		usage(stderr);
		return -1;
	}
	if (fuse_opt_add_arg(args, o->pos[o->npos - 1]) ||
	    (!o->defperm && fuse_opt_add_arg(args, "-odefault_permissions")) ||
	    (!o->fsname && fuse_opt_add_arg(args, "-ofsname=heapfs")) ||
	    (!o->subtype && fuse_opt_add_arg(args, "-osubtype=heapfs")))
		return -1;
	if (fuse_parse_cmdline(args, cmd)) {
		usage(stderr);
		return -1;
	}
	return 0;
}

/* Our -o knobs into hfs (spin_us, readahead_kb checked first): 0, or -1 after saying why. */
static int knobs(const struct opts *o)
{
	unsigned spin_us, readahead_kb;

	if (num_opt("spin_us", o->spin_us, SPIN_US_DEFAULT, SPIN_US_MAX, &spin_us) ||
	    num_opt("readahead_kb", o->readahead_kb, READAHEAD_KB_DEFAULT, READAHEAD_KB_MAX,
		    &readahead_kb))
		return -1;
	/* on one CPU, spinning (device watcher or ring worker) would only steal the client's
	 * CPU: count the CPUs this process may run on (taskset, cpusets), not the host's */
	hfs.spin_ns = allowed_cpus() < 2 ? 0 : (int64_t)spin_us * 1000;
	hfs.readahead_kb = readahead_kb;
	hfs.no_killpriv = o->no_killpriv;
	hfs.io_uring = HFS_URING_OFFERED;
	if (o->io_uring_val && !strcmp(o->io_uring_val, "off"))
		hfs.io_uring = HFS_URING_OFF;
	else if (o->io_uring_val && !strcmp(o->io_uring_val, "on"))
		hfs.io_uring = HFS_URING_ASKED;
	else if (o->io_uring_val && !strcmp(o->io_uring_val, "auto"))
		hfs.io_uring = HFS_URING_OFFERED;
	else if (o->io_uring_val) {
		fprintf(stderr, "heapfs: -o io_uring=%s: auto, on or off\n", o->io_uring_val);
		return -1;
	}
	hfs.atime = o->atime;
	hfs.nodiratime = o->nodiratime;
	return 0;
}

/* The configured filesystem: the features registered, the tree and heaps made, the
 * features started, mounted and served until unmounted; then torn down.  The exit
 * status. */
static int mount_and_serve(struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
	int ret;

	/* before the tree and the heaps: what the features add to them (.heapfs/ lists the
	 * files in this order: partner verify donors segment) */
	hfs_repl_register();
	hfs_pool_register();
	hfs_objects_register();
	hfs_client_register();
	ret = fs_init();
	if (ret) {
		hfs_log(HFS_LOG_ERR, "cannot set up the heaps: %s", strerror(-ret));
		ret = 1;
	} else if (hfs_objects_start() || hfs_images_load() || hfs_pool_start() ||
		   hfs_repl_init()) {
		ret = 2; /* a bad image, pool socket or secret: said why; nothing mounted */
		hfs_pool_stop(); /* a pool socket already bound goes (no stale PATH.PID left) */
	} else {
		ret = run(args, cmd);
		hfs_pool_stop(); /* releases the donors */
		if (hfs_objects_stop() && !ret)
			ret = 1;
	}
	fs_fini();
	return ret;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cmd = { 0 };
	struct opts o = { 0 };
	int ret = 2;

	if (fuse_opt_parse(&args, &o, opt_spec, opt_proc) == -1) {
		usage(stderr);
		goto out;
	}
	if (info_only(&o, &ret))
		goto out;
	ret = 2;
	if (knobs(&o) || fuse_cmdline(&o, &args, &cmd))
		goto out;
	if (o.config ? conf_load_file(o.config, stderr, &hfs.conf) : conf_load_default(&hfs.conf))
		goto out;
	if (log_setup(&o, cmd.mountpoint, cmd.foreground))
		goto out;
	hfs.mountpoint = cmd.mountpoint;
	ret = mount_and_serve(&args, &cmd);
out:
	free(cmd.mountpoint);
	if (hfs.conf)
		conf_free(hfs.conf);
	free(o.config);
	free(o.check);
	free(o.spin_us);
	free(o.readahead_kb);
	free(o.io_uring_val);
	free(o.log);
	free(o.log_level);
	hfs_syslog_stop();
	for (int k = 0; k < o.npos; k++)
		free(o.pos[k]);
	fuse_opt_free_args(&args);
	return ret;
}
