"""The cluster settings: one typed description, read by everything that needs them.

`labnet up` builds them from the topology (Topology.cluster_settings), writes them to etcd as
JSON (labnet.etcd.settings), and the agent, the CNI plugin, doctor and the lab phases read
them back with `ClusterSettings.from_dict`, the one parser. Each setting has its type and
default here, once; so do the rules derived from them: the encapsulation towards a peer, its
overhead, the workload MTU, whether a node has BGP peers.

Import-light on purpose (dataclasses, ipaddress): the CNI plugin loads it on every ADD.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from labnet.errors import BadInput

Encap = Literal["ipip", "vxlan", "none"]
ENCAP_MODES = ("always", "cross-subnet", "never")
DEFAULT_ASN = 64512
# Bytes an encapsulation adds in front of the pod's packet: IPv4 (IPIP); IPv4+UDP+VXLAN+Ethernet.
OVERHEAD: dict[str, int] = {"ipip": 20, "vxlan": 50, "none": 0}
IPIP_OVERHEAD = OVERHEAD["ipip"]
VXLAN_OVERHEAD = OVERHEAD["vxlan"]
VXLAN6_OVERHEAD = 70  # IPv6 (40) + UDP + VXLAN + Ethernet: VXLAN over an IPv6 underlay
DEFAULT_BLOCK = {4: 26, 6: 122}  # Calico's default block sizes per family
# The block sizes an IP pool may have, per family (Calico's IPPool validation: IPv4 20..32,
# IPv6 116..128: a block lists each of its addresses)
BLOCK_RANGE = {4: (20, 32), 6: (116, 128)}


@dataclass(frozen=True)
class PoolSettings:
    """One IP pool. An IPv6 pool has no IPIP (Calico has none for IPv6): vxlan or nothing."""

    cidr: str
    block_size: int = 26
    ipip: str = "always"  # always | cross-subnet | never
    vxlan: str = "never"
    nat_outgoing: bool = True

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.cidr).version

    @property
    def encap(self) -> Encap:
        """What the agent sets up on a node: 'ipip', 'vxlan' or 'none'."""
        if self.vxlan != "never":
            return "vxlan"
        return "ipip" if self.ipip != "never" else "none"

    @property
    def mode(self) -> str:
        """The encapsulation mode: always, cross-subnet or never."""
        return self.vxlan if self.vxlan != "never" else self.ipip

    def encap_towards(self, same_subnet: bool) -> Encap:
        """How traffic to a peer's blocks travels: cross-subnet encapsulates only across subnets."""
        if self.mode == "cross-subnet" and same_subnet:
            return "none"
        return self.encap

    @property
    def overhead(self) -> int:
        return OVERHEAD[self.encap]

    def overhead_over(self, underlay_version: int) -> int:
        """Bytes the encapsulation adds when the outer header is of that IP version."""
        return VXLAN6_OVERHEAD if self.encap == "vxlan" and underlay_version == 6 else self.overhead


@dataclass(frozen=True)
class PeerSettings:
    address: str
    asn: int
    node: str | None = None  # only this node peers (calicoctl's "node specific"); None = global
    wait: bool = True  # `up` waits for the session (false: a speaker the user brings, maybe later)


@dataclass(frozen=True)
class BgpSettings:
    asn: int = DEFAULT_ASN
    mesh: bool = True
    route_reflectors: tuple[str, ...] = ()
    peers: tuple[PeerSettings, ...] = ()
    graceful_restart: bool = True
    restart_time: int = 120
    hold_time: int = 90
    keepalive: int | None = None  # None: a third of the hold time
    enabled: bool = True


