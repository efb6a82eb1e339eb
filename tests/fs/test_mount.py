"""Mounting heapfs the ways a user does, and the mount's layout."""
import errno
import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import (HEAPFS, HEAPFS_OPTS, MIB, expect_errno, mount_fstype, pid_alive, unmount,
                      wait_until)


def test_layout_of_default_mount(mount):
    top = sorted(os.listdir(mount.path))
    assert top == [".heapfs", "heaps", "objects", "pool"], top
    ls = subprocess.run(["ls", str(mount.path)], capture_output=True, text=True).stdout.split()
    assert ls == ["heaps", "objects", "pool"]  # .heapfs is hidden by its dot
    assert os.listdir(mount.heaps) == ["scratch"]
    assert os.listdir(mount.path / "objects") == []
    assert os.listdir(mount.path / "pool") == []
    st = os.stat(mount.heap("scratch"))
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o1777
    assert st.st_uid == os.getuid()
    assert {"stats", "heaps", "maps"} <= set(os.listdir(mount.path / ".heapfs"))
    assert os.listdir(mount.path / ".heapfs" / "heaps") == ["scratch"]
    # the embedded default: one heap scratch of 256M with 4K blocks, extents
    (h,) = mount.stats()["heaps"]
    assert (h["name"], h["size"], h["min_block"], h["layout"]) == ("scratch", 256 * MIB, 4096,
                                                                  "extents")


def test_root_pool_refuse_new_entries(mount):
    # objects/ and pool/ take regular files (test_objects.py, test_pool.py), nothing else
    expect_errno(errno.EPERM, os.mkdir, mount.path / "newdir")
    expect_errno(errno.EPERM, os.open, mount.path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EPERM, os.mkdir, mount.path / "objects" / "d")
    expect_errno(errno.EPERM, os.mkdir, mount.path / "pool" / "d")
    expect_errno(errno.EPERM, os.symlink, "x", mount.path / "pool" / "l")


