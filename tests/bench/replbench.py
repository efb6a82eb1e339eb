#!/usr/bin/python3
"""replbench — replication to a partner mount (issue 9), both mounts on loopback, one run.

    replbench.py --heapfs build/fs/heapfs [--size 1G] [--port 23400]

1. Sequential 1 MiB writes of --size into a replicated heap (`replicate = sync` and
   `async`; async includes the fsync that waits for the partner) against the same heap
   with `replicate = none` (same daemons, same pairing), as ratios (targets: async >= 0.8,
   sync >= 0.6).
2. Failure notice: the partner is SIGSTOPped; time until the owner reports `degraded`,
   against `timeout`.
3. Resync after an 8 MiB change to a 128 MiB heap while the partner was stopped: bytes
   sent on the link once it is back, against the bytes changed (target <= 1.25x).
4. Full resync: the partner restarts empty and gets the whole --size heap; MiB/s.
Needs root (mount).  Everything is unmounted and removed on the way out.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsbench import MIB, is_mounted, parse_size  # noqa: E402  (one copy of the helpers)


def wait(cond, deadline, what):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"replbench: timed out waiting for {what}")
        time.sleep(0.005)


class Node:
    def __init__(self, heapfs, tmp, name, text):
        self.mnt = os.path.join(tmp, name)
        os.makedirs(self.mnt, exist_ok=True)
        self.cfg = os.path.join(tmp, name + ".conf")
        with open(self.cfg, "w") as f:
            f.write(text)
        self.heapfs = heapfs
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.heapfs, "-f", "-c", self.cfg, self.mnt],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait(lambda: is_mounted(self.mnt), 60, f"mount {self.mnt}")

    def partner(self):
        with open(os.path.join(self.mnt, ".heapfs", "partner")) as f:
            return json.load(f)

    def stop(self, kill=False):
        if self.proc.poll() is None and kill:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_seq(path, size, fsync):
    buf = os.urandom(MIB)
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(size // MIB):
        os.write(fd, buf)
    if fsync:
        os.fsync(fd)
    os.close(fd)
    return size / MIB / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heapfs", required=True)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--port", type=int, default=23400 + os.getpid() % 500 * 4)
    ap.add_argument("--rounds", type=int, default=3)
    o = ap.parse_args()
    size = parse_size(o.size)
    heap = 1 << (2 * size - 1).bit_length()  # room for the file and a bit more
    pa, pb = o.port, o.port + 1
    tmp = tempfile.mkdtemp(prefix="replbench.")
    secret = os.path.join(tmp, "secret")
    with open(secret, "w") as f:
        f.write("replbench\n")
    os.chmod(secret, 0o600)

    def partner(node, me, peer, extra=""):
        return (f'partner {{ node = "{node}" listen = "127.0.0.1:{me}" '
                f'connect = "127.0.0.1:{peer}" secret_file = "{secret}" timeout = 1s '
                f'{extra} }}\n')

    heaps = "".join(f'heap "{m}" {{ size = {heap} replicate = {m} }}\n'
                    for m in ("none", "async", "sync"))
    heaps += 'heap "small" { size = 128M replicate = sync }\n'
    a = Node(o.heapfs, tmp, "a", heaps + partner("a", pa, pb))
    b = Node(o.heapfs, tmp, "b", partner("b", pb, pa))
    nodes = [a, b]
    # a second pair with encrypt = false: the sync writes of the (encrypted) first pair
    # against it, in the same rounds
    pc, pd = pa + 2, pa + 3
    c = Node(o.heapfs, tmp, "c", f'heap "sync" {{ size = {heap} replicate = sync }}\n' +
             partner("c", pc, pd, "encrypt = false"))
    nodes.append(c)
    d = Node(o.heapfs, tmp, "d", partner("d", pd, pc, "encrypt = false"))
    nodes.append(d)
    try:
        wait(lambda: all(n.partner()["state"] == "connected" for n in nodes), 60, "pairing")
        # A warm-up pass first: on this VM the first touch of guest memory is what costs
        # (the kernel zeroing pages the host backs lazily: ~30 % of all CPU in a profile),
        # and the mirror touches its own copy too.  Then interleaved rounds, medians.
        runs = {m: [] for m in ("none", "async", "sync", "plain")}
        for rnd in range(o.rounds + 1):
            for m in runs:
                f = os.path.join(a.mnt, "heaps", m, "f") if m != "plain" else \
                    os.path.join(c.mnt, "heaps", "sync", "f")
                r = write_seq(f, size, m == "async")
                if rnd:
                    runs[m].append(r)
                os.unlink(f)
        rate = {m: statistics.median(v) for m, v in runs.items()}
        print(f"replbench: 1 MiB writes of {size // MIB} MiB, median of {o.rounds} "
              f"interleaved rounds after a warm-up round (MiB/s)")
        for m in ("none", "async", "sync"):
            line = f"  {m:5}: {rate[m]:8.1f} MiB/s  (rounds: " + \
                ", ".join(f"{r:.0f}" for r in runs[m]) + ")"
            if m != "none":
                target = 0.8 if m == "async" else 0.6
                line += f"  ratio {rate[m] / rate['none']:.2f}x (target >= {target}x)"
            print(line)
        enc = a.partner()["cipher"]
        print(f"  sync writes encrypted ({enc}) {rate['sync']:8.1f} MiB/s, encrypt = false "
              f"{rate['plain']:8.1f} MiB/s: ratio {rate['sync'] / rate['plain']:.2f}x "
              f"(target >= 0.9x)")
        for n in (c, d):
            n.stop()
        nodes.remove(c)
        nodes.remove(d)

        # 3 (with 2 inside): an 8 MiB change while the partner is stopped
        small = os.path.join(a.mnt, "heaps", "small", "f")
        write_seq(small, 96 * MIB, False)
        b.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with open(small, "r+b") as f:  # the first write waits at most `timeout`
            for k in range(8):
                f.seek(k * 12 * MIB)
                f.write(os.urandom(MIB))
        wait(lambda: a.partner()["state"] == "degraded", 30, "degraded")
        notice = time.monotonic() - t0
        print(f"  failure noticed after {notice:.2f} s (timeout 1.00 s, ratio "
              f"{notice / 1.0:.2f}x)")
        sent0 = a.partner()["sent_bytes"]
        b.proc.send_signal(signal.SIGCONT)
        wait(lambda: a.partner()["state"] == "connected", 60, "resync")
        st = a.partner()
        sent = st["sent_bytes"] - sent0
        print(f"  resync after an 8 MiB change to a 128 MiB heap: {sent} bytes sent, "
              f"resync_total {st['resync_total']} ({sent / (8 * MIB):.3f}x the change, "
              f"target <= 1.25x)")

        # 4: full resync of --size to a partner that restarted empty
        write_seq(os.path.join(a.mnt, "heaps", "sync", "f"), size, False)
        b.stop(kill=True)
        b.start()
        t0 = time.monotonic()
        wait(lambda: a.partner()["state"] == "resyncing" or
             a.partner()["resync_total"] >= size, 60, "resync start")
        wait(lambda: a.partner()["state"] == "connected", 600, "full resync")
        took = time.monotonic() - t0
        st = a.partner()
        print(f"  full resync: {st['resync_done'] / MIB:.0f} MiB in {took:.2f} s = "
              f"{st['resync_done'] / MIB / took:.1f} MiB/s (from the partner's start)")
    finally:
        for n in nodes:
            n.stop(kill=True)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
