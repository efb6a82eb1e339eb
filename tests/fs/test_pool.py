"""pool/: files in memory pooled from donor processes (SPEC "Pooled donor memory",
`pool { }`, `.heapfs/donors`, `heapfs-donor`).

Every test mounts with its own small pool and its own socket under /run/heapfs (the path
derives from the test process's pid and a counter, so parallel runs do not meet).  Data
is always read back through the daemon (O_DIRECT) and compared bit for bit."""
import errno
import itertools
import json
import mmap
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (HEAPFS, MIB, expect_errno, mount_fstype, pattern, read_daemon, unmount,
                      wait_until)

DONOR = Path(os.environ.get("HEAPFS_DONOR", HEAPFS.parent / "donor" / "heapfs-donor")).resolve()
GIB = 1024 * MIB
_sock_no = itertools.count()


def sock_path():
    os.makedirs("/run/heapfs", mode=0o755, exist_ok=True)
    return f"/run/heapfs/t{os.getpid()}-{next(_sock_no)}.sock"


def pool_conf(size="256M", donor="32M", max_donors=6, own="32M", sock=None):
    return (f'heap "scratch" {{ size = 16M }}\n'
            f'objects {{ size = 1M }}\n'
            f'pool {{ size = {size}  donor_size = {donor}  max_donors = {max_donors}\n'
            f'       max_process_memory = {own}  socket = "{sock or sock_path()}" }}\n')


def donors(m):
    return m.status_json("donors")


def live_donors(m, state=None):
    return [d for d in donors(m)["donors"] if state is None or d["state"] == state]


def gone(pid):
    """The process exited (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def block(k, n=MIB):
    """Block k of a file: a 1 MiB pattern with its index stamped in (distinct blocks)."""
    return struct.pack("<Q", k) + BASE[8:n]


BASE = pattern(MIB, seed=8)


def write_blocks(path, nblocks, first=0):
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(first * MIB)
        for k in range(first, first + nblocks):
            f.write(block(k))


def check_blocks(path, nblocks):
    """Read the file back through the daemon (O_DIRECT) in 1 MiB blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MIB)
    try:
        assert os.fstat(fd).st_size == nblocks * MIB
        for k in range(nblocks):
            assert os.preadv(fd, [buf], k * MIB) == MIB
            assert buf[:] == block(k), f"block {k} differs"
    finally:
        buf.close()
        os.close(fd)


