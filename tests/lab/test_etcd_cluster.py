"""A three-member etcd cluster with peer TLS, each member in its own namespace on a bridge.

The bridge lives in a namespace of its own (never the root one).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from labnet.etcd import server
from labnet.etcd.client import EtcdStore
from labnet.etcd.netns import call_in_netns
from labnet.etcd.pki import ensure_pki
from labnet.etcd.server import EtcdMember
from labnet.nsexec import NodeNS, pid_alive, run
from labnet.wait import poll


def test_three_members_keep_serving_writes_with_one_killed(netns_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fabric = netns_factory("fabric")
    run(fabric, ["ip", "link", "add", "br0", "type", "bridge"])
    run(fabric, ["ip", "link", "set", "br0", "up"])
    members = [EtcdMember(f"etcd-{i}", f"10.99.0.{i}") for i in (1, 2, 3)]
    nodes: dict[str, NodeNS] = {}
    for i, m in enumerate(members, start=1):
        ns = netns_factory(m.name)
        run(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", "netns", fabric.netns])
        run(fabric, ["ip", "link", "set", f"v{i}", "master", "br0", "up"])
        run(ns, ["ip", "addr", "add", f"{m.address}/24", "dev", "eth0"])
        run(ns, ["ip", "link", "set", "eth0", "up"])
        nodes[m.name] = ns

    pki = ensure_pki(tmp_path / "pki", "c", [(m.name, m.address) for m in members], ["node-x"])
    pids = server.start_cluster(nodes, members, pki, {m.name: tmp_path / m.name for m in members},
                                {m.name: tmp_path / f"{m.name}.log" for m in members}, timeout=60)
    for pid in pids.values():
        netns_factory.track_pid(pid)
    assert sorted(pids) == ["etcd-1", "etcd-2", "etcd-3"]

    client_ns = nodes["etcd-3"].netns
    config = server.client_config(members, pki, node="node-x")

    def cluster_members() -> list[str]:
        with EtcdStore(config) as st:
            return sorted(m["name"] for m in st._clients[0].members())

    assert call_in_netns(client_ns, cluster_members) == ["etcd-1", "etcd-2", "etcd-3"]

    def write(key: str) -> int:
        with EtcdStore(config) as st:
            return st.put(key, "v")

    call_in_netns(client_ns, write, "/labnet/c/before")

    victim = pids["etcd-1"]  # the first endpoint: the client must move on to the others
    os.kill(victim, signal.SIGKILL)
    poll(lambda: not pid_alive(victim), timeout=10, what=f"etcd-1 pid {victim} to die")

    # A new leader may need an election: writes come back within the deadline.
    poll(lambda: call_in_netns(client_ns, write, "/labnet/c/after"), timeout=20,
         what="a write to the 2-of-3 cluster")
    for m in members[1:]:  # each surviving member serves the write and the older data
        one = server.client_config([m], pki, node="node-x")

        def read(cfg=one) -> list[str]:  # type: ignore[no-untyped-def]
            with EtcdStore(cfg) as st:
                st.put(f"/labnet/c/via-{cfg.endpoints[0].split('//')[1]}", "x")
                return [kv.key for kv in st.range("/labnet/c/")]

        keys = call_in_netns(client_ns, read)
        assert {"/labnet/c/before", "/labnet/c/after"} <= set(keys), f"{m.name}: {keys}"

    def health() -> dict[str, tuple[bool, str]]:
        with EtcdStore(config) as st:
            return st.health()

    h = call_in_netns(client_ns, health)
    assert not h[members[0].client_url()][0], f"killed etcd-1 reported healthy: {h}"
    for m in members[1:]:
        assert h[m.client_url()][0], f"{m.name} not healthy with 2 of 3 members up: {h}"
