"""What tmpfs does and heapfs must do as well (issue 23): each test runs the same steps on a
real tmpfs and on a heap in the same test and compares.  File handles that outlive the
kernel's inode cache, direct I/O coherence with a kept page cache, suid/sgid clearing,
atime, RENAME_WHITEOUT and overlayfs with a heap as its upper layer."""
import ctypes
import errno
import os

import pytest

from conftest import expect_errno

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
MAX_HANDLE_SZ = 128


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def name_to_handle(path):
    """name_to_handle_at(2) of path: the handle (a struct the kernel filled)."""
    fh = FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mnt = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh),
                              ctypes.byref(mnt), 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return fh


def open_by_handle(mount_dir, fh, flags=os.O_RDONLY):
    """open_by_handle_at(2) through a descriptor of the mount: a new descriptor."""
    mfd = os.open(mount_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), flags)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return fd
    finally:
        os.close(mfd)


def drop_caches():
    """The kernel forgets every unused dentry and inode (a FUSE mount gets FORGETs)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def handles_after_drop_caches(top):
    """Handles of a file and a directory taken, the caches dropped: what opening them by
    handle gives (the file's bytes, the directory's names and its parent's), then the
    errno of a handle whose file was removed, also after a new file took its place."""
    d = top / "d"
    d.mkdir()
    (d / "f").write_bytes(b"by handle\n")
    (d / "gone").write_bytes(b"x")
    hf, hd, hg = name_to_handle(d / "f"), name_to_handle(d), name_to_handle(d / "gone")
    os.unlink(d / "gone")
    drop_caches()
    fd = open_by_handle(top, hf)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    dfd = open_by_handle(top, hd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(os.listdir(dfd))
        # ".." of a directory decoded from a handle is its real parent
        pfd = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
        up = sorted(os.listdir(pfd))
        os.close(pfd)
    finally:
        os.close(dfd)
    stale = expect_errno(errno.ESTALE, open_by_handle, top, hg).errno
    (d / "new").write_bytes(b"y")  # may take the removed file's number, not its generation
    drop_caches()
    stale2 = expect_errno(errno.ESTALE, open_by_handle, top, hg).errno
    return data, names, up, stale, stale2


def test_file_handles_outlive_the_inode_cache_as_on_tmpfs(mount, tmpfs):
    want = handles_after_drop_caches(tmpfs)
    assert want == (b"by handle\n", ["f"], ["d"], errno.ESTALE, errno.ESTALE)
    assert handles_after_drop_caches(mount.heap()) == want
