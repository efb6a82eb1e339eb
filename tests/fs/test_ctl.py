"""heapfsctl against a live mount: status, stats (table and --json), map (text, --svg)."""
import json
import os
import xml.etree.ElementTree as ET

from conftest import HEAPFSCTL, MIB, pattern, round_up, run_ctl

SVG = "{http://www.w3.org/2000/svg}"
CONFIG = ('heap "alpha" { size = 16M  min_block = 4K }\n'
          'heap "beta" { size = 4M  min_block = 64K  layout = contiguous }\n')


def populate(m):
    for i, n in enumerate([1, 5000, 70000, MIB + 1, 3 * MIB]):
        (m.heap("alpha") / f"f{i}").write_bytes(pattern(n, i))
    os.unlink(m.heap("alpha") / "f1")  # leave a hole
    (m.heap("beta") / "g").write_bytes(pattern(100000))
    # the unlinked file is freed when its (asynchronous) release arrives: wait for it so
    # the figures stay put while the test compares them
    used = sum(round_up(n, 4096) for n in [1, 70000, MIB + 1, 3 * MIB])
    m.wait_heap("alpha", lambda h: h["used"] == used, "alpha settled")


def test_version_help_and_usage_errors():
    r = run_ctl("--version")
    assert r.returncode == 0 and r.stdout.strip() == "heapfsctl 0.1.0"
    r = run_ctl("--help")
    assert r.returncode == 0
    for cmd in ("status", "stats", "map", "--svg", "--json", "image", "promote"):
        assert cmd in r.stdout
    assert run_ctl().returncode == 2
    assert run_ctl("frobnicate", "/").returncode == 2
    assert run_ctl("stats").returncode == 2
    assert run_ctl("map", "/only-mount").returncode == 2
    assert run_ctl("--no-such-option", "status", "/").returncode == 2
    assert run_ctl("status", "/", "extra").returncode == 2


def test_not_heapfs_and_missing_heap(mount, tmp_path):
    r = run_ctl("status", tmp_path)
    assert r.returncode == 1 and "not a heapfs mount" in r.stderr
    r = run_ctl("stats", mount.path, "nosuch")
    assert r.returncode == 1 and "nosuch" in r.stderr
    r = run_ctl("map", mount.path, "nosuch", "--svg", tmp_path / "x.svg")
    assert r.returncode == 1 and not (tmp_path / "x.svg").exists()
    r = run_ctl("stats", mount.path, "../stats")
    assert r.returncode == 1


def test_replication_commands_without_a_partner(mount):
    for args in (["promote", mount.path], ["verify", mount.path]):
        r = run_ctl(*args)
        assert r.returncode == 1
        assert r.stderr.strip() == f"heapfsctl: {mount.path}: no partner section in the config"
    r = run_ctl("promote", "--force", "--json", mount.path, "scratch")
    assert r.returncode == 1
    r = run_ctl("stats", "--force", mount.path)
    assert r.returncode == 2


def test_status(mount_factory):
    m = mount_factory(CONFIG)
    populate(m)
    r = run_ctl("status", m.path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert str(m.path) in out and f"pid {m.pid}" in out and "0.1.0" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()
            and ln.split()[0] in ("alpha", "beta")}
    assert rows["alpha"][1:4] == ["owner", "none", "16M"]
    assert rows["beta"][1:4] == ["owner", "none", "4M"]
    assert rows["alpha"][-1] == "4" and rows["beta"][-1] == "1"  # files
    assert len(out.splitlines()) <= 25  # one screen
    j = json.loads(run_ctl("status", m.path, "--json", check=True).stdout)
    assert j["pid"] == m.pid and [h["name"] for h in j["heaps"]] == ["alpha", "beta"]
    # objects, clients and the pair on the same screen
    assert "objects  0 in a segment of 16M" in out and "clients  0\n" in out
    assert "partner  none" in out
    (m.path / "objects" / "o1").write_bytes(b"x" * 100)
    (m.path / "objects" / "o2").write_bytes(b"y")
    out = run_ctl("status", m.path, check=True).stdout
    assert "objects  2 in a segment of 16M" in out, out
    j = json.loads(run_ctl("status", m.path, "--json", check=True).stdout)
    assert j["objects"]["objects"] == 2 and j["clients"] == []


def _on_a_terminal(*args, env=None):
    """heapfsctl ARGS with its stdout and stderr on a pseudo-terminal: (status, output)."""
    import pty
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(str(HEAPFSCTL), ["heapfsctl", *map(str, args)], dict(os.environ, **(env or {})))
    out = b""
    while True:
        try:
            d = os.read(fd, 65536)
        except OSError:
            break
        if not d:
            break
        out += d
    os.close(fd)
    return os.waitpid(pid, 0)[1], out.decode(errors="replace")


