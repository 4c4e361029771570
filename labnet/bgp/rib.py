"""Routing information bases: Adj-RIB-In per peer, Loc-RIB with best-path selection, Adj-RIB-Out.

Pure data structures (no I/O). Implements RFC 4271 9.1 decision process, RFC 4456 route
reflection, iBGP split horizon, eBGP next-hop-self and RFC 4724 stale routes during a peer's
graceful restart, per prefix, for IPv4 and IPv6 unicast. A path's attributes are kept as sent
on the wire for its family: IPv4 paths carry NEXT_HOP, IPv6 paths an MP_REACH_NLRI without NLRI
(only its next hop, RFC 2545) and no NEXT_HOP.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

from labnet.bgp.codec import (
    F_PARTIAL,
    IPV4_UNICAST,
    IPV6_UNICAST,
    AsSegment,
    Origin,
    PathAttributes,
    Prefix,
    RawAttribute,
    SegType,
    Update,
    family_of,
    mp_reach6,
    prefix_key,
)

DEFAULT_LOCAL_PREF = 100
Address = IPv4Address | IPv6Address
Family = tuple[int, int]


@dataclass(frozen=True)
class PeerInfo:
    """What the RIB needs to know about a peer whose session is (or was) up."""

    address: Address  # the session's transport address: either family carries either family
    asn: int
    router_id: IPv4Address
    ibgp: bool
    rr_client: bool = False
    next_hop_self: bool = False
    families: frozenset[Family] = frozenset({IPV4_UNICAST})  # negotiated (AFI, SAFI)s


def next_hop_of(attrs: PathAttributes) -> Address | None:
    """The global next hop: IPv6's from MP_REACH_NLRI, else NEXT_HOP."""
    hops = attrs.next_hop6()
    return hops[0] if hops is not None else attrs.next_hop


def with_next_hop(attrs: PathAttributes, next_hop: Address, link_local: IPv6Address | None = None) -> PathAttributes:
    """`attrs` sent with `next_hop`, in the attribute its family uses; an IPv6 one with our
    link-local address beside it for a peer on our link (RFC 2545 3)."""
    if isinstance(next_hop, IPv4Address):
        return replace(attrs, next_hop=next_hop)
    # a link-local next hop learned from a peer is only good on its link: passed on, it is left out
    return replace(attrs, next_hop=None, mp_reach=mp_reach6(next_hop, link_local=link_local))


@dataclass(frozen=True)
class Path:
    prefix: Prefix
    attrs: PathAttributes
    source: PeerInfo | None  # None: originated by this speaker
    stale: bool = False

    @property
    def next_hop(self) -> Address | None:
        """The global next hop of the path's family (None: originated without one)."""
        return next_hop_of(self.attrs)

    @property
    def link_local(self) -> IPv6Address | None:
        """An IPv6 path's link-local next hop, when the peer sent one (RFC 2545)."""
        hops = self.attrs.next_hop6()
        return hops[1] if hops is not None else None

    def same_route(self, other: Path | None) -> bool:
        """Equal for forwarding purposes (the stale flag alone is not a change)."""
        return other is not None and self.attrs == other.attrs and self.source == other.source


