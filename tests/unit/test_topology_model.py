"""The seed lab loads with every default filled, and the model helpers answer from it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from labnet.topology import Topology, load, loads
from labnet.topology.generate import generate
from labnet.topology.steps import STEP_KINDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seed() -> Topology:
    return load(ROOT / "topologies/seed.yaml")


def test_seed_lab_matches_the_seed_post(seed: Topology) -> None:
    assert seed.name == "seed" and seed.runtime == "netns" and seed.ipv6 is False
    assert {n: str(net.cidr) for n, net in seed.networks.items()} == {
        "lan-a": "10.20.30.0/24", "lan-b": "192.168.50.0/24", "wan": "203.0.113.0/24"}
    addrs = {n: (s.interfaces[0].name, s.interfaces[0].network, str(s.interfaces[0].address), str(s.gateway))
             for n, s in seed.nodes.items()}
    assert addrs == {
        "ubuntu-1": ("ens32", "lan-a", "10.20.30.71", "10.20.30.1"),
        "ubuntu-2": ("ens32", "lan-a", "10.20.30.72", "10.20.30.1"),
        "ubuntu-3": ("ens32", "lan-a", "10.20.30.73", "10.20.30.1"),
        "ubuntu-4": ("ens32", "lan-b", "192.168.50.74", "192.168.50.1"),
        "ubuntu-5": ("ens32", "lan-b", "192.168.50.75", "192.168.50.1"),
    }
    assert [str(i.address) for i in seed.routers["gw"].interfaces] == ["10.20.30.1", "192.168.50.1", "203.0.113.1"]
    assert str(seed.hosts["ext"].interfaces[0].address) == "203.0.113.10"
    assert {p: pod.node for p, pod in seed.pods.items()} == {"net-test": "ubuntu-3", "net-test-2": "ubuntu-4"}
    assert set(seed.scenarios) == {"pod-to-pod-across-subnets", "egress-nat", "seed-routes", "underlay"}


def test_seed_defaults_are_filled(seed: Topology) -> None:
    cl = seed.cluster
    assert cl is not None
    # etcd `node:` shorthand normalised to a list; TLS on
    assert cl.etcd.nodes == ["ubuntu-1"] and cl.etcd.tls is True
    assert cl.pool4.cidr == IPv4Network("10.100.0.0/16")
    assert (cl.pool4.block, cl.pool4.ipip_mode, cl.pool4.vxlan, cl.pool4.nat_outgoing) == (26, "always", "never", True)
    assert (cl.bgp.asn, cl.bgp.mesh, cl.bgp.route_reflectors, cl.bgp.peers) == (64512, "full", [], [])
    assert (cl.bgp.graceful_restart, cl.bgp.restart_time, cl.bgp.hold_time, cl.bgp.keepalive) == (True, 120, 90, None)
    assert seed.cluster_settings().bgp.keepalive is None  # a third of the hold time, as the FSM does
    assert cl.mtu is None
    # router interfaces named by position, MTU from the network
    assert [(i.name, i.mtu) for i in seed.routers["gw"].interfaces] == [("eth0", 1500), ("eth1", 1500), ("eth2", 1500)]
    assert seed.nodes["ubuntu-1"].bgp_address == "first-found"
    assert seed.node_asn("ubuntu-1") == 64512
    # step arguments get their defaults
    ping = seed.scenarios["pod-to-pod-across-subnets"][0]
    assert ping.kind == "ping"
    assert ping.args == {"from": "net-test", "to": "net-test-2", "count": 3, "expect": "success", "family": 4}
    assert {s.kind for s in seed.scenarios["seed-routes"]} == {"blackhole", "tunnel_route", "proxy_arp"}


def test_helpers(seed: Topology) -> None:
    kinds = [(n, k) for n, k, _s in seed.machines()]
    assert kinds == [("gw", "router"), ("ext", "host")] + [(f"ubuntu-{i}", "node") for i in range(1, 6)]
    iface = seed.nodes["ubuntu-4"].interfaces[0]
    assert seed.interface_cidr(iface) == IPv4Interface("192.168.50.74/24")
    assert list(seed.pods_on("ubuntu-3")) == ["net-test"]
    assert seed.pods_on("ubuntu-1") == {}
    assert seed.address_of("gw") == IPv4Address("10.20.30.1")
    assert seed.owner_of(IPv4Address("203.0.113.10")) is not None
    assert seed.owner_of(IPv4Address("203.0.113.99")) is None
    with pytest.raises(KeyError, match="no router, host or node named 'nope'"):
        seed.machine("nope")


def test_every_step_kind_registered() -> None:
    assert set(STEP_KINDS) >= {"ping", "connectivity", "proxy_arp", "blackhole", "tunnel_route", "no_route",
                               "route", "bgp_established", "sysctl"}


def test_step_model_round_trips(seed: Topology) -> None:
    again = Topology.model_validate(seed.model_dump())
    assert again == seed


def test_generate_50_nodes_loads() -> None:
    topo = loads(generate(50), "generated")
    assert topo.name == "scale"
    assert len(topo.nodes) == 50 and len(topo.networks) == 3  # ceil(50/20) LANs
    assert len(topo.routers["gw"].interfaces) == 3
    per_lan = [sum(1 for n in topo.nodes.values() if n.interfaces[0].network == lan) for lan in topo.networks]
    assert per_lan == [20, 20, 10]
    assert len(topo.pods) == 50


@pytest.mark.parametrize("n", [1, 2, 20, 21])
def test_generate_edges(n: int) -> None:
    topo = loads(generate(n, name="edge", pods_per_node=2, ipip="never", vxlan="always"), "generated")
    assert len(topo.nodes) == n and len(topo.pods) == 2 * n


def test_generate_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(0)
