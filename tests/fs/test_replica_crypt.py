"""The partner link is private and tamper-proof (issue 17): two real daemons, real sockets.
A capture of the link between two network namespaces holds no byte of what the owner
wrote (and does with encrypt = false: the capture works); a relay process between the
nodes that flips a bit, drops or replays a frame makes the link drop, the mirror applies
nothing of it, the pair resyncs and `heapfsctl verify` is clean; a recorded handshake
replayed to either side does not pair, nor do two handshakes spliced at a relay; a wrong
secret, a secret file owned by another user and encrypt set differently each give a clear
error on both nodes; a small rekey limit rotates keys under traffic."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HEAPFS, MIB, pattern, read_daemon, unmount, veth_namespaces, wait_until
from test_replica import (config, partner, port_pair, same, secret,  # noqa: F401
                          start_with_bad_secret, wait_state)

RELAY = Path(__file__).with_name("crypt_relay.py")
MARKER = b"CRYPT-MARKER-7f3a9c-the-owner-wrote-this"


def no_encrypt(cfg):
    return cfg[:cfg.rindex("}")] + " encrypt = false }\n"


@pytest.fixture
def crypt_netns():
    """Two network namespaces (names with "crypt" and our pid) joined by a veth pair."""
    with veth_namespaces("crypt", "10.234") as (ns, dev, ip, _):
        yield ns, dev, ip


def ns_pair(mount_factory, secret, ns, ip, encrypt=True, gen=0):
    def cfg(n, me, peer, heaps=""):
        c = (f'{heaps}\npartner {{ node = "{n}" listen = "{me}:7410" connect = "{peer}:7410" '
             f'secret_file = "{secret}" timeout = 1s }}\n')
        return c if encrypt else no_encrypt(c)
    a = mount_factory(cfg("a", ip[0], ip[1], 'heap "data" { size = 16M replicate = sync }'),
                      name=f"a{gen}", prefix=("nsenter", f"--net=/run/netns/{ns[0]}"))
    b = mount_factory(cfg("b", ip[1], ip[0]), name=f"b{gen}",
                      prefix=("nsenter", f"--net=/run/netns/{ns[1]}"))
    for m in (a, b):
        wait_state(m, "connected", 15)
    return a, b


def captured(mount_factory, secret, ns, dev, ip, tmp_path, encrypt, gen):
    """The bytes tcpdump saw on the veth while the owner wrote the marker (sync)."""
    a, b = ns_pair(mount_factory, secret, ns, ip, encrypt, gen)
    pcap = tmp_path / f"crypt{gen}.pcap"
    td = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns[1]}", "tcpdump", "-i", dev[1],
                           "-U", "-s", "0", "-w", str(pcap), "tcp"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # it says so on stderr once it captures
        assert select.select([td.stderr], [], [], 10)[0], "tcpdump started"
        assert b"listening on" in td.stderr.readline()
        body = MARKER * 2000 + b"\n"
        (a.heap("data") / "marked").write_bytes(body)
        with open(a.heap("data") / "small", "wb") as f:  # a record of its own, small
            f.write(MARKER)
            os.fsync(f.fileno())
        assert read_daemon(b.heap("data") / "marked") == body
        wait_until(lambda: pcap.stat().st_size > len(body), 10, "the capture has it")
    finally:
        td.send_signal(signal.SIGINT)
        td.wait(10)
    data = pcap.read_bytes()
    j = partner(a)
    for m in (a, b):
        unmount(m.path)
        m.proc.wait(15)
    return data, j


def test_capture_holds_no_byte_of_the_marker(mount_factory, secret, crypt_netns, tmp_path):
    ns, dev, ip = crypt_netns
    data, j = captured(mount_factory, secret, ns, dev, ip, tmp_path, True, 0)
    assert len(data) > len(MARKER) * 2000, "the capture saw the transfer"
    for k in range(0, len(MARKER) - 8, 4):  # no piece of it either
        assert MARKER[k:k + 8] not in data, MARKER[k:k + 8]
    assert j["cipher"] in ("aes256gcm", "chacha20poly1305") and j["key_rotated"], j
    # the same with encrypt = false: the capture does show it (the test can see it)
    data, j = captured(mount_factory, secret, ns, dev, ip, tmp_path, False, 1)
    assert MARKER in data and j["cipher"] == "none" and j["key_rotated"] is None, j


class RelayProc:
    """crypt_relay.py as a child process (its pid stopped at the end)."""

    def __init__(self, port, target, mode, record=None):
        self.proc = subprocess.Popen([sys.executable, str(RELAY), str(port), str(target), mode]
                                     + ([str(record)] if record else []),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "listening"
        self.lines = []

    def wait_line(self, word, deadline=20):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if not select.select([self.proc.stdout], [], [], 0.2)[0]:
                continue
            ln = self.proc.stdout.readline()
            self.lines.append(ln)
            if word in ln:
                return ln
        raise AssertionError(f"relay never said {word!r}: {self.lines}")

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


def relay_pair(mount_factory, secret, mode, record=None, a_prefix=()):
    """a connects to b only through the relay; b's own connect goes nowhere."""
    pa, pb = port_pair()
    pr, dead = port_pair()
    relay = RelayProc(pr, pb, mode, record)
    a = mount_factory(config("a", pa, pr, secret, 'heap "data" { size = 16M replicate = sync }'),
                      name="a", prefix=a_prefix)
    b = mount_factory(config("b", pb, dead, secret), name="b")
    return relay, a, b, pb


