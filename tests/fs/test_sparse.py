"""Sparse files as tmpfs has them (issue 20; issue 23 item 4): holes in the extents layout
cost nothing, a punched range gives its memory back, copy_file_range stays in the daemon.
Each behaviour is compared with a real tmpfs in the same test: the same calls on both, the
same bytes (read back through the daemon: read_daemon), the same st_blocks, the same
SEEK_DATA/SEEK_HOLE walk.  Also: a random mix of writes, truncates, punches, zero ranges
and copy_file_range against a model (fsx's method; xfstests is not packaged in Debian 12),
MADV_REMOVE on a shared mapping, the daemon's RSS after a punch, contiguous heaps, a
replicated heap (verify clean), a sparse image, a direct client over a hole."""
import ctypes
import errno
import json
import mmap
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GIB, KIB, MIB, expect_errno, pattern, read_daemon, tmpfs_at, wait_until

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE = 0x01, 0x02, 0x08, 0x10, 0x20
SEEK_DATA, SEEK_HOLE = 3, 4


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run(*cmd):
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}: {r.stderr}"
    return r.stdout


@pytest.fixture
def tmpfs(tmp_path):
    with tmpfs_at(tmp_path / "tmpfs-sparse", "size=64m,huge=never") as d:
        yield d


HEAP = 'heap "h" { size = 64M  min_block = 4K }\n'


def blocks(p):
    return os.stat(p).st_blocks


def walk(p):
    """The data runs of p as SEEK_DATA/SEEK_HOLE report them: [(start, end), ...]."""
    fd = os.open(p, os.O_RDONLY)
    try:
        size, runs, off = os.fstat(fd).st_size, [], 0
        while off < size:
            try:
                d = os.lseek(fd, off, SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                break
            h = os.lseek(fd, d, SEEK_HOLE)
            runs.append((d, h))
            off = h
        expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_HOLE)
        return runs
    finally:
        os.close(fd)


def content(p, heapfs):
    return read_daemon(p) if heapfs else Path(p).read_bytes()


# ---- side by side with tmpfs

def test_truncate_and_random_writes_as_on_tmpfs(mount_factory, tmpfs):
    m = mount_factory(HEAP)
    used0 = m.heap_stats("h")["used"]
    rnd = random.Random(20)
    writes = [(rnd.randrange(0, 30 * MIB), rnd.randrange(1, 64 * KIB)) for _ in range(60)]
    for d in (tmpfs, m.heap("h")):
        run("truncate", "-s", "30M", d / "f")
        assert blocks(d / "f") == 0 and os.path.getsize(d / "f") == 30 * MIB
    assert m.heap_stats("h")["used"] == used0  # a hole costs nothing
    for d in (tmpfs, m.heap("h")):
        fd = os.open(d / "f", os.O_RDWR)
        for k, (off, n) in enumerate(writes):
            os.pwrite(fd, pattern(n, k), off)
        os.close(fd)
    want = content(tmpfs / "f", False)
    assert content(m.heap("h") / "f", True) == want
    # the same pages allocated, the same walk, the same du
    assert blocks(m.heap("h") / "f") == blocks(tmpfs / "f")
    assert run("stat", "-c", "%b %s", m.heap("h") / "f") == run("stat", "-c", "%b %s", tmpfs / "f")
    assert walk(m.heap("h") / "f") == walk(tmpfs / "f")
    assert run("du", "-k", m.heap("h") / "f").split()[0] == run("du", "-k", tmpfs / "f").split()[0]
    # the heap's JSON and df count the allocated blocks only
    assert m.heap_stats("h")["used"] - used0 == blocks(m.heap("h") / "f") * 512
    # cp --sparse=always keeps the holes on both (through copy_file_range and SEEK_DATA here)
    for d in (tmpfs, m.heap("h")):
        run("cp", "--sparse=always", d / "f", d / "g")
    assert content(m.heap("h") / "g", True) == want
    assert blocks(m.heap("h") / "g") == blocks(tmpfs / "g") == blocks(tmpfs / "f")
    assert walk(m.heap("h") / "g") == walk(tmpfs / "g")


