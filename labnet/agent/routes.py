"""The routes the agent wants in the main table, computed from the RIB, the blocks and the mode.

Pure (unit-tested): the daemon feeds it what BGP learned and what IPAM says, and hands the
result to `labnet.agent.kernel.reconcile`, which makes the kernel match it. Every route is
`proto bird` (12), exactly as Calico's BIRD installs them:

  blackhole 10.100.163.128/26 proto bird                         own block
  10.100.5.192/26 via 192.168.50.74 dev tunl0 proto bird onlink   IPIP (always, or other subnet)
  10.100.243.0/26 via 10.20.30.72 dev ens32 proto bird            cross-subnet, same subnet; or never

IPv6 blocks take the same shapes with the node's IPv6 underlay (`Underlay` of the family):
`blackhole fd00:10:244::/122 proto bird`, `<block> via <peer's IPv6 address> dev ens32 proto bird`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from labnet.agent.tunnel.vxlan import IFNAME6, Vtep
from labnet.bgp.codec import prefix_key

PROTO_BIRD = 12
IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = "vxlan.calico"
VXLAN6_DEVICE = IFNAME6

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class DesiredRoute:
    dst: Net
    kind: str = "unicast"  # "unicast" | "blackhole"
    gateway: Addr | None = None
    dev: str | None = None
    onlink: bool = False

    def __str__(self) -> str:
        if self.kind == "blackhole":
            return f"blackhole {self.dst} proto bird"
        parts = [str(self.dst)]
        if self.gateway is not None:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        parts.append("proto bird")
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts)


@dataclass(frozen=True)
class Learned:
    """A best path from the Loc-RIB that this node did not originate."""

    prefix: Net
    next_hop: Addr
    peer: Addr | None = None  # the BGP neighbour it came from


@dataclass(frozen=True)
class Underlay:
    ifname: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface  # this node's address with its prefix length

    @property
    def network(self) -> Net:
        return self.address.network


def blackholes(blocks: Iterable[str | Net]) -> list[DesiredRoute]:
    return [DesiredRoute(ipaddress.ip_network(b), "blackhole") for b in blocks]


def route_for(prefix: Net, next_hop: Addr, *, pool: Net, encap: str, mode: str, underlay: Underlay,
              tunnel_dev: str = IPIP_DEVICE) -> DesiredRoute:
    """One learned prefix. encap: ipip | vxlan | none; mode: always | cross-subnet | never."""
    same_subnet = next_hop in underlay.network
    in_pool = prefix.version == pool.version and prefix.subnet_of(pool)  # type: ignore[arg-type]
    tunnel = in_pool and encap != "none" and mode != "never" and (mode == "always" or not same_subnet)
    if tunnel:
        return DesiredRoute(prefix, gateway=next_hop, dev=tunnel_dev, onlink=True)
    if same_subnet:
        return DesiredRoute(prefix, gateway=next_hop, dev=underlay.ifname)
    # Not on-link (learned via a ToR or reflector that kept a next hop on another LAN): the
    # kernel step resolves it through the node's own routes (resolve_next_hop).
    return DesiredRoute(prefix, gateway=next_hop)


@dataclass(frozen=True)
class OwnRoute:
    """A route of the node's own (connected, static, default): not the agent's."""

    dst: Net
    gateway: Addr | None
    oif: int | None


def resolve_next_hop(next_hop: Addr, own: Iterable[OwnRoute]) -> OwnRoute | None:
    """BIRD's `gateway recursive`: the node's own longest-prefix route towards `next_hop`; a
    route through it goes via that route's gateway (or straight out of its device when it is
    connected). None: nothing of the node's leads there."""
    best: OwnRoute | None = None
    for r in own:
        if next_hop in r.dst and r.oif is not None and (best is None or r.dst.prefixlen > best.dst.prefixlen):
            best = r
    return best


def desired_routes(
    *,
    own_blocks: Iterable[str | Net],
    learned: Iterable[Learned],
    pool: Net,
    encap: str,
    mode: str,
    underlay: Underlay,
    originated: Iterable[Net] = (),
    tunnel_dev: str = IPIP_DEVICE,
) -> dict[Net, DesiredRoute]:
    """Every route the agent owns, by destination.

    Own blocks are blackholed; learned paths become routes unless we originate the same prefix
    (our own block wins) or their next hop is this node (a reflected copy of our own route).
    """
    out: dict[Net, DesiredRoute] = {r.dst: r for r in blackholes(own_blocks)}
    mine = set(out) | set(originated)
    me = underlay.address.ip
    for ln in learned:
        if ln.prefix in mine or ln.next_hop == me:
            continue
        if ln.prefix.prefixlen == 0:
            continue  # never touch the node's default route: it is the admin's, not ours
        out[ln.prefix] = route_for(ln.prefix, ln.next_hop, pool=pool, encap=encap, mode=mode,
                                   underlay=underlay, tunnel_dev=tunnel_dev)
    return out


def vxlan_plan(
    *,
    vteps: Iterable[Vtep],
    mode: str,
    underlay: Underlay,
) -> tuple[list[Vtep], dict[Net, DesiredRoute]]:
    """VXLAN mode (routes from the datastore, not BGP): which VTEPs go through vxlan.calico
    (handed to tunnel.sync_vxlan) and which blocks go plainly via the underlay (cross-subnet,
    same subnet), as proto-bird routes of ours."""
    tunnel: list[Vtep] = []
    direct: dict[Net, DesiredRoute] = {}
    me = underlay.address.ip
    for v in vteps:
        addr = ipaddress.ip_address(v.underlay_ip)
        if addr == me:
            continue
        if mode == "cross-subnet" and addr in underlay.network:
            for b in v.blocks:
                net = ipaddress.ip_network(b)
                direct[net] = DesiredRoute(net, gateway=addr, dev=underlay.ifname)
        else:
            tunnel.append(v)
    return tunnel, direct


def borrowed_addresses(my_node: str, my_blocks: Iterable[str], endpoint_ips: Iterable[str]) -> list[Net]:
    """/32s (/128s) of this node's pods whose address lies outside this node's blocks (borrowed)."""
    nets = [ipaddress.ip_network(b) for b in my_blocks]
    out: set[Net] = set()
    for ip in endpoint_ips:
        a = ipaddress.ip_interface(ip).ip
        if not any(a in n for n in nets):
            out.add(ipaddress.ip_network(a))
    return sorted(out, key=prefix_key)
