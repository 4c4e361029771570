"""Pure IPv4 helpers for the userspace IPIP datapath: header checks, ICMP errors, the LPM table.

No sockets and no root here, so all of it is unit-tested (tests/unit/test_tunnel_packet.py).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_FRAG_NEEDED = 4
IP_DF = 0x40  # in byte 6 of the header (flags + fragment offset, high byte)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    b = bytes(data)
    if len(b) % 2:
        b += b"\0"
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ttl: int = 64, ident: int = 0) -> bytes:
    """A 20-byte IPv4 header with a correct checksum (no options, DF clear)."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0, ttl, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def icmp_unreachable(orig: bytes | bytearray | memoryview, src: bytes, code: int, next_hop_mtu: int = 0) -> bytes:
    """ICMP destination-unreachable (type 3) answering `orig`, sent from `src` back to orig's source.

    For code 4 (fragmentation needed) `next_hop_mtu` goes in the second half of the
    "unused" word (RFC 1191). The body quotes the original header plus 8 bytes (RFC 792).
    """
    o = bytes(orig)
    if len(o) < 20:
        raise ValueError(f"cannot answer a {len(o)}-byte packet with ICMP: shorter than an IPv4 header")
    ihl = (o[0] & 0x0F) * 4
    quoted = o[: ihl + 8]
    body = struct.pack("!BBHHH", ICMP_DEST_UNREACH, code, 0, 0, next_hop_mtu) + quoted
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4_header(src, o[12:16], IPPROTO_ICMP, len(body)) + body


def is_icmp_error(pkt: bytes | bytearray | memoryview) -> bool:
    """Never answer an ICMP error with another one (RFC 1122 3.2.2)."""
    if pkt[9] != IPPROTO_ICMP:
        return False
    ihl = (pkt[0] & 0x0F) * 4
    return len(pkt) > ihl and pkt[ihl] in (3, 4, 5, 11, 12)


def decap(pkt: bytes | bytearray | memoryview, n: int) -> int:
    """Offset of the inner packet in an IPIP packet of length n received on a raw socket, or -1.

    Checks the outer header is IPv4 carrying protocol 4 and the inner is IPv4 too.
    """
    if n < 40 or pkt[0] >> 4 != 4 or pkt[9] != IPPROTO_IPIP:
        return -1
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or n < ihl + 20 or pkt[ihl] >> 4 != 4:
        return -1
    return ihl


@dataclass(frozen=True)
class TunnelRoute:
    """One kernel route through the tunnel: `prefix via gateway dev tunl0` (gateway None: direct)."""

    prefix: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None


Addr = tuple[str, int]  # what socket.sendto takes: (outer destination, 0)


class RouteTable:
    """Longest-prefix match of inner destinations to the outer destination (the remote node).

    `lookup` takes the inner destination as a 32-bit int (read straight from the packet with
    struct) and returns the sendto address of the remote node, ready for the raw socket.
    Lookups are cached; `replace` builds a new table and
    swaps it in with one assignment, so the datapath threads never see a half-built one.
    A route without a gateway sends to the inner destination itself, as the kernel's
    `tunl0` (remote any) does.
    """

    CACHE_MAX = 65536

    def __init__(self, routes: Iterable[TunnelRoute] = ()) -> None:
        self._state: tuple[list[tuple[int, dict[int, Addr | None]]], dict[int, Addr | None]] = ([], {})
        self.routes: tuple[TunnelRoute, ...] = ()
        self.replace(routes)

    def replace(self, routes: Iterable[TunnelRoute]) -> None:
        by_len: dict[int, dict[int, Addr | None]] = {}
        kept = tuple(sorted(set(routes), key=lambda r: (r.prefix.prefixlen, int(r.prefix.network_address))))
        for r in kept:
            gw = (str(r.gateway), 0) if r.gateway is not None else None
            by_len.setdefault(r.prefix.prefixlen, {})[int(r.prefix.network_address)] = gw
        levels = [(_mask(plen), by_len[plen]) for plen in sorted(by_len, reverse=True)]
        self._state = (levels, {})
        self.routes = kept

    def lookup(self, dst: int) -> Addr | None:
        """The (outer destination, 0) for inner destination `dst`, or None: no route."""
        levels, cache = self._state
        hit = cache.get(dst, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        found: Addr | None = None
        for mask, table in levels:
            key = dst & mask
            if key in table:
                gw = table[key]
                found = gw if gw is not None else (socket.inet_ntoa(dst.to_bytes(4, "big")), 0)
                break
        if len(cache) >= self.CACHE_MAX:
            cache.clear()
        cache[dst] = found
        return found


_MISS = object()


def _mask(prefixlen: int) -> int:
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF if prefixlen else 0
