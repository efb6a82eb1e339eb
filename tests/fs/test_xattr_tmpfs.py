"""xattrs and POSIX ACLs as tmpfs keeps them (issue 23 items 1, 2 and 8): every test runs
the same user steps (getfattr/setfattr, getfacl/setfacl, setcap/getcap, a child process
as another user) on a real tmpfs and on a heap, and compares what both show."""
import errno
import os
import shutil
import subprocess

import pytest

from conftest import expect_errno, pattern, tmpfs_at, wait_until
from test_replica import Pair, secret  # noqa: F401 (fixture)

NOBODY = 65534


@pytest.fixture
def mount(mount_factory):
    """The default heap, open to other users (they run commands here as on tmpfs)."""
    return mount_factory(extra=("-o", "allow_other"))


@pytest.fixture
def tmpfs(tmp_path):
    with tmpfs_at(tmp_path / "tmpfs-xattr", "size=64m,nr_inodes=16384") as d:
        yield d


def run(*cmd, cwd=None, user=None, check=True):
    """A command as a user would type it (user: run as that uid/gid, no supplementary
    groups), its stdout; check=False: (returncode, stdout)."""
    if user is not None:
        cmd = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, (cmd, r.stderr)
        return r.stdout
    return r.returncode, r.stdout


def dump(d, *names):
    """getfattr -d of every namespace, paths relative to d."""
    return run("getfattr", "-h", "-d", "-m", "-", "-e", "hex", *names, cwd=d)


def facl(d, *names):
    return run("getfacl", "-n", *names, cwd=d)


def both(tmpfs, heap, fn):
    """fn(dir) on tmpfs and on the heap: the two results."""
    return fn(tmpfs), fn(heap)


# ---- 1. the virtual user.heapfs.* names are read by name, never listed

def test_dump_and_copy_match_tmpfs(mount, tmpfs, tmp_path):
    def steps(d):
        (d / "f").write_bytes(b"data")
        (d / "dir").mkdir()
        run("setfattr", "-n", "user.colour", "-v", "blue", "f", cwd=d)
        run("setfattr", "-n", "user.b", "-v", "0x00ff", "f", cwd=d)
        run("setfattr", "-n", "user.a", "-v", "", "dir", cwd=d)
        return dump(d, "f", "dir"), sorted(os.listxattr(d / "f"))

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert got[1] == ["user.b", "user.colour"]
    # still there for whoever asks by name
    f = mount.heap() / "f"
    assert run("getfattr", "-n", "user.heapfs.heap", "--only-values", str(f)) == "scratch"
    assert os.getxattr(f, "user.heapfs.order") and os.getxattr(f, "user.heapfs.blocks")
    expect_errno(errno.EPERM, os.setxattr, f, "user.heapfs.heap", b"x")
    # cp -a out of the heap copies what tmpfs's copy would
    out = tmp_path / "out"
    for src in (tmpfs, mount.heap()):
        out.mkdir()
        run("cp", "-a", str(src / "f"), str(src / "dir"), str(out))
        run("setfattr", "-n", "user.copied", "-v", "1", "f", cwd=out)  # the copy is writable
        if src == tmpfs:
            want = dump(out, "f", "dir")
        else:
            assert dump(out, "f", "dir") == want
        shutil.rmtree(out)


# ---- 2. capacity: what tmpfs holds, charged to the inode space `df -i` shows

def ffree(d):
    return os.statvfs(d).f_ffree


def test_many_and_large_xattrs_as_tmpfs(mount, tmpfs):
    def steps(d):
        f = d / "f"
        f.write_bytes(b"content")
        free0 = ffree(d)
        for k in range(1000):
            os.setxattr(f, f"user.attr{k:04}", b"v%d" % k)
        os.setxattr(f, "user.big", pattern(65536, 3))  # the VFS's largest value
        used = free0 - ffree(d)
        # one more byte is the VFS's refusal on both, before either is asked
        expect_errno(errno.E2BIG, os.setxattr, f, "user.big", pattern(65537, 3))
        names = os.listxattr(f)
        values = {n: os.getxattr(f, n) for n in names}
        for n in names:
            os.removexattr(f, n)
        return len(names), values, used > 0, ffree(d) == free0

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert want[0] == 1001 and want[2] and want[3]
    assert got[1]["user.big"] == pattern(65536, 3)


def fill_xattrs(d, value):
    """Set user.NNNN = value on d/f until ENOSPC: how many fit."""
    f = d / "f"
    f.touch()
    k = 0
    while True:
        try:
            os.setxattr(f, f"user.{k:04}", value)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return k
        k += 1


