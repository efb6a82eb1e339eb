"""Bad input gets a clear error and nothing is lost (issue: heapfs must run on a normal
host).  Sizes that can never fit, O_RDONLY|O_TRUNC against tmpfs, and data written
through mappings read back through the daemon."""
import errno
import faulthandler
import mmap
import os
import signal
import subprocess
import threading

import pytest

from conftest import KIB, MIB, expect_errno, pattern, read_daemon
from waiting import open_when_free

HEAP = 'heap "h" { size = 64M  min_block = 4K }\n'
# A contiguous file's largest size is its heap's: what can never fit is EFBIG.  (An extents
# file is sparse and may be larger than its heap, as on tmpfs: test_sparse.py.)
CONTIG = 'heap "h" { size = 64M  min_block = 4K  layout = contiguous }\n'


def committed(m):
    h = m.heap_stats("h")
    return h["used"], h["chunks_committed"]


@pytest.mark.parametrize("layout", ["contiguous"])
def test_sizes_that_can_never_fit_get_efbig_and_take_nothing(mount_factory, layout):
    m = mount_factory(f'heap "h" {{ size = 64M  min_block = 4K  layout = {layout}  pin = true }}\n')
    f = m.heap("h") / "f"
    f.write_bytes(b"start")
    before = committed(m)
    fd = os.open(f, os.O_RDWR)
    try:
        for off in (64 * MIB, 64 * MIB + 1, 1 << 40):
            expect_errno(errno.EFBIG, os.pwrite, fd, b"x", off)
            expect_errno(errno.EFBIG, os.ftruncate, fd, off + 1)
            expect_errno(errno.EFBIG, os.posix_fallocate, fd, 0, off + 1)
            expect_errno(errno.EFBIG, os.posix_fallocate, fd, off, 1)
        assert os.fstat(fd).st_size == 5
    finally:
        os.close(fd)
    # nothing was taken, not even for a moment: with pin = true a grab of the free blocks
    # would have committed (and locked) chunks
    assert committed(m) == before
    assert read_daemon(f) == b"start"


def test_write_straddling_the_heap_end_is_short_then_efbig(mount_factory):
    m = mount_factory(CONTIG)
    f = m.heap("h") / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"A" * 8192, 64 * MIB - 4096) == 4096  # the bytes that fit
        assert os.fstat(fd).st_size == 64 * MIB
        expect_errno(errno.EFBIG, os.pwrite, fd, b"B", 64 * MIB)  # at the heap size: never fits
    finally:
        os.close(fd)
    assert read_daemon(f, 64 * MIB)[-4096:] == b"A" * 4096


def test_no_room_now_gets_enospc_before_taking_blocks(mount_factory):
    m = mount_factory('heap "h" { size = 64M  min_block = 4K  pin = true }\n')
    a = m.heap("h") / "a"
    a.write_bytes(pattern(40 * MIB, 1))
    before = committed(m)
    b = m.heap("h") / "b"
    fd = os.open(b, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # 30 MiB would fit in the heap, but only 24 MiB are free (a truncate or a write
        # at 30 MiB is a hole and takes nothing: test_sparse.py)
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 0, 30 * MIB)
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 10 * MIB, 25 * MIB)
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 0, 1 << 40)  # past the heap
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)
    assert committed(m) == before
    assert read_daemon(a) == pattern(40 * MIB, 1)


