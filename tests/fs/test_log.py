"""Where the daemon's messages go: stderr under -f, syslog (facility daemon, ident heapfs,
the mountpoint in each message) when it detaches, chosen with -o log= and filtered with
-o log_level=.  The syslog side is tested with a datagram socket of the test's own, bound
where $HEAPFS_SYSLOG_SOCKET says (the daemon's stand-in for /dev/log).  Messages are made
for real: a garbage "donor" on the pool socket is refused with a warning."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import HEAPFS, HEAPFS_OPTS, mount_fstype, pid_alive, wait_until
from test_pool import offer

LOG_DAEMON = 3 << 3
ERR, WARNING = 3, 4
REFUSED = "pool: refused donor pid"


@pytest.fixture
def syslog(tmp_path):
    """A datagram socket standing in for /dev/log: (path, socket)."""
    path = tmp_path / "log.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    yield path, s
    s.close()


def received(s, want=1, deadline=10.0):
    """The datagrams that arrive within the deadline, until `want` of them did."""
    out, end = [], time.monotonic() + deadline
    while len(out) < want and time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            out.append(s.recv(65536).decode(errors="replace"))
        except socket.timeout:
            break
    return out


class Daemon:
    """heapfs started as users start it: without -f the command returns once the mount is
    up and the daemon lives on (its pid from .heapfs/stats); with -f it is our child."""

    def __init__(self, where, opts=(), env=None, foreground=False):
        where.mkdir()
        self.path = where / "mnt"
        self.path.mkdir()
        self.pool_sock = str(where / "pool.sock")
        conf = where / "heapfs.conf"
        conf.write_text(f'heap "scratch" {{ size = 16M }}\n'
                        f'pool {{ size = 64M  max_process_memory = 32M  '
                        f'socket = "{self.pool_sock}" }}\n')
        cmd = [str(HEAPFS), *(["-f"] if foreground else []), "-c", str(conf), *HEAPFS_OPTS,
               *opts, str(self.path)]
        self.env = dict(os.environ, **(env or {}))
        self.pid, self.child, self.stderr = None, None, where / "stderr"
        if foreground:
            self.child = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                          stderr=open(self.stderr, "w"))
        else:
            r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
            self.stderr.write_text(r.stderr)
            assert r.returncode == 0, r.stderr
        wait_until(lambda: mount_fstype(self.path) == "fuse.heapfs", 10, "the mount")
        self.pid = json.loads((self.path / ".heapfs" / "stats").read_text())["pid"]

    def refuse_one(self):
        """A garbage donor on the pool socket: refused, which the daemon logs."""
        assert offer(self.pool_sock, b"garbage!" * 5).startswith(b"E")

    def stop(self, lazy=False):
        if self.pid is None or not pid_alive(self.pid):
            return
        subprocess.run(["fusermount3", "-uz" if lazy else "-u", str(self.path)], timeout=30)
        wait_until(lambda: not pid_alive(self.pid), 10, "the daemon to exit")
        if self.child:
            assert self.child.wait(timeout=10) == 0


@pytest.fixture
def daemon(tmp_path):
    made = []

    def make(*args, **kw):
        d = Daemon(tmp_path / f"d{len(made)}", *args, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop(lazy=True)


def test_detached_daemon_logs_to_syslog(daemon, syslog):
    path, s = syslog
    d = daemon(env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    d.refuse_one()
    got = received(s)
    assert len(got) == 1, got
    msg = got[0]
    # <PRI>Mmm dd hh:mm:ss heapfs[PID]: MOUNTPOINT: MESSAGE
    assert msg.startswith(f"<{LOG_DAEMON | WARNING}>"), msg
    assert f" heapfs[{d.pid}]: {d.path}: {REFUSED}" in msg, msg
    assert "not a heapfs-donor header" in msg
    d.stop()
    assert d.stderr.read_text() == ""  # the start said nothing: nothing went wrong


def test_log_level_filters(daemon, syslog):
    path, s = syslog
    d = daemon(opts=["-o", "log_level=error"], env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    d.refuse_one()
    assert received(s, deadline=1.0) == []  # a warning, below error
    d.stop()
    d = daemon(opts=["-o", "log_level=warning"], env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    d.refuse_one()
    assert len(received(s)) == 1


def test_foreground_logs_to_stderr_unless_told(daemon, syslog):
    path, s = syslog
    d = daemon(foreground=True, env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    d.refuse_one()
    wait_until(lambda: REFUSED in d.stderr.read_text(), 10, "the refusal on stderr")
    assert d.stderr.read_text().startswith(f"heapfs: {REFUSED}")
    assert received(s, deadline=0.5) == []
    d.stop()
    d = daemon(foreground=True, opts=["-o", "log=syslog"],
               env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    d.refuse_one()
    assert REFUSED in received(s)[0]
    d.stop()
    assert REFUSED not in d.stderr.read_text()


def test_no_log_daemon_and_a_full_one_never_block(daemon, syslog, tmp_path):
    """No socket at all (a host without syslog), and one that never reads: the daemon
    serves on, every refusal is answered at once, and it stops cleanly."""
    d = daemon(env={"HEAPFS_SYSLOG_SOCKET": str(tmp_path / "nobody-listens")})
    for _ in range(20):
        d.refuse_one()
    (d.path / "heaps" / "scratch" / "f").write_bytes(b"still here")
    d.stop()
    path, s = syslog
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # fills after a few messages
    d = daemon(env={"HEAPFS_SYSLOG_SOCKET": str(path)})
    t0 = time.monotonic()
    for _ in range(600):  # past the queue of any host (net.unix.max_dgram_qlen: 10 here, 512 by default)
        d.refuse_one()
    # 600 refusals, each answered: the daemon never waited on its log (a blocking send
    # into the full queue would stall the pool thread here until the test timed out)
    assert (d.path / "heaps" / "scratch").is_dir()
    assert time.monotonic() - t0 < 60
    got = len(received(s, want=1000, deadline=1.0))
    assert 0 < got < 600  # some made it, the rest dropped
    d.stop()


@pytest.mark.parametrize("opt,why", [("log=journal", "-o log=journal: stderr or syslog"),
                                     ("log_level=loud", "-o log_level=loud: one of error")])
def test_bad_log_options_exit_2(tmp_path, opt, why):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([str(HEAPFS), "-f", "-o", opt, str(mnt)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert mount_fstype(mnt) is None
