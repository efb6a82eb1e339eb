"""The cluster the Pacemaker tests run in (tests/cluster/cluster.py): two nodes, each in
namespaces of its own, form a cluster; a promotable clone (Pacemaker's own test agent,
ocf:pacemaker:Stateful) gets exactly one promoted instance; a ban moves promotion (demote
there, promote here); cutting Corosync's link is noticed by both sides.  Then the heapfs
resource agent (ocf:heapfs:heapfs, issue 19) in the same cluster, its six scenarios:
both start (one owner), the owner's daemon killed (the mirror promoted, nothing
acknowledged lost, the node rejoins as mirror and is not preferred while empty), only
heapfs's link cut (never two owners), a ban (demote, then promote), both links cut with a
fence device (one owner after the fence).  The cluster starts once for the module."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cluster import BUILD, Cluster, wait_for

STATEFUL = ('<clone id="st-clone"><meta_attributes id="st-meta">'
            '<nvpair id="st-p" name="promotable" value="true"/>'
            '<nvpair id="st-pm" name="promoted-max" value="1"/>'
            '<nvpair id="st-cm" name="clone-max" value="2"/>'
            '<nvpair id="st-n" name="notify" value="true"/></meta_attributes>'
            '<primitive id="st" class="ocf" provider="pacemaker" type="Stateful"><operations>'
            '<op id="st-mon-p" name="monitor" interval="3s" role="Promoted"/>'
            '<op id="st-mon-u" name="monitor" interval="4s" role="Unpromoted"/>'
            '</operations></primitive></clone>')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start(before=heapfs_files)
        yield c
    finally:
        c.close()


def test_two_nodes_come_online(cluster):
    assert cluster.online() == {"n1", "n2"}
    assert cluster.started_in < 60
    for n in cluster.nodes:  # each node is its own host to the cluster tools
        assert n.run("hostname").stdout.strip() == n.name
        assert n.run("crm_node", "-n").stdout.strip() == n.name


def test_promotable_clone_has_one_promoted_and_a_ban_moves_it(cluster):
    n1 = cluster.nodes[0]
    n1.run("cibadmin", "-C", "-o", "resources", "-X", STATEFUL)
    roles = wait_for(lambda: (lambda r: r if sorted(r.values()) == ["Promoted", "Unpromoted"]
                              else None)(cluster.roles("st")), 60, "one promoted, one not")
    promoted = next(n for n, r in roles.items() if r == "Promoted")
    other = next(n for n in roles if n != promoted)
    n1.run("crm_resource", "--ban", "--promoted", "-r", "st-clone", "-N", promoted)
    wait_for(lambda: cluster.roles("st").get(other) == "Promoted" and
             list(cluster.roles("st").values()).count("Promoted") == 1, 60,
             f"promotion moved to {other}")
    n1.run("crm_resource", "--clear", "-r", "st-clone")
    n1.run("cibadmin", "-D", "-o", "resources", "-X", '<clone id="st-clone"/>')
    wait_for(lambda: not cluster.roles("st"), 60, "the clone gone")


def test_a_cut_ring_is_noticed_on_both_sides(cluster):
    """Corosync's link down: each node sees the other OFFLINE (with two_node both keep
    quorum, which is why the heapfs agent needs a fence-peer handler); healed, both are
    online again."""
    t0 = time.monotonic()
    cluster.cut("ring")
    try:
        for n, peer in zip(cluster.nodes, ("n2", "n1")):
            wait_for(lambda: f"OFFLINE: [ {peer} ]" in n.run("crm_mon", "-1", check=False).stdout,
                     30, f"{n.name} sees {peer} gone")
        noticed = time.monotonic() - t0
        assert noticed > 1.0  # the token timeout (3 s) passed first: not a stale view
    finally:
        cluster.heal("ring")
    wait_for(lambda: cluster.online() == {"n1", "n2"}, 60, "both online again")
    print(f"ring cut noticed on both sides after {noticed:.1f} s")


# ---- heapfs as a promotable clone (ocf:heapfs:heapfs, issue 19) ----------------------------
#
# Each node mounts /run/heapfs-test/mnt (its own /run) with the same config: heap "data"
# replicated sync over the "data" link, partner { managed = true } and the fence-peer
# program as on_peer_lost.  Every scenario ends with `heapfsctl verify` clean; how long
# each failover took is printed (FAILOVER ...) and kept in FIGURES.

MNT = "/run/heapfs-test/mnt"
DATA = f"{MNT}/heaps/data"
HEAPFSCTL = BUILD / "fs" / "ctl" / "heapfsctl"
FENCE_PEER = BUILD / "fs" / "ha" / "heapfs-fence-peer"
CONSTRAINT = "heapfs-fence-hfs-clone"
FIGURES = {}

HEAPFS_CLONE = f"""<clone id="hfs-clone"><meta_attributes id="hfs-meta">
<nvpair id="hfs-p" name="promotable" value="true"/>
<nvpair id="hfs-pm" name="promoted-max" value="1"/>
<nvpair id="hfs-cm" name="clone-max" value="2"/>
<nvpair id="hfs-n" name="notify" value="true"/>
<nvpair id="hfs-prio" name="priority" value="10"/></meta_attributes>
<primitive id="hfs" class="ocf" provider="heapfs" type="heapfs">
<instance_attributes id="hfs-ia">
<nvpair id="hfs-mnt" name="mount" value="{MNT}"/>
<nvpair id="hfs-cfg" name="config" value="/run/heapfs-test/heapfs.conf"/>
<nvpair id="hfs-bin" name="heapfs" value="{BUILD / 'fs' / 'heapfs'}"/>
<nvpair id="hfs-ctl" name="heapfsctl" value="{HEAPFSCTL}"/>
<nvpair id="hfs-log" name="logfile" value="/var/log/heapfs.log"/>
<nvpair id="hfs-opt" name="options" value="spin_us=0"/></instance_attributes>
<operations>
<op id="hfs-start" name="start" timeout="60s" interval="0"/>
<op id="hfs-stop" name="stop" timeout="60s" interval="0"/>
<op id="hfs-promote" name="promote" timeout="30s" interval="0"/>
<op id="hfs-demote" name="demote" timeout="30s" interval="0"/>
<op id="hfs-mon-p" name="monitor" interval="2s" timeout="20s" role="Promoted"/>
<op id="hfs-mon-u" name="monitor" interval="3s" timeout="20s" role="Unpromoted"/>
</operations></primitive></clone>"""

WRITER = r"""
import os, sys, time
d, log, tag = sys.argv[1:4]
i = 0
with open(log, "a") as out:
    while True:
        i += 1
        name = f"{tag}-{i}"
        try:
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, (name + "\n").encode() * 64)
            finally:
                os.close(fd)
        except OSError as e:
            out.write(f"# {name} {e.errno} {time.monotonic():.3f}\n")
            out.flush()
            time.sleep(0.2)
            continue
        out.write(f"{name} {time.monotonic():.3f}\n")  # acknowledged: it is on both
        out.flush()
        time.sleep(0.02)
