"""File data through shell tools and system calls: cp/diff/tar, du, append, truncate,
fallocate, concurrent writers, unlink of open files, attributes and permissions."""
import ctypes
import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
import traceback

import pytest

from conftest import MIB, expect_errno, held_bytes, pattern, round_up

AWKWARD = [0, 1, 4095, 4096, 4097, MIB + 1]

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def make_tree(root):
    """A tree of files of awkward sizes, a subdirectory, a symlink, a hard link, modes."""
    root.mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, n in enumerate(AWKWARD):
        (root / f"f{n}").write_bytes(pattern(n, seed=i))
        (root / "sub" / f"g{n}").write_bytes(pattern(n, seed=100 + i))
    (root / "sub" / "deeper" / "empty").touch()
    os.chmod(root / "f4097", 0o600)
    os.chmod(root / "sub" / "g1", 0o755)
    os.symlink("../f4096", root / "sub" / "link")
    os.link(root / "f1", root / "hardlink")
    os.utime(root / "f4095", ns=(1_000_000_123, 2_000_000_456))


def run(*cmd, cwd=None):
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=cwd,
                       timeout=120)
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}: {r.stderr}"
    return r.stdout


def test_cp_diff_tar_of_awkward_sizes(mount, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    dst = mount.heap() / "copy"
    run("cp", "-a", src, dst)
    run("diff", "-r", "--no-dereference", src, dst)
    for n in AWKWARD:
        s, d = os.lstat(src / f"f{n}"), os.lstat(dst / f"f{n}")
        assert (d.st_size, d.st_mode, d.st_mtime_ns) == (s.st_size, s.st_mode, s.st_mtime_ns)
    assert os.lstat(dst / "f4095").st_mtime_ns == 2_000_000_456
    assert os.readlink(dst / "sub" / "link") == "../f4096"
    assert os.lstat(dst / "hardlink").st_ino == os.lstat(dst / "f1").st_ino
    assert os.lstat(dst / "f1").st_nlink == 2
    # tar out of the mount, back into it, and compare both ways
    run("tar", "-C", mount.heap(), "-cf", tmp_path / "out.tar", "copy")
    (tmp_path / "x").mkdir()
    run("tar", "-C", tmp_path / "x", "-xf", tmp_path / "out.tar")
    run("diff", "-r", "--no-dereference", src, tmp_path / "x" / "copy")
    (mount.heap() / "again").mkdir()
    run("tar", "-C", mount.heap() / "again", "-xf", tmp_path / "out.tar")
    run("diff", "-r", "--no-dereference", src, mount.heap() / "again" / "copy")
    # and cp out again
    run("cp", "-a", dst, tmp_path / "back")
    run("diff", "-r", "--no-dereference", src, tmp_path / "back")


def test_st_blocks_and_du_show_buddy_rounding(mount):
    d = mount.heap()
    for n in AWKWARD + [3 * 4096 + 1, 100000]:
        f = d / f"s{n}"
        f.write_bytes(pattern(n))
        assert os.stat(f).st_blksize == 128 * 1024  # DESIGN: I/O size hint
        # extents: blocks of >= min_block (4K), waste < min_block -> round up to 4K
        assert held_bytes(f) == round_up(n, 4096), n
        du = run("du", "-B1", f).split()[0]
        assert int(du) == round_up(n, 4096), n
        app = run("du", "-b", "--apparent-size", f).split()[0]
        assert int(app) == n
    total = sum(round_up(n, 4096) for n in AWKWARD + [3 * 4096 + 1, 100000])
    h = mount.heap_stats()
    assert h["used"] == total
    assert h["files"] >= len(AWKWARD) + 2


def test_df_shows_heap_size_and_free(mount_factory):
    m = mount_factory('heap "a" { size = 16M  min_block = 4K }\n'
                      'heap "b" { size = 8M  min_block = 64K }\n')
    (m.heap("a") / "f").write_bytes(pattern(3 * MIB + 5))
    for name, size in (("a", 16 * MIB), ("b", 8 * MIB)):
        h = m.heap_stats(name)
        sv = os.statvfs(m.heap(name))
        assert sv.f_blocks * sv.f_frsize == size
        assert sv.f_bfree * sv.f_frsize == h["free"]
        assert sv.f_bavail * sv.f_frsize == h["free"]
        assert sv.f_frsize == h["min_block"]
        out = run("df", "-B1", "--output=size,avail", m.heap(name)).split()
        assert int(out[-2]) == size and int(out[-1]) == h["free"], out
    assert m.heap_stats("a")["free"] == 16 * MIB - round_up(3 * MIB + 5, 4096)
    # a file inside a heap reports its heap too
    sv = os.statvfs(m.heap("a") / "f")
    assert sv.f_blocks * sv.f_frsize == 16 * MIB
    # the root sums the heaps
    sv = os.statvfs(m.path)
    assert sv.f_blocks * sv.f_frsize == 24 * MIB


def test_o_append_and_o_trunc(mount):
    f = mount.heap() / "log"
    f.write_bytes(b"first\n")
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    w = os.open(f, os.O_WRONLY)
    os.pwrite(w, b"0123456789abcdef\n", 6)  # the file grows behind the append fd's back
    os.write(a, b"appended\n")
    os.close(a)
    os.close(w)
    assert f.read_bytes() == b"first\n0123456789abcdef\nappended\n"
    run("sh", "-c", f"echo more >> '{f}'")
    assert f.read_bytes().endswith(b"appended\nmore\n")

    big = mount.heap() / "big"
    big.write_bytes(pattern(MIB))
    used = mount.heap_stats()["used"]
    fd = os.open(big, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0 and os.fstat(fd).st_blocks == 0
    os.write(fd, b"new")
    os.close(fd)
    assert big.read_bytes() == b"new"
    assert mount.heap_stats()["used"] == used - MIB + 4096


def test_truncate_shrink_and_grow_zero_fill(mount):
    d = mount.heap()
    # fill most of the heap with 0xff and free it again, so later blocks are dirty
    junk = d / "junk"
    with open(junk, "wb") as fh:
        for _ in range(64):
            fh.write(b"\xff" * MIB)
    junk.unlink()
    mount.wait_heap("scratch", lambda h: h["used"] == 0, "junk freed")

    f = d / "t"
    data = pattern(10000)
    f.write_bytes(data)
    os.truncate(f, 3000)
    assert f.read_bytes() == data[:3000]
    assert held_bytes(f) == 4096
    os.truncate(f, 20000)
    got = f.read_bytes()
    assert len(got) == 20000 and got[:3000] == data[:3000] and got[3000:] == bytes(17000)
    assert held_bytes(f) == 4096  # the new bytes are a hole (the block's tail was zeroed)
    os.truncate(f, 5 * MIB)
    with open(f, "rb") as fh:
        fh.seek(3000)
        assert fh.read() == bytes(5 * MIB - 3000)
    os.truncate(f, 0)
    assert f.read_bytes() == b"" and held_bytes(f) == 0
    # a write past EOF leaves a zeroed gap
    with open(f, "r+b") as fh:
        fh.seek(3 * MIB + 7)
        fh.write(b"tail")
    got = f.read_bytes()
    assert got == bytes(3 * MIB + 7) + b"tail"
    assert held_bytes(f) == 4096  # the gap is a hole: one block for the tail
    # `truncate` as a shell user does it
    run("truncate", "-s", "123", f)  # all of it in the hole
    assert os.stat(f).st_size == 123 and held_bytes(f) == 0
    assert f.read_bytes() == bytes(123)
    assert mount.heap_stats()["used"] == 0


def test_fallocate(mount):
    f = mount.heap() / "fa"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fallocate(fd, 0, 0, 3 * MIB + 1)
        st = os.fstat(fd)
        assert st.st_size == 3 * MIB + 1
        assert st.st_blocks * 512 == round_up(3 * MIB + 1, 4096)
        assert os.pread(fd, 3 * MIB + 1, 0) == bytes(3 * MIB + 1)
        os.pwrite(fd, b"abc", MIB)
        # FALLOC_FL_KEEP_SIZE (1): space beyond EOF without changing the size
        fallocate(fd, 1, 0, 8 * MIB)
        st = os.fstat(fd)
        assert st.st_size == 3 * MIB + 1
        assert st.st_blocks * 512 >= 8 * MIB
        assert os.pread(fd, 3, MIB) == b"abc"
    finally:
        os.close(fd)
    assert run("fallocate", "-l", "1M", mount.heap() / "fb") == ""
    assert os.stat(mount.heap() / "fb").st_size == MIB
    assert held_bytes(mount.heap() / "fb") == MIB


FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_COLLAPSE_RANGE = 0x01, 0x02, 0x08
FALLOC_ZERO_RANGE, FALLOC_INSERT_RANGE = 0x10, 0x20


def test_fallocate_zero_range_and_refused_modes(mount):
    f = mount.heap() / "fz"
    data = pattern(2 * MIB, seed=7)
    f.write_bytes(data)
    fd = os.open(f, os.O_RDWR)
    try:
        # ZERO_RANGE zeroes inside the file and keeps the blocks
        fallocate(fd, FALLOC_ZERO_RANGE, 4096, 8192)
        want = data[:4096] + bytes(8192) + data[4096 + 8192:]
        assert os.pread(fd, 2 * MIB, 0) == want
        assert os.fstat(fd).st_size == 2 * MIB and held_bytes(f) == 2 * MIB
        # collapse, insert and a punch that would change the size are refused (as on
        # tmpfs), nothing changes; punching: test_sparse.py
        for mode in (FALLOC_PUNCH_HOLE, FALLOC_COLLAPSE_RANGE, FALLOC_INSERT_RANGE):
            expect_errno(errno.EOPNOTSUPP, fallocate, fd, mode, 0, MIB)
            assert os.pread(fd, 2 * MIB, 0) == want
            assert os.fstat(fd).st_size == 2 * MIB and held_bytes(f) == 2 * MIB
    finally:
        os.close(fd)


WRITER = textwrap.dedent("""
    import os, random, sys
    path, seed, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(seed).randbytes(n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    for i in range(0, n, 65536):
        os.pwrite(fd, data[i:i + 65536], off + i)
    os.close(fd)
""")


def test_two_processes_write_at_once(mount):
    d = mount.heap()
    n = 24 * MIB
    shared = d / "shared"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(d / "one"), "1", "0", str(n)]),
        subprocess.Popen([sys.executable, "-c", WRITER, str(d / "two"), "2", "0", str(n)]),
        # two writers on disjoint halves of one file
        subprocess.Popen([sys.executable, "-c", WRITER, str(shared), "3", "0", str(n)]),
        subprocess.Popen([sys.executable, "-c", WRITER, str(shared), "4", str(n), str(n)]),
    ]
    for p in procs:
        assert p.wait(120) == 0
    assert (d / "one").read_bytes() == pattern(n, 1)
    assert (d / "two").read_bytes() == pattern(n, 2)
    assert shared.read_bytes() == pattern(n, 3) + pattern(n, 4)
    assert mount.heap_stats()["used"] == 4 * n


