"""The OCF resource agent ocf:heapfs:heapfs (fs/ha/heapfs, issue 19) run as Pacemaker
runs it, on one node with no cluster: ocf-tester (resource-agents) passes; its meta-data
is valid against ra-api-1.dtd; monitor says 7 unmounted, 0 mirror, 8 owner (after
promote), 1 or 9 when the daemon is dead; a clone of any other shape, or a config that is
not `managed`, is OCF_ERR_CONFIGURED.  crm_attribute has no cluster here (the score is
tested in tests/cluster)."""
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import HEAPFS, HEAPFSCTL, SANITIZER_MARKS, unmount, wait_until
from test_replica import port_pair

AGENT_SRC = HEAPFS.parent / "ha" / "heapfs"
pytestmark = pytest.mark.skipif(not shutil.which("ocf-tester"),
                                reason="resource-agents is not installed (make deps)")


@pytest.fixture
def agent(tmp_path):
    """The agent (executable, as installed), its config and mount point; unmounted after."""
    d = tmp_path / "ocf"
    d.mkdir()
    # ocf-tester runs meta-data as nobody: the agent where nobody may reach it (pytest's
    # folders are root's alone)
    pub = Path(tempfile.mkdtemp(prefix=f"heapfs-ocf-{os.getpid()}-"))
    pub.chmod(0o755)
    a = pub / "heapfs"
    shutil.copy(AGENT_SRC, a)
    a.chmod(0o755)
    secret = d / "secret"
    secret.write_text("ocf test secret\n")
    secret.chmod(0o600)
    pa, pb = port_pair()
    conf = d / "h.conf"
    conf.write_text('heap "data" { size = 16M replicate = sync }\n'
                    f'partner {{ node = "a" listen = "127.0.0.1:{pa}" '
                    f'connect = "127.0.0.1:{pb}" secret_file = "{secret}" managed = true }}\n')
    mnt = d / "mnt"
    env = dict(os.environ, OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE="hfs-test",
               HA_RSCTMP=str(d / "rsctmp"), OCF_RESKEY_mount=str(mnt),
               OCF_RESKEY_config=str(conf), OCF_RESKEY_heapfs=str(HEAPFS),
               OCF_RESKEY_heapfsctl=str(HEAPFSCTL), OCF_RESKEY_logfile=str(d / "heapfs.log"))

    def run(action, **extra):
        return subprocess.run([str(a), action], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)
    run.path, run.mnt, run.conf, run.env, run.dir = a, mnt, conf, env, d
    yield run
    run("stop")
    unmount(mnt)
    shutil.rmtree(pub)
    log = d / "heapfs.log"  # the daemons the agent started (under a sanitizer: clean)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert not any(m in text for m in SANITIZER_MARKS), text[-4000:]


def test_ocf_tester_passes(agent):
    r = subprocess.run(["ocf-tester", "-n", "hfs-test", "-o", f"mount={agent.mnt}",
                        "-o", f"config={agent.conf}", "-o", f"heapfs={HEAPFS}",
                        "-o", f"heapfsctl={HEAPFSCTL}", str(agent.path)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HA_RSCTMP=str(agent.dir / "rsctmp")))
    assert r.returncode == 0 and "passed all tests" in r.stdout, r.stdout + r.stderr
    assert not agent.mnt.is_mount()


def test_metadata_is_valid(agent):
    r = agent("meta-data")
    assert r.returncode == 0
    v = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=r.stdout, text=True,
                       capture_output=True, cwd="/usr/share/resource-agents", timeout=30)
    assert v.returncode == 0, v.stderr
    for action in ("start", "stop", "promote", "demote", "notify", "monitor"):
        assert f'<action name="{action}"' in r.stdout


