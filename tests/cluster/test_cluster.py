"""The cluster the Pacemaker tests run in (tests/cluster/cluster.py): two nodes, each in
namespaces of its own, form a cluster; a promotable clone (Pacemaker's own test agent,
ocf:pacemaker:Stateful) gets exactly one promoted instance; a ban moves promotion (demote
there, promote here); cutting Corosync's link is noticed by both sides.  The heapfs
resource agent's scenarios build on this."""
import time

import pytest

from cluster import Cluster, wait_for

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
        c.start()
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
