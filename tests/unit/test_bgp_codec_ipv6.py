"""BGP codec, IPv6 unicast: RFC 4760 MP_REACH_NLRI/MP_UNREACH_NLRI for AFI 2 SAFI 1 with RFC 2545
next hops. Vectors are hand-assembled from the RFC layouts, not produced by the encoder."""

from __future__ import annotations

import re
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from labnet.bgp.codec import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    Action,
    AsSegment,
    BgpError,
    MpReach,
    MpUnreach,
    Origin,
    PathAttributes,
    Prefix,
    SegType,
    Update,
    decode,
    encode,
    end_of_rib,
    family_of,
    mp_reach6,
    pack_updates,
    prefix_key,
)


def hexv(text: str) -> bytes:
    return bytes.fromhex(re.sub(r"#.*", "", text).replace("\n", " ").replace(" ", ""))


def net6(s: str) -> IPv6Network:
    return IPv6Network(s)


GW = IPv6Address("2001:db8::1")
LL = IPv6Address("fe80::1")

REACH16 = hexv("""
ffffffffffffffffffffffffffffffff
004c 02                               # length 76, UPDATE
0000                                  # no withdrawn routes
0035                                  # total path attribute length 53
  40 01 01 00                         # ORIGIN IGP
  40 02 06 02 01 0000fde9             # AS_PATH (65001)
  80 0e 25 0002 01                    # MP_REACH_NLRI (37 bytes): AFI 2, SAFI 1
     10 20010db8000000000000000000000001   # next hop length 16: 2001:db8::1
     00                                # reserved
     30 20010db80001                   # 2001:db8:1::/48
     40 20010db800020003               # 2001:db8:2:3::/64
""")

REACH32 = hexv("""
ffffffffffffffffffffffffffffffff
005c 02                               # length 92, UPDATE
0000
0045                                  # total path attribute length 69
  40 01 01 00                         # ORIGIN IGP
  40 02 00                            # AS_PATH empty (iBGP)
  80 0e 2c 0002 01                    # MP_REACH_NLRI (44 bytes)
     20 20010db8000000000000000000000001 fe800000000000000000000000000001  # global + link-local
     00
     30 20010db80001                   # 2001:db8:1::/48
  80 0f 0c 0002 01                    # MP_UNREACH_NLRI (12 bytes)
     40 20010db800020003               # 2001:db8:2:3::/64
""")

EOR6 = hexv("""
ffffffffffffffffffffffffffffffff
001d 02 0000 0006
  80 0f 03 0002 01                    # MP_UNREACH_NLRI, AFI 2 SAFI 1, nothing withdrawn
""")


def test_mp_reach_with_a_global_next_hop() -> None:
    msg = decode(REACH16)
    assert isinstance(msg, Update) and not msg.errors
    assert msg.attrs.mp_reach == MpReach(2, 1, GW.packed, (net6("2001:db8:1::/48"), net6("2001:db8:2:3::/64")))
    assert msg.attrs.next_hop is None and msg.next_hop() is None
    assert msg.next_hop6() == (GW, None)
    assert msg.announced() == (net6("2001:db8:1::/48"), net6("2001:db8:2:3::/64"))
    assert msg.unreachable() == () and msg.end_of_rib_family() is None
    assert _mp_first(encode(msg), msg)


def test_mp_reach_with_global_and_link_local_next_hops_and_mp_unreach() -> None:
    msg = decode(REACH32)
    assert isinstance(msg, Update) and not msg.errors
    assert msg.attrs.mp_reach == mp_reach6(GW, (net6("2001:db8:1::/48"),), LL)
    assert msg.attrs.mp_unreach == MpUnreach(2, 1, (net6("2001:db8:2:3::/64"),))
    assert msg.next_hop6() == (GW, LL)
    assert msg.announced() == (net6("2001:db8:1::/48"),)
    assert msg.unreachable() == (net6("2001:db8:2:3::/64"),)
    assert _mp_first(encode(msg), msg)


def _mp_first(wire: bytes, msg: Update) -> bool:
    """Our encoding: the same update, with the MP attributes first (RFC 7606 5.1)."""
    first_attr = wire[19 + 2 + 2:][1]  # after the header, withdrawn length 0, attributes length
    return decode(wire) == msg and first_attr in (14, 15)


def test_zero_link_local_is_no_link_local() -> None:
    assert MpReach(2, 1, GW.packed + bytes(16), ()).next_hops6() == (GW, None)
    assert MpReach(1, 1, IPv4Address("10.0.0.1").packed, ()).next_hops6() is None


