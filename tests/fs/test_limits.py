"""Limits on what an ordinary user can make the daemon hold (issue 6, item 4; SPEC
"Semantics: Files", README "Limits"): heapfs's own -o options are range-checked at start;
a heap has an inode limit (`inodes`, `df -i`) and every inode an xattr budget, past
which ENOSPC leaves everything as it was; each heap's JSON charges it the daemon memory
its inodes, names, symlink targets and xattrs use; status snapshots are bounded and
rendered without holding the namespace lock; a heap name that is not UTF-8 is refused.

Mounts come from conftest.py (one per test, the daemon must exit 0).
"""
import errno
import os

import pytest

from conftest import HEAPFS, HEAPFS_OPTS, expect_errno
from test_config import mounted, run_refused


# ---- our -o options: out of range is refused before mounting

@pytest.mark.parametrize("opt", ["spin_us=-1", "spin_us=1000001", "spin_us=", "spin_us=5x",
                                 "readahead_kb=-1", "readahead_kb=1048577",
                                 "readahead_kb=99999999999999999999"])
@pytest.mark.parametrize("foreground", [True, False], ids=["fg", "daemon"])
def test_bad_option_value_is_refused(opt, foreground, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = (["-f"] if foreground else []) + ["-o", opt, str(mnt)]
    rc, err = run_refused([str(HEAPFS), *args][1:], mnt)
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    name, _, value = opt.partition("=")
    assert f"heapfs: -o {name}={value}: not a whole number in 0 .. " in err, err
    assert not mounted(mnt)


@pytest.mark.parametrize("opt", ["spin_us=0", "spin_us=1000000", "readahead_kb=0",
                                 "readahead_kb=1048576"])
def test_option_value_at_the_bounds_mounts(opt, mount_factory):
    m = mount_factory(extra=("-o", opt))
    (m.heap() / "f").write_bytes(b"ok")
    assert (m.heap() / "f").read_bytes() == b"ok"


# ---- heap names must be UTF-8: they appear in every status file's JSON

@pytest.mark.parametrize("name", [b"\xff\xfe", b"ok\x80", b"\xc0\xaf", b"\xed\xa0\x80"])
def test_non_utf8_heap_name_is_refused(mount, name):
    heaps = os.fsencode(mount.heaps)
    expect_errno(errno.EINVAL, os.mkdir, heaps + b"/" + name)
    assert name not in os.listdir(heaps)
    stats = mount.stats()  # still valid JSON, every heap in it
    assert [h["name"] for h in stats["heaps"]] == ["scratch"]
    assert os.listdir(mount.path / ".heapfs" / "heaps") == ["scratch"]
    os.mkdir(mount.heaps / "caf\u00e9")  # UTF-8 beyond ASCII is fine
    (mount.heap("caf\u00e9") / "f").write_bytes(b"x")
    names = {h["name"] for h in mount.stats()["heaps"]}
    assert names == {"scratch", "caf\u00e9"}
    assert mount.heap_stats("caf\u00e9")["files"] == 1
    assert mount.status_json("partner")["heaps"] == {"scratch": "owner", "caf\u00e9": "owner"}
