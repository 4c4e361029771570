"""Every assertion passing and failing against real kernel state in throw-away namespaces,
with the failure messages a user would read (node, object, expected, actual, last state)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import labnet.checks.assertions as A
from labnet.checks import (
    CheckFailed,
    Endpoint,
    assert_blackhole_route,
    assert_connectivity,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_route,
    assert_sysctl,
    assert_tunnel_route,
)
from labnet.errors import BadInput
from labnet.nsexec import NodeNS

HOST_MAC = "ee:ee:ee:ee:ee:ee"
VETH = "cali0123456789a"  # cali + 11 hex, as Calico names them


def ip(ns: NodeNS, *args: str) -> None:
    subprocess.run(["ip", "-n", ns.name, *args], check=True, capture_output=True, text=True)


def sysctl(ns: NodeNS, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns.name, "sysctl", "-qw", f"{key}={value}"], check=True)


@dataclass
class Pair:
    a: NodeNS  # 10.0.0.1 on veth-a, holds the routes under test
    b: NodeNS  # 10.0.0.2 on veth-b


@pytest.fixture
def pair(netns_factory) -> Pair:  # type: ignore[no-untyped-def]
    a, b = netns_factory("a"), netns_factory("b")
    ip(a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b.name)
    ip(a, "addr", "add", "10.0.0.1/24", "dev", "veth-a")
    ip(b, "addr", "add", "10.0.0.2/24", "dev", "veth-b")
    ip(a, "link", "set", "veth-a", "up")
    ip(b, "link", "set", "veth-b", "up")
    ip(a, "route", "add", "blackhole", "10.100.163.128/26", "proto", "bird")
    ip(a, "route", "add", "10.100.5.192/26", "via", "192.168.50.74", "dev", "veth-a", "proto", "bird", "onlink")
    ip(a, "route", "add", "10.100.163.129", "dev", "veth-a", "scope", "link")
    sysctl(a, "net.ipv4.conf.veth-a.proxy_arp", "1")
    return Pair(a, b)


def failure(call: Callable[[], object]) -> str:
    with pytest.raises(CheckFailed) as info:
        call()
    return str(info.value)


# ------------------------------------------------------------------ routes

def test_route_passes_on_any_subset_of_fields(pair: Pair) -> None:
    res = assert_route(pair.a, {"dst": "10.100.163.129", "dev": "veth-a", "scope": "link"}, timeout=1)
    assert res.ok and res.target == pair.a.name
    assert res.detail == "present: 10.100.163.129 dev veth-a scope link"
    assert assert_route(pair.a, {"dst": "10.100.163.129", "scope": 253, "proto": "boot"}, timeout=1).ok
    assert assert_route(pair.a, {"dst": "10.0.0.0/24", "protocol": 2, "prefsrc": "10.0.0.1"}, timeout=1).ok


def test_route_failure_names_node_expected_actual_and_table(pair: Pair) -> None:
    msg = failure(lambda: assert_route(pair.a, {"dst": "10.100.163.129", "scope": "host"}, timeout=0.3))
    assert f"check failed on {pair.a.name}: route 10.100.163.129/32 scope host" in msg
    assert "expected: 10.100.163.129/32 scope host" in msg
    assert ("actual:   route to 10.100.163.129/32 is `10.100.163.129 dev veth-a scope link` "
            "($.scope: expected 'host', actual 'link')") in msg
    assert f"last state seen (ip -4 route show table main on {pair.a.name}):" in msg
    assert "    blackhole 10.100.163.128/26 proto bird\n" in msg  # the whole table is there
    assert "    10.0.0.0/24 dev veth-a proto kernel scope link src 10.0.0.1" in msg
    msg = failure(lambda: assert_route(pair.a, {"dst": "10.100.243.0/26"}, timeout=0))
    assert "actual:   no route to 10.100.243.0/26 in table main" in msg


def test_route_passes_after_a_retry(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # The route appears between the first and second look, as when an agent installs it late.
    real = A.get_routes
    calls: list[int] = []

    def late(ns: NodeNS, table: str | int = "main", family: int = 4) -> list[A.Route]:
        routes = real(ns, table, family)
        if not calls:
            ip(pair.a, "route", "add", "10.100.243.0/26", "via", "10.0.0.2", "dev", "veth-a", "proto", "bird")
        calls.append(1)
        return routes

    monkeypatch.setattr(A, "get_routes", late)
    res = assert_route(pair.a, {"dst": "10.100.243.0/26", "gateway": "10.0.0.2", "proto": 12}, timeout=5)
    assert res.ok and res.attempts == 2 and res.retried
    assert "after" in res.summary()


def test_no_route(pair: Pair) -> None:
    assert assert_no_route(pair.a, "10.100.243.0/26", timeout=0).ok
    assert assert_no_route(pair.a, match={"dst": "10.100.163.128/26", "type": "unicast"}, timeout=0).ok
    msg = failure(lambda: assert_no_route(pair.a, "10.100.163.128/26", timeout=0.2))
    assert f"check failed on {pair.a.name}: no route 10.100.163.128/26" in msg
    assert "actual:   present: `blackhole 10.100.163.128/26 proto bird`" in msg
    with pytest.raises(BadInput):
        assert_no_route(pair.a)


def test_blackhole(pair: Pair) -> None:
    res = assert_blackhole_route(pair.a, "10.100.163.128/26", timeout=0)
    assert res.ok and res.name == "blackhole 10.100.163.128/26 proto bird"
    msg = failure(lambda: assert_blackhole_route(pair.a, "10.100.163.128/26", protocol="static", timeout=0.2))
    assert f"check failed on {pair.a.name}: blackhole 10.100.163.128/26 proto static" in msg
    assert "($.protocol: expected 'static', actual 'bird')" in msg
    msg = failure(lambda: assert_blackhole_route(pair.b, "10.100.5.192/26", timeout=0.2))
    assert f"check failed on {pair.b.name}" in msg
    assert "no route to 10.100.5.192/26" in msg
    with pytest.raises(BadInput, match="host bits set"):
        assert_blackhole_route(pair.a, "10.100.163.129/26")


def test_tunnel_route(pair: Pair) -> None:
    assert assert_tunnel_route(pair.a, "10.100.5.192/26", "192.168.50.74", dev="veth-a", timeout=0).ok
    msg = failure(lambda: assert_tunnel_route(pair.a, "10.100.5.192/26", "192.168.50.75", timeout=0.2))
    assert (f"check failed on {pair.a.name}: tunnel route "
            "10.100.5.192/26 via 192.168.50.75 dev tunl0 proto bird onlink") in msg
    assert "$.gateway: expected '192.168.50.75', actual '192.168.50.74'" in msg
    assert "$.dev: expected 'tunl0', actual 'veth-a'" in msg


def test_sysctl(pair: Pair) -> None:
    assert assert_sysctl(pair.a, "net.ipv4.conf.veth-a.proxy_arp", 1, timeout=0).ok
    assert assert_sysctl(pair.a, "net/ipv4/conf/veth-a/proxy_arp", "1", timeout=0).ok
    msg = failure(lambda: assert_sysctl(pair.b, "net.ipv4.conf.veth-b.proxy_arp", 1, timeout=0.2))
    assert f"check failed on {pair.b.name}: sysctl net.ipv4.conf.veth-b.proxy_arp = 1" in msg
    assert "expected: net.ipv4.conf.veth-b.proxy_arp = 1" in msg
    assert "actual:   net.ipv4.conf.veth-b.proxy_arp = 0" in msg
    msg = failure(lambda: assert_sysctl(pair.a, "net.ipv4.conf.nosuch.proxy_arp", 1, timeout=0))
    assert "could not observe" in msg and "No such file" in msg


# ------------------------------------------------------------------ ping and connectivity

def test_ping(pair: Pair) -> None:
    res = assert_ping(pair.a, "10.0.0.2", timeout=3)
    assert res.ok and res.detail == "1/1 replies from 10.0.0.2"
    assert assert_ping(pair.a, "10.100.163.130", expect=False, timeout=3).ok  # blackholed
    msg = failure(lambda: assert_ping(pair.b, "10.100.163.129", dst_name="net-test", timeout=0.5))
    assert f"check failed on {pair.b.name}: ping net-test (10.100.163.129)" in msg
    assert "expected: replies from net-test (10.100.163.129)" in msg
    assert "actual:   ping exited 2" in msg and "unreachable" in msg.lower()
    msg = failure(lambda: assert_ping(pair.a, "10.0.0.2", expect=False, timeout=0.5))
    assert "expected: no reply from 10.0.0.2" in msg and "actual:   1/1 replies from 10.0.0.2" in msg
    with pytest.raises(BadInput):
        assert_ping(pair.a, "net-test")


def test_connectivity_matrix(pair: Pair) -> None:
    ends = {"a": Endpoint("a", pair.a, "10.0.0.1"), "b": Endpoint("b", pair.b, "10.0.0.2"),
            "hole": Endpoint("hole", None, "10.100.163.130")}
    ok = assert_connectivity({"a": {"b": True, "hole": False}, "b": {"a": True}}, ends.__getitem__, timeout=3)
    assert ok.ok and ok.detail == "3/3 cells as expected"
    wrong = {"a": {"b": False, "hole": True}, "b": {"a": True}}
    msg = failure(lambda: assert_connectivity(wrong, ends.__getitem__, timeout=0.5))
    assert "check failed on a, b: connectivity" in msg
    assert ("2 of 3 cells wrong: a → b (10.0.0.2): want no-reach, got reach: echo reply; "
            "a → hole (10.100.163.130): want reach, got no-reach: ping exited 2: ping: connect: Invalid argument") in msg
    assert "last state seen (reachability, the wrong cells marked):" in msg
    rows = [" ".join(line.split()) for line in msg[msg.index("FROM \\ TO"):].splitlines()]
    assert rows[0] == "FROM \\ TO b hole a", rows
    assert rows[1] == "a ✗ want no-reach, got reach ✗ want reach, got no-reach ·", rows
    assert rows[2] == "b · · ✓ reach", rows
    with pytest.raises(BadInput, match="hole is an address: it cannot send probes"):
        assert_connectivity({"hole": {"a": True}}, ends.__getitem__)


# ------------------------------------------------------------------ proxy ARP (seed walk-through)

@dataclass
class MiniCalico:
    router: NodeNS
    node: NodeNS
    pod: NodeNS


@pytest.fixture
def calico(netns_factory) -> MiniCalico:  # type: ignore[no-untyped-def]
    """One node wired like the seed's ubuntu-3 by hand: ens32 to a router, a cali veth to a pod."""
    router, node, pod = netns_factory("gw"), netns_factory("node"), netns_factory("pod")
    ip(node, "link", "add", "ens32", "type", "veth", "peer", "name", "lan0", "netns", router.name)
    ip(node, "addr", "add", "10.20.30.73/24", "dev", "ens32")
    ip(router, "addr", "add", "10.20.30.1/24", "dev", "lan0")
    ip(node, "link", "set", "ens32", "up")
    ip(router, "link", "set", "lan0", "up")
    ip(router, "route", "add", "10.100.163.128/26", "via", "10.20.30.73")
    ip(node, "route", "add", "default", "via", "10.20.30.1", "dev", "ens32")
    ip(node, "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    ip(node, "link", "set", VETH, "address", HOST_MAC)
    for key, value in (("net.ipv4.ip_forward", "1"), (f"net.ipv4.conf.{VETH}.proxy_arp", "1"),
                       (f"net.ipv4.conf.{VETH}.forwarding", "1"), (f"net.ipv4.neigh.{VETH}.proxy_delay", "0"),
                       (f"net.ipv4.conf.{VETH}.route_localnet", "1")):
        sysctl(node, key, value)
    ip(node, "link", "set", VETH, "up")
    ip(node, "route", "add", "10.100.163.129", "dev", VETH, "scope", "link")
    ip(pod, "addr", "add", "10.100.163.129/32", "dev", "eth0")
    ip(pod, "link", "set", "eth0", "up")
    ip(pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    ip(pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    return MiniCalico(router, node, pod)


def test_proxy_arp_answers_with_host_veth_mac(calico: MiniCalico) -> None:
    # reach the pod the way the lab does: through its node (nsenter node, then the pod's netns)
    pod = calico.node.pod("net-test", calico.pod.netns)
    res = assert_proxy_arp(calico.node, pod, VETH, timeout=5)
    assert res.ok, res
    assert res.target == f"{calico.node.name} ↔ {calico.node.name}/net-test"
    assert res.detail.startswith(f"proxy_arp=1, 169.254.1.1 is-at {HOST_MAC}")
    neigh = subprocess.run(["ip", "-n", calico.pod.name, "neigh", "show", "169.254.1.1"],
                           capture_output=True, text=True, check=True).stdout
    assert f"lladdr {HOST_MAC}" in neigh
    # and the datapath built on it works: the pod reaches the router through the node
    assert assert_ping(pod, "10.20.30.1", timeout=5).ok
    assert assert_route(pod, {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0"}, timeout=0).ok
    assert assert_sysctl(pod, "net.ipv4.conf.eth0.proxy_arp", 0, timeout=0).ok


def test_proxy_arp_fails_without_node_default_route(calico: MiniCalico) -> None:
    assert assert_proxy_arp(calico.node, calico.pod, VETH, timeout=5).ok  # the entry exists now...
    ip(calico.node, "route", "del", "default")
    # ...but the check forgets it first, so a stale answer cannot make it pass
    msg = failure(lambda: assert_proxy_arp(calico.node, calico.pod, VETH, timeout=1.5))
    assert f"check failed on {calico.node.name} ↔ {calico.pod.name}: proxy-ARP for 169.254.1.1 on {VETH}" in msg
    assert f"expected: proxy_arp=1 on {VETH} and {calico.pod.name}'s ARP entry for 169.254.1.1 dev eth0" in msg
    assert f"actual:   proxy_arp=1 on {VETH}; no ARP reply for 169.254.1.1" in msg
    assert (f"why:      node {calico.node.name} has no default route, so it has no route to 169.254.1.1 "
            f"and proxy-ARP on {VETH} cannot answer") in msg
    assert f"{VETH} MAC {HOST_MAC}, proxy_arp=1, forwarding=1" in msg
    assert "10.100.163.129 dev cali0123456789a scope link" in msg  # the node's route table


def test_proxy_arp_fails_when_disabled(calico: MiniCalico) -> None:
    sysctl(calico.node, f"net.ipv4.conf.{VETH}.proxy_arp", "0")
    msg = failure(lambda: assert_proxy_arp(calico.node, calico.pod, VETH, timeout=1.5))
    assert f"actual:   proxy_arp=0 on {VETH}" in msg
    assert "seed requirement 1" in msg


def test_proxy_arp_fails_when_gateway_routed_back_out_of_the_veth(calico: MiniCalico) -> None:
    ip(calico.node, "route", "add", "169.254.0.0/16", "dev", VETH)
    msg = failure(lambda: assert_proxy_arp(calico.node, calico.pod, VETH, timeout=1.5))
    assert "seed requirement 3" in msg


def test_proxy_arp_missing_veth(calico: MiniCalico) -> None:
    msg = failure(lambda: assert_proxy_arp(calico.node, calico.pod, "cali00000000000", timeout=0.3))
    assert "could not observe" in msg and "cali00000000000" in msg