def test_ipv6_end_of_rib() -> None:
    msg = decode(EOR6)
    assert msg == end_of_rib(IPV6_UNICAST)
    assert isinstance(msg, Update) and msg.end_of_rib_family() == IPV6_UNICAST and not msg.is_end_of_rib()
    assert encode(end_of_rib(IPV6_UNICAST)) == EOR6
    assert end_of_rib(IPV4_UNICAST) == end_of_rib() == Update()


def test_ipv4_and_ipv6_in_one_update() -> None:
    u = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address("10.0.0.1"),
                                    mp_reach=mp_reach6(GW, (net6("2001:db8::/32"),))),
               nlri=(IPv4Network("10.1.0.0/16"),), withdrawn=(IPv4Network("10.2.0.0/16"),))
    back = decode(encode(u))
    assert back == u and isinstance(back, Update)
    assert back.announced() == (IPv4Network("10.1.0.0/16"), net6("2001:db8::/32"))
    assert back.next_hop() == IPv4Address("10.0.0.1") and back.next_hop6() == (GW, None)


@pytest.mark.parametrize("reach", [
    mp_reach6(GW, (net6("::/0"), net6("2001:db8::/127"), net6("2001:db8::5/128"))),
    mp_reach6(GW, (net6("2001:db8:1::/48"),), LL),
    mp_reach6(GW, ()),
])
def test_round_trip(reach: MpReach) -> None:
    u = Update(attrs=PathAttributes(origin=Origin.EGP, as_path=(AsSegment(SegType.AS_SEQUENCE, (65000,)),),
                                    mp_reach=reach, mp_unreach=MpUnreach(2, 1, (net6("2001:db8:9::/48"),))))
    assert decode(encode(u)) == u
    assert decode(encode(u, four_octet=False), four_octet=False) == u


def test_host_bits_past_the_prefix_length_are_cleared() -> None:
    # /30 over 2001:0dbb: the last two bits are past the length, as for IPv4
    mp = bytes.fromhex("800f08 000201 1e 20010dbb")
    msg = decode(build_update(mp))
    assert isinstance(msg, Update) and msg.unreachable() == (net6("2001:db8::/30"),)


def test_other_families_are_not_ours() -> None:
    mp = bytes.fromhex("800e1a 000202 10") + GW.packed + bytes.fromhex("00 20 20010db8")  # IPv6 multicast
    msg = decode(build_update(ORIGIN + ASPATH + mp))
    assert isinstance(msg, Update) and msg.attrs.mp_reach == MpReach(2, 2, GW.packed, ())
    assert msg.announced() == () and msg.next_hop6() is None


def build_update(attrs: bytes) -> bytes:
    body = struct.pack("!HH", 0, len(attrs)) + attrs
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), 2) + body


ORIGIN = bytes.fromhex("40010100")
ASPATH = bytes.fromhex("400200")


def reach(nhlen: int, nh: bytes, nlri: bytes = bytes.fromhex("30 20010db80001")) -> bytes:
    value = struct.pack("!HBB", 2, 1, nhlen) + nh + b"\x00" + nlri
    return struct.pack("!BBB", 0x80, 14, len(value)) + value


@pytest.mark.parametrize("mp,sub", [
    (reach(4, bytes.fromhex("0a000001")), 9),          # an IPv4-sized next hop for IPv6 unicast
    (reach(24, bytes(range(24))), 9),                  # neither 16 nor 32
    (reach(0, b""), 9),
    (reach(48, GW.packed * 3), 9),
    (bytes.fromhex("800e05 000201 10 00"), 9),         # next hop length 16 overruns the attribute
    (reach(16, GW.packed, bytes.fromhex("81") + bytes(17)), 10),   # prefix length 129
    (reach(16, GW.packed, bytes.fromhex("40 20010db8")), 10),      # a /64 cut short
    (bytes.fromhex("800f04 000201 81"), 10),           # MP_UNREACH prefix length 129
    (bytes.fromhex("800f05 000201 30 2001"), 10),      # MP_UNREACH /48 cut short
])
def test_malformed_ipv6_mp_attributes_reset_the_session(mp: bytes, sub: int) -> None:
    with pytest.raises(BgpError) as ei:
        decode(build_update(ORIGIN + ASPATH + mp))
    e = ei.value
    assert (e.code, e.subcode, e.action) == (3, sub, Action.SESSION_RESET), str(e)


@pytest.mark.parametrize("nh", [IPv6Address("::"), IPv6Address("ff02::1"), IPv6Address("::1"), IPv6Address("fe80::1"),
                                IPv6Address("::ffff:10.0.0.1")])
