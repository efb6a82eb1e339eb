"""Issue 11 through the mount: small files written from both CPUs must not split the big
blocks of a `contiguous` heap.  A sequential buddy keeps half of a 256 MiB heap whole after
sixteen 64 KiB files (1 MiB in all); heapfs must too, so a 100 MiB file (one 128 MiB block)
still fits.  The writing process is pinned to CPU 0 and CPU 1 alternately, so the daemon's
threads serve the small files from both CPUs' slots (the wake-up tends to follow the writer).
"""
import hashlib
import os

import pytest

from conftest import KIB, MIB, pattern

SMALL = 16
SMALL_SIZE = 64 * KIB
BIG_SIZE = 100 * MIB


def cpus_to_use():
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs to write from")
    return allowed[:2]


def test_small_files_from_both_cpus_leave_a_big_block(mount_factory):
    m = mount_factory('heap "big" { size = 256M  min_block = 4K  layout = contiguous }\n')
    d = m.heap("big")
    cpus = cpus_to_use()
    before = os.sched_getaffinity(0)
    try:
        for i in range(SMALL):
            os.sched_setaffinity(0, {cpus[i % 2]})
            (d / f"small{i}").write_bytes(pattern(SMALL_SIZE, i))
    finally:
        os.sched_setaffinity(0, before)
    h = m.heap_stats("big")
    assert h["used"] == SMALL * SMALL_SIZE
    # what a sequential buddy leaves: the upper half of the heap untouched
    assert h["largest_free"] >= 128 * MIB, h

    big = d / "big"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for i in range(BIG_SIZE // MIB):
            chunk = pattern(MIB, 1000 + i)
            digest.update(chunk)
            f.write(chunk)
    assert big.stat().st_size == BIG_SIZE
    back = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(MIB):
            back.update(chunk)
    assert back.digest() == digest.digest()
    for i in range(SMALL):
        assert (d / f"small{i}").read_bytes() == pattern(SMALL_SIZE, i)
