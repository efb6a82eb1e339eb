/*
 * source.c — the memory sources of source.h: anonymous, memfd and donor memory behind one
 * table of operations.
 *
 * Mapped sources (anonymous, memfd) hold one mapping of the whole heap made up front, so
 * "commit" is only the first touch (plus mlock() when pinned), "map" is base + off and
 * read/write are memcpy; "release" gives the pages back (MADV_DONTNEED for anonymous
 * private memory, FALLOC_FL_PUNCH_HOLE for shared memory, which also drops the pages from
 * every other process mapping them).  The donor source maps nothing: its ranges are
 * descriptors, read and written with pread/pwrite; release punches only ranges marked
 * punch (the daemon's own memfd) since a donor's pages must stay charged to the donor.
 *
 * Locking: mapped sources have no state that changes.  A donor range's descriptor is an
 * atomic published with release order by msrc_donor_add; readers load it with acquire.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "source.h"

#define HUGE_ORDER 21 /* x86-64 and arm64 (4K pages) PMD huge page: 2 MiB */
#define ZERO_MADVISE_MIN (256 * 1024) /* below this memset beats a syscall */
#define ZERO_BUF (64 * 1024)
#define WIN_ORDER 25 /* donor windows: 32 MiB of a range, mapped while pinned or cached */

struct msrc_ops {
	const char *kind;
	int (*commit)(struct msrc *s, uint64_t off, uint64_t len);
	void (*release)(struct msrc *s, uint64_t off, uint64_t len);
	int (*zero)(struct msrc *s, uint64_t off, uint64_t len);
	int (*read)(struct msrc *s, void *dst, uint64_t off, size_t len);
	int (*write)(struct msrc *s, const void *src, uint64_t off, size_t len);
	void *(*map)(struct msrc *s, uint64_t off, uint64_t len);
	void (*unmap)(struct msrc *s, uint64_t off, uint64_t len);
	void (*close)(struct msrc *s);
	bool pins; /* map pins memory until unmap (bounded windows) */
};

struct donor_range {
	uint64_t off, len;  /* place in the heap (fixed) */
	_Atomic int fd;     /* -1: no memory */
	_Atomic bool punch;
	_Atomic uint64_t given; /* bytes of the memfd (<= len) */
};

/* A mapped window: 32 MiB-aligned piece `idx` of range `r` (cut at what the donor gave). */
struct window {
	unsigned r;
	uint64_t idx;
	char *addr;   /* NULL: slot empty */
	uint64_t len;
	unsigned pins;
	uint64_t last; /* LRU tick */
};

struct msrc {
	const struct msrc_ops *ops;
	uint64_t size;
	/* mapped sources */
	char *base;
	size_t map_len;
	int fd;
	bool own_fd, pin;
	uint64_t fd_offset;
	_Atomic uint64_t pin_failures;
	/* donor source */
	uint64_t first_len, slot_len;
	unsigned nranges;
	struct donor_range *r;
	pthread_mutex_t wlock; /* the windows */
	struct window *win;
	unsigned nwin;
	uint64_t tick;
};

static const char zeros[ZERO_BUF];

/* ---- mapped sources ---------------------------------------------------------------- */

static int mapped_commit(struct msrc *s, uint64_t off, uint64_t len)
{
	if (s->pin && mlock(s->base + off, len) < 0) {
		atomic_fetch_add_explicit(&s->pin_failures, 1, memory_order_relaxed);
		return -errno;
	}
	return 0;
}

static void mapped_release(struct msrc *s, uint64_t off, uint64_t len)
{
	char *addr = s->base + off;

	/* A chunk smaller than a page shares its page with neighbours: count it only. */
	if (len < (uint64_t)sysconf(_SC_PAGESIZE))
		return;
	if (s->pin)
		munlock(addr, len);
	if (s->fd < 0)
		madvise(addr, len, MADV_DONTNEED);
	else if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			   (off_t)(s->fd_offset + off), (off_t)len) < 0)
		madvise(addr, len, MADV_REMOVE); /* same effect where fallocate is refused */
}

