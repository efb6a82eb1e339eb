"""The daemon's transports, and the daemon on hosts unlike this one.

FUSE over io_uring is the default where the kernel offers it (issue 22); -o io_uring=off
keeps /dev/fuse; a kernel or process that cannot make the rings falls back to /dev/fuse by
itself; .heapfs/stats names the transport in use; the kernel's fuse.enable_uring switch is
as the daemon found it once the mount is up and after it is gone.

Issue "heapfs must run on a normal host":

This machine's root lacks CAP_SYS_RESOURCE and keeps fs.pipe-max-size at 1 MiB, so libfuse
could never grow its pipe for splice() reads here; elsewhere it can, and the daemon used to
exit 1 at the first idle moment.  Each test raises the limit for its duration (restored
after; skipped with the reason where /proc/sys cannot be written) and mounts with one of the
transport options, lets the daemon sit idle several times, checks it still answers (data
read back through the daemon with O_DIRECT) and, through the fixture, that it exits 0.
"""
import os
import subprocess
import sys
import time

import pytest

import conftest
from conftest import ENABLE_URING, MIB, pattern, pipe_max_size, read_daemon, unmount

TRANSPORTS = {
    "default": (),                      # io_uring where offered: ring workers, device: INIT
    "nospin": ("-o", "spin_us=0"),      # workers do not spin before they sleep
    "devfuse": ("-o", "io_uring=off"),  # the spinning watcher on the non-blocking device
    "clone_fd": ("-o", "clone_fd"),     # a device fd per worker
    "one_thread": ("-s",),              # libfuse's single-threaded loop
}
IDLE = 0.6  # the old failure came within a second of the first idle moment


def serve_through_idle(m):
    f = m.heap() / "f"
    data = pattern(8 * MIB, seed=7)
    for round_ in range(3):
        time.sleep(IDLE)
        assert m.proc.poll() is None, f"daemon exited {m.proc.returncode} while idle " \
                                      f"(round {round_}): {m.stderr_text()}"
        f.write_bytes(data)  # 1 MiB writes: what libfuse would splice
        time.sleep(IDLE)
        assert read_daemon(f) == data
        assert sorted(os.listdir(m.heap())) == ["f"]
    assert m.proc.poll() is None


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_raised_pipe_max_size_each_transport(mount_factory, name):
    with pipe_max_size(2 * MIB):
        m = mount_factory(extra=TRANSPORTS[name])
        serve_through_idle(m)


def test_one_allowed_cpu_on_a_bigger_host(mount_factory):
    """A daemon confined to one CPU (taskset, a cpuset cgroup) on a host with more: it must
    not spin on the only CPU it may use (main.c counts the CPUs it is allowed, not the
    host's), and it serves and exits 0 either way."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU only: nothing to confine")
    m = mount_factory(prefix=("taskset", "-c", "0"))
    assert os.sched_getaffinity(m.pid) == {0}
    serve_through_idle(m)
    assert m.stats()["spin_us"] == 0


def test_devfuse_mount_where_fuse_io_uring_is_switched_on(mount_factory):
    """A host whose fuse module has enable_uring on (a boot parameter, or another
    program's choice) while heapfs is mounted with -o io_uring=off: it must serve over
    /dev/fuse as usual, and leave the switch on."""
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch")
    before = ENABLE_URING.read_text()
    ENABLE_URING.write_text("Y")
    try:
        m = mount_factory(extra=("-o", "io_uring=off"))
        serve_through_idle(m)
        assert m.stats()["transport"] == "/dev/fuse"
        assert ENABLE_URING.read_text().strip() == "Y"
    finally:
        ENABLE_URING.write_text(before)


@pytest.mark.parametrize("switch", ["N", "Y"])
def test_io_uring_by_default_and_the_switch_as_found(mount_factory, switch):
    """The default mount serves over io_uring (stats say so; data written through it reads
    back through the daemon), whether the kernel's switch was off or on before; the switch
    is as found again once the mount is up, and after the daemon is gone.  (Another
    program that flips the switch at the same moment would disturb the check.)"""
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch: no FUSE over io_uring")
    before = ENABLE_URING.read_text()
    ENABLE_URING.write_text(switch)
    try:
        m = mount_factory(extra=("-o", "io_uring=on"))
        assert m.stats()["transport"] == "io_uring"
        assert ENABLE_URING.read_text().strip() == switch
        serve_through_idle(m)
        unmount(m.path)
        assert m.proc.wait(15) == 0, m.stderr_text()
        assert ENABLE_URING.read_text().strip() == switch
    finally:
        ENABLE_URING.write_text(before)


def test_io_uring_off_and_bad_values(mount_factory, tmp_path):
    """-o io_uring=off mounts on /dev/fuse; a value other than on or off is refused
    (exit 2, nothing mounted)."""
    m = mount_factory(extra=("-o", "io_uring=off"))
    assert m.stats()["transport"] == "/dev/fuse"
    serve_through_idle(m)
    mnt = tmp_path / "bad"
    mnt.mkdir()
    for bad in ("maybe", "", "1"):
        r = subprocess.run([str(conftest.HEAPFS), "-f", "-o", f"io_uring={bad}",
                            str(mnt)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (bad, r.stderr)
        assert "auto, on or off" in r.stderr, r.stderr
        assert not os.path.ismount(mnt)


# Runs its arguments with io_uring_setup(2) refused (ENOSYS) by a seccomp filter: a kernel
# built without io_uring, or one with kernel.io_uring_disabled = 2, as the daemon sees it.
NO_IO_URING = r"""
import ctypes, os, struct, sys
NR_IO_URING_SETUP = 425
AUDIT_ARCH_X86_64 = 0xC000003E
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    ins(0x20, 0, 0, 4),                    # ld arch
    ins(0x15, 1, 0, AUDIT_ARCH_X86_64),    # jeq x86_64 ? next+1 : next
    ins(0x06, 0, 0, 0x7FFF0000),           # other arch: allow
    ins(0x20, 0, 0, 0),                    # ld nr
    ins(0x15, 0, 1, NR_IO_URING_SETUP),    # jeq io_uring_setup
    ins(0x06, 0, 0, 0x00050000 | 38),      # ERRNO(ENOSYS)
    ins(0x06, 0, 0, 0x7FFF0000),           # allow
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                      # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("opts", [("-o", "io_uring=auto"), ("-o", "io_uring=on")],
                         ids=["default", "asked"])