def test_xattrs_fill_the_inode_space_as_tmpfs(mount_factory, tmp_path):
    """Both bound xattrs by the inode limit (tmpfs: nr_inodes, a heap: inodes): the same
    1 KiB values run out at about the same count, `df -i` shows them, nothing set before
    the refusal is lost, and removing them gives the space back."""
    small = tmp_path / "small-tmpfs"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=64", "tmpfs", str(small)],
                   check=True)
    try:
        m = mount_factory('heap "h" { size = 16M  min_block = 4K  inodes = 64 }\n')
        counts = []
        for d in (small, m.heap("h")):
            free0 = ffree(d)
            n = fill_xattrs(d, pattern(1000, 5))
            counts.append(n)
            assert ffree(d) == 0  # full, as df -i says
            f = d / "f"
            assert all(os.getxattr(f, f"user.{k:04}") == pattern(1000, 5) for k in range(n))
            # a smaller one may still fit in what is left; a new file does not
            expect_errno(errno.ENOSPC, os.mknod, d / "g")
            for k in range(n):
                os.removexattr(f, f"user.{k:04}")
            assert ffree(d) == free0 - 1  # f itself
            # and all of it is usable again
            assert fill_xattrs(d, pattern(1000, 5)) == n
        # tmpfs charges each ~1 KiB value a little less per entry than heapfs's 80 bytes
        assert abs(counts[0] - counts[1]) <= 2, counts
    finally:
        subprocess.run(["umount", str(small)], check=True)


# ---- 8. trusted.* and security.* (root), file capabilities

def test_trusted_and_security_xattrs_as_tmpfs(mount, tmpfs):
    def steps(d):
        (d / "f").write_bytes(b"x")
        (d / "dir").mkdir()
        os.chmod(d / "dir", 0o777)
        run("setfattr", "-n", "trusted.overlay.opaque", "-v", "y", "dir", cwd=d)
        run("setfattr", "-n", "trusted.big", "-v", "0x" + "ab" * 4000, "f", cwd=d)
        run("setfattr", "-n", "security.test", "-v", "s", "f", cwd=d)
        run("setfattr", "-n", "user.u", "-v", "u", "f", cwd=d)
        rc_unknown, _ = run("setfattr", "-n", "system.nonsense", "-v", "1", "f", cwd=d,
                            check=False)
        # another user sees neither trusted.* listed nor may set one
        seen = run("getfattr", "-d", "-m", "-", "f", "dir", cwd=d, user=NOBODY)
        rc_user, _ = run("setfattr", "-n", "trusted.x", "-v", "1", "dir", cwd=d, user=NOBODY,
                         check=False)
        run("setfattr", "-x", "trusted.big", "f", cwd=d)
        return dump(d, "f", "dir"), seen, rc_user, rc_unknown

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert "trusted.overlay.opaque" in want[0] and "trusted" not in want[1]
    assert want[2] != 0 and want[3] != 0


def test_setcap_binary_gets_its_capability(mount_factory, tmpfs):
    """setcap on a binary in a heap: getcap shows it and running it (as nobody) gives the
    process the capability, as on tmpfs.  (libfuse mounts nosuid unless told `-o suid`;
    tmpfs mounts suid: on a nosuid mount the kernel ignores file capabilities.)"""
    m = mount_factory(extra=("-o", "allow_other,suid"))

    def steps(d):
        b = d / "capsh"
        shutil.copy2(shutil.which("capsh"), b)
        os.chmod(b, 0o755)
        run("setcap", "cap_net_bind_service,cap_net_raw+ep", str(b))
        shown = run("getcap", str(b)).replace(str(d), "D")
        proc = run(str(b), "--print", user=NOBODY)
        current = [ln for ln in proc.splitlines() if ln.startswith("Current:")]
        # a write, a truncate, a chown each take the capability away (even root's)
        gone = []
        def append():
            with open(b, "ab") as fh:
                fh.write(b"\0")
        for change in (append,
                       lambda: os.truncate(b, os.stat(b).st_size),
                       lambda: os.chown(b, 0, 0)):
            run("setcap", "cap_net_raw+ep", str(b))
            change()
            gone.append(run("getcap", str(b)))
        return shown, current, gone

    want, got = both(tmpfs, m.heap(), steps)
    assert want == got
    assert "cap_net_bind_service,cap_net_raw=ep" in want[0]
    assert "cap_net_bind_service,cap_net_raw=ep" in want[1][0]
    assert want[2] == ["", "", ""]


