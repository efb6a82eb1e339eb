#!/usr/bin/python3
"""fsbench — heapfs against a kernel tmpfs of the same size, same jobs, one run.

    fsbench.py --heapfs build/fs/heapfs [--size 2G] [--files 20000] [--repeat 3]
               [--only seq,rand,files,cp] [--cp-size 1G] [--heapfs-opts OPTS] [--also OPTS]
               [--json] [--strict]

Mounts heapfs (a config with one heap `bench` of --size, min_block 4K) and a tmpfs of the
same size under one temporary directory in /tmp, runs on each:

  seq write    fio, 1 GiB in 1 MiB writes, psync, to a new file (fallocate=none, so the
               writes allocate)
  seq read     fio, the same file in 1 MiB reads
  mmap read    fio ioengine=mmap, the same file in 1 MiB pieces
  4k randread  fio, 4 KiB random reads over a 256 MiB file (laid out first, not timed):
               heapfs one pass, file evicted first (every read reaches the daemon);
               tmpfs 8 passes, since one takes ~0.1 s, too short to time (its data is
               memory either way, so more passes change only the timing window)
  4k randwrite fio, 4 KiB random writes over that file (same passes)
  create       fs-filerate (C): files/s for open(O_CREAT)+4 KiB write+close of 20,000 files
  unlink       fs-filerate: files/s unlinking them
  cp           cp of a --cp-size file (laid out by fio, not timed; heapfs: evicted from
               the page cache) to a new file in the same directory: MiB/s of the copy
               (coreutils cp uses copy_file_range: the kernel copies tmpfs pages itself;
               heapfs copies block to block in the daemon); target 0.5 (issue 20)
  objects      (heapfs only) fs-filerate with 64-byte files: objects/s for
               create + 64 B write + close in objects/ against the same in the heap
               directory, same daemon, same run, interleaved; target ratio 0.9

--also OPTS mounts a second heapfs daemon with -o OPTS (make bench: io_uring=off, the
/dev/fuse transport beside the default one) and runs every job but the objects on it too,
in the same rounds; each row then also has that daemon's figure, its ratio to tmpfs, and
the main daemon's figure against it ("vs_also", target 0.9 for the sequential jobs: the
default transport must not give up bulk speed).  Each daemon's transport, as its
.heapfs/stats says, is in the output.

Every job runs --repeat times (default 3), alternating tmpfs and heapfs, and the median
counts; a 1 GiB write on each first (not measured) takes the cost of first-touching fresh
memory on a VM out of the first figures.  Honest reads: before every heapfs read job the
file is evicted from the page cache (POSIX_FADV_DONTNEED; fincore must then report 0
resident bytes, else the run fails), so every read goes through FUSE to the daemon.
tmpfs keeps its data in the page cache by design (that is its store), so its reads are
memory reads either way.  (A global drop_caches is not used: it leaves tmpfs pages ~4x
slower to mmap afterwards on this kernel, which would flatter heapfs.)  The table shows
each figure, the ratio heapfs/tmpfs and the issue's target ratio.  Everything is
unmounted and removed on the way out, also after errors and Ctrl-C.
Needs root (mount), fio and fincore (util-linux).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
TARGETS = [  # job, unit, target ratio heapfs/tmpfs
    ("seq write 1M", "MiB/s", 0.20),
    ("seq read 1M", "MiB/s", 0.40),
    ("mmap seq read", "MiB/s", 0.25),
    ("4k randread", "MiB/s", 0.15),
    ("4k randwrite", "MiB/s", 0.25),
    ("create 4K files", "files/s", 0.14),
    ("unlink files", "files/s", 0.20),
    ("cp within the mount", "MiB/s", 0.5),
]
ALSO_TARGETS = {"seq write 1M": 0.9, "seq read 1M": 0.9}  # main daemon / --also daemon
OBJ_TARGETS = [  # job, unit, target ratio objects/ : heap directory
    ("create 64B objects", "files/s", 0.90),
    ("unlink objects", "files/s", 0.90),
]


def log(msg):
    print(f"fsbench: {msg}", file=sys.stderr, flush=True)


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def evict(path):
    """Drop path's pages from the page cache (POSIX_FADV_DONTNEED; FUSE pages are clean,
    write-through) and return how many bytes fincore still finds resident."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                       capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout.split() else -1