def test_impossible_writes_never_starve_a_concurrent_writer(mount_factory):
    """A loop of impossible writes (EFBIG and ENOSPC) beside a dd that needs most of the
    free space: the dd must complete every time (no false ENOSPC from blocks the
    impossible writer took and gave back)."""
    m = mount_factory(HEAP)
    h = m.heap("h")
    (h / "a").write_bytes(pattern(40 * MIB, 2))  # 24 MiB free
    stop = threading.Event()
    seen = {errno.EFBIG: 0, errno.ENOSPC: 0}

    def impossible():
        fd = os.open(h / "b", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not stop.is_set():
                # (past the largest file: the kernel's EFBIG; the heap's: ENOSPC)
                for fn, args in ((os.posix_fallocate, (fd, (1 << 63) - 4096, 8192)),
                                 (os.posix_fallocate, (fd, 0, 1 << 30)),
                                 (os.posix_fallocate, (fd, 4 * MIB, 25 * MIB)),
                                 (os.posix_fallocate, (fd, 0, 28 * MIB))):
                    try:
                        fn(*args)
                        raise AssertionError(f"{fn.__name__}{args[1:]} succeeded")
                    except OSError as e:
                        assert e.errno in seen, e
                        seen[e.errno] += 1
        finally:
            os.close(fd)

    workers = [threading.Thread(target=impossible) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for run in range(3):
            r = subprocess.run(["dd", "if=/dev/zero", f"of={h / 'c'}", "bs=4k",
                                f"count={20 * MIB // (4 * KIB)}", "conv=fsync"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"dd run {run}: {r.stderr}"
            assert os.path.getsize(h / "c") == 20 * MIB
            os.unlink(h / "c")
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert seen[errno.EFBIG] > 0 and seen[errno.ENOSPC] > 0, seen
    assert read_daemon(h / "a") == pattern(40 * MIB, 2)


# ---- open(O_RDONLY | O_TRUNC): both sides agree, as on tmpfs

def rdonly_trunc_then_append(d, read):
    f = d / "f"
    f.write_bytes(b"hello world\n")
    os.chmod(f, 0o644)
    os.close(os.open(f, os.O_RDONLY | os.O_TRUNC))
    subprocess.run(["sh", "-c", f"echo x >> '{f}'"], check=True)
    return os.stat(f).st_size, read(f)


def as_nobody_open(d, name, flags):
    """open(d/name, flags) as uid/gid 65534 in a child; the errno, or 0."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        code = (f"import os\ntry:\n os.close(os.open({name!r}, {flags}, dir_fd={dfd}))\n"
                f" print(0)\nexcept OSError as e:\n print(e.errno)\n")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", code], pass_fds=(dfd,),
                           capture_output=True, text=True, check=True)
        return int(r.stdout)
    finally:
        os.close(dfd)


def test_rdonly_otrunc_truncates_as_on_tmpfs(mount_factory, tmpfs):
    m = mount_factory(extra=("-o", "allow_other"))
    want = rdonly_trunc_then_append(tmpfs, lambda f: f.read_bytes())
    assert want == (2, b"x\n")  # what tmpfs does
    assert rdonly_trunc_then_append(m.heap(), read_daemon) == want
    assert rdonly_trunc_then_append(m.heap(), lambda f: f.read_bytes()) == want
    # truncation needs write permission: a user who may only read gets EACCES on both,
    # and the file keeps its bytes
    for d, read in ((tmpfs, lambda f: f.read_bytes()), (m.heap(), read_daemon)):
        (d / "g").write_bytes(b"keep me\n")
        os.chmod(d / "g", 0o644)
        assert as_nobody_open(d, "g", os.O_RDONLY) == 0
        assert as_nobody_open(d, "g", os.O_RDONLY | os.O_TRUNC) == errno.EACCES
        assert read(d / "g") == b"keep me\n"


def test_rdonly_otrunc_on_a_single_writer_file_open_for_writing(mount_factory):
    m = mount_factory('heap "s" { size = 16M  writers = single }\n')
    f = m.heap("s") / "f"
    f.write_bytes(b"data")
    wfd = os.open(f, os.O_WRONLY)
    try:
        expect_errno(errno.EBUSY, os.open, f, os.O_RDONLY | os.O_TRUNC)
        assert read_daemon(f) == b"data"
    finally:
        os.close(wfd)

    # no writer now (once its release has reached the daemon): it truncates
    os.close(open_when_free(f, os.O_RDONLY | os.O_TRUNC, "O_TRUNC open after the writer's close"))
    assert read_daemon(f) == b""
    wfd = os.open(f, os.O_WRONLY)  # and it left no writer slot behind
    os.close(wfd)


# ---- a mapped file truncated under its mapping

def test_truncate_a_mapped_file(mount):
    f = mount.heap() / "t"
    data = pattern(MIB, 12)
    f.write_bytes(data)
    fd = os.open(f, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, MIB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[0:4] = b"MAPD"
        mm.flush()
        os.truncate(f, 5000)  # through the path, not the mapped fd
        assert read_daemon(f) == b"MAPD" + data[4:5000]
        assert mm[:5000] == b"MAPD" + data[4:5000]
        assert mm[5000:8192] == b"\0" * 3192  # the rest of the last page reads as zeros
        assert os.stat(f).st_blocks * 512 == 8 * KIB  # two 4K blocks held, the rest freed
        # past the last page of the file, the mapping faults (in a child: it dies of it)
        child = os.fork()
        if child == 0:
            faulthandler.disable()  # pytest's would print the fault we expect
            os.close(1), os.close(2)
            mm[MIB // 2]
            os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS, status
        # grown again: the exposed bytes are zeros, in the mapping and in the daemon
        os.truncate(f, MIB)
        assert mm[MIB - 10:] == b"\0" * 10
        assert read_daemon(f) == b"MAPD" + data[4:5000] + b"\0" * (MIB - 5000)
        mm.close()
    finally:
        os.close(fd)


# ---- what statfs promises is writable, from two CPUs

def fill_from(path, cpu, chunk):
    """A child pinned to `cpu` writes `path` in `chunk` pieces until ENOSPC (or EFBIG, when
    it alone filled the heap: its next write starts at the heap size); bytes written."""
    code = (f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
            f"fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT, 0o644)\nn = 0\n"
            f"buf = b'x' * {chunk}\n"
            f"while True:\n"
            f" try:\n  w = os.write(fd, buf)\n except OSError as e:\n"
            f"  assert e.errno in (27, 28), e\n  break\n"
            f" n += w\n"
            f" if w < len(buf):\n  continue\n"
            f"print(n)\n")
    return subprocess.Popen(["/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, text=True)


def test_statfs_free_space_is_all_writable_from_two_cpus(mount_factory):
    """Two writers on two CPUs fill the heap to the last block, everything is removed, and
    again: each time the bytes written add up to what statfs said was free (blocks parked
    in either CPU's cache are reclaimed before ENOSPC)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    m = mount_factory('heap "h" { size = 32M  min_block = 4K  chunk = 1M }\n')
    h = m.heap("h")
    for round_ in range(3):
        st = os.statvfs(h)
        promised = st.f_bavail * st.f_frsize
        ps = [fill_from(h / f"f{cpu}", cpu, (4 + 60 * cpu) * KIB) for cpu in (0, 1)]
        written = sum(int(p.communicate(timeout=120)[0]) for p in ps)
        assert all(p.returncode == 0 for p in ps)
        assert written == promised, (round_, written, promised)
        assert os.statvfs(h).f_bavail == 0
        for cpu in (0, 1):
            os.unlink(h / f"f{cpu}")
        m.wait_heap("h", lambda j: j["used"] == 0, "everything freed")
