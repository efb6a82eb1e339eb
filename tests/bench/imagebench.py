#!/usr/bin/python3
"""imagebench — heap images against cp, in one run.

    imagebench.py --heapfs build/fs/heapfs --heapfsctl build/fs/ctl/heapfsctl
                  [--size 1G] [--dir /var/tmp] [--repeat 3]

A heap of --size holding --size of files (16 files) is saved with `heapfsctl save` (a
live save: snapshot, stream through the mount, fsync, rename) into a directory on --dir,
and restored by mounting heapfs with `image =` pointing at it (time from starting the
daemon until the mount is up, less the time an imageless mount takes).  The baseline is
`cp` of one tmpfs file of the same size into the same directory followed by fsync (the
save fsyncs too), and `cp` of that file back into the tmpfs.  Medians of --repeat runs;
ratios heapfs/cp (target >= 0.8 both ways).  Also the daemon's peak RSS (VmHWM) after a
restore, against one that was filled by writing the same files: a restore must not hold
the image and the heap at once beyond a bounded buffer.
Needs root (mount).  Everything is unmounted and removed on the way out.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsbench import MIB, is_mounted, parse_size  # noqa: E402  (one copy of the helpers)


def wait_mounted(path, proc, deadline=120):
    end = time.monotonic() + deadline
    while not is_mounted(path):
        if proc.poll() is not None:
            raise SystemExit(f"heapfs exited {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > end:
            raise SystemExit("heapfs did not come up")
        time.sleep(0.002)


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Daemon:
    def __init__(self, heapfs, cfg, mnt):
        self.mnt = mnt
        t0 = time.monotonic()
        self.proc = subprocess.Popen([heapfs, "-f", "-c", cfg, mnt], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_mounted(mnt, self.proc)
        self.up = time.monotonic() - t0

    def stop(self):
        # right after mounting the daemon's readahead helper may still be looking at the
        # mountpoint (EBUSY for a moment)
        for _ in range(100):
            if subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"cannot unmount {self.mnt}")
        rc = self.proc.wait(120)
        if rc != 0:
            raise SystemExit(f"heapfs exited {rc}: {self.proc.stderr.read()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heapfs", required=True)
    ap.add_argument("--heapfsctl", required=True)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    size = parse_size(a.size)
    nfiles, piece = 16, size // 16
    top = tempfile.mkdtemp(prefix="heapfs-imagebench-", dir=a.dir)
    shm = os.path.join(top, "tmpfs")
    mnt = os.path.join(top, "mnt")
    os.mkdir(shm)
    os.mkdir(mnt)
    img = os.path.join(top, "heap.img")
    cfg = os.path.join(top, "bench.conf")
    cfg_img = os.path.join(top, "bench-img.conf")
    with open(cfg, "w") as f:
        f.write(f'heap "b" {{ size = {size}  min_block = 4K }}\n')
    with open(cfg_img, "w") as f:
        f.write(f'heap "b" {{ size = {size}  min_block = 4K  image = "{img}" }}\n')
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + 64 * MIB}", "tmpfs", shm],
                   check=True)
    res = {k: [] for k in ("cp_out", "save", "cp_in", "restore")}
    hwm = {}
    try:
        block = os.urandom(MIB)
        src = os.path.join(shm, "f")
        with open(src, "wb") as f:
            for _ in range(size // MIB):
                f.write(block)
        def fill(block):
            for k in range(nfiles):
                with open(os.path.join(mnt, "heaps/b", f"f{k}"), "wb") as f:
                    for _ in range(piece // MIB):
                        f.write(block)

        d = Daemon(a.heapfs, cfg, mnt)
        fill(block)
        hwm["written"] = hwm_kib(d.proc.pid)
        dst = os.path.join(top, "cp.bin")

        def settle():
            # neither side pays for the other's writeback or for freeing old files
            for p in (dst, img):
                if os.path.exists(p):
                    os.unlink(p)
            subprocess.run(["sync"], check=True)

        def cp_out():
            t0 = time.monotonic()
            shutil.copyfile(src, dst)
            fd = os.open(dst, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            res["cp_out"].append(time.monotonic() - t0)

        def save():
            t0 = time.monotonic()
            subprocess.run([a.heapfsctl, "save", mnt, "b", img], check=True,
                           stdout=subprocess.DEVNULL)
            res["save"].append(time.monotonic() - t0)

        for r in range(a.repeat):  # alternate which goes first
            for job in ((cp_out, save) if r % 2 == 0 else (save, cp_out)):
                settle()
                job()
        settle()
        save()  # the image the restores read
        shutil.copyfile(src, dst)
        for r in range(a.repeat):
            os.unlink(src)
            t0 = time.monotonic()
            shutil.copyfile(dst, src)
            res["cp_in"].append(time.monotonic() - t0)
        d.stop()
        base, base_down = [], []
        res["unmount"] = []
        for r in range(a.repeat):
            e = Daemon(a.heapfs, cfg, mnt)
            base.append(e.up)
            fill(block)  # the same files, no image: what tearing a full heap down costs
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            e.stop()
            base_down.append(time.monotonic() - t0)
            e = Daemon(a.heapfs, cfg_img, mnt)
            res["restore"].append(e.up)
            hwm["restored"] = hwm_kib(e.proc.pid)
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            e.stop()  # saves the image again (image =), straight from heap memory
            res["unmount"].append(time.monotonic() - t0)
        empty = statistics.median(base)
        empty_down = statistics.median(base_down)
        mib = size / MIB

        def rate(k, less=0.0):
            return mib / max(statistics.median(res[k]) - less, 1e-9)

        print(f"imagebench: {a.size} heap of {nfiles} files, image in {a.dir} "
              f"(median of {a.repeat})")
        print(f"{'job':<22} {'heapfs MiB/s':>13} {'cp MiB/s':>10} {'ratio':>7} {'target':>7}")
        for job, ours, theirs in (("save at unmount", rate("unmount", empty_down),
                                   rate("cp_out")),
                                  ("heapfsctl save (live)", rate("save"), rate("cp_out")),
                                  ("restore at mount", rate("restore", empty), rate("cp_in"))):
            print(f"{job:<22} {ours:>13.0f} {theirs:>10.0f} {ours / theirs:>7.2f} {0.8:>7.2f}")
        print(f"(cp to the directory includes its fsync, as the save does; an imageless "
              f"mount took {empty * 1000:.0f} ms and is taken off the restore, an unmount of the same "
              f"files without an image {empty_down * 1000:.0f} ms off the save at unmount)")
        print(f"daemon peak RSS: {hwm['restored'] // 1024} MiB after restoring, "
              f"{hwm['written'] // 1024} MiB after writing the same files "
              f"(image {os.path.getsize(img) // MIB} MiB)")
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt])
        if is_mounted(shm):
            subprocess.run(["umount", shm])
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