def fio(name, filename, rw, bs, size, engine="psync", extra=()):
    """Run one fio job; returns bandwidth in MiB/s of its read or write side."""
    cmd = ["fio", f"--name={name}", f"--filename={filename}", f"--rw={rw}", f"--bs={bs}",
           f"--size={size}", f"--ioengine={engine}", "--numjobs=1", "--fallocate=none",
           "--invalidate=1", "--output-format=json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"fio {name} on {filename}: {r.stderr.strip() or r.stdout[-500:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    if job.get("error"):
        raise RuntimeError(f"fio {name}: error {job['error']}")
    return side["bw_bytes"] / MIB


def seq_jobs(label, d, before_read, loops):
    res, seq = {}, d / "seq.dat"
    log(f"{label}: seq write")
    res["seq write 1M"] = fio("seqwrite", seq, "write", "1M", "1G")
    log(f"{label}: seq read")
    before_read(seq)
    res["seq read 1M"] = fio("seqread", seq, "read", "1M", "1G")
    log(f"{label}: mmap read")
    before_read(seq)
    res["mmap seq read"] = fio("mmapread", seq, "read", "1M", "1G", engine="mmap")
    seq.unlink()
    return res


def rand_jobs(label, d, before_read, loops):
    res, rnd = {}, d / "rand.dat"
    # lay the random-I/O file out with a sequential write first (not measured)
    fio("layout", rnd, "write", "1M", "256M")
    log(f"{label}: 4k randread")
    before_read(rnd)
    res["4k randread"] = fio("randread", rnd, "randread", "4k", "256M", extra=loops)
    log(f"{label}: 4k randwrite")
    res["4k randwrite"] = fio("randwrite", rnd, "randwrite", "4k", "256M", extra=loops)
    rnd.unlink()
    return res


def cp_jobs(label, d, before_read, size):
    res, src, dst = {}, d / "cp-src.dat", d / "cp-dst.dat"
    fio("cpsrc", src, "write", "1M", size)
    before_read(src)
    log(f"{label}: cp")
    t = time.monotonic()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    res["cp within the mount"] = parse_size(size) / MIB / (time.monotonic() - t)
    src.unlink()
    dst.unlink()
    return res


def filerate_run(filerate, fdir, nfiles, size):
    r = subprocess.run([str(filerate), str(fdir), str(nfiles), str(size)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"fs-filerate: {r.stderr.strip()}")
    return json.loads(r.stdout)


def file_jobs(label, d, filerate, nfiles):
    log(f"{label}: create/unlink {nfiles} files")
    fdir = d / "files"
    fdir.mkdir()
    fr = filerate_run(filerate, fdir, nfiles, 4096)
    fdir.rmdir()
    return {"create 4K files": fr["create_per_s"], "unlink files": fr["unlink_per_s"]}


def object_jobs(label, hdir, odir, filerate, nfiles, objects_first):
    """64-byte files in the heap directory hdir and as objects in odir (objects_first: in
    that order, so alternating repetitions share any drift): ({job: figure} of the heap
    directory, {job: figure} of objects/)."""
    log(f"{label}: create/unlink {nfiles} 64-byte files and objects")
    fdir = hdir / "small"
    fdir.mkdir()
    if objects_first:
        o = filerate_run(filerate, odir, nfiles, 64)
    h = filerate_run(filerate, fdir, nfiles, 64)
    fdir.rmdir()
    if not objects_first:
        o = filerate_run(filerate, odir, nfiles, 64)
    return ({"create 64B objects": h["create_per_s"], "unlink objects": h["unlink_per_s"]},
            {"create 64B objects": o["create_per_s"], "unlink objects": o["unlink_per_s"]})


GROUPS = ("seq", "rand", "files", "cp", "objects")


def run_jobs(label, d, filerate, nfiles, cold, groups=GROUPS, cp_size="1G"):
    """The jobs of `groups` on directory d; returns {job: figure}.  cold (heapfs): evict
    the file from the page cache before each read job so every read reaches the daemon,
    and run the random jobs once; not cold (tmpfs, whose store is the page cache): nothing
    to evict, and the random jobs run 8 passes since one takes ~0.1 s, too short to time."""
    loops = ["--loops=1" if cold else "--loops=8"]

    def before_read(path):
        if cold and evict(path) != 0:
            raise RuntimeError(f"{path} still in the page cache after POSIX_FADV_DONTNEED")
    res = {}
    if "seq" in groups:
        res.update(seq_jobs(label, d, before_read, loops))
    if "rand" in groups:
        res.update(rand_jobs(label, d, before_read, loops))
    if "files" in groups:
        res.update(file_jobs(label, d, filerate, nfiles))
    if "cp" in groups:
        res.update(cp_jobs(label, d, before_read, cp_size))
    return res


def median_of(runs):
    """{job: median over runs} of a list of run_jobs() results."""
    return {job: statistics.median(r[job] for r in runs) for job in runs[0]}


def find_filerate(heapfs, explicit, workdir):
    """The fs-filerate helper: given, next to the build's heapfs, or compiled here."""
    if explicit:
        return Path(explicit)
    built = Path(heapfs).resolve().parents[1] / "tests" / "bench" / "fs" / "fs-filerate"
    if built.exists():
        return built
    src = Path(__file__).resolve().parent / "fs" / "filerate.c"
    out = Path(workdir) / "fs-filerate"
    log(f"{built} not built; compiling {src}")
    subprocess.run(["cc", "-O2", "-std=gnu11", "-D_GNU_SOURCE", "-o", str(out), str(src)],
                   check=True)
    return out


class Mounts:
    """The two mounts and the temporary directory; close() undoes all that was done."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.tmpfs = self.workdir / "tmpfs"
        self.heapfs = self.workdir / "heapfs"
        self.daemons = {}  # mountpoint -> Popen
        self.daemon_rc = None  # the first bad exit status of the daemons, else 0

    def mount(self, heapfs_bin, size, opts=""):
        self.tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "fsbench",
                        str(self.tmpfs)], check=True)
        return self.tmpfs, self.mount_heapfs(heapfs_bin, size, opts, self.heapfs)

    def mount_heapfs(self, heapfs_bin, size, opts, mnt):
        """One more heapfs daemon on mnt: its heap directory."""
        mnt.mkdir()
        cfg = self.workdir / f"{mnt.name}.conf"
        cfg.write_text(f'heap "bench" {{\n  size = {size // MIB}M\n  min_block = 4K\n}}\n'
                       'objects { size = 64M  min_block = 64 }\n')
        err = self.workdir / f"{mnt.name}.stderr"
        self.daemons[mnt] = subprocess.Popen([str(heapfs_bin), "-f", "-c", str(cfg),
                                              *(["-o", opts] if opts else []), str(mnt)],
                                             stdin=subprocess.DEVNULL, stderr=open(err, "wb"))
        end = time.monotonic() + 10
        while not is_mounted(mnt):
            if self.daemons[mnt].poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"heapfs did not mount: "
                                   f"{err.read_text(errors='replace').strip()}")
            time.sleep(0.05)
        return mnt / "heaps" / "bench"

    def close(self):
        for mnt, daemon in self.daemons.items():
            if is_mounted(mnt):
                if subprocess.run(["fusermount3", "-u", str(mnt)]).returncode != 0:
                    subprocess.run(["fusermount3", "-uz", str(mnt)])
            try:
                rc = daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.terminate()
                try:
                    daemon.wait(5)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                rc = "killed"
            if not self.daemon_rc:
                self.daemon_rc = rc
        if is_mounted(self.tmpfs):
            if subprocess.run(["umount", str(self.tmpfs)]).returncode != 0:
                subprocess.run(["umount", "-l", str(self.tmpfs)])
        shutil.rmtree(self.workdir, ignore_errors=True)


def compare(targets, base, new, base_key="tmpfs", new_key="heapfs"):
    """Rows {job, unit, base_key, new_key, ratio, target, pass} for the jobs measured."""
    rows = []
    for job, unit, target in targets:
        if job not in base:
            continue
        ratio = new[job] / base[job] if base[job] else 0.0
        rows.append({"job": job, "unit": unit, base_key: base[job], new_key: new[job],
                     "ratio": ratio, "target": target, "pass": ratio >= target})
    return rows


def table(rows, base_key="tmpfs", new_key="heapfs"):
    out = [f"{'job':<18} {'unit':<8} {base_key:>10} {new_key:>10} {'ratio':>7} "
           f"{'target':>7}  result"]
    for r in rows:
        out.append(f"{r['job']:<18} {r['unit']:<8} {r[base_key]:>10.1f} {r[new_key]:>10.1f} "
                   f"{r['ratio']:>7.3f} {'>=' + format(r['target'], '.2f'):>7}  "
                   f"{'pass' if r['pass'] else 'MISS'}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heapfs", required=True, help="the heapfs binary")
    ap.add_argument("--heapfs-opts", default="",
                    help="extra -o options for the heapfs daemon (e.g. io_uring=off)")
    ap.add_argument("--also", metavar="OPTS",
                    help="a second heapfs daemon with these -o options (e.g. io_uring=off), "
                         "measured in the same rounds")
    ap.add_argument("--filerate", help="the fs-filerate helper (default: from the build)")
    ap.add_argument("--size", default="2G", help="heap and tmpfs size (default 2G)")
    ap.add_argument("--files", type=int, default=20000, help="files for create/unlink")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of every job per filesystem; the median counts (default 3)")
    ap.add_argument("--cp-size", default="1G", help="file size of the cp job (default 1G; "
                    "twice it must fit --size)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--only", default=",".join(GROUPS),
                    help="job groups to run, comma-separated: seq (write, read, mmap read), "
                         "rand (4k randread, randwrite), files (create, unlink), cp (cp "
                         "of a file within the mount), objects "
                         "(64-byte objects against 64-byte heap files); default all")
    a = ap.parse_args()
    groups = a.only.split(",")
    if not groups or set(groups) - set(GROUPS):
        ap.error(f"--only takes a comma-separated subset of {','.join(GROUPS)}")
    if os.geteuid() != 0:
        log("needs root (mounts a tmpfs and drops caches)")
        return 2
    if not shutil.which("fio"):
        log("fio not found (apt-get install fio)")
        return 2
    size = parse_size(a.size)
    # SIGTERM unwinds like Ctrl-C so the finally below cleans up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    m = Mounts(tempfile.mkdtemp(prefix="fsbench-", dir="/tmp"))
    # a heapfs older than its transport's settle step left fuse.enable_uring on: put it back
    uring_knob = Path("/sys/module/fuse/parameters/enable_uring")
    uring_before = uring_knob.read_text() if uring_knob.exists() else None
    try:
        filerate = find_filerate(a.heapfs, a.filerate, m.workdir)
        tdir, hdir = m.mount(a.heapfs, size, a.heapfs_opts)
        adir = m.mount_heapfs(a.heapfs, size, a.also, m.workdir / "also") if a.also else None
        transports = {name: json.loads((d.parents[1] / ".heapfs" / "stats").read_text())
                      .get("transport", "?") for name, d in (("heapfs", hdir), ("also", adir))
                      if d}
        # warm-up (not measured): first touch of fresh memory is slow on a VM
        for d in (tdir, hdir, adir or hdir):
            fio("warmup", d / "warm.dat", "write", "1M", "1G")
            (d / "warm.dat").unlink()
        # repetitions interleave the two filesystems so drift hits both alike
        runs_t, runs_h, runs_a, runs_hs, runs_o = [], [], [], [], []
        for rep in range(a.repeat):
            if set(groups) - {"objects"}:
                runs_t.append(run_jobs(f"tmpfs #{rep + 1}", tdir, filerate, a.files, False,
                                       groups, a.cp_size))
                runs_h.append(run_jobs(f"heapfs #{rep + 1}", hdir, filerate, a.files, True,
                                       groups, a.cp_size))
                if adir:
                    runs_a.append(run_jobs(f"heapfs -o {a.also} #{rep + 1}", adir, filerate,
                                           a.files, True, groups, a.cp_size))
            if "objects" in groups:
                hs, o = object_jobs(f"heapfs #{rep + 1}", hdir, m.heapfs / "objects",
                                    filerate, a.files, rep % 2 == 1)
                runs_hs.append(hs)
                runs_o.append(o)
        res_t, res_h = (median_of(runs_t), median_of(runs_h)) if runs_t else ({}, {})
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        log(f"failed: {e}")
        return 1
    finally:
        m.close()
        if uring_before is not None and uring_knob.read_text() != uring_before:
            uring_knob.write_text(uring_before)
    rows = compare(TARGETS, res_t, res_h)
    if runs_a:
        res_a = median_of(runs_a)
        for r in rows:
            r["also"] = res_a[r["job"]]
            r["also_ratio"] = r["also"] / r["tmpfs"] if r["tmpfs"] else 0.0
            r["vs_also"] = r["heapfs"] / r["also"] if r["also"] else 0.0
            r["vs_also_target"] = ALSO_TARGETS.get(r["job"])
            if r["vs_also_target"] is not None:
                r["pass"] = r["pass"] and r["vs_also"] >= r["vs_also_target"]
    obj_rows = compare(OBJ_TARGETS, median_of(runs_hs), median_of(runs_o), "heap dir",
                       "objects/") if runs_o else []
    fio_version = subprocess.run(["fio", "--version"], capture_output=True,
                                 text=True).stdout.strip()
    notes = (f"median of {a.repeat} interleaved runs after a 1 GiB warm-up write on each; "
             "heapfs reads start with the file evicted from the page cache "
             "(fadvise DONTNEED, checked with fincore); random jobs: heapfs 1 pass, "
             "tmpfs 8 passes; heap and tmpfs "
             f"{a.size}, min_block 4K; {fio_version}; "
             f"{os.cpu_count()} CPUs; transports: "
             + ", ".join(f"{k} {v}" for k, v in transports.items())
             + (f"; also = -o {a.also}" if a.also else "")
             + f"; load {os.getloadavg()[0]:.1f}")
    if a.json:
        print(json.dumps({"jobs": rows, "objects": obj_rows, "notes": notes,
                          "daemon_exit": m.daemon_rc, "transports": transports,
                          "also": a.also,
                          "runs": {"tmpfs": runs_t, "heapfs": runs_h, "also": runs_a,
                                   "heap_small": runs_hs, "objects": runs_o}}, indent=2))
    else:
        if rows:
            print(table(rows))
        if runs_a:
            print(f"\nheapfs ({transports['heapfs']}) against heapfs -o {a.also} "
                  f"({transports['also']}):")
            for r in rows:
                t = r["vs_also_target"]
                print(f"{r['job']:<18} {r['also']:>10.1f} (ratio to tmpfs {r['also_ratio']:.3f})"
                      f"  heapfs/also {r['vs_also']:.3f}"
                      + (f" >= {t:.2f}  {'pass' if r['vs_also'] >= t else 'MISS'}" if t else ""))
        if obj_rows:
            print(table(obj_rows, "heap dir", "objects/"))
        print(f"({notes})")
    if m.daemon_rc != 0:
        log(f"heapfs exited with {m.daemon_rc}")
        return 1
    return 1 if a.strict and not all(r["pass"] for r in rows + obj_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
