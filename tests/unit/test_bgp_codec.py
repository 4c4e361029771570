"""BGP codec: RFC byte vectors from fixtures/bgp, round trips, and exact error codes per field."""

from __future__ import annotations

import re
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from labnet.bgp.codec import (
    AS_TRANS,
    IPV4_UNICAST,
    Action,
    AsSegment,
    BgpError,
    Capabilities,
    Framer,
    GracefulRestart,
    Keepalive,
    MpReach,
    MpUnreach,
    Notification,
    Open,
    Origin,
    PathAttributes,
    RawAttribute,
    RouteRefresh,
    SegType,
    Update,
    decode,
    encode,
    end_of_rib,
    pack_updates,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bgp"


def vector(name: str) -> bytes:
    text = (FIXTURES / f"{name}.hex").read_text()
    return bytes.fromhex(re.sub(r"#.*", "", text).replace("\n", " ").replace(" ", ""))


def net(s: str) -> IPv4Network:
    return IPv4Network(s)


def ip(s: str) -> IPv4Address:
    return IPv4Address(s)


# --- fixtures decode to what the RFC layout says, and re-encode byte for byte -----------------


def test_open_vector() -> None:
    msg = decode(vector("open_as4_gr"))
    assert msg == Open(
        asn=4200000001, hold_time=9, router_id=ip("10.0.0.2"),
        capabilities=Capabilities(
            four_octet_as=4200000001, multiprotocol=(IPV4_UNICAST,), route_refresh=True,
            graceful_restart=GracefulRestart(120, restarting=True, afis=((1, 1, True),)),
        ),
    )
    assert encode(msg) == vector("open_as4_gr")


def test_open_small_as_goes_in_my_as_field() -> None:
    raw = encode(Open(asn=64512, hold_time=90, router_id=ip("10.0.0.1"),
                      capabilities=Capabilities(four_octet_as=64512)))
    assert struct.unpack_from("!H", raw, 20)[0] == 64512
    big = encode(Open(asn=65536, hold_time=90, router_id=ip("10.0.0.1")))
    assert struct.unpack_from("!H", big, 20)[0] == AS_TRANS


def test_update_ebgp_vector() -> None:
    msg = decode(vector("update_ebgp"))
    assert isinstance(msg, Update)
    assert msg.withdrawn == (net("10.9.0.0/16"),)
    assert msg.nlri == (net("10.100.5.192/26"), net("192.168.0.0/16"))
    a = msg.attrs
    assert a.origin == Origin.IGP
    assert a.as_path == (AsSegment(SegType.AS_SEQUENCE, (65000, 65001)),)
    assert a.next_hop == ip("10.0.0.2") and a.med == 50
    assert a.communities == ((65000 << 16) | 100,)
    assert not msg.errors and not msg.treat_as_withdraw
    assert encode(msg) == vector("update_ebgp")


def test_update_reflected_vector_keeps_unknown_transitive() -> None:
    msg = decode(vector("update_ibgp_reflected"))
    assert isinstance(msg, Update)
    a = msg.attrs
    assert a.origin == Origin.INCOMPLETE and a.as_path == ()
    assert a.local_pref == 200 and a.originator_id == ip("10.0.0.9")
    assert a.cluster_list == (ip("10.0.0.1"),)
    assert a.atomic_aggregate and a.aggregator == (64512, ip("1.1.1.1"))
    assert a.unknown == (RawAttribute(0xE0, 200, bytes.fromhex("aabbcc")),)
    assert msg.nlri == (net("10.100.0.0/26"),)
    assert encode(msg) == vector("update_ibgp_reflected")


def test_update_mp_vector() -> None:
    msg = decode(vector("update_mp"))
    assert isinstance(msg, Update)
    assert msg.attrs.mp_reach == MpReach(1, 1, ip("10.0.0.2").packed, (net("10.100.7.0/24"),))
    assert msg.attrs.mp_unreach == MpUnreach(1, 1, (net("10.100.8.0/24"),))
    assert msg.announced() == (net("10.100.7.0/24"),)
    assert msg.unreachable() == (net("10.100.8.0/24"),)
    assert msg.next_hop() == ip("10.0.0.2")
    # re-encoded with the MP attributes first (RFC 7606 5.1), the vector had them last
    wire = encode(msg)
    assert decode(wire) == msg and wire[19 + 4 + 1] == 14 and len(wire) == len(vector("update_mp"))


@pytest.mark.parametrize("name,expected", [
    ("end_of_rib", end_of_rib()),
    ("keepalive", Keepalive()),
    ("notification_hold_timer", Notification(4, 0)),
    ("notification_bad_version", Notification(2, 1, b"\x00\x04")),
    ("route_refresh", RouteRefresh(1, 1)),
])
def test_small_vectors(name: str, expected: object) -> None:
    assert decode(vector(name)) == expected
    assert encode(expected) == vector(name)  # type: ignore[arg-type]


def test_end_of_rib_detection() -> None:
    assert end_of_rib().is_end_of_rib()
    assert Update(attrs=PathAttributes(mp_unreach=MpUnreach(1, 1, ()))).is_end_of_rib()
    ipv6_eor = Update(attrs=PathAttributes(mp_unreach=MpUnreach(2, 1, ())))
    assert not ipv6_eor.is_end_of_rib() and ipv6_eor.end_of_rib_family() == (2, 1)
    assert not Update(withdrawn=(net("10.0.0.0/8"),)).is_end_of_rib()


# --- round trips ------------------------------------------------------------------------------

FULL_ATTRS = PathAttributes(
    origin=Origin.EGP,
    as_path=(AsSegment(SegType.AS_SEQUENCE, (65000, 4200000000)), AsSegment(SegType.AS_SET, (1, 2, 3))),
    next_hop=ip("192.0.2.1"), med=7, local_pref=300, atomic_aggregate=True,
    aggregator=(4200000000, ip("192.0.2.9")), communities=(1, 0xFFFFFF01),
    originator_id=ip("10.1.1.1"), cluster_list=(ip("10.2.2.2"), ip("10.3.3.3")),
    unknown=(RawAttribute(0xC0, 99, b"hello"),),
)


@pytest.mark.parametrize("msg", [
    Open(asn=64512, hold_time=0, router_id=ip("10.20.30.71")),
    Open(asn=64512, hold_time=3, router_id=ip("10.20.30.71"), capabilities=Capabilities(
        four_octet_as=64512, multiprotocol=(IPV4_UNICAST, (2, 1)), route_refresh=True,
        graceful_restart=GracefulRestart(4095, False, True, ((1, 1, False), (2, 1, True))),
        unknown=((70, b""), (73, b"host")))),
    Update(),
    Update(withdrawn=(net("0.0.0.0/0"), net("10.0.0.0/8"), net("10.100.5.192/26"), net("1.2.3.4/32"))),
    Update(attrs=FULL_ATTRS, nlri=(net("10.100.0.0/26"),)),
    Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), mp_reach=MpReach(1, 1, ip("10.0.0.1").packed,
                                                                            (net("10.1.0.0/16"),)))),
    Keepalive(),
    Notification(6, 7, b"why"),
    RouteRefresh(1, 1, 2),
], ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    raw = encode(msg)  # type: ignore[arg-type]
    assert decode(raw) == msg


