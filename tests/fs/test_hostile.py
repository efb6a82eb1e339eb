"""Every input is hostile (issue 16): heap images whose records are well-formed but say
impossible things — kinds that disagree with modes, offsets that wrap, parents that are no
directories, names and ids that do not exist — are refused whole by the daemon's applier
(fs/core/image.c), the same code a mirror applies its partner's records with: `heapfs`
exits 2 with "heapfs: PATH: why" before mounting anything, never a crash, and the good
image of another heap in the same config is left as it was.  And a tree as deep as a heap
may hold is saved and restored: no walk recurses once per level on a thread's stack."""
import os
import subprocess

import pytest

from conftest import HEAPFS, HEAPFSCTL, pattern, read_daemon
from test_image_ctl import inode, link, data, raw_heap

HEAP = 64 << 20  # raw_heap's heap size


def config(good, bad):
    return (f'heap "good" {{ size = 64M  min_block = 4K  image = "{good}" }}\n'
            f'heap "scratch" {{ size = 64M  min_block = 4K  image = "{bad}" }}\n')


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """An image of another heap, listed first: restored before the bad one is refused."""
    t = tmp_path_factory.mktemp("good")
    return raw_heap(t, [inode(2, size=5), link(1, 2, "kept"), data(2, 0, "kept!"),
                        inode(3) | {"kind": "symlink", "mode": 0o120777},
                        symlink_rec(3, "kept"), link(1, 3, "s")],
                    name="good")


def symlink_rec(i, target):
    return {"raw": "symlink", "id": i, "target": target}


def setattr_rec(i, mask, mode=0, size=0):
    return {"raw": "setattr", "id": i, "mask": mask, "mode": mode, "size": size}


FILE2 = [inode(2, size=4096), link(1, 2, "f")]
DIR2 = [inode(2, "dir"), link(1, 2, "d")]

