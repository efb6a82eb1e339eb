"""The mirror's room (SPEC "Replication", issue 9; docs/GUIDE.md "Replication" - Space): the
mirror host running out of memory for its copy of a heap is real here - the MIRROR daemon
is moved into a cgroup-v1 memory cgroup with a small limit and its OOM killer off, so the
kernel refuses the pages (repl.c "Room": the mirror asks for a block's memory up front) -
and the owner answers ENOSPC in sync mode without losing or diverging anything; in async
mode the owner goes on and the pair reports the mirror `behind`.

At its limit, with the OOM killer off, the mirror refuses a block cleanly (the block's
memory is asked for up front, MADV_POPULATE_WRITE fails) - but any other fresh page it
touches there, in user space, is a fault the kernel parks until the cgroup has room again:
a malloc for a new worker or buffer, an io_uring reply buffer.  Seen on a busy host (more
FUSE workers start, other CPUs' rings serve): mirror threads in mem_cgroup_oom_synchronize
(from _int_malloc, sysmalloc_mmap, memset, memcpy) and the test blocked for good in a read
of the mirror.  So each test holds the mirror at its limit only while the owner writes,
and gives it room (Room.lift) before it asks the mirror anything.

The cgroup is removed after each test (its limit lifted first, which wakes a daemon parked
at it, then the daemon moved back)."""
import errno
import itertools
import os

import pytest

from conftest import MIB, pattern, read_daemon, wait_until
from test_replica import Pair, partner, secret, wait_state  # noqa: F401 (fixture)

CG = "/sys/fs/cgroup/memory"
_n = itertools.count()


class Room:
    """A memory cgroup for one daemon: limit(bytes above what it uses now)."""

    def __init__(self):
        self.path = f"{CG}/heapfs-room-{os.getpid()}-{next(_n)}"
        os.mkdir(self.path)

    def put(self, pid):
        self._w("memory.oom_control", "1")  # refuse the charge, never kill
        self._w("cgroup.procs", str(pid))

    def limit(self, room):
        used = int(open(f"{self.path}/memory.usage_in_bytes").read())
        self._w("memory.limit_in_bytes", str(used + room))

    def lift(self):
        """No limit any more: room again, and a fault parked at the limit goes on."""
        self._w("memory.limit_in_bytes", "-1")

    def _w(self, name, value):
        with open(f"{self.path}/{name}", "w") as f:
            f.write(value)

    def remove(self):
        self.lift()
        for pid in open(f"{self.path}/cgroup.procs").read().split():
            try:
                with open(f"{CG}/cgroup.procs", "w") as f:
                    f.write(pid)
            except OSError:
                pass  # gone meanwhile
        wait_until(lambda: not open(f"{self.path}/cgroup.procs").read().split(), 5,
                   "cgroup empty")
        os.rmdir(self.path)


@pytest.fixture
def room():
    if not os.path.isfile(f"{CG}/memory.limit_in_bytes") or os.geteuid():
        pytest.skip("needs root and the cgroup v1 memory controller")
    if os.path.basename(os.environ.get("HEAPFS", "")).endswith(("-asan", "-tsan")):
        # the limit is the mirror's own use plus a few MiB: a sanitizer daemon's quarantine
        # and shadow memory are charged to the same cgroup and fill it first (the mirror
        # then stalls with its OOM killer off, and the pair reads "unreachable")
        pytest.skip("a sanitizer's own memory is charged to the mirror's small cgroup")
    made = []

    def make():
        made.append(Room())
        return made[-1]
    yield make
    for r in made:
        r.remove()


def fill(path, chunk=1 * MIB, most=48):
    """Append chunks until the write fails; returns (bytes acknowledged, the error)."""
    data = b""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for k in range(most):
            buf = pattern(chunk, seed=k)
            try:
                n = os.write(fd, buf)
            except OSError as e:
                return data, e
            data += buf[:n]
        return data, None
    finally:
        os.close(fd)


def heap_free(m):
    sv = os.statvfs(m.heap("data"))
    return sv.f_bfree * sv.f_frsize