static int mapped_zero(struct msrc *s, uint64_t off, uint64_t len)
{
	char *p = s->base + off;
	uintptr_t a = (uintptr_t)p, pg = 4096;
	uintptr_t b = (a + pg - 1) & ~(pg - 1), e = (a + len) & ~(pg - 1);

	/* Whole pages of anonymous, unpinned memory: let the kernel hand back zero pages
	 * instead of touching (and committing) them. */
	if (s->fd < 0 && !s->pin && e > b && e - b >= ZERO_MADVISE_MIN &&
	    madvise((void *)b, e - b, MADV_DONTNEED) == 0) {
		memset(p, 0, b - a);
		memset((void *)e, 0, a + len - e);
		return 0;
	}
	memset(p, 0, len);
	return 0;
}

static int mapped_read(struct msrc *s, void *dst, uint64_t off, size_t len)
{
	memcpy(dst, s->base + off, len);
	return 0;
}

static int mapped_write(struct msrc *s, const void *src, uint64_t off, size_t len)
{
	memcpy(s->base + off, src, len);
	return 0;
}

static void *mapped_map(struct msrc *s, uint64_t off, uint64_t len)
{
	(void)len;
	return s->base + off;
}

static void mapped_unmap(struct msrc *s, uint64_t off, uint64_t len)
{
	(void)s, (void)off, (void)len; /* the whole heap stays mapped */
}

static void mapped_close(struct msrc *s)
{
	if (s->base)
		munmap(s->base, s->map_len);
	if (s->own_fd)
		close(s->fd);
}

static const struct msrc_ops anon_ops = {
	.kind = "anonymous", .commit = mapped_commit, .release = mapped_release,
	.zero = mapped_zero, .read = mapped_read, .write = mapped_write, .map = mapped_map,
	.unmap = mapped_unmap, .close = mapped_close,
};

static const struct msrc_ops memfd_ops = {
	.kind = "memfd", .commit = mapped_commit, .release = mapped_release,
	.zero = mapped_zero, .read = mapped_read, .write = mapped_write, .map = mapped_map,
	.unmap = mapped_unmap, .close = mapped_close,
};

static struct msrc *src_new(const struct msrc_ops *ops, uint64_t size)
{
	struct msrc *s = calloc(1, sizeof(*s));

	if (s) {
		s->ops = ops;
		s->size = size;
		s->fd = -1;
		atomic_init(&s->pin_failures, 0);
	}
	return s;
}

/* When a chunk is a whole number of huge pages, the mapping is aligned to the huge page
 * size and asks for transparent huge pages: committing a chunk then takes it from the OS
 * in 2 MiB pages (one fault instead of 512), which is what the chunk policy says anyway,
 * and releasing a chunk frees whole huge pages. */
int msrc_anon_open(uint64_t size, unsigned chunk_order, bool pin, struct msrc **out)
{
	uint64_t extra = chunk_order >= HUGE_ORDER ? 1ull << HUGE_ORDER : 0;
	struct msrc *s = src_new(&anon_ops, size);
	uintptr_t head;
	char *p;

	if (!s)
		return -ENOMEM;
	p = mmap(NULL, size + extra, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		free(s);
		return -errno;
	}
	if (extra) {
		head = (((uintptr_t)p + extra - 1) & ~(uintptr_t)(extra - 1)) - (uintptr_t)p;
		if (head)
			munmap(p, head);
		if (extra - head)
			munmap(p + head + size, extra - head);
		p += head;
		/* advisory: without THP the heap works the same with small pages */
		madvise(p, size, MADV_HUGEPAGE);
	}
	s->base = p;
	s->map_len = size;
	s->pin = pin;
	*out = s;
	return 0;
}

