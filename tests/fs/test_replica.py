"""Replication to a partner mount (SPEC "Replication", issue 9): two real heapfs daemons on
this host pair up over 127.0.0.1; heaps a node's config declares with `replicate` are
owned there and shown read-only on the partner, every change is applied on the partner,
and what the partner holds is read back through the daemon (read_daemon: O_DIRECT).

Ports come from 21000-29999, derived from the pid and a per-test counter, so parallel
runs do not collide.  Every test ends by comparing the two copies file by file."""
import errno
import itertools
import json
import os
import random
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from pathlib import Path

from conftest import (HEAPFS, MIB, REPO, expect_errno, pattern, read_daemon, unmount,
                      veth_namespaces, wait_until)

_ports = itertools.count()


def port_pair():
    n = next(_ports)
    base = 21000 + (os.getpid() * 13 + n * 2) % 8990
    return base, base + 1


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "secret"
    p.write_text("correct horse battery staple\n")
    p.chmod(0o600)
    return p


def config(node, me, peer, secret, heaps="", timeout="1s"):
    return (f'{heaps}\npartner {{ node = "{node}" listen = "127.0.0.1:{me}" '
            f'connect = "127.0.0.1:{peer}" secret_file = "{secret}" timeout = {timeout} }}\n')


def partner(m):
    return m.status_json("partner")


def wait_state(m, state, deadline=10.0):
    wait_until(lambda: partner(m)["state"] == state, deadline, f"partner state {state}")


class Relay:
    """A TCP relay on 127.0.0.1 between the two daemons: cut() drops every connection and
    refuses new ones (the network is gone), heal() lets them through again.  delay: seconds
    to wait after each 64 KiB it passes on (a slow network), for connections made after."""

    delay = 0

    def __init__(self, port, target):
        self.target, self.open, self.conns = target, True, []
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", port))
        self.srv.settimeout(0.2)
        self.stop = False
        self.th = threading.Thread(target=self.accept, daemon=True)
        self.th.start()

    def accept(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            if not self.open:
                c.close()
                continue
            try:
                t = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, t]
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self.pump, args=(a, b, self.delay),
                                 daemon=True).start()

    @staticmethod
    def pump(a, b, delay):
        try:
            a.settimeout(None)
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
                if delay:
                    time.sleep(delay)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def heal(self):
        self.open = True

    def close(self):
        self.stop = True
        self.cut()
        self.th.join(5)
        self.srv.close()


class Pair:
    def __init__(self, factory, secret, mode="sync", size="64M", timeout="1s", relay=False,
                 failover_b=False, extra_a="", prefix_a=(), extra_partner_a="", opts=()):
        self.factory, self.secret, self.timeout = factory, secret, timeout
        self.opts = opts  # more command-line arguments of both daemons (-o allow_other)
        self.prefix_a = prefix_a  # a's daemon runs behind it (env, prlimit, ...)
        self.pa, self.pb = port_pair()
        self.ca, self.cb = self.pb, self.pa  # where each one connects to
        self.relays = []
        if relay:  # a and b reach each other only through relays that can be cut
            ra, rb = port_pair()
            self.relays = [Relay(ra, self.pb), Relay(rb, self.pa)]
            self.ca, self.cb = ra, rb
        self.failover_b = failover_b
        self.extra_partner_a = extra_partner_a  # more partner options for a
        self.heaps_a = f'heap "data" {{ size = {size} replicate = {mode} {extra_a} }}'
        self.n = 0
        self.a = self.start_a()
        self.b = self.start_b()
        self.wait_paired()

    def start_a(self, **kw):
        self.n += 1
        kw.setdefault("prefix", self.prefix_a)
        kw.setdefault("extra", self.opts)
        cfg = config("a", self.pa, self.ca, self.secret, self.heaps_a, self.timeout)
        if self.extra_partner_a:
            cfg = cfg[:cfg.rindex("}")] + f" {self.extra_partner_a} }}\n"
        return self.factory(cfg, name=f"a{self.n}", **kw)

    def start_b(self, **kw):
        self.n += 1
        kw.setdefault("extra", self.opts)
        cfg = config("b", self.pb, self.cb, self.secret, 'heap "local" { size = 16M }',
                     self.timeout)
        if self.failover_b:
            cfg = cfg[:cfg.rindex("}")] + " auto_failover = true }\n"
        return self.factory(cfg, name=f"b{self.n}", **kw)

    def wait_paired(self):
        for m in (self.a, self.b):
            wait_state(m, "connected")
        wait_until(lambda: (self.b.heap("data")).is_dir(), 5, "mirror heap")

    def cut(self):
        for r in self.relays:
            r.cut()

    def heal(self):
        for r in self.relays:
            r.heal()

    def verify(self, m=None):
        """heapfsctl verify on one side: the daemons compare the copies; none differ."""
        r = (m or self.a).ctl("--json", "verify", (m or self.a).path)
        j = json.loads(r.stdout)
        assert r.returncode == 0 and j["state"] == "compared" and j["differences"] == 0, \
            (r.returncode, r.stdout, r.stderr)
        return j

    def clean(self):
        """Neither side refused or failed a change (a refusal would heal itself by a
        full resync and hide the bug)."""
        for m in (self.a, self.b):
            marks = ("was refused", "a change to", "resync of")  # fs/repl/'s own complaints
            bad = [ln for ln in m.stderr_text().splitlines()
                   if ln.startswith("heapfs: partner:") and any(k in ln for k in marks)]
            assert not bad, bad

    def kill(self, m):
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        m.expect_exit = -signal.SIGKILL
        unmount(m.path)


