"""Semantic checks of a topology: everything pydantic's per-field validation cannot see.

`check()` returns every problem at once as `Issue`s (a path into the YAML document, a message,
an optional hint). The loader turns paths into FILE:LINE:COL. Names are judged against the
names *written* in the file (`Known`), so an entity that failed type validation (and was left
out of the model) does not cause a second, misleading "unknown name" error.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Any

from pydantic import ValidationError

from labnet.paths import MACHINE_NAME_MAX, NETWORK_NAME_MAX, name_error
from labnet.runtime.base import NODE_DIRS
from labnet.settings import BLOCK_RANGE, DEFAULT_BLOCK
from labnet.topology.issues import Issue, PathT, did_you_mean, path_str, pydantic_issues
from labnet.topology.model import (
    ClusterNode,
    DaemonFile,
    Interface,
    Machine,
    MachineKind,
    PoolSpec,
    Topology,
    is_valid_address,
    is_valid_cidr,
)
from labnet.topology.steps import STEP_KINDS, Category, Ref

# what labnet's own processes are called in the journal and in status
RESERVED_DAEMONS = frozenset({"agent", "etcd", "bird", "node-process", "agent-supervisor"})
SCENARIO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IFNAMSIZ = 15
LINK_LOCAL = IPv4Network("169.254.0.0/16")
LINK_LOCAL6 = IPv6Network("fe80::/10")
IPV6_MIN_MTU = 1280  # RFC 8200: below it the kernel takes IPv6 off an interface
RESERVED_NODE_IFACES = ("lo", "tunl0", "vxlan.calico")


@dataclass
class Known:
    """Names written in the file per category; None when that section was unreadable."""

    network: list[str] | None = field(default_factory=list)
    router: list[str] | None = field(default_factory=list)
    host: list[str] | None = field(default_factory=list)
    node: list[str] | None = field(default_factory=list)
    pod: list[str] | None = field(default_factory=list)
    scenario: list[str] | None = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Known:
        def names(section: Any) -> list[str] | None:
            if section is None:
                return []
            return [str(k) for k in section] if isinstance(section, dict) else None

        cluster = raw.get("cluster")
        if cluster is None:
            node: list[str] | None = []
            pod: list[str] | None = []
        elif isinstance(cluster, dict):
            node, pod = names(cluster.get("nodes")), names(cluster.get("pods"))
        else:
            node = pod = None
        return cls(
            network=names(raw.get("networks")),
            router=names(raw.get("routers")),
            host=names(raw.get("hosts")),
            node=node,
            pod=pod,
            scenario=names(raw.get("scenarios")),
        )


# -- semantic checks ---------------------------------------------------------------------------

class _Checker:
    def __init__(self, topo: Topology, raw: dict[str, Any], known: Known, skip: set[str]) -> None:
        self.topo, self.raw, self.known, self.skip = topo, raw, known, skip
        self.issues: list[Issue] = []

    def add(self, path: PathT, message: str, hint: str | None = None, at_key: bool = False,
            warning: bool = False) -> None:
        self.issues.append(Issue(path, message, hint, at_key, warning))

    # references -------------------------------------------------------------------------

    def names(self, cats: Sequence[Category]) -> list[str] | None:
        out: list[str] = []
        for cat in cats:
            got = getattr(self.known, cat)
            if got is None:
                return None  # that section is unreadable: no reference can be judged
            out += got
        return out

    def ref(self, path: PathT, value: str, cats: Sequence[Category], context: str = "") -> bool:
        """Report `value` unless it names an object of one of `cats`. True when it resolved."""
        names = self.names(cats)
        if names is None or value in names:
            return True
        what = " or ".join(c for c in cats)
        plural = "names" if len(cats) > 1 else f"{cats[0]}s"
        self.add(path, f"{context}unknown {what} {value!r}", did_you_mean(value, names, plural))
        return False

    # machines ---------------------------------------------------------------------------

    def machine_path(self, kind: MachineKind, name: str) -> PathT:
        return {"router": ("routers", name), "host": ("hosts", name), "node": ("cluster", "nodes", name)}[kind]

    def check_names(self) -> None:
        k = self.known
        sections: list[tuple[list[str] | None, PathT, str, int]] = [
            (k.network, ("networks",), "network", NETWORK_NAME_MAX),
            (k.router, ("routers",), "router", MACHINE_NAME_MAX),
            (k.host, ("hosts",), "host", MACHINE_NAME_MAX),
            (k.node, ("cluster", "nodes"), "node", MACHINE_NAME_MAX),
            (k.pod, ("cluster", "pods"), "pod", MACHINE_NAME_MAX),
        ]
        for names, base, what, limit in sections:
            for name in names or []:
                if name_error(what, name, limit):
                    self.add(
                        base + (name,),
                        f"{what} name {name!r} is not usable in namespace and interface names",
                        f"use lowercase letters, digits and '-' (not at either end), at most {limit} characters",
                        at_key=True,
                    )
        for name in k.scenario or []:
            if not SCENARIO_NAME_RE.match(name):
                self.add(("scenarios", name), f"scenario name {name!r} has characters unusable in test ids",
                         "use letters, digits, '-', '_' and '.'", at_key=True)
        seen: dict[str, str] = {}
        for names, base, what, _limit in sections[1:4]:
            for name in names or []:
                if name in seen:
                    self.add(base + (name,), f"name {name!r} is already used by {seen[name]} {name}",
                             "routers, hosts and nodes share one namespace of names", at_key=True)
                else:
                    seen[name] = what
        for name in k.pod or []:
            if name in seen:
                self.add(("cluster", "pods", name), f"pod name {name!r} is also the name of {seen[name]} {name}",
                         "steps refer to pods and machines by name, so they must differ", at_key=True)

    def check_networks(self) -> None:
        nets = list(self.topo.networks.items()) if "networks" not in self.skip else []
        for i, (name, net) in enumerate(nets):
            for other, onet in nets[:i]:
                if net.cidr is not None and onet.cidr is not None and net.cidr.overlaps(onet.cidr):
                    self.add(("networks", name, "cidr"), f"network {name} ({net.cidr}) overlaps {other} ({onet.cidr})")
                if net.cidr6 is not None and onet.cidr6 is not None and net.cidr6.overlaps(onet.cidr6):
                    self.add(("networks", name, "cidr6"),
                             f"network {name} ({net.cidr6}) overlaps {other} ({onet.cidr6})")
            if net.cidr6 is not None and net.mtu < IPV6_MIN_MTU:
                self.add(("networks", name, "mtu"), f"network {name} carries IPv6 (cidr6 {net.cidr6}) but its mtu "
                         f"{net.mtu} is below IPv6's minimum of {IPV6_MIN_MTU}", f"use mtu {IPV6_MIN_MTU} or more")
            if net.cidr6 is not None and net.cidr6.overlaps(LINK_LOCAL6):
                self.add(("networks", name, "cidr6"), f"network {name} ({net.cidr6}) overlaps link-local {LINK_LOCAL6}",
                         "use a global or unique-local prefix such as fd00:20::/64")

    def check_interfaces(self) -> None:
        owners: dict[object, tuple[str, PathT]] = {}
        for name, kind, spec in self.topo.machines():
            base = self.machine_path(kind, name) + ("interfaces",)
            names: dict[str, int] = {}
            on_net: dict[str, int] = {}
            for i, iface in enumerate(spec.interfaces):
                ipath = base + (i,)
                self.check_iface_name(name, kind, iface, ipath, names, i)
                if iface.network in on_net:
                    self.add(ipath + ("network",),
                             f"{name} has two interfaces on network {iface.network} "
                             f"(interfaces[{on_net[iface.network]}] and interfaces[{i}])")
                on_net.setdefault(iface.network, i)
                if iface.address is not None and iface.address in owners:
                    other, opath = owners[iface.address]
                    self.add(ipath + ("address",), f"address {iface.address} is already used by {other} "
                             f"({path_str(opath)})")
                else:
                    owners[iface.address] = (name, ipath)
                if iface.address6 is not None:
                    if iface.address6 in owners:
                        other, opath = owners[iface.address6]
                        self.add(ipath + ("address6",), f"address {iface.address6} is already used by {other} "
                                 f"({path_str(opath)})")
                    owners.setdefault(iface.address6, (name, ipath))
                net = self.topo.networks.get(iface.network)
                if net is None:
                    if "networks" not in self.skip:
                        self.ref_network(ipath + ("network",), iface.network)
                    continue
                self.check_address6(iface, ipath, net.cidr6)
                cidr, addr = net.cidr, iface.address
                if cidr is None or addr is None:
                    self.check_family_only(iface, ipath, cidr is None)
                elif addr not in cidr:
                    self.add(ipath + ("address",),
                             f"address {addr} is not in network {iface.network} ({cidr})")
                elif cidr.prefixlen <= 30 and addr == cidr.network_address:
                    self.add(ipath + ("address",),
                             f"address {addr} is the network address of {iface.network} ({cidr})")
                elif cidr.prefixlen <= 30 and addr == cidr.broadcast_address:
                    self.add(ipath + ("address",),
                             f"address {addr} is the broadcast address of {iface.network} ({cidr})")
            self.check_gateway(name, kind, spec)

    def check_family_only(self, iface: Interface, ipath: PathT, ipv6_only_lan: bool) -> None:
        """An interface on an IPv6-only LAN has no IPv4 address; one on a LAN with IPv4 has an
        address of some family."""
        if ipv6_only_lan and iface.address is not None:
            self.add(ipath + ("address",), f"address {iface.address}: network {iface.network} is IPv6-only (it has "
                     "no cidr)", "use address6, or give the network a cidr")
        elif ipv6_only_lan and iface.address6 is None:
            self.add(ipath, f"interface on {iface.network} has no address6 (the network is IPv6-only)",
                     "add address6", at_key=True)
        elif not ipv6_only_lan and iface.address6 is None:
            self.add(ipath, f"interface on {iface.network} has no address", "add address (and address6 on a "
                     "network with a cidr6)", at_key=True)

    def check_address6(self, iface: Interface, ipath: PathT, cidr6: IPv6Network | None) -> None:
        addr = iface.address6
        if addr is None:
            return
        if cidr6 is None:
            self.add(ipath + ("address6",), f"address6 {addr}: network {iface.network} has no cidr6",
                     f"give {iface.network} a cidr6, such as fd00:20::/64")
        elif addr not in cidr6:
            self.add(ipath + ("address6",), f"address {addr} is not in network {iface.network} ({cidr6})")
        elif cidr6.prefixlen < 127 and addr == cidr6.network_address:
            self.add(ipath + ("address6",), f"address {addr} is the subnet-router anycast address of "
                     f"{iface.network} ({cidr6})", "start at ::1")

    def ref_network(self, path: PathT, net: str) -> None:
        known = self.known.network
        if known is None or net in known:
            return
        self.add(path, f"unknown network {net!r}", did_you_mean(net, known, "networks"))

    def check_iface_name(
        self, machine: str, kind: MachineKind, iface: Interface, ipath: PathT, names: dict[str, int], i: int
    ) -> None:
        ifname = iface.name or ""
        path = ipath + ("name",)
        if not ifname or len(ifname) > IFNAMSIZ or ifname in (".", "..") or re.search(r"[/:\s]", ifname):
            self.add(path, f"interface name {ifname!r} is not a valid Linux interface name",
                     f"at most {IFNAMSIZ} characters, no '/', ':' or whitespace")
        elif ifname == "lo" or (kind == "node" and (ifname in RESERVED_NODE_IFACES or ifname.startswith("cali"))):
            self.add(path, f"interface name {ifname!r} is reserved on {machine}",
                     "lo, tunl0, vxlan.calico and cali* belong to the loopback, tunnels and pod veths")
        if ifname in names:
            self.add(path, f"interface name {ifname!r} is used twice on {machine} "
                     f"(interfaces[{names[ifname]}] and interfaces[{i}]; unnamed interfaces are eth<position>)")
        names.setdefault(ifname, i)

    def check_gateway6(self, name: str, kind: MachineKind, spec: Machine) -> None:
        gw = spec.gateway6
        if gw is None or "networks" in self.skip:
            return
        path = self.machine_path(kind, name) + ("gateway6",)
        mine = [(i, self.topo.networks[i.network].cidr6) for i in spec.interfaces if i.network in self.topo.networks]
        if any(gw == i.address6 for i, _c in mine):
            self.add(path, f"gateway6 {gw} is {name}'s own address")
        elif not any(c is not None and i.address6 is not None and gw in c for i, c in mine):
            nets = ", ".join(f"{i.network} {c}" for i, c in mine if c is not None and i.address6 is not None)
            self.add(path, f"gateway6 {gw} is not on any IPv6 network of {name}",
                     f"{name} is on {nets}" if nets else f"give {name} an address6 on a network with a cidr6")
        elif (owner := self.topo.owner_of(gw)) is None or owner[0] not in self.topo.routers:
            routers = [f"router {r} has {i.address6}" for r, router in self.topo.routers.items()
                       for i in router.interfaces if i.address6 is not None and any(i.address6 in c for _x, c in mine
                                                                                    if c is not None)]
            what = "any router" if owner is None else f"{owner[0]}, which is not a router"
            self.add(path, f"gateway6 {gw} is not the address of {what}", "; ".join(routers) or None)

    def check_gateway(self, name: str, kind: MachineKind, spec: Machine) -> None:
        self.check_gateway6(name, kind, spec)
        gw = self.topo.gateway_of(spec)
        if gw is None or "networks" in self.skip:
            return
        path = self.machine_path(kind, name) + ("gateway",)
        mine = [(i, self.topo.networks[i.network].cidr) for i in spec.interfaces if i.network in self.topo.networks]
        if len(mine) != len(spec.interfaces):
            return  # an interface names an unknown network: already reported
        if gw in {i.address for i, _c in mine}:
            self.add(path, f"gateway {gw} is {name}'s own address")
            return
        if not any(c is not None and gw in c for _i, c in mine):
            nets = ", ".join(f"{i.network} {c}" for i, c in mine)
            self.add(path, f"gateway {gw} is not on any network of {name}", f"{name} is on {nets}")
            return
        owner = self.topo.owner_of(gw)
        routers = [
            f"router {r} has {i.address}" for r, router in self.topo.routers.items() for i in router.interfaces
            if i.address is not None and any(c is not None and i.address in c for _x, c in mine)
        ]
        if owner is None:
            self.add(path, f"gateway {gw} is not the address of any router",
                     "; ".join(routers) if routers else "add a router on that network")
        elif owner[0] not in self.topo.routers:
            self.add(path, f"gateway {gw} belongs to {owner[0]}, which is not a router and does not forward",
                     "; ".join(routers) if routers else None)

    # cluster ----------------------------------------------------------------------------

    def check_cluster(self) -> None:
        cl = self.topo.cluster
        if cl is None or "cluster" in self.skip:
            return
        hosting = {pod.node for pod in cl.pods.values()}
        for name, spec in cl.nodes.items():
            if spec.interfaces[0].address is None and "networks" not in self.skip:
                self.add(("cluster", "nodes", name, "interfaces", 0), f"node {name} has no IPv4 address on its "
                         "first interface: a node's BGP identity, its IPIP and its IPv4 pool need one",
                         "put the node on a LAN with a cidr, and give it an address", at_key=True)
            if spec.gateway is None and name in hosting:
                self.add(("cluster", "nodes", name), f"node {name} has no gateway: its pods' traffic would be lost, "
                         "since proxy-ARP answers for 169.254.1.1 only on a node with a route there",
                         "add gateway: <a router's address on its network>, or gateway: none to reproduce that",
                         at_key=True)
        if not self.skip & {"pool", "pools"} and "pools" not in self.skip:
            self.check_pools()
        if "etcd" not in self.skip:
            etcd_raw = (self.raw.get("cluster") or {}).get("etcd") or {}
            seen: set[str] = set()
            for i, enode in enumerate(cl.etcd.nodes):
                path: PathT = ("cluster", "etcd", "node") if "node" in etcd_raw else ("cluster", "etcd", "nodes", i)
                if enode in seen:
                    self.add(path, f"etcd node {enode!r} is listed twice")
                seen.add(enode)
                self.ref(path, enode, ("node",), "etcd runs on an ")
        if "bgp" not in self.skip:
            self.check_bgp()
        for name, node in cl.nodes.items():
            self.check_bgp_address(name, node)
        asked: dict[object, str] = {}
        for name, pod in cl.pods.items():
            self.ref(("cluster", "pods", name, "node"), pod.node, ("node",), f"pod {name} is on an ")
            for key, ip in (("ip", pod.ip), ("ip6", pod.ip6)):
                if ip is None or self.skip & {"pool", "pools"}:
                    continue
                pool, path = cl.pool_of(ip.version), ("cluster", "pods", name, key)
                if pool is None:
                    self.add(path, f"pod {name}'s {key} {ip}: the cluster has no IPv{ip.version} pool",
                             "add one to cluster.pools")
                elif ip not in pool.cidr:
                    self.add(path, f"pod {name}'s {key} {ip} is outside pool {pool.cidr}",
                             "a pod's address comes from the pool")
                elif ip in asked:
                    self.add(path, f"pod {name}'s {key} {ip} is also pod {asked[ip]}'s")
                elif pool.block <= pool.cidr.max_prefixlen and \
                        (int(ip) - int(pool.cidr.network_address)) % (1 << (pool.cidr.max_prefixlen - pool.block)) == 0:
                    block = ip_network(f"{ip}/{pool.block}", strict=False)
                    self.add(path, f"pod {name}'s {key} {ip} is the first address of block "
                             f"{block}: a node that claims that block takes it for its tunnel",
                             "ask for another address", warning=True)
                asked.setdefault(ip, name)

    def check_pools(self) -> None:
        cl = self.topo.cluster
        assert cl is not None
        listed: list[tuple[PathT, PoolSpec]] = [(("cluster", "pool"), cl.pool)] if cl.pool is not None else []
        listed += [(("cluster", "pools", i), p) for i, p in enumerate(cl.pools)]
        if cl.pool is not None and cl.pools:
            self.add(("cluster", "pools"), "both pool and pools are given", "list every pool under pools", at_key=True)
        if not listed:
            self.add(("cluster",), "the cluster has no pool", "add pools: [{cidr: 10.100.0.0/16}]", at_key=True)
        seen: dict[int, str] = {}
        for p, pool in listed:
            if pool.version in seen:
                self.add(p + ("cidr",), f"a second IPv{pool.version} pool {pool.cidr}; {seen[pool.version]} is one",
                         "labnet runs one pool per family")
                continue
            seen[pool.version] = str(pool.cidr)
            self.check_pool(p, pool)
        pool6 = cl.pool6
        if pool6 is not None and "networks" not in self.skip:
            mtu = cl.mtu or min((self.topo.networks[i.network].mtu for spec in cl.nodes.values()
                                 for i in spec.interfaces[:1] if i.network in self.topo.networks), default=1500)
            pod = mtu if cl.mtu else mtu - pool6.settings().overhead_over(6)
            if pod < IPV6_MIN_MTU:
                self.add(("cluster", "mtu") if cl.mtu else ("cluster", "pools"), f"the pods' MTU would be {pod} "
                         f"(IPv6 needs {IPV6_MIN_MTU}){'' if cl.mtu else f': the underlay mtu {mtu} less the IPv6 pool' + chr(39) + 's encapsulation'}",
                         "raise the LANs' mtu (or cluster.mtu)", at_key=not cl.mtu)
        if listed and 4 not in seen:
            self.add(listed[0][0] + ("cidr",), "the cluster has no IPv4 pool",
                     "nodes and their BGP sessions need one; add an IPv4 pool beside the IPv6 one")
        if 6 in seen:
            # the agent takes its IPv6 next hop from the interface its IPv4 address is on: with
            # first-found (the default) the first one
            lacking = [n for n, spec in cl.nodes.items()
                       if (spec.interfaces[0].address6 is None if spec.bgp_address == "first-found"
                           else all(i.address6 is None for i in spec.interfaces))]
            if lacking:
                self.add(("cluster", "nodes", lacking[0]), f"{len(lacking)} node(s) have no IPv6 address on their "
                         f"BGP interface while the cluster has an IPv6 pool ({', '.join(lacking[:3])})",
                         "give that interface (the first, with bgp_address first-found) an address6: the node's "
                         "IPv6 blocks are routed via it", at_key=True)

    def check_pool(self, p: PathT, pool: PoolSpec) -> None:
        what = "networks" not in self.skip
        for name, net in self.topo.networks.items():
            lan = net.cidr if pool.version == 4 else net.cidr6
            if what and lan is not None and pool.cidr.overlaps(lan):
                self.add(p + ("cidr",), f"pool {pool.cidr} overlaps network {name} ({lan})",
                         "pod addresses must not collide with the LANs")
        local = LINK_LOCAL if pool.version == 4 else LINK_LOCAL6
        if pool.cidr.overlaps(local):
            gw = "169.254.1.1" if pool.version == 4 else "fe80::ecee:eeff:feee:eeee"
            self.add(p + ("cidr",), f"pool {pool.cidr} overlaps link-local {local}", f"pods use {gw} as their gateway")
        top = pool.cidr.max_prefixlen
        low = BLOCK_RANGE[pool.version][0]
        if pool.block > top:
            self.add(p + ("block_size",), f"block size /{pool.block} must be less than or equal to {top} "
                     f"for an IPv{pool.version} pool")
        elif pool.block < low:
            self.add(p + ("block_size",), f"block size /{pool.block} is larger than /{low}, the largest block "
                     f"an IPv{pool.version} pool may have (Calico's limit)",
                     f"use block_size {DEFAULT_BLOCK[pool.version]}")
        elif pool.block < pool.cidr.prefixlen:
            self.add(p + ("block_size",), f"block size /{pool.block} does not fit in pool {pool.cidr}",
                     f"use block_size {pool.cidr.prefixlen} or more (up to {top})")
        ipip = pool.ipip_mode
        if pool.version == 6 and ipip != "never":
            self.add(p + ("ipip",), f"ipip {ipip} on IPv6 pool {pool.cidr}: Calico has no IPIP for IPv6",
                     "use vxlan: always (or cross-subnet), or no encapsulation")
        elif ipip != "never" and pool.vxlan != "never":
            self.add(p + ("vxlan",), f"ipip ({ipip}) and vxlan ({pool.vxlan}) are both enabled",
                     "set one of them to never")

    def check_bgp(self) -> None:
        cl = self.topo.cluster
        assert cl is not None
        bgp, base = cl.bgp, ("cluster", "bgp")
        seen: set[str] = set()
        for i, rr in enumerate(bgp.route_reflectors):
            if rr in seen:
                self.add(base + ("route_reflectors", i), f"route reflector {rr!r} is listed twice")
            seen.add(rr)
            self.ref(base + ("route_reflectors", i), rr, ("node",), "route reflector: ")
        if bgp.route_reflectors and bgp.mesh == "full":
            self.add(base + ("mesh",), "mesh: full together with route reflectors",
                     "set mesh: none; with route reflectors Calico turns the node-to-node mesh off")
        pool4 = cl.pool_of(4)
        if (bgp.mesh == "none" and not bgp.route_reflectors and not bgp.peers and pool4 is not None
                and pool4.vxlan == "never" and len(cl.nodes) > 1 and not self.skip & {"pool", "pools"}):
            self.add(base + ("mesh",), "mesh: none without route reflectors or peers: no node learns another's routes",
                     "keep mesh: full, or name route_reflectors, or add peers")
        if bgp.hold_time and bgp.hold_time < 3:
            self.add(base + ("hold_time",), f"hold_time {bgp.hold_time} must be 0 or at least 3 seconds (RFC 4271)")
        elif bgp.hold_time and bgp.keepalive is not None and bgp.keepalive >= bgp.hold_time:
            self.add(base + ("keepalive",), f"keepalive {bgp.keepalive} must be below hold_time {bgp.hold_time}",
                     f"the usual ratio is a third: keepalive {bgp.hold_time // 3}")
        for i, peer in enumerate(bgp.peers):
            path = base + ("peers", i)
            if peer.address.version == 6 and cl.pool6 is None and not self.skip & {"pool", "pools"}:
                self.add(path + ("address",), f"BGP peer {peer.address} is reached over IPv6, but the cluster has "
                         "no IPv6 pool: its nodes have no IPv6 next hop to give it", "add an IPv6 pool to cluster.pools")
            if peer.node is not None:
                self.ref(path + ("node",), peer.node, ("node",), "BGP peer of an ")
            owner = self.topo.owner_of(peer.address)
            if owner is None:
                lans = [net.cidr if peer.address.version == 4 else net.cidr6 for net in self.topo.networks.values()]
                if not any(lan is not None and peer.address in lan for lan in lans):
                    self.add(path + ("address",), f"BGP peer {peer.address} is outside every network of the lab: "
                             "nodes reach it through their gateway, and only a speaker you bring there answers",
                             "up does not wait for this session unless it says wait: true", warning=True)
                else:
                    self.add(path + ("address",), f"nothing in the lab answers at BGP peer {peer.address} unless you "
                             "bring a speaker there", "up does not wait for this session unless it says wait: true",
                             warning=True)
                continue
            name = owner[0]
            router = self.topo.routers.get(name)
            machine = self.topo.hosts.get(name) or router
            if machine is not None and machine.daemons and (router is None or router.bgp is None):
                continue  # the user's own daemons run there (FRR, GoBGP...): theirs to answer
            if name in self.topo.hosts or (router is not None and router.bgp is None):
                what = "host" if name in self.topo.hosts else "router"
                self.add(path + ("address",), f"BGP peer {peer.address} is {what} {name}, where labnet starts no BGP "
                         "speaker: bring your own there", "up does not wait for this session unless it says wait: true",
                         warning=True)
            elif router is not None and router.bgp is not None and router.bgp.asn != peer.asn:
                self.add(path + ("asn",), f"BGP peer {peer.address} is router {name} in AS {router.bgp.asn}, "
                         f"not AS {peer.asn}")
            elif name in self.topo.nodes and self.topo.node_asn(name) != peer.asn:
                self.add(path + ("asn",), f"BGP peer {peer.address} is node {name} in AS "
                         f"{self.topo.node_asn(name)}, not AS {peer.asn}")

    def check_bgp_address(self, name: str, node: ClusterNode) -> None:
        """Calico's IP autodetection methods; judged here so a typo fails before the lab is built."""
        spec, path = node.bgp_address, ("cluster", "nodes", name, "bgp_address")
        method, _, arg = spec.partition("=")
        if spec == "first-found":
            return
        if method == "interface" and arg:
            try:
                re.compile(arg)
            except re.error as exc:
                self.add(path, f"bgp_address {spec!r}: bad regular expression: {exc}")
        elif method == "can-reach" and is_valid_address(arg):
            return
        elif method == "cidr" and _loose_cidr(arg) and ip_network(arg, strict=False).version == 4:
            if not any(i.address in IPv4Network(arg, strict=False) for i in node.interfaces):
                self.add(path, f"bgp_address {spec!r}: none of {name}'s addresses is in {arg}")
        elif is_valid_address(spec):  # IPv4 only: the node's BGP identity is IPv4 (its IPv6 comes with it)
            if IPv4Address(spec) not in [i.address for i in node.interfaces]:
                self.add(path, f"bgp_address {spec} is not an address of {name}",
                         f"{name} has {', '.join(str(i.address) for i in node.interfaces)}")
        else:
            self.add(path, f"bgp_address {spec!r} is not understood",
                     "use first-found, interface=REGEX, can-reach=IP, cidr=CIDR or an IPv4 address")

    def check_routers(self) -> None:
        for name, router in self.topo.routers.items():
            if router.bgp is None:
                continue
            if all(i.address is None for i in router.interfaces):
                self.add(("routers", name, "bgp"), f"router {name} runs BGP but has no IPv4 address for its "
                         "router id", "give one of its interfaces an address on a LAN with a cidr")
            path = ("routers", name, "bgp", "peers")
            if router.bgp.peers == "cluster":
                if self.topo.cluster is None and "cluster" not in self.skip and self.known.node == []:
                    self.add(path, f"router {name} peers with the cluster, but the lab has no cluster")
                    continue
            else:
                for i, node in enumerate(router.bgp.peers):
                    self.ref(path + (i,), node, ("node",), f"router {name} peers with an ")
            cl = self.topo.cluster
            if cl is None or "bgp" in self.skip or "cluster" in self.skip:
                continue
            mine = {i.address for i in router.interfaces}
            if not any(p.address in mine for p in cl.bgp.peers):
                addr = self._facing_address(name)
                self.add(("routers", name, "bgp"),
                         f"router {name} peers with the cluster, but cluster.bgp.peers has no entry for it",
                         f"add {{address: {addr}, asn: {router.bgp.asn}}} to cluster.bgp.peers")
            mine6 = {i.address6 for i in router.interfaces if i.address6 is not None}
            if cl.pool6 is not None and mine6 and not any(p.address in mine6 for p in cl.bgp.peers):
                # its BIRD opens an IPv6 session per node; the nodes must open theirs
                self.add(("routers", name, "bgp"), f"router {name} has IPv6 and the cluster an IPv6 pool, but "
                         "cluster.bgp.peers has no IPv6 entry for it: no IPv6 block would cross it",
                         f"add {{address: {sorted(mine6)[0]}, asn: {router.bgp.asn}}} to cluster.bgp.peers "
                         "(with node: for each node of that LAN)")

    def check_daemons(self) -> None:
        """A daemon's name is a name (it names its log and its journal record), its command has a
        program, and its files go into the machine's own directories, nowhere else."""
        for kind, machines in (("routers", self.topo.routers), ("hosts", self.topo.hosts)):
            for mname, spec in machines.items():
                for dname, d in spec.daemons.items():
                    base = (kind, mname, "daemons", dname)
                    err = name_error("daemon", dname)
                    if err or dname in RESERVED_DAEMONS:
                        self.add(base, err or f"daemon name {dname!r} is one of labnet's own: "
                                 f"{', '.join(sorted(RESERVED_DAEMONS))}", at_key=True)
                    try:
                        argv = d.argv()
                    except ValueError as exc:
                        argv = [""]
                        self.add(base + ("command",), f"command of daemon {dname}: {exc}")
                    if not argv or not argv[0]:
                        self.add(base + ("command",), f"daemon {dname} has an empty command")
                    for path, f in d.files.items():
                        self.check_daemon_file(base + ("files", path), path, f)

    def check_daemon_file(self, at: PathT, path: str, f: DaemonFile) -> None:
        inside = sorted(NODE_DIRS.values())
        normal = posixpath.normpath(path) == path and ".." not in path.split("/")
        if not (path.startswith("/") and normal and any(path.startswith(d + "/") for d in inside)):
            self.add(at, f"file {path!r} is not in the machine's own directories",
                     f"use a path under {', '.join(inside)}", at_key=True)
        if (f.text is None) == (f.from_ is None):
            self.add(at, f"file {path!r} needs exactly one of text: or from:")

    def _facing_address(self, router: str) -> IPv4Address | None:
        """The router's IPv4 address on a network that has cluster nodes (for hints)."""
        spec = self.topo.routers[router]
        node_nets = {i.network for n in self.topo.nodes.values() for i in n.interfaces}
        for iface in spec.interfaces:
            if iface.network in node_nets and iface.address is not None:
                return iface.address
        return next((i.address for i in spec.interfaces if i.address is not None), None)

    # scenarios --------------------------------------------------------------------------

    def check_scenarios(self) -> None:
        raw_scen = self.raw.get("scenarios") or {}
        for name, steps in self.topo.scenarios.items():
            if not steps:
                self.add(("scenarios", name), f"scenario {name} has no steps")
            raw_steps = raw_scen.get(name) if isinstance(raw_scen, dict) else None
            for i, step in enumerate(steps):
                spath: PathT = ("scenarios", name, i)
                kind = STEP_KINDS.get(step.kind)
                if kind is None:
                    self.add(spath + (step.kind,), f"unknown step kind {step.kind!r}",
                             did_you_mean(step.kind, STEP_KINDS, "step kinds"), at_key=True)
                    continue
                raw_args: Any = step.args
                if isinstance(raw_steps, list) and i < len(raw_steps) and isinstance(raw_steps[i], dict):
                    raw_args = raw_steps[i].get(step.kind)
                try:
                    kind.args.model_validate(step.args)
                except ValidationError as exc:
                    self.issues += pydantic_issues(exc, kind.args, raw_args, spath + (step.kind,))
                    valid = False
                else:
                    valid = True
                before = len(self.issues)
                for arg, ref in kind.refs.items():
                    self.check_step_ref(spath + (step.kind, arg), step.args.get(arg), ref)
                if valid and kind.check is not None and len(self.issues) == before and not self.skip & {"pool", "pools"}:
                    for arg, message in kind.check(self.topo, step.args):
                        self.add(spath + (step.kind, arg), message)
                if valid and step.args.get("family") == 6 and not self.topo.dual_stack:
                    self.add(spath + (step.kind, "family"), "family 6 in a lab without IPv6",
                             "give the LANs a cidr6 and the machines an address6 (and the cluster an IPv6 pool "
                             "for pods)")

    def check_step_ref(self, path: PathT, value: Any, ref: Ref, at_key: bool = False) -> None:
        if isinstance(value, list):
            for j, item in enumerate(value):
                self.check_step_ref(path + (j,), item, ref)
            return
        if isinstance(value, dict):  # a matrix: its keys name things, and its rows' keys too
            for k, row in value.items():
                self.check_step_ref(path + (k,), k, ref, at_key=True)
                if isinstance(row, dict):
                    self.check_step_ref(path + (k,), row, ref)
            return
        if not isinstance(value, str):
            return  # a type error, reported by the argument model
        if ref.ip and is_valid_address(value, v6=True):
            return
        if ref.cidr and (is_valid_cidr(value, v6=True) or _loose_cidr(value)):
            return
        if not ref.names:
            self.add(path, f"{value!r} is not an IP network", at_key=at_key)
            return
        if ref.ip and re.fullmatch(r"[\d.]+|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*", value):
            self.add(path, f"{value!r} is not a valid IP address", at_key=at_key)
            return
        names = self.names(ref.names)
        if names is None or value in names:
            return
        whats = [c for c in ref.names] + (["IP address"] if ref.ip else [])
        what = ", ".join(whats[:-1]) + " or " + whats[-1] if len(whats) > 1 else whats[0]
        self.add(path, f"{value!r} is not a known {what}", did_you_mean(value, names, "names"), at_key=at_key)


def _loose_cidr(text: str) -> bool:
    try:
        ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def check(topo: Topology, raw: dict[str, Any], known: Known | None = None, skip: set[str] | None = None) -> list[Issue]:
    """All semantic problems of `topo` (validated from `raw`). `skip` names sections that failed
    type validation and were replaced by placeholders: checks that need them are left out."""
    c = _Checker(topo, raw, known or Known.from_raw(raw), skip or set())
    c.check_names()
    c.check_networks()
    c.check_interfaces()
    c.check_cluster()
    c.check_routers()
    c.check_daemons()
    c.check_scenarios()
    return c.issues
