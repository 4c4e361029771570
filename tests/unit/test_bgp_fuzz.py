"""Fuzzing the BGP decoder: any input decodes or raises BgpError with an RFC code/subcode pair.

Never any other exception: a peer's bytes must not be able to crash the speaker.
"""

from __future__ import annotations

import re
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labnet.bgp.codec import (
    VALID_ERRORS,
    AsSegment,
    BgpError,
    Capabilities,
    Framer,
    GracefulRestart,
    Message,
    MpUnreach,
    Open,
    Origin,
    PathAttributes,
    RawAttribute,
    SegType,
    Update,
    decode,
    encode,
    mp_reach6,
)
from labnet.fuzz.gen import bgp_ipv6_seeds

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bgp"
SEEDS = [
    bytes.fromhex(re.sub(r"#.*", "", p.read_text()).replace("\n", " ").replace(" ", ""))
    for p in sorted(FIXTURES.glob("*.hex"))
] + bgp_ipv6_seeds()  # IPv6 unicast MP_REACH/MP_UNREACH_NLRI, until fixtures/bgp has such vectors
MARKER = b"\xff" * 16
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# RFC 4271 6.1: the smallest (and, for KEEPALIVE, the only) length of each message type
MIN_LEN = {1: 29, 2: 23, 3: 21, 4: 19, 5: 23}
# once the header is sound, the error's code is the message's own (RFC 4271 6.2/6.3, RFC 7313 5)
CODE_OF_TYPE = {1: {2}, 2: {3}, 3: set(), 4: set(), 5: {7, 1}}


def expected_error(data: bytes) -> tuple[int, int] | None:
    """The (code, subcode) the RFCs fix for `data`, where they fix one; None where the body decides.

    Written from RFC 4271 6.1/6.2 independently of the codec: header errors, then OPEN's version.
    """
    if len(data) < 19:
        return (1, 2)
    if data[:16] != MARKER:
        return (1, 1)
    length, mtype = struct.unpack_from("!HB", data, 16)
    if not 19 <= length <= 4096:
        return (1, 2)
    if mtype not in MIN_LEN:
        return (1, 3)
    if length < MIN_LEN[mtype] or (mtype == 4 and length != 19) or length != len(data):
        return (1, 2)
    if mtype == 1 and data[19] != 4:
        return (2, 1)  # unsupported version number, checked before anything else in the OPEN
    return None


def check_decoder(data: bytes) -> None:
    want = expected_error(data)
    for four_octet in (True, False):
        try:
            msg = decode(data, four_octet)
        except BgpError as e:
            got = (e.code, e.subcode)
            assert got in VALID_ERRORS, f"invalid error pair {e.code}/{e.subcode}: {e}"
            if want is not None:
                assert got == want, f"{data.hex()}: expected error {want}, decoder raised {got}: {e}"
            else:
                allowed = CODE_OF_TYPE[data[18]]
                assert e.code in allowed, f"{data.hex()}: message type {data[18]} with a sound header: " \
                                          f"expected error code in {sorted(allowed)}, got {got}: {e}"
            continue
        assert want is None, f"{data.hex()}: expected error {want}, decoded {msg!r}"
        if isinstance(msg, Update):
            for problem in msg.errors:
                assert (problem.code, problem.subcode) in VALID_ERRORS, str(problem)
            # whatever decoded must be usable by the RIB without surprises
            msg.announced(), msg.unreachable(), msg.next_hop(), msg.next_hop6(), msg.end_of_rib_family()
            msg.attrs.as_path_length(), msg.attrs.neighbour_as()


def framed(mtype: int, body: bytes) -> bytes:
    return MARKER + struct.pack("!HB", (19 + len(body)) & 0xFFFF, mtype) + body


OPEN_BODY = bytes.fromhex("04fc00005a0a141e4900")  # version 4, AS 64512, hold 90, id 10.20.30.73, no params
DETERMINED = [
    ("18 bytes", MARKER + b"\x00\x13", (1, 2)),
    ("marker not all ones", b"\xfe" + MARKER[1:] + b"\x00\x13\x04", (1, 1)),
    ("length 4097", MARKER + struct.pack("!HB", 4097, 4) + bytes(4078), (1, 2)),
    ("type 9", framed(9, b""), (1, 3)),
    ("KEEPALIVE of 20 bytes", framed(4, b"\x00"), (1, 2)),
    ("UPDATE of 22 bytes", framed(2, b"\x00\x00\x00"), (1, 2)),
    ("length field 1 byte short", framed(4, b"") + b"\x00", (1, 2)),
    ("OPEN version 3", framed(1, b"\x03" + OPEN_BODY[1:]), (2, 1)),
]