# ---- 8. POSIX ACLs: stored, kept in step with the mode, inherited, enforced

def stat_modes(d, *names):
    return {n: oct(os.lstat(d / n).st_mode) for n in names}


def test_access_acl_and_chmod_as_tmpfs(mount, tmpfs):
    def steps(d):
        f = d / "f"
        f.write_bytes(b"secret\n")
        os.chmod(f, 0o600)
        out = []
        out.append(run("cat", "f", cwd=d, user=NOBODY, check=False)[0])  # denied
        run("setfacl", "-m", f"u:{NOBODY}:r,g:12345:rw", "f", cwd=d)
        out += [facl(d, "f"), stat_modes(d, "f"), dump(d, "f")]
        out.append(run("cat", "f", cwd=d, user=NOBODY, check=False))  # the ACL lets it in
        out.append(run("sh", "-c", "echo x >> f", cwd=d, user=NOBODY, check=False)[0])
        os.chmod(f, 0o640)  # the mask follows the group bits
        out += [facl(d, "f"), stat_modes(d, "f")]
        os.chmod(f, 0o600)  # a mask of --- takes the named user's read away
        out.append(run("cat", "f", cwd=d, user=NOBODY, check=False)[0])
        # an ACL the mode says whole is no ACL: the mode changes, nothing is stored
        run("setfacl", "-b", "f", cwd=d)
        run("setfacl", "-m", "u::rwx,g::r-x,o::r--", "f", cwd=d)
        out += [facl(d, "f"), stat_modes(d, "f"), dump(d, "f")]
        # an empty ACL removes it (none there: fine too); a malformed one is refused
        for v in ("0x02000000", "0x03000000", "0x0200000001000700000000"):
            out.append(run("setfattr", "-n", "system.posix_acl_access", "-v", v, "f", cwd=d,
                           check=False)[0])
        out.append(facl(d, "f"))
        return out

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert want[0] != 0 and want[4] == (0, "secret\n") and want[5] != 0
    assert f"user:{NOBODY}:r--" in want[1] and "mask::rw-" in want[1]
    assert "mask::r--" in want[6] and want[8] != 0
    assert "system.posix_acl_access" not in want[11] and want[10]["f"] == oct(0o100754)
    assert want[12] == 0 and want[13] != 0 and want[14] != 0


def test_default_acl_inherited_as_tmpfs(mount, tmpfs):
    def steps(d):
        os.mkdir(d / "share")
        os.chmod(d / "share", 0o750)
        run("setfacl", "-d", "-m", f"u:{NOBODY}:rwx,g::r-x,o::---", "share", cwd=d)
        run("setfacl", "-m", f"u:{NOBODY}:rx", "share", cwd=d)
        # new entries take the default ACL, not the umask; the mode they asked for masks it
        run("sh", "-c", "umask 077 && echo data > share/file && mkdir share/sub && "
            "mkdir -m 700 share/private && mknod share/fifo p && ln -s file share/link", cwd=d)
        # a plain directory keeps the umask
        run("sh", "-c", "umask 027 && mkdir plain && echo y > plain/f", cwd=d)
        names = ("share", "share/file", "share/sub", "share/private", "share/fifo",
                 "share/link", "plain", "plain/f")
        out = [facl(d, *[n for n in names if n != "share/link"]), stat_modes(d, *names),
               dump(d, *names)]
        # and a grandchild of the default
        run("sh", "-c", "umask 022 && echo z > share/sub/deep", cwd=d)
        out.append(facl(d, "share/sub/deep"))
        out.append(run("cat", "share/file", cwd=d, user=NOBODY, check=False))
        out.append(run("sh", "-c", "echo w > share/sub/mine", cwd=d, user=NOBODY,
                       check=False)[0])
        # removing the default stops inheriting
        run("setfacl", "-k", "share", cwd=d)
        run("sh", "-c", "umask 022 && echo q > share/after", cwd=d)
        out += [facl(d, "share", "share/after"), stat_modes(d, "share/after")]
        return out

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert f"default:user:{NOBODY}:rwx" in want[0]
    assert want[4] == (0, "data\n") and want[5] == 0
    assert want[7]["share/after"] == oct(0o100644)


# ---- what they add, replicated (verify clean) and through an image