# what, records (after the root's INODE), noroot, the words of the reason
HOSTILE = [
    # the two crashes the review found (SIGSEGV at mount before)
    ("kind file, mode symlink", [inode(2) | {"mode": 0o120777}, link(1, 2, "s")], False,
     "INODE record: kind 1 and mode 0120777 disagree"),
    ("data offset that wraps", FILE2 + [data(2, -4, "boom boom")], False,
     "DATA record: offset 18446744073709551612 + 9 bytes out of range"),
    # offsets and sizes against the heap (the image reader, img/read.c, refuses these
    # before the applier sees them; the applier's own checks: tests/fuzz/fuzz-apply.c)
    ("data at the heap's end", FILE2 + [data(2, HEAP, "x")], False,
     f"DATA record at byte 537: offset {HEAP} + 1 bytes past the heap ({HEAP} bytes)"),
    ("data across the heap's end", FILE2 + [data(2, HEAP - 2, "xyz")], False,
     f"DATA record at byte 537: offset {HEAP - 2} + 3 bytes past the heap ({HEAP} bytes)"),
    ("a size past the heap", [inode(2, size=HEAP + 1), link(1, 2, "f")], False,
     f"record at byte 408: size {HEAP + 1} past the heap ({HEAP} bytes)"),
    ("truncate past the heap", FILE2 + [{"raw": "truncate", "id": 2, "size": 1 << 40}],
     False, f"record at byte 537: size {1 << 40} past the heap ({HEAP} bytes)"),
    ("setattr size past the heap", FILE2 + [setattr_rec(2, 8, size=-1)], False,
     "SETATTR record: size 18446744073709551615 out of range"),
    # kinds and modes
    ("an unknown kind", [inode(2) | {"kind": 7}, link(1, 2, "f")], False,
     "INODE record: kind 7 and mode 0100644 disagree"),
    ("mode bits no st_mode has", [inode(2, mode=0o1000644), link(1, 2, "f")], False,
     "inode 2: kind 1 and mode 01100644 disagree"),
    ("a root that is no directory", [inode(1)], True, "the root (inode 1) is no directory"),
    ("a second root", [inode(1, "dir")], False, "a second root (inode 1)"),
    ("an inode twice", [inode(2), link(1, 2, "a"), inode(2)], False,
     "inode 2 appears twice"),
    ("id 0", [inode(0), link(1, 0, "z")], False, "inode id 0 is out of range"),
    ("an id that wraps the next", [inode(-1), link(1, -1, "z")], False,
     "inode id 18446744073709551615 is out of range"),
    ("a symlink without a target", [inode(2) | {"kind": "symlink", "mode": 0o120777},
                                    link(1, 2, "s")], False, "symlink 2 without a target"),
    ("a target for a file", [inode(2), symlink_rec(2, "x"), link(1, 2, "f")], False,
     "a symlink target for inode 2 out of place"),
    ("setattr that changes the kind", FILE2 + [setattr_rec(2, 1, mode=0o40755)], False,
     "SETATTR of inode 2: mode 040755 is not its kind's"),
    ("setattr with unknown mask bits", FILE2 + [setattr_rec(2, 0x100)], False,
     "SETATTR record: mask 0x100"),
    # ids, parents and names that do not exist or are of the wrong kind
    ("a name in a file", FILE2 + [inode(3), link(2, 3, "g")], False,
     "a record for inode 2, which is no directory"),
    ("a name for an inode never made", [link(1, 9, "a")], False,
     "a name for inode 9, never described"),
    ("a second name for a directory", DIR2 + [link(1, 2, "e")], False,
     "a second name for directory 2"),
    ("a name for the root", [link(1, 1, "r")], False, "a second name for directory 1"),
    ("a name taken", FILE2 + [inode(3), link(1, 3, "f")], False,
     "cannot add the name 'f' for inode 3 in directory 1 (File exists)"),
    ("unlink of nothing", [{"raw": "unlink", "parent": 1, "name": "a"}], False,
     "UNLINK of 'a', which directory 1 does not have"),
    ("unlink in a file", FILE2 + [{"raw": "unlink", "parent": 2, "name": "a"}], False,
     "a record for inode 2, which is no directory"),
    ("rename of nothing", [{"raw": "rename", "old_parent": 1, "old": "a", "new_parent": 1,
                            "new": "b"}], False,
     "RENAME of 'a', which directory 1 does not have"),
    ("rename into a file", FILE2 + [{"raw": "rename", "old_parent": 1, "old": "f",
                                     "new_parent": 2, "new": "b"}], False,
     "a record for inode 2, which is no directory"),
    ("rename of a directory into itself", DIR2 + [{"raw": "rename", "old_parent": 1,
                                                   "old": "d", "new_parent": 2, "new": "x"}],
     False, "RENAME of 'd' in directory 1 to 'x' in 2 (Invalid argument)"),
    ("exchange with nothing", FILE2 + [{"raw": "rename", "old_parent": 1, "old": "f",
                                        "new_parent": 1, "new": "g", "flags": 2}], False,
     "RENAME of 'f' in directory 1 to 'g' in 1 (No such file or directory)"),
    ("data for a directory", DIR2 + [data(2, 0, "x")], False,
     "a record for inode 2, which is no regular file"),
    ("truncate of a directory", DIR2 + [{"raw": "truncate", "id": 2, "size": 0}], False,
     "a record for inode 2, which is no regular file"),
    ("setattr of a missing id", [setattr_rec(5, 1, mode=0o644)], False,
     "a record for inode 5, which has no name yet"),
    ("data of a described, unnamed inode", [inode(2), data(2, 0, "x")], False,
     "a record for inode 2, which has no name yet"),
    # xattrs
    ("xattrs past the inode space", FILE2 + [
        {"raw": "xattr", "id": 2, "name": f"user.{k:03}", "value": "v" * 65536}
        for k in range(130)], False,  # 8192 inodes * 1 KiB: the 128th does not fit
     "xattr 'user.127' of inode 2 refused (No space left on device)"),
    ("an xattr in no namespace tmpfs has", FILE2 + [{"raw": "xattr", "id": 2,
                                                     "name": "system.x", "value": "v"}],
     False, "xattr 'system.x' of inode 2 refused"),
    ("a malformed ACL", FILE2 + [{"raw": "xattr", "id": 2, "name": "system.posix_acl_access",
                                  "value": "garbage"}], False,
     "xattr 'system.posix_acl_access' of inode 2 refused (Invalid argument)"),
    ("removexattr of nothing", FILE2 + [{"raw": "removexattr", "id": 2, "name": "user.no"}],
     False, "REMOVEXATTR of 'user.no' from inode 2 (No data available)"),
]