@pytest.mark.parametrize(("what", "data", "want"), DETERMINED, ids=[d[0] for d in DETERMINED])
def test_determined_errors_get_their_exact_pair(what: str, data: bytes, want: tuple[int, int]) -> None:
    assert expected_error(data) == want, f"{what}: oracle says {expected_error(data)}, table says {want}"
    with pytest.raises(BgpError) as info:
        decode(data)
    got = (info.value.code, info.value.subcode)
    assert got == want, f"{what}: expected NOTIFICATION {want}, decoder raised {got}: {info.value}"
    assert decode(framed(1, OPEN_BODY)).asn == 64512  # the control: a sound OPEN decodes


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_decoder(data)


@FUZZ
@given(st.integers(0, 7), st.binary(max_size=200))
def test_fuzz_valid_header_random_body(mtype: int, body: bytes) -> None:
    check_decoder(framed(mtype, body))


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    if draw(st.booleans()) and len(raw) >= 19:
        raw[16:18] = struct.pack("!H", len(raw) & 0xFFFF)  # keep the header honest half the time
    return bytes(raw)


@FUZZ
@given(mutated_seed())
def test_fuzz_mutated_vectors(data: bytes) -> None:
    check_decoder(data)


ATTR_TYPES = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 32, 128, 255])


@st.composite
def random_update(draw: st.DrawFn) -> bytes:
    attrs = b""
    for _ in range(draw(st.integers(0, 6))):
        flags = draw(st.sampled_from([0x40, 0x80, 0xC0, 0xE0, 0x50, 0x90, 0x00, 0xFF]))
        value = draw(st.binary(max_size=40))
        length = len(value) if draw(st.integers(0, 9)) else draw(st.integers(0, 0xFFFF))
        head = struct.pack("!BBH", flags, draw(ATTR_TYPES), length) if flags & 0x10 else \
            struct.pack("!BBB", flags, draw(ATTR_TYPES), length & 0xFF)
        attrs += head + value
    withdrawn = draw(st.binary(max_size=12))
    nlri = draw(st.binary(max_size=12))
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    return framed(2, body)


@FUZZ
@given(random_update())
def test_fuzz_structured_updates(data: bytes) -> None:
    check_decoder(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_fuzz_framer(chunks: list[bytes]) -> None:
    f = Framer()
    try:
        for c in chunks:
            for frame in f.feed(c):
                check_decoder(frame)
    except BgpError as e:
        assert (e.code, e.subcode) in VALID_ERRORS
        assert e.code == 1, f"the framer sees only headers: expected a header error (code 1), got {e.code}/{e.subcode}"


# --- generated valid messages round-trip ------------------------------------------------------

prefixes = st.builds(lambda a, n: IPv4Network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))
addrs = st.builds(IPv4Address, st.integers(1, 0xDFFFFFFF))
asns = st.integers(1, 2**32 - 1)
segments = st.builds(AsSegment, st.sampled_from(list(SegType)), st.lists(asns, min_size=1, max_size=6).map(tuple))
attributes = st.builds(
    PathAttributes,
    origin=st.sampled_from(list(Origin)),
    as_path=st.lists(segments, max_size=3).map(tuple),
    next_hop=addrs,
    med=st.none() | st.integers(0, 2**32 - 1),
    local_pref=st.none() | st.integers(0, 2**32 - 1),
    atomic_aggregate=st.booleans(),
    aggregator=st.none() | st.tuples(asns, addrs),
    communities=st.lists(st.integers(0, 2**32 - 1), max_size=4).map(tuple),
    originator_id=st.none() | addrs,
    cluster_list=st.lists(addrs, max_size=3).map(tuple),
    unknown=st.lists(st.builds(RawAttribute, st.sampled_from([0xC0, 0xE0]), st.integers(19, 213),
                               st.binary(max_size=20)), max_size=2, unique_by=lambda r: r.type).map(tuple),
)
updates = st.builds(Update, withdrawn=st.lists(prefixes, max_size=5).map(tuple), attrs=attributes,
                    nlri=st.lists(prefixes, min_size=1, max_size=5).map(tuple))

