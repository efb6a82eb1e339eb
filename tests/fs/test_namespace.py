"""Names: rename (plain, NOREPLACE, EXCHANGE, EXDEV), hard links, symlinks, directories,
and heaps made and removed with mkdir/rmdir."""
import ctypes
import errno
import os
import stat
import subprocess

from conftest import MIB, expect_errno, held_bytes, pattern

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


TWO_HEAPS = 'heap "a" { size = 16M }\nheap "b" { size = 16M }\n'


def test_rename_plain_replaces_atomically(mount):
    d = mount.heap()
    (d / "old").write_bytes(b"old content")
    (d / "target").write_bytes(b"target content")
    ino = os.stat(d / "old").st_ino
    fd = os.open(d / "target", os.O_RDONLY)  # the replaced file lives on while open
    try:
        os.rename(d / "old", d / "target")
        assert not (d / "old").exists()
        assert (d / "target").read_bytes() == b"old content"
        assert os.stat(d / "target").st_ino == ino
        assert os.pread(fd, 100, 0) == b"target content"
    finally:
        os.close(fd)
    assert sorted(os.listdir(d)) == ["target"]
    mount.wait_heap("scratch", lambda h: h["used"] == 4096, "replaced file freed")


def test_rename_directories(mount):
    d = mount.heap()
    (d / "x" / "y").mkdir(parents=True)
    (d / "x" / "y" / "f").write_bytes(b"f")
    os.rename(d / "x", d / "z")
    assert (d / "z" / "y" / "f").read_bytes() == b"f"
    expect_errno(errno.EINVAL, os.rename, d / "z", d / "z" / "y" / "inside")
    (d / "empty").mkdir()
    (d / "full").mkdir()
    (d / "full" / "g").write_bytes(b"g")
    expect_errno(errno.ENOTEMPTY, os.rename, d / "empty", d / "full")
    os.rename(d / "full", d / "empty")  # a directory over an empty one
    assert (d / "empty" / "g").read_bytes() == b"g" and not (d / "full").exists()
    expect_errno(errno.EISDIR, os.rename, d / "z" / "y" / "f", d / "empty")
    expect_errno(errno.ENOTDIR, os.rename, d / "empty", d / "z" / "y" / "f")
    assert os.stat(d / "z").st_nlink == 3  # ., .. of y, its entry in the heap dir
    assert subprocess.run(["mv", str(d / "z" / "y"), str(d / "moved")]).returncode == 0
    assert (d / "moved" / "f").read_bytes() == b"f"
    assert os.stat(d / "z").st_nlink == 2


def test_rename_noreplace(mount):
    d = mount.heap()
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    expect_errno(errno.EEXIST, renameat2, d / "a", d / "b", RENAME_NOREPLACE)
    assert (d / "a").read_bytes() == b"A" and (d / "b").read_bytes() == b"B"
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(d)) == ["b", "c"] and (d / "c").read_bytes() == b"A"


def test_rename_exchange(mount):
    d = mount.heap()
    (d / "a").write_bytes(b"A" * 5000)
    (d / "sub").mkdir()
    (d / "sub" / "f").write_bytes(b"in sub")
    ia, isub = os.stat(d / "a").st_ino, os.stat(d / "sub").st_ino
    renameat2(d / "a", d / "sub", RENAME_EXCHANGE)  # a file and a directory swap names
    assert os.stat(d / "a").st_ino == isub and os.stat(d / "sub").st_ino == ia
    assert (d / "a" / "f").read_bytes() == b"in sub"
    assert (d / "sub").read_bytes() == b"A" * 5000
    expect_errno(errno.ENOENT, renameat2, d / "sub", d / "missing", RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, renameat2, d / "a", d / "sub",
                 RENAME_EXCHANGE | RENAME_NOREPLACE)