"""

CHECK = r"""
import os, sys
d, log = sys.argv[1:3]
bad = []
n = 0
for line in open(log):
    if line.startswith("#"):
        continue
    name = line.split()[0]
    n += 1
    try:
        with open(os.path.join(d, name), "rb") as f:
            ok = f.read() == (name + "\n").encode() * 64
    except OSError:
        ok = False
    if not ok:
        bad.append(name)
print(n, " ".join(bad))
"""


def heapfs_files(n):
    """Node n's heapfs config and secret, copied to /run/heapfs-test at each start."""
    k = int(n.name[1:])
    peer = f"10.77.2.{3 - k}"
    (n.state / "run-heapfs" / "secret").write_text("heapfs cluster test secret\n")
    os.chmod(n.state / "run-heapfs" / "secret", 0o600)
    (n.state / "run-heapfs" / "heapfs.conf").write_text(
        'heap "data" { size = 32M replicate = sync }\n'
        f'partner {{ node = "{n.name}" listen = "{n.data_ip}:7410" connect = "{peer}:7410"\n'
        '  secret_file = "/run/heapfs-test/secret" timeout = 1s managed = true\n'
        f'  on_peer_lost = "sh {FENCE_PEER} --clone=hfs-clone --settle=8 --timeout=40"\n'
        '  on_peer_lost_timeout = 50s }\n')


