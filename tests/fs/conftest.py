"""Fixtures for the heapfs filesystem suite: real mounts, one fresh mountpoint per test.

`mount` mounts the embedded default config; `mount_factory(config_text, ...)` mounts with
a config of the caller's.  Each mount runs `heapfs -f [-c CONFIG] MOUNTPOINT` as a child,
waits (with a deadline) until /proc/self/mountinfo shows fuse.heapfs at the mountpoint,
and on teardown unmounts (fusermount3 -u, lazily -uz when busy), stops a daemon that does
not exit (SIGTERM, then SIGKILL) and fails the test when the daemon did not exit 0.

Binaries come from $HEAPFS and $HEAPFSCTL (else <repo>/build/fs/heapfs and
<repo>/build/fs/ctl/heapfsctl).  $HEAPFS_OPTS (e.g. `io_uring`) is passed as one more
`-o` to every daemon the suite starts, so the whole suite can run with a speed knob on.
$HEAPFS_PIPE_MAX (bytes) raises fs.pipe-max-size for the whole run and puts it back after:
the setting of hosts where libfuse could grow its pipes (see fs/edge/io.c, "No splice").
A daemon whose stderr carries a sanitizer report fails the test like a bad exit status.
A daemon that does not end when told to (unmount, signal) fails with a report of what
still holds its mount and where its threads wait (Mount.hang_report).
$HEAPFS_LOAD=N runs N processes that spin on the CPU beside the whole run (fs-load).
Daemons start with SIGHUP, SIGINT and SIGTERM at their defaults, however the run started.
As root the run makes its mounts in a private mount namespace of its own (see
own_mount_namespace; HEAPFS_SHARED_MOUNT_NS=1 keeps the machine's).
"""
import contextlib
import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAPFS = Path(os.environ.get("HEAPFS", REPO / "build" / "fs" / "heapfs")).resolve()
HEAPFSCTL = Path(os.environ.get("HEAPFSCTL", REPO / "build" / "fs" / "ctl" / "heapfsctl")).resolve()
HEAPFS_OPTS = ["-o", os.environ["HEAPFS_OPTS"]] if os.environ.get("HEAPFS_OPTS") else []

MOUNT_DEADLINE = 10.0
EXIT_DEADLINE = 10.0
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def _unescape_mountinfo(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_fstype(path):
    """The fstype of the mount at exactly `path` (the last one stacked there), or None."""
    path = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if _unescape_mountinfo(fields[4]) == path:
                found = right.split()[0]
    return found


from waiting import wait_until  # noqa: E402,F401  (tests/cluster shares it)


def mount_ids(path):
    """(mount id, "major:minor") of the mount at exactly `path` (the last one stacked
    there), or (None, None)."""
    path = os.path.realpath(path)
    found = (None, None)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            if _unescape_mountinfo(fields[4]) == path:
                found = (fields[0], fields[2])
    return found


def _mnt_id(fdinfo):
    with contextlib.suppress(OSError), open(fdinfo) as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return line.split()[1]
    return None


def mount_holders(mnt_id, dev):
    """What in the whole system still refers to the mount `mnt_id` (filesystem `dev`,
    "major:minor"), also after a lazy unmount detached it: lines "PID (COMM) STATE: fd N /
    cwd / root / map", then the mount itself if this namespace still shows it.  Nothing is
    stat()ed: fds by their fdinfo's mnt_id, cwd and root through an O_PATH open, mappings
    by device (another FUSE daemon that hangs cannot hang this)."""
    major, minor = (int(x) for x in dev.split(":"))
    out = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        base = f"/proc/{pid}"
        hits = []
        for link in ("cwd", "root"):
            with contextlib.suppress(OSError):
                fd = os.open(f"{base}/{link}", os.O_PATH)
                try:
                    if _mnt_id(f"/proc/self/fdinfo/{fd}") == mnt_id:
                        hits.append(link)
                finally:
                    os.close(fd)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"{base}/fd"):
                if _mnt_id(f"{base}/fdinfo/{fd}") == mnt_id:
                    with contextlib.suppress(OSError):
                        hits.append(f"fd {fd} -> {os.readlink(f'{base}/fd/{fd}')}")
        with contextlib.suppress(OSError), open(f"{base}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[3] == f"{major:02x}:{minor:02x}":
                    hits.append(f"map {line.strip()}")
        if not hits:
            continue
        comm, state = "?", "?"
        with contextlib.suppress(OSError), open(f"{base}/stat") as f:
            st = f.read()
            comm = st[st.index("(") + 1:st.rindex(")")]
            state = st.rsplit(")", 1)[1].split()[0]
        with contextlib.suppress(OSError), open(f"{base}/cmdline", "rb") as f:
            comm += " " + f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        comm = comm.replace("\n", " ")
        out += [f"{pid} ({comm}) {state}: {h}" for h in hits]
    with open("/proc/self/mountinfo") as f:
        out += [f"mounted: {line.strip()}" for line in f if line.split()[0] == mnt_id]
    # the same filesystem mounted in another mount namespace (a copy made by unshare -m,
    # `ip -n`, a container) keeps it alive after our unmount
    own, seen = os.readlink("/proc/self/ns/mnt"), set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns == own or ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as f:
                out += [f"mounted in {ns} (pid {pid}): {line.strip()}" for line in f
                        if line.split()[2] == dev]
    return out


def task_stacks(pid):
    """Each thread of `pid`: tid, name, wchan and kernel stack (root only), for a report."""
    out = []
    with contextlib.suppress(OSError):
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            t = f"/proc/{pid}/task/{tid}"
            parts = [tid]
            for name in ("comm", "wchan", "stack"):
                with contextlib.suppress(OSError), open(f"{t}/{name}") as f:
                    parts.append(f.read().strip().replace("\n", " | "))
            out.append("  ".join(parts))
    return out


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False


def unmount(path):
    """Unmount path if it is mounted: fusermount3 -u, and -uz when that fails (busy)."""
    if mount_fstype(path) is None:
        return
    r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0 and mount_fstype(path) is not None:
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, text=True,
                       timeout=10)