def test_rename_and_link_across_heaps_exdev(mount_factory):
    m = mount_factory(TWO_HEAPS)
    f = m.heap("a") / "f"
    f.write_bytes(pattern(100000))
    expect_errno(errno.EXDEV, os.rename, f, m.heap("b") / "f")
    expect_errno(errno.EXDEV, os.link, f, m.heap("b") / "f")
    expect_errno(errno.EXDEV, renameat2, f, m.heap("b") / "g", RENAME_NOREPLACE)
    (m.heap("b") / "other").write_bytes(b"other")
    expect_errno(errno.EXDEV, renameat2, f, m.heap("b") / "other", RENAME_EXCHANGE)
    assert (m.heap("b") / "other").read_bytes() == b"other"
    os.unlink(m.heap("b") / "other")
    assert f.read_bytes() == pattern(100000)
    # mv falls back to copy + unlink, as between filesystems
    r = subprocess.run(["mv", str(f), str(m.heap("b") / "f")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (m.heap("b") / "f").read_bytes() == pattern(100000)
    assert not f.exists()
    m.wait_heap("a", lambda h: h["used"] == 0, "a empty after mv")
    assert m.heap_stats("b")["used"] == held_bytes(m.heap("b") / "f")


def test_heap_directory_cannot_be_renamed(mount_factory):
    m = mount_factory(TWO_HEAPS)
    expect_errno(errno.EPERM, os.rename, m.heap("a"), m.heaps / "c")
    os.mkdir(m.heaps / "runtime")
    expect_errno(errno.EPERM, os.rename, m.heaps / "runtime", m.heaps / "other")
    assert sorted(os.listdir(m.heaps)) == ["a", "b", "runtime"]


def test_hard_links(mount):
    d = mount.heap()
    (d / "orig").write_bytes(pattern(MIB + 1))
    os.link(d / "orig", d / "second")
    (d / "sub").mkdir()
    os.link(d / "orig", d / "sub" / "third")
    st = os.stat(d / "orig")
    assert st.st_nlink == 3 and os.stat(d / "sub" / "third").st_ino == st.st_ino
    with open(d / "second", "r+b") as fh:
        fh.write(b"CHANGED")
    assert (d / "sub" / "third").read_bytes()[:7] == b"CHANGED"
    # du counts the shared blocks once
    du = subprocess.run(["du", "-s", "-B1", str(d)], capture_output=True, text=True).stdout
    assert int(du.split()[0]) < 2 * (MIB + 4096)
    assert mount.heap_stats()["used"] == MIB + 4096
    os.unlink(d / "orig")
    os.unlink(d / "second")
    assert os.stat(d / "sub" / "third").st_nlink == 1
    assert (d / "sub" / "third").read_bytes()[7:] == pattern(MIB + 1)[7:]
    expect_errno(errno.EEXIST, os.link, d / "sub" / "third", d / "sub" / "third")
    expect_errno(errno.EPERM, os.link, d / "sub", d / "dirlink")
    os.unlink(d / "sub" / "third")
    mount.wait_heap("scratch", lambda h: h["used"] == 0, "last link gone")


def test_symlinks(mount):
    d = mount.heap()
    (d / "target").write_bytes(b"pointed at")
    os.symlink("target", d / "rel")
    os.symlink(str(d / "target"), d / "abs")
    os.symlink("nowhere/at/all", d / "dangling")
    long_target = "x" * 4000
    os.symlink(long_target, d / "long")
    assert os.readlink(d / "rel") == "target"
    assert os.readlink(d / "long") == long_target
    assert stat.S_ISLNK(os.lstat(d / "rel").st_mode)
    assert os.lstat(d / "rel").st_size == len("target")
    assert (d / "rel").read_bytes() == b"pointed at"
    assert (d / "abs").read_bytes() == b"pointed at"
    expect_errno(errno.ENOENT, open, d / "dangling")
    expect_errno(errno.EEXIST, os.symlink, "t", d / "rel")
    r = subprocess.run(["ln", "-sfn", "other", str(d / "rel")])
    assert r.returncode == 0 and os.readlink(d / "rel") == "other"
    os.rename(d / "abs", d / "abs2")
    assert os.readlink(d / "abs2") == str(d / "target")
    os.unlink(d / "abs2")
    assert (d / "target").exists()


def test_mkdir_rmdir_and_nested_dirs(mount):
    d = mount.heap()
    (d / "a" / "b" / "c").mkdir(parents=True)
    expect_errno(errno.EEXIST, os.mkdir, d / "a")
    (d / "a" / "b" / "c" / "f").write_bytes(b"1")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "a")
    expect_errno(errno.ENOTDIR, os.rmdir, d / "a" / "b" / "c" / "f")
    expect_errno(errno.EISDIR, os.unlink, d / "a")
    r = subprocess.run(["rm", "-r", str(d / "a")])
    assert r.returncode == 0 and os.listdir(d) == []


def test_heaps_made_and_removed_with_mkdir_rmdir(mount_factory):
    m = mount_factory('default_heap_size = 8M\nheap "cfg" { size = 4M }\n')
    os.mkdir(m.heaps / "made")
    assert sorted(os.listdir(m.heaps)) == ["cfg", "made"]
    names = [h["name"] for h in m.stats()["heaps"]]
    assert sorted(names) == ["cfg", "made"]
    h = m.heap_stats("made")
    assert (h["size"], h["min_block"], h["layout"], h["used"]) == (8 * MIB, 4096, "extents", 0)
    sv = os.statvfs(m.heaps / "made")
    assert sv.f_blocks * sv.f_frsize == 8 * MIB
    assert stat.S_IMODE(os.stat(m.heaps / "made").st_mode) == 0o1777
    (m.heaps / "made" / "f").write_bytes(pattern(5000))
    assert m.heap_stats("made")["used"] == 8192
    expect_errno(errno.EEXIST, os.mkdir, m.heaps / "made")
    expect_errno(errno.ENOTEMPTY, os.rmdir, m.heaps / "made")
    os.unlink(m.heaps / "made" / "f")
    (m.heaps / "made" / "d").mkdir()
    expect_errno(errno.ENOTEMPTY, os.rmdir, m.heaps / "made")
    os.rmdir(m.heaps / "made" / "d")
    os.rmdir(m.heaps / "made")
    assert os.listdir(m.heaps) == ["cfg"]
    assert [h["name"] for h in m.stats()["heaps"]] == ["cfg"]
    expect_errno(errno.ENOENT, open, m.path / ".heapfs" / "heaps" / "made")
    # a heap named in the config stays, even when empty
    expect_errno(errno.EBUSY, os.rmdir, m.heaps / "cfg")
    assert os.listdir(m.heaps) == ["cfg"]
    # the name can be used again; a new heap starts empty
    os.mkdir(m.heaps / "made")
    assert os.listdir(m.heaps / "made") == [] and m.heap_stats("made")["used"] == 0
    # regular files cannot be made directly in heaps/
    expect_errno(errno.EPERM, os.open, m.heaps / "file", os.O_CREAT | os.O_WRONLY, 0o644)
