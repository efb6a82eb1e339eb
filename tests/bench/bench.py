#!/usr/bin/python3
"""bench — `make bench`: every benchmark of the project in one run, its figures collected
as JSON, and docs/BENCHMARKS.md with one picture per family written from that JSON.

    bench.py --build build [--out docs] [--only FAMILY,...] [--quick]

Each family runs one program of tests/bench (their opening comments say how each
measures) and compares heapfs with a baseline measured in the same run: the allocator with
one mutex and with malloc/jemalloc, heap files with tmpfs, objects with heap files, images
with cp, the partner link with plain TCP, replication with an unreplicated heap, the pool
with a heap file, libheapfs with tmpfs.  Every program's own output is shown as it runs;
its figures are taken from its --json output where it has one, else from its table lines
(a line that does not parse fails the run: the figures never silently go missing).

Writes OUT/bench/results.json (every row: family, job, unit, heapfs figure, baseline
figure and name, ratio, target), OUT/bench/FAMILY.png (the ratios as bars, the targets
as marks; python3-matplotlib) and OUT/BENCHMARKS.md (the tables, the pictures, which run
it was).  --quick runs every family at small sizes (a check of the harness, not figures).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd, **kw):
    """Run cmd, echo its output as it comes, return its stdout."""
    print(f"--- {' '.join(map(str, cmd))}", flush=True)
    p = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, text=True, **kw)
    out = []
    for line in p.stdout:
        sys.stdout.write(line)
        out.append(line)
    if p.wait():
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}")
    return "".join(out)


def row(job, unit, ours, base, base_name, target=None, note=""):
    return {"job": job, "unit": unit, "heapfs": ours, "baseline": base,
            "baseline_name": base_name, "ratio": ours / base if base else 0.0,
            "target": target, "note": note}


def lower(r):
    """A row whose ratio is better low (times, CPU): its target is a ceiling."""
    return r["note"] == "lower is better"


def met(r):
    """None (no target), or whether r meets it."""
    if r["target"] is None:
        return None
    return r["ratio"] <= r["target"] if lower(r) else r["ratio"] >= r["target"]


def grab(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not m:
        raise RuntimeError(f"no figure for {what} in the output (/{pattern}/)")
    return [float(g) for g in m.groups()]


# ---- the families ----------------------------------------------------------------------

def fam_alloc(b, quick):
    out = run([b / "tests/bench/alloc-bench", "--threads", "1,2", "--seconds",
               "0.2" if quick else "2", "--json"])
    ops = {}
    for line in out.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            if "ops_per_s" in j:
                ops[(j["workload"], j["allocator"], j["threads"])] = j["ops_per_s"]
    rows = []
    for w, target in (("cached", 1.8), ("steady", 1.8), ("larson", 1.0)):
        rows.append(row(f"{w}, 2 threads", "Mops/s", ops[(w, "heapfs", 2)] / 1e6,
                        ops[(w, "heapfs", 1)] / 1e6, "1 thread", target))
    for w in ("cached", "steady", "larson"):
        for other, target in (("mutex", 2.0), ("malloc", None), ("jemalloc", None)):
            if (w, other, 2) in ops:
                rows.append(row(f"{w}, 2 threads", "Mops/s",
                                ops[(w, "heapfs", 2)] / 1e6, ops[(w, other, 2)] / 1e6, other,
                                target))
    return "Allocator (alloc-bench)", rows


def fam_fs(b, quick):
    """Both transports in the same rounds: the default daemon (FUSE over io_uring where
    the kernel offers it) and one with -o io_uring=off (/dev/fuse), each against tmpfs,
    and the default against /dev/fuse on the sequential jobs (target 0.9)."""
    cmd = [sys.executable, HERE / "fsbench.py", "--heapfs", b / "fs/heapfs", "--json",
           "--also", "io_uring=off"]
    if quick:
        cmd += ["--files", "500", "--repeat", "1", "--cp-size", "64M"]  # (its warm-up
        # writes 1 GiB: size stays)
    j = json.loads(run(cmd))
    main, also = j["transports"]["heapfs"], j["transports"]["also"]
    rows = [row(f"{r['job']} [{main}]", r["unit"], r["heapfs"], r["tmpfs"], "tmpfs",
                r["target"]) for r in j["jobs"]]
    rows += [row(f"{r['job']} [{also}, -o io_uring=off]", r["unit"], r["also"], r["tmpfs"],
                 "tmpfs") for r in j["jobs"]]
    rows += [row(f"{r['job']} [{main}]", r["unit"], r["heapfs"], r["also"],
                 f"{also} (-o io_uring=off)", r["vs_also_target"]) for r in j["jobs"]
             if r["vs_also_target"] is not None]
    rows += [row(r["job"] + " (objects/)", r["unit"], r["objects/"], r["heap dir"],
                 "heap files", r["target"]) for r in j.get("objects", [])]
    return "Filesystem against tmpfs, both transports (fsbench)", rows


def fam_images(b, quick):
    out = run([b / "tests/bench/img-bench", "-s", "64" if quick else "1024"])
    w, s = grab(r"plain write\(\)\s+([\d.]+) MiB/s", out, "write")[0], \
        grab(r"image save \(img_w\)\s+([\d.]+) MiB/s", out, "save")[0]
    r, rs = grab(r"plain read\(\)\s+([\d.]+) MiB/s", out, "read")[0], \
        grab(r"image restore \(img_r\)\s+([\d.]+) MiB/s", out, "restore")[0]
    cp = grab(r"cp of the plain file\s+([\d.]+) MiB/s", out, "cp")[0]
    rows = [row("img_w save", "MiB/s", s, w, "write()"), row("img_w save", "MiB/s", s, cp, "cp"),
            row("img_r restore", "MiB/s", rs, r, "read()"),
            row("img_r restore", "MiB/s", rs, cp, "cp")]
    cmd = [sys.executable, HERE / "imagebench.py", "--heapfs", b / "fs/heapfs", "--heapfsctl",
           b / "fs/ctl/heapfsctl"]
    if quick:
        cmd += ["--size", "64M", "--repeat", "1"]
    out = run(cmd)
    for job in ("save at unmount", "heapfsctl save (live)", "restore at mount"):
        ours, cp = grab(rf"^{re.escape(job)}\s+([\d.]+)\s+([\d.]+)", out, job)
        rows.append(row(job, "MiB/s", ours, cp, "cp", 0.8))
    return "Images (img-bench, imagebench)", rows


def fam_link(b, quick):
    out = run([b / "tests/replica/rep-bench"] + (["--size", "64"] if quick else []))
    lp, tp = grab(r"pipelined.*link\s+([\d.]+) MB/s.*memcpy\s+([\d.]+) MB/s", out, "pipelined")
    ls, ts = grab(r"one at a time.*link\s+([\d.]+) MB/s.*reply\s+([\d.]+) MB/s", out, "sync")
    ep, lp2 = grab(r"pipelined encrypted.*link\s+([\d.]+) MB/s.*plain link\s+([\d.]+) MB/s", out,
                   "pipelined encrypted")
    es, ls2 = grab(r"one at a time encrypted.*link\s+([\d.]+) MB/s.*plain link\s+([\d.]+) MB/s",
                   out, "sync encrypted")
    rows = [row("pipelined", "MB/s", lp, tp, "plain TCP + memcpy"),
            row("one at a time", "MB/s", ls, ts, "plain TCP + reply"),
            row("pipelined, encrypted", "MB/s", ep, lp2, "the plain link", 0.8),
            row("one at a time, encrypted", "MB/s", es, ls2, "the plain link", 0.8)]
    # the AEAD alone (seal-bench): replica/seal.c (OpenSSL) against libsodium, 1 MiB frames
    out = run([b / "tests/replica/seal-bench"] + (["--size", "16"] if quick else []))
    for c in ("aes256gcm", "chacha20poly1305"):
        m = re.search(rf"^\s+1024 KiB {c}\s+OpenSSL seal\s+([\d.]+) open\s+([\d.]+)\s+"
                      rf"libsodium.*seal\s+([\d.]+) open\s+([\d.]+)", out, re.M)
        if m or c == "chacha20poly1305":  # (AES-GCM only where the CPU has AES-NI)
            if not m:
                raise RuntimeError(f"no figure for seal {c} in the output")
            os_, oo, ss, so = map(float, m.groups())
            rows.append(row(f"seal+open 1 MiB frames, {c}", "MB/s", 2 / (1 / os_ + 1 / oo),
                            2 / (1 / ss + 1 / so), "libsodium"))
    return "Partner link (rep-bench, seal-bench)", rows


def fam_repl(b, quick):
    out = run([sys.executable, HERE / "replbench.py", "--heapfs", b / "fs/heapfs"] +
              (["--size", "64M", "--rounds", "1"] if quick else []))
    none = grab(r"^\s+none\s*:\s+([\d.]+) MiB/s", out, "none")[0]
    rows = [row(f"{m} 1M writes", "MiB/s", grab(rf"^\s+{m}\s*:\s+([\d.]+) MiB/s", out, m)[0], none,
                "replicate = none", t) for m, t in (("async", 0.8), ("sync", 0.6))]
    enc, plain = grab(r"sync writes encrypted .*\s([\d.]+) MiB/s, encrypt = false\s+([\d.]+) MiB/s",
                      out, "sync encrypted")
    rows.append(row("sync 1M writes, encrypted", "MiB/s", enc, plain, "encrypt = false", 0.9))
    notice = grab(r"failure noticed after ([\d.]+) s", out, "failure")[0]
    rows.append(row("failure noticed", "s", notice, 1.0, "timeout", note="lower is better"))
    base = grab(r"cpu s/GiB: none owner ([\d.]+)", out, "cpu none")[0]
    for m in ("async", "sync"):
        ow, mi = grab(rf"cpu s/GiB: {m} owner ([\d.]+) .* mirror ([\d.]+)", out, f"cpu {m}")
        rows += [row(f"{m} owner CPU per GiB", "s/GiB", ow, base, "unreplicated daemon", 1.5,
                     note="lower is better"),
                 row(f"{m} mirror CPU per GiB", "s/GiB", mi, base, "unreplicated daemon", 1.0,
                     note="lower is better")]
    ds, dn = grab(r"direct release of 1 MiB: sync ([\d.]+) ms, unreplicated ([\d.]+) ms", out,
                  "direct release")
    rows.append(row("direct release of 1 MiB, sync", "ms", ds, dn, "unreplicated release",
                    note="lower is better"))
    fork = grab(r"resync fork: .* = ([\d.]+) MiB/s, longest write beside ([\d.]+) ms", out,
                "resync fork")
    live = grab(r"resync live: .* = ([\d.]+) MiB/s, longest write beside ([\d.]+) ms", out,
                "resync live")
    rows += [row("full resync under writes (live pre-copy)", "MiB/s", live[0], fork[0],
                 "fork snapshot"),
             row("longest write during it (live pre-copy)", "ms", live[1], fork[1],
                 "fork snapshot", note="lower is better")]
    return "Replication against an unreplicated heap (replbench)", rows


def fam_pool(b, quick):
    j = json.loads(run([sys.executable, HERE / "poolbench.py", "--heapfs", b / "fs/heapfs",
                        "--json"] + (["--size", "512M", "--repeat", "1"] if quick else [])))
    return "Pool against a heap file (poolbench)", [
        row(r["job"], "MiB/s", r["pool"], r["heap"], "heap file", r["target"]) for r in j["jobs"]]


def fam_client(b, quick):
    out = run([sys.executable, HERE / "clientbench.py", "--heapfs", b / "fs/heapfs", "--bench",
               b / "tests/bench/client-bench"] + (["--size", "64M"] if quick else []))
    rows = []
    for job, t in (("seq write", 0.9), ("seq read", 0.9)):
        ours, tmp, _mem = grab(rf"^{job}\s+([\d.]+) GB/s\s+([\d.]+) GB/s\s+([\d.]+) GB/s", out, job)
        rows.append(row(job, "GB/s", ours, tmp, "tmpfs mmap", t))
    for job, base in (("4k rand read", "pread"), ("4k rand write", "pwrite")):
        ours, theirs = grab(rf"^{job}\s+([\d.]+)/s\s+([\d.]+)/s", out, job)
        rows.append(row(job, "ops/s", ours, theirs, base, 2.0))
    ours, theirs = grab(r"^object find\s+([\d.]+)/s\s+([\d.]+)/s", out, "find")
    rows.append(row("object find", "ops/s", ours, theirs, "FUSE open+close", 50.0))
    return "libheapfs against tmpfs (clientbench)", rows


FAMILIES = {"alloc": fam_alloc, "fs": fam_fs, "images": fam_images,
            "link": fam_link, "repl": fam_repl, "pool": fam_pool, "client": fam_client}


# ---- the report --------------------------------------------------------------------------

def picture(path, title, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['job']} vs {r['baseline_name']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    y = range(len(rows))
    colours = ["#c8553d" if met(r) is False else "#4c9a2a" for r in rows]
    ax.barh(list(y), ratios, color=colours)
    for k, r in enumerate(rows):
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [k - 0.4, k + 0.4], color="black", linewidth=2)
        ax.text(r["ratio"], k, f" {r['ratio']:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    if max(ratios + [1.0]) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("heapfs / baseline (same run); black mark: target; green: met or no "
                  "target, red: missed", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(out, results, meta):
    bench = out / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "results.json").write_text(json.dumps({"meta": meta, "families": results},
                                                   indent=1) + "\n")
    md = ["# heapfs benchmarks",
          "",
          "Written by `make bench` (tests/bench/bench.py) from its JSON results "
          "(`docs/bench/results.json`); do not edit by hand. Every ratio is heapfs against "
          "a baseline measured in the same run on the same machine.",
          "",
          f"Run: {meta['date']}, {meta['cpus']} CPUs, kernel {meta['kernel']}, "
          f"{meta['mode']}. {meta['note']}",
          ""]
    for name, fam in results.items():
        rows = fam["rows"]
        png = f"bench/{name}.png"
        picture(out / png, fam["title"], rows)
        md += [f"## {fam['title']}", "", f"![{fam['title']}]({png})", "",
               "| job | heapfs | baseline | ratio | target | |",
               "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            ok = {None: "", True: "met", False: "**missed**"}[met(r)]
            bound = "" if r["target"] is None else \
                f"{'<=' if lower(r) else '>='} {format(r['target'], 'g')}x"
            md.append(f"| {r['job']} | {r['heapfs']:.4g} {r['unit']} | {r['baseline']:.4g} "
                      f"{r['unit']} ({r['baseline_name']}) | {r['ratio']:.2f}x | {bound} "
                      f"| {ok} {r['note']} |")
        md.append("")
    (out / "BENCHMARKS.md").write_text("\n".join(md))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build", type=Path)
    ap.add_argument("--out", default="docs", type=Path)
    ap.add_argument("--only", default=",".join(FAMILIES))
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the harness")
    ap.add_argument("--note", default="", help="a sentence about the run (e.g. the load)")
    ap.add_argument("--render", action="store_true",
                    help="only write BENCHMARKS.md and the pictures again from "
                    "OUT/bench/results.json (no run)")
    a = ap.parse_args()
    if a.render:
        j = json.loads((a.out / "bench" / "results.json").read_text())
        report(a.out, j["families"], j["meta"])
        return 0
    names = a.only.split(",")
    if set(names) - set(FAMILIES):
        ap.error(f"--only takes a subset of {','.join(FAMILIES)}")
    b = a.build.resolve()
    results = {}
    for name in names:
        title, rows = FAMILIES[name](b, a.quick)
        results[name] = {"title": title, "rows": rows}
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "kernel": platform.release(),
            "mode": "quick sizes (a harness check, not figures)" if a.quick else "full sizes",
            "note": a.note}
    report(a.out, results, meta)
    print(f"bench: wrote {a.out / 'BENCHMARKS.md'} and {a.out / 'bench'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