@pytest.fixture(scope="module")
def hcluster(cluster):
    """The module's cluster, with the heapfs clone created by the first scenario; at the
    end the clone is deleted (Pacemaker stops it: unmounted on both nodes)."""
    yield cluster
    n = next((n for n in cluster.nodes if n.holder.poll() is None), None)
    t0 = time.monotonic()
    if n:  # stopped first (as an operator does), then deleted
        n.run("crm_resource", "-r", "hfs-clone", "--meta", "-p", "target-role", "-v", "Stopped",
              check=False)
        n.run("cibadmin", "-D", "-o", "resources", "-X", '<primitive id="fence"/>', check=False)
        try:
            wait_for(lambda: not cluster.roles("hfs"), 60, "the heapfs clone stopped")
        except AssertionError:
            pass
        n.run("cibadmin", "-D", "-o", "resources", "-X", '<clone id="hfs-clone"/>', check=False)
    print(f"the heapfs clone stopped in {time.monotonic() - t0:.1f} s")
    for k, v in FIGURES.items():
        print(f"FAILOVER {k}: {v:.1f} s")


def ctl(n, *args, check=False):
    return n.run(str(HEAPFSCTL), *args, check=check)


def partner(n):
    r = ctl(n, "--json", "partner", MNT)
    return json.loads(r.stdout) if r.returncode == 0 else None


def node(cluster, name):
    return next(n for n in cluster.nodes if n.name == name)


def owner_and_mirror(cluster):
    roles = cluster.roles("hfs")
    if sorted(roles.values()) != ["Promoted", "Unpromoted"]:
        return None
    o = next(k for k, v in roles.items() if v == "Promoted")
    return node(cluster, o), node(cluster, next(k for k in roles if k != o))


def settled(cluster):
    """One Promoted, one Unpromoted, and the two daemons agree, connected."""
    om = owner_and_mirror(cluster)
    if not om:
        return None
    po, pm = partner(om[0]), partner(om[1])
    if not po or not pm or po["state"] != "connected" or pm["state"] != "connected":
        return None
    if po["heaps"] != {"data": "owner"} or pm["heaps"] != {"data": "mirror"}:
        return None
    return om


def verify(n):
    r = ctl(n, "--json", "verify", MNT)
    j = json.loads(r.stdout) if r.stdout else {}
    assert r.returncode == 0 and j.get("differences") == 0, (r.stdout, r.stderr)