class Mount:
    """One heapfs mount: path, daemon (Popen), and helpers tests use."""

    def __init__(self, path, proc, stderr_path, config_path):
        self.path = Path(path)
        self.proc = proc
        self.stderr_path = stderr_path
        self.config_path = config_path
        self.expect_exit = 0
        # to find what holds the mount after a lazy unmount
        self.mnt_id, self.dev = mount_ids(path)
        self.report = ""  # what held the mount, when the daemon did not end

    # ---- layout helpers
    @property
    def heaps(self):
        return self.path / "heaps"

    def heap(self, name="scratch"):
        return self.path / "heaps" / name

    @property
    def pid(self):
        return self.proc.pid

    # ---- status files
    def status_json(self, rel):
        with open(self.path / ".heapfs" / rel, "rb") as f:
            return json.loads(f.read())

    def stats(self):
        return self.status_json("stats")

    def heap_stats(self, name="scratch"):
        return self.status_json(f"heaps/{name}")

    def heap_map(self, name="scratch"):
        return self.status_json(f"maps/{name}")

    def wait_heap(self, name, cond, what, deadline=5.0):
        """Poll .heapfs/heaps/NAME until cond(heap_json); return that JSON.  FUSE release
        runs after close() returns, so frees show up shortly after, not at once."""
        last = {}

        def check():
            last["h"] = self.heap_stats(name)
            return cond(last["h"])
        try:
            wait_until(check, deadline, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; last {name}: {last.get('h')}") from None
        return last["h"]

    def sanitizer(self):
        """'asan' or 'tsan' when the daemon runs under that sanitizer (mlock is a no-op
        there, so tests of pinning cannot see it), else None."""
        with open(f"/proc/{self.pid}/maps") as f:
            maps = f.read()
        return next((s for s in ("asan", "tsan") if f"lib{s}" in maps), None)

    def rss_kib(self):
        return proc_status_kib(self.pid, "VmRSS")

    def stderr_text(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ctl(self, *args, check=False):
        return run_ctl(*args, check=check)

    # ---- teardown
    def hang_report(self):
        """Why a daemon that should have ended has not: what still holds its mount (also
        once lazily detached), its threads' kernel stacks and, with gdb, their backtraces."""
        out = ["holders of the mount:",
               *(mount_holders(self.mnt_id, self.dev) if self.dev else ["(not known)"]),
               "daemon threads:", *task_stacks(self.pid)]
        # gdb would wait for ever to stop a thread parked in a memory cgroup's OOM wait
        if shutil.which("gdb") and not any("mem_cgroup_oom" in t for t in out):
            with contextlib.suppress(subprocess.TimeoutExpired):
                r = subprocess.run(["gdb", "-p", str(self.pid), "-batch", "-nx",
                                    "-ex", "thread apply all bt"], capture_output=True,
                                   text=True, timeout=30, stdin=subprocess.DEVNULL)
                out += [ln for ln in r.stdout.splitlines() if ln.startswith(("Thread", "#"))]
        return "\n".join(out)

    def wait_exit(self, deadline):
        """The daemon's exit status once it ends (it was told to); fails with hang_report()
        when it is still running after `deadline` seconds."""
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"heapfs still running {deadline}s after it was told to "
                                 f"end; stderr: {self.stderr_text()[-2000:]}\n"
                                 f"{self.hang_report()}") from None

    def stop(self):
        """Unmount and reap the daemon; returns its exit status (negative: signal)."""
        unmount(self.path)
        try:
            return self.proc.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            pass
        # still serving: something keeps the (lazily detached) mount busy, or it hangs
        self.report = self.hang_report()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = f"exit {self.proc.wait(5)} after SIGTERM"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            rc = "killed with SIGKILL"
        unmount(self.path)
        return f"no exit within {EXIT_DEADLINE}s of unmount ({rc})"


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def run_ctl(*args, check=False):
    return subprocess.run([str(HEAPFSCTL), *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=60)


DEFAULT_SIGNALS = ["env", "--default-signal=HUP,INT,TERM"]


def start_heapfs(mountpoint, config_path=None, extra=(), stderr_path=None, prefix=()):
    """Start `heapfs -f` on mountpoint (behind `prefix`, e.g. taskset or prlimit) and wait
    until mounted; returns the Popen."""
    # the signals that end a daemon at their defaults, as from a login shell: a run started
    # in the background (`make test &`, a CI job without a terminal) inherits SIGINT
    # ignored, and libfuse keeps an ignored signal ignored (test_signal_unmounts_...)
    cmd = [*DEFAULT_SIGNALS, *prefix, str(HEAPFS), "-f"]
    if config_path is not None:
        cmd += ["-c", str(config_path)]
    cmd += [*HEAPFS_OPTS, *extra, str(mountpoint)]
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    if stderr_path:
        err.close()

    def up():
        if proc.poll() is not None:
            return "exited"
        return mount_fstype(mountpoint) == "fuse.heapfs"
    try:
        state = wait_until(up, MOUNT_DEADLINE, f"fuse.heapfs at {mountpoint}")
    except AssertionError:
        proc.kill()
        proc.wait()
        unmount(mountpoint)
        raise
    if state == "exited":
        text = Path(stderr_path).read_text(errors="replace") if stderr_path else ""
        raise AssertionError(f"heapfs exited with {proc.returncode} before mounting: {text}")
    return proc


# Modules that never start a daemon (heapfsctl on image files): the variant runs of the
# suite ($HEAPFS_VARIANT set, see tests/fs/meson.build) leave them to the default run.
DAEMON_FREE = {"test_image_ctl.py", "test_manual.py"}
# Modules whose subject does not pass through the FUSE transport (donor sockets, the
# partner link, libheapfs clients): they run in the default run and under the sanitizer
# daemons; the transport variants (nospin, devfuse) leave them out, which keeps the
# whole suite inside its time.  A module that does depend on the transport is not listed.
TRANSPORT_FREE = {"test_client.py", "test_pool.py", "test_replica_room.py", "test_install.py",
                  "test_transport.py",  # mounts every transport itself
                  "test_replica_crypt.py", "test_replica_ha.py", "test_ocf.py",
                  "test_replica_direct.py"}
TRANSPORT_VARIANTS = {"fs-nospin", "fs-devfuse"}


def _left_to_other_runs(name):
    variant = os.environ.get("HEAPFS_VARIANT")
    if not variant:
        return False
    return name in DAEMON_FREE or (variant in TRANSPORT_VARIANTS and name in TRANSPORT_FREE)


CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x00020000, 0x4000, 1 << 18, 2


def own_mount_namespace():
    """Run the suite in a mount namespace of its own, private: None, or why not.

    A mount namespace that any process on the machine creates (unshare -m, `ip -n`, a
    container or sandbox) holds a copy of every mount there is at that moment; a FUSE
    mount copied so stays alive after we unmount ours, and its daemon serves on until that
    namespace goes ("no exit within 10s of unmount" on a busy host, the hang report
    naming `mounted in mnt:[...]`).  Our mounts made in a private namespace of our own are
    in no one else's copy.  Copies of other people's FUSE mounts that this new namespace
    took are dropped at once, so that we hold none of theirs either."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return f"mount --make-rprivate /: {os.strerror(ctypes.get_errno())}"
    with open("/proc/self/mountinfo") as f:
        fuse = [_unescape_mountinfo(ln.split(" - ")[0].split()[4]) for ln in f
                if ln.split(" - ")[1].split()[0].startswith("fuse")]
    for path in reversed(fuse):  # the ones mounted last first
        libc.umount2(os.fsencode(path), MNT_DETACH)
    return None


def pytest_configure(config):
    if os.geteuid() == 0 and not os.environ.get("HEAPFS_SHARED_MOUNT_NS"):
        why = own_mount_namespace()
        if why:
            print(f"tests/fs: mounts in the machine's namespace ({why})", file=sys.stderr)


def pytest_collection_modifyitems(config, items):
    gone = [it for it in items if _left_to_other_runs(it.path.name)]
    if not gone:
        return
    config.hook.pytest_deselected(items=gone)
    items[:] = [it for it in items if not _left_to_other_runs(it.path.name)]


ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")
PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer")


@contextlib.contextmanager
def pipe_max_size(value):
    """Set fs.pipe-max-size to `value` for the block, then put back what was there.
    pytest.skip (with the reason) where it cannot be written."""
    before = PIPE_MAX.read_text()
    try:
        PIPE_MAX.write_text(f"{value}\n")
    except OSError as e:
        pytest.skip(f"cannot raise {PIPE_MAX}: {e}")
    try:
        yield int(before)
    finally:
        PIPE_MAX.write_text(before)


@pytest.fixture(scope="session", autouse=True)
def suite_pipe_max():
    """$HEAPFS_PIPE_MAX: the whole run with a raised fs.pipe-max-size."""
    want = os.environ.get("HEAPFS_PIPE_MAX")
    if not want:
        yield
        return
    with pipe_max_size(int(want)):
        yield


LOAD_SPIN = "while True: pass"


@pytest.fixture(scope="session", autouse=True)
def cpu_load():
    """$HEAPFS_LOAD=N: N processes that spin on the CPU for the whole run (the fs-load
    variant: a busy machine, as on a box where others build and test), stopped by pid after."""
    n = int(os.environ.get("HEAPFS_LOAD") or 0)
    spinners = [subprocess.Popen([sys.executable, "-c", LOAD_SPIN], stdin=subprocess.DEVNULL)
                for _ in range(n)]
    try:
        yield spinners
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@pytest.fixture(scope="session", autouse=True)
def restore_enable_uring():
    """`heapfs -o io_uring` turns the kernel's fuse.enable_uring on (a global knob) and
    leaves it on; a test run puts it back as it found it."""
    before = ENABLE_URING.read_text() if ENABLE_URING.exists() else None
    yield
    if before is not None and ENABLE_URING.read_text() != before:
        ENABLE_URING.write_text(before)


@pytest.fixture
def mount_factory(tmp_path):
    """mount_factory(config_text=None, extra=(), name=None, prefix=()) -> Mount.  Mounts are torn
    down after the test; a daemon that does not exit 0 (or what the test set as
    m.expect_exit) fails the test."""
    mounts = []

    def make(config_text=None, extra=(), name=None, prefix=()):
        n = len(mounts)
        mnt = tmp_path / (name or f"mnt{n}")
        mnt.mkdir()
        cfg = None
        if config_text is not None:
            cfg = tmp_path / f"heapfs{n}.conf"
            cfg.write_text(config_text)
        errp = tmp_path / f"heapfs{n}.stderr"
        proc = start_heapfs(mnt, cfg, extra, errp, prefix)
        m = Mount(mnt, proc, errp, cfg)
        mounts.append(m)
        return m

    yield make
    problems = []
    for m in mounts:
        rc = m.stop()
        err = m.stderr_text()
        if rc != m.expect_exit:
            problems.append(f"heapfs at {m.path} exit status {rc}, expected {m.expect_exit}; "
                            f"stderr: {err[-2000:]}\n{m.report}")
        elif any(mark in err for mark in SANITIZER_MARKS):
            problems.append(f"heapfs at {m.path}: sanitizer report: {err[-4000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def mount(mount_factory):
    """heapfs with the embedded default config (heap `scratch`, 256M, min_block 4K)."""
    return mount_factory()


@contextlib.contextmanager
def tmpfs_at(d, opts):
    """A real tmpfs mounted at d (made here) with mount options opts, unmounted after."""
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs (16 MiB) to compare heapfs with in the same test."""
    with tmpfs_at(tmp_path / "tmpfs", "size=16m") as d:
        yield d


_veths = iter(range(1 << 30))


@contextlib.contextmanager
def veth_namespaces(prefix, net):
    """Two network namespaces (names: prefix, our pid, a count) joined by a veth pair,
    addresses net.X.1 and net.X.2 (/30), removed after.  Yields (namespaces, devices,
    addresses, run) where run(*args) runs `ip`.  Tests reach them with nsenter --net=
    (`ip netns exec` would make a fresh mount namespace)."""
    n = next(_veths)
    tag = f"{prefix}{os.getpid() % 100000}n{n}"
    ns = (tag + "a", tag + "b")
    dev = (f"{prefix[:3]}{os.getpid() % 100000}{n}a", f"{prefix[:3]}{os.getpid() % 100000}{n}b")
    sub = f"{net}.{(os.getpid() + n) % 250}"
    ip = (f"{sub}.1", f"{sub}.2")

    def run(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
    try:
        for k in (0, 1):
            run("netns", "add", ns[k])
        run("link", "add", dev[0], "netns", ns[0], "type", "veth", "peer", "name", dev[1],
            "netns", ns[1])
        for k in (0, 1):
            run("-n", ns[k], "addr", "add", ip[k] + "/30", "dev", dev[k])
            run("-n", ns[k], "link", "set", dev[k], "up")
            run("-n", ns[k], "link", "set", "lo", "up")
        yield ns, dev, ip, run
    finally:
        for k in (0, 1):
            subprocess.run(["ip", "netns", "del", ns[k]], capture_output=True)


@pytest.fixture
def write_config(tmp_path):
    """write_config(text, name='extra.conf') -> Path of a config file under tmp_path."""
    def write(text, name="extra.conf"):
        p = tmp_path / name
        p.write_text(text)
        return p
    return write


# ---- small helpers shared by the tests

def pattern(n, seed=0):
    """n bytes of a deterministic, position-dependent pattern (never all zero)."""
    import random
    return random.Random(seed).randbytes(n)


def read_daemon(path, size=None):
    """The bytes of `path` as the daemon has them: an O_DIRECT read (the kernel's page
    cache is bypassed, every byte comes from a READ request), with an aligned buffer."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        out, off, step = bytearray(), 0, 1 << 20
        buf = mmap.mmap(-1, step)
        try:
            while off < size:
                n = os.preadv(fd, [buf], off)
                if n <= 0:
                    break
                out += buf[:n]
                off += n
        finally:
            buf.close()
        return bytes(out[:size])
    finally:
        os.close(fd)


def held_bytes(path):
    return os.lstat(path).st_blocks * 512


def round_up(n, m):
    return (n + m - 1) // m * m


def next_pow2(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def guide_example(name):
    """The code of docs/GUIDE.md's example NAME (the block after `<!-- example: NAME -->`),
    as a user would copy it."""
    text = (REPO / "docs" / "GUIDE.md").read_text()
    start = text.index(f"<!-- example: {name} -->")
    body = text[text.index("\n", text.index("```", start)) + 1:]
    return body[:body.index("```")]


def expect_errno(code, fn, *args, **kw):
    """Call fn and assert it raises OSError with errno `code` (or one of a tuple)."""
    codes = code if isinstance(code, tuple) else (code,)
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno in codes, \
        f"expected {[errno.errorcode[c] for c in codes]}, got " \
        f"{errno.errorcode.get(ei.value.errno, ei.value.errno)}: {ei.value}"
    return ei.value