def start_donor(*args, user=()):
    return subprocess.Popen([*user, str(DONOR), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_donors(m, n, what, state="active", deadline=10.0):
    wait_until(lambda: len(live_donors(m, state)) == n, deadline, what)
    return live_donors(m, state)


# ---- the address-space proof and data ---------------------------------------------------

def test_pool_file_larger_than_the_daemons_address_space(mount_factory):
    """prlimit --as=512M: the daemon serves a 1 GiB pool file written and read back
    bit-exact; it maps none of the donors' memory."""
    if HEAPFS.name.endswith(("-asan", "-tsan")):
        pytest.skip("sanitizer shadow memory cannot live under an address-space limit")
    m = mount_factory(pool_conf(size="1G", donor="128M", max_donors=7, own="128M"),
                      prefix=["prlimit", f"--as={512 * MIB}"])
    f = m.path / "pool" / "big"
    write_blocks(f, 1024)
    check_blocks(f, 1024)
    d = donors(m)
    assert d["process_memory"] == 128 * MIB and d["process_used"] == 128 * MIB
    assert [x["used"] for x in d["donors"]] == [128 * MIB] * 7
    assert all(x["state"] == "active" and not x["external"] for x in d["donors"])
    with open(f"/proc/{m.pid}/status") as st:
        peak = next(int(l.split()[1]) for l in st if l.startswith("VmPeak:")) * 1024
    assert peak < 512 * MIB
    # donor memory is mapped only through bounded windows (max_process_memory of them)
    mapped = 0
    for line in Path(f"/proc/{m.pid}/maps").read_text().splitlines():
        if "heapfs-donor" in line or "heapfs-pool" in line:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            mapped += hi - lo
    assert mapped <= 128 * MIB
    # full: max_donors reached, the next byte is ENOSPC and nothing written is lost
    fd = os.open(m.path / "pool" / "more", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        expect_errno(errno.ENOSPC, os.write, fd, b"x" * 4096)
    finally:
        os.close(fd)
    check_blocks(f, 1024)


def test_mmap_of_a_pool_file(mount_factory):
    m = mount_factory(pool_conf())
    f = m.path / "pool" / "mapped"
    n = 80 * MIB  # past the daemon's own 32M: in donors
    with open(f, "wb") as g:
        g.truncate(n)
    with open(f, "r+b") as g:
        mm = mmap.mmap(g.fileno(), n)
        for k in range(0, n, MIB):
            mm[k:k + MIB] = block(k // MIB)
        mm.flush()
        assert mm[5 * MIB:5 * MIB + 8] == struct.pack("<Q", 5)
        mm.close()
    check_blocks(f, n // MIB)
    assert len(live_donors(m)) == 2


# ---- donors come and go ------------------------------------------------------------------

def test_donors_appear_and_leave_as_files_grow_and_shrink(mount_factory):
    m = mount_factory(pool_conf())
    a = m.path / "pool" / "a"
    write_blocks(a, 100)  # 32M own + 3 donors of 32M (the last one part used)
    ds = wait_donors(m, 3, "three donors for 100M")
    assert sum(x["used"] for x in ds) == 68 * MIB
    assert all(x["size"] == 32 * MIB for x in ds)
    pids = [x["pid"] for x in ds]
    assert all(not gone(p) for p in pids)
    r = m.ctl("donors", m.path)
    assert r.returncode == 0 and all(str(p) in r.stdout for p in pids), r.stdout
    assert json.loads(m.ctl("donors", m.path, "--json").stdout)["donors"][0]["pid"] == pids[0]
    # shrink into the daemon's own memory: every donor is told to release, and exits
    os.truncate(a, 20 * MIB)
    wait_until(lambda: not live_donors(m), 5, "donors released after the truncate")
    wait_until(lambda: all(gone(p) for p in pids), 2, "released donors exited")
    check_blocks(a, 20)
    # and they come back when the file grows again
    write_blocks(a, 60, first=20)
    assert len(wait_donors(m, 2, "donors again")) == 2
    check_blocks(a, 80)
    os.unlink(a)
    wait_until(lambda: not live_donors(m), 5, "donors released after the unlink")


def test_more_than_max_donors_is_enospc(mount_factory):
    m = mount_factory(pool_conf(max_donors=2))  # 32M own + 2 x 32M
    f = m.path / "pool" / "f"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    written = 0
    try:
        with pytest.raises(OSError) as ei:
            for k in range(128):
                written += os.write(fd, block(k))
        assert ei.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert written == 96 * MIB
    assert len(live_donors(m)) == 2
    check_blocks(f, 96)
    fd = os.open(f, os.O_WRONLY)
    try:  # (a truncate up is a hole: it takes nothing)
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 0, 97 * MIB)
    finally:
        os.close(fd)
    check_blocks(f, 96)


# ---- deaths ------------------------------------------------------------------------------

def test_no_orphan_donors_after_kill_9_of_the_daemon(mount_factory):
    sock = sock_path()
    m = mount_factory(pool_conf(sock=sock))
    write_blocks(m.path / "pool" / "f", 90)
    ext = start_donor("--socket", sock, "--size", "32M")
    spawned = [x["pid"] for x in wait_donors(m, 3, "two spawned donors and one external")]
    m.proc.send_signal(signal.SIGKILL)
    m.expect_exit = -signal.SIGKILL
    t0 = time.monotonic()
    assert ext.wait(1.0) == 0
    wait_until(lambda: all(gone(p) for p in spawned), 1.0 - (time.monotonic() - t0),
               "spawned donors gone within a second")
    unmount(m.path)
    os.unlink(sock)  # what a killed daemon leaves: stale (the next mount would replace it)


def test_a_killed_donors_data_stays_readable(mount_factory):
    m = mount_factory(pool_conf())
    f = m.path / "pool" / "f"
    write_blocks(f, 90)
    victim = wait_donors(m, 2, "two donors")[0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: any(x["pid"] == victim["pid"] and x["state"] == "gone"
                           for x in live_donors(m)), 3, "the killed donor shows as gone")
    check_blocks(f, 90)
    write_blocks(f, 10, first=40)  # writes into the dead donor's memory still work
    check_blocks(f, 90)
    os.unlink(f)
    wait_until(lambda: not live_donors(m), 5, "memory of the dead donor let go")


# ---- external donors and bad peers --------------------------------------------------------

def test_an_external_donor_joins_through_the_mount(mount_factory):
    m = mount_factory(pool_conf(max_donors=2))
    ext = start_donor("--mount", m.path, "--size", "32M")
    (d,) = wait_donors(m, 1, "the external donor joined")
    assert d["pid"] == ext.pid and d["external"] and d["size"] == 32 * MIB
    f = m.path / "pool" / "f"
    write_blocks(f, 60)  # own 32M + the external donor's 32M: no donor started
    assert [x["pid"] for x in live_donors(m)] == [ext.pid]
    assert live_donors(m)[0]["used"] == 28 * MIB
    check_blocks(f, 60)
    os.unlink(f)  # used and free again: told to release
    assert ext.wait(5) == 0
    wait_until(lambda: not live_donors(m), 3, "the external donor left")


def test_a_donor_of_another_uid_is_refused(mount_factory):
    sock = sock_path()
    m = mount_factory(pool_conf(sock=sock))
    p = start_donor("--socket", sock, "--size", "32M",
                    user=["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"])
    _, err = p.communicate(timeout=10)
    assert p.returncode == 1 and "refused" in err and "uid 65534" in err, err
    assert not live_donors(m)
    assert "refused donor" in m.stderr_text() and "uid 65534" in m.stderr_text()


def offer(sock, hdr, fds=()):
    """Connect as a donor would, send hdr (+ descriptors); the daemon's answer, b'' on EOF."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(sock)
    try:
        if hdr is None:
            return b""
        socket.send_fds(s, [hdr], list(fds))
        return s.recv(256)
    finally:
        s.close()


def hdr(size, magic=b"HFSDONR1", version=1):
    return magic + struct.pack("<IIQ", version, 0, size)


def test_bad_donors_are_refused_and_nothing_is_lost(mount_factory, tmp_path):
    sock = sock_path()
    m = mount_factory(pool_conf(sock=sock))
    f = m.path / "pool" / "f"
    write_blocks(f, 40)
    before = [x["pid"] for x in live_donors(m)]

    def memfd(n, seal=True):
        fd = os.memfd_create("t", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seal else 0))
        os.ftruncate(fd, n)
        return fd

    regular = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(regular, 32 * MIB)
    small, unsealable, ok = memfd(4 * MIB), memfd(32 * MIB, seal=False), memfd(32 * MIB)
    try:
        assert offer(sock, None) == b""                          # connects, closes early
        assert offer(sock, b"garbage!" * 5).startswith(b"E")     # not a header
        assert offer(sock, hdr(32 * MIB, magic=b"XXXXXXXX"), [ok]).startswith(b"E")
        assert offer(sock, hdr(32 * MIB)).startswith(b"E")       # no descriptor
        assert offer(sock, hdr(32 * MIB), [regular]).startswith(b"E")  # not a memfd
        assert offer(sock, hdr(32 * MIB), [small]).startswith(b"E")    # smaller than said
        assert offer(sock, hdr(32 * MIB), [unsealable]).startswith(b"E")
        assert offer(sock, hdr(3 * MIB), [ok]).startswith(b"E")  # not a multiple of 2M
        assert offer(sock, hdr(64 * MIB), [ok]).startswith(b"E")  # more than donor_size
    finally:
        for fd in (regular, small, unsealable, ok):
            os.close(fd)
    err = m.stderr_text()
    for why in ("closed before sending its header", "not a heapfs-donor header",
                "expected one descriptor", "not a memfd", "fewer than the", "cannot seal",
                "not a multiple of"):
        assert why in err, (why, err)
    assert [x["pid"] for x in live_donors(m)] == before
    check_blocks(f, 40)
    write_blocks(f, 40, first=40)  # the pool still grows with real donors
    check_blocks(f, 80)


def connect(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sock)       # blocking: waits while the backlog is full
    s.settimeout(5)
    return s


def test_a_donor_that_shrinks_its_memfd_is_refused_or_cannot(mount_factory):
    """A donor shrinks its memfd right after sending it: the daemon seals it before it
    looks at its size, so either the shrink came first (refused: fewer bytes than
    announced) or it fails (EPERM) — never a mapping past the end.  Accepted donors'
    memory then holds pool data, which stays intact while they try to shrink it again."""
    sock = sock_path()
    m = mount_factory(pool_conf(max_donors=2, own="2M", sock=sock))
    kept, refused = [], 0

    def offer_and_shrink(shrink_first):
        fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 32 * MIB)
        s = connect(sock)
        socket.send_fds(s, [hdr(32 * MIB)], [fd])
        shrunk = None
        if shrink_first:
            try:
                os.ftruncate(fd, 0)
                shrunk = True
            except PermissionError:
                shrunk = False           # sealed before we got to it
        answer = s.recv(256)
        if answer == b"A":
            assert not shrunk            # accepted: the memfd holds all it announced
            kept.append((s, fd))
            return 0
        assert answer.startswith(b"E") and shrunk, (answer, shrunk)
        s.close()
        os.close(fd)
        return 1

    for _ in range(10):
        if len(kept) == 2:
            break                        # the pool is full
        refused += offer_and_shrink(True)
    while len(kept) < 2:                 # the pool has room for two: shrink after the answer
        assert offer_and_shrink(False) == 0
    assert "fewer than the" in m.stderr_text() or not refused
    f = m.path / "pool" / "f"
    write_blocks(f, 60)                  # 2 MiB of the daemon's own, the rest the donors'
    assert sum(d["used"] for d in live_donors(m)) >= 58 * MIB
    for s, fd in kept:
        expect_errno(errno.EPERM, os.ftruncate, fd, 0)
        assert os.fstat(fd).st_size == 32 * MIB
    check_blocks(f, 60)
    for s, fd in kept:                   # the donors go; their memory stays with the daemon
        s.close()
        os.close(fd)
    wait_until(lambda: len(live_donors(m, "gone")) == 2, 5, "the donors are gone")
    check_blocks(f, 60)


def test_slow_peers_do_not_keep_a_donor_out(mount_factory):
    """100 peers connect to the pool socket (mode 0666) and never send an offer: a real
    donor still joins at once, each slow peer is let go with a reason within about a
    second, and the daemon still serves."""
    sock = sock_path()
    m = mount_factory(pool_conf(max_donors=2, sock=sock))
    slow = [connect(sock) for _ in range(100)]
    t0 = time.monotonic()
    ext = start_donor("--socket", sock, "--size", "32M")
    try:
        (d,) = wait_donors(m, 1, "the donor joined past 100 slow peers", deadline=5)
        assert d["pid"] == ext.pid and time.monotonic() - t0 < 5
        for s in slow:
            answer = s.recv(256)
            assert answer == b"" or answer.startswith(b"E"), answer
            s.close()
        assert time.monotonic() - t0 < 10
        assert "timed out" in m.stderr_text()
        f = m.path / "pool" / "f"
        write_blocks(f, 60)              # own 32M + the donor's
        check_blocks(f, 60)
        assert live_donors(m)[0]["used"] == 28 * MIB
    finally:
        ext.terminate()
        ext.wait(5)


@pytest.mark.parametrize("size", ["abc", "0", "12Q", "-5M", "1000"])
def test_heapfs_donor_bad_sizes_exit_2(size):
    r = subprocess.run([str(DONOR), "--socket", "/nonexistent", "--size", size],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "bad size" in r.stderr, r.stderr


def test_heapfs_donor_usage_exit_2():
    for args in ([], ["--size", "32M"], ["--mount", "/x", "--socket", "/y", "--size", "32M"]):
        r = subprocess.run([str(DONOR), *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "usage" in r.stderr, (args, r.stderr)


# ---- the socket path ------------------------------------------------------------------------

def test_socket_path_that_is_a_regular_file_is_exit_2(tmp_path):
    sock = sock_path()
    Path(sock).write_text("not a socket")
    cfg = tmp_path / "p.conf"
    cfg.write_text(pool_conf(sock=sock))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run([str(HEAPFS), "-f", "-c", str(cfg), str(mnt)], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 2 and "is not a socket" in r.stderr, r.stderr
        assert mount_fstype(mnt) is None
        assert Path(sock).read_text() == "not a socket"
    finally:
        os.unlink(sock)


def test_stale_socket_is_replaced_and_a_live_one_is_left_alone(mount_factory):
    sock = sock_path()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(sock)
    stale.close()  # the file stays; nobody listens: a daemon that died
    a = mount_factory(pool_conf(sock=sock))
    assert donors(a)["socket"] == sock
    b = mount_factory(pool_conf(sock=sock))  # in use by a: b takes its own
    other = donors(b)["socket"]
    assert other == f"{sock}.{b.pid}" and os.path.exists(other)
    assert "in use by another mount" in b.stderr_text()
    # each mount's pool works with donors of its own
    write_blocks(a.path / "pool" / "f", 50)
    write_blocks(b.path / "pool" / "f", 50)
    assert len(live_donors(a)) == 1 and len(live_donors(b)) == 1
    check_blocks(a.path / "pool" / "f", 50)
    check_blocks(b.path / "pool" / "f", 50)
    b.stop()
    assert not os.path.exists(other)  # removed at a clean unmount
    assert os.path.exists(sock)


# ---- cgroup v1: memory lent across cgroups ----------------------------------------------------

CG = Path("/sys/fs/cgroup/memory")


def test_external_donor_in_another_cgroup_serves_past_the_daemons_limit(mount_factory):
    """The daemon's memory cgroup is limited to 256 MiB; a donor in another cgroup lends
    memory; a 512 MiB pool file is written and read back, charged to the donor."""
    if not (CG / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    if HEAPFS.name.endswith("-tsan"):
        pytest.skip("TSan's shadow memory alone outgrows a 256 MiB memory cgroup")
    tag = f"heapfs-t{os.getpid()}-{next(_sock_no)}"
    dcg, ocg = CG / f"{tag}-daemon", CG / f"{tag}-donor"
    dcg.mkdir()
    ocg.mkdir()
    m, donors_up, sock = None, [], sock_path()
    try:
        (dcg / "memory.limit_in_bytes").write_text(str(256 * MIB))
        # the daemon starts inside its cgroup (a shell moves itself, then execs heapfs)
        m = mount_factory(pool_conf(size="1G", donor="256M", max_donors=3, own="128M",
                                    sock=sock),
                          prefix=["sh", "-c", f'echo $$ > {dcg}/cgroup.procs && exec "$@"', "sh"])
        for _ in range(2):  # 2 x 256M in the donor's cgroup, plus 128M of the daemon's own
            donor = subprocess.Popen(["sh", "-c", f'echo $$ > {ocg}/cgroup.procs && exec "$@"',
                                      "sh", str(DONOR), "--socket", sock, "--size", "256M"],
                                     stderr=subprocess.PIPE, text=True)
            donors_up.append(donor)
        wait_donors(m, 2, "two external donors")
        f = m.path / "pool" / "f"
        write_blocks(f, 512)
        check_blocks(f, 512)
        assert all(x["external"] for x in live_donors(m))
        daemon_peak = int((dcg / "memory.max_usage_in_bytes").read_text())
        donor_now = int((ocg / "memory.usage_in_bytes").read_text())
        assert daemon_peak <= 256 * MIB
        assert donor_now >= 512 * MIB
        m.stop()
        for p in donors_up:
            assert p.wait(5) == 0
    finally:
        if m:
            m.stop()
        Path(sock).unlink(missing_ok=True)  # left by a daemon that did not stop cleanly
        for p in donors_up:
            if p.poll() is None:
                p.kill()
                p.wait()
        for cg in (dcg, ocg):
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def test_a_socket_path_that_cannot_be_made_falls_back_to_a_private_one(mount_factory):
    """What an ordinary user meets with the default /run/heapfs/pool.sock: the mount
    works, on a socket of its own that .heapfs/donors names (test_privilege mounts as
    such a user)."""
    m = mount_factory(pool_conf(sock="/proc/no-such-dir/pool.sock"))
    sock = donors(m)["socket"]
    assert sock.endswith(f".{m.pid}.sock") and "heapfs-pool." in sock, sock
    assert os.path.exists(sock)
    assert "cannot create /proc/no-such-dir/pool.sock" in m.stderr_text()
    ext = start_donor("--mount", m.path, "--size", "32M")
    wait_donors(m, 1, "a donor joined through the fallback socket")
    m.stop()
    assert ext.wait(5) == 0
    assert not os.path.exists(sock)


def test_no_pool_section_no_socket_and_no_noise(mount_factory):
    """A config without a pool section makes no pool socket (so two such mounts on a host
    say nothing about each other's), and pool/ holds the daemon's own share only: past
    max_process_memory (256M by default) a growth gets ENOSPC, with nothing lost."""
    m = mount_factory('heap "h" { size = 16M }\n')
    m2 = mount_factory('heap "h" { size = 16M }\n')
    donors = m.status_json("donors")
    assert donors["socket"] == "" and donors["donors"] == []
    f = m.path / "pool" / "f"
    with open(f, "wb") as w:
        w.write(pattern(MIB, 1))
    with open(f, "r+b") as w:
        expect_errno(errno.ENOSPC, os.posix_fallocate, w.fileno(), 0, 300 * MIB)
    assert read_daemon(f) == pattern(MIB, 1)
    for mm in (m, m2):
        assert "pool:" not in mm.stderr_text(), mm.stderr_text()


def test_a_live_socket_with_a_full_backlog_does_not_hold_the_start(mount_factory):
    """Another live daemon's pool socket that accepts nothing (its backlog full: its pool
    thread busy or stuck): this mount still starts, on PATH.PID, instead of waiting in
    connect() for good."""
    path = sock_path()
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stuck.bind(path)
    stuck.listen(0)
    queued = []
    try:
        while True:  # fill its backlog
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                c.close()
                break
            queued.append(c)
        m = mount_factory(pool_conf(sock=path))
        assert m.status_json("donors")["socket"] == f"{path}.{m.pid}"
        assert "is in use by another mount" in m.stderr_text()
    finally:
        for c in queued:
            c.close()
        stuck.close()
        os.unlink(path)