def test_unlink_of_open_file(mount):
    f = mount.heap() / "open"
    f.write_bytes(pattern(2 * MIB))
    used = mount.heap_stats()["used"]
    fd = os.open(f, os.O_RDWR)
    try:
        f.unlink()
        assert "open" not in os.listdir(mount.heap())
        expect_errno(errno.ENOENT, os.stat, f)
        assert os.pread(fd, 2 * MIB, 0) == pattern(2 * MIB)
        os.pwrite(fd, b"still here", 100)
        assert os.pread(fd, 10, 100) == b"still here"
        assert os.fstat(fd).st_nlink == 0
        assert mount.heap_stats()["used"] == used  # blocks stay while open
        f.write_bytes(b"new file, same name")  # the name is free again
    finally:
        os.close(fd)
    mount.wait_heap("scratch", lambda h: h["used"] == 4096, "open unlinked file freed")
    assert f.read_bytes() == b"new file, same name"


def test_chmod_chown_utimens(mount):
    f = mount.heap() / "attrs"
    f.write_bytes(b"x")
    c0 = os.stat(f).st_ctime_ns
    time.sleep(0.01)
    os.chmod(f, 0o640)
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_ctime_ns > c0
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.stat(f)
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    before = time.time_ns()
    os.utime(f)  # UTIME_NOW
    st = os.stat(f)
    assert st.st_mtime_ns >= before - 10**9
    d = mount.heap() / "dir"
    d.mkdir(0o700)
    os.chmod(d, 0o751)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o751
    run("chmod", "u+s,g+w", f)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4660
    # writing updates mtime and ctime
    m0 = os.stat(f).st_mtime_ns
    time.sleep(0.01)
    with open(f, "ab") as fh:
        fh.write(b"y")
    assert os.stat(f).st_mtime_ns > m0