@pytest.fixture
def pairs(mount_factory, secret):
    made = []

    def make(**kw):
        p = Pair(mount_factory, secret, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        for r in p.relays:
            r.close()


# ---- comparing the two copies

def tree(root):
    """path -> (type, mode, size, nlink, target, xattrs, data) for everything under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            xa = {} if target is not None else {
                k: os.getxattr(p, k) for k in os.listxattr(p) if not k.startswith("user.heapfs.")}
            data = read_daemon(p) if stat.S_ISREG(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                        st.st_nlink, target, xa, data)
    return out


def assert_same(owner, mirror):
    a, b = tree(owner), tree(mirror)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k], k


def same(owner, mirror):
    try:
        assert_same(owner, mirror)
        return True
    except (AssertionError, OSError):
        return False


# ---- the tests

def test_pairing_and_mirror_is_read_only(mount_factory, secret):
    p = Pair(mount_factory, secret)
    a, b = p.a, p.b
    assert partner(a)["heaps"] == {"data": "owner"}
    assert partner(b)["heaps"] == {"data": "mirror"}
    assert partner(a)["peer"] == "b" and partner(b)["peer"] == "a"
    assert a.heap_stats("data")["role"] == "owner"
    assert b.heap_stats("data")["role"] == "mirror"
    assert b.heap_stats("local")["role"] == "owner"  # not replicated: b's own
    (a.heap("data") / "f").write_bytes(b"owner's")
    mf = b.heap("data") / "f"
    assert read_daemon(mf) == b"owner's"
    # every kind of change on the mirror: EROFS, and nothing changed
    expect_errno(errno.EROFS, open, mf, "r+b")
    expect_errno(errno.EROFS, open, mf, "wb")
    expect_errno(errno.EROFS, open, b.heap("data") / "new", "wb")
    expect_errno(errno.EROFS, os.mkdir, b.heap("data") / "d")
    expect_errno(errno.EROFS, os.unlink, mf)
    expect_errno(errno.EROFS, os.rename, mf, b.heap("data") / "g")
    expect_errno(errno.EROFS, os.link, mf, b.heap("data") / "g")
    expect_errno(errno.EROFS, os.symlink, "f", b.heap("data") / "s")
    expect_errno(errno.EROFS, os.chmod, mf, 0o600)
    expect_errno(errno.EROFS, os.truncate, mf, 0)
    expect_errno(errno.EROFS, os.setxattr, mf, "user.x", b"1")
    expect_errno(errno.EBUSY, os.rmdir, b.heap("data"))
    assert read_daemon(mf) == b"owner's"
    # the mirror's own heap stays writable
    (b.heap("local") / "mine").write_bytes(b"b's")
    assert not (a.heap("local")).exists()
    assert_same(a.heap("data"), b.heap("data"))


def test_every_change_replicated_sync(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="sync")
    A, B = p.a.heap("data"), p.b.heap("data")
    data = pattern(3 * MIB + 123, seed=1)
    (A / "big").write_bytes(data)
    os.mkdir(A / "dir")
    os.mkdir(A / "dir" / "sub")
    (A / "dir" / "sub" / "x").write_bytes(b"x" * 5000)
    os.link(A / "big", A / "dir" / "hard")              # hard link
    os.symlink("../big", A / "dir" / "sym")
    (A / "victim").write_bytes(b"to be replaced")
    (A / "mover").write_bytes(b"moved over")
    os.rename(A / "mover", A / "victim")                # rename over an existing file
    os.rename(A / "dir" / "sub", A / "sub2")            # a directory moves
    os.setxattr(A / "big", "user.color", b"blue")
    os.setxattr(A / "big", "user.gone", b"soon")
    os.removexattr(A / "big", "user.gone")
    os.setxattr(A / "dir", "user.bin", bytes(range(256)))
    os.truncate(A / "sub2" / "x", 100)                  # shrink
    os.truncate(A / "victim", 70000)                    # grow: zeros
    os.chmod(A / "victim", 0o640)
    with open(A / "big", "r+b") as f:                   # overwrite in the middle
        f.seek(MIB)
        f.write(b"\xff" * 4096)
    with open(A / "trunc", "wb") as f:
        f.write(b"y" * 10000)
    with open(A / "trunc", "wb") as f:                  # O_TRUNC inside open
        f.write(b"z")
    os.mknod(A / "fifo", 0o600 | stat.S_IFIFO)
    with open(A / "open-unlinked", "wb") as f:          # written after its name is gone
        f.write(b"a")
        os.unlink(A / "open-unlinked")
        f.write(b"b" * 100000)
    os.unlink(A / "dir" / "hard")
    (A / "empty").mkdir()
    os.rmdir(A / "empty")
    # sync: each call returned after the partner applied it, so no waiting here
    assert_same(A, B)
    assert read_daemon(B / "big")[MIB:MIB + 4096] == b"\xff" * 4096
    assert os.getxattr(B / "dir", "user.bin") == bytes(range(256))
    assert read_daemon(B / "victim")[:10] == b"moved over"
    assert read_daemon(B / "trunc") == b"z"
    p.clean()
    p.verify()
    p.verify(p.b)


FAILMALLOC = Path(os.environ.get("FAILMALLOC", REPO / "build" / "tests" / "fs" /
                                 "libfailmalloc.so")).resolve()


@pytest.mark.skipif(any(s in HEAPFS.name for s in ("asan", "tsan")),
                    reason="the sanitizers bring their own malloc: no LD_PRELOAD shim")
def test_rename_whose_add_fails_tells_the_partner(mount_factory, secret, tmp_path):
    """rename over an existing file: the target's name goes first, then the moved name is
    added; when that add fails (an allocation: failmalloc.c) the target is gone all the
    same, and the partner must be told so (dir.c __rename_move) — else the copies differ."""
    assert FAILMALLOC.exists(), FAILMALLOC
    arm = tmp_path / "arm"
    target = "t" * 200
    # the size of the directory entry of the target name (dir.c __hfs_dir_add: struct
    # hfs_dirent, 72 bytes, + the name + NUL); if that changes the rename below does not
    # fail and the test says so
    size = 72 + len(target) + 1
    p = Pair(mount_factory, secret, mode="sync",
             prefix_a=("env", f"LD_PRELOAD={FAILMALLOC}", f"FAILMALLOC_SIZE={size}",
                       f"FAILMALLOC_ARM={arm}"))
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "src").write_bytes(b"moved")
    (A / target).write_bytes(b"overwritten")
    assert read_daemon(B / target) == b"overwritten"
    arm.write_bytes(b"")
    expect_errno(errno.ENOMEM, os.rename, A / "src", A / target)
    assert not arm.exists()  # the rename's add took it
    # here: the target is gone, the moved file is back where it was
    assert sorted(os.listdir(A)) == ["src"]
    assert read_daemon(A / "src") == b"moved"
    # and the partner agrees, now (sync) and by verify
    assert sorted(os.listdir(B)) == ["src"]
    assert_same(A, B)
    p.clean()
    p.verify()
    p.verify(p.b)


def test_async_loses_nothing_after_fsync(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="async")
    A, B = p.a.heap("data"), p.b.heap("data")
    data = pattern(4 * MIB, seed=2)
    fd = os.open(A / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    for k in range(0, len(data), 256 * 1024):
        os.write(fd, data[k:k + 256 * 1024])
    os.fsync(fd)
    p.kill(p.a)  # the owner dies right after fsync returned
    try:
        os.close(fd)
    except OSError:
        pass
    assert read_daemon(B / "f") == data
    wait_state(p.b, "degraded")


def test_async_close_waits(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="async")
    A, B = p.a.heap("data"), p.b.heap("data")
    for k in range(20):
        (A / f"f{k}").write_bytes(pattern(70000, seed=k))  # close() flushes
    assert_same(A, B)
    p.clean()


def test_sync_kill_owner_between_write_and_close(mount_factory, secret):
    """sync: a write() that returned is on the mirror, even if the owner then gets
    kill -9 before close().  20 rounds.  The killed node comes back empty: the survivor,
    which holds the data, owns the heap from then on and the returning node mirrors it
    (it never overwrites the survivor), so every round's bytes are still there at the end
    on both sides."""
    p = Pair(mount_factory, secret, mode="sync", size="8M")
    owner, mirror = "a", "b"
    written = {}
    for rnd in range(20):
        o, m = getattr(p, owner), getattr(p, mirror)
        assert o.heap_stats("data")["role"] == "owner"
        data = pattern(65536 + rnd * 4099, seed=rnd)
        fd = os.open(o.heap("data") / f"r{rnd}", os.O_WRONLY | os.O_CREAT, 0o644)
        assert os.write(fd, data) == len(data)
        p.kill(o)
        try:
            os.close(fd)
        except OSError:
            pass
        written[f"r{rnd}"] = data
        assert read_daemon(m.heap("data") / f"r{rnd}") == data, rnd
        setattr(p, owner, p.start_a() if owner == "a" else p.start_b())
        back = getattr(p, owner)
        wait_state(back, "connected")
        wait_state(m, "connected")
        assert back.heap_stats("data")["role"] == "mirror"
        assert m.heap_stats("data")["role"] == "owner"
        owner, mirror = mirror, owner
    o, m = getattr(p, owner), getattr(p, mirror)
    for name, data in written.items():
        assert read_daemon(m.heap("data") / name) == data, name
    assert_same(o.heap("data"), m.heap("data"))
    p.clean()


def test_stopped_partner_gets_only_what_changed(mount_factory, secret):
    """SIGSTOP the partner: the owner notices within timeout and goes on alone; after
    SIGCONT the partner, which kept its copy, is sent only the changes (<= 1.25x)."""
    p = Pair(mount_factory, secret, mode="sync", size="64M")
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "big").write_bytes(pattern(16 * MIB, seed=6))
    assert read_daemon(B / "big") == (A / "big").read_bytes()
    p.b.proc.send_signal(signal.SIGSTOP)
    try:
        changed = 0
        with open(A / "big", "r+b") as f:
            for k in range(4):
                f.seek(k * 4 * MIB)
                f.write(pattern(256 * 1024, seed=10 + k))
                changed += 256 * 1024
        (A / "new").write_bytes(pattern(MIB, seed=20))
        changed += MIB
        wait_state(p.a, "degraded")
        sent0 = partner(p.a)["sent_bytes"]
    finally:
        p.b.proc.send_signal(signal.SIGCONT)
    wait_state(p.a, "connected", 15)
    wait_until(lambda: same(A, B), 10, "mirror matches the owner")
    st = partner(p.a)
    assert st["resync_total"] <= 1.25 * changed, st
    # bytes on the link since the partner came back: the changes, not the 16 MiB file
    assert st["sent_bytes"] - sent0 <= 1.25 * changed + 64 * 1024, (st, sent0)
    p.clean()


def test_restarted_partner_gets_everything(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="sync")
    A = p.a.heap("data")
    (A / "before").write_bytes(pattern(MIB, seed=3))
    p.kill(p.b)
    wait_state(p.a, "degraded")
    # the owner goes on alone
    (A / "during").write_bytes(pattern(2 * MIB, seed=4))
    os.mkdir(A / "d")
    os.rename(A / "before", A / "d" / "before")
    p.b = p.start_b()
    p.wait_paired()
    wait_until(lambda: partner(p.a)["state"] == "connected", 10, "resync done")
    wait_until(lambda: same(A, p.b.heap("data")), 10, "mirror matches the owner")
    st = partner(p.a)
    assert st["resync_done"] == st["resync_total"] > 3 * MIB


def test_degraded_write_does_not_wait(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="sync", timeout="1s")
    A = p.a.heap("data")
    p.b.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        (A / "f").write_bytes(b"x" * 100)  # waits at most `timeout` for the hung partner
        (A / "g").write_bytes(b"y" * 100)
        took = time.monotonic() - t0
        assert took < 2 * 1.0 + 1.5, took
    finally:
        p.b.proc.send_signal(signal.SIGCONT)
    wait_state(p.a, "connected", 15)
    wait_until(lambda: same(A, p.b.heap("data")), 10, "mirror matches the owner")


def start_with_bad_secret(tmp_path, secret):
    """heapfs -f with a replicated heap and this secret file: it must exit 2, nothing
    mounted; the finished process (its stderr says why)."""
    cfg = tmp_path / "a.conf"
    cfg.write_text(config("a", 21000, 21001, secret, 'heap "data" { replicate = sync }'))
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = subprocess.run([str(HEAPFS), "-f", "-c", str(cfg), str(mnt)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert not os.path.ismount(mnt)
    return r


def test_secret_file_readable_by_others_refused(tmp_path, secret):
    secret.chmod(0o640)
    r = start_with_bad_secret(tmp_path, secret)
    # the first word is the config's FILE:LINE; only the pool's notice may come before it
    # (another mount on this machine, e.g. another test run, serves the default pool socket)
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("heapfs: pool: ")]
    assert lines and lines[0].startswith(f"heapfs: {tmp_path / 'a.conf'}:2: ") and \
        str(secret) in lines[0], r.stderr


def test_wrong_secret_refused(mount_factory, secret, tmp_path):
    p_a, p_b = port_pair()
    other = tmp_path / "other"
    other.write_text("not the same\n")
    other.chmod(0o600)
    a = mount_factory(config("a", p_a, p_b, secret, 'heap "data" { replicate = sync }'), name="a")
    b = mount_factory(config("b", p_b, p_a, other), name="b")
    (a.heap("data") / "f").write_bytes(b"secret data")
    # a clear error on both nodes, which the state says until a connection authenticates
    for m in (a, b):
        wait_until(lambda: partner(m)["state"] == "misconfigured", 10, "misconfigured")
        assert "(wrong secret: the secret files differ)" in partner(m)["reason"], partner(m)
    assert not b.heap("data").exists()


def test_garbage_on_the_port_survived(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="sync")
    A, B = p.a.heap("data"), p.b.heap("data")
    rnd = random.Random(5)
    blobs = [rnd.randbytes(n) for n in (1, 7, 64, 4096, 100000)]
    blobs += [b"\x40\x00\x00\x00" + b"\xff\xff\xff\x7f" + b"\x00" * 8,  # huge length
              b"\x40\x00\x00\x00\x10\x00\x00\x00" + b"\x01" * 3]        # truncated
    for blob in blobs:
        for port in (p.pa, p.pb):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(blob)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(2)
                    try:
                        while s.recv(65536):
                            pass
                    except OSError:
                        pass
            except OSError:
                pass
    assert p.a.proc.poll() is None and p.b.proc.poll() is None
    wait_state(p.a, "connected")
    (A / "after").write_bytes(b"still replicating")
    wait_until(lambda: same(A, B), 10, "mirror matches the owner")


def test_partner_json_without_partner(mount):
    st = partner(mount)
    assert st["state"] == "none" and st["heaps"] == {}


def test_promote_and_fail_back(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="sync")
    (p.a.heap("data") / "one").write_bytes(b"1" * 1000)
    busy = os.open(p.a.heap("data") / "busy", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(busy, b"half")  # still open for writing when a dies
    r = p.b.ctl("promote", p.b.path, "data")
    assert r.returncode == 1 and "--force" in r.stderr  # the owner is alive
    assert p.b.heap_stats("data")["role"] == "mirror"
    p.kill(p.a)
    try:
        os.close(busy)
    except OSError:
        pass
    wait_state(p.b, "degraded")
    r = p.b.ctl("promote", p.b.path, "data")
    assert r.returncode == 0, r.stderr
    assert os.getxattr(p.b.heap("data") / "busy", "user.heapfs.state") == b"interrupted"
    expect_errno(errno.ENODATA, os.getxattr, p.b.heap("data") / "one", "user.heapfs.state")
    expect_errno(errno.EPERM, os.setxattr, p.b.heap("data") / "one", "user.heapfs.state",
                 b"x")
    st = partner(p.b)
    assert st["heaps"] == {"data": "owner"} and st["epoch"] == 2
    (p.b.heap("data") / "two").write_bytes(b"2" * 2000)  # writable now
    p.a = p.start_a()  # the old owner comes back empty: it mirrors the new owner
    wait_state(p.a, "connected")
    wait_state(p.b, "connected")
    assert p.a.heap_stats("data")["role"] == "mirror"
    assert read_daemon(p.a.heap("data") / "two") == b"2" * 2000
    assert read_daemon(p.a.heap("data") / "one") == b"1" * 1000
    p.verify()
    # fail back: the original owner takes over again while connected
    r = p.a.ctl("promote", "--force", p.a.path, "data")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: p.b.heap_stats("data")["role"] == "mirror", 10, "b mirrors again")
    wait_state(p.a, "connected")
    assert partner(p.a)["epoch"] == 3
    (p.a.heap("data") / "three").write_bytes(b"3" * 3000)
    assert read_daemon(p.b.heap("data") / "three") == b"3" * 3000
    expect_errno(errno.EROFS, open, p.b.heap("data") / "four", "wb")
    p.verify(p.b)
    p.clean()


def test_link_cut_behaves_like_the_hang(pairs):
    p = pairs(mode="sync", relay=True)
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "big").write_bytes(pattern(8 * MIB, seed=7))
    p.cut()
    with open(A / "big", "r+b") as f:
        f.seek(MIB)
        f.write(pattern(MIB, seed=8))
    wait_state(p.a, "degraded")
    wait_state(p.b, "degraded")
    p.heal()
    wait_state(p.a, "connected", 15)
    st = partner(p.a)
    assert st["resync_total"] <= 1.25 * MIB, st
    p.verify()
    p.clean()


def test_split_brain_detected_and_resolved(pairs):
    p = pairs(mode="sync", relay=True, failover_b=True)
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "common").write_bytes(b"both have this")
    p.cut()
    wait_state(p.a, "degraded")
    # b's partner is gone: auto_failover makes it the owner
    wait_until(lambda: p.b.heap_stats("data")["role"] == "owner", 10, "b took over")
    (A / "from-a").write_bytes(b"written on a while apart")
    (B / "from-b").write_bytes(b"written on b while apart")
    p.heal()
    for m in (p.a, p.b):
        wait_state(m, "split-brain", 15)
    # nothing merged, nothing overwritten: each side keeps what it wrote
    assert (A / "from-a").exists() and not (A / "from-b").exists()
    assert (B / "from-b").exists() and not (B / "from-a").exists()
    # verify lists the differences and fails
    r = p.a.ctl("--json", "verify", p.a.path, "data")
    assert r.returncode == 1
    diffs = {d["path"]: d for d in json.loads(r.stdout)["heaps"]["data"]["differences"]}
    assert set(diffs) == {"from-a", "from-b"}
    assert diffs["from-a"]["partner"] is None and diffs["from-b"]["here"] is None
    r = p.a.ctl("verify", p.a.path)
    assert r.returncode == 1 and "from-b" in r.stdout
    r = p.a.ctl("promote", "--discard-peer", p.a.path, "data")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: p.b.heap_stats("data")["role"] == "mirror", 15, "b mirrors a")
    wait_until(lambda: same(A, B), 15, "b holds a's copy")
    for m in (p.a, p.b):
        wait_state(m, "connected", 15)
    assert read_daemon(B / "from-a") == b"written on a while apart"
    assert not (B / "from-b").exists()
    p.verify()


def test_partner_ctl_table_and_json(mount_factory, secret):
    p = Pair(mount_factory, secret, mode="async")
    r = p.a.ctl("partner", p.a.path)
    assert r.returncode == 0 and "connected" in r.stdout and "resync   [" in r.stdout
    j = json.loads(p.a.ctl("--json", "partner", p.a.path).stdout)
    assert j["state"] == "connected" and j["node"] == "a" and j["peer"] == "b"
    assert set(j) >= {"epoch", "lag_bytes", "resync_done", "resync_total", "heaps"}
    r = p.a.ctl("verify", p.a.path, "nosuch")
    assert r.returncode == 1


@pytest.fixture
def netns_pair():
    """Two network namespaces joined by a veth pair (10.233.X.1 and .2), removed after."""
    with veth_namespaces("hfs", "10.233") as v:
        yield v


def test_veth_link_cut(mount_factory, secret, netns_pair):
    """The two daemons in two network namespaces joined by a veth pair: the link taken
    down is noticed on both sides, the owner goes on alone, and once the link is up again
    only what changed is sent."""
    ns, dev, ip, run = netns_pair
    def cfg(n, me, peer):
        return (f'partner {{ node = "{n}" listen = "{me}:7410" connect = "{peer}:7410" '
                f'secret_file = "{secret}" timeout = 1s }}\n')
    a = mount_factory('heap "data" { size = 64M replicate = sync }\n' + cfg("a", ip[0], ip[1]),
                      name="a", prefix=("nsenter", f"--net=/var/run/netns/{ns[0]}"))
    b = mount_factory(cfg("b", ip[1], ip[0]), name="b",
                      prefix=("nsenter", f"--net=/var/run/netns/{ns[1]}"))
    for m in (a, b):
        wait_state(m, "connected", 15)
    A, B = a.heap("data"), b.heap("data")
    (A / "big").write_bytes(pattern(8 * MIB, seed=9))
    assert read_daemon(B / "big") == read_daemon(A / "big")
    run("-n", ns[0], "link", "set", dev[0], "down")
    try:
        with open(A / "big", "r+b") as f:
            f.seek(2 * MIB)
            f.write(pattern(MIB, seed=10))
        for m in (a, b):
            wait_state(m, "degraded", 10)
    finally:
        run("-n", ns[0], "link", "set", dev[0], "up")
    wait_state(a, "connected", 20)
    wait_until(lambda: same(A, B), 15, "mirror matches the owner")
    assert partner(a)["resync_total"] <= 1.25 * MIB
    r = a.ctl("verify", a.path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_owner_restarted_from_its_image_stays_owner(mount_factory, secret, tmp_path):
    """An owner that comes back with data (its heap image) is not "back empty": it stays
    the owner and its partner's copy is refreshed from it."""
    img = tmp_path / "data.img"
    p = Pair(mount_factory, secret, mode="sync", extra_a=f'image = "{img}"')
    (p.a.heap("data") / "kept").write_bytes(pattern(100000, seed=11))
    assert p.a.stop() == 0 and img.exists()  # a clean unmount saves the image
    wait_state(p.b, "degraded")
    p.a = p.start_a()
    wait_state(p.a, "connected")
    wait_state(p.b, "connected")
    assert p.a.heap_stats("data")["role"] == "owner"
    assert p.b.heap_stats("data")["role"] == "mirror"
    assert read_daemon(p.a.heap("data") / "kept") == pattern(100000, seed=11)
    p.verify()
    p.clean()


def test_change_log_overflow_sends_the_whole_heap(mount_factory, secret):
    """More changes while the partner is away than the log keeps (min(heap size, 128M)):
    the log is dropped and the partner gets the whole heap instead."""
    p = Pair(mount_factory, secret, mode="async", size="16M")
    A, B = p.a.heap("data"), p.b.heap("data")
    (A / "f").write_bytes(pattern(4 * MIB, seed=12))
    p.b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_state(p.a, "degraded")
        for k in range(6):  # 24 MiB of changes to a 16 MiB heap
            with open(A / "f", "r+b") as f:
                f.write(pattern(4 * MIB, seed=20 + k))
    finally:
        p.b.proc.send_signal(signal.SIGCONT)
    wait_state(p.a, "connected", 15)
    wait_until(lambda: same(A, B), 15, "mirror matches the owner")
    st = partner(p.a)
    assert 4 * MIB <= st["resync_total"] < 8 * MIB, st  # the image, not 24 MiB of log
    p.verify()
    p.clean()


def _no_flapping(*mounts, seconds=3.0):
    """The link stays as it is: no 'link up' or 'link down' said during the wait."""
    before = [m.stderr_text().count("partner: link") for m in mounts]
    time.sleep(seconds)
    assert [m.stderr_text().count("partner: link") for m in mounts] == before


@pytest.mark.parametrize("b_heap", ['heap "data" { size = 32M  replicate = async }',
                                    'heap "data" { size = 16M }'])
def test_a_heap_declared_on_both_nodes_is_refused_on_both(mount_factory, secret, b_heap):
    """The natural first mistake: both configs declare heap data (replicated on both, or
    on one of them).  Both nodes say so once, both show misconfigured with the reason, the
    link stays up without flapping, nothing of data moves, and each keeps its own."""
    p_a, p_b = port_pair()
    a = mount_factory(config("a", p_a, p_b, secret,
                             'heap "data" { size = 16M  replicate = sync }\n'
                             'heap "ok" { size = 16M  replicate = sync }'), name="a")
    b = mount_factory(config("b", p_b, p_a, secret, b_heap), name="b")
    for m in (a, b):
        wait_until(lambda: partner(m)["state"] == "misconfigured", 10, "misconfigured")
        why = partner(m)["reason"]
        assert "heap data is declared on both nodes" in why and "declare it on one" in why
    assert "here: 16M sync" in partner(a)["reason"]
    (a.heap("data") / "mine").write_bytes(b"a's own")
    (b.heap("data") / "theirs").write_bytes(b"b's own")
    (a.heap("ok") / "f").write_bytes(b"this one replicates")   # the other heap still does
    wait_until(lambda: (b.heap("ok") / "f").exists(), 10, "the other heap mirrored")
    _no_flapping(a, b)
    assert sorted(os.listdir(a.heap("data"))) == ["mine"]
    assert sorted(os.listdir(b.heap("data"))) == ["theirs"]
    for m in (a, b):
        assert m.stderr_text().count("is declared on both nodes") == 1, m.stderr_text()
        assert "a change was refused" not in m.stderr_text()


def test_two_nodes_with_one_name_are_refused_on_both(mount_factory, secret):
    p_a, p_b = port_pair()
    a = mount_factory(config("same", p_a, p_b, secret, 'heap "data" { replicate = sync }'),
                      name="a")
    b = mount_factory(config("same", p_b, p_a, secret), name="b")
    for m in (a, b):
        wait_until(lambda: partner(m)["state"] == "misconfigured", 10, "misconfigured")
        assert 'own node name "same"' in partner(m)["reason"], partner(m)
        assert 'own node name' in m.stderr_text()
    assert not b.heap("data").exists()


def test_each_change_of_the_pair_is_logged_once_at_notice(mount_factory, secret):
    """Link up, connected (the resync applied), link down: one line each, on each side."""
    p = Pair(mount_factory, secret, mode="sync")
    for m in (p.a, p.b):
        wait_until(lambda: "has everything: connected" in m.stderr_text(), 10, "connected")
    # (both nodes connect at once: the link may replace one connection by the other at
    # the start, a real down and up; each is said once, so the counts agree)
    for m in (p.a, p.b):
        err = m.stderr_text()
        ups, downs = err.count("partner: link up to"), err.count("partner: link down")
        assert ups >= 1 and ups == downs + 1, err
        assert 1 <= err.count("has everything: connected") <= ups, err
    before = p.a.stderr_text().count("partner: link down")
    (p.a.heap("data") / "f").write_bytes(b"x" * 10000)  # changes say nothing
    _no_flapping(p.a, p.b, seconds=1.0)
    p.b.stop()
    wait_until(lambda: p.a.stderr_text().count("partner: link down") > before, 10,
               "link down said")
    time.sleep(0.5)
    assert p.a.stderr_text().count("partner: link down") == before + 1
