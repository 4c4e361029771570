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