def test_sync_no_room_on_the_mirror_is_enospc_on_the_owner(mount_factory, secret, room):
    p = Pair(mount_factory, secret, mode="sync", size="64M", extra_a="min_block = 1M")
    cg = room()
    cg.put(p.b.pid)
    cg.limit(8 * MIB + 512 * 1024)
    free0 = heap_free(p.a)
    f, fm = p.a.heap("data") / "f", p.b.heap("data") / "f"
    (p.a.heap("data") / "small").write_bytes(b"kept")

    data, err = fill(f)
    # the owner had 64 MiB: the mirror's host ran out first, and said so
    assert err is not None and err.errno == errno.ENOSPC, err
    assert 4 * MIB <= len(data) <= 10 * MIB, len(data)
    assert "refused (ENOSPC) and undone here" in p.a.stderr_text()
    assert "no room here for a change to data" in p.b.stderr_text()
    # everything acknowledged is on both sides, nothing more; the pair stays up
    assert os.stat(f).st_size == len(data) and read_daemon(f) == data
    cg.lift()  # before asking the mirror anything (see above)
    wait_until(lambda: os.stat(fm).st_size == len(data), 5, "mirror given back")
    assert read_daemon(fm) == data
    assert read_daemon(p.b.heap("data") / "small") == b"kept"
    assert partner(p.a)["state"] == "connected" and partner(p.b)["state"] == "connected"
    p.verify()
    p.verify(p.b)
    # the owner's space of the refused write is back (the file holds 1 MiB blocks)
    assert heap_free(p.a) >= free0 - len(data) - 1 * MIB
    assert "resyncing" not in p.a.stderr_text()

    # room again on the mirror host: writing works again, the same way on both sides
    more = pattern(4 * MIB, seed=99)
    with open(f, "ab") as fh:
        fh.write(more)
    assert read_daemon(f) == data + more
    wait_until(lambda: os.stat(fm).st_size == len(data) + len(more), 5, "mirror caught up")
    assert read_daemon(fm) == data + more
    assert partner(p.a)["state"] == "connected"
    p.verify()


def test_sync_overwrite_and_grow_refused_keeps_both_sides_equal(mount_factory, secret, room):
    """A write that overwrites the tail and grows the file: refused, the file's size is
    back and the bytes it overwrote are the same on both sides."""
    p = Pair(mount_factory, secret, mode="sync", size="64M", extra_a="min_block = 1M")
    f, fm = p.a.heap("data") / "f", p.b.heap("data") / "f"
    base = pattern(2 * MIB, seed=1)
    f.write_bytes(base)
    cg = room()
    cg.put(p.b.pid)
    cg.limit(256 * 1024)  # less than a block (1 MiB)
    fd = os.open(f, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:  # one FUSE write: half over the tail, half past
            os.pwrite(fd, pattern(1 * MIB, seed=2), len(base) - MIB // 2)
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.stat(f).st_size == len(base)
    cg.lift()  # before asking the mirror anything (see above)
    wait_until(lambda: os.stat(fm).st_size == len(base), 5, "mirror given back")
    assert read_daemon(fm) == read_daemon(f)
    assert partner(p.a)["state"] == "connected"
    p.verify()


def test_async_no_room_on_the_mirror_marks_it_behind(mount_factory, secret, room):
    p = Pair(mount_factory, secret, mode="async", size="64M", extra_a="min_block = 1M")
    cg = room()
    cg.put(p.b.pid)
    cg.limit(4 * MIB + 512 * 1024)
    f = p.a.heap("data") / "f"
    data, err = fill(f, most=12)  # the owner has room: every write succeeds
    assert err is None and len(data) == 12 * MIB
    fd = os.open(f, os.O_RDONLY)
    os.fsync(fd)  # not an error: the change stands here, the mirror is behind
    os.close(fd)
    assert read_daemon(f) == data
    wait_state(p.a, "behind")
    assert "the mirror is behind until the next resync" in p.a.stderr_text()
    assert "this copy is behind until the next resync" in p.b.stderr_text()
    cg.lift()  # before asking the mirror anything (see above)
    # the link stays up (behind is shown only while connected)
    assert partner(p.b)["state"] == "connected"
