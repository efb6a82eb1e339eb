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
        for d in ("corosync", "log", "etc-corosync"):
            (self.state / d).mkdir(parents=True)
        shutil.copytree("/var/lib/pacemaker", self.state / "pacemaker", symlinks=True)
        shutil.chown(self.state / "pacemaker", "root", "root")
        (self.state / "log" / "pacemaker").mkdir()
        shutil.chown(self.state / "log" / "pacemaker", "hacluster", "haclient")
        cib = self.state / "pacemaker" / "cib" / "cib.xml"
        cib.write_text(CIB)
        shutil.chown(cib, "hacluster", "haclient")
        os.chmod(cib, 0o600)
        (self.state / "etc-corosync" / "corosync.conf").write_text(conf)

    def nsenter(self, *cmd):
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", *map(str, cmd)]

    def run(self, *cmd, check=True, timeout=60):
        """A command inside the node (its network, mounts and hostname)."""
        return subprocess.run(self.nsenter(*cmd), capture_output=True, text=True, check=check,
                              timeout=timeout)

    def spawn(self, *cmd, log):
        """A daemon inside the node: nsenter execs into it, so the pid is the daemon's."""
        return subprocess.Popen(self.nsenter(*cmd), stdin=subprocess.DEVNULL,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)


class Cluster:
    """Two nodes, n1 and n2.  start() brings up holders, links, corosync and pacemaker and
    waits until both nodes are online; close() takes all of it down."""

    def __init__(self, top):
        self.top = Path(top)
        self.tag = f"hfc{os.getpid() % 100000}n"
        self.nodes = [Node(self, 1), Node(self, 2)]
        self.links = []

    # -- set-up ---------------------------------------------------------------------------
    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _link(self, kind, attr):
        a, b = self.nodes
        ea, eb = f"{self.tag[:6]}{kind}1", f"{self.tag[:6]}{kind}2"
        self._ip("link", "add", ea, "netns", a.netns, "type", "veth", "peer", "name", eb,
                 "netns", b.netns)
        for n, e in ((a, ea), (b, eb)):
            self._ip("-n", n.netns, "addr", "add", f"{getattr(n, attr)}/24", "dev", e)
            self._ip("-n", n.netns, "link", "set", e, "up")
        self.links.append((kind, ea, eb))
        return ea, eb

    def start(self, deadline=60):
        t0 = time.monotonic()
        nodes = "\n".join(f"  node {{\n    ring0_addr: {n.ring_ip}\n    name: {n.name}\n"
                          f"    nodeid: {k + 1}\n  }}" for k, n in enumerate(self.nodes))
        conf = COROSYNC_CONF.format(nodes=nodes)
        for n in self.nodes:
            self._ip("netns", "add", n.netns)
            self._ip("-n", n.netns, "link", "set", "lo", "up")
            n.prepare(conf)
        self.ring = self._link("c", "ring_ip")
        self.data = self._link("d", "data_ip")
        script = self.top / "holder.sh"
        script.write_text(HOLDER)
        for n in self.nodes:
            n.holder = subprocess.Popen(["nsenter", f"--net=/run/netns/{n.netns}", "unshare",
                                         "--mount", "--uts", "--propagation", "private",
                                         "bash", str(script), n.name, str(n.state)])
        for n in self.nodes:
            wait_for(lambda: (n.state / "ready").exists(), 10, f"{n.name}'s holder")
        for n in self.nodes:
            n.corosync = n.spawn("corosync", "-f", log=n.state / "corosync.out")
        for n in self.nodes:
            n.pacemakerd = n.spawn("pacemakerd", log=n.state / "pacemakerd.out")
        wait_for(lambda: self.online() == {"n1", "n2"}, deadline, "both nodes online")
        self.started_in = time.monotonic() - t0

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
        for n in self.nodes:
            if n.pacemakerd and n.pacemakerd.poll() is None:
                n.pacemakerd.send_signal(signal.SIGTERM)
        for n in self.nodes:
            _reap(n.pacemakerd, 60)
        for n in self.nodes:
            if n.corosync and n.corosync.poll() is None:
                n.corosync.send_signal(signal.SIGTERM)
            _reap(n.corosync, 30)
        for n in self.nodes:
            if n.holder and n.holder.poll() is None:
                # pacemaker's children that outlived pacemakerd live in the holder's
                # namespaces only: kill them by the pids the namespace holds
                leftovers = subprocess.run(["ip", "netns", "pids", n.netns], capture_output=True,
                                           text=True).stdout.split()
                for pid in leftovers:
                    if int(pid) != n.holder.pid:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                n.holder.kill()
                n.holder.wait()
        for n in self.nodes:
            subprocess.run(["ip", "netns", "del", n.netns], capture_output=True)
        shutil.rmtree(self.top, ignore_errors=True)