@dataclass(frozen=True)
class ClusterSettings:
    pool: PoolSettings
    bgp: BgpSettings = field(default_factory=BgpSettings)
    mtu: int | None = None  # workload MTU; None: underlay MTU minus the encapsulation overhead
    node_asn: dict[str, int] = field(default_factory=dict)
    pool6: PoolSettings | None = None  # the IPv6 pool of a dual-stack cluster

    @property
    def pools(self) -> tuple[PoolSettings, ...]:
        """The IPv4 pool, then the IPv6 one when there is one."""
        return (self.pool,) if self.pool6 is None else (self.pool, self.pool6)

    def pool_of(self, version: int) -> PoolSettings | None:
        return self.pool if version == 4 else self.pool6

    def asn_of(self, node: str) -> int:
        return self.node_asn.get(node, self.bgp.asn)

    def workload_mtu(self, underlay_mtu: int, underlay6: bool = False) -> int:
        """The pod's MTU: the smallest any of its pools' encapsulations leaves. A VXLAN IPv6 pool
        over an IPv6 underlay costs 70 bytes; over IPv4 (no IPv6 underlay) 50."""
        if self.mtu:
            return self.mtu
        over = self.pool.overhead
        if self.pool6 is not None:
            over = max(over, self.pool6.overhead_over(6 if underlay6 else 4))
        return underlay_mtu - over

    def expects_peers(self, nodes: Iterable[str]) -> bool:
        """Whether a node of the cluster should have BGP sessions at all."""
        if not self.bgp.enabled:
            return False
        many = len(list(nodes)) > 1
        waited = any(p.wait for p in self.bgp.peers)
        return waited or (many and (self.bgp.mesh or bool(self.bgp.route_reflectors)))

    @property
    def unwaited(self) -> frozenset[str]:
        """Peer addresses `up` and the faults' recovery do not wait for."""
        return frozenset(p.address for p in self.bgp.peers if not p.wait)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape written to etcd; `from_dict` reads it back to an equal object."""
        d = asdict(self)
        if self.pool6 is None:
            del d["pool6"]
        d["bgp"]["route_reflectors"] = list(self.bgp.route_reflectors)
        d["bgp"]["peers"] = [{k: v for k, v in asdict(p).items() if v is not None} for p in self.bgp.peers]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "cluster settings") -> ClusterSettings:
        """The one parser: missing or null fields take the defaults above; a wrong type or
        value is BadInput naming the field."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise BadInput(f"{where}: {msg}")

        need(isinstance(d, dict), f"expected an object, got {type(d).__name__}")
        pool = _pool(d.get("pool"), 4, where, "pool")
        pool6 = None if d.get("pool6") is None else _pool(d.get("pool6"), 6, where, "pool6")
        b = d.get("bgp") or {}
        need(isinstance(b, dict), "'bgp' must be an object")
        mesh_raw = b.get("mesh", BgpSettings.mesh)
        mesh = mesh_raw if isinstance(mesh_raw, bool) else str(mesh_raw).lower() in ("full", "on", "yes", "true")
        peers = []
        for i, x in enumerate(b.get("peers") or []):
            need(isinstance(x, dict) and "address" in x and "asn" in x, f"bgp.peers[{i}] needs address and asn")
            try:
                ipaddress.ip_address(x["address"])
            except ValueError as exc:
                raise BadInput(f"{where}: bgp.peers[{i}].address: {exc}") from exc
            peers.append(PeerSettings(str(x["address"]), _int(x, "asn", 0, where), x.get("node"),
                                      _bool(x, "wait", PeerSettings.wait, where)))
        rrs = b.get("route_reflectors") or ()
        need(isinstance(rrs, list | tuple) and all(isinstance(r, str) for r in rrs),
             f"bgp.route_reflectors must be a list of node names, got {rrs!r}")
        bgp = BgpSettings(
            asn=_int(b, "asn", BgpSettings.asn, where), mesh=mesh, route_reflectors=tuple(rrs), peers=tuple(peers),
            graceful_restart=_bool(b, "graceful_restart", BgpSettings.graceful_restart, where),
            restart_time=_int(b, "restart_time", BgpSettings.restart_time, where),
            hold_time=_int(b, "hold_time", BgpSettings.hold_time, where),
            keepalive=_int(b, "keepalive", 0, where) or None,
            enabled=_bool(b, "enabled", BgpSettings.enabled, where),
        )
        need(bgp.hold_time == 0 or 3 <= bgp.hold_time <= 65535, f"bgp.hold_time {bgp.hold_time} must be 0 or 3..65535")
        need(0 <= bgp.restart_time <= 4095, f"bgp.restart_time {bgp.restart_time} must be 0..4095 (12 bits)")
        mtu = d.get("mtu")
        need(mtu is None or (isinstance(mtu, int) and not isinstance(mtu, bool) and 576 <= mtu <= 65535),
             f"mtu {mtu!r} must be null or 576..65535")
        raw_asn = d.get("node_asn") or {}
        need(isinstance(raw_asn, dict), f"node_asn must be an object of node: asn, got {raw_asn!r}")
        node_asn = {str(k): _int({"asn": v}, "asn", 0, f"{where}: node_asn.{k}") for k, v in raw_asn.items()}
        return cls(pool, bgp, mtu, node_asn, pool6)


