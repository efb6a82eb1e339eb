"""Edges and stress: names, directory times, writes that cannot fit anywhere, fsync,
SIGTERM, and several processes changing one directory at once."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (MIB, expect_errno, held_bytes, mount_fstype, pattern, round_up,
                      run_ctl, wait_until)


def test_name_lengths_and_unicode(mount):
    d = mount.heap()
    ok = "n" * 255
    (d / ok).write_bytes(b"255")
    assert (d / ok).read_bytes() == b"255" and ok in os.listdir(d)
    expect_errno(errno.ENAMETOOLONG, open, d / ("n" * 256), "wb")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mount.heaps / ("h" * 256))
    for name in ("grüße ☃", "with space", "new\nline", "-dash", ".dot", "a:b;c"):
        (d / name).write_text(name)
        assert (d / name).read_text() == name
    assert set(os.listdir(d)) == {ok, "grüße ☃", "with space", "new\nline", "-dash", ".dot",
                                  "a:b;c"}
    (d / "sub").mkdir()
    expect_errno(errno.ENOENT, open, d / "sub" / "missing")
    expect_errno(errno.ENOTDIR, open, d / ok / "x", "wb")
    expect_errno(errno.EEXIST, os.open, d / ok, os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_directory_times_and_sizes(mount):
    d = mount.heap() / "dir"
    d.mkdir()
    m0 = os.stat(d).st_mtime_ns
    time.sleep(0.02)
    (d / "f").write_bytes(b"x")
    m1 = os.stat(d).st_mtime_ns
    assert m1 > m0, "creating a file updates the directory's mtime"
    time.sleep(0.02)
    os.rename(d / "f", d / "g")
    m2 = os.stat(d).st_mtime_ns
    assert m2 > m1, "rename updates the directory's mtime"
    time.sleep(0.02)
    os.unlink(d / "g")
    assert os.stat(d).st_mtime_ns > m2, "unlink updates the directory's mtime"
    # an mtime set by hand sticks (make, rsync and tar rely on this)
    os.utime(d, ns=(10**18, 10**18))
    assert os.stat(d).st_mtime_ns == 10**18


def test_write_or_truncate_far_beyond_the_heap(mount):
    f = mount.heap() / "far"
    f.write_bytes(b"start")
    used = mount.heap_stats()["used"]
    fd = os.open(f, os.O_RDWR)
    try:
        # past the heap size: a sparse file (extents), as on tmpfs; what lies between
        # holds no block
        os.ftruncate(fd, 300 * MIB)  # > the 256M heap
        assert mount.heap_stats()["used"] == used
        assert os.pwrite(fd, b"x", 1 << 40) == 1
        st = os.fstat(fd)
        assert st.st_size == (1 << 40) + 1 and os.pread(fd, 100, 0) == b"start" + bytes(95)
        assert os.pread(fd, 2, (1 << 40) - 1) == b"\0x"
        assert mount.heap_stats()["used"] == used + 4096
        os.ftruncate(fd, 5)
    finally:
        os.close(fd)
    assert mount.heap_stats()["used"] == used
    # reading past the end gives nothing, not an error
    with open(f, "rb") as fh:
        fh.seek(10 * MIB)
        assert fh.read(10) == b""


def test_fsync_files_and_directories(mount):
    f = mount.heap() / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, pattern(100000))
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mount.heap(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    r = subprocess.run(["sync", str(f)])
    assert r.returncode == 0 and f.read_bytes() == pattern(100000)


def test_statfs_counts_inodes(mount):
    d = mount.heap()
    s0 = os.statvfs(d)
    assert s0.f_files >= s0.f_ffree > 0
    for i in range(10):
        (d / f"f{i}").touch()
    s1 = os.statvfs(d)
    assert (s1.f_files - s1.f_ffree) - (s0.f_files - s0.f_ffree) == 10
    assert s1.f_namemax == 255


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_unmounts_and_exits_zero(mount, sig):
    (mount.heap() / "f").write_bytes(b"x")
    mount.proc.send_signal(sig)
    assert mount.wait_exit(10) == 0, mount.stderr_text()
    wait_until(lambda: mount_fstype(mount.path) is None, 5, "mount gone after the signal")


def test_readdir_while_unlinking(mount):
    d = mount.heap() / "dir"
    d.mkdir()
    # long names, so libc's getdents buffer holds ~150 and the listing spans many calls
    names = [f"{'e' * 200}{i:04d}" for i in range(2000)]
    for n in names:
        (d / n).touch()
    seen, removed = [], set()
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 100:
                # remove 1000 names we have not seen yet, in the middle of the listing
                for n in [n for n in names if n not in seen][:1000]:
                    os.unlink(d / n)
                    removed.add(n)
    # POSIX leaves it open whether names removed meanwhile still show (libc reads ahead in
    # batches anyway); every name that stayed must come exactly once
    assert len(seen) == len(set(seen)), "a name came twice"
    assert set(names) - removed <= set(seen), "a name that stayed was skipped"
    assert sorted(os.listdir(d)) == sorted(set(names) - removed)


def test_sparse_looking_truncate_commits_no_memory(mount_factory):
    m = mount_factory('heap "h" { size = 1G }\n')
    f = m.heap("h") / "sparse"
    rss0 = m.rss_kib()
    subprocess.run(["truncate", "-s", "512M", str(f)], check=True)
    assert held_bytes(f) == 0  # a hole: no block...
    assert m.rss_kib() - rss0 < 64 * 1024  # ...and no memory
    with open(f, "rb") as fh:
        for off in (0, 123 * MIB + 5, 512 * MIB - 4096):
            fh.seek(off)
            assert fh.read(4096) == bytes(4096)


CHURN = textwrap.dedent("""
    import errno, os, random, sys, time
    d, seed, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rnd = random.Random(seed)
    end = time.monotonic() + secs
    ops = 0
    while time.monotonic() < end:
        a = os.path.join(d, f"f{rnd.randrange(40)}")
        b = os.path.join(d, f"f{rnd.randrange(40)}")
        op = rnd.randrange(7)
        try:
            if op == 0:
                with open(a, "wb") as f:
                    f.write(os.urandom(rnd.choice([0, 1, 4095, 4097, 70000, 300000])))
            elif op == 1:
                with open(a, "ab") as f:
                    f.write(b"y" * rnd.randrange(1, 20000))
            elif op == 2:
                os.truncate(a, rnd.randrange(0, 500000))
            elif op == 3:
                os.rename(a, b)
            elif op == 4:
                os.unlink(a)
            elif op == 5:
                with open(a, "rb") as f:
                    f.read()
                os.listdir(d)
            else:
                os.link(a, b)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EEXIST):
                raise
        ops += 1
    print(ops)