def test_two_octet_as_path_round_trip() -> None:
    u = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(AsSegment(SegType.AS_SEQUENCE, (65000, 64512)),),
                                    next_hop=ip("10.0.0.1"), aggregator=(64512, ip("1.1.1.1"))),
               nlri=(net("10.0.0.0/24"),))
    raw = encode(u, four_octet=False)
    assert len(raw) < len(encode(u))
    assert decode(raw, four_octet=False) == u


def test_long_as_path_and_extended_length() -> None:
    asns = tuple(range(1, 301))  # 1200 bytes of AS_PATH: extended length, split into 2 segments
    u = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(AsSegment(SegType.AS_SEQUENCE, asns),),
                                    next_hop=ip("10.0.0.1")), nlri=(net("10.0.0.0/24"),))
    back = decode(encode(u))
    assert isinstance(back, Update)
    assert back.attrs.as_path_asns() == asns and back.attrs.as_path_length() == 300


def test_pack_updates_splits_under_4096() -> None:
    prefixes = [IPv4Network((0x0A000000 + (i << 8), 24)) for i in range(3000)]
    attrs = PathAttributes(origin=Origin.IGP, as_path=(), next_hop=ip("10.0.0.1"))
    ups = list(pack_updates(attrs, prefixes, prefixes[:2000]))
    assert all(len(encode(u)) <= 4096 for u in ups)
    assert [p for u in ups for p in u.nlri] == prefixes
    assert [p for u in ups for p in u.withdrawn] == prefixes[:2000]


def test_framer_splits_stream_byte_by_byte() -> None:
    stream = vector("open_as4_gr") + vector("keepalive") + vector("update_ebgp") + vector("end_of_rib")
    f = Framer()
    frames = [fr for b in stream for fr in f.feed(bytes([b]))]
    assert [type(decode(fr)).__name__ for fr in frames] == ["Open", "Keepalive", "Update", "Update"]
    assert f.pending() == 0
    assert Framer().feed(stream) == frames