int msrc_memfd_open(uint64_t size, int fd, uint64_t fd_offset, bool pin, const char *name,
		    struct msrc **out)
{
	struct msrc *s = src_new(&memfd_ops, size);
	struct stat st;
	int ret;

	if (!s)
		return -ENOMEM;
	if (fd < 0) {
		fd = memfd_create(name ? name : "heapfs", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		if (fd < 0) {
			ret = -errno;
			goto fail;
		}
		s->own_fd = true;
	}
	s->fd = fd;
	s->fd_offset = fd_offset;
	s->pin = pin;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto fail_fd;
	}
	if ((uint64_t)st.st_size < fd_offset + size &&
	    ftruncate(fd, (off_t)(fd_offset + size)) < 0) {
		ret = -errno;
		goto fail_fd;
	}
	s->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
		       (off_t)fd_offset);
	if (s->base == MAP_FAILED) {
		ret = -errno;
		goto fail_fd;
	}
	s->map_len = size;
	/* our own memfd may be handed to other processes (direct_map clients): none may
	 * change its size under our mapping (SIGBUS), nor seal it against our writes */
	if (s->own_fd && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		ret = -errno;
		munmap(s->base, size);
		goto fail_fd;
	}
	*out = s;
	return 0;

fail_fd:
	if (s->own_fd)
		close(fd);
fail:
	free(s);
	return ret;
}

/* ---- donor source ------------------------------------------------------------------ */

/* The range holding heap offset off. */
static unsigned range_of(const struct msrc *s, uint64_t off)
{
	if (off < s->first_len)
		return 0;
	return 1 + (unsigned)((off - s->first_len) / s->slot_len);
}

typedef int (*piece_fn)(struct donor_range *r, int fd, uint64_t roff, char *buf, size_t n);

/* Calls fn for each piece of [off, off+len) within one range; EIO where a range has no
 * memory (never for blocks the buddy handed out: see the rule in source.h). */
static int for_pieces(struct msrc *s, uint64_t off, size_t len, char *buf, piece_fn fn)
{
	int ret = 0;

	while (len && !ret) {
		unsigned k = range_of(s, off);
		struct donor_range *r;
		uint64_t in, n;
		int fd;

		if (k >= s->nranges)
			return -EIO;
		r = &s->r[k];
		in = off - r->off;
		n = r->len - in < len ? r->len - in : len;
		fd = atomic_load_explicit(&r->fd, memory_order_acquire);
		if (fd < 0)
			return -EIO;
		ret = fn(r, fd, in, buf, (size_t)n);
		off += n;
		len -= n;
		if (buf)
			buf += n;
	}
	return ret;
}

/* All n bytes at roff of fd, read into or written from buf. */
static int fd_io(int fd, char *buf, size_t n, uint64_t roff, bool wr)
{
	while (n) {
		ssize_t k = wr ? pwrite(fd, buf, n, (off_t)roff) : pread(fd, buf, n, (off_t)roff);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		buf += k;
		roff += (uint64_t)k;
		n -= (size_t)k;
	}
	return 0;
}

static int pread_piece(struct donor_range *r, int fd, uint64_t roff, char *buf, size_t n)
{
	(void)r;
	return fd_io(fd, buf, n, roff, false);
}

static int pwrite_piece(struct donor_range *r, int fd, uint64_t roff, char *buf, size_t n)
{
	(void)r;
	return fd_io(fd, buf, n, roff, true);
}

/* A punched range gets zeros by giving the pages back; a donor's pages stay and are
 * overwritten (punching them would let the daemon's next write charge new pages to the
 * daemon instead of the donor). */
static int zero_piece(struct donor_range *r, int fd, uint64_t roff, char *buf, size_t n)
{
	(void)buf;
	if (atomic_load(&r->punch) && !(roff & 4095) && !(n & 4095) &&
	    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)roff, (off_t)n) == 0)
		return 0;
	while (n) {
		size_t k = n < ZERO_BUF ? n : ZERO_BUF;
		int ret = pwrite_piece(r, fd, roff, (char *)zeros, k);

		if (ret)
			return ret;
		roff += k;
		n -= k;
	}
	return 0;
}

