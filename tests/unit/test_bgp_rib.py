"""RIB: best-path selection, route reflection, split horizon, next-hop rules, graceful-restart stale routes."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from labnet.bgp.codec import AsSegment, Origin, PathAttributes, RawAttribute, SegType, Update
from labnet.bgp.rib import Change, Path, PeerInfo, Rib, select_best

LOCAL_AS = 64512
ME = IPv4Address("10.0.0.1")
P = IPv4Network("10.100.5.192/26")


def ip(s: str) -> IPv4Address:
    return IPv4Address(s)


def ibgp(addr: str, rr_client: bool = False, rid: str | None = None, nhs: bool = False) -> PeerInfo:
    return PeerInfo(ip(addr), LOCAL_AS, ip(rid or addr), True, rr_client, nhs)


def ebgp(addr: str, asn: int = 65000) -> PeerInfo:
    return PeerInfo(ip(addr), asn, ip(addr), False)


def seq(*asns: int) -> tuple[AsSegment, ...]:
    return (AsSegment(SegType.AS_SEQUENCE, asns),) if asns else ()


def attrs(nh: str = "10.0.0.9", path: tuple[AsSegment, ...] = (), **kw: object) -> PathAttributes:
    return PathAttributes(origin=Origin.IGP, as_path=path, next_hop=ip(nh), **kw)  # type: ignore[arg-type]


def announce(a: PathAttributes, *prefixes: IPv4Network) -> Update:
    return Update(attrs=a, nlri=prefixes or (P,))


def best_of(*paths: Path) -> Path | None:
    return select_best(list(paths), LOCAL_AS, ME)


# --- decision process ---------------------------------------------------------------------------


def test_highest_local_pref_wins_over_shorter_path() -> None:
    a = Path(P, attrs(path=seq(65000, 65001, 65002), local_pref=200), ibgp("10.0.0.2"))
    b = Path(P, attrs(path=seq(65000), local_pref=100), ibgp("10.0.0.3"))
    assert best_of(a, b) is a


def test_local_pref_from_ebgp_is_ignored() -> None:
    a = Path(P, attrs(path=seq(65000, 1), local_pref=999), ebgp("10.0.0.2"))
    b = Path(P, attrs(path=seq(65000)), ibgp("10.0.0.3"))
    assert best_of(a, b) is b


def test_locally_originated_wins_ties_on_local_pref() -> None:
    mine = Path(P, attrs(), None)
    learned = Path(P, attrs(path=()), ibgp("10.0.0.2"))
    assert best_of(learned, mine) is mine


def test_shortest_as_path_then_lowest_origin() -> None:
    long = Path(P, attrs(path=seq(65000, 65001)), ebgp("10.0.0.2"))
    short = Path(P, attrs(path=seq(65000)), ebgp("10.0.0.3"))
    assert best_of(long, short) is short
    egp = Path(P, replace(attrs(path=seq(65000)), origin=Origin.EGP), ebgp("10.0.0.4"))
    assert best_of(egp, short) is short


def test_as_set_counts_as_one() -> None:
    a = Path(P, attrs(path=(AsSegment(SegType.AS_SET, (1, 2, 3, 4)),)), ebgp("10.0.0.2", 1))
    b = Path(P, attrs(path=seq(65000, 65001)), ebgp("10.0.0.3"))
    assert best_of(a, b) is a


def test_med_compared_only_within_the_same_neighbour_as() -> None:
    a = Path(P, attrs(path=seq(65000), med=50), ebgp("10.0.0.2"))
    b = Path(P, attrs(path=seq(65000), med=10), ebgp("10.0.0.3"))
    assert best_of(a, b) is b
    # different neighbour AS: MED is not compared, the lower router id decides
    c = Path(P, attrs(path=seq(65001), med=500), ebgp("10.0.0.1", 65001))
    assert best_of(a, c) is c


def test_ebgp_beats_ibgp() -> None:
    i = Path(P, attrs(path=seq(65000)), ibgp("10.0.0.2"))
    e = Path(P, attrs(path=seq(65000)), ebgp("10.0.0.3"))
    assert best_of(i, e) is e


def test_lowest_router_id_then_originator_id_then_cluster_list_then_address() -> None:
    a = Path(P, attrs(), ibgp("10.0.0.5", rid="1.1.1.5"))
    b = Path(P, attrs(), ibgp("10.0.0.6", rid="1.1.1.2"))
    assert best_of(a, b) is b
    # a reflected route is compared on its ORIGINATOR_ID, not the reflector's id
    c = Path(P, attrs(originator_id=ip("1.1.1.1"), cluster_list=(ip("9.9.9.9"),)), ibgp("10.0.0.7", rid="1.1.1.9"))
    assert best_of(b, c) is c
    d = Path(P, attrs(originator_id=ip("1.1.1.1")), ibgp("10.0.0.8", rid="1.1.1.9"))
    assert best_of(c, d) is d  # shorter CLUSTER_LIST
    e = Path(P, attrs(originator_id=ip("1.1.1.1")), ibgp("10.0.0.4", rid="1.1.1.9"))
    assert best_of(d, e) is e  # lowest peer address


# --- import -------------------------------------------------------------------------------------


def test_accept_and_withdraw_report_loc_rib_changes() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ebgp("10.0.0.2")
    ch = rib.accept(peer, announce(attrs(path=seq(65000))))
    assert [c.prefix for c in ch] == [P] and ch[0].best is not None
    assert rib.accept(peer, announce(attrs(path=seq(65000)))) == []  # same again: no change
    assert rib.accept(peer, Update(withdrawn=(P,))) == [Change(P, None)]
    assert P not in rib.loc


def test_ebgp_route_with_our_as_is_a_loop() -> None:
    rib = Rib(LOCAL_AS, ME)
    assert rib.accept(ebgp("10.0.0.2"), announce(attrs(path=seq(65000, LOCAL_AS)))) == []


def test_ebgp_first_as_must_be_the_peer() -> None:
    rib = Rib(LOCAL_AS, ME)
    assert rib.accept(ebgp("10.0.0.2"), announce(attrs(path=seq(65099)))) == []


def test_reflected_route_loops_are_dropped() -> None:
    rib = Rib(LOCAL_AS, ME, cluster_id=ip("10.255.0.1"))
    peer = ibgp("10.0.0.2")
    assert rib.accept(peer, announce(attrs(originator_id=ME))) == []
    assert rib.accept(peer, announce(attrs(cluster_list=(ip("10.255.0.1"),)))) == []
    assert rib.accept(peer, announce(attrs(cluster_list=(ip("10.255.0.2"),)))) != []


def test_treat_as_withdraw_update_removes_the_route() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ibgp("10.0.0.2")
    rib.accept(peer, announce(attrs()))
    ch = rib.accept(peer, Update(attrs=attrs(), nlri=(P,), treat_as_withdraw=True))
    assert ch == [Change(P, None)]


# --- export -------------------------------------------------------------------------------------


def test_ebgp_export_prepends_sets_next_hop_self_and_strips_ibgp_attributes() -> None:
    rib = Rib(LOCAL_AS, ME)
    src = ibgp("10.0.0.2")
    rib.accept(src, announce(attrs(path=seq(65001), med=5, local_pref=300,
                                   unknown=(RawAttribute(0xC0, 99, b"x"),))))
    out = rib.export(ebgp("10.0.0.3"), rib.loc[P], ME)
    assert out is not None
    assert out.as_path == seq(LOCAL_AS, 65001) and out.next_hop == ME
    assert out.local_pref is None and out.med is None
    assert out.originator_id is None and out.cluster_list == ()
    assert out.unknown == (RawAttribute(0xE0, 99, b"x"),)  # Partial bit set when passed on


def test_local_route_export() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.originate(P)
    to_i = rib.export(ibgp("10.0.0.2"), rib.loc[P], ME)
    assert to_i == PathAttributes(origin=Origin.IGP, as_path=(), next_hop=ME, local_pref=100)
    to_e = rib.export(ebgp("10.0.0.3"), rib.loc[P], ME)
    assert to_e is not None and to_e.as_path == seq(LOCAL_AS) and to_e.next_hop == ME
    rib.originate(P, ip("10.0.0.77"))
    out = rib.export(ibgp("10.0.0.2"), rib.loc[P], ME)
    assert out is not None and out.next_hop == ip("10.0.0.77")


def test_ibgp_split_horizon() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.accept(ibgp("10.0.0.2"), announce(attrs()))
    assert rib.export(ibgp("10.0.0.3"), rib.loc[P], ME) is None
    assert rib.export(ibgp("10.0.0.2"), rib.loc[P], ME) is None  # never back to its source
    assert rib.export(ebgp("10.0.0.4"), rib.loc[P], ME) is not None


def test_ebgp_learned_goes_to_ibgp_with_next_hop_unchanged_unless_next_hop_self() -> None:
    rib = Rib(LOCAL_AS, ME)
    rib.accept(ebgp("10.0.0.2"), announce(attrs(nh="10.0.0.2", path=seq(65000))))
    out = rib.export(ibgp("10.0.0.3"), rib.loc[P], ME)
    assert out is not None and out.next_hop == ip("10.0.0.2") and out.local_pref == 100
    out = rib.export(ibgp("10.0.0.3", nhs=True), rib.loc[P], ME)
    assert out is not None and out.next_hop == ME


def test_route_reflection_rules() -> None:
    rib = Rib(LOCAL_AS, ME, cluster_id=ip("10.255.0.1"))
    client_a, client_b = ibgp("10.0.0.2", rr_client=True), ibgp("10.0.0.3", rr_client=True)
    nonclient_x, nonclient_y = ibgp("10.0.0.4"), ibgp("10.0.0.5")
    # from a client: reflected to other clients and to non-clients
    rib.accept(client_a, announce(attrs(nh="10.0.0.2")))
    path = rib.loc[P]
    out = rib.export(client_b, path, ME)
    assert out is not None
    assert out.originator_id == ip("10.0.0.2") and out.cluster_list == (ip("10.255.0.1"),)
    assert out.next_hop == ip("10.0.0.2")  # a reflector does not change the next hop
    assert rib.export(nonclient_x, path, ME) is not None
    assert rib.export(client_a, path, ME) is None
    # from a non-client: only to clients
    q = IPv4Network("10.100.9.0/26")
    rib.accept(nonclient_x, announce(attrs(nh="10.0.0.4"), q))
    assert rib.export(client_a, rib.loc[q], ME) is not None
    assert rib.export(nonclient_y, rib.loc[q], ME) is None


def test_reflector_does_not_send_a_route_back_to_its_originator() -> None:
    rib = Rib(LOCAL_AS, ME, cluster_id=ip("10.255.0.1"))
    rib.accept(ibgp("10.0.0.2", rr_client=True), announce(attrs(originator_id=ip("10.0.0.3"))))
    assert rib.export(ibgp("10.0.0.3", rr_client=True), rib.loc[P], ME) is None


def test_out_diff_tracks_adj_rib_out() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ebgp("10.0.0.2")
    rib.originate(P)
    announce_, withdraw = rib.out_diff(peer, ME)
    assert list(announce_) == [P] and withdraw == []
    assert rib.out_diff(peer, ME) == ({}, [])
    rib.withdraw(P)
    assert rib.out_diff(peer, ME, [P]) == ({}, [P])


# --- graceful restart ---------------------------------------------------------------------------


def test_graceful_restart_keeps_stale_routes_until_end_of_rib() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ibgp("10.0.0.2")
    q = IPv4Network("10.100.9.0/26")
    rib.accept(peer, announce(attrs(), P, q))
    # session lost without NOTIFICATION: routes stay (stale), forwarding is not disturbed
    assert rib.peer_down(peer.address, keep_stale=True) == []
    assert rib.loc[P].stale and rib.stale_count(peer.address) == 2
    # the peer comes back and re-announces one of them: that one is fresh again
    assert rib.accept(peer, announce(attrs(), P)) == []
    assert not rib.loc[P].stale and rib.loc[q].stale
    # End-of-RIB: what is still stale goes
    assert rib.sweep_stale(peer.address) == [Change(q, None)]
    assert P in rib.loc and q not in rib.loc


def test_without_graceful_restart_routes_go_at_once() -> None:
    rib = Rib(LOCAL_AS, ME)
    peer = ibgp("10.0.0.2")
    rib.accept(peer, announce(attrs()))
    assert rib.peer_down(peer.address, keep_stale=False) == [Change(P, None)]


def test_stale_route_loses_to_nothing_but_a_better_route() -> None:
    rib = Rib(LOCAL_AS, ME)
    a, b = ibgp("10.0.0.2"), ibgp("10.0.0.3")
    rib.accept(a, announce(attrs(local_pref=200)))
    rib.peer_down(a.address, keep_stale=True)
    rib.accept(b, announce(attrs(local_pref=100)))
    assert rib.loc[P].source == a  # still preferred while stale
    ch = rib.sweep_stale(a.address)  # restart timer ran out
    assert len(ch) == 1 and ch[0].best is not None and ch[0].best.source == b