def test_framer_rejects_bad_marker_before_the_body_arrives() -> None:
    with pytest.raises(BgpError) as ei:
        Framer().feed(b"\xff" * 15 + b"\x00" + b"\x00\x13\x04")
    assert (ei.value.code, ei.value.subcode) == (1, 1)


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ValueError, match="4096"):
        encode(Update(withdrawn=tuple(IPv4Network((i << 8, 24)) for i in range(1100))))


# --- mutations: each malformed field gives the RFC's code/subcode -----------------------------


def mutate(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


def relength(raw: bytes) -> bytes:
    return raw[:16] + struct.pack("!H", len(raw)) + raw[18:]


def err(raw: bytes) -> BgpError:
    with pytest.raises(BgpError) as ei:
        decode(raw)
    return ei.value


KA = vector("keepalive")
OPEN = vector("open_as4_gr")
UPD = vector("update_ebgp")


@pytest.mark.parametrize("raw,code,sub", [
    (mutate(KA, 3, b"\x00"), 1, 1),                     # marker not all ones
    (mutate(KA, 16, b"\x00\x12"), 1, 2),                # length 18 < 19
    (mutate(KA, 16, b"\x10\x01"), 1, 2),                # length 4097 > 4096
    (relength(KA + b"\x00"), 1, 2),                     # KEEPALIVE must be exactly 19
    (relength(OPEN[:28]), 1, 2),                        # OPEN shorter than 29
    (relength(vector("notification_hold_timer")[:20]), 1, 2),
    (relength(vector("route_refresh") + b"\x00"), 1, 2),
    (mutate(KA, 18, b"\x06"), 1, 3),                    # message type 6
    (mutate(KA, 18, b"\x00"), 1, 3),
    (mutate(OPEN, 19, b"\x03"), 2, 1),                  # BGP version 3
    (mutate(OPEN, 22, b"\x00\x01"), 2, 6),              # hold time 1
    (mutate(OPEN, 22, b"\x00\x02"), 2, 6),              # hold time 2
    (mutate(OPEN, 24, b"\x00\x00\x00\x00"), 2, 3),      # BGP identifier 0.0.0.0
    (mutate(OPEN, 24, b"\xe0\x00\x00\x05"), 2, 3),      # multicast identifier
    (mutate(OPEN, 29, b"\x03"), 2, 4),                  # optional parameter type 3
    (mutate(OPEN, 49, b"\x00\x00\x00\x00"), 2, 2),      # 4-octet AS capability = 0
    (mutate(OPEN, 28, b"\x17"), 2, 0),                  # parameters length disagrees with message
    (mutate(UPD, 19, b"\x00\xff"), 3, 1),               # withdrawn length overruns
    (mutate(UPD, 24, b"\x00\xff"), 3, 1),               # total attribute length overruns
    (mutate(UPD, 64, b"\x21"), 3, 10),                  # NLRI prefix length 33
    (mutate(UPD, 21, b"\x28"), 3, 10),                  # withdrawn prefix length 40
    (relength(UPD[:-1]), 3, 10),                        # last NLRI prefix truncated
    (mutate(UPD, 57, b"\x40\x63"), 3, 2),               # unknown well-known attribute 99
])
def test_session_reset_errors(raw: bytes, code: int, sub: int) -> None:
    e = err(raw)
    assert (e.code, e.subcode) == (code, sub), str(e)
    assert e.action == Action.SESSION_RESET


def test_bad_version_notification_data_names_version_4() -> None:
    assert err(mutate(OPEN, 19, b"\x05")).data == b"\x00\x04"


def test_bad_length_notification_data_is_the_length_field() -> None:
    assert err(mutate(KA, 16, b"\x00\x12")).data == b"\x00\x12"


def test_acceptable_hold_times() -> None:
    for hold in (0, 3, 65535):
        msg = decode(mutate(OPEN, 22, struct.pack("!H", hold)))
        assert isinstance(msg, Open) and msg.hold_time == hold


@pytest.mark.parametrize("offset,value,sub", [
    (29, b"\x03", 6),             # ORIGIN 3
    (26, b"\xc0", 4),             # ORIGIN flagged optional
    (33, b"\x05", 11),            # AS_PATH segment type 5
    (34, b"\x03", 11),            # AS_PATH segment count overruns
    (34, b"\x00", 11),            # empty AS_PATH segment
    (46, b"\x00\x00\x00\x00", 8),  # NEXT_HOP 0.0.0.0
    (46, b"\xe0\x00\x00\x05", 8),  # NEXT_HOP multicast
    (50, b"\x40", 4),             # MED flagged well-known
])
def test_treat_as_withdraw_errors(offset: int, value: bytes, sub: int) -> None:
    msg = decode(mutate(UPD, offset, value))
    assert isinstance(msg, Update)
    assert msg.treat_as_withdraw
    assert [(e.code, e.subcode, e.action) for e in msg.errors][0] == (3, sub, Action.TREAT_AS_WITHDRAW)
    # RFC 7606 2: the update's NLRI become withdrawals
    assert msg.announced() == ()
    assert set(msg.unreachable()) == {net("10.9.0.0/16"), net("10.100.5.192/26"), net("192.168.0.0/16")}


def build_update(attrs: bytes, nlri: bytes = b"\x18\x0a\x00\x01", withdrawn: bytes = b"") -> bytes:
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), 2) + body


