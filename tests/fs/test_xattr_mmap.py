"""Extended attributes (user.* stored, user.heapfs.* read-only and unlisted) and mmap
MAP_SHARED (xattrs compared with tmpfs: test_xattr_tmpfs.py)."""
import errno
import mmap
import os
import subprocess

import pytest

from conftest import MIB, expect_errno, pattern, read_daemon


def test_user_xattrs_roundtrip(mount):
    f = mount.heap() / "f"
    f.write_bytes(b"data")
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.big", pattern(3000))
    assert os.getxattr(f, "user.colour") == b"blue"
    assert os.getxattr(f, "user.empty") == b""
    assert os.getxattr(f, "user.big") == pattern(3000)
    os.setxattr(f, "user.colour", b"green")
    assert os.getxattr(f, "user.colour") == b"green"
    expect_errno(errno.EEXIST, os.setxattr, f, "user.colour", b"x", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, f, "user.none", b"x", os.XATTR_REPLACE)
    names = set(os.listxattr(f))
    assert {"user.colour", "user.empty", "user.big"} <= names
    os.removexattr(f, "user.empty")
    assert "user.empty" not in os.listxattr(f)
    expect_errno(errno.ENODATA, os.getxattr, f, "user.empty")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.empty")
    # directories carry them too, and they survive rename
    d = mount.heap() / "dir"
    d.mkdir()
    os.setxattr(d, "user.tag", b"dir")
    os.rename(f, d / "moved")
    assert os.getxattr(d / "moved", "user.colour") == b"green"
    assert os.getxattr(d, "user.tag") == b"dir"
    # namespaces tmpfs does not know are not supported
    expect_errno(errno.ENOTSUP, os.setxattr, d / "moved", "system.x", b"1")
    expect_errno(errno.ENODATA, os.getxattr, d / "moved", "trusted.x")
    # getfattr/setfattr (attr package) as a user would
    r = subprocess.run(["setfattr", "-n", "user.shell", "-v", "yes", str(d / "moved")])
    assert r.returncode == 0
    out = subprocess.run(["getfattr", "-n", "user.shell", "--only-values", str(d / "moved")],
                         capture_output=True).stdout
    assert out == b"yes"


def test_user_heapfs_xattrs_read_only(mount_factory):
    m = mount_factory('heap "h" { size = 64M  min_block = 4K }\n')
    f = m.heap("h") / "f"
    f.touch()
    # one allocation for MIB + 1 bytes (a write could be split into several FUSE requests):
    # extents take one 1M block and one 4K block
    os.truncate(f, MIB + 1)
    with open(f, "r+b") as fh:
        fh.write(pattern(MIB + 1))
    assert os.stat(f).st_blocks * 512 == MIB + 4096
    assert os.listxattr(f) == []  # read by name, never listed
    assert os.getxattr(f, "user.heapfs.heap") == b"h"
    (m.heap("h") / "sub").mkdir()
    assert os.getxattr(m.heap("h") / "sub", "user.heapfs.heap") == b"h"
    assert os.getxattr(f, "user.heapfs.order") == b"20"
    assert os.getxattr(f, "user.heapfs.blocks") == b"2"
    for n in ("user.heapfs.heap", "user.heapfs.order", "user.heapfs.new"):
        expect_errno(errno.EPERM, os.setxattr, f, n, b"x")
    expect_errno(errno.EPERM, os.removexattr, f, "user.heapfs.heap")
    os.truncate(f, 100)
    assert os.getxattr(f, "user.heapfs.order") == b"12"
    assert os.getxattr(f, "user.heapfs.blocks") == b"1"
    # values follow the file when it grows
    os.truncate(f, 3 * MIB)
    assert os.getxattr(f, "user.heapfs.order") == b"21"  # 4K + 2M + 512K + ... + 4K
    held = os.stat(f).st_blocks * 512
    assert held == 3 * MIB
    assert int(os.getxattr(f, "user.heapfs.blocks")) == 1 + bin(3 * MIB - 4096).count("1")
    out = subprocess.run(["getfattr", "-n", "user.heapfs.heap", str(f)], capture_output=True,
                         text=True).stdout
    assert 'user.heapfs.heap="h"' in out
    out = subprocess.run(["getfattr", "-d", "-m", "-", str(f)], capture_output=True,
                         text=True).stdout
    assert out == ""  # a dump shows what tmpfs's would: nothing


