"""Config handling of the real heapfs binary (SPEC "Config", "Defaults").

Every bad config the spec lists makes `heapfs` print `heapfs: FILE:LINE: what is wrong`
and exit 2 before anything is mounted -- through `-c FILE`, `-o config=FILE` and
`--check-config FILE`; the embedded default (`--print-default-config`) validates; a good
config mounts with the heaps it names, sized as the config says.

Self-contained (no fixtures from conftest.py): the daemon is $HEAPFS, else
<repo>/build/fs/heapfs.  Every process started here is stopped here, by pid, and every
mount made is unmounted.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

from conftest import mount_fstype, unmount

REPO = pathlib.Path(__file__).resolve().parents[2]
HEAPFS = os.environ.get("HEAPFS") or str(REPO / "build" / "fs" / "heapfs")
RUN_TIMEOUT = 15  # seconds a refusing heapfs may take; more means it mounted or hung

K, M, G = 1 << 10, 1 << 20, 1 << 30

# name -> (config text, line the error must name, what the message must mention).
# Comments of every kind sit before the faulty line: libconfuse miscounts lines after
# them, so they check that heapfs still names the right line.
SPEC_BAD = {
    "unknown_option": (
        "# heapfs test config\n"
        "default_heap_size = 64M\n"
        "heap \"a\" {\n"
        "  size = 1M\n"
        "  colour = blue      # no such option\n"
        "}\n",
        5, r"colour"),
    "wrong_type": (
        "/* a C comment\n"
        "   over two lines */\n"
        "heap \"a\" {\n"
        "  size = 1M\n"
        "  pin = 12           // a boolean wanted\n"
        "}\n",
        5, r"pin"),
    "size_not_a_size": (
        "// comment\n"
        "heap \"a\" {\n"
        "  # comment\n"
        "  size = lots\n"
        "}\n",
        4, r"size"),
    "min_block_larger_than_heap": (
        "heap \"a\" {\n"
        "  size = 16K\n"
        "  # 64K blocks cannot fit a 16K heap\n"
        "  min_block = 64K\n"
        "}\n",
        4, r"min_block"),
    "duplicate_heap_name": (
        "heap \"a\" {\n"
        "  size = 1M\n"
        "}\n"
        "# again\n"
        "heap \"b\" { size = 1M }\n"
        "heap \"a\" {\n"
        "  size = 2M\n"
        "}\n",
        6, r'"a".*(twice|duplicate|again)|(twice|duplicate|again).*"a"'),
    "replicated_heap_without_partner": (
        "heap \"a\" {\n"
        "  size = 1M\n"
        "  /* async needs a partner */\n"
        "  replicate = async\n"
        "}\n",
        4, r"partner"),
}

# More validations of SPEC's config (checked through --check-config only).
MORE_BAD = {
    "bad_enum": ("heap \"a\" {\n  layout = packed\n}\n", 2, r"layout"),
    "bad_heap_name": ("heap \"..\" {\n  size = 1M\n}\n", 1, r"name"),
    "min_block_not_power_of_two": ("heap \"a\" {\n  min_block = 3K\n}\n", 2, r"min_block"),
    "min_block_too_small": ("objects {\n  min_block = 32\n}\n", 2, r"min_block"),
    "heap_size_zero": ("heap \"a\" {\n  size = 0\n}\n", 2, r"size"),
    "chunk_not_power_of_two": ("heap \"a\" {\n  chunk = 3M\n}\n", 2, r"chunk"),
    "bad_duration": ("partner {\n  node = a  listen = \"127.0.0.1:7410\"\n"
                     "  connect = \"127.0.0.1:7411\"  secret_file = /etc/heapfs/secret\n"
                     "  timeout = soon\n}\n", 4, r"timeout"),
    "unknown_section": ("heap \"a\" { }\n\nheaps \"b\" { }\n", 3, r"heaps"),
}

GOOD = (
    "# two heaps; run-time heaps get default_heap_size rounded up\n"
    "default_heap_size = 3M\n"
    "heap \"small\" {\n"
    "  size      = 100K   # rounded up to 128K\n"
    "  min_block = 1K\n"
    "  layout    = contiguous\n"
    "  writers   = single\n"
    "}\n"
    "heap \"big\" {\n"
    "  size  = 48M        # rounded up to 64M\n"
    "  cache = keep\n"
    "  chunk = 1M\n"
    "}\n"
    "objects { size = 1M  min_block = 64 }\n"
    "pool { size = 64M  donor_size = 16M  max_donors = 2  max_process_memory = 16M }\n"
)


def mounted(path):
    """True if something is mounted on path (per /proc/self/mountinfo)."""
    return mount_fstype(path) is not None


def run_refused(args, mnt):
    """Run heapfs expecting a refusal: returns (returncode, stderr).  A heapfs that
    mounts anyway or hangs is stopped, unmounted and reported as a failure."""
    proc = subprocess.Popen([HEAPFS] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        unmount(str(mnt))
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"heapfs {' '.join(args)} still running after {RUN_TIMEOUT}s "
                    f"(mounted: {mounted(mnt)}); stderr: {err}")
    if mnt is not None and mounted(mnt):
        unmount(str(mnt))
        pytest.fail(f"heapfs {' '.join(args)} mounted {mnt} with a bad config")
    return proc.returncode, err


def assert_one_error(err, cfg, line, what):
    """stderr holds exactly one `heapfs: CFG:LINE: ...` line, on the right line."""
    mine = [l for l in err.splitlines() if l.startswith(f"heapfs: {cfg}:")]
    assert len(mine) == 1, f"want one error for {cfg}, got:\n{err}"
    m = re.match(rf"heapfs: {re.escape(str(cfg))}:(\d+): (.+)$", mine[0])
    assert m, f"not `heapfs: FILE:LINE: what is wrong`: {mine[0]!r}"
    assert int(m.group(1)) == line, f"error on line {m.group(1)}, want {line}: {mine[0]!r}"
    assert re.search(what, m.group(2)), f"message does not mention {what!r}: {mine[0]!r}"


@pytest.fixture
def mnt(tmp_path):
    d = tmp_path / "mnt"
    d.mkdir()
    yield d
    unmount(str(d))


def write(tmp_path, name, text):
    p = tmp_path / f"{name}.conf"
    p.write_text(text)
    return p


@pytest.fixture(scope="module", autouse=True)
def heapfs_built():
    assert os.access(HEAPFS, os.X_OK), f"no heapfs binary at {HEAPFS} (set $HEAPFS)"


# How a config reaches heapfs: argv for (config file, mountpoint); None = no mount.
MODES = {
    "c": lambda cfg, mnt: ["-f", "-c", str(cfg), str(mnt)],
    "o_config": lambda cfg, mnt: ["-f", str(mnt), "-o", f"config={cfg}"],
    "o_config_among_others": lambda cfg, mnt: [
        "-f", "-o", f"default_permissions,config={cfg},max_threads=4", str(mnt)],
    "daemon_mode": lambda cfg, mnt: ["-c", str(cfg), str(mnt)],  # must fail before forking
    "check_config": lambda cfg, mnt: ["--check-config", str(cfg)],
}


def check_refused(cases, case, mode, tmp_path, mnt):
    text, line, what = cases[case]
    cfg = write(tmp_path, case, text)
    mounts = mode != "check_config"
    rc, err = run_refused(MODES[mode](cfg, mnt), mnt if mounts else None)
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert_one_error(err, cfg, line, what)
    if mode == "daemon_mode":
        time.sleep(0.5)  # a daemon that forked anyway would have mounted by now
    assert not mounted(mnt)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", sorted(SPEC_BAD))
def test_spec_bad_config_is_refused(case, mode, tmp_path, mnt):
    check_refused(SPEC_BAD, case, mode, tmp_path, mnt)


@pytest.mark.parametrize("case", sorted(MORE_BAD))
def test_more_bad_configs_with_check_config(case, tmp_path, mnt):
    check_refused(MORE_BAD, case, "check_config", tmp_path, mnt)


def test_every_error_in_one_run(tmp_path):
    cfg = write(tmp_path, "many",
                "heap \"a\" {\n  min_block = 5K\n}\n"
                "heap \"b\" {\n  size = 1K\n}\n"
                "heap \"c\" {\n  replicate = sync\n}\n")
    rc, err = run_refused(["--check-config", str(cfg)], None)
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    lines = [int(m.group(1)) for m in re.finditer(rf"^heapfs: {re.escape(str(cfg))}:(\d+): ",
                                                   err, re.M)]
    assert lines == [2, 5, 8], err


def test_missing_config_file(tmp_path, mnt):
    cfg = tmp_path / "nonexistent.conf"
    rc, err = run_refused(["-f", "-c", str(cfg), str(mnt)], mnt)
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert f"heapfs: {cfg}: No such file or directory" in err
    rc, err = run_refused(["--check-config", str(cfg)], None)
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert f"heapfs: {cfg}: No such file or directory" in err


def test_print_default_config_passes_check_config(tmp_path):
    out = subprocess.run([HEAPFS, "--print-default-config"], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # the embedded default of SPEC "Defaults"
    assert re.search(r'^heap\s+"scratch"', text, re.M), text
    for want in (r"^\s*default_heap_size\s*=\s*64M", r"^\s*size\s*=\s*256M",
                 r"^\s*min_block\s*=\s*4K", r"^\s*layout\s*=\s*extents",
                 r"^\s*size\s*=\s*16M", r"^\s*size\s*=\s*1G",
                 r"^\s*max_process_memory\s*=\s*256M"):
        assert re.search(want, text, re.M), f"{want} not in default config:\n{text}"
    assert not re.search(r"^\s*partner\s*\{", text, re.M), "default has a partner section"
    cfg = write(tmp_path, "default", text)
    rc, err = run_refused(["--check-config", str(cfg)], None)
    assert rc == 0, f"exit {rc}, stderr:\n{err}"
    assert f"heapfs: {cfg}" not in err, err


def test_good_config_passes_check_config(tmp_path):
    cfg = write(tmp_path, "good", GOOD)
    rc, err = run_refused(["--check-config", str(cfg)], None)
    assert rc == 0, f"exit {rc}, stderr:\n{err}"
    assert f"heapfs: {cfg}" not in err, err


def test_good_config_mounts_its_heaps(tmp_path, mnt):
    """The heaps a config names exist at mount time with their (rounded) sizes and
    min_block; a heap made with mkdir gets default_heap_size rounded up."""
    cfg = write(tmp_path, "good", GOOD)
    errf = open(tmp_path / "heapfs.err", "w+")
    proc = subprocess.Popen([HEAPFS, "-f", "-c", str(cfg), str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=errf)
    try:
        deadline = time.monotonic() + 10
        while not mounted(mnt):
            assert proc.poll() is None, f"heapfs exited {proc.returncode}: " \
                                        f"{(tmp_path / 'heapfs.err').read_text()}"
            assert time.monotonic() < deadline, "not mounted after 10 s"
            time.sleep(0.05)
        assert sorted(os.listdir(mnt / "heaps")) == ["big", "small"]
        for name, size, min_block in (("small", 128 * K, 1 * K), ("big", 64 * M, 4 * K)):
            st = os.statvfs(mnt / "heaps" / name)
            assert st.f_blocks * st.f_frsize == size, (name, st)
            info = json.loads((mnt / ".heapfs" / "heaps" / name).read_text())
            assert info["size"] == size and info["min_block"] == min_block, info
        os.mkdir(mnt / "heaps" / "made")
        st = os.statvfs(mnt / "heaps" / "made")
        assert st.f_blocks * st.f_frsize == 4 * M, st
        os.rmdir(mnt / "heaps" / "made")
    finally:
        unmount(str(mnt))
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            rc = None
        errf.close()
    assert rc == 0, f"heapfs exited {rc}: {(tmp_path / 'heapfs.err').read_text()}"
