"""`heapfsctl image ls FILE [--json]` and `heapfsctl image cat FILE NAME` on image files,
with no daemon running.

The test-only program $IMG_MK (tests/img/img-mk.c) writes a sample object segment and a
sample heap image from a JSON description, so no daemon runs.  Checked: the
listings (table and JSON), the bytes `cat` prints, and that a truncated, bit-flipped,
wrong-version or bad-magic copy makes heapfsctl exit 1 with `heapfsctl: FILE: what is
wrong` and leaves the file as it was; usage errors exit 2.  Small readers written from
docs/IMAGE.md alone (struct, and XXH3 through ctypes from libxxhash) parse the segment and
the heap image, verify their checksums and must agree with `image ls --json` and `image
cat`: the document is enough for another language.
"""
import ctypes
import ctypes.util
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import HEAPFSCTL, REPO, run_ctl

IMG_MK = Path(os.environ.get("IMG_MK", REPO / "build" / "tests" / "img" / "img-mk")).resolve()

SEG_DESC = {"size": 1 << 20, "min_block": 64, "objects": [
    {"name": "alpha", "text": "hello objects\n"},
    {"name": "beta", "pattern": 5000},
    {"name": "empty", "text": ""},
    {"name": "gamma", "pattern": 70000},
] + [{"name": f"many-{i}", "pattern": i * 13} for i in range(20)]}  # the map grows

HEAP_DESC = {"name": "scratch", "size": 64 << 20, "min_block": 4096, "entries": [
    {"path": "sub", "kind": "dir", "mode": 0o750},
    {"path": "sub/a.txt", "kind": "file", "mode": 0o644, "text": "file a\n",
     "xattrs": {"user.k": "v"}},
    {"path": "big", "kind": "file", "mode": 0o600, "pattern": 3_000_000},
    {"path": "hard", "link": "sub/a.txt"},
    {"path": "ln", "kind": "symlink", "mode": 0o777, "target": "sub/a.txt"},
    {"path": "sub/deeper", "kind": "dir", "mode": 0o700},
    {"path": "sub/deeper/empty", "kind": "file", "mode": 0o400, "text": ""},
]}


def pattern(name, n):
    return bytes((i * 7 + len(name)) % 251 for i in range(n))


def make(tmp_path, kind, desc):
    d = tmp_path / f"{kind}.json"
    d.write_text(json.dumps(desc))
    out = tmp_path / f"{kind}.img"
    subprocess.run([str(IMG_MK), kind, str(d), str(out)], check=True, timeout=60)
    return out


@pytest.fixture
def seg(tmp_path):
    return make(tmp_path, "seg", SEG_DESC)


@pytest.fixture
def heap(tmp_path):
    return make(tmp_path, "heap", HEAP_DESC)


