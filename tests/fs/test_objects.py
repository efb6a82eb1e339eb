"""Named objects (objects/): the object segment, its in-segment name map, .heapfs/segment
snapshots, and the objects image (load at mount, save at unmount).

Every check of content reads back through the daemon (read_daemon: O_DIRECT) or through a
snapshot of the segment read by heapfsctl with no daemon involved."""
import errno
import json
import mmap
import os
import shutil
import stat
import subprocess
import time
from multiprocessing import Process

import pytest

from conftest import (HEAPFS, HEAPFSCTL, HEAPFS_OPTS, KIB, MIB, expect_errno, pattern,
                      read_daemon, run_ctl, wait_until)

SEG = 1 * MIB
CONF = 'heap "scratch" { size = 1M }\nobjects { size = 1M  min_block = 64 }\n'


def conf(image=None, writers=None, size="1M"):
    extra = f'  image = "{image}"' if image else ""
    heap = 'heap "scratch" { size = 1M }\n'
    extra += f"  writers = {writers}" if writers else ""
    return heap + f"objects {{ size = {size}  min_block = 64{extra} }}\n"


def objs(m):
    return m.path / "objects"


def put(path, data, mode=0o644):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def snapshot(m, tmp_path, name="seg.img"):
    """cp .heapfs/segment to a file; it is a whole, sealed segment."""
    out = tmp_path / name
    shutil.copyfile(m.path / ".heapfs" / "segment", out)
    return out


