"""O_TMPFILE and statx's creation time (issue 23 item 8), each beside a real tmpfs in the
same test.  libfuse 3.14 has neither operation: the daemon answers FUSE_TMPFILE and
FUSE_STATX itself (fs/edge/raw.c, ops.c hfs_raw_dispatch), on /dev/fuse and on the ring."""
import ctypes
import errno
import os
import time

import pytest

from conftest import expect_errno, pattern, read_daemon
from test_replica import pairs, secret  # noqa: F401 (fixtures)
from waiting import wait_until

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800


class StatxTime(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("res", ctypes.c_int32)]


class Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("spare0", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", StatxTime), ("btime", StatxTime), ("ctime", StatxTime),
                ("mtime", StatxTime), ("rdev_major", ctypes.c_uint32),
                ("rdev_minor", ctypes.c_uint32), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("spare2", ctypes.c_uint64 * 14)]


def statx(path, mask=STATX_BASIC_STATS | STATX_BTIME, fd=AT_FDCWD, flags=0):
    """statx(2) through glibc: the filled struct (raises OSError)."""
    sx = Statx()
    if libc.statx(fd, os.fsencode(path), flags, mask, ctypes.byref(sx)):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return sx


def ns(t):
    return t.sec * 10**9 + t.nsec


def link_fd(fd, dst):
    """linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH): name an O_TMPFILE file."""
    if libc.linkat(fd, b"", AT_FDCWD, os.fsencode(str(dst)), AT_EMPTY_PATH):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def link_proc(fd, dst):
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, dst, AT_SYMLINK_FOLLOW), as an
    unprivileged program names one."""
    if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(str(dst)),
                   0x400):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def used(top):
    st = os.statvfs(top)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def tmpfile_life(top, n=1 << 20):
    """An unnamed file in top: written and read back, counted in df while it lives, given
    back at close.  What a user sees, as a tuple to compare."""
    before = used(top)
    data = pattern(n, seed=23)
    fd = os.open(top, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        assert os.write(fd, data) == n
        assert os.pread(fd, n, 0) == data
        st = os.fstat(fd)
        counted = used(top) - before >= n
        seen = (st.st_nlink, st.st_size, oct(st.st_mode), os.listdir(top))
    finally:
        os.close(fd)
    wait_until(lambda: used(top) - before < n, 10, "the unnamed file's space back")
    return seen, counted


def test_tmpfile_counted_while_it_lives(mount, tmpfs):
    want = tmpfile_life(tmpfs)
    assert want == ((0, 1 << 20, "0o100600", []), True)
    inodes = mount.heap_stats()["inodes"]
    assert tmpfile_life(mount.heap()) == want
    # nothing of it stays: its inode went back too (at the kernel's forget)
    mount.wait_heap("scratch", lambda h: h["inodes"] == inodes, "the inode back", 10)


def named(top, how):
    """An O_TMPFILE file, written, then linked into top by fd (AT_EMPTY_PATH) or by
    /proc/self/fd; what the name then holds after the descriptor is closed."""
    data = pattern(300_000, seed=5)
    fd = os.open(top, os.O_TMPFILE | os.O_WRONLY, 0o640)
    try:
        os.write(fd, data)
        if how == "fd":
            link_fd(fd, top / "kept")
        else:
            link_proc(fd, top / "kept")
        nlink = os.fstat(fd).st_nlink
    finally:
        os.close(fd)
    os.link(top / "kept", top / "second")  # an ordinary hard link after
    st = os.stat(top / "kept")
    assert (top / "kept").read_bytes() == data
    return nlink, st.st_nlink, oct(st.st_mode), st.st_size, sorted(os.listdir(top))


@pytest.mark.parametrize("how", ["fd", "proc"])
def test_linkat_keeps_the_data(mount, tmpfs, how):
    want = named(tmpfs, how)
    assert want == (1, 2, "0o100640", 300_000, ["kept", "second"])
    top = mount.heap()
    assert named(top, how) == want
    assert read_daemon(top / "kept") == pattern(300_000, seed=5)
    os.unlink(top / "kept")
    os.unlink(top / "second")


def excl(top):
    fd = os.open(top, os.O_TMPFILE | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"never named\n")
        e = expect_errno((errno.ENOENT, errno.EXDEV), link_fd, fd, top / "x")
        return e.errno, os.listdir(top)
    finally:
        os.close(fd)


def test_o_excl_cannot_be_linked(mount, tmpfs):
    want = excl(tmpfs)
    assert want == (errno.ENOENT, [])
    assert excl(mount.heap()) == want


def umasked(top):
    old = os.umask(0o027)
    try:
        fd = os.open(top, os.O_TMPFILE | os.O_RDWR, 0o666)
    finally:
        os.umask(old)
    try:
        return oct(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_mode_takes_the_umask(mount, tmpfs):
    want = umasked(tmpfs)
    assert want == "0o100640"
    assert umasked(mount.heap()) == want


def test_tmpfile_refused_where_no_file_may_be(mount):
    """The mount's root holds only the fixed tree: no file there, named or not."""
    before = os.listdir(mount.path)
    expect_errno(errno.EPERM, os.open, mount.path, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert os.listdir(mount.path) == before


def test_tmpfile_when_the_heap_has_no_inode_left(mount_factory):
    m = mount_factory('heap "tiny" { size = 1M inodes = 3 }\n')
    top = m.heap("tiny")
    made = []
    with pytest.raises(OSError) as ei:
        for k in range(10):
            (top / f"f{k}").write_bytes(b"x")
            made.append(k)
    assert ei.value.errno == errno.ENOSPC
    expect_errno(errno.ENOSPC, os.open, top, os.O_TMPFILE | os.O_RDWR, 0o600)
    os.unlink(top / f"f{made[-1]}")
    # the freed inode serves it once the kernel has forgotten the unlinked one
    wait_until(lambda: m.heap_stats("tiny")["inodes_free"] > 0, 10, "the inode back")
    fd = os.open(top, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"fits\n")
        link_fd(fd, top / "late")
    finally:
        os.close(fd)
    assert (top / "late").read_bytes() == b"fits\n"


def btimes(top):
    """statx of a new file: is btime asked for and given, between the create and now, and
    does it stay through a write, a chmod and a rename (ctime/mtime move)?"""
    t0 = time.time_ns()
    (top / "f").write_bytes(b"x")
    t1 = time.time_ns()
    a = statx(top / "f")
    time.sleep(0.02)
    with open(top / "f", "ab") as f:
        f.write(b"more")
    os.chmod(top / "f", 0o600)
    os.rename(top / "f", top / "g")
    b = statx(top / "g")
    st = os.stat(top / "g")
    return (bool(a.mask & STATX_BTIME), t0 - 10**7 <= ns(a.btime) <= t1 + 10**7,
            ns(b.btime) == ns(a.btime), ns(b.mtime) > ns(b.btime),
            # the rest agrees with stat (getattr)
            (b.ino, b.mode, b.nlink, b.uid, b.gid, b.size, b.blocks, ns(b.mtime), ns(b.ctime))
            == (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                st.st_blocks, st.st_mtime_ns, st.st_ctime_ns))


def test_statx_btime(mount, tmpfs):
    want = btimes(tmpfs)
    assert want == (True, True, True, True, True)
    assert btimes(mount.heap()) == want


def test_statx_btime_of_a_directory_and_a_tmpfile(mount):
    top = mount.heap()
    t0 = time.time_ns()
    (top / "d").mkdir()
    fd = os.open(top, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        sx = statx(b"", fd=fd, flags=AT_EMPTY_PATH)
        assert sx.mask & STATX_BTIME and ns(sx.btime) >= t0 - 10**7
        time.sleep(0.02)
        link_fd(fd, top / "t")
    finally:
        os.close(fd)
    assert ns(statx(top / "t").btime) == ns(sx.btime)  # a name does not make it anew
    d = statx(top / "d")
    assert d.mask & STATX_BTIME and ns(d.btime) >= t0 - 10**7


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tmpfile_replicates_when_named(pairs, mode):
    """Named after 3 MiB were written (more than one DATA record), then written more."""
    p = pairs(mode=mode)
    A, B = p.a.heap("data"), p.b.heap("data")
    data = pattern(3_200_000, seed=9)
    fd = os.open(A, os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, data[:3_100_000])
        os.setxattr(f"/proc/self/fd/{fd}", "user.k", b"v")
        link_fd(fd, A / "named")
        os.write(fd, data[3_100_000:])  # after the name: an ordinary write
    finally:
        os.close(fd)
    gone = os.open(A, os.O_TMPFILE | os.O_RDWR, 0o600)
    os.write(gone, b"never named")
    os.close(gone)
    wait_until(lambda: (B / "named").exists() and read_daemon(B / "named") == data, 10,
               "the named tmpfile on the mirror")
    assert os.getxattr(B / "named", "user.k") == b"v"
    assert oct(os.stat(B / "named").st_mode) == "0o100640"
    assert sorted(os.listdir(B)) == ["named"]
    # the mirror makes none (a create there: EROFS), and nothing changed
    expect_errno(errno.EROFS, os.open, B, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert sorted(os.listdir(B)) == ["named"] and read_daemon(B / "named") == data
    p.verify()
    p.clean()


def test_btime_is_made_anew_on_a_mirror(pairs):
    """btime is not in the image format nor the change records: a mirror's copy (and a
    restored one) was created when it was made there (docs/GUIDE.md)."""
    p = pairs()
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "f").write_bytes(b"x")
    a = ns(statx(A / "f").btime)
    time.sleep(0.05)
    t = time.time_ns()
    os.rename(A / "f", A / "g")  # does not make it anew on either side
    wait_until(lambda: (B / "g").exists(), 10, "the file on the mirror")
    b = ns(statx(B / "g").btime)
    assert statx(B / "g").mask & STATX_BTIME
    assert a <= b < t  # made on the mirror after the owner made it
    assert ns(statx(A / "g").btime) == a
    p.verify()


def test_btime_is_made_anew_by_a_restore(mount_factory, tmp_path):
    """An image keeps mtime but no btime: a restored file was created at the restore."""
    img = tmp_path / "h.img"
    cfg = f'heap "kept" {{ size = 16M image = "{img}" }}\n'
    m = mount_factory(cfg)
    (m.heap("kept") / "f").write_bytes(b"kept\n")
    before = statx(m.heap("kept") / "f")
    assert m.stop() == 0
    t = time.time_ns()
    m2 = mount_factory(cfg)
    after = statx(m2.heap("kept") / "f")
    assert (m2.heap("kept") / "f").read_bytes() == b"kept\n"
    assert ns(after.mtime) == ns(before.mtime)  # the image keeps mtime
    assert after.mask & STATX_BTIME and ns(after.btime) >= t > ns(before.btime)


def test_no_tmpfile_among_objects(mount_factory):
    """An object has exactly one name: objects/ makes no nameless file (tmpfs has no such
    directory); the heap beside it still does."""
    m = mount_factory('heap "scratch" { size = 1M }\nobjects { size = 1M  min_block = 64 }\n')
    o = m.path / "objects"
    expect_errno(errno.EOPNOTSUPP, os.open, o, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert os.listdir(o) == []
    fd = os.open(m.heap(), os.O_TMPFILE | os.O_RDWR, 0o600)
    os.close(fd)