@pytest.mark.parametrize("mode", ["flip", "drop", "replay"])
def test_relay_damage_drops_the_link_and_resyncs(mount_factory, secret, mode):
    relay, a, b, _ = relay_pair(mount_factory, secret, mode)
    try:
        for m in (a, b):
            wait_state(m, "connected", 15)
        A, B = a.heap("data"), b.heap("data")
        body = pattern(2 * MIB, seed=17)
        (A / "f").write_bytes(body)
        relay.wait_line(mode)
        # b opens nothing that was changed, replayed or out of order: it drops the link
        wait_until(lambda: "failed to authenticate" in b.stderr_text(), 15, "b drops it")
        wait_state(a, "connected", 20)
        wait_state(b, "connected", 20)
        wait_until(lambda: same(A, B), 20, "mirror equals the owner")
        assert read_daemon(B / "f") == body
        r = a.ctl("--json", "verify", a.path)
        assert r.returncode == 0 and json.loads(r.stdout)["differences"] == 0, r.stdout
        for m in (a, b):  # nothing damaged was applied, so nothing was refused
            assert "was refused" not in m.stderr_text()
    finally:
        relay.stop()


def test_recorded_handshake_replayed_to_either_side_does_not_pair(mount_factory, secret,
                                                                   tmp_path):
    rec = tmp_path / "hs"
    relay, a, b, pb = relay_pair(mount_factory, secret, "record", rec)
    try:
        for m in (a, b):
            wait_state(m, "connected", 15)
        relay.wait_line("recorded")
        # to b (the acceptor): its fresh nonce makes the recorded proof wrong; it refuses
        # with zeros and closes, and the pair with a stays as it was
        init = Path(str(rec) + ".init").read_bytes()
        with socket.create_connection(("127.0.0.1", pb), timeout=5) as s:
            s.sendall(init)
            got = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        assert got.endswith(b"\0" * 32), got[-40:]  # the all-zero AUTH, then closed
        wait_until(lambda: "failed authentication" in b.stderr_text(), 5, "b refuses it")
        assert partner(b)["state"] == "connected" and partner(b)["peer"] == "a"
        # to a (the initiator): the relay now answers a's connections itself with the
        # acceptor's recorded HELLO and AUTH; a refuses them and stays apart
        port = relay.proc.args[2]
        relay.stop()
        wait_state(a, "degraded", 10)
        ups = a.stderr_text().count("link up with")
        relay = RelayProc(int(port), 1, "fake", rec)
        relay.wait_line("answered")
        wait_until(lambda: 'node "b" failed authentication' in a.stderr_text(), 10,
                   "a refuses the replay")
        time.sleep(1)
        assert partner(a)["state"] != "connected"
        assert a.stderr_text().count("link up with") == ups
    finally:
        relay.stop()