static int release_piece(struct donor_range *r, int fd, uint64_t roff, char *buf, size_t n)
{
	(void)buf;
	if (atomic_load(&r->punch))
		fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)roff, (off_t)n);
	return 0;
}

static int donor_commit(struct msrc *s, uint64_t off, uint64_t len)
{
	(void)s, (void)off, (void)len;
	return 0; /* a donor populated its memory before handing it over */
}

static void donor_release(struct msrc *s, uint64_t off, uint64_t len)
{
	for_pieces(s, off, len, NULL, release_piece);
}

static int donor_zero(struct msrc *s, uint64_t off, uint64_t len)
{
	return for_pieces(s, off, len, NULL, zero_piece);
}

static int donor_read(struct msrc *s, void *dst, uint64_t off, size_t len)
{
	return for_pieces(s, off, len, dst, pread_piece);
}

static int donor_write(struct msrc *s, const void *src, uint64_t off, size_t len)
{
	return for_pieces(s, off, len, (char *)src, pwrite_piece);
}

/* The window holding [off, off + len) of range k, mapped if need be, pinned: NULL when
 * the piece crosses a window, or every window slot is pinned, or mmap fails (the caller
 * then reads through the descriptor).  s->wlock. */
static struct window *__win_get(struct msrc *s, unsigned k, uint64_t in, uint64_t len)
{
	struct donor_range *r = &s->r[k];
	uint64_t idx = in >> WIN_ORDER, given = atomic_load(&r->given), wlen;
	struct window *w, *victim = NULL;
	int fd = atomic_load_explicit(&r->fd, memory_order_acquire);
	char *p;

	if (fd < 0 || (in + len - 1) >> WIN_ORDER != idx || in + len > given)
		return NULL;
	for (unsigned j = 0; j < s->nwin; j++) {
		w = &s->win[j];
		if (w->addr && w->r == k && w->idx == idx)
			return w;
		if (!w->addr)
			victim = w;
		else if (!w->pins && (!victim || (victim->addr && w->last < victim->last)))
			victim = w;
	}
	if (!victim)
		return NULL;
	if (victim->addr)
		munmap(victim->addr, victim->len);
	victim->addr = NULL;
	wlen = given - (idx << WIN_ORDER) < (1ull << WIN_ORDER) ? given - (idx << WIN_ORDER)
								 : 1ull << WIN_ORDER;
	/* populated: one call sets up the page tables instead of a fault per page */
	p = mmap(NULL, wlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
		 (off_t)(idx << WIN_ORDER));
	if (p == MAP_FAILED)
		return NULL;
	*victim = (struct window){ .r = k, .idx = idx, .addr = p, .len = wlen };
	return victim;
}

/* Donor memory is mapped only through a bounded set of windows (the map budget given at
 * open): the daemon's address space never holds more of it than that. */
static void *donor_map(struct msrc *s, uint64_t off, uint64_t len)
{
	unsigned k = range_of(s, off);
	struct window *w;
	uint64_t in;
	char *p = NULL;

	if (!s->nwin || !len || k >= s->nranges)
		return NULL;
	in = off - s->r[k].off;
	pthread_mutex_lock(&s->wlock);
	w = __win_get(s, k, in, len);
	if (w) {
		w->pins++;
		w->last = ++s->tick;
		p = w->addr + (in - (w->idx << WIN_ORDER));
	}
	pthread_mutex_unlock(&s->wlock);
	return p;
}