ORIGIN = bytes.fromhex("40010100")
ASPATH = bytes.fromhex("400200")
NH = bytes.fromhex("4003040a000001")


@pytest.mark.parametrize("attrs,sub,action", [
    (ASPATH + NH, 3, Action.TREAT_AS_WITHDRAW),                                   # ORIGIN missing
    (ORIGIN + NH, 3, Action.TREAT_AS_WITHDRAW),                                   # AS_PATH missing
    (ORIGIN + ASPATH, 3, Action.TREAT_AS_WITHDRAW),                               # NEXT_HOP missing
    (bytes.fromhex("4001020000") + ASPATH + NH, 5, Action.TREAT_AS_WITHDRAW),     # ORIGIN length 2
    (ORIGIN + ASPATH + bytes.fromhex("40030300000a"), 5, Action.TREAT_AS_WITHDRAW),  # NEXT_HOP length 3
    (ORIGIN + ASPATH + NH + bytes.fromhex("4005020001"), 5, Action.TREAT_AS_WITHDRAW),  # LOCAL_PREF length 2
    (ORIGIN + ASPATH + NH + bytes.fromhex("800403000001"), 5, Action.TREAT_AS_WITHDRAW),  # MED length 3
    (ORIGIN + ASPATH + NH + bytes.fromhex("c00803000001"), 5, Action.TREAT_AS_WITHDRAW),  # COMMUNITIES length 3
    (ORIGIN + ASPATH + NH + bytes.fromhex("800903010101"), 5, Action.TREAT_AS_WITHDRAW),  # ORIGINATOR_ID len 3
    (ORIGIN + ASPATH + NH + bytes.fromhex("800a050101010101"), 5, Action.TREAT_AS_WITHDRAW),  # CLUSTER_LIST 5
    (ORIGIN + ASPATH + NH + bytes.fromhex("c0080a0001"), 5, Action.TREAT_AS_WITHDRAW),  # attribute overruns
    (ORIGIN + ASPATH + NH + bytes.fromhex("4006" "0100"), 5, Action.ATTRIBUTE_DISCARD),  # ATOMIC_AGGREGATE len 1
    (ORIGIN + ASPATH + NH + bytes.fromhex("c007070000fc0001010101")[:10], 5, Action.ATTRIBUTE_DISCARD),  # AGGREGATOR 7
    (ORIGIN + ORIGIN + ASPATH + NH, 1, Action.ATTRIBUTE_DISCARD),                 # repeated ORIGIN
])
def test_rfc7606_update_errors(attrs: bytes, sub: int, action: Action) -> None:
    msg = decode(build_update(attrs))
    assert isinstance(msg, Update)
    assert [(e.code, e.subcode, e.action) for e in msg.errors] == [(3, sub, action)], msg.errors
    if action == Action.ATTRIBUTE_DISCARD:
        assert not msg.treat_as_withdraw and msg.announced() == (net("10.0.1.0/24"),)
    else:
        assert msg.treat_as_withdraw and msg.unreachable() == (net("10.0.1.0/24"),)


def test_repeated_origin_keeps_the_first() -> None:
    msg = decode(build_update(ORIGIN + bytes.fromhex("40010102") + ASPATH + NH))
    assert isinstance(msg, Update) and msg.attrs.origin == Origin.IGP


def test_withdrawal_only_needs_no_attributes() -> None:
    msg = decode(build_update(b"", nlri=b"", withdrawn=b"\x18\x0a\x00\x01"))
    assert isinstance(msg, Update) and not msg.errors and msg.unreachable() == (net("10.0.1.0/24"),)