def test_write_past_eof_and_keep_size_as_on_tmpfs(mount_factory, tmpfs):
    m = mount_factory(HEAP)
    for d in (tmpfs, m.heap("h")):
        fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"head")
        os.lseek(fd, 22 * MIB, os.SEEK_SET)      # lseek past the end, then write
        os.write(fd, b"x" * 8 * MIB)
        fallocate(fd, KEEP_SIZE, 40 * MIB, 4 * MIB)  # blocks past the size, size kept
        assert os.fstat(fd).st_size == 30 * MIB
        os.ftruncate(fd, 42 * MIB)              # the preallocated range shows as zeros
        os.close(fd)
    assert content(m.heap("h") / "f", True) == content(tmpfs / "f", False)
    assert blocks(m.heap("h") / "f") == blocks(tmpfs / "f")
    # tmpfs calls preallocated pages nobody wrote a hole; here a block is data (as ext4
    # and xfs with written extents): the walks differ by that one run
    assert walk(m.heap("h") / "f") == walk(tmpfs / "f") + [(40 * MIB, 42 * MIB)]
    # the measurement of issue 20: an 8 MiB write at 22 MiB took 24 MiB of a 64 MiB heap
    # and a neighbour's 2 MiB dd failed; now it takes 8 MiB (+ a block) and the dd fits
    assert m.heap_stats("h")["used"] < 13 * MIB
    run("dd", "if=/dev/zero", f"of={m.heap('h') / 'n'}", "bs=1M", "count=2")


def test_punch_then_df_as_on_tmpfs(mount_factory, tmpfs):
    m = mount_factory(HEAP)
    data = pattern(16 * MIB + 777, 3)
    punches = [(5, 100), (4096, 8192), (MIB - 10, 3 * MIB + 20), (9 * MIB + 1, 4 * MIB),
               (16 * MIB, MIB)]  # the last reaches past the end: the size stays
    for d in (tmpfs, m.heap("h")):
        (d / "f").write_bytes(data)
    df0 = {d: os.statvfs(d) for d in (tmpfs, m.heap("h"))}
    for d in (tmpfs, m.heap("h")):
        fd = os.open(d / "f", os.O_RDWR)
        for off, n in punches:
            fallocate(fd, PUNCH_HOLE | KEEP_SIZE, off, n)
        assert os.fstat(fd).st_size == len(data)
        # punch without KEEP_SIZE, collapse and insert: refused by both, nothing changes
        for mode in (PUNCH_HOLE, COLLAPSE_RANGE, INSERT_RANGE):
            expect_errno(errno.EOPNOTSUPP, fallocate, fd, mode, 0, MIB)
        os.close(fd)
    want = bytearray(data)
    for off, n in punches:
        want[off:off + n] = bytes(len(want[off:off + n]))
    assert content(tmpfs / "f", False) == bytes(want)
    assert content(m.heap("h") / "f", True) == bytes(want)
    assert blocks(m.heap("h") / "f") == blocks(tmpfs / "f")
    assert walk(m.heap("h") / "f") == walk(tmpfs / "f")
    # df: the punched blocks are free again, on both the same
    freed = {d: (os.statvfs(d).f_bfree - df0[d].f_bfree) * df0[d].f_frsize
             for d in (tmpfs, m.heap("h"))}
    assert freed[m.heap("h")] == freed[tmpfs] > 7 * MIB, freed


