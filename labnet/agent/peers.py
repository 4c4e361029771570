"""Which BGP sessions this node should have: node-to-node mesh, route reflectors, explicit peers.

Pure: from this node's record, every registered node and the cluster settings. The daemon
diffs the result against the speaker's peers whenever nodes or settings change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from labnet.agent.nodes import NodeRecord
from labnet.settings import ClusterSettings

MESH = "node-to-node mesh"
GLOBAL = "global"
NODE_SPECIFIC = "node specific"


@dataclass(frozen=True)
class PeerSpec:
    address: str
    asn: int
    peer_type: str  # MESH | GLOBAL | NODE_SPECIFIC (calicoctl's PEER TYPE column)
    passive: bool = False  # wait for the peer to connect (the higher address of a pair)
    rr_client: bool = False  # we reflect routes to it (we are its route reflector)
    next_hop_self: bool = False
    name: str | None = None  # the peer node's name, for node peers


def _addr(n: NodeRecord) -> ipaddress.IPv4Address | None:
    try:
        return n.address
    except ValueError:
        return None


def peer_inputs(me: str, nodes: Iterable[NodeRecord], settings: ClusterSettings) -> tuple[object, ...]:
    """What compute_peers reads: each node's name and address (only the route reflectors', for
    a node that is not one: others come and go without changing its sessions), and the settings.
    While a lab comes up every registration changes the node list; most change no peer."""
    rrs = set(settings.bgp.route_reflectors)
    relevant = (n for n in nodes if not rrs or me in rrs or n.name in rrs)
    return tuple((n.name, n.ipv4_address) for n in relevant), settings


def compute_peers(me: str, my_address: str, nodes: Iterable[NodeRecord], settings: ClusterSettings,
                  my_address6: str | None = None) -> list[PeerSpec]:
    """The peers of node `me` (whose BGP address is `my_address`, and IPv6 one `my_address6`),
    sorted by address (IPv4 first)."""
    bgp = settings.bgp
    if not bgp.enabled:
        return []
    mine = ipaddress.IPv4Address(my_address.split("/")[0])
    others = [(n, a) for n in nodes if n.name != me and (a := _addr(n)) is not None and a != mine]
    rrs = set(bgp.route_reflectors)
    out: dict[str, PeerSpec] = {}

    def node_peer(n: NodeRecord, a: ipaddress.IPv4Address, ptype: str, rr_client: bool) -> None:
        out[str(a)] = PeerSpec(str(a), settings.asn_of(n.name), ptype, passive=mine > a, rr_client=rr_client,
                               name=n.name)

    if rrs:
        # Route reflectors replace the mesh: RRs peer with everyone, the others only with RRs.
        for n, a in others:
            if me in rrs:
                node_peer(n, a, NODE_SPECIFIC, rr_client=n.name not in rrs)
            elif n.name in rrs:
                node_peer(n, a, NODE_SPECIFIC, rr_client=False)
    elif bgp.mesh:
        for n, a in others:
            node_peer(n, a, MESH, rr_client=False)
    my_asn = settings.asn_of(me)
    for p in bgp.peers:
        if p.node is not None and p.node != me:
            continue
        addr = ipaddress.ip_address(p.address)
        if addr == mine or (my_address6 is not None and addr == ipaddress.ip_address(my_address6.split("/")[0])):
            continue
        # an IPv6 address: a session over the IPv6 underlay (it carries the IPv6 blocks); one
        # spelling per address, or fd00::1 and fd00:0::1 would be two sessions to one peer
        out[str(addr)] = PeerSpec(str(addr), p.asn, GLOBAL if p.node is None else NODE_SPECIFIC,
                                  passive=False, next_hop_self=p.asn != my_asn)
    return [out[k] for k in sorted(out, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))]
