"""Shared by the agent lab tests: a LAN of net-only "nodes", a real etcd, agents as subprocesses.

    n1 10.20.30.11 ─┐
    n2 10.20.30.12 ─┼─ br0 (inside its own namespace)      etcd (plain http) runs in n1
    n3 10.20.30.13 ─┘

Each node gets a block through labnet.ipam, then runs `labnet-agent run` with its own config
(nodename file and status socket in a tmp dir: there is no private mount namespace here).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from labnet import ipam
from labnet.agent.config import AgentConfig, EtcdSettings
from labnet.agent.status import query_status
from labnet.checks.routes import Route, get_routes
from labnet.etcd import keys
from labnet.etcd.client import EtcdStore
from labnet.etcd.netns import call_in_netns
from labnet.etcd.server import EtcdMember, start_cluster
from labnet.etcd.store import EtcdConfig
from labnet.nsexec import NodeNS, pid_alive, run, spawn

POOL = "10.100.0.0/16"
HOLD = 3


@dataclass
class AgentNode:
    name: str
    ns: NodeNS
    address: str
    block: str
    tunnel_ip: str
    config: Path
    socket: str
    etcd_ns: NodeNS  # where the test reaches etcd from
    etcd_url: str
    pid: int = 0


def ip(ns: NodeNS, *args: str) -> str:
    return run(ns, ["ip", *args]).stdout


def build_lan(netns_factory: Any, n: int, addresses: list[str] | None = None) -> list[tuple[NodeNS, str]]:
    """Nodes on one LAN (10.20.30.11, .12, ...; no default route), or at `addresses`: one bridge
    per /24, the LAN namespace routing between them at <subnet>.1, every node's default route there."""
    lan = netns_factory("lan")
    addrs = addresses or [f"10.20.30.{10 + i}" for i in range(1, n + 1)]
    subnets: dict[ipaddress.IPv4Network, str] = {}
    for a in addrs:
        net = ipaddress.IPv4Network(f"{a}/24", strict=False)
        if net not in subnets:
            br = f"br{len(subnets)}"
            subnets[net] = br
            ip(lan, "link", "add", br, "type", "bridge")
            ip(lan, "link", "set", br, "up")
            if addresses:
                ip(lan, "addr", "add", f"{net.network_address + 1}/24", "dev", br)
    if addresses:
        run(lan, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    out = []
    for i, addr in enumerate(addrs, start=1):
        ns = netns_factory(f"n{i}")
        net = ipaddress.IPv4Network(f"{addr}/24", strict=False)
        ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", lan.netns)
        ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        ip(lan, "link", "set", f"p{i}", "master", subnets[net], "up")
        if addresses:
            ip(ns, "route", "add", "default", "via", str(net.network_address + 1), "dev", "eth0")
        run(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        out.append((ns, addr))
    return out


def start_etcd(netns_factory: Any, ns: NodeNS, addr: str, tmp: Path) -> str:
    """One plain-http etcd member in `ns` through labnet.etcd.server; returns its client URL once healthy."""
    member = EtcdMember("lab", addr)
    pids = start_cluster({"lab": ns}, [member], None, {"lab": tmp / "etcd"}, {"lab": tmp / "etcd.log"})
    netns_factory.track_pid(pids["lab"])
    return member.client_url(tls=False)


def in_ns(ns: NodeNS, fn: Callable[[EtcdStore], Any], url: str) -> Any:
    def go() -> Any:
        with EtcdStore(EtcdConfig((url,), timeout=3)) as store:
            return fn(store)

    return call_in_netns(ns.netns, go)


def cluster_settings(pool: dict[str, Any] | None = None, node_asn: dict[str, int] | None = None,
                     **bgp: Any) -> dict[str, Any]:
    return {"pool": {"cidr": POOL, "block_size": 26, "ipip": "always", "vxlan": "never", "nat_outgoing": True,
                     **(pool or {})},
            "mtu": None,
            "bgp": {"asn": 64512, "mesh": "full", "graceful_restart": False, "hold_time": HOLD, **bgp},
            "node_asn": node_asn or {}}


def agent_argv(node: AgentNode) -> list[str]:
    return [sys.executable, "-m", "labnet.agent.main", "run", "--config", str(node.config)]


def start_agent(netns_factory: Any, node: AgentNode, tmp: Path) -> int:
    pid = spawn(node.ns, agent_argv(node), log=tmp / f"{node.name}.stderr")
    netns_factory.track_pid(pid)
    node.pid = pid
    return pid


def start_supervised(netns_factory: Any, node: AgentNode, tmp: Path) -> int:
    """`labnet-agent supervise -- <run argv>`; returns the supervisor's pid (the agent's comes from status)."""
    pid = spawn(node.ns, [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", str(node.config),
                          "--", *agent_argv(node)], log=tmp / f"{node.name}.stderr")
    netns_factory.track_pid(pid)
    return pid


def setup_cluster(netns_factory: Any, tmp: Path, n: int = 3, *, pool: dict[str, Any] | None = None,
                  node_asn: dict[str, int] | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                  addresses: list[str] | None = None, **bgp: Any) -> tuple[list[AgentNode], str]:
    """The LAN, etcd, cluster settings, one block per node claimed through labnet.ipam, config files.

    overrides: extra AgentConfig fields per node name (e.g. {"node-2": {"nodename": "x"}}).
    """
    lan = build_lan(netns_factory, n, addresses)
    url = start_etcd(netns_factory, lan[0][0], lan[0][1], tmp)
    ns0 = lan[0][0]
    settings = cluster_settings(pool, node_asn, **bgp)
    in_ns(ns0, lambda s: s.put(keys.config("cluster"), json.dumps(settings)), url)
    nodes = []
    for i, (ns, addr) in enumerate(lan, start=1):
        name = f"node-{i}"
        tunnel_ip = in_ns(ns0, partial(ipam.tunnel_address, node=name), url)
        blocks = in_ns(ns0, partial(ipam.blocks_of, node=name), url)
        assert len(blocks) == 1, f"{name}: expected one block after claiming, got {blocks}"
        d = tmp / name
        d.mkdir()
        (d / "nodename").write_text(name + "\n")
        cfg = AgentConfig(etcd=EtcdSettings([url]), nodename_file=str(d / "nodename"), bgp_address="first-found",
                          status_socket=str(d / "agent.sock"), log_file=str(d / "agent.log"), resync_interval=2,
                          **(overrides or {}).get(name, {}))
        cfg.save(d / "agent.json")
        nodes.append(AgentNode(name, ns, addr, blocks[0], tunnel_ip, d / "agent.json", str(d / "agent.sock"), ns0, url))
    return nodes, url


def borrow(owner: AgentNode, user: AgentNode, ordinal: int) -> str:
    """Hand address `ordinal` of `owner`'s block to a pod of `user` (what IPAM does when the pool is full)."""

    def go(store: EtcdStore) -> str:
        kv = store.get(keys.block(owner.block))
        assert kv is not None, f"block {owner.block} of {owner.name} missing"
        block = ipam.Block.decode(kv.value)
        handle = f"labnet.borrowed-{user.name}"
        block.unallocated.remove(ordinal)
        block.allocations[ordinal] = handle
        block.attributes[handle] = {"node": user.name, "pod": "borrower"}
        assert store.cas(kv.key, block.encode(), kv.mod_revision), f"block {owner.block} changed under us"
        return block.address(ordinal)

    return str(in_ns(owner.etcd_ns, go, owner.etcd_url))


def exited(pid: int) -> bool:
    return not pid_alive(pid)


def agent_logs(nodes: list[AgentNode]) -> str:
    out = []
    for n in nodes:
        p = n.config.parent / "agent.log"
        if p.exists():
            out.append(f"--- {n.name} agent.log (tail)\n" + "\n".join(p.read_text().splitlines()[-30:]))
    return "\n".join(out)


@contextmanager
def agents_running(nodes: list[AgentNode], *extra_logs: Path, stop: bool = True) -> Iterator[None]:
    """Around a test body: on failure print the agents' log tails (and `extra_logs`); at the end
    SIGTERM every agent still alive by its recorded pid (stop=False: a fixture does that)."""
    try:
        yield
    except BaseException:
        print(agent_logs(nodes))
        for log in extra_logs:
            print(log.read_text()[-3000:] if log.exists() else f"({log} missing)")
        raise
    finally:
        if stop:
            for node in nodes:
                if node.pid and pid_alive(node.pid):
                    os.kill(node.pid, signal.SIGTERM)


def status(node: AgentNode) -> dict[str, Any]:
    return query_status(node.ns, node.socket)


def established(node: AgentNode, expect: int) -> Any:
    st = status(node)
    up = [p for p in st["peers"] if p["state"] == "up" and p["info"] == "Established"]
    return st if len(up) == expect else [(p["peer_address"], p["bgp_state"], p["info"]) for p in st["peers"]]


def bird_routes(ns: NodeNS) -> list[Route]:
    return [r for r in get_routes(ns) if r.protocol == "bird"]


def route_to(node: AgentNode, dst: str) -> Route | None:
    want = ipaddress.IPv4Network(dst)
    return next((r for r in bird_routes(node.ns) if r.dst == want), None)


