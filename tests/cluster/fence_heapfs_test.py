#!/usr/bin/python3
"""fence_heapfs_test: a fence agent for the two-node test cluster (cluster.py), installed
in the nodes' own /usr/sbin only.  Fencing a node kills every process of its network
namespace (corosync, pacemaker, heapfs, the holder that keeps its mount namespace): the
node is gone as if powered off.  Pacemaker hands it its options on stdin, key=value:
action, port (the victim's node name), map ("n1:INODE,n2:INODE": each node's network
namespace, by inode).  A log of what it did goes to /var/log/fence_heapfs_test.log."""
import os
import signal
import sys
import time

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_heapfs_test" shortdesc="kills a test node's namespace">
<longdesc>Test only: fences a node of the heapfs test cluster by killing every process
in its network namespace.</longdesc>
<parameters>
<parameter name="action" unique="0" required="1"><getopt mixed="-o, --action=[action]"/>
<content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc>
</parameter>
<parameter name="port" unique="0" required="0"><getopt mixed="-n, --plug=[id]"/>
<content type="string"/><shortdesc lang="en">The node to fence</shortdesc></parameter>
<parameter name="map" unique="0" required="1"><getopt mixed="--map=[map]"/>
<content type="string"/><shortdesc lang="en">NODE:NETNS_INODE,...</shortdesc></parameter>
</parameters>
<actions>
<action name="on" automatic="0"/><action name="off"/><action name="reboot"/>
<action name="status"/><action name="monitor"/><action name="list"/>
<action name="metadata"/>
</actions>
</resource-agent>
"""


def netns_pids(inode):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/net") == f"net:[{inode}]":
                    out.append(int(p))
            except OSError:
                pass
    return out


def log(msg):
    try:
        with open("/var/log/fence_heapfs_test.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    except OSError:
        pass


def main():
    opts = {}
    for line in sys.stdin if not sys.stdin.isatty() else []:
        if "=" in line:
            k, v = line.strip().split("=", 1)
            opts[k] = v
    action = opts.get("action", sys.argv[1] if len(sys.argv) > 1 else "reboot")
    if action in ("metadata", "meta-data"):
        print(METADATA)
        return 0
    nodes = dict(kv.split(":", 1) for kv in opts.get("map", "").split(",") if ":" in kv)
    victim = opts.get("port") or opts.get("plug") or opts.get("nodename")
    if action == "list":
        print("\n".join(nodes))
        return 0
    if action in ("monitor", "status"):
        if action == "status" and victim in nodes:
            return 0 if netns_pids(nodes[victim]) else 2
        return 0
    if action == "on":
        return 0
    if action in ("off", "reboot"):
        if victim not in nodes:
            log(f"{action} {victim}: not in the map {nodes}")
            return 1
        me = os.readlink("/proc/self/ns/net")
        if me == f"net:[{nodes[victim]}]":
            log(f"{action} {victim}: that is this node")
            return 1
        for _ in range(20):  # until none is left (a dying pacemaker may still fork)
            pids = netns_pids(nodes[victim])
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        log(f"{action} {victim}: killed its processes")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
