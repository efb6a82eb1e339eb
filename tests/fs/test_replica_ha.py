"""Replication under a cluster manager (issue 19): demote, `partner { managed = true }`,
the `on_peer_lost` program and its gate on sync writes, and the promotion score in
.heapfs/partner.  Two real daemons on this host, as in test_replica.py; the Pacemaker
scenarios themselves are in tests/cluster/test_cluster.py."""
import errno
import json
import os
import threading
import time

import pytest

from conftest import expect_errno, read_daemon, wait_until
from test_replica import Pair, config, pairs, partner, port_pair, secret, wait_state  # noqa: F401


def score(m):
    return partner(m)["score"]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_demote_keeps_the_data_and_lets_the_partner_take_over(pairs):
    p = pairs(mode="sync")
    A, B = p.a.heap("data"), p.b.heap("data")
    write(A / "f", b"written on a")
    assert score(p.a) == 100 and score(p.b) == 75
    # b may not take a heap its connected partner owns
    r = p.b.ctl("promote", p.b.path, "data")
    assert r.returncode == 1 and "connected" in r.stderr
    r = p.a.ctl("demote", p.a.path, "data")
    assert r.returncode == 0 and r.stdout == "demoted data\n", r.stderr
    assert p.a.heap_stats("data")["role"] == "mirror"
    assert read_daemon(A / "f") == b"written on a"  # kept
    expect_errno(errno.EROFS, write, A / "g", b"no")
    # nobody owns it now: b is promoted while connected, and a mirrors it
    wait_until(lambda: p.b.ctl("promote", p.b.path, "data").returncode == 0, 10,
               "b promoted once a said it no longer owns data")
    assert p.b.heap_stats("data")["role"] == "owner"
    write(B / "g", b"written on b")
    wait_state(p.a, "connected", 15)
    wait_until(lambda: os.path.exists(A / "g"), 15, "a mirrors b")
    assert read_daemon(A / "f") == b"written on a"
    assert score(p.b) == 100
    wait_until(lambda: score(p.a) == 75, 10, "a is a whole mirror again")
    p.verify(p.b)
    p.clean()


def test_demote_errors(pairs, mount_factory):
    p = pairs(mode="sync")
    r = p.a.ctl("demote", p.a.path, "nosuch")
    assert r.returncode == 1 and "no replicated heap nosuch" in r.stderr
    r = p.b.ctl("demote", p.b.path, "data")  # a mirror already: nothing to do
    assert r.returncode == 0
    assert p.b.heap_stats("data")["role"] == "mirror" and p.a.heap_stats("data")["role"] == "owner"
    alone = mount_factory()
    r = alone.ctl("demote", alone.path)
    assert r.returncode == 1 and "no partner section" in r.stderr
    write(p.a.heap("data") / "still", b"a still owns it")  # nothing was lost on the way
    p.verify()


def test_demote_on_a_split_brain_side_stays_split(pairs):
    p = pairs(mode="sync", relay=True, failover_b=True)
    A, B = p.a.heap("data"), p.b.heap("data")
    p.cut()
    wait_until(lambda: p.b.heap_stats("data")["role"] == "owner", 10, "b took over")
    write(A / "from-a", b"a")
    write(B / "from-b", b"b")
    p.heal()
    for m in (p.a, p.b):
        wait_state(m, "split-brain", 15)
    r = p.b.ctl("demote", p.b.path, "data")
    assert r.returncode == 0, r.stderr
    assert p.b.heap_stats("data")["role"] == "mirror"
    time.sleep(2)  # a HELLO went both ways: still nothing merged
    for m in (p.a, p.b):
        assert partner(m)["state"] == "split-brain"
        assert score(m) == 0
    assert read_daemon(B / "from-b") == b"b" and not (B / "from-a").exists()
    r = p.a.ctl("promote", "--discard-peer", p.a.path, "data")
    assert r.returncode == 0, r.stderr
    for m in (p.a, p.b):
        wait_state(m, "connected", 15)
    wait_until(lambda: (B / "from-a").exists() and not (B / "from-b").exists(), 15,
               "b holds a's copy")
    p.verify()


def managed_cfg(node, me, peer, secret, extra=""):
    cfg = config(node, me, peer, secret, 'heap "data" { size = 64M replicate = sync }')
    return cfg[:cfg.rindex("}")] + f" managed = true {extra} }}\n"


