"""datapath.setup() against leftovers of earlier attempts: it creates first and only looks
around on EEXIST, so each kind of leftover must still end in one fresh, complete pair."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from labnet.cni import datapath
from labnet.etcd.netns import call_in_netns

HOST_IF = datapath.host_veth_name("c1", "default", "leftover")
ADDR = "10.65.0.7"


def ip(ns: str, *args: str) -> str:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"`ip -n {ns} {' '.join(args)}`: expected exit 0, got {proc.returncode}: {proc.stderr}"
    return proc.stdout


def pair_ok(node: Any, pod: Any) -> None:
    host = json.loads(ip(node.name, "-j", "link", "show", HOST_IF))[0]
    assert host["address"] == datapath.HOST_MAC, f"node {node.name}: {HOST_IF} MAC {host['address']}"
    assert "UP" in host["flags"], f"node {node.name}: {HOST_IF} expected up, flags {host['flags']}"
    assert host["mtu"] == 1400, f"node {node.name}: {HOST_IF} expected mtu 1400, found {host['mtu']}"
    eth0 = json.loads(ip(pod.name, "-j", "-4", "addr", "show", "eth0"))[0]
    assert [a["local"] for a in eth0["addr_info"]] == [ADDR], f"pod {pod.name} eth0 addresses: {eth0['addr_info']}"
    assert "default via 169.254.1.1 dev eth0" in ip(pod.name, "route"), f"pod {pod.name} routes"
    assert f"{ADDR} dev {HOST_IF} scope link" in ip(node.name, "route"), f"node {node.name} routes"
    problems = call_in_netns(node.netns, datapath.check, HOST_IF, pod.netns, "eth0", ADDR)
    assert problems == [], f"node {node.name}: check() expected no problems, found {problems}"


def setup(node: Any, pod: Any) -> datapath.Endpoint:
    return call_in_netns(node.netns, datapath.setup, HOST_IF, pod.netns, "eth0", ADDR, 1400)


def test_fresh_then_intact_pair_is_kept(netns_factory: Any) -> None:
    node, pod = netns_factory("dpnode"), netns_factory("dppod")
    first = setup(node, pod)
    assert first.created
    pair_ok(node, pod)
    index = json.loads(ip(node.name, "-j", "link", "show", HOST_IF))[0]["ifindex"]
    again = setup(node, pod)
    assert not again.created and again.container_mac == first.container_mac
    assert json.loads(ip(node.name, "-j", "link", "show", HOST_IF))[0]["ifindex"] == index
    pair_ok(node, pod)


def test_leftover_pod_interface_is_replaced(netns_factory: Any) -> None:
    node, pod = netns_factory("dpnode"), netns_factory("dppod")
    ip(pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "junk0")
    setup(node, pod)
    pair_ok(node, pod)
    assert "junk0" not in ip(pod.name, "link", "show"), f"pod {pod.name}: the leftover's peer junk0 should be gone"


def test_leftover_host_veth_without_pod_side_is_rebuilt(netns_factory: Any) -> None:
    node, pod = netns_factory("dpnode"), netns_factory("dppod")
    ip(node.name, "link", "add", HOST_IF, "type", "veth", "peer", "name", "junk1")
    setup(node, pod)
    pair_ok(node, pod)
    assert "junk1" not in ip(node.name, "link", "show"), f"node {node.name}: the leftover's peer junk1 should be gone"
