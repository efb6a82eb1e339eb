"""libheapfs (issue 10): map ranges of heapfs files from real client processes.

The client side is the Python module heapfs (ctypes over libheapfs) from build/python.
Checked: map/write/release read back through the daemon (O_DIRECT) and a cache = direct
heap, the page cache and mtime after a written release, the refusals (another mount, a
directory, read-only asking for write, direct_map = false, past the end, garbage on the
socket), pins (truncate below: EBUSY, growth moving a contiguous file: EBUSY, unlink:
freed at the release), a killed client leaves nothing pinned, a stale registration is
noticed after its chunk went back to the OS and was reused, two processes share an object,
the shared descriptors are sealed, and garbage a client writes into its lease table is
never believed.
"""
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import HEAPFSCTL, expect_errno, guide_example, pattern, read_daemon, wait_until

PYDIR = os.environ.get("HEAPFS_PYTHON") or str(Path(os.environ["HEAPFS"]).parent.parent / "python")
sys.path.insert(0, PYDIR)
import heapfs  # noqa: E402

CONF = """
heap "dm"    { size = 64M  direct_map = true  chunk = 64K }
heap "ddir"  { size = 16M  direct_map = true  cache = direct }
heap "ctg"   { size = 16M  direct_map = true  layout = contiguous }
heap "plain" { size = 16M }
objects { size = 4M  direct_map = true  writers = many }
"""


def child(code, *args):
    """Run a client process: python code with heapfs importable; returns Popen."""
    env = dict(os.environ, PYTHONPATH=PYDIR)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_child(code, *args):
    p = child(code, *args)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return out


@pytest.fixture
def dm(mount_factory):
    return mount_factory(CONF)


def heap_used(m, name):
    return m.heap_stats(name)["used"]


def test_map_write_release_reads_back(dm):
    n = 3 * 1024 * 1024 + 12345   # several buddy blocks: one contiguous view over them
    for heap in ("dm", "ddir"):
        p = dm.heap(heap) / "f"
        old = pattern(n, 1)
        p.write_bytes(old)
        with open(p, "rb") as f:        # a cached copy in the page cache (cache = auto)
            assert f.read() == old
        mt = os.stat(p).st_mtime_ns
        time.sleep(0.01)
        new = pattern(n - 100, 2)
        run_child("""
import sys, heapfs
p, off, data = sys.argv[1], 50, open(sys.argv[2], 'rb').read()
with open(p, 'r+b') as f, heapfs.map(f, off, len(data), write=True) as m:
    m[:] = data
""", p, _tmpfile(new))
        want = old[:50] + new + old[50 + len(new):]
        assert read_daemon(p) == want
        assert p.read_bytes() == want       # the kernel's cached pages were dropped
        st = os.stat(p)
        assert st.st_mtime_ns > mt and st.st_ctime_ns >= st.st_mtime_ns
        with open(p, "rb") as f, heapfs.map(f, 0, n) as m:
            assert bytes(m) == want
            assert m.readonly


def _tmpfile(data):
    fd, path = tempfile.mkstemp(prefix="heapfs-client-")
    os.write(fd, data)
    os.close(fd)
    return path