def test_unusable_ipv6_next_hop_is_treat_as_withdraw(nh: IPv6Address) -> None:
    msg = decode(build_update(ORIGIN + ASPATH + reach(16, nh.packed)))
    assert isinstance(msg, Update) and msg.treat_as_withdraw
    assert [(e.code, e.subcode, e.action) for e in msg.errors] == [(3, 8, Action.TREAT_AS_WITHDRAW)]
    assert msg.announced() == () and msg.unreachable() == (net6("2001:db8:1::/48"),)


def test_a_broken_attribute_list_before_the_mp_attributes_resets_the_session() -> None:
    # RFC 7606 5.1: an overrun ORIGIN hides what follows; with no classic NLRI the routes can
    # only be in an MP attribute that cannot be located, so they cannot be withdrawn
    overrun = bytes.fromhex("400105") + b"\x00"
    with pytest.raises(BgpError) as ei:
        decode(build_update(overrun))
    assert (ei.value.code, ei.value.subcode, ei.value.action) == (3, 1, Action.SESSION_RESET), str(ei.value)
    # the same break after the MP attribute was read: its routes are found and withdrawn
    msg = decode(build_update(reach(16, GW.packed) + ORIGIN + bytes.fromhex("400205") + b"\x00"))
    assert isinstance(msg, Update) and msg.treat_as_withdraw and msg.unreachable() == (net6("2001:db8:1::/48"),)


def test_missing_origin_makes_ipv6_announcements_withdrawals() -> None:
    msg = decode(build_update(ASPATH + reach(16, GW.packed)))
    assert isinstance(msg, Update) and msg.treat_as_withdraw
    assert msg.unreachable() == (net6("2001:db8:1::/48"),)


# --- packing ------------------------------------------------------------------------------------


def test_pack_updates_puts_ipv6_in_mp_attributes_under_4096() -> None:
    prefixes = [IPv6Network(((0x20010DB8 << 96) | (i << 64), 64)) for i in range(2000)]
    attrs = PathAttributes(origin=Origin.IGP, as_path=(), local_pref=100, mp_reach=mp_reach6(GW))
    ups = list(pack_updates(attrs, prefixes, prefixes[:1500]))
    assert all(len(encode(u)) <= 4096 for u in ups)
    gone = [u for u in ups if u.attrs.mp_unreach is not None]
    new = [u for u in ups if u.attrs.mp_reach is not None]
    assert len(gone) + len(new) == len(ups) and len(gone) >= 2 and len(new) >= 2
    assert [p for u in gone for p in u.attrs.mp_unreach.withdrawn] == prefixes[:1500]  # type: ignore[union-attr]
    assert [p for u in new for p in u.attrs.mp_reach.nlri] == prefixes  # type: ignore[union-attr]
    for u in new:
        assert u.attrs.next_hop is None and u.nlri == () and u.withdrawn == ()
        assert u.next_hop6() == (GW, None) and u.attrs.local_pref == 100
        assert decode(encode(u)) == u


def test_pack_updates_keeps_the_families_apart() -> None:
    v4, v6 = [IPv4Network("10.1.0.0/16")], [net6("2001:db8::/32")]
    attrs = PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address("10.0.0.1"), mp_reach=mp_reach6(GW))
    ups = list(pack_updates(attrs, [*v4, *v6], [*v6, *v4]))
    assert ups == [
        Update(withdrawn=(IPv4Network("10.1.0.0/16"),)),
        Update(attrs=PathAttributes(mp_unreach=MpUnreach(2, 1, tuple(v6)))),
        Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address("10.0.0.1")),
               nlri=(IPv4Network("10.1.0.0/16"),)),
        Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), mp_reach=mp_reach6(GW, tuple(v6)))),
    ]


def test_pack_updates_needs_an_ipv6_next_hop() -> None:
    with pytest.raises(ValueError, match="no IPv6 unicast MP_REACH_NLRI"):
        list(pack_updates(PathAttributes(origin=Origin.IGP, as_path=()), [net6("2001:db8::/32")], []))


def test_family_helpers() -> None:
    assert family_of(IPv4Network("10.0.0.0/8")) == IPV4_UNICAST and family_of(net6("::/0")) == IPV6_UNICAST
    mixed: list[Prefix] = [net6("2001:db8::/32"), IPv4Network("10.0.0.0/8"), IPv4Network("9.0.0.0/8"), net6("::/0")]
    assert sorted(mixed, key=prefix_key) == [mixed[2], mixed[1], mixed[3], mixed[0]]