def test_falls_back_to_devfuse_where_io_uring_cannot_be_had(mount_factory, opts):
    """A daemon that cannot make rings serves over /dev/fuse: silently by default, with a
    warning when -o io_uring was asked for; stats say /dev/fuse; the kernel's switch is
    left alone."""
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter here is written for x86_64")
    before = ENABLE_URING.read_text() if ENABLE_URING.exists() else None
    m = mount_factory(extra=opts, prefix=(sys.executable, "-c", NO_IO_URING))
    assert m.stats()["transport"] == "/dev/fuse"
    if before is not None:
        assert ENABLE_URING.read_text() == before
    serve_through_idle(m)
    assert m.stats()["transport"] == "/dev/fuse"
    err = m.stderr_text()
    if opts[1] == "io_uring=on":
        assert "FUSE over io_uring is not available" in err and "using /dev/fuse" in err, err
    else:
        assert "io_uring" not in err, err


@pytest.mark.parametrize("heap", ['min_block = 64K', 'min_block = 1M',
                                  'min_block = 4K  layout = contiguous'])
def test_a_mount_of_big_files_is_served_over_devfuse(mount_factory, heap):
    """The rule by heap policy: a heap made for big files (min_block of 64 KiB or more,
    or one block a file) puts its mount on /dev/fuse, where bulk transfers are faster;
    -o io_uring=on overrides it.  Big files written and read back either way."""
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch: no FUSE over io_uring")
    conf = ('heap "small" { size = 16M  min_block = 4K }\n'
            f'heap "big" {{ size = 64M  {heap} }}\n')
    data = pattern(4 * MIB, seed=3)
    for extra, want in ((("-o", "io_uring=auto"), "/dev/fuse"),
                        (("-o", "io_uring=on"), "io_uring")):
        m = mount_factory(conf, extra=extra)
        assert m.stats()["transport"] == want, (extra, m.stderr_text())
        (m.heap("big") / "f").write_bytes(data)
        assert read_daemon(m.heap("big") / "f") == data
        if want == "/dev/fuse":
            assert "heap big is for big files" in m.stderr_text()


def test_a_mount_of_small_files_is_served_over_io_uring(mount_factory):
    """Heaps of small blocks only (the default config's kind): io_uring."""
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch: no FUSE over io_uring")
    m = mount_factory('heap "a" { size = 16M  min_block = 64 }\n'
                      'heap "b" { size = 64M  min_block = 32K }\n',
                      extra=("-o", "io_uring=auto"))
    assert m.stats()["transport"] == "io_uring", m.stderr_text()


def test_the_last_io_uring_option_given_wins(mount_factory):
    """As with any mount option, the last -o io_uring[=...] decides (an fstab line and a
    command line, or HEAPFS_OPTS and a test's own): off after on is /dev/fuse, a bare
    io_uring after off is io_uring."""
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch: no FUSE over io_uring")
    m = mount_factory(extra=("-o", "io_uring", "-o", "io_uring=off"))
    assert m.stats()["transport"] == "/dev/fuse", m.stderr_text()
    m = mount_factory(extra=("-o", "io_uring=off", "-o", "io_uring"))
    assert m.stats()["transport"] == "io_uring", m.stderr_text()