def test_sizes_past_the_heap_are_sparse_and_fallocate_gives_enospc(mount_factory, tmpfs):
    """Issue 23 item 4: a fallocate past the free space is ENOSPC as on tmpfs (its size is
    64m here too); a sparse size past the heap is legal; EFBIG only past the largest file."""
    m = mount_factory('heap "h" { size = 64M  min_block = 4K  pin = true }\n')
    for d in (tmpfs, m.heap("h")):
        fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"start")
        expect_errno(errno.ENOSPC, fallocate, fd, 0, 0, 128 * MIB)
        expect_errno(errno.ENOSPC, fallocate, fd, KEEP_SIZE, 0, 1 << 40)
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 0, 65 * MIB)
        assert os.fstat(fd).st_size == 5 and os.fstat(fd).st_blocks <= 8
        os.ftruncate(fd, 1 << 40)                # 1 TiB in a 64 MiB heap: all hole
        assert os.pwrite(fd, b"far", (1 << 40) - 3) == 3
        expect_errno(errno.EFBIG, fallocate, fd, 0, (1 << 63) - 4096, 8192)  # no file is
        # that large
        os.close(fd)
        assert os.path.getsize(d / "f") == 1 << 40 and blocks(d / "f") == 16
    assert m.heap_stats("h")["used"] == 8 * KIB
    with open(m.heap("h") / "f", "rb") as f:
        f.seek((1 << 40) - 4)
        assert f.read() == b"\0far"
    assert walk(m.heap("h") / "f") == walk(tmpfs / "f")


def test_mappings_over_holes_and_madv_remove_as_on_tmpfs(mount_factory, tmpfs):
    m = mount_factory(HEAP)
    for d in (tmpfs, m.heap("h")):
        run("truncate", "-s", "8M", d / "f")
        with open(d / "f", "r+b") as f, mmap.mmap(f.fileno(), 8 * MIB) as mm:
            assert mm[3 * MIB:3 * MIB + 4096] == bytes(4096)  # a hole reads zeros
            mm[5 * MIB:5 * MIB + 3] = b"abc"                 # a store allocates
            mm[0:2 * MIB] = b"\x01" * (2 * MIB)
            mm.flush()
            mm.madvise(mmap.MADV_REMOVE, MIB, MIB)           # reaches us as a punch
            assert mm[MIB:MIB + 8] == bytes(8)
        os.sync()
    assert content(m.heap("h") / "f", True) == content(tmpfs / "f", False)
    # the 1 MiB left of the stores and the page of "abc"; tmpfs also gives a page to each
    # read fault on a hole of a shared mapping (two here), the kernel's page cache holds
    # zeros for us without asking the daemon for a block
    assert blocks(m.heap("h") / "f") == (MIB + 4096) // 512
    assert blocks(tmpfs / "f") == (MIB + 3 * 4096) // 512
    assert walk(m.heap("h") / "f") == [(0, MIB), (2 * MIB, 2 * MIB),
                                       (5 * MIB, 5 * MIB + 4096)][::2]


def test_zero_range_and_copy_file_range_keep_holes(mount_factory):
    m = mount_factory(HEAP + 'heap "other" { size = 16M  min_block = 4K }\n'
                      'heap "ctg" { size = 16M  min_block = 4K  layout = contiguous }\n')
    src = m.heap("h") / "src"
    run("truncate", "-s", "4M", src)
    fd = os.open(src, os.O_RDWR)
    os.pwrite(fd, pattern(100000, 1), 10)
    os.pwrite(fd, pattern(5000, 2), 3 * MIB)
    fallocate(fd, ZERO_RANGE, 20, 30)                 # zeroes, keeps the blocks
    os.close(fd)
    want = read_daemon(src)
    assert want[20:50] == bytes(30) and want[10:20] == pattern(100000, 1)[:10]
    for name, dst in (("within", m.heap("h") / "dst"), ("across", m.heap("other") / "dst"),
                      ("contiguous", m.heap("ctg") / "dst")):
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            n, off = 0, 0
            while off < len(want):
                k = os.copy_file_range(fi.fileno(), fo.fileno(), len(want) - off)
                assert k > 0, name
                off += k
        assert read_daemon(dst) == want, name
        if name != "contiguous":  # holes stay holes
            assert blocks(dst) == blocks(src), name
            assert walk(dst) == walk(src) == [(0, 100 * KIB), (3 * MIB, 3 * MIB + 8 * KIB)]
    # a copy over data punches what the source's hole covers
    dst = m.heap("h") / "over"
    dst.write_bytes(b"\xff" * 2 * MIB)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        assert os.copy_file_range(fi.fileno(), fo.fileno(), MIB, 0, 0) == MIB
    assert read_daemon(dst) == want[:MIB] + b"\xff" * MIB
    assert blocks(dst) == (100 * KIB + MIB) // 512


