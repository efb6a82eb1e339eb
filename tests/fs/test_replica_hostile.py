"""Replication facing a hostile or broken partner (issue 16, "Every input is hostile"): the
fs side of the link (fs/repl/) with two real daemons.  A promote racing the records it
receives, a record the mirror cannot apply, what one verify request may cost, names that
are not UTF-8, and a HELLO listing more heaps than fit one buffer.  Run under the ASan and
TSan daemons too (a sanitizer report fails the test)."""
import errno
import json
import os
import threading
import time

from conftest import MIB, wait_until
from test_replica import Pair, partner, secret, wait_state  # noqa: F401 (fixture)


def roles(p):
    return p.a.heap_stats("data")["role"], p.b.heap_stats("data")["role"]


def settled(p, owner, mirror):
    """owner owns data, mirror mirrors it, both connected and done resyncing."""
    def ok():
        try:
            return (owner.heap_stats("data")["role"] == "owner" and
                    mirror.heap_stats("data")["role"] == "mirror" and
                    partner(owner)["state"] == "connected" and
                    partner(mirror)["state"] == "connected")
        except OSError:
            return False
    wait_until(ok, 30, "roles settled")


def test_promote_force_while_records_stream(mount_factory, secret):
    """The mirror applies a stream of records on its receive thread while `promote --force`
    on a FUSE worker ends its applier (repl.c "Locking", r->alock): nothing is applied to
    the heap once it is owned, no applier is freed under its user (TSan, ASan), and after
    each takeover the pair settles with equal copies.  Twelve rounds, the roles swapping;
    writes of up to 1 MiB keep the mirror's receive thread busy applying, so the promote
    lands in the middle of a record."""
    p = Pair(mount_factory, secret, mode="async")
    owner, mirror = p.a, p.b
    for rnd in range(12):
        stop = threading.Event()
        wrote = [0]
        problems = []

        def writer(m=owner):
            d = m.heap("data")
            while not stop.is_set():
                n = wrote[0]
                try:
                    with open(d / f"f{n % 40}", "wb") as f:
                        f.write(bytes([n % 251]) * (MIB // 4 * (1 + n % 4) - n % 3000))
                    if n % 7 == 0:
                        os.truncate(d / f"f{n % 40}", n % 100)
                    wrote[0] += 1
                except OSError as e:  # taken over: read-only here now
                    if e.errno != errno.EROFS:
                        problems.append(e)
                    return

        t = threading.Thread(target=writer)
        t.start()
        wait_until(lambda: wrote[0] > 10 + rnd, 10, "records flowing")
        r = mirror.ctl("promote", "--force", mirror.path, "data")
        stop.set()
        t.join(30)
        assert not t.is_alive()
        assert r.returncode == 0, r.stderr
        assert not problems, problems
        owner, mirror = mirror, owner
        settled(p, owner, mirror)
        (owner.heap("data") / "after").write_bytes(b"%d" % rnd)  # the new owner writes
        wait_until(lambda: p.verify(owner)["differences"] == 0, 10, "copies equal")
    assert partner(owner)["epoch"] >= 13


def test_record_the_mirror_cannot_apply_resyncs(mount_factory, secret):
    """The owner allows more inodes than the mirror's copy of the heap may hold (the
    mirror derives its limit from the size: 1024 for 1M).  The create the mirror refuses
    is answered with an error ack (not -ENOSPC, which would mean "give the write back"),
    the mirror says why once and applies nothing after it, the owner resyncs the whole
    heap (refused too while it does not fit); once the owner is back under the limit the
    copies agree."""
    p = Pair(mount_factory, secret, mode="sync", size="1M", extra_a="inodes = 4000")
    d = p.a.heap("data")
    for k in range(1100):
        (d / f"n{k}").write_bytes(b"")
    wait_until(lambda: "a change was refused" in p.a.stderr_text(), 10, "owner told")
    fails = [ln for ln in p.b.stderr_text().splitlines()
             if ln.startswith("heapfs: partner: a change to data")]
    assert len(fails) == 1, fails  # once, with the applier's reason
    for k in range(1100 - 200, 1100):
        os.unlink(d / f"n{k}")
    (d / "last").write_bytes(b"x" * 5000)
    wait_until(lambda: (p.b.heap("data") / "last").exists() and
               len(os.listdir(p.b.heap("data"))) == 901, 30, "mirror whole again")
    wait_state(p.a, "connected", 30)
    p.verify()
    assert p.b.proc.poll() is None and p.a.proc.poll() is None