def test_managed_both_start_as_mirrors_and_promote_decides(mount_factory, secret):
    pa, pb = port_pair()
    a = mount_factory(managed_cfg("a", pa, pb, secret), name="ma")
    b = mount_factory(managed_cfg("b", pb, pa, secret), name="mb")
    for m in (a, b):
        wait_state(m, "connected")
    for m in (a, b):  # the same config on both: no clash, nobody owns it yet
        assert m.heap_stats("data")["role"] == "mirror"
        expect_errno(errno.EROFS, write, m.heap("data") / "x", b"no")
        j = partner(m)
        assert j["managed"] is True and "reason" not in j
    wait_until(lambda: score(a) == 50 and score(b) == 50, 10, "both empty: either may own it")
    r = a.ctl("promote", a.path, "data")
    assert r.returncode == 0, r.stderr
    write(a.heap("data") / "x", b"a owns it")
    wait_until(lambda: score(b) == 75, 15, "b a whole mirror")
    assert score(a) == 100
    assert read_daemon(b.heap("data") / "x") == b"a owns it"
    r = a.ctl("verify", a.path)
    assert r.returncode == 0, r.stdout


def test_managed_refuses_auto_failover(tmp_path, secret):
    from conftest import HEAPFS
    import subprocess
    pa, pb = port_pair()
    cfg = tmp_path / "bad.conf"
    cfg.write_text(managed_cfg("a", pa, pb, secret, "auto_failover = true"))
    r = subprocess.run([str(HEAPFS), "--check-config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "auto_failover = true and managed = true" in r.stderr, r.stderr
    cfg.write_text(managed_cfg("a", pa, pb, secret, "on_peer_lost_timeout = 10ms"))
    r = subprocess.run([str(HEAPFS), "--check-config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "on_peer_lost_timeout = 10ms is shorter" in r.stderr, r.stderr


def hook_pair(pairs, tmp_path, code, delay=1.5, timeout="20s"):
    """A pair whose owner a has an on_peer_lost program: it logs its arguments, answers
    `code` after `delay` seconds (0 at once for "connected")."""
    log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {log}\n'
                    f'[ "$3" = connected ] && exit 0\nsleep {delay}\nexit {code}\n')
    hook.chmod(0o755)
    p = pairs(mode="sync", relay=True,
              extra_partner_a=f'on_peer_lost = "{hook}" on_peer_lost_timeout = {timeout}')
    return p, log


def timed_write(path, data, out):
    t0 = time.monotonic()
    try:
        write(path, data)
        out["err"] = 0
    except OSError as e:
        out["err"] = e.errno
    out["took"] = time.monotonic() - t0


def test_on_peer_lost_allows_then_the_write_is_acknowledged(pairs, tmp_path):
    p, log = hook_pair(pairs, tmp_path, 4)
    A = p.a.heap("data")
    write(A / "before", b"before the cut")
    p.cut()
    wait_state(p.a, "degraded")
    out = {}
    timed_write(A / "during", b"while the hook decides", out)
    assert out["err"] == 0
    wait_until(lambda: "data" in log.read_text(), 10, "the hook ran")
    first = log.read_text().splitlines()[0].split()
    assert first[0] == "data" and first[2] == "degraded" and int(first[1]) >= 1
    assert partner(p.a)["on_peer_lost"] == "open"
    assert p.a.heap_stats("data")["role"] == "owner"
    p.heal()
    wait_state(p.a, "connected", 20)
    wait_until(lambda: "data 1 connected" in log.read_text() or
               any(ln.endswith("connected") for ln in log.read_text().splitlines()),
               10, "the hook told the pair is whole again")
    assert read_daemon(p.b.heap("data") / "during") == b"while the hook decides"
    p.verify()


def test_on_peer_lost_waits_the_sync_write(pairs, tmp_path):
    """A sync write made right as the link goes waits for the program (1.5 s)."""
    p, log = hook_pair(pairs, tmp_path, 7, delay=3)
    A = p.a.heap("data")
    p.cut()
    wait_until(lambda: log.exists(), 10, "the hook started")
    out = {}
    timed_write(A / "during", b"x" * 4096, out)
    assert out["err"] == 0 and out["took"] > 0.5, (out, p.a.stderr_text()[-3000:])
    p.heal()
    wait_state(p.a, "connected", 20)
    p.verify()


def test_on_peer_lost_refuses_the_owner_stops(pairs, tmp_path):
    p, log = hook_pair(pairs, tmp_path, 6)
    A = p.a.heap("data")
    write(A / "before", b"acknowledged before the cut")
    p.cut()
    wait_until(lambda: log.exists(), 10, "the hook started")
    out = {}
    timed_write(A / "during", b"never acknowledged", out)
    assert out["err"] in (errno.EIO, errno.EROFS), out
    wait_until(lambda: p.a.heap_stats("data")["role"] == "mirror", 10, "a demoted itself")
    assert partner(p.a)["on_peer_lost"] == "refused" and score(p.a) == 0
    expect_errno(errno.EROFS, write, A / "after", b"no")
    assert read_daemon(A / "before") == b"acknowledged before the cut"
    assert "does not allow going on alone" in p.a.stderr_text()
    # the operator (or the cluster) decides: a is promoted again once the pair is back
    p.heal()
    wait_state(p.a, "connected", 20)
    r = p.a.ctl("promote", p.a.path, "data")
    assert r.returncode == 0, r.stderr
    # (the promote reconnects: the pair is whole once b mirrors a again)
    try:
        wait_until(lambda: p.b.heap_stats("data")["role"] == "mirror" and
                   partner(p.a)["state"] == "connected" and
                   p.a.ctl("verify", p.a.path).returncode == 0, 20, "the pair whole again")
    except AssertionError:
        raise AssertionError((partner(p.a), partner(p.b), p.a.ctl("verify", p.a.path).stdout,
                              p.a.stderr_text()[-1500:], p.b.stderr_text()[-1500:]))
    assert read_daemon(p.b.heap("data") / "before") == b"acknowledged before the cut"
    p.verify()


def test_on_peer_lost_timeout_kills_the_program(pairs, tmp_path):
    p, log = hook_pair(pairs, tmp_path, 4, delay=100, timeout="1s")
    p.cut()
    wait_until(lambda: p.a.heap_stats("data")["role"] == "mirror", 15,
               "a demoted itself after the timeout")
    assert "no answer in 1000ms" in p.a.stderr_text()
    p.heal()
    wait_state(p.a, "connected", 20)


def test_restarted_empty_mirror_has_no_score(mount_factory, secret):
    """A managed node that comes back empty is not promotable until it is whole again; a
    whole mirror whose owner is gone scores 10 (sync)."""
    pa, pb = port_pair()
    a = mount_factory(managed_cfg("a", pa, pb, secret), name="ma")
    b = mount_factory(managed_cfg("b", pb, pa, secret), name="mb")
    for m in (a, b):
        wait_state(m, "connected")
    assert a.ctl("promote", a.path, "data").returncode == 0
    write(a.heap("data") / "f", b"x" * 100000)
    wait_until(lambda: score(b) == 75, 15, "b whole")
    # b goes and comes back empty, its partner away (a's link cut by b's absence)
    b.stop()
    wait_state(a, "degraded")
    assert score(a) == 100
    lone, nobody = port_pair()  # b2 reaches nobody, and nobody reaches it
    b2 = mount_factory(managed_cfg("b", lone, nobody, secret), name="mb2")
    assert partner(b2)["heaps"] == {"data": "mirror"} and score(b2) == 0
    b2.stop()
    b3 = mount_factory(managed_cfg("b", pb, pa, secret), name="mb3")
    wait_until(lambda: score(b3) == 75, 20, "b whole again")
    assert read_daemon(b3.heap("data") / "f") == b"x" * 100000
    # a's daemon killed: b, a whole sync mirror without its owner, scores 10
    a.proc.kill()
    a.proc.wait(10)
    a.expect_exit = -9
    wait_until(lambda: partner(b3)["state"] == "degraded", 10, "b sees a gone")
    assert score(b3) == 10


def test_promoted_alone_asks_on_peer_lost_first(mount_factory, secret, tmp_path):
    """A mirror promoted with no partner connected goes on alone only once on_peer_lost
    said so: a sync write meanwhile waits for it."""
    log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {log}\nsleep 1.5\nexit 7\n')
    hook.chmod(0o755)
    lone, nobody = port_pair()
    b = mount_factory(managed_cfg("b", lone, nobody, secret,
                                  f'on_peer_lost = "{hook}"'), name="alone")
    assert b.heap_stats("data")["role"] == "mirror"
    assert partner(b)["on_peer_lost"] == "open"
    r = b.ctl("promote", b.path, "data")
    assert r.returncode == 0, r.stderr
    assert partner(b)["on_peer_lost"] == "pending"
    out = {}
    timed_write(b.heap("data") / "f", b"after the answer", out)
    assert out["err"] == 0 and out["took"] > 0.5, out
    assert log.read_text().split() == ["data", "2", "degraded"]
    assert partner(b)["on_peer_lost"] == "open" and score(b) == 100
    assert "on_peer_lost data 2 degraded: exit 7" in b.stderr_text()