def xattr_tree(d):
    """Everything this file adds, made as a user makes it."""
    os.mkdir(d / "share")
    run("setfacl", "-d", "-m", f"u:{NOBODY}:rwx,g::r-x,o::---", "share", cwd=d)
    run("setfacl", "-m", f"u:{NOBODY}:rx,m::rx", "share", cwd=d)
    run("sh", "-c", "umask 022 && echo data > share/file && mkdir share/sub", cwd=d)
    os.chmod(d / "share/file", 0o664)  # the inherited ACL's mask follows
    f = d / "f"
    f.write_bytes(b"f")
    for k in range(300):
        os.setxattr(f, f"user.attr{k:03}", b"v%d" % k)
    os.setxattr(f, "user.big", pattern(65536, 9))
    os.setxattr(f, "user.attr007", b"replaced")
    os.removexattr(f, "user.attr008")
    run("setfattr", "-n", "trusted.overlay.opaque", "-v", "y", "share/sub", cwd=d)
    run("setfattr", "-n", "security.test", "-v", "s", "f", cwd=d)
    run("setfacl", "-m", "u::rwx,g::r--,o::---", "f", cwd=d)  # the mode only
    (d / "g").write_bytes(b"g")
    run("setfacl", "-m", f"u:{NOBODY}:rw", "g", cwd=d)
    run("setfacl", "-x", f"u:{NOBODY}", "g", cwd=d)  # back to a mask-only ACL


NAMES = ("share", "share/file", "share/sub", "f", "g")


def look(d):
    return dump(d, *NAMES), facl(d, *NAMES), stat_modes(d, *NAMES)


def test_replicated_xattrs_and_acls(mount_factory, secret, tmpfs):  # noqa: F811
    xattr_tree(tmpfs)
    want = look(tmpfs)
    p = Pair(mount_factory, secret)
    xattr_tree(p.a.heap("data"))
    assert look(p.a.heap("data")) == want
    wait_until(lambda: look(p.b.heap("data")) == want, 10, "the mirror shows the same")
    p.verify()
    p.verify(p.b)
    # and a change the verify must see: the mirror's copy is the owner's again after it
    run("setfacl", "-m", "u:4242:r", "g", cwd=p.a.heap("data"))
    os.setxattr(p.a.heap("data") / "f", "user.attr000", b"changed")
    assert look(p.b.heap("data")) == look(p.a.heap("data"))  # sync: applied before reply
    p.verify()
    p.clean()


def test_image_round_trip_keeps_xattrs_and_acls(mount_factory, tmp_path, tmpfs):
    img = tmp_path / "xattr.img"
    cfg = f'heap "h" {{ size = 64M  min_block = 4K  inodes = 512  image = "{img}" }}\n'
    xattr_tree(tmpfs)
    want = look(tmpfs)
    m = mount_factory(cfg)
    xattr_tree(m.heap("h"))
    assert look(m.heap("h")) == want
    free = ffree(m.heap("h"))
    assert free < 512 - 6 - 60  # the xattrs took inode space
    assert m.stop() == 0
    m2 = mount_factory(cfg)
    assert look(m2.heap("h")) == want
    assert ffree(m2.heap("h")) == free  # charged again, to the byte's inode
    # the restored default ACL still makes new entries as tmpfs's does
    for d in (tmpfs, m2.heap("h")):
        run("sh", "-c", "umask 077 && echo n > share/new", cwd=d)
    assert facl(tmpfs, "share/new") == facl(m2.heap("h"), "share/new")


def test_acl_set_by_a_non_member_clears_setgid_as_tmpfs(mount, tmpfs):
    """The owner of a setgid file who is not in its group loses setgid by setting an ACL
    (root, or a member, keeps it)."""
    def steps(d):
        out = []
        for name, group in (("other", 12345), ("member", NOBODY)):
            f = d / name
            f.write_bytes(b"x")
            os.chown(f, NOBODY, group)
            os.chmod(f, 0o2775)
            run("setfacl", "-m", "u:4242:r", name, cwd=d, user=NOBODY)
            out.append(stat_modes(d, name))
        f = d / "root"
        f.write_bytes(b"x")
        os.chown(f, NOBODY, 12345)
        os.chmod(f, 0o2775)
        run("setfacl", "-m", "u:4242:r", "root", cwd=d)
        out.append(stat_modes(d, "root"))
        return out

    want, got = both(tmpfs, mount.heap(), steps)
    assert want == got
    assert want == [{"other": oct(0o100775)}, {"member": oct(0o102775)},
                    {"root": oct(0o102775)}]
