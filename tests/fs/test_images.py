"""Heap images (issue 7): `image = PATH` restores a heap at mount and saves it at a clean
unmount or SIGTERM; bad images are refused before anything is mounted; a failed save
leaves the previous image as it was."""
import errno
import hashlib
import os
import signal
import stat
import subprocess

import pytest

from conftest import (HEAPFS, HEAPFSCTL, expect_errno, KIB, MIB, pattern, read_daemon, start_heapfs, unmount,
                      wait_until)

SIZES = [0, 1, 63, 4095, 4096, 4097, 65536 + 7, MIB + 3, 5 * MIB - 1]


def config(img, size="64M", extra=""):
    return f'heap "h" {{ size = {size}  min_block = 4K  image = "{img}" {extra} }}\n'


def build_tree(root):
    """Directories, files of awkward sizes, hard links, symlinks, a fifo, xattrs, modes,
    owners and times."""
    os.makedirs(root / "a/b/c")
    for k, n in enumerate(SIZES):
        (root / f"a/f{n}").write_bytes(pattern(n, k))
    (root / "a/b/c/deep").write_bytes(b"deep\n")
    os.link(root / "a/f4097", root / "a/b/hard")
    os.link(root / "a/f4097", root / "hard2")
    os.symlink("a/b/c/deep", root / "sym")
    os.symlink("/nowhere/at/all", root / "a/dangling")
    os.mkfifo(root / "a/fifo", 0o600)
    os.setxattr(root / "a/f1", "user.colour", b"blue")
    os.setxattr(root / "a/b", "user.empty", b"")
    os.setxattr(root / "a/f0", "user.bin", bytes(range(256)))
    os.chmod(root / "a/f63", 0o4751)
    os.chmod(root / "a/b", 0o2750)
    os.chown(root / "a/f4095", 1234, 5678)
    os.chown(root / "a/b/c", 4321, 8765)
    os.lchown(root / "sym", 42, 43)
    for k, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000_123_456_789 + k, 1_500_000_000_987_654_321 + k),
                 follow_symlinks=False)


def listing(root):
    """What a restore must give back, path by path (hard links share an inode group)."""
    out, groups = {}, {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
             "mtime": st.st_mtime_ns, "size": st.st_size,
             "group": groups.setdefault(st.st_ino, len(groups)),
             "xattrs": {n: os.getxattr(p, n, follow_symlinks=False)
                        for n in os.listxattr(p, follow_symlinks=False)
                        if not n.startswith("user.heapfs.")}}
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            e["sha"] = hashlib.sha256(read_daemon(p)).hexdigest()
        out[rel] = e
    return out