def default_ipip(version: int) -> str:
    """IPIP is on by default for IPv4 pools, as in Calico's manifests; IPv6 has none."""
    return PoolSettings.ipip if version == 4 else "never"


def default_nat(version: int) -> bool:
    """natOutgoing as calico-node's default pools have it: on for IPv4, off for IPv6."""
    return PoolSettings.nat_outgoing if version == 4 else False


def _pool(p: object, version: int, where: str, what: str) -> PoolSettings:
    """A pool of that IP version; an IPv6 pool's defaults are Calico's: /122 blocks, no IPIP."""
    if not (isinstance(p, dict) and isinstance(p.get("cidr"), str)):
        raise BadInput(f"{where}: '{what}' must be an object with a 'cidr'")
    try:
        net = ipaddress.ip_network(p["cidr"])
    except ValueError as exc:
        raise BadInput(f"{where}: {what}.cidr {p['cidr']!r}: {exc}") from exc
    if net.version != version:
        raise BadInput(f"{where}: {what}.cidr {p['cidr']!r} is not an IPv{version} network")
    if net.is_multicast or net.is_link_local or net.is_loopback or net.is_unspecified:
        raise BadInput(f"{where}: {what}.cidr {net} is not a unicast range pods can have")
    ipip = _mode(p.get("ipip", default_ipip(version)), where, f"{what}.ipip")
    vxlan = _mode(p.get("vxlan", PoolSettings.vxlan), where, f"{what}.vxlan")
    if ipip != "never" and vxlan != "never":
        raise BadInput(f"{where}: {what} has both ipip={ipip} and vxlan={vxlan}; pick one")
    if version == 6 and ipip != "never":
        raise BadInput(f"{where}: {what}.ipip {ipip}: IPv6 pools have no IPIP (use vxlan or never)")
    block = _int(p, "block_size", DEFAULT_BLOCK[version], where)
    low, high = max(net.prefixlen, BLOCK_RANGE[version][0]), BLOCK_RANGE[version][1]
    if not low <= block <= high:
        raise BadInput(f"{where}: {what}.block_size {block} must be {low}..{high}")
    return PoolSettings(p["cidr"], block, ipip, vxlan, _bool(p, "nat_outgoing", default_nat(version), where))


def _int(d: dict[str, Any], key: str, default: int, where: str) -> int:
    """d[key] as an int; missing or null gives `default`."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise BadInput(f"{where}: {key} {v!r} is not an integer")
    try:
        return int(v)
    except ValueError as exc:
        raise BadInput(f"{where}: {key} {v!r} is not an integer") from exc


def _bool(d: dict[str, Any], key: str, default: bool, where: str) -> bool:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadInput(f"{where}: {key} {v!r} is not true or false")
    return v


def _mode(value: object, where: str, what: str) -> str:
    """An encapsulation mode, as Calico spells it too (Always, CrossSubnet, Never, true/false)."""
    if value is True:
        return "always"
    if value in (False, None):
        return "never"
    v = str(value).strip().lower().replace("_", "-")
    v = {"crosssubnet": "cross-subnet"}.get(v, v)
    if v not in ENCAP_MODES:
        raise BadInput(f"{where}: {what} {value!r} must be one of {', '.join(ENCAP_MODES)}")
    return v