@pytest.mark.parametrize("attrs,sub", [
    (ORIGIN + ASPATH + bytes.fromhex("800e0c00010104") + b"\x0a\x00\x00\x01" + b"\x00\x18\x0a\x00",
     10),  # MP_REACH with a truncated /24 in its NLRI → invalid network field
    (ORIGIN + ASPATH + bytes.fromhex("800e0800010103") + b"\x0a\x00\x00\x00", 9),  # next hop length 3
    (ORIGIN + ASPATH + bytes.fromhex("800e0400010104"), 9),                         # MP_REACH too short
    (ORIGIN + ASPATH + bytes.fromhex("800f0400010121") + bytes.fromhex("800f0400010121"), 10),  # /33
    (ORIGIN + ASPATH + bytes.fromhex("800f03000101") * 2, 1),                       # repeated MP_UNREACH
    (ORIGIN + ASPATH + bytes.fromhex("c00f03000101"), 4),                           # MP_UNREACH flags
])
def test_mp_attribute_errors_reset_the_session(attrs: bytes, sub: int) -> None:
    e = err(build_update(attrs, nlri=b""))
    assert (e.code, e.subcode, e.action) == (3, sub, Action.SESSION_RESET), str(e)


def test_unknown_optional_non_transitive_is_dropped_and_transitive_kept() -> None:
    msg = decode(build_update(ORIGIN + ASPATH + NH + bytes.fromhex("80fe0101") + bytes.fromhex("c0fd0102")))
    assert isinstance(msg, Update)
    assert msg.attrs.unknown == (RawAttribute(0xC0, 0xFD, b"\x02"),)


def test_route_refresh_bad_length_by_subtype() -> None:
    rr = vector("route_refresh")
    assert (err(relength(rr + b"\x00")).code, err(relength(rr + b"\x00")).subcode) == (1, 2)
    borr = mutate(rr, 21, b"\x01")
    e = err(relength(borr + b"\x00"))
    assert (e.code, e.subcode) == (7, 1)


def test_error_message_names_the_problem() -> None:
    e = err(mutate(OPEN, 22, b"\x00\x01"))
    assert "2/6" in str(e) and "unacceptable hold time" in str(e) and "hold time 1s" in str(e)


def test_as4_path_rebuilt_from_a_two_octet_peer() -> None:
    """RFC 6793 4.2.3: an old speaker prepended 65001 in front of a path whose 4-octet ASes it only
    knows as AS_TRANS; the leading ASes of AS_PATH plus AS4_PATH give the real path."""
    as_path = bytes.fromhex("40020a" "0204" "fde9" "5ba0" "5ba0" "fde8")     # 65001 23456 23456 65000
    as4 = bytes.fromhex("c0110e" "0203" "fa56ea00" "fa56ea01" "0000fde8")     # 4200000000 4200000001 65000
    msg = decode(build_update(ORIGIN + as_path + NH + as4), four_octet=False)
    assert isinstance(msg, Update) and not msg.errors
    assert msg.attrs.as_path == (AsSegment(SegType.AS_SEQUENCE, (65001, 4200000000, 4200000001, 65000)),)
    assert msg.attrs.unknown == ()


def test_as4_attributes_ignored_after_an_old_aggregator_and_dropped_between_new_speakers() -> None:
    as_path = bytes.fromhex("400206" "0202" "5ba0" "fde8")
    as4 = bytes.fromhex("c0110a" "0202" "fa56ea00" "0000fde8")
    aggr = bytes.fromhex("c00706" "fde9" "01010101")                         # AGGREGATOR AS 65001 (2-octet)
    msg = decode(build_update(ORIGIN + as_path + NH + aggr + as4), four_octet=False)
    assert isinstance(msg, Update) and msg.attrs.as_path_asns() == (23456, 65000)
    four = bytes.fromhex("40020a" "0202" "0000fde9" "0000fde8")
    msg = decode(build_update(ORIGIN + four + NH + as4))
    assert isinstance(msg, Update) and msg.attrs.as_path_asns() == (65001, 65000) and msg.attrs.unknown == ()


def test_malformed_as4_path_is_discarded() -> None:
    as_path = bytes.fromhex("400204" "0201" "5ba0")
    bad_as4 = bytes.fromhex("c01103" "0202" "00")
    msg = decode(build_update(ORIGIN + as_path + NH + bad_as4), four_octet=False)
    assert isinstance(msg, Update) and not msg.treat_as_withdraw
    assert [(e.code, e.subcode, e.action) for e in msg.errors] == [(3, 9, Action.ATTRIBUTE_DISCARD)]
    assert msg.attrs.as_path_asns() == (23456,)