def test_relay_splicing_two_handshakes_cannot_pair(mount_factory, secret):
    """A relay that gives each node another nonce than the other sent (each node then
    shakes hands with the relay): neither proof checks, no pair; through a relay that
    passes bytes as they are, the same two nodes pair."""
    relay, a, b, _ = relay_pair(mount_factory, secret, "splice")
    try:
        relay.wait_line("spliced")
        wait_until(lambda: "failed authentication" in b.stderr_text(), 10, "b refuses")
        wait_until(lambda: "refused our proof" in a.stderr_text(), 10, "a refuses")
        time.sleep(2)
        for m in (a, b):
            assert partner(m)["state"] == "misconfigured", partner(m)
            assert "link up" not in m.stderr_text()
        assert not b.heap("data").exists()
        port = relay.proc.args[2]
        relay.stop()
        relay = RelayProc(int(port), relay.proc.args[3], "pass")
        for m in (a, b):
            wait_state(m, "connected", 20)
    finally:
        relay.stop()


def test_encrypt_mismatch_is_a_clear_error_on_both(mount_factory, secret):
    pa, pb = port_pair()
    a = mount_factory(no_encrypt(config("a", pa, pb, secret,
                                        'heap "data" { replicate = sync }')), name="a")
    b = mount_factory(config("b", pb, pa, secret), name="b")
    for m, mine, other in ((a, "false", "true"), (b, "true", "false")):
        wait_until(lambda: partner(m)["state"] == "misconfigured", 10, "misconfigured")
        assert (f'encrypt = {mine} here but node "{"b" if m is a else "a"}" has '
                f'encrypt = {other}') in partner(m)["reason"], partner(m)
    assert "encrypt = false: the link's frames go in the clear" in a.stderr_text()
    assert not b.heap("data").exists()
    r = a.ctl("partner", a.path)
    assert "cipher   none" in r.stdout, r.stdout


def test_secret_owned_by_another_user_refused(tmp_path, secret):
    os.chown(secret, 65534, 65534)
    r = start_with_bad_secret(tmp_path, secret)
    assert f"{secret}: owned by uid 65534, not by uid {os.geteuid()}" in r.stderr, r.stderr


def test_keys_rotate_under_traffic(mount_factory, secret):
    """A rekey limit of 256 KiB (HEAPFS_REP_REKEY_BYTES, both daemons): writing 8 MiB moves
    the link to new keys many times without a drop; the status counts them."""
    pa, pb = port_pair()
    env = ("env", "HEAPFS_REP_REKEY_BYTES=262144")
    a = mount_factory(config("a", pa, pb, secret, 'heap "data" { size = 32M replicate = sync }'),
                      name="a", prefix=env)
    b = mount_factory(config("b", pb, pa, secret), name="b", prefix=env)
    for m in (a, b):
        wait_state(m, "connected", 15)
    before = partner(b)
    downs = [m.stderr_text().count("link down") for m in (a, b)]  # (the start's duplicate)
    A, B = a.heap("data"), b.heap("data")
    for k in range(8):
        (A / f"f{k}").write_bytes(pattern(MIB, seed=k))
    wait_until(lambda: same(A, B), 20, "mirror equals the owner")
    after = partner(b)
    # (a limit is checked before each frame: a 1 MiB record passes it, the next frame
    # goes under a new key; 8 writes, 8 files of 1 MiB)
    assert after["rekeys"] >= 7 and after["key_rotated"] >= before["key_rotated"], after
    assert [m.stderr_text().count("link down") for m in (a, b)] == downs
    r = b.ctl("partner", b.path)
    assert "rekeyed  " in r.stdout and after["cipher"] in r.stdout, r.stdout
