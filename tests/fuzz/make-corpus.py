#!/usr/bin/python3
"""make-corpus.py — (re)write the seed inputs of the fuzz harnesses (tests/fuzz/corpus/NAME/)
with the project's own writers: img-mk (tests/img/img-mk.c, img/'s segment and stream
writers) for images and records, and `heapfs --check-config` to prove each config seed
valid.  Run once from the repository root after `ninja -C build`; the outputs are
committed, so a harness's replay test needs no generator.  Seeds are kept small (a few
KiB): the fuzzer mutates every byte of them.

  tests/fuzz/make-corpus.py [BUILD_DIR]

Crashing inputs the fuzzer finds are added by hand (crash-*), not by this script.
"""
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "build").resolve()
IMG_MK = BUILD / "tests" / "img" / "img-mk"
HEAPFS = BUILD / "fs" / "heapfs"
CORPUS = REPO / "tests" / "fuzz" / "corpus"
TMP = Path(tempfile.mkdtemp(prefix="heapfs-corpus-"))


def img_mk(kind, desc):
    d = TMP / "desc.json"
    out = TMP / "out.img"
    d.write_text(json.dumps(desc))
    subprocess.run([str(IMG_MK), kind, str(d), str(out)], check=True)
    return out.read_bytes()


def put(name, file, data):
    (CORPUS / name).mkdir(parents=True, exist_ok=True)
    (CORPUS / name / file).write_bytes(data)


# ---- seg: whole small segments, and compact ones (header + map, see fuzz-seg.c) ----------