def test_mmap_write_then_read(mount):
    f = mount.heap() / "m"
    n = 3 * MIB + 123
    with open(f, "wb") as fh:
        fh.truncate(n)
    data = pattern(n, 7)
    fd = os.open(f, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[:] = data
        mm.flush()  # msync(MS_SYNC)
        mm.close()
    finally:
        os.close(fd)
    assert read_daemon(f) == data  # what the daemon holds, past the page cache
    with open(f, "rb") as fh:  # a fresh open and read()
        assert fh.read() == data
    # in another process too
    out = subprocess.run(["sha256sum", str(f)], capture_output=True, text=True).stdout
    import hashlib
    assert out.split()[0] == hashlib.sha256(data).hexdigest()


def test_write_then_mmap_read_and_coherence(mount):
    f = mount.heap() / "w"
    n = 2 * MIB
    f.write_bytes(pattern(n, 8))
    fd = os.open(f, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert mm[:] == pattern(n, 8)
        # write() while mapped: the mapping sees it
        os.pwrite(fd, b"WRITTEN", 4096 * 10 + 5)
        assert mm[4096 * 10 + 5:4096 * 10 + 12] == b"WRITTEN"
        # the mapping written: read() of another fd sees it after msync
        mm[100:105] = b"MMAPD"
        mm.flush()
        with open(f, "rb") as fh:
            fh.seek(100)
            assert fh.read(5) == b"MMAPD"
        want = bytearray(pattern(n, 8))
        want[100:105] = b"MMAPD"
        want[4096 * 10 + 5:4096 * 10 + 12] = b"WRITTEN"
        assert read_daemon(f) == want
        mm.close()
    finally:
        os.close(fd)


def test_mmap_of_unlinked_and_truncated(mount):
    f = mount.heap() / "u"
    f.write_bytes(pattern(MIB, 9))
    fd = os.open(f, os.O_RDWR)
    mm = mmap.mmap(fd, MIB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    f.unlink()
    assert mm[:] == pattern(MIB, 9)
    mm[0:4] = b"abcd"
    mm.flush()
    assert mm[0:4] == b"abcd"
    mm.close()
    mount.wait_heap("scratch", lambda h: h["used"] == 0, "mapped unlinked file freed")


def test_cache_direct_refuses_mmap(mount_factory):
    m = mount_factory('heap "d" { size = 16M  cache = direct }\n')
    f = m.heap("d") / "f"
    f.write_bytes(pattern(100000))
    assert f.read_bytes() == pattern(100000)
    fd = os.open(f, os.O_RDWR)
    try:
        expect_errno(errno.ENODEV, mmap.mmap, fd, 100000, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
        # unaligned I/O still works without the page cache
        os.pwrite(fd, b"xyz", 4097)
        assert os.pread(fd, 5, 4096) == pattern(100000)[4096:4097] + b"xyz" + \
            pattern(100000)[4100:4101]
    finally:
        os.close(fd)


@pytest.mark.parametrize("cache", ["auto", "keep"])
def test_cache_policies_reopen_sees_new_data(mount_factory, cache):
    m = mount_factory(f'heap "c" {{ size = 16M  cache = {cache} }}\n')
    f = m.heap("c") / "f"
    f.write_bytes(b"A" * 10000)
    assert f.read_bytes() == b"A" * 10000
    with open(f, "r+b") as fh:
        fh.write(b"B" * 5000)
    assert f.read_bytes() == b"B" * 5000 + b"A" * 5000
    os.truncate(f, 3)
    assert f.read_bytes() == b"BBB"
    fd = os.open(f, os.O_RDONLY)
    mm = mmap.mmap(fd, 3, mmap.MAP_SHARED, mmap.PROT_READ)
    assert mm[:] == b"BBB"
    mm.close()
    os.close(fd)