def test_daemon_rss_falls_after_a_punch_as_after_an_unlink(mount_factory):
    m = mount_factory('heap "h" { size = 256M  min_block = 4K }\n')
    if m.sanitizer():
        pytest.skip("sanitizers keep their own view of the daemon's memory")
    f, g = m.heap("h") / "f", m.heap("h") / "g"
    base = m.rss_kib()
    g.write_bytes(pattern(64 * MIB, 1))
    grown = m.rss_kib()
    assert grown - base > 60 * 1024
    os.unlink(g)
    wait_until(lambda: m.rss_kib() - base < 8 * 1024, 10, "RSS back after an unlink")
    f.write_bytes(pattern(64 * MIB, 2))
    assert m.rss_kib() - base > 60 * 1024
    fd = os.open(f, os.O_RDWR)
    try:  # everything but the first and last 4 KiB: the rest of each chunk stays
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 4096, 64 * MIB - 8192)
    finally:
        os.close(fd)
    assert m.rss_kib() - base < 8 * 1024  # at once, as tmpfs
    assert blocks(f) == 16
    assert read_daemon(f, 4096) == pattern(64 * MIB, 2)[:4096]


def test_contiguous_layout_keeps_one_block(mount_factory):
    """layout = contiguous: no holes (README): truncate takes the block; a punch zeroes its
    range (the pages go back to the OS) and the file keeps its block."""
    m = mount_factory('heap "c" { size = 64M  min_block = 4K  layout = contiguous }\n')
    f = m.heap("c") / "f"
    run("truncate", "-s", "3M", f)
    assert blocks(f) * 512 == 4 * MIB
    f.write_bytes(pattern(3 * MIB, 4))
    fd = os.open(f, os.O_RDWR)
    try:
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, MIB, MIB)
        assert os.lseek(fd, 0, SEEK_DATA) == 0 and os.lseek(fd, 0, SEEK_HOLE) == 3 * MIB
        expect_errno(errno.EFBIG, os.ftruncate, fd, 65 * MIB)  # its largest file: the heap
        expect_errno(errno.EFBIG, fallocate, fd, 0, 0, 65 * MIB)
    finally:
        os.close(fd)
    want = pattern(3 * MIB, 4)
    assert read_daemon(f) == want[:MIB] + bytes(MIB) + want[2 * MIB:]
    assert blocks(f) * 512 == 4 * MIB


# ---- fsx's method: random operations against a model