def test_refusals(dm, tmp_path):
    conn = heapfs.Connection(str(dm.path))
    (dm.heap("plain") / "p").write_bytes(b"abc")
    with open(dm.heap("plain") / "p", "rb") as f:
        expect_errno(errno.EPERM, conn.map(f, 0, 3).__enter__)
    other = tmp_path / "other"
    other.write_bytes(b"abc")
    with open(other, "rb") as f:
        expect_errno(errno.EXDEV, conn.map(f, 0, 3).__enter__)
    fd = os.open(dm.heap("dm"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        expect_errno(errno.EISDIR, conn.map(fd, 0, 3).__enter__)
    finally:
        os.close(fd)
    p = dm.heap("dm") / "r"
    p.write_bytes(b"x" * 100)
    with open(p, "rb") as f:
        expect_errno(errno.EACCES, conn.map(f, 0, 10, write=True).__enter__)
        expect_errno(errno.ENXIO, conn.map(f, 90, 20).__enter__)
        expect_errno(errno.EINVAL, conn.map(f, 0, 0).__enter__)
    fd = os.open(p, os.O_WRONLY)                 # as mmap(MAP_SHARED): must be readable
    try:
        expect_errno(errno.EACCES, conn.map(fd, 0, 10, write=True).__enter__)
    finally:
        os.close(fd)
    assert read_daemon(p) == b"x" * 100
    # garbage on the socket: a clear EBADMSG reply, then the daemon hangs up
    path = dm.stats()["client_socket"]
    assert path.startswith("@heapfs-client.")   # abstract: nothing left in /tmp
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("\0" + path[1:])
    s.send(b"GET / HTTP/1.0\r\n\r\n")
    rep = s.recv(4096)
    magic, err = struct.unpack_from("<Qi", rep)
    assert err == -errno.EBADMSG
    assert s.recv(4096) == b""
    s.close()
    # the daemon still serves others
    with open(p, "rb") as f, conn.map(f, 0, 100) as m:
        assert bytes(m) == b"x" * 100
    conn.close()


def test_pins_truncate_unlink_contiguous(dm):
    p = dm.heap("dm") / "t"
    p.write_bytes(pattern(1 << 20, 3))
    conn = heapfs.Connection(str(dm.path))
    with open(p, "r+b") as f:
        mp = conn.map(f, 0, 1 << 20, write=True)
        m = mp.__enter__()
        clients = dm.stats()["clients"]
        assert [c["pid"] for c in clients] == [os.getpid()]
        assert clients[0]["heaps"] == ["dm"] and clients[0]["mapped_bytes"] == 1 << 20
        r = dm.ctl("--json", "clients", dm.path, check=True)
        j = json.loads(r.stdout)
        assert j["client_socket"] == dm.stats()["client_socket"]
        assert [(c["pid"], c["heaps"], c["maps"]) for c in j["clients"]] == \
            [(os.getpid(), ["dm"], 1)]
        r = dm.ctl("clients", dm.path, check=True)
        row = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] == [str(os.getpid())]]
        assert row and row[0][-1] == "dm" and row[0][3] == "1M", r.stdout
        expect_errno(errno.EBUSY, os.truncate, p, 4096)      # below a mapped range
        os.truncate(p, 2 << 20)                               # growth: extents do not move
        assert os.stat(p).st_size == 2 << 20
        p2 = p.with_name("t2")
        os.rename(p, p2)                                      # a rename moves no block
        m[0:4] = b"live"
        assert read_daemon(p2)[:4] == b"live"
        used = heap_used(dm, "dm")
        os.unlink(p2)                                         # freed at the release
        assert heap_used(dm, "dm") == used
        mp.release()
    wait_until(lambda: heap_used(dm, "dm") == 0, 5, "unlinked file freed at the release")
    assert dm.stats()["clients"][0]["mapped_bytes"] == 0
    # contiguous: a growth that would move the block waits for the release (EBUSY)
    c = dm.heap("ctg") / "c"
    c.write_bytes(b"c" * 4096)
    with open(c, "r+b") as f, conn.map(f, 0, 4096, write=True) as m:
        expect_errno(errno.EBUSY, os.pwrite, f.fileno(), b"more", 8192)
        assert bytes(m[:4]) == b"cccc"
    with open(c, "r+b") as f:
        assert os.pwrite(f.fileno(), b"more", 8192) == 4
    conn.close()


def test_killed_client_leaves_nothing_pinned(dm):
    p = dm.heap("dm") / "k"
    p.write_bytes(b"k" * 65536)
    proc = child("""
import sys, heapfs, time
f = open(sys.argv[1], 'r+b')
m = heapfs.map(f, 0, 65536, write=True).__enter__()
m[0:4] = b"dead"
print("mapped", flush=True)
time.sleep(60)
""", p)
    assert proc.stdout.readline().strip() == "mapped"
    assert any(c["pid"] == proc.pid for c in dm.stats()["clients"])
    expect_errno(errno.EBUSY, os.truncate, p, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not dm.stats()["clients"], 5, "the dead client's connection dropped")
    os.truncate(p, 0)
    os.unlink(p)
    wait_until(lambda: heap_used(dm, "dm") == 0, 5, "nothing pinned")


