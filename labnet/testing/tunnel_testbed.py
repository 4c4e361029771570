"""A two-node Calico-style testbed for the tunnel tests and bench/tunnel.py.

    pod-a ── cali (node-a) eth0 10.20.30.73 ── router ── 192.168.50.74 eth0 (node-b) cali ── pod-b
    10.100.163.129                        10.20.30.1  192.168.50.1                     10.100.5.193

The addresses and blocks are the seed's ubuntu-3 and ubuntu-4. Pods are wired by hand the way
the CNI plugin does it (veth, ee:ee:ee:ee:ee:ee, proxy-ARP, 169.254.1.1), so these tests
depend on nothing but the tunnel package. Namespaces come from the caller (`make_ns`), which
also owns their removal; nothing here touches the root namespace.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labnet.nsexec import NodeNS, run, spawn
from labnet.wait import poll

UNDERLAY_IF = "eth0"
CALI_MAC = "ee:ee:ee:ee:ee:ee"
PROTO_BIRD = "bird"  # 12


@dataclass
class Node:
    name: str
    ns: NodeNS
    underlay_ip: str
    gateway: str
    block: ipaddress.IPv4Network
    pod: NodeNS
    pod_ip: str
    cali_if: str
    pids: list[int] = field(default_factory=list)

    @property
    def tunnel_ip(self) -> str:
        return str(self.block.network_address)


@dataclass
class Testbed:
    a: Node
    b: Node
    router: NodeNS

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.a, self.b)

    def peer(self, node: Node) -> Node:
        return self.b if node is self.a else self.a


def ip(ns: NodeNS, *args: str) -> str:
    return run(ns, ["ip", *args]).stdout


def sysctl(ns: NodeNS, key: str, value: str) -> None:
    run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def build(make_ns: Callable[[str], NodeNS], *, pod_mtu: int = 1500) -> Testbed:
    """Build the namespaces, underlay and pods (no tunnel yet)."""
    router = make_ns("router")
    sysctl(router, "net.ipv4.ip_forward", "1")
    specs = [
        ("node-a", "10.20.30.73", "10.20.30.1", "10.100.163.128/26", "10.100.163.129", "cali182f84bfeba"),
        ("node-b", "192.168.50.74", "192.168.50.1", "10.100.5.192/26", "10.100.5.193", "cali3a1c5e0b7d2"),
    ]
    nodes: list[Node] = []
    for i, (name, addr, gw, block, pod_ip, cali) in enumerate(specs):
        ns = make_ns(name)
        # underlay: node eth0 <-> router r<i>, created from inside the node namespace
        rif = f"r{i}"
        ip(ns, "link", "add", UNDERLAY_IF, "type", "veth", "peer", "name", rif, "netns", router.netns)
        ip(ns, "addr", "add", f"{addr}/24", "dev", UNDERLAY_IF)
        ip(ns, "link", "set", UNDERLAY_IF, "up")
        ip(router, "addr", "add", f"{gw}/24", "dev", rif)
        ip(router, "link", "set", rif, "up")
        ip(ns, "route", "add", "default", "via", gw, "dev", UNDERLAY_IF, "onlink")
        sysctl(ns, "net.ipv4.ip_forward", "1")
        pod = make_ns(f"pod-{name[-1]}")
        wire_pod(ns, pod, cali, pod_ip, pod_mtu)
        nodes.append(Node(name, ns, addr, gw, ipaddress.IPv4Network(block), pod, pod_ip, cali))
        ip(ns, "route", "add", "blackhole", block, "proto", PROTO_BIRD)
    return Testbed(nodes[0], nodes[1], router)


def wire_pod(node: NodeNS, pod: NodeNS, cali: str, pod_ip: str, mtu: int) -> None:
    """What the CNI plugin does for one pod: cali veth, sysctls, the pod's /32 and routes, the node's route."""
    ip(node, "link", "add", cali, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "mtu", str(mtu),
       "netns", pod.netns)
    ip(node, "link", "set", cali, "address", CALI_MAC, "up")
    for key, value in (("proxy_arp", "1"), ("forwarding", "1"), ("route_localnet", "1")):
        sysctl(node, f"net.ipv4.conf.{cali}.{key}", value)
    sysctl(node, f"net.ipv4.neigh.{cali}.proxy_delay", "0")
    ip(node, "route", "add", pod_ip, "dev", cali, "scope", "link")
    ip(pod, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
    ip(pod, "link", "set", "eth0", "up")
    ip(pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    ip(pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")


def link_json(ns: NodeNS, ifname: str) -> dict[str, Any] | None:
    proc = run(ns, ["ip", "-j", "-d", "addr", "show", "dev", ifname], check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def start_ipip(node: Node, logdir: Path, track_pid: Callable[[int], int], *, mtu: int = 1480) -> int:
    """Start the userspace tunl0 in the node namespace; return its pid once tunl0 is up."""
    status = logdir / f"{node.name}-ipip.json"
    pid = track_pid(spawn(node.ns, [
        sys.executable, "-m", "labnet.agent.tunnel.ipip_user", "--local", node.underlay_ip,
        "--address", node.tunnel_ip, "--mtu", str(mtu), "--status-file", str(status),
    ], log=logdir / f"{node.name}-ipip.log"))
    node.pids.append(pid)

    def ready() -> object:
        link = link_json(node.ns, "tunl0")
        if link is None:
            return "no tunl0"
        addrs = [a.get("local") for a in link.get("addr_info", [])]
        return "UP" in link.get("flags", []) and node.tunnel_ip in addrs and status.exists()

    poll(ready, lambda v: v is True, timeout=15, what=f"{node.name}: tunl0 up with {node.tunnel_ip}/32")
    return pid


def add_tunnel_routes(bed: Testbed, dev: str = "tunl0") -> None:
    """`<peer block> via <peer underlay> dev tunl0 proto bird onlink`, as BIRD installs them."""
    for node in bed.nodes:
        peer = bed.peer(node)
        ip(node.ns, "route", "replace", str(peer.block), "via", peer.underlay_ip, "dev", dev,
           "proto", PROTO_BIRD, "onlink")


def ping(src: NodeNS, dst: str, *extra: str) -> tuple[int, str]:
    proc = run(src, ["ping", "-n", "-c", "1", "-W", "1", *extra, dst], check=False)
    return proc.returncode, proc.stdout + proc.stderr


def wait_ping(src: NodeNS, dst: str, *, timeout: float = 15) -> str:
    """Ping until one answer comes back (the first may be lost while routes settle)."""
    rc_out = poll(lambda: ping(src, dst), lambda r: r[0] == 0, timeout=timeout,
                  what=f"{src.name}: ping {dst} answered")
    return rc_out[1]