class Writer:
    """A writer in node n: files tag-1, tag-2, ... in heap data, each name logged once the
    write and close were acknowledged (sync: the partner has it)."""

    def __init__(self, cluster, n, tag):
        self.log = cluster.top / f"acked-{tag}.log"
        self.log.touch()
        self.proc = subprocess.Popen(n.nsenter("python3", "-c", WRITER, DATA, self.log, tag),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def acked(self):
        return [ln.split() for ln in self.log.read_text().splitlines()
                if ln and not ln.startswith("#")]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def check(self, n):
        """Every acknowledged file is on node n, whole."""
        out = n.run("python3", "-c", CHECK, DATA, self.log).stdout.split()
        assert int(out[0]) > 0 and out[1:] == [], out
        return int(out[0])


def heapfs_pid(n):
    for pid in n.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "heapfs":
                return pid
        except OSError:
            pass
    return None


def cleanup(cluster):
    cluster.nodes[0].run("crm_resource", "--cleanup", "-r", "hfs-clone", check=False)


def test_heapfs_both_start_one_owner(hcluster):
    """Scenario 1: both nodes start the clone: exactly one owner, the other a mirror,
    within 30 s."""
    heapfs_files_ready = all((n.state / "run-heapfs" / "heapfs.conf").exists()
                             for n in hcluster.nodes)
    assert heapfs_files_ready
    t0 = time.monotonic()
    hcluster.nodes[0].run("cibadmin", "-C", "-o", "resources", "-X", HEAPFS_CLONE)
    o, m = wait_for(lambda: settled(hcluster), 30, "one owner, one mirror")
    FIGURES["first promotion after both started"] = time.monotonic() - t0
    assert partner(o)["score"] == 100 and partner(o)["managed"] is True
    wait_for(lambda: partner(m)["score"] == 75, 15, "the mirror is whole")
    o.run("sh", "-c", f"echo first > {DATA}/first")
    assert m.run("cat", f"{DATA}/first").stdout == "first\n"
    assert m.run("sh", "-c", f"echo x > {DATA}/nope", check=False).returncode != 0  # EROFS
    # the agent's own monitor answers as Pacemaker sees it
    verify(o)


def test_heapfs_owner_killed_mirror_promoted_and_rejoins(hcluster):
    """Scenarios 2 and 3: kill -9 of the owner's daemon; the mirror is promoted and no
    acknowledged sync write is lost; the node's instance restarts as a mirror, is
    resynced, and is not preferred while it is empty."""
    o, m = wait_for(lambda: settled(hcluster), 30, "settled")
    w = Writer(hcluster, o, "kill")
    wait_for(lambda: len(w.acked()) >= 30, 20, "writes acknowledged")
    pid = heapfs_pid(o)
    t0 = time.monotonic()
    os.kill(pid, 9)
    wait_for(lambda: hcluster.roles("hfs").get(m.name) == "Promoted", 60, f"{m.name} promoted")
    FIGURES["owner daemon killed -> mirror promoted"] = time.monotonic() - t0
    w.stop()
    acked = w.check(m)  # every acknowledged write is on the survivor
    # the survivor takes writes (its on_peer_lost answered, or the partner is back)
    m.run("sh", "-c", f"echo after > {DATA}/after-kill", timeout=60)
    FIGURES["owner daemon killed -> writes on the new owner"] = time.monotonic() - t0
    # the killed side comes back as a mirror; while it is empty it gets no score
    seen = []

    def back():
        j = partner(o)
        if j:
            seen.append((j["state"], j["heaps"].get("data"), j["score"]))
        return j and j["state"] == "connected" and j["heaps"] == {"data": "mirror"} and \
            j["score"] == 75
    wait_for(back, 60, f"{o.name} a whole mirror again")
    assert all(s[1] == "mirror" for s in seen), seen
    assert all(s[2] == 0 for s in seen if s[0] != "connected"), seen
    assert hcluster.roles("hfs").get(m.name) == "Promoted"
    w.check(o)
    print(f"{acked} acknowledged writes, all on the survivor and the rejoined node")
    cleanup(hcluster)
    verify(m)


def test_heapfs_data_link_cut_never_two_owners(hcluster):
    """Scenario 4: only heapfs's link is cut: never two owners; the owner's writes wait
    for on_peer_lost (the fence-peer constraint keeps the mirror from promotion), then go
    on; healed, the constraint is lifted and the mirror resynced."""
    o, m = wait_for(lambda: settled(hcluster), 60, "settled")
    w = Writer(hcluster, o, "cut")
    wait_for(lambda: len(w.acked()) >= 10, 20, "writes acknowledged")
    t0 = time.monotonic()
    hcluster.cut("data")
    try:
        before = len(w.acked())
        owners = []
        end = time.monotonic() + 20
        while time.monotonic() < end:
            roles = hcluster.roles("hfs")
            owners.append(list(roles.values()).count("Promoted"))
            assert list(roles.values()).count("Promoted") <= 1, roles
            pm = partner(m)
            assert pm is None or pm["heaps"].get("data") != "owner", pm
            if len(w.acked()) > before + 10 and time.monotonic() - t0 > 10:
                break
            time.sleep(0.5)
        assert CONSTRAINT in o.run("cibadmin", "-Q", "-o", "constraints").stdout
        wait_for(lambda: len(w.acked()) > before + 5, 40, "writes go on after on_peer_lost")
        stamps = [float(a[1]) for a in w.acked()]
        gap = max(b - a for a, b in zip(stamps, stamps[1:]))
        FIGURES["data link cut -> owner's writes go on (longest wait)"] = gap
        assert partner(o)["on_peer_lost"] == "open"
    finally:
        hcluster.heal("data")
    wait_for(lambda: settled(hcluster), 60, "connected again")
    wait_for(lambda: CONSTRAINT not in o.run("cibadmin", "-Q", "-o", "constraints").stdout,
             30, "the constraint lifted")
    w.stop()
    w.check(m)
    assert hcluster.roles("hfs").get(o.name) == "Promoted"
    verify(o)


def test_heapfs_ban_moves_ownership(hcluster):
    """Scenario 6: a ban of the promoted instance: demote there, then promote here."""
    o, m = wait_for(lambda: settled(hcluster), 60, "settled")
    o.run("sh", "-c", f"echo moved > {DATA}/moved")
    t0 = time.monotonic()
    o.run("crm_resource", "--ban", "--promoted", "-r", "hfs-clone", "-N", o.name)
    try:
        wait_for(lambda: (lambda om: om and om[0] is m)(settled(hcluster)), 60,
                 f"ownership moved to {m.name}")
        FIGURES["ban -> ownership moved"] = time.monotonic() - t0
    finally:
        o.run("crm_resource", "--clear", "-r", "hfs-clone")
    assert m.run("cat", f"{DATA}/moved").stdout == "moved\n"
    m.run("sh", "-c", f"echo on-new-owner > {DATA}/moved2")
    wait_for(lambda: o.run("cat", f"{DATA}/moved2", check=False).stdout == "on-new-owner\n",
             30, "the old owner mirrors it")
    verify(m)


def test_heapfs_both_links_cut_fenced(hcluster):
    """Scenario 5: both links cut, a real fence device (fence_heapfs_test): after the
    fence exactly one owner, nothing acknowledged lost; the fenced node starts again and
    rejoins as mirror."""
    o, m = wait_for(lambda: settled(hcluster), 60, "settled")
    nmap = ",".join(f"{n.name}:{n.netns_inode()}" for n in hcluster.nodes)
    o.run("cibadmin", "-C", "-o", "resources", "-X",
          '<primitive id="fence" class="stonith" type="fence_heapfs_test">'
          '<instance_attributes id="fence-ia">'
          f'<nvpair id="fence-map" name="map" value="{nmap}"/>'
          '<nvpair id="fence-hl" name="pcmk_host_list" value="n1 n2"/>'
          '</instance_attributes><operations>'
          '<op id="fence-mon" name="monitor" interval="60s"/></operations></primitive>')
    # the promoted instance's node wins a fence race (priority 10 + 1 as promoted)
    o.run("crm_attribute", "--type", "crm_config", "--name", "priority-fencing-delay",
          "--update", "5s")
    o.run("crm_attribute", "--type", "crm_config", "--name", "stonith-enabled",
          "--update", "true")
    wait_for(lambda: "fence" in o.run("crm_mon", "-1").stdout and
             "Started" in o.run("crm_resource", "--locate", "-r", "fence").stdout + "Started",
             30, "the fence device")
    time.sleep(3)
    w = Writer(hcluster, o, "fence")
    wait_for(lambda: len(w.acked()) >= 10, 20, "writes acknowledged")
    t0 = time.monotonic()
    hcluster.cut("ring")
    hcluster.cut("data")
    try:
        victim = wait_for(lambda: next((n for n in hcluster.nodes if not n.pids()), None), 60,
                          "a node fenced")
        FIGURES["both links cut -> a node fenced"] = time.monotonic() - t0
        survivor = o if victim is m else m
        n0 = len(w.acked())
        if survivor is o:
            wait_for(lambda: len(w.acked()) > n0 + 5, 60, "the owner's writes go on")
        else:
            w.stop()
            wait_for(lambda: partner(survivor) and
                     partner(survivor)["heaps"].get("data") == "owner", 60, "survivor owns")
        FIGURES["both links cut -> writes on the one owner"] = time.monotonic() - t0
        assert partner(survivor)["heaps"] == {"data": "owner"}
        w.stop()
        acked = w.check(survivor)
    finally:
        hcluster.heal("ring")
        hcluster.heal("data")
    hcluster.restart(victim)
    wait_for(lambda: (lambda om: om and om[0] is survivor)(settled(hcluster)), 90,
             f"{victim.name} rejoined as mirror")
    w.check(victim)
    print(f"{acked} acknowledged writes, none lost; {victim.name} was fenced")
    o.run("crm_attribute", "--type", "crm_config", "--name", "stonith-enabled",
          "--update", "false")
    verify(survivor)
