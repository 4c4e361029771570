"""BGP-4 wire format: typed messages, encode/decode, stream framing. Pure: no I/O, no asyncio.

Decoding raises BgpError carrying the RFC 4271 NOTIFICATION code/subcode the caller must send.
UPDATE errors follow RFC 7606: only errors that make the message unparseable reset the session;
the others come back on `Update.errors` and either turn the update into a withdrawal
(`treat_as_withdraw`) or drop the one attribute (attribute-discard).

Families carried: IPv4 unicast (classic fields and MP_REACH/MP_UNREACH_NLRI) and IPv6 unicast
(RFC 4760 attributes, RFC 2545 next hops); other families decode as empty MP attributes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096
BGP_VERSION = 4
AS_TRANS = 23456
AFI_IPV4 = 1
SAFI_UNICAST = 1
IPV4_UNICAST = (AFI_IPV4, SAFI_UNICAST)
AFI_IPV6 = 2
IPV6_UNICAST = (AFI_IPV6, SAFI_UNICAST)
CARRIED = (IPV4_UNICAST, IPV6_UNICAST)  # the (AFI, SAFI) families labnet carries

Prefix = IPv4Network | IPv6Network


def family_of(prefix: Prefix) -> tuple[int, int]:
    return IPV4_UNICAST if prefix.version == 4 else IPV6_UNICAST


def prefix_key(prefix: Prefix) -> tuple[int, int, int]:
    """Sort key over both families (IPv4Network and IPv6Network do not compare with each other)."""
    return prefix.version, int(prefix.network_address), prefix.prefixlen


class MsgType(enum.IntEnum):
    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


# --- errors -------------------------------------------------------------------------------------


class ErrCode(enum.IntEnum):
    HEADER = 1
    OPEN = 2
    UPDATE = 3
    HOLD_TIMER = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7


class HeaderSub(enum.IntEnum):
    CONNECTION_NOT_SYNCHRONIZED = 1
    BAD_MESSAGE_LENGTH = 2
    BAD_MESSAGE_TYPE = 3


class OpenSub(enum.IntEnum):
    UNSPECIFIC = 0
    UNSUPPORTED_VERSION = 1
    BAD_PEER_AS = 2
    BAD_BGP_IDENTIFIER = 3
    UNSUPPORTED_OPTIONAL_PARAMETER = 4
    UNACCEPTABLE_HOLD_TIME = 6
    UNSUPPORTED_CAPABILITY = 7


class UpdateSub(enum.IntEnum):
    UNSPECIFIC = 0
    MALFORMED_ATTRIBUTE_LIST = 1
    UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
    MISSING_WELL_KNOWN_ATTRIBUTE = 3
    ATTRIBUTE_FLAGS_ERROR = 4
    ATTRIBUTE_LENGTH_ERROR = 5
    INVALID_ORIGIN = 6
    INVALID_NEXT_HOP = 8
    OPTIONAL_ATTRIBUTE_ERROR = 9
    INVALID_NETWORK_FIELD = 10
    MALFORMED_AS_PATH = 11


class CeaseSub(enum.IntEnum):
    MAX_PREFIXES = 1
    ADMINISTRATIVE_SHUTDOWN = 2
    PEER_DECONFIGURED = 3
    ADMINISTRATIVE_RESET = 4
    CONNECTION_REJECTED = 5
    OTHER_CONFIGURATION_CHANGE = 6
    CONNECTION_COLLISION_RESOLUTION = 7
    OUT_OF_RESOURCES = 8


# Every (code, subcode) pair labnet may send; the fuzz test holds the decoder to this set.
VALID_ERRORS: frozenset[tuple[int, int]] = frozenset(
    [(1, s) for s in (1, 2, 3)]
    + [(2, s) for s in (0, 1, 2, 3, 4, 6, 7)]
    + [(3, s) for s in (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11)]
    + [(4, 0)]
    + [(5, s) for s in (0, 1, 2, 3)]
    + [(6, s) for s in range(0, 9)]
    + [(7, s) for s in (0, 1)]
)


class Action(enum.Enum):
    """RFC 7606 error handling approaches."""

    SESSION_RESET = "session-reset"
    TREAT_AS_WITHDRAW = "treat-as-withdraw"
    ATTRIBUTE_DISCARD = "attribute-discard"


class BgpError(Exception):
    """A protocol error; `code`/`subcode`/`data` go into the NOTIFICATION (for session resets)."""

    def __init__(
        self,
        code: int,
        subcode: int,
        data: bytes = b"",
        reason: str = "",
        action: Action = Action.SESSION_RESET,
    ) -> None:
        self.code = int(code)
        self.subcode = int(subcode)
        self.data = data
        self.reason = reason
        self.action = action
        super().__init__(f"BGP error {self.code}/{self.subcode} ({error_name(self.code, self.subcode)})"
                         f"{': ' + reason if reason else ''} [{action.value}]")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BgpError) and (self.code, self.subcode, self.action) == (
            other.code, other.subcode, other.action)

    def __hash__(self) -> int:
        return hash((self.code, self.subcode, self.action))


_SUBS: dict[int, type[enum.IntEnum]] = {1: HeaderSub, 2: OpenSub, 3: UpdateSub, 6: CeaseSub}


def error_name(code: int, subcode: int) -> str:
    try:
        cname = ErrCode(code).name.replace("_", " ").lower()
    except ValueError:
        return f"unknown code {code}"
    sub_enum = _SUBS.get(code)
    if sub_enum is None:
        return cname if subcode == 0 else f"{cname}, subcode {subcode}"
    try:
        return f"{cname}: {sub_enum(subcode).name.replace('_', ' ').lower()}"
    except ValueError:
        return f"{cname}, subcode {subcode}"


def _upd(sub: UpdateSub, reason: str, action: Action, data: bytes = b"") -> BgpError:
    return BgpError(ErrCode.UPDATE, sub, data, reason, action)


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GracefulRestart:
    """RFC 4724 capability: restart time and, per AFI/SAFI, whether forwarding state was kept."""

    restart_time: int = 120
    restarting: bool = False  # R bit
    notification: bool = False  # N bit (RFC 8538)
    afis: tuple[tuple[int, int, bool], ...] = ((AFI_IPV4, SAFI_UNICAST, False),)


@dataclass(frozen=True)
class Capabilities:
    four_octet_as: int | None = None
    multiprotocol: tuple[tuple[int, int], ...] = ()
    route_refresh: bool = False
    graceful_restart: GracefulRestart | None = None
    unknown: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class Open:
    asn: int  # the real AS (4-octet capability value when present)
    hold_time: int
    router_id: IPv4Address
    capabilities: Capabilities = field(default_factory=Capabilities)
    version: int = BGP_VERSION


class Origin(enum.IntEnum):
    IGP = 0
    EGP = 1
    INCOMPLETE = 2


class SegType(enum.IntEnum):
    AS_SET = 1
    AS_SEQUENCE = 2
    CONFED_SEQUENCE = 3
    CONFED_SET = 4


@dataclass(frozen=True)
class AsSegment:
    type: SegType
    asns: tuple[int, ...]


@dataclass(frozen=True)
class MpReach:
    afi: int
    safi: int
    next_hop: bytes
    nlri: tuple[Prefix, ...]

    def next_hops6(self) -> tuple[IPv6Address, IPv6Address | None] | None:
        """RFC 2545 3: IPv6 unicast global next hop, and the link-local one when 32 bytes came."""
        if (self.afi, self.safi) != IPV6_UNICAST or len(self.next_hop) not in (16, 32):
            return None
        link_local = IPv6Address(self.next_hop[16:]) if len(self.next_hop) == 32 else None
        if link_local is not None and link_local.is_unspecified:
            link_local = None  # some speakers pad with :: when they have no link-local address
        return IPv6Address(self.next_hop[:16]), link_local


def mp_reach6(next_hop: IPv6Address, nlri: tuple[IPv6Network, ...] = (),
              link_local: IPv6Address | None = None) -> MpReach:
    """MP_REACH_NLRI for IPv6 unicast (16-byte next hop, or 32 with a link-local one)."""
    return MpReach(AFI_IPV6, SAFI_UNICAST, next_hop.packed + (link_local.packed if link_local else b""), nlri)


@dataclass(frozen=True)
class MpUnreach:
    afi: int
    safi: int
    withdrawn: tuple[Prefix, ...]


@dataclass(frozen=True)
class RawAttribute:
    """An attribute labnet does not interpret (kept and passed on if optional transitive)."""

    flags: int
    type: int
    value: bytes


def path_length(segments: tuple[AsSegment, ...]) -> int:
    n = 0
    for seg in segments:
        if seg.type == SegType.AS_SEQUENCE:
            n += len(seg.asns)
        elif seg.type == SegType.AS_SET:
            n += 1
    return n


class Attr(enum.IntEnum):
    ORIGIN = 1
    AS_PATH = 2
    NEXT_HOP = 3
    MED = 4
    LOCAL_PREF = 5
    ATOMIC_AGGREGATE = 6
    AGGREGATOR = 7
    COMMUNITIES = 8
    ORIGINATOR_ID = 9
    CLUSTER_LIST = 10
    MP_REACH_NLRI = 14
    MP_UNREACH_NLRI = 15
    AS4_PATH = 17  # RFC 6793: only between a 4-octet speaker and a 2-octet one
    AS4_AGGREGATOR = 18


F_OPTIONAL = 0x80
F_TRANSITIVE = 0x40
F_PARTIAL = 0x20
F_EXTENDED = 0x10

# required (optional, transitive) bits for each recognised attribute
_ATTR_FLAGS: dict[int, int] = {
    Attr.ORIGIN: F_TRANSITIVE,
    Attr.AS_PATH: F_TRANSITIVE,
    Attr.NEXT_HOP: F_TRANSITIVE,
    Attr.MED: F_OPTIONAL,
    Attr.LOCAL_PREF: F_TRANSITIVE,
    Attr.ATOMIC_AGGREGATE: F_TRANSITIVE,
    Attr.AGGREGATOR: F_OPTIONAL | F_TRANSITIVE,
    Attr.COMMUNITIES: F_OPTIONAL | F_TRANSITIVE,
    Attr.ORIGINATOR_ID: F_OPTIONAL,
    Attr.CLUSTER_LIST: F_OPTIONAL,
    Attr.MP_REACH_NLRI: F_OPTIONAL,
    Attr.MP_UNREACH_NLRI: F_OPTIONAL,
    Attr.AS4_PATH: F_OPTIONAL | F_TRANSITIVE,
    Attr.AS4_AGGREGATOR: F_OPTIONAL | F_TRANSITIVE,
}


@dataclass(frozen=True)
class PathAttributes:
    origin: Origin | None = None
    as_path: tuple[AsSegment, ...] | None = None
    next_hop: IPv4Address | None = None
    med: int | None = None
    local_pref: int | None = None
    atomic_aggregate: bool = False
    aggregator: tuple[int, IPv4Address] | None = None
    communities: tuple[int, ...] = ()
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    unknown: tuple[RawAttribute, ...] = ()

    def as_path_length(self) -> int:
        """Path length for best-path selection: an AS_SET counts 1, confederation segments 0."""
        return path_length(self.as_path or ())

    def as_path_asns(self) -> tuple[int, ...]:
        return tuple(a for seg in self.as_path or () for a in seg.asns)

    def neighbour_as(self) -> int | None:
        """First AS of the AS_PATH (the AS we learned it from), None for routes of our own AS."""
        for seg in self.as_path or ():
            if seg.type == SegType.AS_SEQUENCE and seg.asns:
                return seg.asns[0]
            if seg.type in (SegType.AS_SET,):
                return None
        return None

    def is_empty(self) -> bool:
        return self == PathAttributes()

    def next_hop6(self) -> tuple[IPv6Address, IPv6Address | None] | None:
        return self.mp_reach.next_hops6() if self.mp_reach is not None else None


@dataclass(frozen=True)
class Update:
    withdrawn: tuple[IPv4Network, ...] = ()
    attrs: PathAttributes = field(default_factory=PathAttributes)
    nlri: tuple[IPv4Network, ...] = ()
    # RFC 7606 outcome of decoding (empty for updates we build)
    errors: tuple[BgpError, ...] = ()
    treat_as_withdraw: bool = False

    def end_of_rib_family(self) -> tuple[int, int] | None:
        """RFC 4724 2: the (AFI, SAFI) this UPDATE marks End-of-RIB for, or None.

        IPv4 unicast: an empty UPDATE; other families: an empty MP_UNREACH_NLRI and nothing else.
        """
        if self.withdrawn or self.nlri or self.treat_as_withdraw:
            return None
        a = self.attrs
        if a.is_empty():
            return IPV4_UNICAST
        mp = a.mp_unreach
        if mp is not None and not mp.withdrawn and a == PathAttributes(mp_unreach=mp):
            return (mp.afi, mp.safi)
        return None

    def is_end_of_rib(self) -> bool:
        """End-of-RIB for IPv4 unicast (end_of_rib_family() for any family)."""
        return self.end_of_rib_family() == IPV4_UNICAST

    def announced(self) -> tuple[Prefix, ...]:
        """Prefixes this update makes reachable, of every family labnet carries (none when it is
        treated as a withdrawal)."""
        if self.treat_as_withdraw:
            return ()
        mp = self.attrs.mp_reach
        return self.nlri + (mp.nlri if mp and (mp.afi, mp.safi) in CARRIED else ())

    def unreachable(self) -> tuple[Prefix, ...]:
        mp = self.attrs.mp_unreach
        out: tuple[Prefix, ...] = self.withdrawn + (mp.withdrawn if mp and (mp.afi, mp.safi) in CARRIED else ())
        if self.treat_as_withdraw:
            mpr = self.attrs.mp_reach
            out += self.nlri + (mpr.nlri if mpr else ())
        return out

    def next_hop(self) -> IPv4Address | None:
        mp = self.attrs.mp_reach
        if mp is not None and self.attrs.next_hop is None and len(mp.next_hop) == 4:
            return IPv4Address(mp.next_hop[:4])
        return self.attrs.next_hop

    def next_hop6(self) -> tuple[IPv6Address, IPv6Address | None] | None:
        """The IPv6 unicast next hops (global, link-local or None) of the MP_REACH_NLRI, if any."""
        return self.attrs.next_hop6()


def end_of_rib(family: tuple[int, int] = IPV4_UNICAST) -> Update:
    """RFC 4724 2: an empty UPDATE for IPv4 unicast, an empty MP_UNREACH_NLRI for other families."""
    if family == IPV4_UNICAST:
        return Update()
    return Update(attrs=PathAttributes(mp_unreach=MpUnreach(family[0], family[1], ())))


@dataclass(frozen=True)
class Notification:
    code: int
    subcode: int
    data: bytes = b""

    def describe(self) -> str:
        return f"{self.code}/{self.subcode} {error_name(self.code, self.subcode)}"


@dataclass(frozen=True)
class Keepalive:
    pass


@dataclass(frozen=True)
class RouteRefresh:
    afi: int = AFI_IPV4
    safi: int = SAFI_UNICAST
    subtype: int = 0  # RFC 7313: 0 normal, 1 BoRR, 2 EoRR


Message = Open | Update | Notification | Keepalive | RouteRefresh


# --- encoding -----------------------------------------------------------------------------------


def _header(mtype: MsgType, body: bytes) -> bytes:
    total = HEADER_LEN + len(body)
    if total > MAX_MESSAGE_LEN:
        raise ValueError(f"BGP {mtype.name} message would be {total} bytes, over the {MAX_MESSAGE_LEN} limit")
    return MARKER + struct.pack("!HB", total, mtype) + body


def _cap(code: int, value: bytes) -> bytes:
    return struct.pack("!BB", code, len(value)) + value


def encode_capabilities(caps: Capabilities) -> bytes:
    out = b""
    for afi, safi in caps.multiprotocol:
        out += _cap(1, struct.pack("!HBB", afi, 0, safi))
    if caps.route_refresh:
        out += _cap(2, b"")
    gr = caps.graceful_restart
    if gr is not None:
        if not 0 <= gr.restart_time <= 0xFFF:
            raise ValueError(f"graceful restart time {gr.restart_time} does not fit in 12 bits")
        head = gr.restart_time | (0x8000 if gr.restarting else 0) | (0x4000 if gr.notification else 0)
        body = struct.pack("!H", head)
        for afi, safi, fwd in gr.afis:
            body += struct.pack("!HBB", afi, safi, 0x80 if fwd else 0)
        out += _cap(64, body)
    if caps.four_octet_as is not None:
        out += _cap(65, struct.pack("!I", caps.four_octet_as))
    for code, value in caps.unknown:
        out += _cap(code, value)
    return out


def encode_open(msg: Open) -> bytes:
    if not 0 < msg.asn <= 0xFFFFFFFF:
        raise ValueError(f"AS number {msg.asn} out of range")
    my_as = msg.asn if msg.asn <= 0xFFFF else AS_TRANS
    caps = encode_capabilities(msg.capabilities)
    params = struct.pack("!BB", 2, len(caps)) + caps if caps else b""
    if len(params) > 255:
        raise ValueError("OPEN optional parameters exceed 255 bytes")
    body = struct.pack("!BHH4sB", msg.version, my_as, msg.hold_time, msg.router_id.packed, len(params))
    return _header(MsgType.OPEN, body + params)


def encode_prefix(p: Prefix) -> bytes:
    n = (p.prefixlen + 7) // 8
    return bytes([p.prefixlen]) + p.network_address.packed[:n]


def _attr(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | F_EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags & ~F_EXTENDED, code, len(value)) + value


def encode_as_path(segments: tuple[AsSegment, ...], four_octet: bool) -> bytes:
    out = b""
    fmt = "!I" if four_octet else "!H"
    for seg in segments:
        asns = seg.asns
        # a segment holds at most 255 ASes: split longer ones
        for i in range(0, max(len(asns), 1), 255):
            chunk = asns[i:i + 255]
            out += struct.pack("!BB", seg.type, len(chunk))
            for a in chunk:
                out += struct.pack(fmt, a if four_octet or a <= 0xFFFF else AS_TRANS)
    return out


def encode_attributes(a: PathAttributes, four_octet: bool = True) -> bytes:
    out = b""
    # RFC 7606 5.1: MP_REACH_NLRI and MP_UNREACH_NLRI first, so a receiver finds (and can
    # withdraw) their routes whatever is wrong further on
    if a.mp_reach is not None:
        m = a.mp_reach
        value = struct.pack("!HBB", m.afi, m.safi, len(m.next_hop)) + m.next_hop + b"\x00"
        value += b"".join(encode_prefix(p) for p in m.nlri)
        out += _attr(F_OPTIONAL, Attr.MP_REACH_NLRI, value)
    if a.mp_unreach is not None:
        u = a.mp_unreach
        value = struct.pack("!HB", u.afi, u.safi) + b"".join(encode_prefix(p) for p in u.withdrawn)
        out += _attr(F_OPTIONAL, Attr.MP_UNREACH_NLRI, value)
    if a.origin is not None:
        out += _attr(F_TRANSITIVE, Attr.ORIGIN, bytes([a.origin]))
    if a.as_path is not None:
        out += _attr(F_TRANSITIVE, Attr.AS_PATH, encode_as_path(a.as_path, four_octet))
    if a.next_hop is not None:
        out += _attr(F_TRANSITIVE, Attr.NEXT_HOP, a.next_hop.packed)
    if a.med is not None:
        out += _attr(F_OPTIONAL, Attr.MED, struct.pack("!I", a.med))
    if a.local_pref is not None:
        out += _attr(F_TRANSITIVE, Attr.LOCAL_PREF, struct.pack("!I", a.local_pref))
    if a.atomic_aggregate:
        out += _attr(F_TRANSITIVE, Attr.ATOMIC_AGGREGATE, b"")
    if a.aggregator is not None:
        asn, addr = a.aggregator
        value = struct.pack("!I", asn) if four_octet else struct.pack("!H", asn if asn <= 0xFFFF else AS_TRANS)
        out += _attr(F_OPTIONAL | F_TRANSITIVE, Attr.AGGREGATOR, value + addr.packed)
    if a.communities:
        out += _attr(F_OPTIONAL | F_TRANSITIVE, Attr.COMMUNITIES, b"".join(struct.pack("!I", c) for c in a.communities))
    if a.originator_id is not None:
        out += _attr(F_OPTIONAL, Attr.ORIGINATOR_ID, a.originator_id.packed)
    if a.cluster_list:
        out += _attr(F_OPTIONAL, Attr.CLUSTER_LIST, b"".join(c.packed for c in a.cluster_list))
    if not four_octet:
        # RFC 6793 4.2.2: a 2-octet peer gets AS_TRANS in place of large ASes, the truth in AS4_*
        segs = tuple(g for g in a.as_path or () if g.type in (SegType.AS_SEQUENCE, SegType.AS_SET))
        if any(x > 0xFFFF for g in segs for x in g.asns):
            out += _attr(F_OPTIONAL | F_TRANSITIVE, Attr.AS4_PATH, encode_as_path(segs, True))
        if a.aggregator is not None and a.aggregator[0] > 0xFFFF:
            value = struct.pack("!I", a.aggregator[0]) + a.aggregator[1].packed
            out += _attr(F_OPTIONAL | F_TRANSITIVE, Attr.AS4_AGGREGATOR, value)
    for raw in a.unknown:
        out += _attr(raw.flags, raw.type, raw.value)
    return out


def encode_update(msg: Update, four_octet: bool = True) -> bytes:
    withdrawn = b"".join(encode_prefix(p) for p in msg.withdrawn)
    attrs = encode_attributes(msg.attrs, four_octet)
    nlri = b"".join(encode_prefix(p) for p in msg.nlri)
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    return _header(MsgType.UPDATE, body)


def encode(msg: Message, four_octet: bool = True) -> bytes:
    if isinstance(msg, Open):
        return encode_open(msg)
    if isinstance(msg, Update):
        return encode_update(msg, four_octet)
    if isinstance(msg, Notification):
        return _header(MsgType.NOTIFICATION, struct.pack("!BB", msg.code, msg.subcode) + msg.data)
    if isinstance(msg, Keepalive):
        return _header(MsgType.KEEPALIVE, b"")
    if isinstance(msg, RouteRefresh):
        return _header(MsgType.ROUTE_REFRESH, struct.pack("!HBB", msg.afi, msg.subtype, msg.safi))
    raise TypeError(f"not a BGP message: {msg!r}")


def pack_updates(
    attrs: PathAttributes, nlri: Sequence[Prefix], withdrawn: Sequence[Prefix], four_octet: bool = True
) -> Iterator[Update]:
    """Split announcements (sharing `attrs`) and withdrawals into UPDATEs that fit in 4096 bytes.

    IPv4 prefixes go in the classic fields; IPv6 ones in MP_UNREACH_NLRI, or in MP_REACH_NLRI
    after the next hop `attrs.mp_reach` carries (its own NLRI ignored), without NEXT_HOP.
    """
    room = MAX_MESSAGE_LEN - HEADER_LEN - 4
    gone4 = [p for p in withdrawn if isinstance(p, IPv4Network)]
    gone6 = [p for p in withdrawn if isinstance(p, IPv6Network)]
    for w4 in _chunks(gone4, room, 5):
        yield Update(withdrawn=tuple(w4))
    for w6 in _chunks(gone6, room - 7, 17):  # attribute header (4) + AFI/SAFI (3)
        yield Update(attrs=PathAttributes(mp_unreach=MpUnreach(AFI_IPV6, SAFI_UNICAST, tuple(w6))))
    new4 = [p for p in nlri if isinstance(p, IPv4Network)]
    new6 = [p for p in nlri if isinstance(p, IPv6Network)]
    if new4:
        a4 = replace(attrs, mp_reach=None) if new6 else attrs
        for n4 in _chunks(new4, room - len(encode_attributes(a4, four_octet)), 5):
            yield Update(attrs=a4, nlri=tuple(n4))
    if new6:
        mp = attrs.mp_reach
        if mp is None or (mp.afi, mp.safi) != IPV6_UNICAST:
            raise ValueError("IPv6 prefixes to announce but no IPv6 unicast MP_REACH_NLRI next hop")
        a6 = replace(attrs, next_hop=None, mp_reach=replace(mp, nlri=()))
        # +1: the MP_REACH_NLRI header grows to extended length once its NLRI pass 255 bytes
        for n6 in _chunks(new6, room - len(encode_attributes(a6, four_octet)) - 1, 17):
            yield Update(attrs=replace(a6, mp_reach=replace(mp, nlri=tuple(n6))))


_P = TypeVar("_P", IPv4Network, IPv6Network)


def _chunks(prefixes: list[_P], room: int, widest: int) -> Iterator[list[_P]]:
    """Consecutive runs of `prefixes` whose encoding fits in `room` bytes (`widest`: the largest one)."""
    if prefixes and room < widest:
        raise ValueError(f"path attributes leave {room} bytes for NLRI in a {MAX_MESSAGE_LEN}-byte UPDATE")
    i = 0
    while i < len(prefixes):
        chunk: list[_P] = []
        used = 0
        while i < len(prefixes) and used + widest <= room:
            chunk.append(prefixes[i])
            used += 1 + (prefixes[i].prefixlen + 7) // 8
            i += 1
        yield chunk


# --- decoding -----------------------------------------------------------------------------------


def check_header(data: bytes) -> tuple[int, int]:
    """Validate a 19-byte header; return (length, type)."""
    if data[:16] != MARKER:
        raise BgpError(ErrCode.HEADER, HeaderSub.CONNECTION_NOT_SYNCHRONIZED, b"", "marker is not all ones")
    length, mtype = struct.unpack_from("!HB", data, 16)
    if not HEADER_LEN <= length <= MAX_MESSAGE_LEN:
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_LENGTH, data[16:18],
                       f"length {length} outside {HEADER_LEN}..{MAX_MESSAGE_LEN}")
    if mtype not in MsgType._value2member_map_:
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_TYPE, bytes([mtype]), f"unknown message type {mtype}")
    minimum, exact = {
        MsgType.OPEN: (29, False),
        MsgType.UPDATE: (23, False),
        MsgType.NOTIFICATION: (21, False),
        MsgType.KEEPALIVE: (19, True),
        MsgType.ROUTE_REFRESH: (23, False),
    }[MsgType(mtype)]
    if length < minimum or (exact and length != minimum):
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_LENGTH, data[16:18],
                       f"{MsgType(mtype).name} message of length {length}")
    return length, mtype


def decode(data: bytes, four_octet: bool = True) -> Message:
    """Decode exactly one message (header included)."""
    if len(data) < HEADER_LEN:
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_LENGTH, b"", f"{len(data)} bytes is shorter than a header")
    length, mtype = check_header(data)
    if length != len(data):
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_LENGTH, data[16:18],
                       f"header says {length} bytes, message has {len(data)}")
    body = data[HEADER_LEN:]
    if mtype == MsgType.OPEN:
        return decode_open(body)
    if mtype == MsgType.UPDATE:
        return decode_update(body, four_octet)
    if mtype == MsgType.NOTIFICATION:
        return Notification(body[0], body[1], body[2:])
    if mtype == MsgType.KEEPALIVE:
        return Keepalive()
    afi, subtype, safi = struct.unpack_from("!HBB", body)
    if len(body) != 4:
        if subtype in (1, 2):
            raise BgpError(ErrCode.ROUTE_REFRESH, 1, body, f"ROUTE-REFRESH body of {len(body)} bytes")
        raise BgpError(ErrCode.HEADER, HeaderSub.BAD_MESSAGE_LENGTH, data[16:18], f"ROUTE-REFRESH body of {len(body)} bytes")
    return RouteRefresh(afi, safi, subtype)


def _open_err(sub: OpenSub, reason: str, data: bytes = b"") -> BgpError:
    return BgpError(ErrCode.OPEN, sub, data, reason)


def decode_open(body: bytes) -> Open:
    version, my_as, hold, rid, plen = struct.unpack_from("!BHH4sB", body)
    if version != BGP_VERSION:
        raise _open_err(OpenSub.UNSUPPORTED_VERSION, f"version {version}, labnet speaks 4", struct.pack("!H", BGP_VERSION))
    if plen != len(body) - 10:
        raise _open_err(OpenSub.UNSPECIFIC, f"optional parameters length {plen} but {len(body) - 10} bytes follow")
    if hold in (1, 2):
        raise _open_err(OpenSub.UNACCEPTABLE_HOLD_TIME, f"hold time {hold}s (must be 0 or at least 3)")
    router_id = IPv4Address(rid)
    if int(router_id) == 0 or router_id.is_multicast or int(router_id) == 0xFFFFFFFF:
        raise _open_err(OpenSub.BAD_BGP_IDENTIFIER, f"BGP identifier {router_id} is not a unicast address")
    caps = _decode_params(body[10:])
    asn = my_as
    if caps.four_octet_as is not None:
        asn = caps.four_octet_as
    if asn == 0:
        raise _open_err(OpenSub.BAD_PEER_AS, "peer AS 0")
    return Open(asn=asn, hold_time=hold, router_id=router_id, capabilities=caps, version=version)


def _decode_params(params: bytes) -> Capabilities:
    four: int | None = None
    mp: list[tuple[int, int]] = []
    rr = False
    gr: GracefulRestart | None = None
    unknown: list[tuple[int, bytes]] = []
    i = 0
    while i < len(params):
        if i + 2 > len(params):
            raise _open_err(OpenSub.UNSPECIFIC, "truncated optional parameter header")
        ptype, plen = params[i], params[i + 1]
        value = params[i + 2:i + 2 + plen]
        if len(value) != plen:
            raise _open_err(OpenSub.UNSPECIFIC, f"optional parameter {ptype} overruns the OPEN message")
        i += 2 + plen
        if ptype != 2:
            raise _open_err(OpenSub.UNSUPPORTED_OPTIONAL_PARAMETER, f"optional parameter type {ptype}", bytes([ptype]))
        j = 0
        while j < len(value):
            if j + 2 > len(value):
                raise _open_err(OpenSub.UNSPECIFIC, "truncated capability header")
            code, clen = value[j], value[j + 1]
            cval = value[j + 2:j + 2 + clen]
            if len(cval) != clen:
                raise _open_err(OpenSub.UNSPECIFIC, f"capability {code} overruns its parameter")
            j += 2 + clen
            if code == 1:
                if clen != 4:
                    raise _open_err(OpenSub.UNSPECIFIC, f"multiprotocol capability of length {clen}")
                afi, _res, safi = struct.unpack("!HBB", cval)
                mp.append((afi, safi))
            elif code == 2:
                if clen != 0:
                    raise _open_err(OpenSub.UNSPECIFIC, f"route refresh capability of length {clen}")
                rr = True
            elif code == 64:
                if clen < 2 or (clen - 2) % 4:
                    raise _open_err(OpenSub.UNSPECIFIC, f"graceful restart capability of length {clen}")
                (head,) = struct.unpack_from("!H", cval)
                afis = tuple(
                    (a, s, bool(f & 0x80))
                    for a, s, f in (struct.unpack_from("!HBB", cval, k) for k in range(2, clen, 4))
                )
                gr = GracefulRestart(head & 0xFFF, bool(head & 0x8000), bool(head & 0x4000), afis)
            elif code == 65:
                if clen != 4:
                    raise _open_err(OpenSub.UNSPECIFIC, f"4-octet AS capability of length {clen}")
                (four,) = struct.unpack("!I", cval)
                if four == 0:
                    raise _open_err(OpenSub.BAD_PEER_AS, "4-octet AS capability carries AS 0")
            else:
                unknown.append((code, cval))
    return Capabilities(four, tuple(mp), rr, gr, tuple(unknown))


def _prefix_fields(data: bytes, what: str, width: int) -> Iterator[tuple[bytes, int]]:
    """(address bytes zero-padded to `width`, length) of each prefix in an NLRI field; a bad one
    resets the session (RFC 7606 section 5.3)."""
    i = 0
    while i < len(data):
        plen = data[i]
        if plen > width * 8:
            raise _upd(UpdateSub.INVALID_NETWORK_FIELD, f"{what}: prefix length {plen}", Action.SESSION_RESET)
        n = (plen + 7) // 8
        if i + 1 + n > len(data):
            raise _upd(UpdateSub.INVALID_NETWORK_FIELD, f"{what}: prefix /{plen} overruns the field", Action.SESSION_RESET)
        yield data[i + 1:i + 1 + n] + b"\x00" * (width - n), plen
        i += 1 + n


def decode_prefixes(data: bytes, what: str) -> tuple[IPv4Network, ...]:
    """Decode an IPv4 NLRI field (bits past the prefix length are cleared)."""
    return tuple(IPv4Network(f, strict=False) for f in _prefix_fields(data, what, 4))


def decode_prefixes6(data: bytes, what: str) -> tuple[IPv6Network, ...]:
    """Decode an IPv6 NLRI field, by the same rules as decode_prefixes."""
    return tuple(IPv6Network(f, strict=False) for f in _prefix_fields(data, what, 16))


def _decode_as_path(value: bytes, four_octet: bool) -> tuple[AsSegment, ...]:
    size = 4 if four_octet else 2
    segs: list[AsSegment] = []
    i = 0
    while i < len(value):
        if i + 2 > len(value):
            raise ValueError("truncated segment header")
        stype, count = value[i], value[i + 1]
        if stype not in SegType._value2member_map_:
            raise ValueError(f"segment type {stype}")
        if count == 0:
            raise ValueError("empty segment")
        end = i + 2 + count * size
        if end > len(value):
            raise ValueError(f"segment of {count} ASes overruns the attribute")
        fmt = "!" + ("I" if four_octet else "H") * count
        segs.append(AsSegment(SegType(stype), struct.unpack_from(fmt, value, i + 2)))
        i = end
    return tuple(segs)


def _decode_mp_reach(value: bytes) -> MpReach:
    if len(value) < 5:
        raise ValueError(f"MP_REACH_NLRI of {len(value)} bytes")
    afi, safi, nhlen = struct.unpack_from("!HBB", value)
    if 4 + nhlen + 1 > len(value):
        raise ValueError(f"next hop length {nhlen} overruns the attribute")
    nh = value[4:4 + nhlen]
    rest = value[5 + nhlen:]
    if (afi, safi) == IPV4_UNICAST:
        if nhlen not in (4, 16, 32):
            raise ValueError(f"IPv4 unicast next hop of length {nhlen}")
        return MpReach(afi, safi, nh, decode_prefixes(rest, "MP_REACH_NLRI"))
    if (afi, safi) == IPV6_UNICAST:
        if nhlen not in (16, 32):  # RFC 2545 3: global, or global + link-local
            raise ValueError(f"IPv6 unicast next hop of length {nhlen}")
        return MpReach(afi, safi, nh, decode_prefixes6(rest, "MP_REACH_NLRI"))
    return MpReach(afi, safi, nh, ())  # other families are not ours: kept as an empty reach


def _decode_mp_unreach(value: bytes) -> MpUnreach:
    if len(value) < 3:
        raise ValueError(f"MP_UNREACH_NLRI of {len(value)} bytes")
    afi, safi = struct.unpack_from("!HB", value)
    if (afi, safi) == IPV4_UNICAST:
        return MpUnreach(afi, safi, decode_prefixes(value[3:], "MP_UNREACH_NLRI"))
    if (afi, safi) == IPV6_UNICAST:
        return MpUnreach(afi, safi, decode_prefixes6(value[3:], "MP_UNREACH_NLRI"))
    return MpUnreach(afi, safi, ())


def decode_update(body: bytes, four_octet: bool = True) -> Update:
    (wlen,) = struct.unpack_from("!H", body)
    if 2 + wlen + 2 > len(body):
        raise _upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, f"withdrawn routes length {wlen} overruns the message",
                   Action.SESSION_RESET)
    withdrawn = decode_prefixes(body[2:2 + wlen], "withdrawn routes")
    (alen,) = struct.unpack_from("!H", body, 2 + wlen)
    astart = 4 + wlen
    if astart + alen > len(body):
        raise _upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, f"total path attribute length {alen} overruns the message",
                   Action.SESSION_RESET)
    nlri = decode_prefixes(body[astart + alen:], "NLRI")
    attrs, errors, seen = _decode_attributes(body[astart:astart + alen], four_octet)
    lost = any(e.subcode in (UpdateSub.MALFORMED_ATTRIBUTE_LIST, UpdateSub.ATTRIBUTE_LENGTH_ERROR)
               and e.action == Action.TREAT_AS_WITHDRAW for e in errors)
    if lost and not (nlri or withdrawn) and not seen & {Attr.MP_REACH_NLRI, Attr.MP_UNREACH_NLRI}:
        # RFC 7606 5.1: the attribute list broke before any MP attribute, and the update has no
        # classic routes: its routes (IPv6's always) sit in an MP attribute that cannot be
        # located, so they cannot be withdrawn: the session is reset
        raise _upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, "attribute list broken before an MP_REACH_NLRI / "
                   "MP_UNREACH_NLRI could be located", Action.SESSION_RESET)
    mp = attrs.mp_reach
    if nlri or (mp is not None and mp.nlri):
        # RFC 4271 6.3 / RFC 7606 3(d): missing well-known attributes make the update a withdrawal
        wanted = [Attr.ORIGIN, Attr.AS_PATH] + ([Attr.NEXT_HOP] if nlri else [])
        for code in wanted:
            if code not in seen:
                errors.append(_upd(UpdateSub.MISSING_WELL_KNOWN_ATTRIBUTE, f"{code.name} missing",
                                   Action.TREAT_AS_WITHDRAW, bytes([code])))
    attrs = _merge_as4(attrs, four_octet, errors)
    taw = any(e.action == Action.TREAT_AS_WITHDRAW for e in errors)
    return Update(withdrawn, attrs, nlri, tuple(errors), taw)


def _merge_as4(attrs: PathAttributes, four_octet: bool, errors: list[BgpError]) -> PathAttributes:
    """RFC 6793 4.2.3: rebuild the real AS_PATH/AGGREGATOR from AS4_PATH/AS4_AGGREGATOR."""
    as4 = [r for r in attrs.unknown if r.type in (Attr.AS4_PATH, Attr.AS4_AGGREGATOR)]
    if not as4:
        return attrs
    attrs = replace(attrs, unknown=tuple(r for r in attrs.unknown if r not in as4))
    if four_octet:
        return attrs  # 4.1: between 4-octet speakers AS4_* are discarded
    as4_path: tuple[AsSegment, ...] | None = None
    as4_aggr: tuple[int, IPv4Address] | None = None
    for r in as4:
        try:
            if r.type == Attr.AS4_PATH:
                as4_path = _decode_as_path(r.value, True)
                if any(g.type not in (SegType.AS_SEQUENCE, SegType.AS_SET) for g in as4_path):
                    raise ValueError("confederation segment in AS4_PATH")
            elif len(r.value) == 8:
                as4_aggr = (struct.unpack_from("!I", r.value)[0], IPv4Address(r.value[4:]))
            else:
                raise ValueError(f"AS4_AGGREGATOR of length {len(r.value)}")
        except ValueError as exc:  # RFC 6793 6 / RFC 7606 7.7: malformed AS4_* are discarded
            errors.append(_upd(UpdateSub.OPTIONAL_ATTRIBUTE_ERROR, f"{Attr(r.type).name}: {exc}",
                               Action.ATTRIBUTE_DISCARD))
    if attrs.aggregator is not None and attrs.aggregator[0] != AS_TRANS:
        return attrs  # the aggregating speaker was 2-octet: the AS4_* attributes are stale
    if as4_aggr is not None and attrs.aggregator is not None:
        attrs = replace(attrs, aggregator=as4_aggr)
    if as4_path is not None and attrs.as_path is not None:
        attrs = replace(attrs, as_path=_merge_paths(attrs.as_path, as4_path))
    return attrs


def _merge_paths(as_path: tuple[AsSegment, ...], as4_path: tuple[AsSegment, ...]) -> tuple[AsSegment, ...]:
    keep = path_length(as_path) - path_length(as4_path)
    if keep < 0:
        return as_path  # AS4_PATH longer than AS_PATH: ignore it
    out: list[AsSegment] = []
    for seg in as_path:
        if seg.type in (SegType.CONFED_SEQUENCE, SegType.CONFED_SET):
            out.append(seg)  # confederation segments live only in AS_PATH
        elif keep > 0 and seg.type == SegType.AS_SEQUENCE:
            out.append(AsSegment(seg.type, seg.asns[:keep]))
            keep -= len(out[-1].asns)
        elif keep > 0:
            out.append(seg)
            keep -= 1
    merged: list[AsSegment] = []
    for seg in out + list(as4_path):  # join the seam: (65001) (4200000000 65000) → (65001 4200000000 65000)
        prev = merged[-1] if merged else None
        if (prev is not None and prev.type == seg.type == SegType.AS_SEQUENCE
                and len(prev.asns) + len(seg.asns) <= 255):
            merged[-1] = AsSegment(SegType.AS_SEQUENCE, prev.asns + seg.asns)
        else:
            merged.append(seg)
    return tuple(merged)


def _decode_attributes(data: bytes, four_octet: bool) -> tuple[PathAttributes, list[BgpError], set[int]]:
    fields: dict[str, object] = {}
    unknown: list[RawAttribute] = []
    errors: list[BgpError] = []
    seen: set[int] = set()
    i = 0
    while i < len(data):
        if i + 3 > len(data) or (data[i] & F_EXTENDED and i + 4 > len(data)):
            errors.append(_upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, "truncated attribute header", Action.TREAT_AS_WITHDRAW))
            break
        flags, code = data[i], data[i + 1]
        if flags & F_EXTENDED:
            (length,) = struct.unpack_from("!H", data, i + 2)
            hlen = 4
        else:
            length, hlen = data[i + 2], 3
        raw = data[i:i + hlen + length]
        value = data[i + hlen:i + hlen + length]
        i += hlen + length
        if len(value) != length:
            # RFC 7606 section 4: an attribute overrunning the attribute field → treat-as-withdraw
            if code in (Attr.MP_REACH_NLRI, Attr.MP_UNREACH_NLRI):
                raise _upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, f"attribute {code} overruns the attribute field",
                           Action.SESSION_RESET)
            errors.append(_upd(UpdateSub.ATTRIBUTE_LENGTH_ERROR, f"attribute {code} of length {length} overruns",
                               Action.TREAT_AS_WITHDRAW, raw))
            break
        if code in seen:
            if code in (Attr.MP_REACH_NLRI, Attr.MP_UNREACH_NLRI):
                raise _upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, f"attribute {code} repeated", Action.SESSION_RESET)
            errors.append(_upd(UpdateSub.MALFORMED_ATTRIBUTE_LIST, f"attribute {code} repeated; later copies dropped",
                               Action.ATTRIBUTE_DISCARD, raw))
            continue
        seen.add(code)
        want = _ATTR_FLAGS.get(code)
        if want is None:
            if not flags & F_OPTIONAL:
                raise _upd(UpdateSub.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE, f"unknown well-known attribute {code}",
                           Action.SESSION_RESET, raw)
            if flags & F_TRANSITIVE:
                unknown.append(RawAttribute(flags & ~F_EXTENDED, code, value))
            continue  # unknown optional non-transitive: quietly ignored (RFC 4271 5)
        bad_flags = (flags & (F_OPTIONAL | F_TRANSITIVE)) != want or (
            flags & F_PARTIAL and want != F_OPTIONAL | F_TRANSITIVE)
        if bad_flags:
            action = Action.SESSION_RESET if code in (Attr.MP_REACH_NLRI, Attr.MP_UNREACH_NLRI) else Action.TREAT_AS_WITHDRAW
            errors.append(_upd(UpdateSub.ATTRIBUTE_FLAGS_ERROR, f"attribute {Attr(code).name} flags {flags:#04x}", action, raw))
            if action == Action.SESSION_RESET:
                raise errors[-1]
            continue
        if code in (Attr.AS4_PATH, Attr.AS4_AGGREGATOR):
            unknown.append(RawAttribute(flags & ~F_EXTENDED, code, value))  # merged in _merge_as4
            continue
        err = _decode_known(Attr(code), value, raw, four_octet, fields)
        if err is not None:
            if err.action == Action.SESSION_RESET:
                raise err
            errors.append(err)
    fields["unknown"] = tuple(unknown)
    return PathAttributes(**fields), errors, seen  # type: ignore[arg-type]


def _decode_known(code: Attr, value: bytes, raw: bytes, four_octet: bool, out: dict[str, object]) -> BgpError | None:
    """Decode one recognised attribute into `out`, or return the RFC 7606 error for it."""
    taw, discard = Action.TREAT_AS_WITHDRAW, Action.ATTRIBUTE_DISCARD
    n = len(value)

    def length_err(action: Action) -> BgpError:
        return _upd(UpdateSub.ATTRIBUTE_LENGTH_ERROR, f"{code.name} of length {n}", action, raw)

    if code == Attr.ORIGIN:
        if n != 1:
            return length_err(taw)
        if value[0] > 2:
            return _upd(UpdateSub.INVALID_ORIGIN, f"ORIGIN value {value[0]}", taw, raw)
        out["origin"] = Origin(value[0])
    elif code == Attr.AS_PATH:
        try:
            out["as_path"] = _decode_as_path(value, four_octet)
        except ValueError as exc:
            return _upd(UpdateSub.MALFORMED_AS_PATH, f"AS_PATH: {exc}", taw)
    elif code == Attr.NEXT_HOP:
        if n != 4:
            return length_err(taw)
        nh = IPv4Address(value)
        if int(nh) == 0 or nh.is_multicast or int(nh) == 0xFFFFFFFF:
            return _upd(UpdateSub.INVALID_NEXT_HOP, f"NEXT_HOP {nh}", taw, raw)
        out["next_hop"] = nh
    elif code in (Attr.MED, Attr.LOCAL_PREF):
        if n != 4:
            return length_err(taw)
        out["med" if code == Attr.MED else "local_pref"] = struct.unpack("!I", value)[0]
    elif code == Attr.ATOMIC_AGGREGATE:
        if n != 0:
            return length_err(discard)
        out["atomic_aggregate"] = True
    elif code == Attr.AGGREGATOR:
        size = 8 if four_octet else 6
        if n != size:
            return length_err(discard)
        asn = struct.unpack_from("!I" if four_octet else "!H", value)[0]
        out["aggregator"] = (asn, IPv4Address(value[size - 4:]))
    elif code == Attr.COMMUNITIES:
        if n == 0 or n % 4:
            return length_err(taw)
        out["communities"] = struct.unpack(f"!{n // 4}I", value)
    elif code == Attr.ORIGINATOR_ID:
        if n != 4:
            return length_err(taw)
        out["originator_id"] = IPv4Address(value)
    elif code == Attr.CLUSTER_LIST:
        if n == 0 or n % 4:
            return length_err(taw)
        out["cluster_list"] = tuple(IPv4Address(value[k:k + 4]) for k in range(0, n, 4))
    elif code in (Attr.MP_REACH_NLRI, Attr.MP_UNREACH_NLRI):
        # the NLRI sits behind the next hop: a broken MP attribute cannot be withdrawn safely
        try:
            if code == Attr.MP_UNREACH_NLRI:
                out["mp_unreach"] = _decode_mp_unreach(value)
                return None
            mp = _decode_mp_reach(value)
        except ValueError as exc:
            return _upd(UpdateSub.OPTIONAL_ATTRIBUTE_ERROR, f"{code.name}: {exc}", Action.SESSION_RESET, raw)
        out["mp_reach"] = mp
        hops = mp.next_hops6()
        if hops is not None and _unusable6(hops[0]):
            # a well-formed but unusable next hop: its NLRI can be found, so they are withdrawn
            return _upd(UpdateSub.INVALID_NEXT_HOP, f"MP_REACH_NLRI next hop {hops[0]}", taw, raw)
    return None


def _unusable6(nh: IPv6Address) -> bool:
    """A global IPv6 next hop no one can forward to: unspecified, multicast, loopback,
    link-local (that belongs in the second, link-local slot) or IPv4-mapped."""
    return (nh.is_unspecified or nh.is_multicast or nh.is_loopback or nh.is_link_local
            or nh.ipv4_mapped is not None)


class Framer:
    """Splits a TCP byte stream into whole messages; header errors raise BgpError."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER_LEN:
            length, _ = check_header(bytes(self._buf[:HEADER_LEN]))
            if len(self._buf) < length:
                break
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]
        return out

    def pending(self) -> int:
        return len(self._buf)