def test_status_files_are_read_only(mount):
    f = mount.path / ".heapfs" / "stats"
    st = os.stat(f)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    expect_errno((errno.EACCES, errno.EPERM, errno.EROFS), os.open, f, os.O_WRONLY)
    expect_errno((errno.EACCES, errno.EPERM, errno.EROFS), os.open,
                 mount.path / ".heapfs" / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno((errno.EACCES, errno.EPERM, errno.EROFS), os.unlink, f)
    # read with a plain read() loop, as cat does: whole, valid JSON
    data = subprocess.run(["cat", str(f)], capture_output=True, check=True).stdout
    assert json.loads(data)["heaps"][0]["name"] == "scratch"


def test_heapfs_version_and_help():
    r = subprocess.run([str(HEAPFS), "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "0.1.0" in r.stdout + r.stderr
    r = subprocess.run([str(HEAPFS), "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    out = r.stdout + r.stderr
    for opt in ("-c", "-f", "config=", "--print-default-config", "--check-config"):
        assert opt in out, opt


def test_print_default_config_mounts_the_same(mount_factory):
    text = subprocess.run([str(HEAPFS), "--print-default-config"], capture_output=True,
                          text=True, check=True, timeout=10).stdout
    assert 'heap "scratch"' in text
    m = mount_factory(text)
    (h,) = m.stats()["heaps"]
    assert (h["name"], h["size"], h["min_block"]) == ("scratch", 256 * MIB, 4096)


def test_fuse_options_pass_through(mount_factory):
    m = mount_factory(extra=["-o", "allow_other,default_permissions"])
    with open("/proc/self/mountinfo") as f:
        line = next(ln for ln in f if f" {m.path} " in ln)
    assert "allow_other" in line and "default_permissions" in line
    (m.heap() / "f").write_bytes(b"x")
    assert (m.heap() / "f").read_bytes() == b"x"


def _stop_foreign_daemon(mnt, pid):
    """Unmount and wait for a daemon that is not our child; returns True when it exited."""
    unmount(mnt)
    try:
        wait_until(lambda: not pid_alive(pid), 10, f"daemon {pid} to exit")
        return True
    except AssertionError:
        os.kill(pid, 9)
        return False


def test_daemon_mode_without_f(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([str(HEAPFS), *HEAPFS_OPTS, str(mnt)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    pid = None
    try:
        wait_until(lambda: mount_fstype(mnt) == "fuse.heapfs", 10, "daemon mount")
        pid = json.loads((mnt / ".heapfs" / "stats").read_bytes())["pid"]
        assert pid_alive(pid)
        with open(f"/proc/{pid}/stat") as f:
            # daemonized: a session leader of its own, not our child
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[1]) != os.getpid()
        (mnt / "heaps" / "scratch" / "hello").write_text("hi\n")
        assert (mnt / "heaps" / "scratch" / "hello").read_text() == "hi\n"
    finally:
        if pid is not None:
            assert _stop_foreign_daemon(mnt, pid), "daemon did not exit after unmount"
        else:
            unmount(mnt)
    assert mount_fstype(mnt) is None


def _mount_with_helper(tmp_path, cmd, env=None):
    """Mount through mount(8)/mount.fuse3 with a config; check the mount, write a file,
    umount, and check the daemon (not our child) exits."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "heapfs.conf"
    cfg.write_text('heap "fromcfg" {\n  size = 8M\n  min_block = 64K\n}\n')
    cmd = [str(c).replace("MNT", str(mnt)).replace("CFG", str(cfg)) for c in cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=20)
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    pid = None
    try:
        assert mount_fstype(mnt) == "fuse.heapfs"
        st = json.loads((mnt / ".heapfs" / "stats").read_bytes())
        pid = st["pid"]
        assert [h["name"] for h in st["heaps"]] == ["fromcfg"]
        assert st["heaps"][0]["size"] == 8 * MIB and st["heaps"][0]["min_block"] == 64 * 1024
        (mnt / "heaps" / "fromcfg" / "f").write_bytes(b"abc")
        assert os.stat(mnt / "heaps" / "fromcfg" / "f").st_blocks * 512 == 64 * 1024
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)  # as the user would
        if pid is not None:
            assert _stop_foreign_daemon(mnt, pid), "daemon did not exit after umount"
        else:
            unmount(mnt)
    assert mount_fstype(mnt) is None


def test_mount_t_fuse_heapfs_with_config(tmp_path):
    """`mount -t fuse.heapfs heapfs MNT -o config=FILE` runs `mount.fuse3 heapfs MNT -o
    rw,config=FILE -t fuse.heapfs`, which runs `heapfs heapfs MNT -o rw,config=FILE` from
    PATH.  mount(8) resets PATH to the system directories for its helpers, so with heapfs
    installed (meson install -> /usr/local/bin) mount(8) itself is used; with the build
    tree's heapfs the same helper call is made directly with the build dir on PATH."""
    if not shutil.which("mount.fuse3", path="/sbin:/usr/sbin"):
        pytest.skip("mount.fuse3 not installed")
    system = shutil.which("heapfs", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
    if system and os.path.realpath(system) == str(HEAPFS):
        _mount_with_helper(tmp_path, ["mount", "-t", "fuse.heapfs", "heapfs", "MNT",
                                      "-o", "config=CFG"])
    else:
        env = dict(os.environ, PATH=f"{HEAPFS.parent}:/usr/sbin:/usr/bin:/sbin:/bin")
        _mount_with_helper(tmp_path, ["mount.fuse3", "heapfs", "MNT", "-o", "rw,config=CFG",
                                      "-t", "fuse.heapfs"], env)


def test_mount_t_fuse_with_program_path(tmp_path):
    """The fuse helper's PROGRAM#SOURCE form goes through mount(8) with our binary."""
    if not shutil.which("mount.fuse3", path="/sbin:/usr/sbin"):
        pytest.skip("mount.fuse3 not installed")
    _mount_with_helper(tmp_path, ["mount", "-t", "fuse", f"{HEAPFS}#heapfs", "MNT",
                                  "-o", "config=CFG"])


def test_clean_unmount_exits_zero(mount):
    (mount.heap() / "f").write_bytes(b"x" * 100000)
    rc = mount.stop()
    assert rc == 0, mount.stderr_text()
    assert mount_fstype(mount.path) is None
