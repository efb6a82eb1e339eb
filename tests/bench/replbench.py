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
5. CPU seconds per GiB written (utime + stime from /proc/PID/stat of each daemon over the
   rounds of 1.): the owner's and the mirror's for async and sync, against the owner's
   for the unreplicated heap (targets: owner <= 1.5x, mirror <= 1.0x).
6. A libheapfs client's release of a written 1 MiB range: median time per release in a
   `replicate = sync` direct_map heap, against one that is not replicated.
7. The two ways of a full resync (issue 21), each on freshly started daemons: the live
   pre-copy (the default) and the fork's frozen snapshot (HEAPFS_RESYNC_FORK=1): MiB/s,
   and the longest 1 MiB write() to another heap of the owner while it ran.
Needs root (mount).  Everything is unmounted and removed on the way out.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
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
    def __init__(self, heapfs, tmp, name, text, env=None):
        self.env = env
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
                                     stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, **(self.env or {})))
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


def cpu_s(pid):
    """utime + stime of process pid, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def release_times(heapfs_mod, path, n, rounds):
    """Median seconds of heapfs_release(written) of a mapped, written n-byte range."""
    data = os.urandom(n)
    with open(path, "wb") as f:
        f.write(bytes(n))  # blocks, not a hole: a range with a hole maps as ENODATA
    times = []
    with open(path, "r+b") as f:
        for _ in range(rounds):
            m = heapfs_mod.Mapping(heapfs_mod.connection(f), f, 0, n, True)
            m.__enter__()[:] = data
            t0 = time.monotonic()
            m.release(True)
            times.append(time.monotonic() - t0)
    return statistics.median(times)


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


# The writer beside a full resync (7): a steady 16 MiB/s.  An unthrottled async writer
# (about 250 MiB/s onto the link here) outruns it: the change log kept while the heap
# is copied overflows (LOG_MAX, 128 MiB) and the resync starts over, again and again
# (README "Replication": a resync finishes only while the link outpaces the writes).
WRITER_MIBS = 16


def timed_resync(a, size):
    """Seconds from the partner's start until owner a says connected again after a full
    resync of about size bytes, and a's partner status then."""
    t0 = time.monotonic()
    wait(lambda: a.partner()["state"] == "resyncing" or
         a.partner()["resync_total"] >= size, 60, "resync start")
    wait(lambda: a.partner()["state"] == "connected", 600, "full resync")
    return time.monotonic() - t0, a.partner()


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
    heaps += 'heap "dsync" { size = 64M replicate = sync direct_map = true }\n'
    heaps += 'heap "dnone" { size = 64M direct_map = true }\n'
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
        cpu = {m: [0.0, 0.0] for m in ("none", "async", "sync")}  # owner, mirror: seconds
        for rnd in range(o.rounds + 1):
            for m in runs:
                f = os.path.join(a.mnt, "heaps", m, "f") if m != "plain" else \
                    os.path.join(c.mnt, "heaps", "sync", "f")
                c0 = (cpu_s(a.proc.pid), cpu_s(b.proc.pid))
                r = write_seq(f, size, m == "async")
                if m != "none":  # the mirror's work may trail the last write a little
                    own = c if m == "plain" else a
                    wait(lambda: own.partner()["lag_bytes"] == 0, 60, "mirror caught up")
                if rnd:
                    runs[m].append(r)
                    if m in cpu:
                        cpu[m][0] += cpu_s(a.proc.pid) - c0[0]
                        cpu[m][1] += cpu_s(b.proc.pid) - c0[1]
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

        gib = o.rounds * size / (1 << 30)
        base = cpu["none"][0] / gib
        print(f"  cpu s/GiB: none owner {base:.3f}")
        for m in ("async", "sync"):
            ow, mi = cpu[m][0] / gib, cpu[m][1] / gib
            print(f"  cpu s/GiB: {m} owner {ow:.3f} ({ow / base:.2f}x, target <= 1.5x) "
                  f"mirror {mi:.3f} ({mi / base:.2f}x, target <= 1.0x)")

        # 6: a libheapfs client's release of a written 1 MiB range
        sys.path.insert(0, str(Path(o.heapfs).resolve().parent.parent / "python"))
        import heapfs as heapfs_mod  # noqa: E402  (build/python: ctypes over libheapfs)
        rel = {h: release_times(heapfs_mod, os.path.join(a.mnt, "heaps", h, "r"), MIB,
                                 10 if o.rounds == 1 else 50) for h in ("dnone", "dsync")}
        print(f"  direct release of 1 MiB: sync {rel['dsync'] * 1e3:.3f} ms, unreplicated "
              f"{rel['dnone'] * 1e3:.3f} ms ({rel['dsync'] / rel['dnone']:.1f}x)")

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
        took, st = timed_resync(a, size)
        print(f"  full resync: {st['resync_done'] / MIB:.0f} MiB in {took:.2f} s = "
              f"{st['resync_done'] / MIB / took:.1f} MiB/s (from the partner's start)")

        # 7: live pre-copy against the fork's snapshot, with a writer beside
        for how, env in (("live", {}), ("fork", {"HEAPFS_RESYNC_FORK": "1"})):
            for n in nodes:
                n.stop(kill=True)
            a.env = env
            a.start()
            b.start()
            wait(lambda: a.partner()["state"] == "connected", 60, "pairing")
            write_seq(os.path.join(a.mnt, "heaps", "sync", "f"), size, False)
            b.stop(kill=True)
            wait(lambda: a.partner()["state"] == "degraded", 60, "degraded")
            worst, done = [0.0], [False]

            def writer():  # 1 MiB writes at WRITER_MIBS MiB/s
                buf = os.urandom(MIB)
                fd = os.open(os.path.join(a.mnt, "heaps", "async", "w"),
                             os.O_WRONLY | os.O_CREAT, 0o644)
                k, t0 = 0, time.monotonic()
                while not done[0]:
                    t = time.monotonic()
                    os.pwrite(fd, buf, (k % 64) * MIB)
                    worst[0] = max(worst[0], time.monotonic() - t)
                    k += 1
                    time.sleep(max(0.0, t0 + k / WRITER_MIBS - time.monotonic()))
                os.close(fd)
            th = threading.Thread(target=writer)
            th.start()
            time.sleep(0.2)
            worst[0] = 0.0
            b.start()
            took, st = timed_resync(a, size)
            done[0] = True
            th.join()
            print(f"  resync {how}: {st['resync_done'] / MIB:.0f} MiB in {took:.2f} s = "
                  f"{st['resync_done'] / MIB / took:.1f} MiB/s, longest write beside "
                  f"{worst[0] * 1e3:.1f} ms")
    finally:
        for n in nodes:
            n.stop(kill=True)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