def compact(seg):
    map_off, map_order = struct.unpack_from("<QI", seg, 40)
    return seg[:128] + seg[map_off:map_off + (1 << map_order) // 320 * 320]


SEGS = {
    "empty": {"size": 1 << 16, "min_block": 64, "objects": []},
    "objects": {"size": 1 << 16, "min_block": 64, "objects": [
        {"name": "alpha", "text": "hello"}, {"name": "beta", "pattern": 5000},
        {"name": "empty", "text": ""}, {"name": "big", "pattern": 9000}]},
    "grown-map": {"size": 1 << 16, "min_block": 64, "objects": [
        {"name": f"o{i}", "pattern": i * 7} for i in range(30)]},  # 12 -> 25 -> 51 slots
    "min-block-8k": {"size": 1 << 16, "min_block": 8192, "objects": [
        {"name": "a", "text": "x"}, {"name": "b", "pattern": 10000}]},
}
for name, desc in SEGS.items():
    put("seg", f"compact-{name}", compact(img_mk("seg", desc)))
put("seg", "whole-8k", img_mk("seg", {"size": 8192, "min_block": 64, "objects": []}))
put("seg", "whole-16k-objects", img_mk("seg", {"size": 16384, "min_block": 64, "objects": [
    {"name": "one", "text": "1"}, {"name": "two", "pattern": 300}]}))

# ---- stream: heap images; rec: each record of them on its own ----------------------------

HEAP = {"name": "scratch", "size": 1 << 20, "min_block": 4096, "entries": [
    {"path": "sub", "kind": "dir", "mode": 0o750},
    {"path": "sub/a.txt", "kind": "file", "mode": 0o644, "text": "file a\n",
     "xattrs": {"user.k": "v", "user.empty": ""}},
    {"path": "data", "kind": "file", "mode": 0o600, "pattern": 3000},
    {"path": "hard", "link": "sub/a.txt"},
    {"path": "ln", "kind": "symlink", "mode": 0o777, "target": "sub/a.txt"},
]}
CHANGES = {"name": "changes", "size": 1 << 16, "min_block": 64, "entries": [
    {"raw": "inode", "id": 2, "kind": "file", "mode": 0o100644, "size": 11},
    {"raw": "link", "parent": 1, "child": 2, "name": "a"},
    {"raw": "data", "id": 2, "off": 0, "text": "hello world"},
    {"raw": "rename", "old_parent": 1, "old": "a", "new_parent": 1, "new": "b", "flags": 1},
    {"raw": "truncate", "id": 2, "size": 5},
    {"raw": "punch", "id": 2, "off": 1, "len": 3},
    {"raw": "setattr", "id": 2, "mask": 9, "mode": 0o100600, "size": 7},
    {"raw": "unlink", "parent": 1, "name": "b"},
]}
heap = img_mk("heap", HEAP)
changes = img_mk("heap", CHANGES)
put("stream", "heap", heap)
put("stream", "changes", changes)
put("stream", "empty-heap", img_mk("heap", {"name": "e", "size": 1 << 16, "min_block": 64,
                                             "entries": []}))

TYPES = {1: "inode", 2: "link", 3: "data", 4: "symlink", 5: "xattr", 6: "truncate",
         7: "rename", 8: "unlink", 9: "setattr", 10: "removexattr", 11: "punch"}
seen = set()
for img in (heap, changes):
    at = 320
    while True:
        rtype, _flags, rlen = struct.unpack_from("<IIQ", img, at)
        if rtype == 0xffff:
            break
        if rtype not in seen:  # one record of each type
            seen.add(rtype)
            put("rec", TYPES[rtype], img[at:at + 16 + rlen])
        at += 16 + rlen

# ---- conf: config files that load -------------------------------------------------------

CONFS = {
    "default": subprocess.run([str(HEAPFS), "--print-default-config"], check=True,
                              capture_output=True, text=True).stdout,
    "spec-example": """default_heap_size = 64M
heap "scratch" {
  size      = 256M     # rounded up to a power of two
  min_block = 4K
  layout    = extents
  cache     = auto
  writers   = many
  chunk     = 2M
  pin       = false
  replicate = none
  image     = ""
  inodes    = 0
  direct_map = false
}
objects { size = 16M  min_block = 64  writers = single  image = ""  direct_map = false }
pool    { size = 4G  donor_size = 256M  max_donors = 16  max_process_memory = 1G
          socket = "/run/heapfs/pool.sock" }
""",
    "partner": """// two heaps, replicated
heap "a" { size = 3M min_block = 64 layout = contiguous replicate = sync }
heap "b" { replicate = async cache = direct writers = single inodes = 100 }
/* the link */
partner { node = "a"  listen = "127.0.0.1:7410"  connect = "[::1]:7411"
          secret_file = "/etc/heapfs/secret"  timeout = 500ms  auto_failover = true
          encrypt = false }
""",
    "partner-managed": """// under Pacemaker (issue 19): the same config on both nodes
heap "d" { size = 8M replicate = sync }
partner { node = "n1"  listen = "10.0.2.1:7410"  connect = "10.0.2.2:7410"
          secret_file = "/run/secret"  managed = true
          on_peer_lost = "/usr/lib/ocf/lib/heapfs/heapfs-fence-peer --clone=d-clone"
          on_peer_lost_timeout = 45s }
""",
    "small": 'default_heap_size = 1G\nheap "x" { size = 100 min_block = 64 '
             'chunk = 4K pin = true image = "/tmp/x.img" }\n'
             'objects { size = 8K min_block = 1K image = \'/tmp/o.img\' }\n',
}
for name, text in CONFS.items():
    p = TMP / f"{name}.conf"
    p.write_text(text)
    subprocess.run([str(HEAPFS), "--check-config", str(p)], check=True)
    put("conf", name, text.encode())

# raw: FUSE_TMPFILE (51) and FUSE_STATX (52) requests as the kernel sends them (and a few
# it never does), for fs/edge/raw.c
def fuse_req(op, body, length=None):
    n = 40 + len(body) if length is None else length
    return struct.pack("<IIQQIIIHH", n, op, 77, 5, 0, 0, 1234, 0, 0) + body


RAW = {
    "tmpfile": fuse_req(51, struct.pack("<IIII", 0o100002, 0o644, 0o22, 0) + b"/\0"),
    "tmpfile-noname": fuse_req(51, struct.pack("<IIII", 2, 0o600, 0, 0)),
    "tmpfile-unterminated": fuse_req(51, struct.pack("<IIII", 2, 0o600, 0, 0) + b"abc"),
    "statx": fuse_req(52, struct.pack("<IIQII", 0, 0, 0, 0, 0x800 | 0x7FF)),
    "statx-short": fuse_req(52, struct.pack("<II", 0, 0)),
    "statx-badlen": fuse_req(52, struct.pack("<IIQII", 0, 0, 0, 0, 0xFFF), length=4000),
    "getattr": fuse_req(3, struct.pack("<IIQ", 0, 0, 0)),
    "short": b"\x28\0\0\0\x33\0",
}
for name, data in RAW.items():
    put("raw", name, data)

print(f"seeds written under {CORPUS}")