static void donor_unmap(struct msrc *s, uint64_t off, uint64_t len)
{
	unsigned k = range_of(s, off);
	uint64_t idx;

	(void)len;
	if (k >= s->nranges)
		return;
	idx = (off - s->r[k].off) >> WIN_ORDER;
	pthread_mutex_lock(&s->wlock);
	for (unsigned j = 0; j < s->nwin; j++)
		if (s->win[j].addr && s->win[j].r == k && s->win[j].idx == idx && s->win[j].pins) {
			s->win[j].pins--;
			break;
		}
	pthread_mutex_unlock(&s->wlock);
}

static void donor_close(struct msrc *s)
{
	for (unsigned k = 0; k < s->nranges; k++)
		msrc_donor_remove(s, k);
	pthread_mutex_destroy(&s->wlock);
	free(s->win);
	free(s->r);
}

static const struct msrc_ops donor_ops = {
	.kind = "donor", .commit = donor_commit, .release = donor_release, .zero = donor_zero,
	.read = donor_read, .write = donor_write, .map = donor_map, .unmap = donor_unmap,
	.close = donor_close, .pins = true,
};

int msrc_donor_open(uint64_t size, uint64_t first_len, uint64_t slot_len, unsigned nslots,
		    uint64_t map_budget, struct msrc **out)
{
	struct msrc *s;
	uint64_t off;

	if (!size || !slot_len || first_len > size)
		return -EINVAL;
	s = src_new(&donor_ops, size);
	if (!s)
		return -ENOMEM;
	s->first_len = first_len;
	s->slot_len = slot_len;
	s->nwin = (unsigned)(map_budget >> WIN_ORDER);
	s->r = calloc((size_t)nslots + 1, sizeof(*s->r));
	s->win = calloc(s->nwin ? s->nwin : 1, sizeof(*s->win));
	if (!s->r || !s->win) {
		free(s->r);
		free(s->win);
		free(s);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->wlock, NULL);
	s->nranges = 1;
	s->r[0].off = 0;
	s->r[0].len = first_len;
	atomic_init(&s->r[0].fd, -1);
	off = first_len;
	for (unsigned k = 1; k <= nslots && off < size; k++, off += slot_len) {
		s->r[k].off = off;
		s->r[k].len = size - off < slot_len ? size - off : slot_len;
		atomic_init(&s->r[k].fd, -1);
		s->nranges = k + 1;
	}
	*out = s;
	return 0;
}

int msrc_donor_range(const struct msrc *s, unsigned r, uint64_t *off, uint64_t *len)
{
	if (s->ops != &donor_ops || r >= s->nranges)
		return -EINVAL;
	*off = s->r[r].off;
	*len = s->r[r].len;
	return 0;
}

int msrc_donor_add(struct msrc *s, unsigned r, int fd, uint64_t len, bool punch)
{
	if (s->ops != &donor_ops || r >= s->nranges || fd < 0 || len > s->r[r].len)
		return -EINVAL;
	if (atomic_load(&s->r[r].fd) >= 0)
		return -EBUSY;
	atomic_store(&s->r[r].punch, punch);
	atomic_store(&s->r[r].given, len);
	atomic_store_explicit(&s->r[r].fd, fd, memory_order_release);
	return 0;
}

void msrc_donor_remove(struct msrc *s, unsigned r)
{
	int fd;

	if (s->ops != &donor_ops || r >= s->nranges)
		return;
	pthread_mutex_lock(&s->wlock); /* nothing of the range is in use: no pins */
	for (unsigned j = 0; j < s->nwin; j++) {
		if (s->win[j].addr && s->win[j].r == r) {
			munmap(s->win[j].addr, s->win[j].len);
			s->win[j].addr = NULL;
		}
	}
	pthread_mutex_unlock(&s->wlock);
	fd = atomic_exchange(&s->r[r].fd, -1);
	if (fd >= 0)
		close(fd);
}

/* ---- the table's front ------------------------------------------------------------- */

void msrc_close(struct msrc *s)
{
	if (!s)
		return;
	s->ops->close(s);
	free(s);
}

const char *msrc_kind(const struct msrc *s)
{
	return s->ops->kind;
}

