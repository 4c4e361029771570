"""RIB, IPv6 unicast: best path, next hops (RFC 2545), export per family, route reflection, split
horizon, negotiated families and graceful-restart stale routes per family."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from labnet.bgp.codec import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    AsSegment,
    MpUnreach,
    Origin,
    PathAttributes,
    SegType,
    Update,
    mp_reach6,
)
from labnet.bgp.rib import Change, PeerInfo, Rib

LOCAL_AS = 64512
ME = IPv4Address("10.0.0.1")
ME6 = IPv6Address("2001:db8::1")
P4 = IPv4Network("10.100.5.192/26")
P6 = IPv6Network("2001:db8:100::/48")
BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})
V4_ONLY = frozenset({IPV4_UNICAST})


def ip6(s: str) -> IPv6Address:
    return IPv6Address(s)


def ibgp(addr: str, rid: str, rr_client: bool = False, nhs: bool = False,
         families: frozenset[tuple[int, int]] = BOTH) -> PeerInfo:
    return PeerInfo(ip_address(addr), LOCAL_AS, IPv4Address(rid), True, rr_client, nhs, families)


def ebgp(addr: str, rid: str, asn: int = 65000, families: frozenset[tuple[int, int]] = BOTH) -> PeerInfo:
    return PeerInfo(ip_address(addr), asn, IPv4Address(rid), False, families=families)


def seq(*asns: int) -> tuple[AsSegment, ...]:
    return (AsSegment(SegType.AS_SEQUENCE, asns),) if asns else ()


def announce6(nh: str = "2001:db8::9", *prefixes: IPv6Network, ll: str | None = None,
              path: tuple[AsSegment, ...] = (), **kw: object) -> Update:
    reach = mp_reach6(ip6(nh), prefixes or (P6,), ip6(ll) if ll else None)
    return Update(attrs=PathAttributes(origin=Origin.IGP, as_path=path, mp_reach=reach, **kw))  # type: ignore[arg-type]


def test_best_ipv6_path_and_its_next_hops() -> None:
    rib = Rib(LOCAL_AS, ME)
    a, b = ibgp("2001:db8::2", "1.1.1.2"), ibgp("10.0.0.3", "1.1.1.3")
    rib.accept(a, announce6("2001:db8::2", ll="fe80::2", local_pref=200))
    ch = rib.accept(b, announce6("2001:db8::3", local_pref=100))
    assert ch == []  # a stays best
    best = rib.loc[P6]
    assert best.source == a and best.next_hop == ip6("2001:db8::2") and best.link_local == ip6("fe80::2")
    assert best.attrs.next_hop is None and best.attrs.mp_reach is not None and best.attrs.mp_reach.nlri == ()
    ch = rib.accept(a, Update(attrs=PathAttributes(mp_unreach=MpUnreach(2, 1, (P6,)))))
    assert len(ch) == 1 and ch[0].best is not None and ch[0].best.source == b
    assert ch[0].best.next_hop == ip6("2001:db8::3") and ch[0].best.link_local is None


def test_one_update_with_both_families() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ebgp("10.0.0.2", "10.0.0.2")
    u = replace(announce6("2001:db8::2", path=seq(65000)), nlri=(P4,))
    u = replace(u, attrs=replace(u.attrs, next_hop=IPv4Address("10.0.0.2")))
    ch = rib.accept(peer, u)
    assert [c.prefix for c in ch] == [P4, P6]  # IPv4 first, then IPv6
    assert rib.loc[P4].next_hop == IPv4Address("10.0.0.2") and rib.loc[P4].attrs.mp_reach is None
    assert rib.loc[P6].next_hop == ip6("2001:db8::2") and rib.loc[P6].attrs.next_hop is None


def test_a_family_not_negotiated_is_not_imported() -> None:
    rib = Rib(LOCAL_AS, ME)
    assert rib.accept(ibgp("10.0.0.2", "10.0.0.2", families=V4_ONLY), announce6()) == []
    assert P6 not in rib.loc


def test_ebgp_ipv6_loop_and_first_as_checks() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ebgp("2001:db8::2", "10.0.0.2")
    assert rib.accept(peer, announce6(path=seq(65000, LOCAL_AS))) == []
    assert rib.accept(peer, announce6(path=seq(65099))) == []
    assert rib.accept(peer, announce6(path=seq(65000))) != []


# --- export -------------------------------------------------------------------------------------


def test_originated_ipv6_route_goes_out_with_our_ipv6_next_hop() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.originate(P6)
    to_i = rib.export(ibgp("10.0.0.2", "10.0.0.2"), rib.loc[P6], ME, ME6)
    assert to_i == PathAttributes(origin=Origin.IGP, as_path=(), local_pref=100, mp_reach=mp_reach6(ME6))
    to_e = rib.export(ebgp("10.0.0.3", "10.0.0.3"), rib.loc[P6], ME, ME6)
    assert to_e == PathAttributes(origin=Origin.IGP, as_path=seq(LOCAL_AS), mp_reach=mp_reach6(ME6))
    # without an IPv6 address of our own there is no next hop to send it with
    assert rib.export(ibgp("10.0.0.2", "10.0.0.2"), rib.loc[P6], ME) is None
    assert rib.export(ebgp("10.0.0.3", "10.0.0.3"), rib.loc[P6], ME) is None
    rib.originate(P6, ip6("2001:db8::77"))
    out = rib.export(ibgp("10.0.0.2", "10.0.0.2"), rib.loc[P6], ME, ME6)
    assert out is not None and out.next_hop6() == (ip6("2001:db8::77"), None)


def test_ebgp_learned_ipv6_to_ibgp_keeps_the_global_next_hop_unless_next_hop_self() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.accept(ebgp("2001:db8::2", "10.0.0.2"), announce6("2001:db8::2", ll="fe80::2", path=seq(65000)))
    out = rib.export(ibgp("10.0.0.3", "10.0.0.3"), rib.loc[P6], ME, ME6)
    # RFC 2545 3: the link-local next hop is only for the link it was learned on
    assert out is not None and out.mp_reach == mp_reach6(ip6("2001:db8::2")) and out.next_hop is None
    assert out.local_pref == 100
    out = rib.export(ibgp("10.0.0.3", "10.0.0.3", nhs=True), rib.loc[P6], ME, ME6)
    assert out is not None and out.next_hop6() == (ME6, None)


def test_ipv6_to_ebgp_prepends_and_sets_our_next_hop() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.accept(ibgp("10.0.0.2", "10.0.0.2"), announce6("2001:db8::2", path=seq(65001), med=5, local_pref=300))
    out = rib.export(ebgp("2001:db8::3", "10.0.0.3"), rib.loc[P6], ME, ME6)
    assert out is not None
    assert out.as_path == seq(LOCAL_AS, 65001) and out.mp_reach == mp_reach6(ME6) and out.next_hop is None
    assert out.local_pref is None and out.med is None


def test_our_link_local_goes_beside_our_own_next_hop_only() -> None:
    ll = ip6("fe80::ecee:1")
    rib = Rib(LOCAL_AS, ME)
    rib.originate(P6)
    rib.accept(ebgp("2001:db8::2", "10.0.0.2"), announce6("2001:db8::2", IPv6Network("2001:db8:200::/48"),
                                                          path=seq(65000)))
    # to an on-link eBGP peer we are the next hop: both addresses (RFC 2545 3, 32 bytes)
    out = rib.export(ebgp("2001:db8::3", "10.0.0.3", 65009), rib.loc[P6], ME, ME6, ll)
    assert out is not None and out.next_hop6() == (ME6, ll) and len(out.mp_reach.next_hop) == 32  # type: ignore[union-attr]
    # a route passed on over iBGP with its original next hop: no link-local of ours beside it
    passed = rib.export(ibgp("2001:db8::4", "10.0.0.4"), rib.loc[IPv6Network("2001:db8:200::/48")], ME, ME6, ll)
    assert passed is not None and passed.next_hop6() == (ip6("2001:db8::2"), None)
    own = rib.export(ibgp("2001:db8::4", "10.0.0.4"), rib.loc[P6], ME, ME6, ll)
    assert own is not None and own.next_hop6() == (ME6, ll)


def test_ipv6_route_not_sent_to_a_peer_without_ipv6_unicast() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.originate(P4)
    rib.originate(P6)
    v4_only = ebgp("10.0.0.2", "10.0.0.2", families=V4_ONLY)
    announce, withdraw = rib.out_diff(v4_only, ME, local_address6=ME6)
    assert list(announce) == [P4] and withdraw == []
    both = ebgp("10.0.0.3", "10.0.0.3")
    announce, withdraw = rib.out_diff(both, ME, local_address6=ME6)
    assert list(announce) == [P4, P6] and announce[P6].next_hop6() == (ME6, None)
    rib.withdraw(P6)
    assert rib.out_diff(both, ME, [P6], ME6) == ({}, [P6])
    assert rib.out_diff(v4_only, ME, [P6], ME6) == ({}, [])


def test_ipv6_split_horizon_and_route_reflection() -> None:
    rib = Rib(LOCAL_AS, ME, cluster_id=IPv4Address("10.255.0.1"))
    client_a, client_b = ibgp("2001:db8::2", "10.0.0.2", rr_client=True), ibgp("2001:db8::3", "10.0.0.3", rr_client=True)
    x, y = ibgp("2001:db8::4", "10.0.0.4"), ibgp("2001:db8::5", "10.0.0.5")
    rib.accept(client_a, announce6("2001:db8::2"))
    path = rib.loc[P6]
    out = rib.export(client_b, path, ME, ME6)
    assert out is not None and out.originator_id == IPv4Address("10.0.0.2")
    assert out.cluster_list == (IPv4Address("10.255.0.1"),) and out.next_hop6() == (ip6("2001:db8::2"), None)
    assert rib.export(x, path, ME, ME6) is not None
    assert rib.export(client_a, path, ME, ME6) is None  # never back to its source
    q = IPv6Network("2001:db8:200::/48")
    rib.accept(x, announce6("2001:db8::4", q))
    assert rib.export(client_a, rib.loc[q], ME, ME6) is not None
    assert rib.export(y, rib.loc[q], ME, ME6) is None  # iBGP split horizon between non-clients


# --- graceful restart, per family -------------------------------------------------------------


def test_graceful_restart_keeps_only_the_listed_families_and_end_of_rib_sweeps_one() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ibgp("2001:db8::2", "10.0.0.2")
    q4, q6 = IPv4Network("10.100.9.0/26"), IPv6Network("2001:db8:9::/48")
    v4 = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address("10.0.0.2")), nlri=(P4, q4))
    rib.accept(peer, v4)
    rib.accept(peer, announce6("2001:db8::2", P6, q6))
    # both families kept over the restart: nothing changes for forwarding
    assert rib.peer_down(peer.address, keep_stale=True, families={IPV4_UNICAST, IPV6_UNICAST}) == []
    assert rib.stale_count(peer.address) == 4 and rib.stale_count(peer.address, IPV6_UNICAST) == 2
    rib.accept(peer, announce6("2001:db8::2", P6))
    assert not rib.loc[P6].stale and rib.loc[q6].stale
    assert rib.sweep_stale(peer.address, IPV6_UNICAST) == [Change(q6, None)]
    assert rib.stale_count(peer.address, IPV4_UNICAST) == 2 and P6 in rib.loc
    assert rib.sweep_stale(peer.address, IPV4_UNICAST) == [Change(P4, None), Change(q4, None)]
    # a restart whose capability lists IPv4 only: the IPv6 routes go at once
    rib.accept(peer, v4)
    assert rib.peer_down(peer.address, keep_stale=True, families={IPV4_UNICAST}) == [Change(P6, None)]
    assert rib.stale_count(peer.address) == 2
