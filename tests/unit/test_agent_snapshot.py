"""The agent's datastore reading, against the in-memory store: blocks, affinities, borrowed /32s."""

from __future__ import annotations

import ipaddress
import json

import pytest

from labnet import ipam
from labnet.agent.config import AgentConfig, EtcdSettings
from labnet.agent.daemon import Agent
from labnet.agent.nodes import NodeRecord
from labnet.errors import LabnetError
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore

SETTINGS = {"pool": {"cidr": "10.100.0.0/29", "block_size": 30, "ipip": "always"}, "bgp": {"asn": 64512}}
POOL = ipam.Pool("10.100.0.0/29", 30)  # two blocks of four addresses


def agent_for(store: MemStore, name: str) -> Agent:
    a = Agent(AgentConfig(etcd=EtcdSettings(["http://127.0.0.1:1"])), store=store)
    a.name = name
    return a


def test_snapshot_reads_nodes_blocks_and_borrowed_addresses() -> None:
    store = MemStore()
    store.put(keys.config("cluster"), json.dumps(SETTINGS))
    store.put(keys.node("a"), NodeRecord("a", "10.20.30.1/24").encode())
    store.put(keys.node("b"), NodeRecord("b", "10.20.30.2/24").encode())
    a_tunnel = ipam.tunnel_address(store, "a", POOL)
    ipam.tunnel_address(store, "b", POOL)
    for i in range(3):  # fill a's block
        assert not ipam.auto_assign(store, "a", f"net.c{i}", POOL, {"node": "a"}).borrowed
    borrowed = ipam.auto_assign(store, "a", "net.c9", POOL, {"node": "a"})
    assert borrowed.borrowed, "the pool has no free block left: a must borrow from b"

    snap = agent_for(store, "a")._read_snapshot()
    a_block, b_block = ipam.blocks_of(store, "a")[0], ipam.blocks_of(store, "b")[0]
    assert [n.name for n in snap.nodes] == ["a", "b"]
    assert snap.my_blocks == [a_block] and snap.blocks_by_node == {"a": [a_block], "b": [b_block]}
    assert ipaddress.IPv4Address(a_tunnel) == ipaddress.IPv4Network(a_block).network_address
    assert snap.borrowed == [ipaddress.IPv4Network(f"{borrowed.address}/32")]
    assert snap.affine_nodes == {"a", "b"}
    assert snap.settings.pool.block_size == 30
    # seen from b: the address lies in b's block but belongs to a pod of a
    assert agent_for(store, "b")._read_snapshot().borrowed == []


def test_snapshot_without_cluster_settings_says_which_key() -> None:
    with pytest.raises(LabnetError, match="/labnet/config/cluster"):
        agent_for(MemStore(), "a")._read_snapshot()


DUAL = {"pool": {"cidr": "10.100.0.0/16", "ipip": "never"},
        "pool6": {"cidr": "fd00:100::/48", "vxlan": "always", "nat_outgoing": True}, "bgp": {"asn": 64512}}


def _dual_agent(store: MemStore, name: str, ip: str, ip6: str) -> Agent:
    from labnet.agent.detect import Detected
    from labnet.settings import ClusterSettings

    a = agent_for(store, name)
    a.settings = ClusterSettings.from_dict(DUAL)
    a.underlay = Detected(ipaddress.IPv4Interface(ip), "ens32", 1500, ipaddress.IPv6Interface(ip6))
    return a


def test_a_dual_stack_node_plans_both_families_and_an_ipv4_one_only_its_own() -> None:
    store = MemStore()
    store.put(keys.config("cluster"), json.dumps(DUAL))
    pool4, pool6 = ipam.Pool("10.100.0.0/16", 26), ipam.Pool("fd00:100::/48", 122)
    for n, ip, ip6 in (("a", "10.20.30.1/24", "fd00:20::1/64"), ("b", "10.20.40.2/24", "fd00:40::2/64")):
        ipam.tunnel_address(store, n, pool4)
        t6 = ipam.tunnel_address(store, n, pool6)
        store.put(keys.node(n), NodeRecord(n, ip, ipv6_address=ip6, vxlan_tunnel_addr_v6=t6,
                                           vxlan_tunnel_mac_v6=f"66:00:00:00:00:0{len(n)}").encode())
    a = _dual_agent(store, "a", "10.20.30.1/24", "fd00:20::1/64")
    snap = a._read_snapshot()
    a4, a6 = ipam.blocks_of(store, "a", 4)[0], ipam.blocks_of(store, "a", 6)[0]
    b6 = ipam.blocks_of(store, "b", 6)[0]
    assert snap.my_blocks == [a4, a6], snap.my_blocks  # IPv4 first: both families, one list
    want, vxlan = a._desired(snap)
    assert str(want[ipaddress.ip_network(a6)]) == f"blackhole {a6} proto bird"
    assert str(want[ipaddress.ip_network(a4)]) == f"blackhole {a4} proto bird"
    assert vxlan is not None and [(v.node, v.underlay_ip, v.blocks) for v in vxlan["vxlan-v6.calico"]] == \
        [("b", "fd00:40::2", (b6,))]
    assert a._nat_want(snap) == ("10.100.0.0/16", "fd00:100::/48")
    # the same cluster, seen by a node whose IPv6 did not come up: IPv4 only, as a lab without IPv6
    a.underlay = a.underlay.__class__(a.underlay.address, "ens32", 1500)  # type: ignore[union-attr]
    assert a._read_snapshot().my_blocks == [a4] and a._nat_want(snap) == ("10.100.0.0/16",)
    want4, vxlan4 = a._desired(snap)
    assert vxlan4 is None and all(d.version == 4 for d in want4)
