#!/usr/bin/python3
"""poolbench — a pool/ file (memory of donor processes) against a heap file, one run.

    poolbench.py --heapfs build/fs/heapfs [--size 2G] [--repeat 3] [--json]

Mounts two heapfs daemons under one temporary directory in /tmp: one with a heap `bench`
of --size (the baseline: memory the daemon maps), one whose pool is --size with
max_process_memory 256M and donors of 256M (so all but 256M of the file lives in donor
processes and is read and written with pread/pwrite on their memfds).  On each, fio
writes a --size file sequentially in 1 MiB writes (psync, a new file: the writes
allocate) and reads it back in 1 MiB reads after evicting it from the page cache (every
read reaches the daemon), --repeat times, alternating heap and pool; the medians count.
Prints MiB/s, the ratio pool/heap (target 0.8 for both) and the pool daemon's peak RSS
(VmHWM) and peak address space (VmPeak), which must stay near max_process_memory plus a
fixed overhead however large the file.  Needs root (mounts), fio and fincore.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsbench import evict, fio, is_mounted, parse_size  # noqa: E402

MIB = 1 << 20
TARGET = 0.8


def log(msg):
    print(f"poolbench: {msg}", file=sys.stderr, flush=True)


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Daemon:
    def __init__(self, heapfs, workdir, name, config):
        self.mnt = workdir / name
        self.mnt.mkdir()
        cfg = workdir / f"{name}.conf"
        cfg.write_text(config)
        self.err = open(workdir / f"{name}.stderr", "w")
        self.proc = subprocess.Popen([heapfs, "-f", "-c", str(cfg), str(self.mnt)],
                                     stderr=self.err)
        until = time.monotonic() + 10
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"heapfs did not mount {self.mnt}")
            time.sleep(0.05)

    def close(self):
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.err.close()
        return rc


def seq(label, path, size):
    log(f"{label}: seq write")
    w = fio("poolbench-w", path, "write", "1M", size)
    if evict(path) != 0:
        raise RuntimeError(f"{path} still in the page cache after eviction")
    log(f"{label}: seq read")
    r = fio("poolbench-r", path, "read", "1M", size)
    path.unlink()
    return w, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heapfs", required=True)
    ap.add_argument("--size", default="2G", help="file, heap and pool size (default 2G)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("fio"):
        log("needs root and fio")
        return 2
    size = parse_size(a.size)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="poolbench-", dir="/tmp"))
    daemons = []
    try:
        heap = Daemon(a.heapfs, work, "heap",
                      f'heap "bench" {{ size = {size} }}\nobjects {{ size = 1M }}\n'
                      f'pool {{ size = 2M  socket = "{work}/heap.sock" }}\n')
        daemons.append(heap)
        ndonors = max(1, (size - 256 * MIB + 256 * MIB - 1) // (256 * MIB))
        pool = Daemon(a.heapfs, work, "pool",
                      f'heap "scratch" {{ size = 16M }}\nobjects {{ size = 1M }}\n'
                      f'pool {{ size = {size}  donor_size = 256M  max_donors = {ndonors}\n'
                      f'       max_process_memory = 256M  socket = "{work}/pool.sock" }}\n')
        daemons.append(pool)
        hfile, pfile = heap.mnt / "heaps" / "bench" / "seq.dat", pool.mnt / "pool" / "seq.dat"
        runs = {"heap": [], "pool": []}
        for rep in range(a.repeat):
            runs["heap"].append(seq(f"heap #{rep + 1}", hfile, size))
            runs["pool"].append(seq(f"pool #{rep + 1}", pfile, size))
        hwm, peak = proc_kib(pool.proc.pid, "VmHWM"), proc_kib(pool.proc.pid, "VmPeak")
        donors = json.loads((pool.mnt / ".heapfs" / "donors").read_text())
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        log(f"failed: {e}")
        return 1
    finally:
        rcs = [d.close() for d in daemons]
        shutil.rmtree(work, ignore_errors=True)
    med = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in runs.items()}
    rows = [{"job": job, "heap": med["heap"][i], "pool": med["pool"][i],
             "ratio": med["pool"][i] / med["heap"][i], "target": TARGET,
             "pass": med["pool"][i] / med["heap"][i] >= TARGET}
            for i, job in enumerate(("seq write 1M", "seq read 1M"))]
    notes = (f"{a.size} file; median of {a.repeat} alternating runs; pool: 256M of the "
             f"daemon's own, {ndonors} donors of 256M; pool daemon VmHWM {hwm // 1024} MiB, "
             f"VmPeak {peak // 1024} MiB (donors at the end: {len(donors['donors'])} "
             f"spawned); {os.cpu_count()} CPUs")
    if a.json:
        print(json.dumps({"jobs": rows, "vmhwm_kib": hwm, "vmpeak_kib": peak,
                          "notes": notes, "runs": runs}, indent=2))
    else:
        print(f"{'job':<14} {'heap MiB/s':>11} {'pool MiB/s':>11} {'pool/heap':>10} "
              f"{'target':>7}")
        for r in rows:
            print(f"{r['job']:<14} {r['heap']:>11.0f} {r['pool']:>11.0f} "
                  f"{r['ratio']:>9.2f}x {r['target']:>6.1f}x {'ok' if r['pass'] else 'MISS'}")
        print(f"({notes})")
    if any(rcs):
        log(f"heapfs exit statuses {rcs}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
