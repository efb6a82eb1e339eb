"""A two-node Corosync + Pacemaker cluster on one host, for tests (issue "Pacemaker").

Each node lives in a network namespace of its own and a holder process that owns a mount
and UTS namespace: its hostname is the node's name, /run and /dev/shm are private tmpfs
(libqb's rings and sockets), and private copies of /var/lib/pacemaker, /var/lib/corosync,
/var/log and /etc/corosync are bound over the host's.  Two veth pairs join the nodes: one
for Corosync (knet) and one for whatever the test replicates, so either can be cut alone.
corosync and pacemakerd are started in the holder's namespaces (nsenter -t HOLDER -n -m
-u, which `ip netns exec` cannot do: it makes a fresh mount namespace), and so is every
CLI tool (Node.run).  The CIB is seeded before the start: no fencing device (so
stonith-enabled=false), two_node quorum, a short dc-deadtime so the nodes elect at once.

Inside each node only, two folders are replaced by copies that add to them (a bind
over the original, whose entries are symlinks to the original bound elsewhere): /usr/sbin
gains the test fence agent fence_heapfs_test (fence_heapfs_test.py: it kills every
process of the victim's network namespace), /usr/lib/ocf/resource.d gains heapfs/heapfs
(the resource agent from the build; the host's providers are bound into the copy).  /run/heapfs-test holds the node's heapfs config and
secret (copied from its state directory at each start of the node).  A node that was
fenced is started again with restart().

Everything is stopped by pid and removed on close(): the daemons, the holders, the
namespaces (and with them the veths), the state directories.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fs"))
BUILD = Path(os.environ.get("HEAPFS_BUILD", Path(__file__).resolve().parents[2] / "build"))
AGENT = BUILD / "fs" / "ha" / "heapfs"  # ocf:heapfs:heapfs, in the nodes only
from waiting import wait_until  # noqa: E402  (the suites' one polling helper)

HOLDER = r"""
set -e
hostname "$1"
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount --bind "$2/pacemaker" /var/lib/pacemaker
mount --bind "$2/corosync" /var/lib/corosync
mount --bind "$2/log" /var/log
mount --bind "$2/etc-corosync" /etc/corosync
# the node's own /usr/sbin: the original bound where the copy's symlinks point, the copy
# over it; its own OCF agents: each provider of the host bound into a copy that adds
# heapfs (Pacemaker does not follow a provider that is a symlink)
mount --bind /usr/sbin "$2/sbin-real"
mount --bind "$2/sbin" /usr/sbin
for d in /usr/lib/ocf/resource.d/*; do
  mkdir -p "$2/rd/${d##*/}"
  mount --bind "$d" "$2/rd/${d##*/}"