def start(tmp_path, cfg_text):
    cfg = tmp_path / "h.conf"
    cfg.write_text(cfg_text)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    r = subprocess.run([str(HEAPFS), "-f", "-c", str(cfg), str(mnt)], capture_output=True,
                       text=True, timeout=120)
    return r, mnt


@pytest.mark.parametrize("what,records,noroot,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_image_is_refused_at_mount(tmp_path, good, what, records, noroot, words):
    bad = raw_heap(tmp_path, records, noroot, name="bad")
    before = {p: p.read_bytes() for p in (good, bad)}
    r, mnt = start(tmp_path, config(good, bad))
    assert r.returncode == 2, (what, r.returncode, r.stderr)
    assert f"heapfs: {bad}: {words}" in r.stderr, r.stderr
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    with open("/proc/self/mountinfo") as f:
        assert str(mnt) not in f.read()
    assert {p: p.read_bytes() for p in (good, bad)} == before  # nothing saved over either


def test_the_good_image_still_mounts(mount_factory, tmp_path, good):
    """The refusals above left the good image as it was: it mounts and holds its file."""
    m = mount_factory(f'heap "good" {{ size = 64M  min_block = 4K  image = "{good}" }}\n')
    assert read_daemon(m.heap("good") / "kept") == b"kept!"
    assert os.readlink(m.heap("good") / "s") == "kept"
    assert sorted(os.listdir(m.heap("good"))) == ["kept", "s"]


# ---- a tree as deep as the heap may hold (item 6) --------------------------------------

DEPTH = 20000
# The daemon's threads get 1 MiB stacks (glibc sizes them by RLIMIT_STACK, as on a host
# with a small `ulimit -s`): a walk with a frame per level could not hold 20,000 levels.
SMALL_STACK = ("prlimit", f"--stack={1 << 20}")


def deep_config(img):
    return (f'heap "deep" {{ size = 1G  min_block = 64  inodes = {DEPTH + 100}'
            f'  image = "{img}" }}\n')


def descend(top, depth):
    """A descriptor of top/d/d/.../d (depth levels): openat one level at a time, as no path
    that long fits PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def deepest_bytes(top):
    fd = descend(top, DEPTH)
    try:
        f = os.open("deepest", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(f, 1 << 20)
        finally:
            os.close(f)
    finally:
        os.close(fd)


def test_a_deep_tree_saves_and_restores(mount_factory, tmp_path):
    """20,000 nested directories with a file at the bottom: `heapfsctl save` of the live
    heap (the snapshot child walks the tree) and the save at unmount both restore it, under
    whatever daemon $HEAPFS names (the ASan one has the largest frames)."""
    img, live = tmp_path / "deep.img", tmp_path / "live.img"
    body = pattern(100_000, 16)
    m = mount_factory(deep_config(img), prefix=SMALL_STACK)
    fd = os.open(m.heap("deep"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open("deepest", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        try:
            assert os.write(f, body) == len(body)
        finally:
            os.close(f)
    finally:
        os.close(fd)
    r = subprocess.run([str(HEAPFSCTL), "save", str(m.path), "deep", str(live)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert m.stop() == 0, m.stderr_text()
    for saved in (img, live):
        m2 = mount_factory(deep_config(saved), name=f"again-{saved.stem}", prefix=SMALL_STACK)
        assert deepest_bytes(m2.heap("deep")) == body
        assert m2.heap_stats("deep")["files"] == 1
        assert m2.stop() == 0, m2.stderr_text()
