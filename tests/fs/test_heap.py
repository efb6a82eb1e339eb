"""Heap policies and accounting: ENOSPC, layout, writers, coalescing back to one block,
status JSON, chunks, pin, and the daemon's RSS following what files hold."""
import errno
import os
import subprocess

import pytest

from conftest import (KIB, MIB, expect_errno, held_bytes, next_pow2, pattern,
                      proc_status_kib, round_up, wait_until)
from waiting import open_when_free

SPEC_HEAP_KEYS = {"name", "size", "min_block", "used", "free", "largest_free", "free_blocks",
                  "nonempty_orders", "chunks_committed", "chunks_released", "files",
                  "replicate", "role"}
DESIGN_HEAP_KEYS = SPEC_HEAP_KEYS | {"chunk", "layout", "cache", "writers", "pin",
                                    "metadata_bytes"}


def one_free_block(h):
    order = h["size"].bit_length() - 1
    return (h["used"] == 0 and h["free"] == h["size"] and h["largest_free"] == h["size"]
            and {k: v for k, v in h["free_blocks"].items() if v} == {str(order): 1}
            and h["nonempty_orders"] == [order])


def check_map(m, name):
    """.heapfs/maps/NAME tiles the heap with aligned blocks that add up to the stats."""
    mp, h = m.heap_map(name), m.heap_stats(name)
    assert (mp["name"], mp["size"], mp["min_block"]) == (name, h["size"], h["min_block"])
    pos = used = free = 0
    for off, order, is_free in mp["blocks"]:
        assert off == pos, f"gap or overlap at {pos}: block at {off}"
        assert off % (1 << order) == 0 and (1 << order) >= h["min_block"]
        pos += 1 << order
        if is_free:
            free += 1 << order
        else:
            used += 1 << order
    assert pos == h["size"]
    assert (used, free) == (h["used"], h["free"])
    return mp


def test_enospc_keeps_earlier_bytes_and_neighbour(mount_factory):
    m = mount_factory('heap "small" { size = 4M  min_block = 4K }\n')
    d = m.heap("small")
    neighbour = pattern(200000, 1)
    (d / "neighbour").write_bytes(neighbour)
    free_before = m.heap_stats("small")["free"]
    chunk = pattern(64 * KIB, 2)
    written = 0
    fd = os.open(d / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as ei:
            for _ in range(1000):
                n = os.write(fd, chunk)
                written += n
                assert n == len(chunk) or written == free_before, "short write before full"
        assert ei.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    # every free byte was usable, and what was written before stays
    assert written == free_before
    assert os.stat(d / "big").st_size == written
    data = (d / "big").read_bytes()
    for i in range(0, written, len(chunk)):
        assert data[i:i + len(chunk)] == chunk[:written - i], f"bytes at {i} changed"
    assert (d / "neighbour").read_bytes() == neighbour
    h = m.heap_stats("small")
    assert h["free"] == 0 and h["used"] == h["size"]
    # shell tools see the same: dd fails with ENOSPC, files stay readable
    r = subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd'}", "bs=64k", "count=10"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "No space left on device" in r.stderr
    nfd = os.open(d / "neighbour", os.O_RDWR)
    try:
        expect_errno(errno.ENOSPC, os.posix_fallocate, nfd, 0, 300000)
    finally:
        os.close(nfd)
    assert (d / "neighbour").read_bytes() == neighbour
    os.truncate(d / "neighbour", 300000)  # a hole takes no room: it grows, sparse
    assert (d / "neighbour").read_bytes() == neighbour + bytes(100000)
    os.truncate(d / "neighbour", 200000)
    # freeing space makes writes work again
    os.unlink(d / "big")
    os.unlink(d / "dd")
    m.wait_heap("small", lambda h: h["used"] == held_bytes(d / "neighbour"), "big freed")
    r = subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd'}", "bs=64k", "count=10"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_enospc_fallocate_takes_nothing(mount_factory):
    m = mount_factory('heap "small" { size = 4M  min_block = 4K }\n')
    d = m.heap("small")
    (d / "a").write_bytes(pattern(MIB + 5))
    h0 = m.heap_stats("small")
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"keep")
        expect_errno(errno.ENOSPC, os.posix_fallocate, fd, 0, 4 * MIB)
        assert os.fstat(fd).st_size == 4
        assert os.pread(fd, 10, 0) == b"keep"
    finally:
        os.close(fd)
    h1 = m.heap_stats("small")
    assert h1["used"] == h0["used"] + 4096 and h1["free"] == h0["free"] - 4096


