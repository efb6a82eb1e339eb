"""meson install into a DESTDIR, and the result used as a user would: the programs run,
the unit passes systemd-analyze verify, the Python module imports from the system
Python's path and maps heap memory, the guide's C example compiles against the installed
heapfs.pc and runs on a direct_map heap."""
import os
import subprocess

import pytest

from conftest import HEAPFS, guide_example, read_daemon

BUILD = HEAPFS.parents[1]
PREFIX = "/usr/local"
CONF = 'heap "dm" { size = 16M  direct_map = true }\n'


@pytest.fixture(scope="module")
def dest(tmp_path_factory):
    d = tmp_path_factory.mktemp("destdir")
    subprocess.run(["meson", "install", "-C", str(BUILD), "--destdir", str(d), "--no-rebuild",
                    "--quiet"], check=True, timeout=300, capture_output=True)
    return d


def only(paths, what):
    paths = list(paths)
    assert len(paths) == 1, f"{what}: {paths}"
    return paths[0]


def test_installed_files(dest):
    root = dest / PREFIX.lstrip("/")
    for rel in ("bin/heapfs", "bin/heapfsctl", "bin/heapfs-donor", "include/heapfs.h",
                "share/man/man8/heapfs.8", "share/man/man8/heapfsctl.8",
                "share/man/man8/heapfs-donor.8", "share/man/man5/heapfs.conf.5",
                "share/man/man3/libheapfs.3", "lib/systemd/system/heapfs@.service"):
        assert (root / rel).is_file(), rel
    only(root.glob("lib/*/pkgconfig/heapfs.pc"), "heapfs.pc")
    only(root.glob("lib/*/libheapfs.so.0"), "libheapfs.so.0")
    r = subprocess.run([str(root / "bin/heapfs"), "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "heapfs" in r.stdout + r.stderr


def test_ocf_agent_installed(dest):
    """ocf:heapfs:heapfs where Pacemaker looks (OCF_ROOT, not the prefix), executable, with
    the installed programs as its defaults; heapfs-fence-peer beside OCF's libraries."""
    agent = dest / "usr/lib/ocf/resource.d/heapfs/heapfs"
    fence = dest / "usr/lib/ocf/lib/heapfs/heapfs-fence-peer"
    for f in (agent, fence):
        assert f.is_file() and os.stat(f).st_mode & 0o777 == 0o755, f
    text = agent.read_text()
    assert f"{PREFIX}/bin/heapfsctl" in text and "@BINDIR@" not in text
    r = subprocess.run([str(agent), "meta-data"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and '<resource-agent name="heapfs"' in r.stdout


def test_unit_verifies(dest, tmp_path):
    root = dest / PREFIX.lstrip("/")
    unit = (root / "lib/systemd/system/heapfs@.service").read_text()
    assert f"ExecStart={PREFIX}/bin/heapfs -f -c /etc/heapfs/%i.conf" in unit
    # an instance of the template, pointing at the DESTDIR's heapfs (verify checks that
    # ExecStart is executable, and that the Documentation= pages exist)
    inst = tmp_path / "heapfs@data.service"
    inst.write_text(unit.replace(f"{PREFIX}/bin/heapfs", str(root / "bin/heapfs")))
    r = subprocess.run(["systemd-analyze", "verify", str(inst)], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, MANPATH=str(root / "share/man")))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_python_module_from_the_system_path(dest, mount_factory):
    root = dest / PREFIX.lstrip("/")
    mod = only(root.glob("lib/python3*/dist-packages/heapfs.py"), "heapfs.py")
    site = "/" + str(mod.parent.relative_to(dest))
    path = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('\\n'.join(sys.path))"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert site in path, f"{site} is not on /usr/bin/python3's path {path}"
    m = mount_factory(CONF)
    target = m.heap("dm") / "py"
    target.write_bytes(bytes(4096))
    lib = only(root.glob("lib/*/libheapfs.so.0"), "libheapfs.so.0")
    code = (f"import heapfs\n"
            f"assert heapfs.__file__ == {str(mod)!r}, heapfs.__file__\n"
            f"with open({str(target)!r}, 'r+b') as f, heapfs.map(f, 0, 4, write=True) as m:\n"
            f"    m[0:4] = b'inst'\n")
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(mod.parent),
                                            HEAPFS_LIB=str(lib)))
    assert r.returncode == 0, r.stderr
    assert read_daemon(target)[:4] == b"inst"


def test_guide_c_example_against_installed_pc(dest, mount_factory, tmp_path):
    root = dest / PREFIX.lstrip("/")
    pc = only(root.glob("lib/*/pkgconfig/heapfs.pc"), "heapfs.pc")
    src = tmp_path / "hello.c"
    src.write_text(guide_example("hello.c"))
    env = dict(os.environ, PKG_CONFIG_PATH=str(pc.parent), PKG_CONFIG_SYSROOT_DIR=str(dest))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "heapfs"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert f"-I{root}/include" in flags, flags
    exe = tmp_path / "hello"
    subprocess.run(["cc", str(src), *flags, f"-Wl,-rpath,{pc.parent.parent}", "-o", str(exe)],
                   check=True, timeout=120)
    m = mount_factory(CONF)
    target = m.heap("dm") / "hello"
    subprocess.run([str(exe), str(target)], check=True, timeout=60)
    assert read_daemon(target) == b"hello" + bytes(4091)
