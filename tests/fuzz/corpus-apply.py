"""Writes tests/fuzz/corpus/apply/ (fuzz-apply.c's seeds) with img-mk: whole images of a
4 MiB heap (a tree; the change records; the crashes issue 16 found) and the same records
as runs after fuzz-apply's first byte (layout, live, settle).  Run from the repository with
IMG_MK set (default build/tests/img/img-mk):  python3 tests/fuzz/corpus-apply.py"""
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fs"))
from test_image_ctl import CHANGES, data, inode, link  # noqa: E402

IMG_MK = os.environ.get("IMG_MK", "build/tests/img/img-mk")
OUT = Path(__file__).resolve().parent / "corpus" / "apply"
HDR, END = 320, 16 + 24  # the stream header; END's record header and payload

TREE = [{"path": "a", "kind": "dir", "mode": 0o755},
        {"path": "a/f", "kind": "file", "mode": 0o644, "pattern": 5000,
         "xattrs": {"user.k": "v"}},
        {"path": "a/s", "kind": "symlink", "mode": 0o777, "target": "f"},
        {"path": "h", "link": "a/f"},
        {"path": "a/b", "kind": "dir", "mode": 0o700},
        {"path": "a/b/big", "kind": "file", "mode": 0o600, "pattern": 9000}]
FILE2 = [inode(2, size=4096), link(1, 2, "f")]


def acl(*entries):
    """A POSIX ACL's xattr value (version 2, then tag, perm, id each), as a str of the
    bytes (img-mk takes \\u0000; JSON would turn bytes past 127 into UTF-8: ids < 128)."""
    b = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    return b.decode("latin-1")


# owner rwx, named user 100 r-x, group r-x, mask r-x, other ---
ACL = acl((1, 7, 0), (2, 5, 100), (4, 5, 0), (0x10, 5, 0), (0x20, 0, 0))
SEEDS = {
    "tree": TREE,
    "changes": CHANGES,
    "kind-mode": [inode(2) | {"mode": 0o120777}, link(1, 2, "s")],
    "data-wraps": FILE2 + [data(2, -4, "boom boom")],
    "unlink-in-file": FILE2 + [{"raw": "unlink", "parent": 2, "name": "a"}],
    "rename-into-file": FILE2 + [{"raw": "rename", "old_parent": 1, "old": "f",
                                  "new_parent": 2, "new": "b"}],
    "xattrs": FILE2 + [{"raw": "xattr", "id": 2, "name": "user.a", "value": "1"},
                       {"raw": "removexattr", "id": 2, "name": "user.a"}],
    # ACLs, trusted.* and security.*: a directory's default ACL, a file's access ACL then
    # a chmod (SETATTR) after it, an ACL out of order, a default ACL on a file
    "acls": [inode(2, "dir"), link(1, 2, "d"), inode(3), link(2, 3, "f"),
             {"raw": "xattr", "id": 2, "name": "system.posix_acl_default", "value": ACL},
             {"raw": "xattr", "id": 3, "name": "system.posix_acl_access", "value": ACL},
             {"raw": "setattr", "id": 3, "mask": 1, "mode": 0o100640, "size": 0},
             {"raw": "xattr", "id": 3, "name": "trusted.overlay.opaque", "value": "y"},
             {"raw": "xattr", "id": 3, "name": "security.capability", "value": "c"},
             {"raw": "removexattr", "id": 2, "name": "system.posix_acl_default"}],
    "acls-refused": [inode(2), link(1, 2, "f"),
             {"raw": "xattr", "id": 2, "name": "system.posix_acl_access",
              "value": acl((0x20, 0, 0), (1, 7, 0), (4, 5, 0))},
             {"raw": "xattr", "id": 2, "name": "system.posix_acl_default", "value": ACL}],
}

OUT.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as t:
    for name, entries in SEEDS.items():
        desc = Path(t) / f"{name}.json"
        desc.write_text(json.dumps({"name": "f", "size": 4 << 20, "min_block": 64,
                                    "entries": entries}))
        img = OUT / f"{name}.img"
        subprocess.run([IMG_MK, "heap", str(desc), str(img)], check=True)
        records = img.read_bytes()[HDR:-END]
        for flags in (0, 1, 2, 4) if name in ("tree", "changes", "acls") else (0,):
            (OUT / f"{name}.rec{flags}").write_bytes(bytes([flags]) + records)