def test_removing_all_files_leaves_one_free_block(mount_factory):
    m = mount_factory('heap "h" { size = 32M  min_block = 4K }\n')
    d = m.heap("h")
    (d / "sub").mkdir()
    sizes = [1, 4097, 12345, 65536, 300000, MIB + 1, 2 * MIB + 3, 77]
    held = {}
    for i in range(60):
        p = d / ("sub" if i % 2 else ".") / f"f{i}"
        p.write_bytes(pattern(sizes[i % len(sizes)], i))
        held[p] = round_up(sizes[i % len(sizes)], 4096)
    h = m.heap_stats("h")
    assert h["used"] == sum(held.values()) and not one_free_block(h)
    check_map(m, "h")
    # delete every third file first (fragmenting), then the rest
    for p in list(held)[::3]:
        p.unlink()
        del held[p]
    h = m.wait_heap("h", lambda h: h["used"] == sum(held.values()), "a third of files gone")
    assert h["largest_free"] < h["free"]  # fragmented: free space in pieces
    check_map(m, "h")
    subprocess.run(["rm", "-rf", str(d / "sub")], check=True)
    for p in d.iterdir():
        p.unlink()
    h = m.wait_heap("h", one_free_block, "heap back to one free block")
    assert h["files"] == 0
    assert check_map(m, "h")["blocks"] == [[0, 25, 1]]


def test_layout_contiguous(mount_factory):
    m = mount_factory('heap "c" { size = 64M  min_block = 4K  layout = contiguous }\n')
    d = m.heap("c")
    f = d / "f"
    data = pattern(5000)
    f.write_bytes(data)
    assert held_bytes(f) == 8192
    assert os.getxattr(f, "user.heapfs.blocks") == b"1"
    assert os.getxattr(f, "user.heapfs.order") == b"13"
    # grow: moves to one bigger block, contents kept
    more = pattern(65000, 2)
    with open(f, "ab") as fh:
        fh.write(more)
    assert held_bytes(f) == next_pow2(70000) == 131072
    assert os.getxattr(f, "user.heapfs.blocks") == b"1"
    assert f.read_bytes() == data + more
    os.truncate(f, 3 * MIB + 1)
    assert held_bytes(f) == 4 * MIB
    assert f.read_bytes() == data + more + bytes(3 * MIB + 1 - 70000)
    os.truncate(f, 10)
    assert held_bytes(f) == 4096 and f.read_bytes() == data[:10]
    for n in (0, 1, 4096, 4097, MIB + 1):
        g = d / f"g{n}"
        g.write_bytes(pattern(n))
        assert held_bytes(g) == (next_pow2(max(n, 4096)) if n else 0), n
        assert g.read_bytes() == pattern(n)
    assert m.heap_stats("c")["layout"] == "contiguous"