def ctl_json(*args):
    r = run_ctl("--json", "image", "ls", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cat(*args):
    return subprocess.run([str(HEAPFSCTL), "image", "cat", *map(str, args)],
                          capture_output=True, timeout=60)


# ---- a reader from docs/IMAGE.md alone ---------------------------------------------------

SEG_HDR = struct.Struct("<8sIIQIIIIQIIIIQQ48s")   # 128 bytes
SEG_SLOT = struct.Struct("<IIQQQIIIIqq256s")       # 320 bytes


def xxh3_64(data):
    lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib.XXH3_64bits(data, len(data))


def read_segment(data):
    (magic, version, hdr_size, seg_size, seg_order, min_order, hdr_order, slot_size,
     map_off, map_order, map_slots, nobjects, _pad, generation, checksum,
     _res) = SEG_HDR.unpack_from(data, 0)
    assert (magic, version, hdr_size, slot_size) == (b"HEAPFSEG", 1, 128, 320)
    assert seg_size == len(data) == 1 << seg_order
    assert hdr_order == max(12, min_order)
    zeroed = data[:72] + bytes(8) + data[80:]
    assert xxh3_64(zeroed) == checksum
    objects = []
    for i in range(map_slots):
        (used, order, off, size, ident, mode, uid, gid, name_len, mtime, ctime,
         name) = SEG_SLOT.unpack_from(data, map_off + i * 320)
        if used:
            objects.append({"name": name[:name_len].decode(), "offset": off, "size": size,
                            "order": order, "block": 1 << order, "id": ident, "mode": mode})
    assert len(objects) == nobjects
    used = (1 << hdr_order) + (1 << map_order) + sum(o["block"] for o in objects)
    return {"total": seg_size, "min_block": 1 << min_order, "generation": generation,
            "map": {"offset": map_off, "block": 1 << map_order, "slots": map_slots},
            "used": used, "free": seg_size - used,
            "objects": sorted(objects, key=lambda o: o["offset"])}


def test_python_reader_agrees_with_ls_json(seg):
    mine = read_segment(seg.read_bytes())
    theirs = ctl_json(seg)
    assert theirs["kind"] == "segment" and theirs["version"] == 1
    for k in ("total", "min_block", "generation", "map", "used", "free"):
        assert mine[k] == theirs[k], k
    keep = ("name", "offset", "size", "order", "block", "id", "mode")
    assert mine["objects"] == [{k: o[k] for k in keep} for o in theirs["objects"]]
    assert mine["map"]["slots"] >= len(SEG_DESC["objects"]) > 12  # the map grew


HEAP_HDR = struct.Struct("<8sIIQIIII24s256s")      # 320 bytes
INODE = struct.Struct("<QIIIIQIIQqqq")             # 72 bytes
KINDS = {1: "file", 2: "dir", 3: "symlink", 4: "special"}


def read_heap_image(data):
    """Whole-heap records only (INODE, LINK, DATA, SYMLINK, XATTR), as docs/IMAGE.md says."""
    magic, version, hdr_size, heap_size, min_order, layout, _flags, name_len, _r, name = \
        HEAP_HDR.unpack_from(data, 0)
    assert (magic, version, hdr_size) == (b"HEAPFSIM", 1, 320)
    inodes, links, content, targets, xattrs, at, count = {}, [], {}, {}, {}, 320, 0
    while True:
        rtype, flags, length = struct.unpack_from("<IIQ", data, at)
        body = data[at + 16:at + 16 + length]
        assert flags == 0
        if rtype == 0xFFFF:
            nrecords, nbytes, checksum = struct.unpack("<QQQ", body)
            assert (nrecords, nbytes) == (count, at)
            assert xxh3_64(data[:at + 16 + 16]) == checksum
            assert at + 16 + 24 == len(data)
            break
        if rtype == 1:
            ident, kind, mode, _uid, _gid, _rdev, _nl, _pad, size, *_t = INODE.unpack(body)
            inodes[ident] = {"id": ident, "kind": KINDS[kind], "mode": mode, "size": size}
        elif rtype == 2:
            parent, child, nlen, _pad = struct.unpack_from("<QQII", body)
            links.append((parent, child, body[24:24 + nlen].decode()))
        elif rtype == 3:
            ident, off = struct.unpack_from("<QQ", body)
            buf = content.setdefault(ident, bytearray())
            buf[len(buf):] = bytes(off - len(buf)) + body[16:]
        elif rtype == 4:
            targets[struct.unpack_from("<Q", body)[0]] = body[8:].decode()
        elif rtype == 5:
            ident, nlen, vlen = struct.unpack_from("<QII", body)
            xattrs.setdefault(ident, {})[body[16:16 + nlen].decode()] = \
                body[16 + nlen:16 + nlen + vlen]
        at += 16 + length
        count += 1
    up = {child: (parent, name) for parent, child, name in links}

    def path(parent, name):
        return name if parent == 1 else path(*up[parent]) + "/" + name
    files = {".": inodes[1]} | {path(p, n): inodes[c] for p, c, n in links}
    return {"name": name[:name_len].decode(), "heap_size": heap_size,
            "min_block": 1 << min_order, "layout": ["extents", "contiguous"][layout],
            "files": files, "content": content, "targets": targets, "xattrs": xattrs}


def test_python_reader_agrees_on_heap_images(heap):
    mine = read_heap_image(heap.read_bytes())
    theirs = ctl_json(heap)
    for k in ("name", "heap_size", "min_block", "layout"):
        assert mine[k] == theirs[k], k
    assert set(mine["files"]) == {f["path"] for f in theirs["files"]}
    for f in theirs["files"]:
        m = mine["files"][f["path"]]
        assert (m["id"], m["kind"], m["mode"], m["size"]) == \
            (f["id"], f["kind"], f["mode"], f["size"])
        if f["kind"] == "file":
            assert bytes(mine["content"].get(f["id"], b"")) == cat(heap, f["path"]).stdout
        if f["kind"] == "symlink":
            assert mine["targets"][f["id"]] == f["target"]
    assert mine["xattrs"][mine["files"]["sub/a.txt"]["id"]] == {"user.k": b"v"}


# ---- object segments ---------------------------------------------------------------------

def test_segment_ls_json(seg):
    j = ctl_json(seg)
    objs = {o["name"]: o for o in j["objects"]}
    assert set(objs) == {o["name"] for o in SEG_DESC["objects"]}
    assert objs["alpha"]["size"] == len("hello objects\n")
    assert objs["beta"]["size"] == 5000 and objs["beta"]["block"] == 8192
    assert objs["gamma"]["size"] == 70000 and objs["gamma"]["block"] == 131072
    assert objs["empty"]["size"] == 0
    for o in j["objects"]:
        assert o["offset"] % o["block"] == 0 and o["size"] <= o["block"]
    offsets = [o["offset"] for o in j["objects"]]
    assert offsets == sorted(offsets)
    blocks = j["header_block"] + j["map"]["block"] + sum(o["block"] for o in j["objects"])
    assert j["used"] == blocks and j["free"] + j["used"] == j["total"] == 1 << 20


def test_segment_ls_table(seg):
    r = run_ctl("image", "ls", seg)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("object segment, version 1, 1M")
    j = ctl_json(seg)
    rows = {ln.split()[0]: ln.split() for ln in lines[2:-1]}
    for o in j["objects"]:
        assert rows[o["name"]][1:3] == [str(o["offset"]), str(o["size"])]
    assert lines[-1].startswith(f"{len(SEG_DESC['objects'])} objects, used ")
    assert lines[-1].endswith("total 1M")


def test_segment_cat(seg):
    assert cat(seg, "alpha").stdout == b"hello objects\n"
    assert cat(seg, "beta").stdout == pattern("beta", 5000)
    assert cat(seg, "gamma").stdout == pattern("gamma", 70000)
    r = cat(seg, "empty")
    assert r.returncode == 0 and r.stdout == b""
    r = cat(seg, "nope")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode() == f"heapfsctl: {seg}: no object 'nope'\n"


# ---- heap images -------------------------------------------------------------------------

def test_heap_ls_json(heap):
    j = ctl_json(heap)
    assert (j["kind"], j["version"], j["name"], j["heap_size"], j["min_block"]) == \
        ("heap", 1, "scratch", 64 << 20, 4096)
    files = {f["path"]: f for f in j["files"]}
    assert list(files) == sorted(files)
    assert set(files) == {".", "big", "hard", "ln", "sub", "sub/a.txt", "sub/deeper",
                          "sub/deeper/empty"}
    assert files["."]["kind"] == "dir"
    assert files["sub"]["kind"] == "dir" and files["sub"]["mode"] == 0o40750
    assert files["big"]["size"] == 3_000_000 and files["big"]["mode"] == 0o100600
    # a hard link is listed under each of its names: one inode, two links
    assert files["hard"]["id"] == files["sub/a.txt"]["id"]
    assert files["hard"]["nlink"] == files["sub/a.txt"]["nlink"] == 2
    assert files["ln"]["kind"] == "symlink" and files["ln"]["target"] == "sub/a.txt"
    assert files["sub/deeper/empty"]["size"] == 0


def test_heap_ls_table(heap):
    r = run_ctl("image", "ls", heap)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "heap image 'scratch', version 1, 64M, min_block 4K, extents"
    rows = {ln.split()[-1] if "->" not in ln else ln.split()[-3]: ln.split() for ln in lines[2:]}
    assert rows["big"][:3] == ["file", "600", "3000000"]
    assert rows["sub"][:2] == ["dir", "750"]
    assert "ln -> sub/a.txt" in r.stdout


def test_heap_cat(heap):
    assert cat(heap, "sub/a.txt").stdout == b"file a\n"
    assert cat(heap, "/hard").stdout == b"file a\n"
    assert cat(heap, "./sub//a.txt").stdout == b"file a\n"
    big = cat(heap, "big")
    assert big.returncode == 0 and big.stdout == pattern("big", 3_000_000)
    r = cat(heap, "sub/deeper/empty")
    assert r.returncode == 0 and r.stdout == b""
    for path, why in (("sub", "'sub' is not a regular file"),
                      ("ln", "'ln' is not a regular file"),
                      ("nope", "no file 'nope' in the image"),
                      ("sub/nope/x", "no file 'sub/nope/x' in the image")):
        r = cat(heap, path)
        assert r.returncode == 1 and r.stdout == b""
        assert r.stderr.decode() == f"heapfsctl: {heap}: {why}\n"


# ---- refusals ----------------------------------------------------------------------------

def damaged(tmp_path, src, name, change):
    data = bytearray(src.read_bytes())
    change(data)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def refused(path, words, name="alpha"):
    """ls and cat both exit 1 with `heapfsctl: FILE: ...words...` and the file unchanged."""
    before = path.read_bytes()
    st = path.stat()
    for args in (("image", "ls", path), ("--json", "image", "ls", path),
                 ("image", "cat", path, name)):
        r = run_ctl(*args)
        assert r.returncode == 1, (args, r.stdout)
        assert r.stdout == ""
        assert r.stderr.startswith(f"heapfsctl: {path}: ") and words in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    assert path.read_bytes() == before and path.stat().st_mtime_ns == st.st_mtime_ns


def flip(pos):
    def f(d):
        d[pos] ^= 0x04
    return f


def truncate(n):
    def f(d):
        del d[n:]
    return f


@pytest.mark.parametrize("n", [0, 5, 100, 4096, 300_000, (1 << 20) - 1])
def test_segment_truncated(tmp_path, seg, n):
    words = "truncated" if n < 128 else "wrong size: header says 1048576 bytes"
    refused(damaged(tmp_path, seg, "t.img", truncate(n)), words)


@pytest.mark.parametrize("pos", [3, 20, 75, 4096 + 40, 600_000, (1 << 20) - 1])
def test_segment_bitflip(tmp_path, seg, pos):
    refused(damaged(tmp_path, seg, "f.img", flip(pos)), "")


def test_segment_data_bitflip_is_a_checksum_mismatch(tmp_path, seg):
    alpha = next(o for o in ctl_json(seg)["objects"] if o["name"] == "alpha")
    refused(damaged(tmp_path, seg, "f.img", flip(alpha["offset"])),
            "checksum mismatch (corrupt image)")


def test_segment_wrong_version(tmp_path, seg):
    refused(damaged(tmp_path, seg, "v.img", lambda d: struct.pack_into("<I", d, 8, 2)),
            "unsupported segment version 2 (this reader knows 1)")


def seal(d):
    """Recompute a segment's checksum, as a writer of crafted images would."""
    struct.pack_into("<Q", d, 72, 0)
    struct.pack_into("<Q", d, 72, xxh3_64(bytes(d)))


def slot_of(d, name):
    """Offset of the map slot holding the object called name."""
    map_off, _order, slots = struct.unpack_from("<QII", d, 40)
    for i in range(slots):
        at = map_off + i * SEG_SLOT.size
        fields = SEG_SLOT.unpack_from(d, at)
        if fields[0] and fields[11][:fields[8]] == name.encode():
            return at
    raise KeyError(name)


def wrapped_map(d):
    """map_off = 2^64 - 2^map_order: aligned, and its end wraps to 0 (inside, if added)."""
    order = struct.unpack_from("<I", d, 48)[0]
    struct.pack_into("<Q", d, 40, (1 << 64) - (1 << order))
    seal(d)


def wrapped_object(d):
    """alpha's block at 2^64 - 2^order: its bytes would be read before the file."""
    at = slot_of(d, "alpha")
    order = struct.unpack_from("<I", d, at + 4)[0]
    struct.pack_into("<Q", d, at + 8, (1 << 64) - (1 << order))
    seal(d)


def directory_object(d):
    """alpha's mode says directory: objects/alpha would be a directory holding bytes."""
    struct.pack_into("<I", d, slot_of(d, "alpha") + 32, 0o40755)
    seal(d)


@pytest.mark.parametrize("change,words", [
    (wrapped_map, "bad name map position or size"),
    (wrapped_object, "object 'alpha': block (offset 18446744073709551552"),
    (directory_object, "object 'alpha': mode 040755 is not a regular file's"),
], ids=["map", "object", "mode"])
def test_segment_fields_that_lie(tmp_path, seg, change, words):
    """Sealed images whose block ends pass 2^64 or whose objects are not files: refused
    whole, never read out of bounds."""
    refused(damaged(tmp_path, seg, "w.img", change), words)


def test_bad_magic(tmp_path, seg):
    refused(damaged(tmp_path, seg, "m.img", lambda d: d.__setitem__(slice(0, 8), b"NOTHEAPF")),
            "not a heapfs image (bad magic)")


def heap_record_starts(data):
    at, out = 320, []
    while at < len(data):
        out.append(at)
        at += 16 + struct.unpack_from("<Q", data, at + 8)[0]
    return out


def test_heap_truncated(tmp_path, heap):
    data = heap.read_bytes()
    starts = heap_record_starts(data)
    assert struct.unpack_from("<I", data, starts[-1])[0] == 0xffff  # END last
    for n in [0, 7, 319, 320, starts[3], starts[3] + 9, starts[-1], len(data) - 1]:
        refused(damaged(tmp_path, heap, "t.img", truncate(n)), "truncated", name="big")


@pytest.mark.parametrize("frac", [0.0001, 0.01, 0.3, 0.7, 0.99999])
def test_heap_bitflip(tmp_path, heap, frac):
    n = heap.stat().st_size
    refused(damaged(tmp_path, heap, "f.img", flip(int(n * frac))), "", name="big")


def test_heap_bitflip_in_data_is_a_checksum_mismatch(tmp_path, heap):
    n = heap.stat().st_size
    refused(damaged(tmp_path, heap, "f.img", flip(n // 2)), "checksum mismatch",
            name="big")


def test_heap_wrong_version(tmp_path, heap):
    refused(damaged(tmp_path, heap, "v.img", lambda d: struct.pack_into("<I", d, 8, 9)),
            "unsupported image version 9 (this reader knows 1)", name="big")


def test_heap_bytes_after_end(tmp_path, heap):
    refused(damaged(tmp_path, heap, "x.img", lambda d: d.extend(b"\0")),
            "bytes after the END record", name="big")


def test_missing_file_and_usage(tmp_path, seg):
    r = run_ctl("image", "ls", tmp_path / "none.img")
    assert r.returncode == 1
    assert r.stderr == f"heapfsctl: {tmp_path / 'none.img'}: No such file or directory\n"
    r = run_ctl("image", "ls", tmp_path)
    assert r.returncode == 1 and r.stderr == f"heapfsctl: {tmp_path}: Is a directory\n"
    (tmp_path / "short.img").write_bytes(b"HEAP")
    r = run_ctl("image", "ls", tmp_path / "short.img")
    assert r.returncode == 1
    assert r.stderr == f"heapfsctl: {tmp_path / 'short.img'}: truncated: 4 bytes, not a heapfs image\n"
    for args in (("image",), ("image", "ls"), ("image", "foo", seg), ("image", "cat", seg),
                 ("image", "ls", seg, "extra"), ("image", "cat", seg, "a", "b")):
        r = run_ctl(*args)
        assert r.returncode == 2, args
        assert r.stdout == ""


# ---- change records, and images that are well-formed but say impossible things -----------

def raw_heap(tmp_path, records, noroot=False, name="raw", contiguous=False):
    desc = {"name": "scratch", "size": 64 << 20, "min_block": 4096, "noroot": noroot,
            "entries": records, "contiguous": contiguous}
    d = tmp_path / f"{name}.json"
    d.write_text(json.dumps(desc))
    out = tmp_path / f"{name}.img"
    subprocess.run([str(IMG_MK), "heap", str(d), str(out)], check=True, timeout=60)
    return out


def inode(i, kind="file", mode=0o644, size=0):
    return {"raw": "inode", "id": i, "kind": kind, "size": size,
            "mode": mode | (0o40000 if kind == "dir" else 0o100000)}


def link(parent, child, name):
    return {"raw": "link", "parent": parent, "child": child, "name": name}


def data(i, off, text):
    return {"raw": "data", "id": i, "off": off, "text": text}


# A stream of change records (what a partner will send), and what it leaves: names with
# their bytes, and b's mode.  test_images.py applies the same stream through the daemon.
CHANGES = [
    inode(2, size=11), link(1, 2, "a"), data(2, 0, "hello world"),
    {"raw": "rename", "old_parent": 1, "old": "a", "new_parent": 1, "new": "b"},
    {"raw": "truncate", "id": 2, "size": 5},
    {"raw": "setattr", "id": 2, "mask": 1, "mode": 0o100600},
    inode(3), link(1, 3, "c"), {"raw": "unlink", "parent": 1, "name": "c"},
    inode(4, size=2), link(1, 4, "x"), data(4, 0, "xx"),
    inode(5, size=3), link(1, 5, "y"), data(5, 0, "yyy"),
    {"raw": "rename", "old_parent": 1, "old": "x", "new_parent": 1, "new": "y",
     "flags": 2},                                     # RENAME_EXCHANGE
    inode(6), link(1, 6, "gap"), data(6, 4, "tail"),  # a hole at [0, 4)
    {"raw": "setattr", "id": 6, "mask": 8, "size": 10},
]
CHANGED = {"b": b"hello", "x": b"yyy", "y": b"xx", "gap": b"\0\0\0\0tail\0\0"}


def test_change_records_are_applied(tmp_path):
    img = raw_heap(tmp_path, CHANGES)
    files = {f["path"]: f for f in ctl_json(img)["files"]}
    assert set(files) == {".", "b", "x", "y", "gap"}
    assert files["b"]["size"] == 5 and files["b"]["mode"] == 0o100600
    assert {n: cat(img, n).stdout for n in CHANGED} == CHANGED


BAD_MODELS = [
    ("link to a missing inode", [link(1, 9, "a")], False,
     "LINK to an inode the image does not have (inode 9)"),
    ("link into a file", [inode(2), link(1, 2, "f"), inode(3), link(2, 3, "g")], False,
     "LINK into a directory the image does not have (inode 2)"),
    ("two entries of one name", [inode(2), link(1, 2, "a"), link(1, 2, "a")], False,
     "two entries of the same name in one directory (inode 1)"),
    ("unlink of nothing", [{"raw": "unlink", "parent": 1, "name": "a"}], False,
     "UNLINK of an entry the image does not have (inode 1)"),
    ("rename of nothing", [{"raw": "rename", "old_parent": 1, "old": "a", "new_parent": 1,
                            "new": "b"}], False,
     "RENAME of an entry the image does not have (inode 1)"),
    ("data of a missing inode", [data(7, 0, "x")], False,
     "a record for an inode the image does not have (inode 7)"),
    ("no root", [], True, "no root directory (inode 1)"),
    ("a directory loop", [inode(2, "dir"), inode(3, "dir"), link(2, 3, "b"), link(3, 2, "a")],
     False, "a directory loop"),
]


@pytest.mark.parametrize("what,records,noroot,words", BAD_MODELS, ids=[b[0] for b in BAD_MODELS])
def test_impossible_images_are_refused(tmp_path, what, records, noroot, words):
    img = raw_heap(tmp_path, records, noroot)
    refused(img, words, name="a")


def test_cat_refuses_data_out_of_order(tmp_path):
    img = raw_heap(tmp_path, [inode(2, size=14), link(1, 2, "f"), data(2, 10, "late"),
                              data(2, 0, "early")])
    assert ctl_json(img)["files"][1]["path"] == "f"  # the listing is fine
    r = cat(img, "f")
    assert r.returncode == 1
    assert r.stderr.decode().endswith(": DATA records out of offset order (inode 2)\n")


def kind_of_inode_2_is_dir(d):
    """Inode 2's INODE record says directory while its mode says regular file (resealed)."""
    at = next(a for a in heap_record_starts(d)
              if struct.unpack_from("<IIQQ", d, a)[::3] == (1, 2))
    struct.pack_into("<I", d, at + 16 + 8, 2)
    struct.pack_into("<Q", d, len(d) - 8, xxh3_64(bytes(d[:-8])))


# Well-formed streams (valid checksums) whose fields say impossible things: refused whole
# by the reader, with the reason, before any path is listed or any byte printed (a size of
# 2^40 made `image cat` print a TiB of zeros).
IMPOSSIBLE_FIELDS = [
    ("size past the heap", [inode(2, size=1 << 40), link(1, 2, "a")], None,
     "record at byte 408: size 1099511627776 past the heap (67108864 bytes)"),
    ("data past the heap", [inode(2, size=5), link(1, 2, "a"), data(2, (64 << 20) - 2, "abc")],
     None, "offset 67108862 + 3 bytes past the heap (67108864 bytes)"),
    ("truncate past the heap", [inode(2), link(1, 2, "a"),
                                {"raw": "truncate", "id": 2, "size": 1 << 62}], None,
     "size 4611686018427387904 past the heap"),
    ("kind against mode", [inode(2, size=5), link(1, 2, "a")], kind_of_inode_2_is_dir,
     "INODE record: kind 2 and mode 0100644 disagree"),
]


@pytest.mark.parametrize("what,records,change,words", IMPOSSIBLE_FIELDS,
                         ids=[b[0] for b in IMPOSSIBLE_FIELDS])
def test_impossible_fields_are_refused(tmp_path, what, records, change, words):
    # a contiguous heap: one block per file, so no size past the heap (an extents heap's
    # files may be sparse and larger than the heap, below)
    img = raw_heap(tmp_path, records, contiguous=True)
    if change:
        img = damaged(tmp_path, img, "k.img", change)
    refused(img, words, name="a")


def test_sizes_past_the_heap_are_sparse_files_in_an_extents_image(tmp_path):
    """The same records in an extents heap are sparse files, as tmpfs allows: listed with
    their size, the bytes read back where they were written, zeros elsewhere."""
    img = raw_heap(tmp_path, IMPOSSIBLE_FIELDS[1][1])  # data at 64 MiB - 2 of a 64 MiB heap
    r = run_ctl("--json", "image", "ls", img)
    assert r.returncode == 0, r.stderr
    files = {e["path"]: e for e in json.loads(r.stdout)["files"]}
    assert files["a"]["size"] == (64 << 20) + 1, files
    r = run_ctl("image", "cat", img, "a")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == (64 << 20) + 1 and r.stdout.endswith("abc")
    assert r.stdout[:5] == "\0" * 5
    big = raw_heap(tmp_path, IMPOSSIBLE_FIELDS[0][1], name="big")  # size 1 TiB
    r = run_ctl("--json", "image", "ls", big)
    assert r.returncode == 0, r.stderr
    assert {e["path"]: e["size"] for e in json.loads(r.stdout)["files"]}["a"] == 1 << 40