def ls_json(img):
    r = run_ctl("--json", "image", "ls", img)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cat(img, name):
    r = subprocess.run([str(HEAPFSCTL), "image", "cat", str(img), name],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_map(m, tmp_path):
    """The segment's map lists exactly ls objects/, with the daemon's sizes and offsets."""
    j = ls_json(snapshot(m, tmp_path))
    names = sorted(os.listdir(objs(m)))
    assert sorted(o["name"] for o in j["objects"]) == names
    for o in j["objects"]:
        p = objs(m) / o["name"]
        assert o["size"] == os.stat(p).st_size
        assert o["offset"] == int(os.getxattr(p, "user.heapfs.offset"))
        assert o["block"] == 1 << int(os.getxattr(p, "user.heapfs.order"))
    return j


# ---- the namespace ---------------------------------------------------------------------

def test_create_write_read_and_map(mount_factory, tmp_path):
    m = mount_factory(CONF)
    assert os.listdir(objs(m)) == []
    put(objs(m) / "alpha", b"hello objects\n")
    data = pattern(5000, 1)
    put(objs(m) / "beta", data, 0o600)
    assert read_daemon(objs(m) / "alpha") == b"hello objects\n"
    assert read_daemon(objs(m) / "beta") == data
    st = os.stat(objs(m) / "beta")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 5000
    assert st.st_blocks * 512 == 8192  # one block, contiguous
    j = check_map(m, tmp_path)
    img = tmp_path / "seg.img"
    assert cat(img, "alpha") == b"hello objects\n" and cat(img, "beta") == data
    assert j["total"] == SEG


def test_empty_object_holds_a_block(mount_factory, tmp_path):
    m = mount_factory(CONF)
    put(objs(m) / "e", b"")
    assert os.stat(objs(m) / "e").st_size == 0
    assert os.getxattr(objs(m) / "e", "user.heapfs.order") == b"6"
    put(objs(m) / "f", b"x" * 1000)
    os.truncate(objs(m) / "f", 0)
    assert os.getxattr(objs(m) / "f", "user.heapfs.order") == b"6"
    j = check_map(m, tmp_path)
    assert {o["name"]: o["size"] for o in j["objects"]} == {"e": 0, "f": 0}


def test_only_regular_files(mount_factory):
    m = mount_factory(CONF)
    o = objs(m)
    expect_errno(errno.EPERM, os.mkdir, o / "d")
    expect_errno(errno.EPERM, os.symlink, "x", o / "l")
    expect_errno(errno.EPERM, os.mknod, o / "fifo", stat.S_IFIFO | 0o644)
    put(o / "a", b"a")
    expect_errno(errno.EPERM, os.link, o / "a", o / "b")
    expect_errno(errno.EPERM, os.link, o / "a", m.heap() / "b")  # one name, anywhere
    put(m.heap() / "h", b"h")
    expect_errno(errno.EPERM, os.link, m.heap() / "h", o / "h")  # objects take no links
    expect_errno(errno.EXDEV, os.rename, o / "a", m.heap() / "a")
    expect_errno(errno.EXDEV, os.rename, m.heap() / "h", o / "h")
    expect_errno(errno.ENOTDIR, os.rmdir, o / "a")
    # nothing was lost or added
    assert sorted(os.listdir(o)) == ["a"] and read_daemon(o / "a") == b"a"
    assert read_daemon(m.heap() / "h") == b"h"


def test_o_excl_on_existing_is_eexist_and_o_creat_gets(mount_factory):
    m = mount_factory(CONF)
    put(objs(m) / "a", b"first")
    expect_errno(errno.EEXIST, os.open, objs(m) / "a", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(objs(m) / "a", os.O_CREAT | os.O_RDONLY)
    assert os.read(fd, 100) == b"first"
    os.close(fd)


def test_rename_within_objects_keeps_block(mount_factory, tmp_path):
    m = mount_factory(CONF)
    o = objs(m)
    put(o / "a", b"A" * 300)
    put(o / "b", b"B" * 100)
    off = os.getxattr(o / "a", "user.heapfs.offset")
    os.rename(o / "a", o / "c")
    assert os.getxattr(o / "c", "user.heapfs.offset") == off
    check_map(m, tmp_path)
    os.rename(o / "c", o / "b")  # replaces b: its block goes
    assert sorted(os.listdir(o)) == ["b"] and read_daemon(o / "b") == b"A" * 300
    put(o / "x", b"X" * 10)
    subprocess.run(["mv", "--exchange", str(o / "b"), str(o / "x")], capture_output=True)
    check_map(m, tmp_path)


def test_unlink_destroys(mount_factory, tmp_path):
    m = mount_factory(CONF)
    put(objs(m) / "a", b"a" * 4000)
    used = m.stats()["objects"]["used"]
    os.unlink(objs(m) / "a")
    expect_errno(errno.ENOENT, os.stat, objs(m) / "a")
    j = check_map(m, tmp_path)
    assert j["objects"] == []
    # frees show up after release: poll the stats
    deadline = time.time() + 5
    while m.stats()["objects"]["used"] >= used and time.time() < deadline:
        time.sleep(0.05)
    assert m.stats()["objects"]["used"] < used


def test_growth_moves_block_and_offset(mount_factory, tmp_path):
    m = mount_factory(CONF)
    o = objs(m)
    put(o / "a", b"1" * 64)
    put(o / "b", b"2" * 64)  # likely the buddy of a: a cannot grow in place
    off = int(os.getxattr(o / "a", "user.heapfs.offset"))
    with open(o / "a", "ab") as f:
        f.write(b"3" * 5000)
    assert int(os.getxattr(o / "a", "user.heapfs.order")) == 13
    noff = int(os.getxattr(o / "a", "user.heapfs.offset"))
    assert noff % 8192 == 0 and noff != off
    assert read_daemon(o / "a") == b"1" * 64 + b"3" * 5000
    check_map(m, tmp_path)
    img = tmp_path / "seg.img"
    assert cat(img, "a") == b"1" * 64 + b"3" * 5000


def test_setattr_in_slot(mount_factory, tmp_path):
    m = mount_factory(CONF)
    p = objs(m) / "a"
    put(p, b"abc")
    os.chmod(p, 0o640)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    img = snapshot(m, tmp_path)
    data = img.read_bytes()
    hdr_map_off = int.from_bytes(data[40:48], "little")
    slot = data[hdr_map_off:hdr_map_off + 320]
    assert int.from_bytes(slot[0:4], "little") == 1
    assert int.from_bytes(slot[32:36], "little") == stat.S_IFREG | 0o640
    assert int.from_bytes(slot[48:56], "little", signed=True) == 2_000_000_456


def test_xattr_change_in_slot(mount_factory, tmp_path):
    """setxattr and removexattr change an object's ctime: its slot shows the new one."""
    m = mount_factory(CONF)
    p = objs(m) / "a"
    put(p, b"abc")
    for n, change in enumerate((lambda: os.setxattr(p, "user.k", b"v"),
                                lambda: os.removexattr(p, "user.k"))):
        os.utime(p, ns=(1_000_000_000, 2_000_000_000))  # ctime: now, before the change
        before = os.stat(p).st_ctime_ns
        time.sleep(0.01)
        change()
        after = os.stat(p).st_ctime_ns
        assert after > before
        (o,) = ls_json(snapshot(m, tmp_path, f"seg{n}.img"))["objects"]
        assert o["name"] == "a"
        assert o["ctime_ns"] == after
        assert o["mtime_ns"] == 2_000_000_000


def test_writers_single_is_ebusy(mount_factory):
    m = mount_factory(CONF)
    p = objs(m) / "a"
    put(p, b"a")
    fd = os.open(p, os.O_WRONLY)
    try:
        expect_errno(errno.EBUSY, os.open, p, os.O_WRONLY)
        expect_errno(errno.EBUSY, os.open, p, os.O_RDONLY | os.O_TRUNC)
        fd2 = os.open(p, os.O_RDONLY)
        os.close(fd2)
    finally:
        os.close(fd)
    assert read_daemon(p) == b"a"
    m2 = mount_factory(conf(writers="many"))
    put(objs(m2) / "a", b"a")
    fds = [os.open(objs(m2) / "a", os.O_WRONLY) for _ in range(2)]
    for f in fds:
        os.close(f)


def test_xattrs_read_only(mount_factory):
    m = mount_factory(CONF)
    p = objs(m) / "a"
    put(p, b"a" * 100)
    assert os.listxattr(p) == []  # read by name, never listed (as tmpfs lists nothing)
    assert int(os.getxattr(p, "user.heapfs.offset")) >= 0
    assert os.getxattr(p, "user.heapfs.order") == b"7"
    assert os.getxattr(p, "user.heapfs.heap") == b"objects"
    expect_errno(errno.EPERM, os.setxattr, p, "user.heapfs.offset", b"0")
    expect_errno(errno.EPERM, os.removexattr, p, "user.heapfs.offset")
    # heap files have no offset
    put(m.heap() / "h", b"h")
    expect_errno(errno.ENODATA, os.getxattr, m.heap() / "h", "user.heapfs.offset")


def test_mmap_object(mount_factory, tmp_path):
    m = mount_factory(CONF)
    p = objs(m) / "a"
    put(p, b"\0" * 4096)
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
        mm[:5] = b"hello"
        mm.flush()
        mm.close()
    assert read_daemon(p)[:5] == b"hello"


def test_many_objects_map_grows_and_check_passes(mount_factory, tmp_path):
    m = mount_factory(CONF)
    o = objs(m)
    slots0 = m.stats()["objects"]["map_slots"]
    n = 300
    for k in range(n):
        put(o / f"obj{k}", bytes([k % 251]) * (k % 200))
    st = m.stats()["objects"]
    assert st["objects"] == n and st["map_slots"] >= n > slots0
    for k in range(0, n, 2):
        os.unlink(o / f"obj{k}")
    j = check_map(m, tmp_path)  # heapfsctl checks the whole segment (img_seg_check)
    assert len(j["objects"]) == n // 2
    img = tmp_path / "seg.img"
    for k in (1, 51, 199):
        assert cat(img, f"obj{k}") == bytes([k % 251]) * (k % 200)
    for k in range(1, n, 2):
        os.unlink(o / f"obj{k}")
    assert check_map(m, tmp_path)["objects"] == []


def test_segment_full_is_enospc_and_loses_nothing(mount_factory, tmp_path):
    m = mount_factory(conf(size="64K"))
    o = objs(m)
    put(o / "big", b"b" * 8 * KIB)
    expect_errno(errno.EFBIG, os.truncate, o / "big", 128 * KIB)  # never fits
    assert read_daemon(o / "big") == b"b" * 8 * KIB
    # many empty objects: the map (and the segment) fill up
    made = 0
    with pytest.raises(OSError) as ei:
        for k in range(10000):
            put(o / f"e{k}", b"")
            made += 1
    assert ei.value.errno == errno.ENOSPC
    assert made > 12  # the map grew past its first block
    expect_errno(errno.ENOENT, os.stat, o / f"e{made}")  # the refused create left nothing
    check_map(m, tmp_path)
    assert read_daemon(o / "big") == b"b" * 8 * KIB
    os.unlink(o / "e0")
    put(o / "again", b"")
    check_map(m, tmp_path)


def test_stats_objects(mount_factory):
    m = mount_factory(CONF)
    st = m.stats()["objects"]
    assert st["size"] == SEG and st["min_block"] == 64 and st["objects"] == 0
    assert st["used"] == 8 * KIB and st["free"] == SEG - 8 * KIB  # header + map
    assert st["map_slots"] == 4096 // 320 and st["largest_free"] == SEG // 2
    put(objs(m) / "a", b"a" * 100)
    st = m.stats()["objects"]
    assert st["objects"] == 1 and st["used"] == 8 * KIB + 128


def test_statfs_of_objects_is_the_segment(mount_factory):
    m = mount_factory(CONF)
    put(objs(m) / "a", b"a" * 100)
    for p in (objs(m), objs(m) / "a"):
        st = os.statvfs(p)
        assert st.f_blocks * st.f_frsize == SEG and st.f_frsize == 64
        assert (st.f_blocks - st.f_bfree) * st.f_frsize == 8 * KIB + 128
        assert st.f_files == SEG // (64 + 320) and st.f_files - st.f_ffree == 1
    st = os.statvfs(m.path)  # elsewhere: the heaps
    assert st.f_blocks * st.f_frsize == 1 * MIB


def test_segment_status_file(mount_factory, tmp_path):
    m = mount_factory(CONF)
    f = m.path / ".heapfs" / "segment"
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o444
    expect_errno((errno.EACCES, errno.EPERM), os.open, f, os.O_WRONLY)
    data = subprocess.run(["cat", str(f)], capture_output=True, check=True).stdout
    assert len(data) == SEG and data[:8] == b"HEAPFSEG"


# ---- consistent snapshots under writers ---------------------------------------------------

def _writer(path, size, seconds):
    end = time.time() + seconds
    k = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        while time.time() < end:
            k = (k + 1) % 256
            os.pwrite(fd, bytes([k]) * size, 0)
    finally:
        os.close(fd)


def test_snapshots_under_writers_are_whole(mount_factory, tmp_path):
    m = mount_factory(conf(writers="many"))
    o = objs(m)
    put(o / "w1", b"\0" * 3000)
    put(o / "w2", b"\0" * 20000)
    ps = [Process(target=_writer, args=(o / "w1", 3000, 4)),
          Process(target=_writer, args=(o / "w2", 20000, 4))]
    for p in ps:
        p.start()
    try:
        for k in range(8):
            img = tmp_path / f"s{k}.img"
            r = subprocess.run(["cp", str(m.path / ".heapfs" / "segment"), str(img)])
            assert r.returncode == 0
            j = ls_json(img)
            assert sorted(x["name"] for x in j["objects"]) == ["w1", "w2"]
            for name, n in (("w1", 3000), ("w2", 20000)):
                body = cat(img, name)
                assert len(body) == n and body == body[:1] * n, name
    finally:
        for p in ps:
            p.join()


def test_segment_snapshot_budget(mount_factory):
    m = mount_factory(conf(size="32M"))
    f = m.path / ".heapfs" / "segment"
    fds = []
    try:
        with pytest.raises(OSError) as ei:
            for _ in range(4):
                put(objs(m) / f"x{len(fds)}", b"x")  # each snapshot distinct
                fds.append(os.open(f, os.O_RDONLY))
        assert ei.value.errno == errno.ENFILE
        assert len(fds) == 2  # 64M budget, 32M each
    finally:
        for fd in fds:
            os.close(fd)
    # FUSE release runs after close() returns: the charge goes back shortly after
    wait_until(lambda: m.stats()["snapshot_bytes"] < 32 * MIB, 5.0, "snapshots uncharged")
    fd = os.open(f, os.O_RDONLY)  # the budget is whole again
    os.close(fd)


# ---- the objects image ---------------------------------------------------------------------

def test_image_round_trip(mount_factory, tmp_path):
    image = tmp_path / "objects.img"
    m = mount_factory(conf(image=image), name="a")
    o = objs(m)
    put(o / "alpha", b"hello\n", 0o640)
    data = pattern(70000, 3)
    put(o / "gamma", data)
    put(o / "empty", b"")
    os.utime(o / "alpha", ns=(5_000_000_001, 6_000_000_002))
    before = {n: (os.stat(o / n), os.getxattr(o / n, "user.heapfs.offset"))
              for n in os.listdir(o)}
    assert m.stop() == 0
    assert image.stat().st_size == SEG
    assert sorted(o["name"] for o in ls_json(image)["objects"]) == ["alpha", "empty", "gamma"]
    m2 = mount_factory(conf(image=image), name="b")
    o2 = objs(m2)
    assert sorted(os.listdir(o2)) == ["alpha", "empty", "gamma"]
    for n, (st, off) in before.items():
        st2 = os.stat(o2 / n)
        assert (st2.st_mode, st2.st_uid, st2.st_gid, st2.st_size, st2.st_mtime_ns) == \
            (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns), n
        assert os.getxattr(o2 / n, "user.heapfs.offset") == off
    assert read_daemon(o2 / "alpha") == b"hello\n" and read_daemon(o2 / "gamma") == data
    # the restored segment takes changes: the allocator knows the used blocks
    put(o2 / "new", b"n" * 1000)
    assert read_daemon(o2 / "gamma") == data
    check_map(m2, tmp_path)


def start_refused(tmp_path, image):
    cfgp = tmp_path / "bad.conf"
    cfgp.write_text(conf(image=image))
    mnt = tmp_path / "mnt-bad"
    mnt.mkdir(exist_ok=True)
    before = image.read_bytes()
    r = subprocess.run([str(HEAPFS), "-f", "-c", str(cfgp), *HEAPFS_OPTS, str(mnt)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"heapfs: {image}: "), r.stderr
    assert os.listdir(mnt) == []  # nothing mounted
    assert image.read_bytes() == before
    return r.stderr


@pytest.fixture
def saved_image(mount_factory, tmp_path):
    image = tmp_path / "good.img"
    m = mount_factory(conf(image=image), name="maker")
    put(objs(m) / "alpha", b"alpha" * 100)
    assert m.stop() == 0
    return image


@pytest.mark.parametrize("n", [0, 100, 4096, SEG - 1])
def test_image_truncated_refused(tmp_path, saved_image, n):
    data = saved_image.read_bytes()
    saved_image.write_bytes(data[:n])
    start_refused(tmp_path, saved_image)


@pytest.mark.parametrize("pos", [3, 75, 4096 + 40, 600_000])
def test_image_bitflip_refused(tmp_path, saved_image, pos):
    data = bytearray(saved_image.read_bytes())
    data[pos] ^= 4
    saved_image.write_bytes(bytes(data))
    start_refused(tmp_path, saved_image)


def test_image_wrong_version_refused(tmp_path, saved_image):
    data = bytearray(saved_image.read_bytes())
    data[8:12] = (2).to_bytes(4, "little")
    saved_image.write_bytes(bytes(data))
    assert "version" in start_refused(tmp_path, saved_image)


def test_image_wrong_size_refused(mount_factory, tmp_path):
    image = tmp_path / "two.img"
    m = mount_factory(conf(image=image, size="2M"), name="maker")
    put(objs(m) / "alpha", b"a")
    assert m.stop() == 0
    assert "wrong size" in start_refused(tmp_path, image)


def test_image_save_failure_keeps_old(mount_factory, tmp_path):
    # a name of 250 bytes: the image itself can be made, its temporary file (NAME.XXXXXX)
    # cannot (ENAMETOOLONG), even as root
    image = tmp_path / ("o" * 250)
    m = mount_factory(conf(image=tmp_path / "short.img"), name="a")
    put(objs(m) / "alpha", b"a")
    assert m.stop() == 0
    shutil.copyfile(tmp_path / "short.img", image)
    old = image.read_bytes()
    m2 = mount_factory(conf(image=image), name="b")
    put(objs(m2) / "beta", b"b")
    m2.expect_exit = 1
    assert m2.stop() == 1
    assert "cannot save the object segment" in m2.stderr_text()
    assert image.read_bytes() == old
    assert os.listdir(tmp_path).count("o" * 250) == 1


def test_image_saved_on_sigterm(mount_factory, tmp_path):
    import signal
    image = tmp_path / "t.img"
    m = mount_factory(conf(image=image))
    put(objs(m) / "alpha", b"kept\n")
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(30) == 0, m.stderr_text()  # generous: TSan daemons on a busy host
    assert cat(image, "alpha") == b"kept\n"