def test_save_shows_progress_on_a_terminal_only(mount_factory, tmp_path):
    """A save that runs past the threshold (1 s; 0 here) draws a bar on a terminal, on one
    line redrawn with \\r and ended full; into a pipe it prints nothing but the result."""
    m = mount_factory(CONFIG)
    big = m.path / "heaps" / "alpha" / "big"
    big.write_bytes(pattern(8 * MIB, 3))
    status, out = _on_a_terminal("save", m.path, "alpha", tmp_path / "a.img",
                                 env={"HEAPFS_PROGRESS_AFTER_MS": "0"})
    assert status == 0, out
    assert out.startswith("\rsaving [") and "] 100%" in out, out
    assert out.count("\rsaving [") >= 1 and "saved heap alpha to" in out
    r = run_ctl("save", m.path, "alpha", tmp_path / "b.img")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("saved heap alpha")
    assert (tmp_path / "a.img").read_bytes()[:8] == (tmp_path / "b.img").read_bytes()[:8]
    status, out = _on_a_terminal("save", m.path, "alpha", tmp_path / "c.img",
                                 env={"HEAPFS_PROGRESS_AFTER_MS": "600000"})
    assert status == 0 and "saving [" not in out, out  # done before the threshold


def test_stats_table_and_json(mount_factory):
    m = mount_factory(CONFIG)
    populate(m)
    r = run_ctl("stats", m.path)
    assert r.returncode == 0, r.stderr
    for word in ("heap alpha", "heap beta", "size", "min_block", "used", "free",
                 "largest_free", "chunks", "files", "free blocks per order"):
        assert word in r.stdout, word
    h = m.heap_stats("alpha")
    # every non-empty order of the free lists appears with its count
    section = r.stdout.split("heap beta")[0]
    for order, count in h["free_blocks"].items():
        if count:
            assert any(ln.split()[:1] == [order] and ln.split()[-1] == str(count)
                       for ln in section.splitlines()), (order, count, section)
    # --json anywhere on the line gives the status files' JSON
    for args in (["--json", "stats", m.path], ["stats", m.path, "--json"],
                 ["stats", "--json", m.path]):
        j = json.loads(run_ctl(*args, check=True).stdout)
        assert j == m.stats()
    j = json.loads(run_ctl("stats", m.path, "beta", "--json", check=True).stdout)
    assert j == m.heap_stats("beta")
    assert j["used"] == 128 * 1024 and j["layout"] == "contiguous"
    one = run_ctl("stats", m.path, "beta", check=True).stdout
    assert "heap beta" in one and "heap alpha" not in one


def test_map_text(mount_factory):
    m = mount_factory(CONFIG)
    populate(m)
    r = run_ctl("map", m.path, "alpha")
    assert r.returncode == 0, r.stderr
    bars = [ln for ln in r.stdout.splitlines() if ln.count("|") == 2]
    assert bars, r.stdout
    cells = "".join(ln.split("|")[1] for ln in bars)
    assert "#" in cells and "." in cells and set(cells) <= set("#.: ")
    h = m.heap_stats("alpha")
    ncell = len(cells)
    # used cells roughly match the used share of the heap
    used_share = (cells.count("#") + cells.count(":")) / ncell
    assert abs(used_share - h["used"] / h["size"]) < 0.1
    j = json.loads(run_ctl("map", m.path, "alpha", "--json", check=True).stdout)
    assert j == m.heap_map("alpha")


def test_map_svg(mount_factory, tmp_path):
    m = mount_factory(CONFIG)
    populate(m)
    svg = tmp_path / "alpha.svg"
    r = run_ctl("map", m.path, "alpha", "--svg", svg)
    assert r.returncode == 0, r.stderr
    root = ET.parse(svg).getroot()
    assert root.tag == SVG + "svg"
    texts = " ".join("".join(t.itertext()) for t in root.iter(SVG + "text"))
    for word in ("alpha", "used", "free", "largest_free"):
        assert word in texts, word
    fills = {r.get("fill") for r in root.iter(SVG + "rect")}
    mp = m.heap_map("alpha")
    orders = {o for _, o, _ in mp["blocks"]}
    # a colour per (order, used/free) present, plus background and row colours
    assert len(fills) >= len(orders) + 1
    assert len(list(root.iter(SVG + "rect"))) >= len(mp["blocks"]) // 4
    # stdout with "-"
    r = run_ctl("map", m.path, "beta", "--svg", "-")
    assert r.returncode == 0
    assert ET.fromstring(r.stdout).tag == SVG + "svg"


def test_partner_and_donors(mount):
    r = run_ctl("partner", mount.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["state", "none"]  # no partner section
    j = json.loads(run_ctl("partner", mount.path, "--json", check=True).stdout)
    assert j == mount.status_json("partner") and j["state"] == "none"
    r = run_ctl("donors", mount.path)
    assert r.returncode == 0, r.stderr
    assert "(no donors)" in r.stdout
    j = json.loads(run_ctl("--json", "donors", mount.path, check=True).stdout)
    assert j == mount.status_json("donors") and j["donors"] == []