def test_stale_registration_renewed(dm):
    """A chunk that went back to the OS and came back for another file: the client's
    registration notices the new generation; its map shows the new file's bytes."""
    conn = heapfs.Connection(str(dm.path))
    a = dm.heap("dm") / "a"
    a.write_bytes(b"A" * 65536)
    with open(a, "rb") as f, conn.map(f, 0, 65536) as m:
        assert bytes(m[:4]) == b"AAAA"
    released = dm.heap_stats("dm")["chunks_released"]
    os.unlink(a)
    wait_until(lambda: dm.heap_stats("dm")["chunks_released"] > released, 5,
               "the chunk went back to the OS")
    assert conn.stats()["stale_chunks"] == 0
    b = dm.heap("dm") / "b"
    b.write_bytes(b"B" * 65536)
    with open(b, "rb") as f, conn.map(f, 0, 65536) as m:
        assert bytes(m) == b"B" * 65536
    st = conn.stats()
    assert st["stale_chunks"] >= 1 and st["registrations"] == 1 and st["registered"] == 1
    conn.close()


def test_two_processes_share_an_object(dm):
    """Each process maps the object; stores of one are loads of the other at once."""
    o = dm.path / "objects" / "shared"
    o.write_bytes(bytes(4096))
    conn = heapfs.Connection(str(dm.path))
    with open(o, "r+b") as f, conn.map(f, 0, 4096, write=True) as mine:
        mine[0:4] = b"mine"
        run_child("""
import sys, heapfs
with open(sys.argv[1], 'r+b') as f, heapfs.map(f, 0, 4096, write=True) as m:
    assert bytes(m[0:4]) == b"mine", bytes(m[0:4])
    m[100:110] = b"from child"
""", o)
        assert bytes(mine[100:110]) == b"from child"
    data = read_daemon(o)
    assert data[0:4] == b"mine" and data[100:110] == b"from child"
    conn.close()


