"""Replication facing a hostile or broken partner (issue 16, "Every input is hostile"): the
fs side of the link (fs/repl/) with two real daemons.  A promote racing the records it
receives, a record the mirror cannot apply, what one verify request may cost, writers
during a verify, names that are not UTF-8, and a HELLO listing more heaps than fit one
buffer.  Run under the ASan and TSan daemons too (a sanitizer report fails the test)."""
import errno
import json
import os
import subprocess
import threading
import time

from conftest import HEAPFSCTL, MIB, pattern, read_daemon, wait_until
from test_replica import Pair, partner, secret, wait_state  # noqa: F401 (fixture)


def roles(p):
    return p.a.heap_stats("data")["role"], p.b.heap_stats("data")["role"]


def settled(p, owner, mirror):
    """owner owns data, mirror mirrors it, both connected and done resyncing."""
    def ok():
        try:
            return (owner.heap_stats("data")["role"] == "owner" and
                    mirror.heap_stats("data")["role"] == "mirror" and
                    partner(owner)["state"] == "connected" and
                    partner(mirror)["state"] == "connected")
        except OSError:
            return False
    wait_until(ok, 30, "roles settled")


def test_promote_force_while_records_stream(mount_factory, secret):
    """The mirror applies a stream of records on its receive thread while `promote --force`
    on a FUSE worker ends its applier (repl.c "Locking", r->alock): nothing is applied to
    the heap once it is owned, no applier is freed under its user (TSan, ASan), and after
    each takeover the pair settles with equal copies.  Twelve rounds, the roles swapping;
    writes of up to 1 MiB keep the mirror's receive thread busy applying, so the promote
    lands in the middle of a record."""
    p = Pair(mount_factory, secret, mode="async")
    owner, mirror = p.a, p.b
    for rnd in range(12):
        stop = threading.Event()
        wrote = [0]
        problems = []

        def writer(m=owner):
            d = m.heap("data")
            while not stop.is_set():
                n = wrote[0]
                try:
                    with open(d / f"f{n % 40}", "wb") as f:
                        f.write(bytes([n % 251]) * (MIB // 4 * (1 + n % 4) - n % 3000))
                    if n % 7 == 0:
                        os.truncate(d / f"f{n % 40}", n % 100)
                    wrote[0] += 1
                except OSError as e:  # taken over: read-only here now
                    if e.errno != errno.EROFS:
                        problems.append(e)
                    return

        t = threading.Thread(target=writer)
        t.start()
        wait_until(lambda: wrote[0] > 10 + rnd, 10, "records flowing")
        r = mirror.ctl("promote", "--force", mirror.path, "data")
        stop.set()
        t.join(30)
        assert not t.is_alive()
        assert r.returncode == 0, r.stderr
        assert not problems, problems
        owner, mirror = mirror, owner
        settled(p, owner, mirror)
        (owner.heap("data") / "after").write_bytes(b"%d" % rnd)  # the new owner writes
        wait_until(lambda: p.verify(owner)["differences"] == 0, 10, "copies equal")
    assert partner(owner)["epoch"] >= 13


def test_record_the_mirror_cannot_apply_resyncs(mount_factory, secret):
    """The owner allows more inodes than the mirror's copy of the heap may hold (the
    mirror derives its limit from the size: 1024 for 1M).  The create the mirror refuses
    is answered with an error ack (not -ENOSPC, which would mean "give the write back"),
    the mirror says why once and applies nothing after it, the owner resyncs the whole
    heap (refused too while it does not fit); once the owner is back under the limit the
    copies agree."""
    p = Pair(mount_factory, secret, mode="sync", size="1M", extra_a="inodes = 4000")
    d = p.a.heap("data")
    for k in range(1100):
        (d / f"n{k}").write_bytes(b"")
    wait_until(lambda: "a change was refused" in p.a.stderr_text(), 10, "owner told")
    fails = [ln for ln in p.b.stderr_text().splitlines()
             if ln.startswith("heapfs: partner: a change to data")]
    assert len(fails) == 1, fails  # once, with the applier's reason
    for k in range(1100 - 200, 1100):
        os.unlink(d / f"n{k}")
    (d / "last").write_bytes(b"x" * 5000)
    wait_until(lambda: (p.b.heap("data") / "last").exists() and
               len(os.listdir(p.b.heap("data"))) == 901, 30, "mirror whole again")
    wait_state(p.a, "connected", 30)
    p.verify()
    assert p.b.proc.poll() is None and p.a.proc.poll() is None


def test_verify_any_name_any_size_and_only_for_the_owner(mount_factory, secret):
    """File names are bytes: names that are not UTF-8, with backslashes, and paths past
    the key limit (1024) verify clean on both sides (before, such a name dropped the
    reply).  A heap whose checksums take more than one message (2 MiB) verifies too: the
    answer goes in parts.  .heapfs/verify is for the mount's owner (mode 0400)."""
    p = Pair(mount_factory, secret, mode="async", size="256M")
    d = p.a.heap("data")
    st = os.stat(p.a.path / ".heapfs" / "verify")
    assert st.st_mode & 0o777 == 0o400 and st.st_uid == os.getuid()
    odd = [b"caf\xe9", b"\xff\xfe", b"back\\slash", b"\\x41", b"A", b"\xc0\xaf", b"\xed\xa0\x80",
           "ünï".encode()]
    for n in odd:
        with open(os.path.join(bytes(d), n), "wb") as f:
            f.write(n)
    deep = bytes(d)
    for k in range(6):  # 6 x 201 bytes: past the key limit
        deep = os.path.join(deep, b"%c" % (0x61 + k) * 200 + b"\xfe")
        os.mkdir(deep)
    with open(os.path.join(deep, b"leaf"), "wb") as f:
        f.write(b"deep")
    many = d / "many"
    many.mkdir()
    for k in range(9000):  # ~260 bytes of JSON each: 2.3 MiB of checksums
        (many / (f"{k:05d}" + "x" * 200)).write_bytes(b"")
    names = len(odd) + 6 + 1 + 1 + 9000
    for m in (p.a, p.b):
        j = p.verify(m)
        assert j["heaps"]["data"]["files"] == names, j
    # the mirror's copy really is compared: a refused verify would say "unreachable"
    assert "cannot answer" not in p.a.stderr_text() + p.b.stderr_text()


def test_writers_go_on_while_the_partner_hashes_for_a_verify(mount_factory, secret):
    """.heapfs/verify hashes each file under its own lock; the namespace is held only while
    the names are listed.  Asked by the mirror, the owner hashes its heap for the answer:
    2000 files, a 64 GiB sparse file (seconds of hashing), 4000 more files, in that order.
    The answer goes to the mirror in parts of about 190 KB as it is hashed, and the link
    keeps order.  Once the parts before the big file arrived, a create, a write and a
    rename in the same heap complete, and reach the mirror, while that verify is still in
    progress and before the 1.2 MB of the parts after the big file: an order, not a speed.
    (With the namespace held for the whole answer, the changes waited for all of it but its
    last part.)  The verify itself is clean: the names each side listed did not change.
    The mirror's status is read while its verify runs: over /dev/fuse, where the open of
    .heapfs/verify gives the watcher's token up (before, every request to the mirror waited
    for the verify); over io_uring a ring worker serves its CPU's requests one at a time,
    so a read from the verify's CPU would wait (GUIDE)."""
    p = Pair(mount_factory, secret, mode="async", size="64M", opts=("-o", "io_uring=off"))
    d, mirror = p.a.heap("data"), p.b.heap("data")
    pad = "x" * 240  # a key of 246 bytes: 299 bytes of answer, a part every 631 names
    for k in range(2000):
        (d / f"a{k:05d}{pad}").write_bytes(b"")
    with open(d / "sparse", "wb") as f:
        f.truncate(64 << 30)
    for k in range(4000):
        (d / f"b{k:05d}{pad}").write_bytes(b"")
    wait_until(lambda: (mirror / f"b03999{pad}").exists(), 60, "all of it mirrored")
    before = partner(p.b)["recv_bytes"]
    v = subprocess.Popen([str(HEAPFSCTL), "--json", "verify", str(p.b.path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the mirror hashes its copy first, then the owner answers: two parts are there
        wait_until(lambda: partner(p.b)["recv_bytes"] - before > 2 * 189000, 300,
                   "the answer's first parts")
        with open(d / "w.new", "wb") as f:
            f.write(b"w" * 4096)
        os.rename(d / "w.new", d / "w")
        wait_until(lambda: (mirror / "w").exists(), 60, "the writer's changes mirrored")
        assert read_daemon(mirror / "w") == b"w" * 4096
        during = partner(p.b)["recv_bytes"]
        assert v.poll() is None, "the verify ended before the writer's changes"
        out, err = v.communicate(timeout=300)
    finally:
        if v.poll() is None:
            v.kill()
            v.wait()
    j = json.loads(out)
    assert v.returncode == 0 and j["state"] == "compared" and j["differences"] == 0, (out, err)
    assert j["heaps"]["data"]["files"] == 6001
    after = partner(p.b)["recv_bytes"]
    assert after - during > 600000, (before, during, after)


def test_verify_answers_are_rate_limited(mount_factory, secret):
    """One verify request costs the answering side a hash of every heap: it answers at
    most one a second, so three verifies in a row take two seconds at least."""
    p = Pair(mount_factory, secret, mode="async")
    (p.a.heap("data") / "f").write_bytes(b"x" * MIB)
    t = time.monotonic()
    for _ in range(3):
        p.verify()
    assert time.monotonic() - t >= 2.0


def test_hello_lists_every_heap_and_mirrors_stop_at_the_limit(mount_factory, secret):
    """A HELLO lists every replicated heap of the sender (before, the ones past 8 KiB
    were left out: the partner then took over heaps it mirrored).  Past REPL_MAX (256)
    replicated heaps on one node no mirror heap is made at all (before: made, left
    unreplicated and writable), and the changes to a heap the partner does not mirror are
    not refusals (before, each resync refused them and kicked the link again: a
    reconnect loop, and EIO from close)."""
    from test_replica import config, port_pair
    pa, pb = port_pair()
    ha = "".join(f'heap "a{k:03d}{"n" * 60}" {{ size = 1M replicate = async }}\n'
                 for k in range(200))
    hb = "".join(f'heap "b{k:03d}" {{ size = 1M replicate = async }}\n' for k in range(100))
    a = mount_factory(config("a", pa, pb, secret, ha), name="a")
    b = mount_factory(config("b", pb, pa, secret, hb), name="b")
    for m in (a, b):  # 300 heaps on a loaded host: give it time
        wait_state(m, "connected", 90)

    def mirrored(m, prefix):
        return [n for n, role in partner(m)["heaps"].items()
                if n.startswith(prefix) and role == "mirror"]
    wait_until(lambda: len(mirrored(b, "a")) == 156 and len(mirrored(a, "b")) == 56, 90,
               "mirrors up to the limit")
    for m in (a, b):  # its own and its mirrors: 256, no stray unreplicated heap
        assert len(os.listdir(m.path / "heaps")) == 256
        assert "no room for more than 256 replicated heaps" in m.stderr_text()
    (a.heap("a000" + "n" * 60) / "f").write_bytes(b"1")
    wait_until(lambda: (b.heap("a000" + "n" * 60) / "f").exists(), 10, "replicated")
    # a heap the partner has no mirror for is not a refusal: no resync over and over
    (a.heap("a199" + "n" * 60) / "f").write_bytes(b"1")
    assert "a change was refused" not in a.stderr_text() + b.stderr_text()
    assert partner(a)["state"] == "connected"


def test_no_promote_while_a_whole_image_arrives(mount_factory, secret):
    """A mirror restoring a whole image holds half a copy: `promote --force` then is
    refused (EINPROGRESS, "still arriving"; before, the restore went on writing into a heap
    users could now change) and works once the image is in.  The relays are slowed down
    (8 MiB/s) so the image takes seconds."""
    p = Pair(mount_factory, secret, mode="async", size="128M", timeout="3s", relay=True)
    try:
        (p.a.heap("data") / "big").write_bytes(pattern(48 * MIB, seed=3))
        for rl in p.relays:
            rl.delay = 0.008
        p.kill(p.b)
        p.b = p.start_b()  # back empty: a sends the whole heap, slowly
        wait_until(lambda: partner(p.b)["recv_bytes"] > 4 * MIB, 30, "image arriving")
        r = p.b.ctl("promote", "--force", p.b.path, "data")
        assert partner(p.b)["recv_bytes"] < 40 * MIB  # still arriving when refused
        assert r.returncode == 1 and "still arriving" in r.stderr, (r.returncode, r.stderr)
        assert p.b.heap_stats("data")["role"] == "mirror"
        wait_state(p.a, "connected", 60)
        r = p.b.ctl("promote", "--force", p.b.path, "data")
        assert r.returncode == 0, r.stderr
        settled(p, p.b, p.a)
        assert read_daemon(p.b.heap("data") / "big") == pattern(48 * MIB, seed=3)
        p.verify(p.b)
    finally:
        for rl in p.relays:
            rl.close()
