"""The daemon on hosts unlike this one (issue: heapfs must run on a normal host).

This machine's root lacks CAP_SYS_RESOURCE and keeps fs.pipe-max-size at 1 MiB, so libfuse
could never grow its pipe for splice() reads here; elsewhere it can, and the daemon used to
exit 1 at the first idle moment.  Each test raises the limit for its duration (restored
after; skipped with the reason where /proc/sys cannot be written) and mounts with one of the
transport options, lets the daemon sit idle several times, checks it still answers (data
read back through the daemon with O_DIRECT) and, through the fixture, that it exits 0.
"""
import os
import time

import pytest

from conftest import MIB, pattern, pipe_max_size, read_daemon

TRANSPORTS = {
    "default": (),                      # the spinning watcher on the non-blocking device
    "nospin": ("-o", "spin_us=0"),      # workers block in read()
    "io_uring": ("-o", "io_uring"),     # ring workers; the device carries INIT and forgets
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


def test_default_mount_where_fuse_io_uring_is_switched_on(mount_factory):
    """A host whose fuse module has enable_uring on (a boot parameter, or another
    program's choice) while heapfs is mounted without -o io_uring: it must serve over
    /dev/fuse as usual."""
    from conftest import ENABLE_URING
    if not ENABLE_URING.exists():
        pytest.skip("this kernel's fuse has no enable_uring switch")
    before = ENABLE_URING.read_text()
    ENABLE_URING.write_text("Y")
    try:
        m = mount_factory()
        serve_through_idle(m)
    finally:
        ENABLE_URING.write_text(before)