int msrc_commit(struct msrc *s, uint64_t off, uint64_t len)
{
	return s->ops->commit(s, off, len);
}

/* Back [off, off+len) with memory now, so that a host short of memory answers here (a
 * memory cgroup at its limit refuses the charge with ENOMEM when its OOM killer is off)
 * instead of at a later store (SIGBUS, or the process killed).  MADV_POPULATE_WRITE
 * (Linux 5.14) faults the pages in from the kernel, not from a user fault, so the charge
 * fails rather than waits.  Donor memory belongs to its donor: nothing to do. */
int msrc_populate(struct msrc *s, uint64_t off, uint64_t len)
{
#ifdef MADV_POPULATE_WRITE
	uintptr_t pg = 4096, a = (uintptr_t)(s->base + off) & ~(pg - 1);
	uintptr_t e = ((uintptr_t)(s->base + off + len) + pg - 1) & ~(pg - 1);

	if (!s->base || !len)
		return 0;
	while (madvise((void *)a, e - a, MADV_POPULATE_WRITE) < 0) {
		if (errno == EINTR)
			continue;
		int err = errno;
		uintptr_t ia = ((uintptr_t)(s->base + off) + pg - 1) & ~(pg - 1);
		uintptr_t ie = (uintptr_t)(s->base + off + len) & ~(pg - 1);

		if (err == EINVAL)
			return 0; /* an older kernel: no way to ask in advance */
		/* what it got it gives back (the block is free, its bytes mean nothing; pages
		 * shared with neighbours stay): the host is left the room it had */
		if (ie > ia)
			s->ops->release(s, ia - (uintptr_t)s->base, ie - ia);
		return err == ENOMEM || err == EFAULT || err == EHWPOISON ? -ENOSPC : -err;
	}
#else
	(void)s, (void)off, (void)len;
#endif
	return 0;
}

void msrc_release(struct msrc *s, uint64_t off, uint64_t len)
{
	s->ops->release(s, off, len);
}

int msrc_zero(struct msrc *s, uint64_t off, uint64_t len)
{
	return len ? s->ops->zero(s, off, len) : 0;
}

int msrc_read(struct msrc *s, void *dst, uint64_t off, size_t len)
{
	return len ? s->ops->read(s, dst, off, len) : 0;
}

int msrc_write(struct msrc *s, const void *src, uint64_t off, size_t len)
{
	return len ? s->ops->write(s, src, off, len) : 0;
}

void *msrc_map(struct msrc *s, uint64_t off, uint64_t len)
{
	return off < s->size ? s->ops->map(s, off, len) : NULL;
}

void msrc_unmap(struct msrc *s, uint64_t off, uint64_t len)
{
	s->ops->unmap(s, off, len);
}

bool msrc_map_pins(const struct msrc *s)
{
	return s->ops->pins;
}

int msrc_copy(struct msrc *s, uint64_t to, uint64_t from, uint64_t len)
{
	char *a = msrc_map(s, to, len), *b = msrc_map(s, from, len), *buf;
	int ret = 0;

	if (a && b)
		memcpy(a, b, len);
	if (a)
		msrc_unmap(s, to, len);
	if (b)
		msrc_unmap(s, from, len);
	if (a && b)
		return 0;
	buf = malloc(len < (1u << 20) ? len : (1u << 20)); /* a bounded bounce buffer */
	if (!buf)
		return -ENOMEM;
	while (len && !ret) {
		size_t n = len < (1u << 20) ? len : (1u << 20);

		ret = msrc_read(s, buf, from, n);
		if (!ret)
			ret = msrc_write(s, buf, to, n);
		to += n;
		from += n;
		len -= n;
	}
	free(buf);
	return ret;
}

int msrc_fd(const struct msrc *s)
{
	return s->ops == &memfd_ops ? s->fd : -1;
}

uint64_t msrc_pin_failures(const struct msrc *s)
{
	return atomic_load(&s->pin_failures);
}