@dataclass(frozen=True)
class Change:
    """A Loc-RIB change: the new best path for `prefix`, or None when it is gone."""

    prefix: Prefix
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
        self.adj_in: dict[Address, dict[Prefix, Path]] = {}
        self.local: dict[Prefix, Path] = {}
        self.loc: dict[Prefix, Path] = {}
        self.adj_out: dict[Address, dict[Prefix, PathAttributes]] = {}

    # --- input ---------------------------------------------------------------------------------

    def import_reject(self, peer: PeerInfo, attrs: PathAttributes) -> str | None:
        """Why a route from `peer` may not be used (loops, bad first AS), or None."""
        if next_hop_of(attrs) is None:
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
        """Apply one received UPDATE to the peer's Adj-RIB-In; return Loc-RIB changes.

        Announcements of a family not negotiated with the peer are ignored.
        """
        table = self.adj_in.setdefault(peer.address, {})
        touched: set[Prefix] = set()
        for p in update.unreachable():
            if table.pop(p, None) is not None:
                touched.add(p)
        verdicts: dict[Family, tuple[PathAttributes, str | None]] = {}
        for p in update.announced():
            fam = family_of(p)
            if fam not in peer.families:
                continue
            if fam not in verdicts:
                attrs = _import_attrs(update, fam)
                verdicts[fam] = (attrs, self.import_reject(peer, attrs))
            attrs, reject = verdicts[fam]
            if reject is None:
                table[p] = Path(p, attrs, peer)
                touched.add(p)
            elif table.pop(p, None) is not None:
                touched.add(p)
        return self._recompute(touched)

    def originate(self, prefix: Prefix, next_hop: Address | None = None) -> list[Change]:
        if next_hop is not None and next_hop.version != prefix.version:
            raise ValueError(f"prefix {prefix} with IPv{next_hop.version} next hop {next_hop}")
        attrs = PathAttributes(origin=Origin.IGP, as_path=())
        self.local[prefix] = Path(prefix, with_next_hop(attrs, next_hop) if next_hop else attrs, None)
        return self._recompute({prefix})

    def withdraw(self, prefix: Prefix) -> list[Change]:
        if self.local.pop(prefix, None) is None:
            return []
        return self._recompute({prefix})

    def peer_down(self, peer: Address, keep_stale: bool, families: Collection[Family] | None = None) -> list[Change]:
        """Session lost. With graceful restart its routes of `families` (all when None) stay,
        marked stale; the others go."""
        table = self.adj_in.get(peer, {})
        self.adj_out.pop(peer, None)
        if keep_stale:
            gone = {p for p in table if families is not None and family_of(p) not in families}
            for p in gone:
                del table[p]
            for p, path in table.items():
                table[p] = replace(path, stale=True)
            return self._recompute(set(table) | gone)
        self.adj_in.pop(peer, None)
        return self._recompute(set(table))

    def sweep_stale(self, peer: Address, family: Family | None = None) -> list[Change]:
        """End-of-RIB (for `family`) arrived or the restart timer ran out: drop what is still stale."""
        table = self.adj_in.get(peer, {})
        gone = {p for p, path in table.items() if path.stale and family in (None, family_of(p))}
        for p in gone:
            del table[p]
        return self._recompute(gone)

    def stale_count(self, peer: Address, family: Family | None = None) -> int:
        return sum(1 for p in self.adj_in.get(peer, {}).values() if p.stale and family in (None, family_of(p.prefix)))

    def _candidates(self, prefix: Prefix) -> list[Path]:
        out = [t[prefix] for t in self.adj_in.values() if prefix in t]
        if prefix in self.local:
            out.append(self.local[prefix])
        return out

    def _recompute(self, prefixes: Iterable[Prefix]) -> list[Change]:
        changes: list[Change] = []
        for prefix in sorted(prefixes, key=prefix_key):
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

    def export(
        self, peer: PeerInfo, path: Path, local_address: IPv4Address, local_address6: IPv6Address | None = None,
        link_local6: IPv6Address | None = None,
    ) -> PathAttributes | None:
        """The attributes to advertise `path` to `peer` with, or None when it must not be sent.

        `local_address`/`local_address6`: our own next hop for IPv4/IPv6 routes (next-hop-self,
        eBGP, originated routes without a next hop); without `local_address6` such IPv6 routes stay.
        `link_local6`: ours, sent beside `local_address6` when we are the next hop (the peer is on
        our link: the caller knows).
        """
        src = path.source
        if src is not None and src.address == peer.address:
            return None
        if family_of(path.prefix) not in peer.families:
            return None
        own: Address | None = local_address if path.prefix.version == 4 else local_address6
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
            nh = next_hop_of(a)
            if src is None:
                nh = nh or own
            elif peer.next_hop_self and not reflected:
                nh = own
            if nh is None:
                return None
            ll = link_local6 if nh == own else None
            return with_next_hop(replace(a, local_pref=_local_pref(path), unknown=unknown), nh, ll)
        if own is None:
            return None
        # eBGP: prepend our AS, we are the next hop, iBGP-only attributes stay home
        segs = a.as_path or ()
        if segs and segs[0].type == SegType.AS_SEQUENCE and len(segs[0].asns) < 255:
            as_path = (AsSegment(SegType.AS_SEQUENCE, (self.local_as, *segs[0].asns)), *segs[1:])
        else:
            as_path = (AsSegment(SegType.AS_SEQUENCE, (self.local_as,)), *segs)
        return with_next_hop(PathAttributes(
            origin=a.origin,
            as_path=as_path,
            med=a.med if src is None else None,  # MED is not passed on to other ASes (RFC 4271 5.1.4)
            atomic_aggregate=a.atomic_aggregate,
            aggregator=a.aggregator,
            communities=a.communities,
            unknown=unknown,
        ), own, link_local6)

    def out_diff(
        self, peer: PeerInfo, local_address: IPv4Address, prefixes: Iterable[Prefix] | None = None,
        local_address6: IPv6Address | None = None, link_local6: IPv6Address | None = None,
    ) -> tuple[dict[Prefix, PathAttributes], list[Prefix]]:
        """Bring the peer's Adj-RIB-Out up to date for `prefixes` (all when None).

        Returns what to announce (prefix → attributes) and what to withdraw.
        """
        out = self.adj_out.setdefault(peer.address, {})
        scope = set(self.loc) | set(out) if prefixes is None else set(prefixes)
        announce: dict[Prefix, PathAttributes] = {}
        withdraw: list[Prefix] = []
        for prefix in sorted(scope, key=prefix_key):
            best = self.loc.get(prefix)
            want = self.export(peer, best, local_address, local_address6, link_local6) if best is not None else None
            have = out.get(prefix)
            if want is None:
                if have is not None:
                    del out[prefix]
                    withdraw.append(prefix)
            elif want != have:
                out[prefix] = want
                announce[prefix] = want
        return announce, withdraw

    def reset_out(self, peer: Address, family: Family | None = None) -> None:
        """Forget what was sent to `peer` (of `family`), so the next out_diff sends it all again."""
        out = self.adj_out.get(peer, {})
        for p in [p for p in out if family in (None, family_of(p))]:
            del out[p]


def _import_attrs(update: Update, family: Family) -> PathAttributes:
    """The update's attributes as kept with its paths of `family` (see the module docstring)."""
    a = replace(update.attrs, mp_reach=None, mp_unreach=None, next_hop=None)
    if family == IPV6_UNICAST:
        mp = update.attrs.mp_reach
        return replace(a, mp_reach=replace(mp, nlri=()) if mp is not None and update.next_hop6() else None)
    return replace(a, next_hop=update.next_hop())
