#!/usr/bin/python3
"""clientbench — libheapfs (issue 10) against tmpfs and memcpy, in one run.

    clientbench.py --heapfs build/fs/heapfs --bench build/tests/bench/client-bench
                   [--size 1G] [--tmpfs /dev/shm]

Mounts heapfs in a temporary directory with a config of one heap `bench` (twice --size,
direct_map = true) and a direct_map object segment, runs client-bench (C, see its opening
comment for the jobs) against it and a file in --tmpfs (/dev/shm is a tmpfs), prints its
table, and unmounts.  Needs /dev/fuse and fusermount3 (no root).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsbench import parse_size  # noqa: E402  (one copy of the helpers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heapfs", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--tmpfs", default="/dev/shm")
    a = ap.parse_args()
    size = parse_size(a.size)
    heap = 1 << (2 * size - 1).bit_length()
    top = tempfile.mkdtemp(prefix="heapfs-clientbench-")
    mnt = os.path.join(top, "mnt")
    os.mkdir(mnt)
    conf = os.path.join(top, "heapfs.conf")
    with open(conf, "w") as f:
        f.write(f'heap "bench" {{ size = {heap}  direct_map = true }}\n'
                'objects { size = 16M  direct_map = true  writers = many }\n')
    d = subprocess.Popen([a.heapfs, "-f", "-c", conf, mnt])
    rc = 1
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            sys.exit("clientbench: heapfs did not mount")
        with open(os.path.join(mnt, ".heapfs/stats")) as f:
            pid = json.load(f)["pid"]
        rc = subprocess.call([a.bench, "--mount", mnt, "--tmpfs", a.tmpfs, "--size", str(size),
                              "--daemon-pid", str(pid)])
    finally:
        subprocess.call(["fusermount3", "-u", mnt])
        d.wait(timeout=30)
        shutil.rmtree(top, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