def test_random_operations_against_a_model(mount_factory):
    """Writes, truncates, punches, zero ranges, fallocates and copy_file_range at random
    offsets and sizes (as fsx -N 100000 with its hole punching, zero range and
    copy_file_range on; HEAPFS_FSX_OPS and HEAPFS_FSX_SEED change the run); every few
    thousand operations the files as the daemon has them equal the model, and the holes
    the walk reports read as zeros in the model.  Two files: a copy may go between them."""
    m = mount_factory('heap "h" { size = 64M  min_block = 4K }\n')
    n_ops = int(os.environ.get("HEAPFS_FSX_OPS", "100000"))
    every = max(250, n_ops // 40)  # ops between two whole comparisons
    rnd = random.Random(int(os.environ.get("HEAPFS_FSX_SEED", "2020")))
    maxlen = 2 * MIB
    files = [m.heap("h") / "fsx0", m.heap("h") / "fsx1"]
    model = [bytearray(), bytearray()]
    fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in files]

    def check(k):
        data = read_daemon(files[k])
        assert data == bytes(model[k]), f"file {k} differs from the model"
        hole_at = 0
        for s, e in walk(files[k]) + [(len(model[k]), len(model[k]))]:
            assert model[k][hole_at:s] == bytes(s - hole_at), "a hole holds data"
            hole_at = e
    try:
        for op in range(n_ops):
            k = rnd.randrange(2)
            fd, mdl = fds[k], model[k]
            off, n = rnd.randrange(maxlen), rnd.randrange(1, 128 * KIB)
            what = rnd.choice(["write", "write", "truncate", "punch", "zero", "falloc",
                               "copy"])
            if what == "write":
                data = pattern(n, op)
                assert os.pwrite(fd, data, off) == n
                if off > len(mdl):
                    mdl.extend(bytes(off - len(mdl)))
                mdl[off:off + n] = data
            elif what == "truncate":
                os.ftruncate(fd, off)
                del mdl[off:]
                mdl.extend(bytes(off - len(mdl)))
            elif what in ("punch", "zero"):
                fallocate(fd, (PUNCH_HOLE | KEEP_SIZE) if what == "punch" else
                          ZERO_RANGE | rnd.choice([0, KEEP_SIZE]), off, n)
                end = min(off + n, len(mdl))
                if off < end:
                    mdl[off:end] = bytes(end - off)
                if what == "zero" and off + n > len(mdl) and len(mdl) < off + n and \
                        os.fstat(fd).st_size == off + n:
                    mdl.extend(bytes(off + n - len(mdl)))
            elif what == "falloc":
                keep = rnd.choice([0, KEEP_SIZE])
                fallocate(fd, keep, off, n)
                if not keep and off + n > len(mdl):
                    mdl.extend(bytes(off + n - len(mdl)))
            else:
                j = rnd.randrange(2)
                src = model[j]
                if not src:
                    continue
                soff = rnd.randrange(len(src))
                if j == k and not (off + n <= soff or soff + n <= off):
                    continue  # the kernel refuses overlapping copies within a file
                got = os.copy_file_range(fds[j], fd, n, soff, off)
                assert got == min(n, len(src) - soff)
                piece = bytes(src[soff:soff + got])
                if off > len(mdl):
                    mdl.extend(bytes(off - len(mdl)))
                mdl[off:off + got] = piece
            assert os.fstat(fd).st_size == len(mdl), (op, what)
            if op % every == every - 1:
                check(0)
                check(1)
        check(0)
        check(1)
    finally:
        for fd in fds:
            os.close(fd)
    # all blocks accounted for: what the files hold is what the heap says is used
    held = sum(blocks(p) * 512 for p in files)
    assert m.heap_stats("h")["used"] >= held


# ---- replication, images, direct clients

def test_replicated_punches_and_sparse_writes_verify_clean(mount_factory, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_replica import Pair  # noqa: E402  (the pair of daemons of test_replica)
    secret = tmp_path / "secret"
    secret.write_text("sparse files replicate\n")
    secret.chmod(0o600)
    p = Pair(mount_factory, secret, mode="sync")
    A, B = p.a.heap("data"), p.b.heap("data")
    run("truncate", "-s", "200M", A / "s")  # past the 64M heap: all hole
    fd = os.open(A / "s", os.O_RDWR)
    try:
        for k in range(20):
            os.pwrite(fd, pattern(9000, k), k * 7 * MIB + 123)
        fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 7 * MIB, 7 * MIB + 5000)
        fallocate(fd, ZERO_RANGE | KEEP_SIZE, 14 * MIB + 200, 100)
        fallocate(fd, KEEP_SIZE, 300 * MIB, MIB)
    finally:
        os.close(fd)
    want = read_daemon(A / "s")
    assert read_daemon(B / "s") == want
    assert blocks(B / "s") <= blocks(A / "s") < 2 * MIB // 512
    # the mirror is read-only to punches and copies too; nothing changed there
    fd = os.open(B / "s", os.O_RDONLY)
    try:
        expect_errno((errno.EBADF, errno.EROFS), fallocate, fd, PUNCH_HOLE | KEEP_SIZE, 0, MIB)
    finally:
        os.close(fd)
    expect_errno(errno.EROFS, open, B / "s", "r+b")
    expect_errno(errno.EROFS, os.open, B / "new", os.O_WRONLY | os.O_CREAT)
    assert read_daemon(B / "s") == want
    p.clean()
    p.verify()
    p.verify(p.b)