def test_a_client_that_writes_the_segment_header_harms_nothing(dm, tmp_path):
    """With objects { direct_map = true } a client that maps an object for writing can
    store into the whole segment, its header included: the daemon trusts only its own
    copy of the header (and of nothing else it reads there goes past the segment), so
    after a client filled the header with 0xff the map still grows, objects are made,
    written and removed, and .heapfs/segment is a whole, sealed segment (heapfsctl image
    ls checks all of it) listing exactly ls objects/."""
    o = dm.path / "objects"
    (o / "victim").write_bytes(bytes(4096))
    off = int(os.getxattr(o / "victim", "user.heapfs.offset"))
    run_child("""
import ctypes, sys, heapfs
path, off = sys.argv[1], int(sys.argv[2])
with open(path, 'r+b') as f, heapfs.map(f, 0, 4096, write=True) as m:
    base = ctypes.addressof(ctypes.c_char.from_buffer(m)) - off  # the segment's byte 0
    ctypes.memset(base, 0xff, 128)                                # its whole header
    m[0:4] = b"evil"
""", o / "victim", off)
    slots0 = dm.stats()["objects"]["map_slots"]
    for k in range(40):  # more than the first map holds: it moves to a larger block
        (o / f"n{k}").write_bytes(bytes([k]) * (100 + k))
    for k in range(0, 40, 3):
        os.unlink(o / f"n{k}")
    st = dm.stats()["objects"]
    names = sorted(os.listdir(o))
    assert st["objects"] == len(names) and st["map_slots"] > slots0
    img = tmp_path / "seg.img"
    with open(dm.path / ".heapfs" / "segment", "rb") as src:
        img.write_bytes(src.read())
    r = subprocess.run([str(HEAPFSCTL), "--json", "image", "ls", str(img)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(x["name"] for x in json.loads(r.stdout)["objects"]) == names
    for k in range(1, 40, 3):
        assert read_daemon(o / f"n{k}") == bytes([k]) * (100 + k)
    assert read_daemon(o / "victim")[0:4] == b"evil"


def test_objects_find_without_a_round_trip(dm, mount_factory):
    conn = heapfs.Connection(str(dm.path))
    expect_errno(errno.ENOENT, conn.find, "nothing")
    o = dm.path / "objects" / "cfg"
    data = pattern(5000, 4)
    o.write_bytes(data)
    v = conn.find("cfg")
    assert len(v) == 5000 and bytes(v) == data
    v[0:4] = b"FIND"                          # stores reach the object (no release: not
    assert read_daemon(o)[:4] == b"FIND"      # pinned, no page cache under O_DIRECT)
    os.rename(o, dm.path / "objects" / "cfg2")
    expect_errno(errno.ENOENT, conn.find, "cfg")
    assert bytes(conn.find("cfg2")[:4]) == b"FIND"
    os.unlink(dm.path / "objects" / "cfg2")
    expect_errno(errno.ENOENT, conn.find, "cfg2")
    # many objects: the map grows (moves) under the reader; every name is still found
    for k in range(60):
        (dm.path / "objects" / f"n{k}").write_bytes(b"%d" % k)
    for k in range(60):
        assert bytes(conn.find(f"n{k}")) == b"%d" % k
    # find_or_construct in another process; this one finds what it wrote
    run_child("""
import sys, heapfs
c = heapfs.Connection(sys.argv[1])
v = c.find_or_construct("made", 256)
assert len(v) == 256 and bytes(v) == bytes(256)
v[0:7] = b"made it"
v2 = c.find_or_construct("made", 999)     # there already: the same object
assert len(v2) == 256 and bytes(v2[:7]) == b"made it"
""", dm.path)
    assert bytes(conn.find("made")[:7]) == b"made it"
    assert os.stat(dm.path / "objects" / "made").st_size == 256
    conn.close()
    # a segment without direct_map
    plain = mount_factory("")
    c2 = heapfs.Connection(str(plain.path))
    (plain.path / "objects" / "x").write_bytes(b"x")
    expect_errno(errno.EPERM, c2.find, "x")
    c2.close()


def test_guide_examples_run_as_written(dm, tmp_path):
    """docs/GUIDE.md's C and Python examples, with its /mnt/heapfs replaced by this mount."""
    build = Path(os.environ["HEAPFS"]).resolve().parent.parent  # build/fs/heapfs[-asan]
    src = tmp_path / "hello.c"
    src.write_text(guide_example("hello.c"))
    env = dict(os.environ, PKG_CONFIG_PATH=str(build / "meson-uninstalled"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "heapfs"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    exe = tmp_path / "hello"
    subprocess.run(["cc", str(src), *flags, f"-Wl,-rpath,{build / 'fs' / 'client'}", "-o",
                    str(exe)], check=True)
    target = dm.heap("dm") / "hello"
    subprocess.run([str(exe), str(target)], check=True, timeout=60)
    assert read_daemon(target) == b"hello" + bytes(4091)
    run_child(guide_example("hello.py").replace("/mnt/heapfs", str(dm.path)))
    assert read_daemon(target)[:5] == b"HELLO"
    assert read_daemon(dm.path / "objects" / "counter") == b"\x01" + bytes(7)


def test_direct_map_config(dm, tmp_path):
    """direct_map: default false, shown per heap; a value that is no boolean is refused
    with FILE:LINE before anything is mounted."""
    assert dm.heap_stats("dm")["direct_map"] is True
    assert dm.heap_stats("plain")["direct_map"] is False
    bad = tmp_path / "bad.conf"
    bad.write_text('heap "a" {\n  direct_map = maybe\n}\nobjects { direct_map = 3 }\n')
    r = subprocess.run([os.environ["HEAPFS"], "--check-config", str(bad)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert f"heapfs: {bad}:2: heap \"a\": direct_map = maybe is not a boolean" in r.stderr
    assert f"heapfs: {bad}:4: objects: direct_map = 3 is not a boolean" in r.stderr
    r = subprocess.run([os.environ["HEAPFS"], "--print-default-config"], capture_output=True,
                       text=True, timeout=30, check=True)
    assert r.stdout.count("direct_map = false") == 2


def test_leases_map_again_without_asking_and_yield_to_truncate(dm):
    """A released range stays leased: mapping it again asks nothing of the daemon; a
    truncate or a move revokes an idle lease at once (only a mapped range is EBUSY) and
    the next map asks again and sees the new blocks."""
    conn = heapfs.Connection(str(dm.path))
    p = dm.heap("dm") / "lease"
    p.write_bytes(pattern(65536, 5))
    with open(p, "r+b") as f:
        for k in range(3):
            with conn.map(f, 0, 65536) as m:
                assert bytes(m) == pattern(65536, 5)
        st = conn.stats()
        assert st["leases_made"] == 1 and st["lease_hits"] == 2
        j = dm.stats()["clients"][0]
        assert j["leases"] == 1 and j["maps"] == 0 and j["mapped_bytes"] == 0
        mt = os.stat(p).st_mtime_ns
        time.sleep(0.01)
        with conn.map(f, 0, 65536, write=True) as m:   # a write lease: asks once
            m[0:3] = b"new"
        assert os.stat(p).st_mtime_ns > mt               # a written release is a write
        with conn.map(f, 0, 65536, write=True) as m:   # again: from the lease
            m[3:6] = b"abc"
        assert read_daemon(p)[:6] == b"newabc"
        assert conn.stats()["leases_made"] == 2
        os.truncate(p, 4096)                             # idle leases give way
        expect_errno(errno.ENXIO, conn.map(f, 0, 65536).__enter__)
        with conn.map(f, 0, 4096) as m:
            assert bytes(m[:6]) == b"newabc"
    # contiguous: after the release a growth moves the block; the next map follows it
    c = dm.heap("ctg") / "move"
    c.write_bytes(b"m" * 4096)
    with open(c, "r+b") as f:
        with conn.map(f, 0, 4096) as m:
            old = m.tobytes()
        os.pwrite(f.fileno(), b"tail", 65536)           # moves to a larger block
        with conn.map(f, 0, 4096) as m:
            assert m.tobytes() == old
        with conn.map(f, 65536, 4) as m:
            assert bytes(m) == b"tail"
    conn.close()


def test_bounds_registrations_and_leases(mount_factory):
    """Nine heaps: the ninth registration makes room (idle leases given back, the least
    recently used registration dropped), and mapping from the dropped heap again asks for
    its descriptors anew.  300 ranges: at most 256 leases are kept."""
    conf = "".join(f'heap "h{k}" {{ size = 1M  direct_map = true }}\n' for k in range(9))
    m = mount_factory(conf)
    conn = heapfs.Connection(str(m.path))
    files = []
    for k in range(9):
        p = m.heap(f"h{k}") / "f"
        p.write_bytes(b"%d" % k * 4096)
        files.append(p)
    for k, p in enumerate(files):
        with open(p, "rb") as f, conn.map(f, 0, 4096) as v:
            assert bytes(v[:1]) == b"%d" % k
    st = conn.stats()
    assert st["registrations"] == 8 and st["registered"] == 9 and st["dropped"] == 1
    with open(files[0], "rb") as f, conn.map(f, 0, 4096) as v:   # its registration went
        assert bytes(v[:4]) == b"0000"
    assert conn.stats()["registered"] == 10
    big = m.heap("h0") / "big"
    big.write_bytes(pattern(300 * 64, 6))
    with open(big, "rb") as f:
        for k in range(300):
            with conn.map(f, k * 64, 64) as v:
                assert bytes(v) == pattern(300 * 64, 6)[k * 64:(k + 1) * 64]
    assert m.stats()["clients"][0]["leases"] <= 256
    conn.close()
    wait_until(lambda: not m.stats()["clients"], 5, "the connection dropped")


def test_truncate_races_a_mapping_client(dm):
    """A client maps and releases one range in a loop while this process truncates the file
    down and back up: each truncate either goes ahead (the lease was idle: revoked) or gets
    EBUSY (mapped at that moment); the client never sees a byte that is not the file's."""
    p = dm.heap("dm") / "race"
    p.write_bytes(b"r" * 65536)
    proc = child("""
import sys, heapfs, time
p = sys.argv[1]
n = bad = 0
end = time.time() + 1.5
with open(p, "rb") as f:
    while time.time() < end:
        try:
            with heapfs.map(f, 0, 4096) as m:
                if bytes(m[:8]) != b"r" * 8:
                    bad += 1
                n += 1
        except OSError as e:
            if e.errno != 6:      # ENXIO: between the truncate down and up
                raise
    made = heapfs.connection(f).stats()["leases_made"]
print(n, bad, made, flush=True)
""", p)
    ok = busy = 0
    end = time.time() + 1.5
    while time.time() < end:
        try:
            os.truncate(p, 4096)
            os.truncate(p, 65536)
            with open(p, "r+b") as f:
                f.write(b"r" * 8)   # the first bytes stay "r" (a truncate keeps them)
            ok += 1
        except OSError as e:
            assert e.errno == errno.EBUSY
            busy += 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    n, bad, made = map(int, out.split())
    assert bad == 0 and n > 0 and ok > 0
    assert made >= 1


# The client protocol (fs/client/proto_i.h), for a client that speaks it by hand.
REQ = struct.Struct("<QIIIIQQQ")
REP = struct.Struct("<QiIQQQQQQQIIQQII")
CL_MAGIC, CL_MAP, CL_SEGMENT = 0x6c63666870616568, 1, 3

HOSTILE_CLIENT = r"""
import ctypes, errno, fcntl, os, socket, struct, sys
REQ, REP = struct.Struct("<QIIIIQQQ"), struct.Struct("<QiIQQQQQQQIIQQII")
sockname, path, objdir = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_READ, PROT_WRITE, MAP_SHARED, FAILED = 1, 2, 1, ctypes.c_void_p(-1).value
F_SEAL_SEAL = 1

def ask(op, fd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("\0" + sockname[1:])
    socket.send_fds(s, [REQ.pack(0x6c63666870616568, 1, op, 0, 0, 0, 4096, 0)], [fd])
    msg, fds, _, _ = socket.recv_fds(s, 65536, 4)
    rep = REP.unpack_from(msg)
    assert rep[1] == 0, rep
    return s, rep, fds

def refused(what, fn, *errs):
    try:
        fn()
    except OSError as e:
        assert e.errno in errs, (what, e)
        return
    raise AssertionError(what + " was allowed")

def mmap_rw(fd, n):
    p = libc.mmap(None, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if p == FAILED:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    libc.munmap(p, n)

def mprotect_rw(fd, n):
    p = libc.mmap(None, n, PROT_READ, MAP_SHARED, fd, 0)
    assert p != FAILED, os.strerror(ctypes.get_errno())
    r = libc.mprotect(p, n, PROT_READ | PROT_WRITE)
    e = ctypes.get_errno()
    libc.munmap(p, n)
    if r:
        raise OSError(e, os.strerror(e))

def sealed_size(what, fd):
    n = os.fstat(fd).st_size
    refused(what + " ftruncate down", lambda: os.ftruncate(fd, 0), errno.EPERM)
    refused(what + " ftruncate up", lambda: os.ftruncate(fd, n + 4096), errno.EPERM)
    refused(what + " more seals", lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_SEAL),
            errno.EPERM)
    assert os.fstat(fd).st_size == n

def read_only(what, fd):
    n = os.fstat(fd).st_size
    refused(what + " writable mapping", lambda: mmap_rw(fd, n), errno.EPERM, errno.EACCES)
    refused(what + " mprotect to write", lambda: mprotect_rw(fd, n), errno.EACCES, errno.EPERM)
    refused(what + " pwrite", lambda: os.pwrite(fd, b"\xff" * 64, 0), errno.EPERM)
    sealed_size(what, fd)

f = os.open(path, os.O_RDONLY)               # read access is all this client has
s, rep, fds = ask(1, f)
assert rep[15] == 3 and len(fds) == 3, rep   # data, metadata, lease table
data, meta, leases = fds
read_only("metadata", meta)
sealed_size("data", data)                    # the heap is one trust domain: writable
sealed_size("lease table", leases)           # the client's counts: writable
d = os.open(objdir, os.O_RDONLY | os.O_DIRECTORY)
s2, rep2, fds2 = ask(3, d)
assert len(fds2) == 2, rep2
read_only("objects metadata", fds2[1])
sealed_size("objects data", fds2[0])
print("ok")
"""


def test_shared_descriptors_are_sealed(dm):
    """A client that may only read gets the heap's data, its metadata (the allocator's state,
    per-CPU cache counts included) and its lease table.  None of them can change size or
    take new seals; the metadata cannot be written at all (no writable mapping, no
    mprotect to write, no pwrite), so the daemon alone writes what its allocator trusts."""
    p = dm.heap("dm") / "f"
    p.write_bytes(pattern(1 << 20, 7))
    (dm.path / "objects" / "o").write_bytes(b"object")
    out = run_child(HOSTILE_CLIENT, dm.stats()["client_socket"], p, dm.path / "objects")
    assert out.strip() == "ok"
    # the heap and the daemon are fine: allocation, the data, a real client
    q = dm.heap("dm") / "g"
    q.write_bytes(pattern(3 << 20, 8))
    assert read_daemon(p) == pattern(1 << 20, 7)
    assert read_daemon(q) == pattern(3 << 20, 8)
    conn = heapfs.Connection(str(dm.path))
    with open(q, "rb") as f, conn.map(f, 4096, 8192) as m:
        assert bytes(m) == pattern(3 << 20, 8)[4096:4096 + 8192]
    conn.close()
    assert (dm.path / "objects" / "o").read_bytes() == b"object"
    q.unlink()
    wait_until(lambda: heap_used(dm, "dm") <= (1 << 20) + (64 << 10), 5, "g's blocks freed")


# A client that maps one range (by hand, as HOSTILE_CLIENT asks), then fills its whole lease
# table with garbage and writes the words the parent sends on stdin.
GARBAGE_LEASES = r"""
import mmap, os, random, socket, struct, sys
REQ, REP = struct.Struct("<QIIIIQQQ"), struct.Struct("<QiIQQQQQQQIIQQII")
sockname, path = sys.argv[1:3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("\0" + sockname[1:])
f = os.open(path, os.O_RDONLY)
socket.send_fds(s, [REQ.pack(0x6c63666870616568, 1, 1, 0, 0, 0, 65536, 0)], [f])
msg, fds, _, _ = socket.recv_fds(s, 65536, 4)
rep = REP.unpack_from(msg)
assert rep[1] == 0 and rep[15] == 3 and len(fds) == 3, rep
idx, tag = rep[3], rep[14]
words = mmap.mmap(fds[2], 4096 * 8)       # shared and writable: the client's counts
rnd = random.Random(16)
for k in range(4096):                      # every word garbage
    struct.pack_into("<Q", words, 8 * k, rnd.getrandbits(64))
struct.pack_into("<Q", words, 8 * idx, (tag ^ 0x55) << 32 | 0xdeadbeef)  # a wrong tag too
print(idx, tag, flush=True)
while line := sys.stdin.readline():
    struct.pack_into("<Q", words, 8 * int(line), int(sys.stdin.readline()))
    print("ok", flush=True)
"""


def test_garbage_in_the_lease_table_is_never_believed(dm):
    """The lease table is the one descriptor a client may write (its counts: a map and a
    release of a leased range are its atomic adds there), so it is sealed against size
    changes only.  A client that fills all 4096 words with garbage (its lease's word with
    a wrong tag and a count of 0xdeadbeef): the daemon counts only its own leases' words,
    the low 32 bits (the status says maps = 0xdeadbeef, the largest count 0xffffffff, a
    word without a lease nothing), believes no count beyond the revoke's exact compare
    (a truncate is EBUSY as for a mapped range until the word says exactly "this tag,
    count 0"; then the lease is revoked and dropped), and when the connection closes every
    lease goes, whatever the words say: the file truncates and frees its blocks."""
    p = dm.heap("dm") / "f"
    p.write_bytes(pattern(1 << 20, 9))
    proc = subprocess.Popen([sys.executable, "-c", GARBAGE_LEASES, dm.stats()["client_socket"],
                             p], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def me():
        return [c for c in dm.stats()["clients"] if c["pid"] == proc.pid]

    def word(k, w):
        proc.stdin.write(f"{k}\n{w}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"

    try:
        idx, tag = map(int, proc.stdout.readline().split())
        c = me()
        assert c and (c[0]["leases"], c[0]["maps"], c[0]["mapped_bytes"]) == \
            (1, 0xdeadbeef, 65536), c
        r = dm.ctl("clients", dm.path)
        assert r.returncode == 0 and str(proc.pid) in r.stdout, r.stderr
        expect_errno(errno.EBUSY, os.truncate, p, 0)         # "mapped": not revoked
        word(idx, 1 << 63 | tag << 32 | 0xffffffff)          # REVOKED set by the client
        assert me()[0]["maps"] == 0xffffffff
        expect_errno(errno.EBUSY, os.truncate, p, 0)
        word(idx, (tag + 1) << 32)                           # idle, but another tag
        expect_errno(errno.EBUSY, os.truncate, p, 0)
        assert read_daemon(p) == pattern(1 << 20, 9)
        word(idx, tag << 32)                                 # exactly idle: revoked
        os.truncate(p, 4096)
        wait_until(lambda: me()[0]["leases"] == 0, 5, "the revoked lease dropped")
        word(idx, 0xffffffff)                                # no lease there now
        assert (me()[0]["maps"], me()[0]["mapped_bytes"]) == (0, 0)
        assert read_daemon(p) == pattern(4096, 9)
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()
    wait_until(lambda: not me(), 5, "its connection closed")
    os.unlink(p)
    wait_until(lambda: heap_used(dm, "dm") == 0, 5, "nothing pinned")


def test_a_daemon_that_hangs_up_closes_none_of_our_descriptors(tmp_path):
    """A peer that hangs up on a request without reading it (a reset: recvmsg fails):
    libheapfs reports it and closes nothing (the control buffer still holds what it sent;
    parsed as if received, it names the caller's own descriptor)."""
    name = f"heapfs-test-hangup.{os.getpid()}"
    (tmp_path / ".heapfs").mkdir()
    (tmp_path / ".heapfs" / "stats").write_text(json.dumps({"client_socket": "@" + name}))
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind("\0" + name)
    srv.listen(1)
    conn = heapfs.Connection(str(tmp_path))
    s, _ = srv.accept()
    p = tmp_path / "f"
    p.write_bytes(b"x" * 4096)
    def hang_up():
        select.select([s], [], [], 5)   # the request is there: close without reading it
        srv.close()                     # so that its one retry, on a new connection, fails
        s.close()

    with open(p, "rb") as f:
        t = threading.Thread(target=hang_up)
        t.start()
        with pytest.raises(OSError):
            conn.map(f, 0, 4096).__enter__()
        t.join()
        os.fstat(f.fileno())            # still ours, still open
        assert f.read() == b"x" * 4096
    conn.close()


def test_idle_connections_do_not_keep_a_client_out(dm):
    """300 connections that never ask anything: the daemon keeps at most 256 (the silent
    one that waited longest makes room) and closes each within about two seconds; a real
    client process maps and works meanwhile, and a connection made before them and used
    only after they are gone connects again by itself."""
    p = dm.heap("dm") / "f"
    p.write_bytes(pattern(1 << 16, 3))
    early = heapfs.Connection(str(dm.path))
    path = "\0" + dm.stats()["client_socket"][1:]
    idle = []
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        idle.append(s)
    t0 = time.monotonic()
    out = run_child("""
import sys, heapfs
with open(sys.argv[1], 'rb') as f, heapfs.map(f, 4096, 8192) as m:
    print(bytes(m).hex())
""", p)
    assert bytes.fromhex(out.strip()) == pattern(1 << 16, 3)[4096:4096 + 8192]
    assert len(dm.stats()["clients"]) <= 256
    for s in idle:
        s.settimeout(10)
        assert s.recv(16) == b""       # closed by the daemon
        s.close()
    assert time.monotonic() - t0 < 8
    wait_until(lambda: not dm.stats()["clients"], 5, "every silent connection closed")
    with open(p, "rb") as f, early.map(f, 0, 4096) as m:
        assert bytes(m) == pattern(1 << 16, 3)[:4096]
    early.close()
