"""The daemon with less privilege than this machine's root: an ordinary user mounting
(where /dev/fuse is open to all, as on a stock Debian host; here it is 0600, so the test
opens it for its duration and puts it back), and pinning without CAP_IPC_LOCK (an
RLIMIT_MEMLOCK then applies).  Both must serve, report what they could not do, and exit 0.
"""
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

import conftest
from conftest import ENABLE_URING, MIB, pattern, proc_status_kib, read_daemon, start_heapfs, \
    unmount

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
DEV_FUSE = "/dev/fuse"


def as_nobody(*cmd, **kw):
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture
def nobody_dir():
    """A directory of uid 65534 that uid 65534 can reach; removed after."""
    d = tempfile.mkdtemp(prefix="heapfs-nobody-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, 65534, 65534)
    yield d
    unmount(os.path.join(d, "mnt"))
    shutil.rmtree(d)


@pytest.fixture
def dev_fuse_open_to_all():
    mode = stat.S_IMODE(os.stat(DEV_FUSE).st_mode)
    os.chmod(DEV_FUSE, 0o666)
    yield
    os.chmod(DEV_FUSE, mode)


@pytest.mark.parametrize("opts", [(), ("-o", "io_uring")], ids=["default", "io_uring"])
def test_ordinary_user_mounts_uses_and_unmounts(nobody_dir, dev_fuse_open_to_all, monkeypatch,
                                                tmp_path, opts):
    daemon = conftest.HEAPFS
    if as_nobody("test", "-x", str(daemon)).returncode != 0:  # a build tree only root reaches
        daemon = os.path.join(nobody_dir, "heapfs")
        shutil.copy2(conftest.HEAPFS, daemon)
        os.chmod(daemon, 0o755)
    monkeypatch.setattr(conftest, "HEAPFS", daemon)
    if "io_uring" in opts and ENABLE_URING.exists():
        # an ordinary user cannot turn the kernel's switch on: the daemon must fall back
        before = ENABLE_URING.read_text()
        ENABLE_URING.write_text("N")
    mnt = os.path.join(nobody_dir, "mnt")
    as_nobody("mkdir", mnt).check_returncode()
    errp = tmp_path / "heapfs.stderr"
    proc = start_heapfs(mnt, None, opts, errp, prefix=NOBODY)
    try:
        r = as_nobody("sh", "-c", f"cd {mnt}/heaps/scratch && seq 1 20000 > n && "
                      f"dd if=/dev/zero of=z bs=1M count=16 status=none && "
                      f"wc -l < n && stat -c %U n && cat {mnt}/.heapfs/stats")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split("\n", 2)
        assert lines[0] == "20000" and lines[1] == "nobody"
        assert '"scratch"' in lines[2]
        # read back past the page cache (O_DIRECT); only its user may enter the mount
        d = as_nobody("sh", "-c", f"dd if={mnt}/heaps/scratch/n iflag=direct bs=1M "
                      f"status=none | sha256sum")
        want = hashlib.sha256("".join(f"{k}\n" for k in range(1, 20001)).encode())
        assert d.stdout.split()[0] == want.hexdigest(), d.stderr
        u = as_nobody("fusermount3", "-u", mnt)
        assert u.returncode == 0, u.stderr
        assert proc.wait(10) == 0, errp.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "io_uring" in opts and ENABLE_URING.exists():
            ENABLE_URING.write_text(before)
    err = errp.read_text()
    if "io_uring" in opts:
        assert "using /dev/fuse" in err, err
    assert not any(mark in err for mark in conftest.SANITIZER_MARKS), err


def test_pin_without_cap_ipc_lock(mount_factory):
    """Root without CAP_IPC_LOCK (a container, a systemd unit that drops it) is held to
    RLIMIT_MEMLOCK: pinning fails past it.  Files still work, and the heap says how many
    chunks it could not pin."""
    m = mount_factory('heap "p" { size = 64M  pin = true  chunk = 1M }\n',
                      prefix=("prlimit", f"--memlock={4 * MIB}:{4 * MIB}", "setpriv",
                              "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"))
    if m.sanitizer():
        pytest.skip(f"the daemon runs under {m.sanitizer()}, which makes mlock a no-op")
    data = pattern(16 * MIB, 3)
    (m.heap("p") / "f").write_bytes(data)
    assert read_daemon(m.heap("p") / "f") == data
    h = m.heap_stats("p")
    assert h["pin_failures"] >= 10, h  # 16 chunks of 1M, at most 4 MiB lockable
    assert proc_status_kib(m.pid, "VmLck") <= 4 * 1024