def _as_nobody(fn, cwd):
    """Run fn() in a forked child as uid/gid 65534 with cwd as its working directory
    (entered while still root: pytest's tmp_path is 0700, so paths must be relative);
    returns its exit code (0 = fn passed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fn()
            code = 0
        except BaseException:  # report in the child, judge in the parent
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1] >> 8


def test_permissions_for_another_user(mount_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    m = mount_factory(extra=["-o", "allow_other"])
    d = m.heap()
    (d / "secret").write_bytes(b"root only")
    os.chmod(d / "secret", 0o600)
    (d / "public").write_bytes(b"read me")
    os.chmod(d / "public", 0o644)
    (d / "closed").mkdir(0o700)
    (d / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(d / "suid", 0o6777)  # suid, sgid + group-exec, writable by all

    def checks():  # runs in d
        expect_errno(errno.EACCES, os.open, "secret", os.O_RDONLY)
        with open("public", "rb") as fh:
            assert fh.read() == b"read me"
        expect_errno(errno.EACCES, os.open, "public", os.O_WRONLY)
        expect_errno(errno.EACCES, os.listdir, "closed")
        expect_errno(errno.EACCES, os.open, "closed/x", os.O_CREAT | os.O_WRONLY, 0o644)
        expect_errno(errno.EPERM, os.chmod, "public", 0o666)
        # the heap directory is 1777: anyone may create, nobody may delete others' files
        with open("nobodys", "wb") as fh:
            fh.write(b"mine")
        assert os.stat("nobodys").st_uid == 65534
        expect_errno((errno.EPERM, errno.EACCES), os.unlink, "public")
        os.unlink("nobodys")
        # a write by someone else clears suid, and sgid as the file is group-executable
        with open("suid", "ab") as fh:
            fh.write(b"echo hi\n")

    assert _as_nobody(checks, d) == 0
    assert (d / "public").read_bytes() == b"read me"
    assert (d / "secret").read_bytes() == b"root only"
    assert sorted(os.listdir(d)) == ["closed", "public", "secret", "suid"]
    assert stat.S_IMODE(os.stat(d / "suid").st_mode) == 0o777
    assert (d / "suid").read_bytes() == b"#!/bin/sh\necho hi\n"
    # chown clears suid too
    os.chmod(d / "suid", 0o4755)
    os.chown(d / "suid", 65534, 65534)
    assert stat.S_IMODE(os.stat(d / "suid").st_mode) == 0o755


def test_many_small_files_and_readdir(mount):
    d = mount.heap() / "many"
    d.mkdir()
    names = {f"file-{i:05d}" for i in range(3000)}
    for n in names:
        (d / n).write_bytes(n.encode())
    assert set(os.listdir(d)) == names
    ls = subprocess.run(["ls", "-1", str(d)], capture_output=True, text=True).stdout.split()
    assert set(ls) == names
    assert (d / "file-01234").read_bytes() == b"file-01234"
    assert mount.heap_stats()["used"] == 3000 * 4096
    run("rm", "-rf", d)
    assert not d.exists()
    mount.wait_heap("scratch", lambda h: h["used"] == 0 and h["files"] == 0, "all freed")