""")


def test_processes_churning_one_directory(mount_factory):
    m = mount_factory('heap "h" { size = 64M  min_block = 4K }\n')
    d = m.heap("h") / "churn"
    d.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, str(d), str(i), "3"],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    ops = 0
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        ops += int(out)
    assert ops > 1000
    assert m.proc.poll() is None, "daemon died"
    # accounting agrees with what is left: held bytes of every inode, counted once
    seen, held = set(), 0
    for name in os.listdir(d):
        st = os.lstat(d / name)
        assert st.st_blocks * 512 <= round_up(st.st_size, 4096)  # truncate up: a hole
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            held += st.st_blocks * 512
    m.wait_heap("h", lambda h: h["used"] == held, "used == held bytes of remaining files")
    subprocess.run(["rm", "-rf", str(d)], check=True)
    m.wait_heap("h", lambda h: h["used"] == 0 and h["largest_free"] == h["size"],
                "heap whole again after churn")


def test_runtime_heap_in_status_and_maps(mount):
    os.mkdir(mount.heaps / "extra")
    (mount.heaps / "extra" / "f").write_bytes(pattern(5 * MIB + 3))
    r = run_ctl("stats", mount.path, "extra", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["used"] == held_bytes(mount.heaps / "extra" / "f")
    mp = mount.heap_map("extra")
    assert sum(1 << o for _, o, fr in mp["blocks"] if not fr) == round_up(5 * MIB + 3, 4096)
    # rm then rmdir right away, as a shell user does
    r = subprocess.run(["sh", "-c", f"rm {mount.heaps}/extra/f && rmdir {mount.heaps}/extra"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    expect_errno(errno.ENOENT, open, mount.path / ".heapfs" / "maps" / "extra")
    expect_errno(errno.ENOENT, open, mount.path / ".heapfs" / "heaps" / "extra")
    assert run_ctl("map", mount.path, "extra").returncode == 1


APPENDER = textwrap.dedent("""
    import os, sys
    path, n, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = bytes(i % 251 for i in range(n))
    with open(path, "ab", buffering=0) as f:
        for i in range(0, n, step):
            f.write(data[i:i + step])