# IPv6 unicast (RFC 4760, RFC 2545): global next hops under 2000::/3, link-local ones under fe80::/10
prefixes6 = st.builds(lambda a, n: IPv6Network((a, n), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128))
globals6 = st.builds(IPv6Address, st.integers(0x2000 << 112, (0x4000 << 112) - 1))
link_locals6 = st.builds(IPv6Address, st.integers(0xFE80 << 112, (0xFEC0 << 112) - 1))
mp_reaches6 = st.builds(mp_reach6, globals6, st.lists(prefixes6, max_size=5).map(tuple), st.none() | link_locals6)
updates6 = st.builds(
    lambda attrs, reach, gone, v4: Update(
        attrs=replace(attrs, mp_reach=reach, mp_unreach=MpUnreach(2, 1, tuple(gone)) if gone else None,
                      next_hop=attrs.next_hop if v4 else None), nlri=tuple(v4)),
    attributes, mp_reaches6, st.lists(prefixes6, max_size=4), st.lists(prefixes, max_size=2))
opens = st.builds(
    Open, asn=asns, hold_time=st.sampled_from([0, 3, 9, 90, 65535]), router_id=addrs,
    capabilities=st.builds(
        Capabilities, four_octet_as=st.none() | asns,
        multiprotocol=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 2)), max_size=2).map(tuple),
        route_refresh=st.booleans(),
        graceful_restart=st.none() | st.builds(GracefulRestart, st.integers(0, 4095), st.booleans(), st.booleans(),
                                               st.lists(st.tuples(st.just(1), st.just(1), st.booleans()),
                                                        max_size=1).map(tuple))),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(updates, updates6, opens))
def test_generated_messages_round_trip(msg: Message) -> None:
    if isinstance(msg, Open) and msg.capabilities.four_octet_as is not None:
        msg = Open(msg.capabilities.four_octet_as, msg.hold_time, msg.router_id, msg.capabilities)
    if isinstance(msg, Open) and msg.capabilities.four_octet_as is None and msg.asn > 0xFFFF:
        msg = Open(msg.asn & 0xFFFF or 1, msg.hold_time, msg.router_id, msg.capabilities)
    assert decode(encode(msg)) == msg


two_octet_updates = st.builds(
    Update, attrs=st.builds(
        PathAttributes, origin=st.sampled_from(list(Origin)),
        as_path=st.lists(st.builds(AsSegment, st.sampled_from([SegType.AS_SEQUENCE, SegType.AS_SET]),
                                   st.lists(asns, min_size=1, max_size=6).map(tuple)), max_size=3).map(tuple),
        # an AGGREGATOR with a 2-octet AS says an old speaker aggregated: AS4_PATH is then ignored (4.2.3)
        next_hop=addrs, aggregator=st.none() | st.tuples(st.integers(0x10000, 2**32 - 1), addrs)),
    nlri=st.lists(prefixes, min_size=1, max_size=3).map(tuple))


@settings(max_examples=200, deadline=None)
@given(two_octet_updates)
def test_two_octet_session_round_trip_through_as4_attributes(msg: Update) -> None:
    """RFC 6793: over a 2-octet session large ASes travel as AS_TRANS plus AS4_PATH/AS4_AGGREGATOR,
    and the receiver rebuilds the real path."""
    back = decode(encode(msg, four_octet=False), four_octet=False)
    assert isinstance(back, Update)
    assert normal(back.attrs.as_path or ()) == normal(msg.attrs.as_path or ())
    assert replace(back.attrs, as_path=None) == replace(msg.attrs, as_path=None)


def normal(path: tuple[AsSegment, ...]) -> list[tuple[SegType, tuple[int, ...]]]:
    """Adjacent AS_SEQUENCEs are one sequence (the receiver joins them when it rebuilds the path)."""
    out: list[tuple[SegType, tuple[int, ...]]] = []
    for g in path:
        if out and g.type == out[-1][0] == SegType.AS_SEQUENCE:
            out[-1] = (g.type, out[-1][1] + g.asns)
        else:
            out.append((g.type, g.asns))
    return out