def test_heap_round_trip_through_unmount_and_mount(mount_factory, tmp_path):
    img = tmp_path / "h.img"
    m = mount_factory(config(img))
    build_tree(m.heap("h"))
    before = listing(m.heap("h"))
    top = os.stat(m.heap("h"))
    assert m.stop() == 0
    assert img.exists()
    ls = subprocess.run([str(HEAPFSCTL), "image", "ls", str(img)], capture_output=True,
                        text=True)
    assert ls.returncode == 0 and "a/b/c/deep" in ls.stdout, ls.stdout + ls.stderr
    m2 = mount_factory(config(img))
    assert listing(m2.heap("h")) == before
    assert os.stat(m2.heap("h")).st_mode == top.st_mode
    h = m2.heap_stats("h")
    assert h["used"] == sum(((n + 4 * KIB - 1) // (4 * KIB)) * 4 * KIB
                            for n in SIZES) + 4 * KIB  # a/b/c/deep
    # the restored heap is an ordinary heap: it changes and is saved again
    (m2.heap("h") / "new").write_bytes(b"after restore")
    os.unlink(m2.heap("h") / "a/f0")
    after = listing(m2.heap("h"))
    assert m2.stop() == 0
    m3 = mount_factory(config(img))
    assert listing(m3.heap("h")) == after


def test_sigterm_saves_too(mount_factory, tmp_path):
    img = tmp_path / "h.img"
    m = mount_factory(config(img))
    (m.heap("h") / "f").write_bytes(pattern(3 * MIB, 5))
    m.proc.send_signal(signal.SIGTERM)
    assert m.wait_exit(10) == 0, m.stderr_text()
    unmount(m.path)
    m2 = mount_factory(config(img))
    assert read_daemon(m2.heap("h") / "f") == pattern(3 * MIB, 5)


def test_heap_without_image_file_starts_empty(mount_factory, tmp_path):
    m = mount_factory(config(tmp_path / "none-yet.img"))
    assert os.listdir(m.heap("h")) == []


def refused(tmp_path, cfg_text, img):
    """heapfs with this config must exit 2 before mounting, naming the image."""
    cfg = tmp_path / "bad.conf"
    cfg.write_text(cfg_text)
    mnt = tmp_path / "badmnt"
    mnt.mkdir(exist_ok=True)
    before = img.read_bytes()
    r = subprocess.run([str(HEAPFS), "-f", "-c", str(cfg),
                        str(mnt)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"heapfs: {img}: " in r.stderr, r.stderr
    assert img.read_bytes() == before  # refused, and left as it was
    with open("/proc/self/mountinfo") as f:
        assert str(mnt) not in f.read()
    return r.stderr


@pytest.fixture
def good_image(mount_factory, tmp_path):
    img = tmp_path / "h.img"
    m = mount_factory(config(img))
    build_tree(m.heap("h"))
    assert m.stop() == 0
    return img


def test_truncated_image_refused(good_image, tmp_path):
    data = good_image.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 100):
        good_image.write_bytes(data[:cut])
        assert "truncated" in refused(tmp_path, config(good_image), good_image)


def test_bit_flipped_image_refused(good_image, tmp_path):
    data = bytearray(good_image.read_bytes())
    for pos in (400, len(data) // 3, len(data) - 20):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        good_image.write_bytes(flipped)
        refused(tmp_path, config(good_image), good_image)


def test_wrong_version_and_wrong_size_refused(good_image, tmp_path):
    data = bytearray(good_image.read_bytes())
    v = bytearray(data)
    v[8:12] = (99).to_bytes(4, "little")  # the version field follows the 8-byte magic
    good_image.write_bytes(v)
    assert "version" in refused(tmp_path, config(good_image), good_image)
    good_image.write_bytes(data)
    assert "size" in refused(tmp_path, config(good_image, size="128M"), good_image)


def test_failed_save_keeps_the_previous_image(mount_factory, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        img = small / "h.img"
        m = mount_factory(config(img))
        (m.heap("h") / "little").write_bytes(b"first save")
        assert m.stop() == 0
        first = img.read_bytes()
        m2 = mount_factory(config(img))
        (m2.heap("h") / "big").write_bytes(pattern(4 * MIB, 9))  # the image cannot fit
        m2.expect_exit = 1
        assert m2.stop() == 1
        assert "not saved" in m2.stderr_text() and str(img) in m2.stderr_text()
        assert img.read_bytes() == first
        assert os.listdir(small) == ["h.img"]  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(small)], check=True)


# ---- heapfsctl save: a consistent image of a live heap

def test_ctl_save_of_a_live_heap_under_writes(mount_factory, tmp_path):
    """Writers rewrite files whole (every byte of a file equals one counter) while
    `heapfsctl save` runs again and again: each saved image restores to files that are
    each whole (one counter value), and writers were never stopped for the save."""
    m = mount_factory(config(tmp_path / "unused.img"))
    h = m.heap("h")
    build_tree(h)
    names = [f"w{k}" for k in range(4)]
    for n in names:
        (h / n).write_bytes(bytes([0]) * (256 * KIB))
    stop = {"now": False}
    rounds = {"n": 0}

    def writer(name, base):
        # one write() of the whole file: one request, so one change the snapshot sees
        # whole or not at all (a truncate and a write would be two)
        v = base
        fd = os.open(h / name, os.O_WRONLY)
        try:
            while not stop["now"]:
                os.pwrite(fd, bytes([v % 251]) * (256 * KIB), 0)
                v += 1
                rounds["n"] += 1
        finally:
            os.close(fd)

    import threading
    ts = [threading.Thread(target=writer, args=(n, k * 50)) for k, n in enumerate(names)]
    for t in ts:
        t.start()
    saved = []
    try:
        for k in range(4):
            out = tmp_path / f"live{k}.img"
            r = subprocess.run([str(HEAPFSCTL), "save", str(m.path), "h", str(out)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert f"saved heap h to {out}" in r.stdout
            saved.append(out)
    finally:
        stop["now"] = True
        for t in ts:
            t.join()
    assert rounds["n"] > 8  # the writers kept going
    tree = listing(h)
    for k, img in enumerate(saved):
        m2 = mount_factory(config(img), name=f"restored{k}")
        r2 = m2.heap("h")
        for n in names:
            data = read_daemon(r2 / n)
            assert len(data) == 256 * KIB and len(set(data)) == 1, (img, n)
        # the rest of the tree, untouched by the writers, is exactly as it was
        got = listing(r2)
        assert {p: e for p, e in got.items() if p not in names} == \
            {p: e for p, e in tree.items() if p not in names}
        assert m2.stop() == 0


def test_ctl_save_errors(mount_factory, tmp_path):
    m = mount_factory(config(tmp_path / "unused.img"))
    (m.heap("h") / "f").write_bytes(b"x")
    prev = tmp_path / "prev.img"
    prev.write_bytes(b"previous")
    # no such heap, not a mount, a destination directory that does not exist
    r = subprocess.run([str(HEAPFSCTL), "save", str(m.path), "nope", str(prev)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no heap named 'nope'" in r.stderr
    r = subprocess.run([str(HEAPFSCTL), "save", str(tmp_path), "h", str(prev)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    r = subprocess.run([str(HEAPFSCTL), "save", str(m.path), "h",
                        str(tmp_path / "gone" / "x.img")], capture_output=True, text=True)
    assert r.returncode == 1 and "gone" in r.stderr
    r = subprocess.run([str(HEAPFSCTL), "save", str(m.path), "h"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert prev.read_bytes() == b"previous"
    # the image file is the owner's only: another user cannot read a heap through it
    mode = os.stat(m.path / ".heapfs/images/h").st_mode
    assert stat.S_IMODE(mode) == 0o400
    # a stream: read only, not seekable (pread gets ESPIPE, never a torn image)
    expect_errno(errno.EACCES, os.open, m.path / ".heapfs/images/h", os.O_RDWR)
    fd = os.open(m.path / ".heapfs/images/h", os.O_RDONLY)
    try:
        expect_errno(errno.ESPIPE, os.pread, fd, 4096, 1000)
        assert os.read(fd, 8) == b"HEAPFSIM"  # read() from the start works
    finally:
        os.close(fd)


def test_change_records_in_an_image_are_applied_by_the_daemon(mount_factory, tmp_path):
    """The records a partner stream will carry (rename, truncate, setattr, unlink, exchange)
    restore through the daemon's applier to what heapfsctl image shows for the same file."""
    from test_image_ctl import CHANGED, CHANGES, raw_heap
    img = raw_heap(tmp_path, CHANGES)
    m = mount_factory(config(img))
    h = m.heap("h")
    assert sorted(os.listdir(h)) == sorted(CHANGED)
    assert {n: read_daemon(h / n) for n in CHANGED} == CHANGED
    assert stat.S_IMODE(os.stat(h / "b").st_mode) == 0o600


def test_restore_at_mount_shows_progress_on_a_terminal(mount_factory, tmp_path):
    """heapfs started from a terminal draws a bar while it restores a heap image at mount
    (it has not detached yet), on one line ended with a newline; the restore is whole."""
    import pty
    img = tmp_path / "big.img"
    conf = f'heap "big" {{ size = 64M  image = "{img}" }}\n'
    m = mount_factory(conf)
    (m.heap("big") / "f").write_bytes(pattern(24 * MIB, 7))
    assert m.stop() == 0 and img.stat().st_size > 24 * MIB  # saved at unmount
    mnt = tmp_path / "again"
    mnt.mkdir()
    cfg = tmp_path / "again.conf"
    cfg.write_text(conf)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(str(HEAPFS), ["heapfs", "-f", "-c", str(cfg), str(mnt)],
                  dict(os.environ, HEAPFS_PROGRESS_AFTER_MS="0"))
    out = b""
    try:
        while b"100%" not in out or b"\n" not in out.split(b"100%", 1)[1]:
            out += os.read(fd, 4096)  # the pty ends (EIO) if the daemon dies first
        text = out.decode(errors="replace")
        assert text.startswith("\rbig [") and "] 100%" in text, text
        wait_until(lambda: os.path.ismount(mnt), 10, "the mount")
        assert read_daemon(mnt / "heaps" / "big" / "f") == pattern(24 * MIB, 7)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_save_through_the_client_socket(mount_factory, tmp_path):
    """heapfs_save (what heapfsctl save uses): the output's descriptor goes to the daemon
    over the client socket and its snapshot writes the image into it, from the file's
    offset on; the image restores the heap.  Refused: an output not open for writing
    (EBADF), a proof that is not an image file (EINVAL) or not of this mount (EXDEV), a
    user who may not read .heapfs/images/HEAP (EACCES), a direct_map heap (EOPNOTSUPP:
    no frozen snapshot of shared memory); nothing is written then."""
    import sys
    from pathlib import Path
    sys.path.insert(0, os.environ.get("HEAPFS_PYTHON") or
                    str(Path(os.environ["HEAPFS"]).parent.parent / "python"))
    import heapfs
    m = mount_factory(config(tmp_path / "unused.img") +
                      'heap "dm" { size = 16M  direct_map = true }\n')
    build_tree(m.heap("h"))
    tree = listing(m.heap("h"))
    conn = heapfs.Connection(str(m.path))
    proof = os.open(m.path / ".heapfs/images/h", os.O_PATH)
    try:
        _save_checks(m, conn, proof, tmp_path, mount_factory, tree)
    finally:
        os.close(proof)
        conn.close()
    _save_refused_to_another_user(m, tmp_path)


def _save_checks(m, conn, proof, tmp_path, mount_factory, tree):
    out = tmp_path / "sock.img"
    with open(out, "wb") as f:
        f.write(b"PREFIX")  # the image goes after it: from the file's offset
        f.flush()
        n = conn.save(proof, f.fileno())
    data = out.read_bytes()
    assert data[:6] == b"PREFIX" and len(data) == 6 + n and data[6:14] == b"HEAPFSIM"
    out.write_bytes(data[6:])
    m2 = mount_factory(config(out), name="restored")
    assert listing(m2.heap("h")) == tree
    assert m2.stop() == 0
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"")
    with open(bad, "rb") as f:
        expect_errno(errno.EBADF, conn.save, proof, f.fileno())
    with open(bad, "wb") as f:
        plain = os.open(m.heap("h") / "a/f63", os.O_RDONLY)  # a file, not an image
        expect_errno(errno.EINVAL, conn.save, plain, f.fileno())
        os.close(plain)
        other = os.open(tmp_path, os.O_PATH)
        expect_errno(errno.EXDEV, conn.save, other, f.fileno())
        os.close(other)
        dmproof = os.open(m.path / ".heapfs/images/dm", os.O_PATH)
        expect_errno(errno.EOPNOTSUPP, conn.save, dmproof, f.fileno())
        os.close(dmproof)
    assert bad.read_bytes() == b""


def _save_refused_to_another_user(m, tmp_path):
    """The socket lets another user connect (it proves nothing); its uid is refused even
    with descriptors root opened: it asks SAVE itself, with root's proof and output."""
    bad = tmp_path / "bad.img"
    name = m.stats()["client_socket"]  # "@...": abstract (the child puts the NUL back)
    proof = os.open(m.path / ".heapfs/images/h", os.O_PATH)
    out = os.open(bad, os.O_WRONLY)
    code = """
import socket, struct, sys
name, proof, out = sys.argv[1].replace('@', '\\0', 1), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(name)
socket.send_fds(s, [struct.pack('<QIIIIQQQ', 0x6c63666870616568, 1, 5, 0, 0, 0, 0, 0)],
                [proof, out])
rep = s.recv(4096)
print(struct.unpack_from('<Qi', rep)[1])
"""
    try:
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", code, name, str(proof), str(out)],
                           pass_fds=(proof, out), capture_output=True, text=True, timeout=60)
    finally:
        os.close(proof)
        os.close(out)
    assert r.returncode == 0 and int(r.stdout) == -errno.EACCES, (r.stdout, r.stderr)
    assert bad.read_bytes() == b""
