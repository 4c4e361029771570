"""Routing information bases: Adj-RIB-In per peer, Loc-RIB with best-path selection, Adj-RIB-Out.

Pure data structures (no I/O). Implements RFC 4271 9.1 decision process, RFC 4456 route
reflection, iBGP split horizon, eBGP next-hop-self and RFC 4724 stale routes during a peer's
graceful restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from labnet.bgp.codec import (
    F_PARTIAL,
    AsSegment,
    Origin,
    PathAttributes,
    RawAttribute,
    SegType,
    Update,
)

DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True)
class PeerInfo:
    """What the RIB needs to know about a peer whose session is (or was) up."""

    address: IPv4Address
    asn: int
    router_id: IPv4Address
    ibgp: bool
    rr_client: bool = False
    next_hop_self: bool = False


@dataclass(frozen=True)
class Path:
    prefix: IPv4Network
    attrs: PathAttributes
    source: PeerInfo | None  # None: originated by this speaker
    stale: bool = False

    @property
    def next_hop(self) -> IPv4Address | None:
        return self.attrs.next_hop

    def same_route(self, other: Path | None) -> bool:
        """Equal for forwarding purposes (the stale flag alone is not a change)."""
        return other is not None and self.attrs == other.attrs and self.source == other.source


@dataclass(frozen=True)
class Change:
    """A Loc-RIB change: the new best path for `prefix`, or None when it is gone."""

    prefix: IPv4Network
    best: Path | None


def _local_pref(p: Path) -> int:
    # LOCAL_PREF from an eBGP peer is ignored (RFC 4271 5.1.5)
    if p.source is not None and p.source.ibgp and p.attrs.local_pref is not None:
        return p.attrs.local_pref
    return DEFAULT_LOCAL_PREF


def _router_id(p: Path, local_id: IPv4Address) -> int:
    # RFC 4456 9: a reflected route is compared on its ORIGINATOR_ID
    if p.attrs.originator_id is not None:
        return int(p.attrs.originator_id)
    return int(p.source.router_id) if p.source is not None else int(local_id)


def select_best(paths: Iterable[Path], local_as: int, local_id: IPv4Address) -> Path | None:
    """RFC 4271 9.1.2.2 tie breaking, each step narrowing the candidates."""
    cands = list(paths)
    if not cands:
        return None

    def narrow(key: Callable[[Path], int]) -> None:
        nonlocal cands
        best = min(key(p) for p in cands)
        cands = [p for p in cands if key(p) == best]

    narrow(lambda p: -_local_pref(p))
    narrow(lambda p: 0 if p.source is None else 1)  # locally originated first
    narrow(lambda p: p.attrs.as_path_length())
    narrow(lambda p: int(p.attrs.origin if p.attrs.origin is not None else Origin.INCOMPLETE))

    # MED is only compared between routes from the same neighbour AS (missing MED = 0)
    def nbr(p: Path) -> int:
        n = p.attrs.neighbour_as()
        return n if n is not None else local_as

    def med(p: Path) -> int:
        return p.attrs.med or 0

    cands = [p for p in cands if not any(nbr(q) == nbr(p) and med(q) < med(p) for q in cands)]
    narrow(lambda p: 0 if p.source is None or not p.source.ibgp else 1)  # eBGP over iBGP
    narrow(lambda p: _router_id(p, local_id))
    narrow(lambda p: len(p.attrs.cluster_list))
    narrow(lambda p: int(p.source.address) if p.source is not None else 0)
    return cands[0]


class Rib:
    def __init__(self, local_as: int, router_id: IPv4Address, cluster_id: IPv4Address | None = None) -> None:
        self.local_as = local_as
        self.router_id = router_id
        self.cluster_id = cluster_id or router_id
        self.adj_in: dict[IPv4Address, dict[IPv4Network, Path]] = {}
        self.local: dict[IPv4Network, Path] = {}
        self.loc: dict[IPv4Network, Path] = {}
        self.adj_out: dict[IPv4Address, dict[IPv4Network, PathAttributes]] = {}

    # --- input ---------------------------------------------------------------------------------

    def import_reject(self, peer: PeerInfo, attrs: PathAttributes) -> str | None:
        """Why a route from `peer` may not be used (loops, bad first AS), or None."""
        if attrs.next_hop is None:
            return "no next hop"
        if not peer.ibgp:
            if self.local_as in attrs.as_path_asns():
                return f"AS path loop: own AS {self.local_as} in path"
            if attrs.neighbour_as() != peer.asn:
                return f"first AS in path is {attrs.neighbour_as()}, peer is AS {peer.asn}"
        else:
            if attrs.originator_id == self.router_id:
                return "ORIGINATOR_ID is our router id"
            if self.cluster_id in attrs.cluster_list:
                return "CLUSTER_LIST loop"
        return None

    def accept(self, peer: PeerInfo, update: Update) -> list[Change]:
        """Apply one received UPDATE to the peer's Adj-RIB-In; return Loc-RIB changes."""
        table = self.adj_in.setdefault(peer.address, {})
        touched: set[IPv4Network] = set()
        for p in update.unreachable():
            if table.pop(p, None) is not None:
                touched.add(p)
        announced = update.announced()
        if announced:
            attrs = replace(update.attrs, mp_reach=None, mp_unreach=None, next_hop=update.next_hop())
            reject = self.import_reject(peer, attrs)
            for p in announced:
                if reject is None:
                    table[p] = Path(p, attrs, peer)
                    touched.add(p)
                elif table.pop(p, None) is not None:
                    touched.add(p)
        return self._recompute(touched)

    def originate(self, prefix: IPv4Network, next_hop: IPv4Address | None = None) -> list[Change]:
        attrs = PathAttributes(origin=Origin.IGP, as_path=(), next_hop=next_hop)
        self.local[prefix] = Path(prefix, attrs, None)
        return self._recompute({prefix})

    def withdraw(self, prefix: IPv4Network) -> list[Change]:
        if self.local.pop(prefix, None) is None:
            return []
        return self._recompute({prefix})

    def peer_down(self, peer: IPv4Address, keep_stale: bool) -> list[Change]:
        """Session lost. With graceful restart its routes stay (marked stale), else they go."""
        table = self.adj_in.get(peer, {})
        self.adj_out.pop(peer, None)
        if keep_stale:
            for p, path in table.items():
                table[p] = replace(path, stale=True)
            return self._recompute(set(table))
        self.adj_in.pop(peer, None)
        return self._recompute(set(table))

    def sweep_stale(self, peer: IPv4Address) -> list[Change]:
        """End-of-RIB arrived or the restart timer ran out: drop what is still stale."""
        table = self.adj_in.get(peer, {})
        gone = {p for p, path in table.items() if path.stale}
        for p in gone:
            del table[p]
        return self._recompute(gone)

    def stale_count(self, peer: IPv4Address) -> int:
        return sum(1 for p in self.adj_in.get(peer, {}).values() if p.stale)

    def _candidates(self, prefix: IPv4Network) -> list[Path]:
        out = [t[prefix] for t in self.adj_in.values() if prefix in t]
        if prefix in self.local:
            out.append(self.local[prefix])
        return out

    def _recompute(self, prefixes: Iterable[IPv4Network]) -> list[Change]:
        changes: list[Change] = []
        for prefix in sorted(prefixes):
            old = self.loc.get(prefix)
            new = select_best(self._candidates(prefix), self.local_as, self.router_id)
            if new is None:
                self.loc.pop(prefix, None)
            else:
                self.loc[prefix] = new
            if (new is None) != (old is None) or (new is not None and not new.same_route(old)):
                changes.append(Change(prefix, new))
        return changes

    # --- output --------------------------------------------------------------------------------

    def export(self, peer: PeerInfo, path: Path, local_address: IPv4Address) -> PathAttributes | None:
        """The attributes to advertise `path` to `peer` with, or None when it must not be sent."""
        src = path.source
        if src is not None and src.address == peer.address:
            return None
        a = path.attrs
        unknown = tuple(RawAttribute(r.flags | F_PARTIAL, r.type, r.value) for r in a.unknown)
        if peer.ibgp:
            reflected = src is not None and src.ibgp
            if reflected and src is not None:
                # iBGP split horizon, relaxed by RFC 4456 for route reflector clients
                if not (src.rr_client or peer.rr_client):
                    return None
                originator = a.originator_id or src.router_id
                if originator == peer.router_id:
                    return None
                a = replace(a, originator_id=originator, cluster_list=(self.cluster_id, *a.cluster_list))
            nh = a.next_hop
            if src is None:
                nh = a.next_hop or local_address
            elif peer.next_hop_self and not reflected:
                nh = local_address
            return replace(a, next_hop=nh, local_pref=_local_pref(path), unknown=unknown)
        # eBGP: prepend our AS, we are the next hop, iBGP-only attributes stay home
        segs = a.as_path or ()
        if segs and segs[0].type == SegType.AS_SEQUENCE and len(segs[0].asns) < 255:
            as_path = (AsSegment(SegType.AS_SEQUENCE, (self.local_as, *segs[0].asns)), *segs[1:])
        else:
            as_path = (AsSegment(SegType.AS_SEQUENCE, (self.local_as,)), *segs)
        return PathAttributes(
            origin=a.origin,
            as_path=as_path,
            next_hop=local_address,
            med=a.med if src is None else None,  # MED is not passed on to other ASes (RFC 4271 5.1.4)
            atomic_aggregate=a.atomic_aggregate,
            aggregator=a.aggregator,
            communities=a.communities,
            unknown=unknown,
        )

    def out_diff(
        self, peer: PeerInfo, local_address: IPv4Address, prefixes: Iterable[IPv4Network] | None = None
    ) -> tuple[dict[IPv4Network, PathAttributes], list[IPv4Network]]:
        """Bring the peer's Adj-RIB-Out up to date for `prefixes` (all when None).

        Returns what to announce (prefix → attributes) and what to withdraw.
        """
        out = self.adj_out.setdefault(peer.address, {})
        scope = set(self.loc) | set(out) if prefixes is None else set(prefixes)
        announce: dict[IPv4Network, PathAttributes] = {}
        withdraw: list[IPv4Network] = []
        for prefix in sorted(scope):
            best = self.loc.get(prefix)
            want = self.export(peer, best, local_address) if best is not None else None
            have = out.get(prefix)
            if want is None:
                if have is not None:
                    del out[prefix]
                    withdraw.append(prefix)
            elif want != have:
                out[prefix] = want
                announce[prefix] = want
        return announce, withdraw