done
mount --rbind "$2/rd" /usr/lib/ocf/resource.d
mkdir -p /run/heapfs-test
for f in "$2"/run-heapfs/*; do [ -e "$f" ] && cp -p "$f" /run/heapfs-test/; done
echo ready > "$2/ready"
exec sleep infinity
"""

COROSYNC_CONF = """totem {{
  version: 2
  cluster_name: heapfs-test
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: 3000
}}
nodelist {{
{nodes}
}}
quorum {{
  provider: corosync_votequorum
  two_node: 1
}}
logging {{
  to_logfile: yes
  logfile: /var/log/corosync.log
  to_stderr: no
  to_syslog: no
}}
"""

CIB = """<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="false"/>
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-recheck" name="cluster-recheck-interval" value="30s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


def wait_for(cond, deadline, what):
    return wait_until(cond, deadline, what, interval=0.25)


def _reap(proc, timeout):
    """Wait for proc (if any) to end, killing it after timeout seconds."""
    if not proc:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Node:
    def __init__(self, cluster, k):
        self.name = f"n{k}"
        self.netns = f"{cluster.tag}{k}"
        self.state = cluster.top / self.name
        self.ring_ip = f"10.77.1.{k}"   # Corosync's link
        self.data_ip = f"10.77.2.{k}"   # the test's own link (heapfs replication)
        self.holder = self.corosync = self.pacemakerd = None

    def prepare(self, conf):
        for d in ("corosync", "log", "etc-corosync", "sbin", "sbin-real", "rd", "run-heapfs"):
            (self.state / d).mkdir(parents=True)
        here = Path(__file__).resolve().parent
        for name in os.listdir("/usr/sbin"):
            (self.state / "sbin" / name).symlink_to(self.state / "sbin-real" / name)
        fence = self.state / "sbin" / "fence_heapfs_test"
        shutil.copy(here / "fence_heapfs_test.py", fence)
        os.chmod(fence, 0o755)
        if AGENT.exists():
            (self.state / "rd" / "heapfs").mkdir()
            shutil.copy(AGENT, self.state / "rd" / "heapfs" / "heapfs")
            os.chmod(self.state / "rd" / "heapfs" / "heapfs", 0o755)
        shutil.copytree("/var/lib/pacemaker", self.state / "pacemaker", symlinks=True)
        shutil.chown(self.state / "pacemaker", "root", "root")
        (self.state / "log" / "pacemaker").mkdir()
        shutil.chown(self.state / "log" / "pacemaker", "hacluster", "haclient")
        cib = self.state / "pacemaker" / "cib" / "cib.xml"
        cib.write_text(CIB)
        shutil.chown(cib, "hacluster", "haclient")
        os.chmod(cib, 0o600)
        (self.state / "etc-corosync" / "corosync.conf").write_text(conf)

    def netns_inode(self):
        return os.stat(f"/run/netns/{self.netns}").st_ino

    def start_holder(self, script):
        (self.state / "ready").unlink(missing_ok=True)
        self.holder = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "unshare",
                                        "--mount", "--uts", "--propagation", "private",
                                        "bash", str(script), self.name, str(self.state)])

    def start_daemons(self):
        self.corosync = self.spawn("corosync", "-f", log=self.state / "corosync.out")
        self.pacemakerd = self.spawn("pacemakerd", log=self.state / "pacemakerd.out")

    def pids(self):
        """Every process in the node's network namespace."""
        return [int(p) for p in subprocess.run(["ip", "netns", "pids", self.netns],
                                               capture_output=True, text=True).stdout.split()]

    def nsenter(self, *cmd):
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", *map(str, cmd)]

    def run(self, *cmd, check=True, timeout=60, input=None):
        """A command inside the node (its network, mounts and hostname)."""
        return subprocess.run(self.nsenter(*cmd), capture_output=True, text=True, check=check,
                              timeout=timeout, input=input)

    def spawn(self, *cmd, log):
        """A daemon inside the node: nsenter execs into it, so the pid is the daemon's."""
        return subprocess.Popen(self.nsenter(*cmd), stdin=subprocess.DEVNULL,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)


class Cluster:
    """Two nodes, n1 and n2.  start() brings up holders, links, corosync and pacemaker and
    waits until both nodes are online; close() takes all of it down."""

    def __init__(self, top):
        self.top = Path(top)
        # unique per test run on this host (other suites make namespaces and veths too):
        # the pid, whole; veth names fit IFNAMSIZ (15)
        self.tag = f"hfc{os.getpid()}n"
        self.vtag = f"hf{os.getpid() % 1000000:06d}"
        self.nodes = [Node(self, 1), Node(self, 2)]
        self.links = []

    # -- set-up ---------------------------------------------------------------------------
    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _link(self, kind, attr):
        a, b = self.nodes
        ea, eb = f"{self.vtag}{kind}1", f"{self.vtag}{kind}2"
        self._ip("link", "add", ea, "netns", a.netns, "type", "veth", "peer", "name", eb,
                 "netns", b.netns)
        for n, e in ((a, ea), (b, eb)):
            self._ip("-n", n.netns, "addr", "add", f"{getattr(n, attr)}/24", "dev", e)
            self._ip("-n", n.netns, "link", "set", e, "up")
        self.links.append((kind, ea, eb))
        return ea, eb

    def start(self, deadline=60, before=None):
        """before(node): called for each node once its state directory exists, before its
        holder starts (files for run-heapfs/)."""
        t0 = time.monotonic()
        nodes = "\n".join(f"  node {{\n    ring0_addr: {n.ring_ip}\n    name: {n.name}\n"
                          f"    nodeid: {k + 1}\n  }}" for k, n in enumerate(self.nodes))
        conf = COROSYNC_CONF.format(nodes=nodes)
        for n in self.nodes:
            self._ip("netns", "add", n.netns)
            self._ip("-n", n.netns, "link", "set", "lo", "up")
            n.prepare(conf)
            if before:
                before(n)
        self.ring = self._link("c", "ring_ip")
        self.data = self._link("d", "data_ip")
        self.script = self.top / "holder.sh"
        self.script.write_text(HOLDER)
        for n in self.nodes:
            n.start_holder(self.script)
        for n in self.nodes:
            wait_for(lambda: (n.state / "ready").exists(), 10, f"{n.name}'s holder")
        for n in self.nodes:
            n.start_daemons()
        wait_for(lambda: self.online() == {"n1", "n2"}, deadline, "both nodes online")
        self.started_in = time.monotonic() - t0

    def restart(self, n, deadline=60):
        """Start node n again after it was fenced (all of its processes killed): holder,
        corosync, pacemaker; until both nodes are online."""
        for p in (n.pacemakerd, n.corosync, n.holder):
            _reap(p, 10)
        n.start_holder(self.script)
        wait_for(lambda: (n.state / "ready").exists(), 10, f"{n.name}'s holder")
        n.start_daemons()
        wait_for(lambda: self.online() == {"n1", "n2"}, deadline, "both nodes online")

    # -- looking -------------------------------------------------------------------------
    def mon(self, node=None):
        return (node or self.nodes[0]).run("crm_mon", "-1", "-X", check=False).stdout

    def online(self):
        import xml.etree.ElementTree as ET
        try:
            root = ET.fromstring(self.mon())
        except ET.ParseError:
            return set()
        return {n.get("name") for n in root.iter("node")
                if n.get("online") == "true" and n.get("name")}

    def roles(self, rsc):
        """{node: role} of the instances of resource rsc (Promoted, Unpromoted, ...)."""
        import xml.etree.ElementTree as ET
        try:
            root = ET.fromstring(self.mon())
        except ET.ParseError:
            return {}
        out = {}
        for r in root.iter("resource"):
            if r.get("id") == rsc and r.get("active") == "true":
                for n in r.iter("node"):
                    out[n.get("name")] = r.get("role")
        return out

    def cut(self, which):
        """Take one link down on both sides ("ring": Corosync's, "data": the test's)."""
        ea, eb = self.ring if which == "ring" else self.data
        for n, e in zip(self.nodes, (ea, eb)):
            self._ip("-n", n.netns, "link", "set", e, "down")

    def heal(self, which):
        ea, eb = self.ring if which == "ring" else self.data
        for n, e in zip(self.nodes, (ea, eb)):
            self._ip("-n", n.netns, "link", "set", e, "up")

    # -- tear-down -----------------------------------------------------------------------
    def close(self):
        t0 = time.monotonic()
        for n in self.nodes:
            if n.pacemakerd and n.pacemakerd.poll() is None:
                n.pacemakerd.send_signal(signal.SIGTERM)
        for n in self.nodes:
            _reap(n.pacemakerd, 60)
            print(f"{n.name}: pacemakerd stopped after {time.monotonic() - t0:.1f} s")
        for n in self.nodes:
            if n.corosync and n.corosync.poll() is None:
                n.corosync.send_signal(signal.SIGTERM)
            _reap(n.corosync, 30)
        for n in self.nodes:
            # pacemaker's children that outlived pacemakerd (and whatever a test left) live
            # in the node's namespaces only: kill them by the pids the namespace holds
            for pid in n.pids():
                if not n.holder or pid != n.holder.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if n.holder and n.holder.poll() is None:
                n.holder.kill()
            _reap(n.holder, 10)
        for n in self.nodes:
            subprocess.run(["ip", "netns", "del", n.netns], capture_output=True)
        keep = os.environ.get("HEAPFS_CLUSTER_KEEP")  # a folder: the logs go there
        if keep:
            shutil.copytree(self.top, keep, symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names: [x for x in names if x in (
                                "sbin", "sbin-real", "rd") or (x == "pacemaker" and
                                                              Path(d).parent == self.top)])
        shutil.rmtree(self.top, ignore_errors=True)