def test_writers_single(mount_factory):
    m = mount_factory('heap "s" { size = 16M  writers = single }\n')
    f = m.heap("s") / "f"
    f.write_bytes(b"one")
    w = os.open(f, os.O_WRONLY)
    try:
        expect_errno(errno.EBUSY, os.open, f, os.O_WRONLY)
        expect_errno(errno.EBUSY, os.open, f, os.O_RDWR)
        r = os.open(f, os.O_RDONLY)  # readers are fine
        assert os.read(r, 10) == b"one"
        os.close(r)
        os.write(w, b"two")
    finally:
        os.close(w)
    # once the writer has closed (release is asynchronous), a new writer gets in
    w = open_when_free(f, os.O_WRONLY | os.O_APPEND, "second writer after close")
    os.write(w, b"!")
    os.close(w)
    assert f.read_bytes() == b"two!"
    # a writer of another file of the heap does not block this one
    a = os.open(m.heap("s") / "g", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.close(open_when_free(f, os.O_WRONLY | os.O_APPEND,
                                "writer of f while g is open for writing"))
    finally:
        os.close(a)


def test_stats_json_keys(mount_factory):
    m = mount_factory('heap "a" { size = 16M  min_block = 64K  chunk = 1M  cache = keep }\n'
                      'heap "b" { size = 8M  layout = contiguous  writers = single '
                      ' pin = true }\n')
    (m.heap("a") / "f").write_bytes(pattern(100000))
    st = m.stats()
    assert {"heaps", "version", "mount", "pid"} <= set(st)
    assert st["pid"] == m.pid and st["version"] == "0.1.0"
    assert os.path.realpath(st["mount"]) == str(m.path)
    by = {h["name"]: h for h in st["heaps"]}
    assert sorted(by) == ["a", "b"]
    for name, h in by.items():
        assert DESIGN_HEAP_KEYS <= set(h), DESIGN_HEAP_KEYS - set(h)
        assert h["used"] + h["free"] == h["size"]
        assert (h["role"], h["replicate"]) == ("owner", "none")
        assert isinstance(h["free_blocks"], dict) and isinstance(h["nonempty_orders"], list)
        assert sorted(int(k) for k, v in h["free_blocks"].items() if v) == h["nonempty_orders"]
        assert sum(v << int(k) for k, v in h["free_blocks"].items()) == h["free"]
        assert h["largest_free"] == (1 << max(h["nonempty_orders"]) if h["free"] else 0)
        assert h == m.heap_stats(name)  # .heapfs/heaps/NAME is the same object
    a, b = by["a"], by["b"]
    assert (a["size"], a["min_block"], a["chunk"], a["cache"], a["layout"]) == \
        (16 * MIB, 64 * KIB, MIB, "keep", "extents")
    assert a["used"] == 128 * KIB and a["files"] == 1
    assert a["chunks_committed"] >= 1
    assert (b["size"], b["min_block"], b["layout"], b["writers"], b["pin"], b["chunk"]) == \
        (8 * MIB, 4096, "contiguous", "single", True, 2 * MIB)
    assert (b["used"], b["files"], b["chunks_committed"]) == (0, 0, 0)
    assert one_free_block(b)
    assert isinstance(a["metadata_bytes"], int) and a["metadata_bytes"] > 0


def test_chunks_committed_and_released(mount_factory):
    m = mount_factory('heap "h" { size = 64M  min_block = 4K  chunk = 1M }\n')
    h0 = m.heap_stats("h")
    assert h0["chunks_committed"] == 0 and h0["chunk"] == MIB
    (m.heap("h") / "f").write_bytes(pattern(8 * MIB))
    h1 = m.heap_stats("h")
    assert h1["chunks_committed"] == 8
    os.unlink(m.heap("h") / "f")
    h2 = m.wait_heap("h", lambda h: h["chunks_committed"] == 0, "chunks released")
    assert h2["chunks_released"] - h1["chunks_released"] == 8


def test_pin_locks_committed_memory(mount_factory):
    m = mount_factory('heap "p" { size = 64M  pin = true  chunk = 2M }\n'
                      'heap "u" { size = 64M }\n')
    if m.sanitizer():
        pytest.skip(f"the daemon runs under {m.sanitizer()}, which makes mlock a no-op")
    base = proc_status_kib(m.pid, "VmLck")
    (m.heap("u") / "f").write_bytes(pattern(8 * MIB))
    assert proc_status_kib(m.pid, "VmLck") - base < 2 * 1024  # unpinned heap: not locked
    (m.heap("p") / "f").write_bytes(pattern(8 * MIB))
    assert proc_status_kib(m.pid, "VmLck") - base >= 8 * 1024
    os.unlink(m.heap("p") / "f")
    wait_until(lambda: proc_status_kib(m.pid, "VmLck") - base < 2 * 1024, 5,
               "VmLck back down after rm")


def test_rss_follows_what_files_hold(mount_factory):
    m = mount_factory('heap "big" { size = 1G  min_block = 4K }\n')
    f = m.heap("big") / "f"
    rss0 = m.rss_kib()
    block = pattern(MIB, 5)
    with open(f, "wb") as fh:
        for _ in range(512):
            fh.write(block)
    rss1 = m.rss_kib()
    assert rss1 - rss0 >= 480 * 1024, f"RSS grew only {rss1 - rss0} KiB for a 512 MiB file"
    f.unlink()
    # correctness with a deadline, not a timing benchmark: most of it goes back
    wait_until(lambda: m.rss_kib() <= rss1 - 460 * 1024, 5,
               f"daemon RSS to drop from {rss1} KiB after rm")
    h = m.heap_stats("big")
    assert h["used"] == 0 and h["chunks_committed"] == 0