def test_sparse_file_image_is_small(mount_factory, tmp_path):
    img = tmp_path / "h.img"
    cfg = f'heap "h" {{ size = 64M  min_block = 4K  image = "{img}" }}\n'
    m = mount_factory(cfg)
    f = m.heap("h") / "f"
    run("truncate", "-s", "1G", f)
    with open(f, "r+b") as fh:
        fh.seek(512 * MIB)
        fh.write(b"4K of data" * 409)
    run("fallocate", "-p", "-o", str(512 * MIB + 4096), "-l", "100", f)  # beyond the data
    m.stop()
    assert img.stat().st_size < 64 * KIB, img.stat().st_size
    m2 = mount_factory(cfg)
    f2 = m2.heap("h") / "f"
    assert os.path.getsize(f2) == GIB and blocks(f2) == 8
    assert walk(f2) == [(512 * MIB, 512 * MIB + 4096)]
    with open(f2, "rb") as fh:
        fh.seek(512 * MIB - 2)
        assert fh.read(4092) == b"\0\0" + b"4K of data" * 409
    assert m2.heap_stats("h")["used"] == 4096


def test_direct_client_refuses_a_hole(mount_factory):
    pydir = os.environ.get("HEAPFS_PYTHON") or str(Path(os.environ["HEAPFS"]).parent.parent /
                                                   "python")
    sys.path.insert(0, pydir)
    import heapfs  # noqa: E402
    m = mount_factory('heap "dm" { size = 16M  direct_map = true }\n')
    f = m.heap("dm") / "f"
    run("truncate", "-s", "1M", f)
    with open(f, "r+b") as fh:
        fh.write(b"x" * 4096)
        fh.flush()
        conn = heapfs.Connection(str(m.path))
        with conn.map(fh, 0, 4096) as mm:          # data: mapped
            assert bytes(mm[:4]) == b"xxxx"
        expect_errno(errno.ENODATA, conn.map(fh, 0, 8192).__enter__)   # reaches a hole
        expect_errno(errno.ENODATA, conn.map(fh, 65536, 4096).__enter__)
        fallocate(fh.fileno(), 0, 0, MIB)          # give the hole blocks: now it maps
        with conn.map(fh, 0, MIB, write=True) as mm:
            assert bytes(mm[4096:4100]) == bytes(4)
            mm[MIB - 3:MIB] = b"end"
        conn.close()
    assert read_daemon(f)[-3:] == b"end"


def test_copy_into_a_full_heap_is_short_then_enospc(mount_factory):
    """copy_file_range into a heap that fills: the bytes that fit, then ENOSPC; the source
    and the other files keep every byte.  A status file (no copy_file_range here) is still
    copied by the kernel's own read/write."""
    m = mount_factory(HEAP + 'heap "small" { size = 4M  min_block = 4K }\n')
    src = m.heap("h") / "src"
    data = pattern(6 * MIB, 9)
    src.write_bytes(data)
    (m.heap("small") / "keep").write_bytes(b"k" * 4096)
    dst = m.heap("small") / "dst"
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        n = os.copy_file_range(fi.fileno(), fo.fileno(), len(data))
        assert 0 < n < 4 * MIB
        expect_errno(errno.ENOSPC, os.copy_file_range, fi.fileno(), fo.fileno(), len(data))
    assert read_daemon(dst) == data[:n]
    assert read_daemon(src) == data
    assert read_daemon(m.heap("small") / "keep") == b"k" * 4096
    # a copy that reaches the largest file copies what fits below it (as a write)
    with open(src, "rb") as fi, open(m.heap("h") / "d2", "wb") as fo:
        assert os.copy_file_range(fi.fileno(), fo.fileno(), 10, 0, (1 << 63) - 5) == 4
        assert os.fstat(fo.fileno()).st_size == (1 << 63) - 1
    fd = os.open(m.heap("h") / "d2", os.O_RDONLY)
    try:
        assert os.pread(fd, 5, (1 << 63) - 6) == b"\0" + data[:4]
    finally:
        os.close(fd)
    run("cp", m.path / ".heapfs" / "stats", m.heap("h") / "stats.json")
    assert json.loads((m.heap("h") / "stats.json").read_text())["heaps"]