""")


def test_contiguous_file_moves_while_read(mount_factory):
    """A contiguous file moves to a bigger block as it grows; readers at the same time
    always see a correct prefix."""
    m = mount_factory('heap "c" { size = 64M  layout = contiguous }\n')
    f = m.heap("c") / "grow"
    f.touch()
    n = 12 * MIB
    expect = bytes(i % 251 for i in range(n))
    w = subprocess.Popen([sys.executable, "-c", APPENDER, str(f), str(n), "40000"])
    reads = 0
    while w.poll() is None or reads == 0:
        got = f.read_bytes()
        assert got == expect[:len(got)], f"bad data in a {len(got)}-byte read"
        reads += 1
    assert w.wait() == 0 and reads > 1
    assert f.read_bytes() == expect
    assert held_bytes(f) == 16 * MIB
    assert os.getxattr(f, "user.heapfs.blocks") == b"1"


def test_many_small_appends_make_many_extents(mount):
    f = mount.heap() / "pieces"
    n = 32 * MIB
    data = pattern(n, 11)
    with open(f, "wb", buffering=0) as fh:
        for i in range(0, n, 4096):
            fh.write(data[i:i + 4096])
    assert int(os.getxattr(f, "user.heapfs.blocks")) == n // 4096
    assert f.read_bytes() == data
    with open(f, "rb") as fh:
        for off in (0, 4095, 4096, 12345678, n - 1):
            fh.seek(off)
            assert fh.read(5000) == data[off:off + 5000]
    os.truncate(f, n // 2 + 1)
    assert held_bytes(f) == n // 2 + 4096
    assert f.read_bytes() == data[:n // 2 + 1]


def test_rmdir_heap_with_open_unlinked_file(mount):
    """A run-time heap whose last file is unlinked but still open: rmdir either waits for
    it (ENOTEMPTY/EBUSY) or removes the name; the open file keeps working either way, and
    the heap goes once it is closed."""
    h = mount.heaps / "temp"
    os.mkdir(h)
    data = pattern(3 * MIB, 12)
    (h / "f").write_bytes(data)
    fd = os.open(h / "f", os.O_RDWR)
    try:
        os.unlink(h / "f")
        try:
            os.rmdir(h)
            removed = True
        except OSError as e:
            assert e.errno in (errno.ENOTEMPTY, errno.EBUSY), e
            removed = False
        assert os.pread(fd, 3 * MIB, 0) == data
        os.pwrite(fd, b"more", 3 * MIB)
        assert os.pread(fd, 4, 3 * MIB) == b"more"
    finally:
        os.close(fd)
    if not removed:
        wait_until(lambda: _rmdir_ok(h), 5, "rmdir of the heap after close")
    assert "temp" not in os.listdir(mount.heaps)
    assert "temp" not in [x["name"] for x in mount.stats()["heaps"]]
    assert mount.proc.poll() is None


def _rmdir_ok(p):
    try:
        os.rmdir(p)
        return True
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise
        return False