def test_monitor_states_and_promote(agent):
    assert agent("monitor").returncode == 7
    assert agent("start").returncode == 0
    assert agent("monitor").returncode == 0  # managed: a mirror at start
    r = subprocess.run([str(HEAPFSCTL), "--json", "partner", str(agent.mnt)],
                       capture_output=True, text=True, timeout=30)
    assert '"mirror"' in r.stdout and '"managed": true' in r.stdout
    assert agent("promote").returncode == 0
    assert agent("monitor").returncode == 8
    (agent.mnt / "heaps" / "data" / "f").write_bytes(b"owned here")
    assert agent("demote").returncode == 0
    assert agent("monitor").returncode == 0
    assert (agent.mnt / "heaps" / "data" / "f").read_bytes() == b"owned here"  # kept
    with pytest.raises(OSError):
        (agent.mnt / "heaps" / "data" / "g").write_bytes(b"a mirror")
    assert agent("stop").returncode == 0
    assert agent("monitor").returncode == 7
    assert agent("stop").returncode == 0  # stopping a stopped one


def daemon_pid(mnt):
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0] == bytes(HEAPFS) and str(mnt).encode() in cmd:
                return int(p)
    return None


@pytest.mark.parametrize("promoted", [False, True])
def test_dead_daemon(agent, promoted):
    """kill -9 of the daemon: the mount answers ENOTCONN; monitor says 1 (9 if it was
    promoted), stop clears it and a start mounts again."""
    assert agent("start").returncode == 0
    if promoted:
        assert agent("promote").returncode == 0
    pid = daemon_pid(agent.mnt)
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: daemon_pid(agent.mnt) is None, 10, "the daemon gone")
    r = agent("monitor")
    assert r.returncode == (9 if promoted else 1), r.stderr
    assert "does not answer" in r.stderr
    assert agent("demote").returncode == 0  # a dead daemon owns nothing
    assert agent("stop").returncode == 0
    assert agent("monitor").returncode == 7
    assert agent("start").returncode == 0
    assert agent("monitor").returncode == 0


@pytest.mark.parametrize("meta", [
    {"OCF_RESKEY_CRM_meta_clone_max": "3", "OCF_RESKEY_CRM_meta_promoted_max": "1",
     "OCF_RESKEY_CRM_meta_notify": "true"},
    {"OCF_RESKEY_CRM_meta_clone_max": "2", "OCF_RESKEY_CRM_meta_promoted_max": "2",
     "OCF_RESKEY_CRM_meta_notify": "true"},
    {"OCF_RESKEY_CRM_meta_clone_max": "2", "OCF_RESKEY_CRM_meta_promoted_max": "1",
     "OCF_RESKEY_CRM_meta_notify": "false"},
    {"OCF_RESKEY_CRM_meta_clone_max": "2", "OCF_RESKEY_CRM_meta_promoted_max": "1",
     "OCF_RESKEY_CRM_meta_notify": "true", "OCF_RESKEY_CRM_meta_promotable": "false"},
])
def test_wrong_clone_is_not_configured(agent, meta):
    r = agent("start", **meta)
    assert r.returncode == 6 and "promoted-max=1 clone-max=2" in r.stderr, r.stderr
    assert not agent.mnt.is_mount()
    ok = {"OCF_RESKEY_CRM_meta_clone_max": "2", "OCF_RESKEY_CRM_meta_promoted_max": "1",
          "OCF_RESKEY_CRM_meta_notify": "true", "OCF_RESKEY_CRM_meta_promotable": "true"}
    assert agent("validate-all", **ok).returncode == 0


def test_unmanaged_or_bad_config_is_not_configured(agent):
    text = agent.conf.read_text()
    agent.conf.write_text(text.replace(" managed = true", ""))
    r = agent("validate-all")
    assert r.returncode == 6 and "managed = true" in r.stderr
    agent.conf.write_text(text.replace("16M", "16Q"))
    r = agent("start")
    assert r.returncode == 6 and "16Q" in r.stderr
    assert not agent.mnt.is_mount()
    r = agent("start", OCF_RESKEY_config=str(agent.dir / "nosuch.conf"))
    assert r.returncode == 6 and "cannot be read" in r.stderr
    r = agent("start", OCF_RESKEY_heapfs="/nonexistent/heapfs")
    assert r.returncode == 5
    assert agent("monitor", OCF_RESKEY_heapfs="/nonexistent/heapfs").returncode == 7
