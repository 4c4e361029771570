"""Reading the kernel's routes fast: one rtnetlink dump, decoded with `struct`.

The agent reads the main table on every pass and the userspace tunl0 on every route change.
pyroute2 decodes each message into a generic attribute tree (≈50 µs a route); at 100 nodes,
with a pass per learned block, those reads were most of a node's CPU while a lab came up.
This decodes only the fixed header and the five attributes the agent uses (≈2 µs a route)
and asks the kernel to filter by table and device when it can (NETLINK_GET_STRICT_CHK).
Writes still go through pyroute2. `parse` is pure and fuzzed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from typing import NamedTuple

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15

_NLH = struct.Struct("=IHHII")
_RTM = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_HDR = _NLH.size + _RTM.size


class Route(NamedTuple):
    """One route as the kernel dumped it. `dst`/`gateway` are text ("0.0.0.0" for a default)."""

    family: int
    dst: str
    dst_len: int
    gateway: str | None
    oif: int | None
    table: int
    proto: int
    type: int
    flags: int
    priority: int | None


class DumpError(OSError):
    """The kernel refused the dump (errno), or its answer was malformed."""


class DumpInterrupted(DumpError):
    """The table changed while the kernel dumped it (NLM_F_DUMP_INTR): read it again."""


def parse(data: bytes) -> tuple[list[Route], bool]:
    """The routes in a buffer of rtnetlink messages, and whether it ended the dump (NLMSG_DONE).
    Raises DumpError for an NLMSG_ERROR, a dump that ended with an error, or a message that does
    not fit its buffer; DumpInterrupted when the kernel says the dump may be inconsistent."""
    out: list[Route] = []
    off, end = 0, len(data)
    while off + _NLH.size <= end:
        length, kind, flags, _seq, _pid = _NLH.unpack_from(data, off)
        if length < _NLH.size or off + length > end:
            raise DumpError(errno.EBADMSG, f"netlink message of length {length} at offset {off} of {end}")
        if flags & NLM_F_DUMP_INTR:
            raise DumpInterrupted(errno.EINTR, "route dump: the table changed while it was dumped")
        if kind == NLMSG_DONE:
            code = -_I32.unpack_from(data, off + _NLH.size)[0] if length >= _NLH.size + 4 else 0
            if code > 0:  # the kernel's dump_done_errno: the dump stopped short
                raise DumpError(code, f"route dump ended early: {os.strerror(code)}")
            return out, True
        if kind == NLMSG_ERROR:
            code = -_I32.unpack_from(data, off + _NLH.size)[0] if length >= _NLH.size + 4 else errno.EBADMSG
            if code:
                raise DumpError(code, f"route dump: {os.strerror(code)}")
        elif kind == RTM_NEWROUTE and length >= _HDR:
            out.append(_route(data, off + _NLH.size, off + length))
        off += (length + 3) & ~3
    return out, False


def parse_events(data: bytes) -> list[tuple[int, Route]]:
    """Route events (RTM_NEWROUTE, RTM_DELROUTE) from a buffer read off a socket subscribed to
    route changes; other messages are skipped, and a message that does not fit ends the buffer."""
    out: list[tuple[int, Route]] = []
    off, end = 0, len(data)
    while off + _NLH.size <= end:
        length, kind = _NLH.unpack_from(data, off)[:2]
        if length < _NLH.size or off + length > end:
            break
        if kind in (RTM_NEWROUTE, RTM_DELROUTE) and length >= _HDR \
                and data[off + _NLH.size] in (socket.AF_INET, socket.AF_INET6):
            out.append((kind, _route(data, off + _NLH.size, off + length)))
        off += (length + 3) & ~3
    return out


def _route(data: bytes, at: int, end: int) -> Route:
    family, dst_len, _src_len, _tos, table, proto, _scope, rtype, flags = _RTM.unpack_from(data, at)
    dst: str | None = None
    gateway: str | None = None
    oif = priority = None
    alen = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family, -1)  # another family: no address read
    off = at + _RTM.size
    while off + _RTA.size <= end:
        rlen, rtype_attr = _RTA.unpack_from(data, off)
        if rlen < _RTA.size or off + rlen > end:
            break  # a truncated attribute ends the message; what came before stands
        body = off + _RTA.size
        size = rlen - _RTA.size
        kind = rtype_attr & 0x3FFF
        if kind == RTA_DST and size == alen:
            dst = socket.inet_ntop(family, data[body:body + alen])
        elif kind == RTA_GATEWAY and size == alen:
            gateway = socket.inet_ntop(family, data[body:body + alen])
        elif kind == RTA_OIF and size == 4:
            oif = _U32.unpack_from(data, body)[0]
        elif kind == RTA_PRIORITY and size == 4:
            priority = _U32.unpack_from(data, body)[0]
        elif kind == RTA_TABLE and size == 4:
            table = _U32.unpack_from(data, body)[0]
        off += (rlen + 3) & ~3
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(family, dst, dst_len, gateway, oif, table, proto, rtype, flags, priority)


def dump_request(seq: int, family: int, table: int = 0, oif: int | None = None) -> bytes:
    """An RTM_GETROUTE dump. With strict checking the kernel keeps only `table` and `oif`."""
    attrs = b""
    if oif is not None:
        attrs += _RTA.pack(8, RTA_OIF) + _U32.pack(oif)
    if table > 255:
        attrs += _RTA.pack(8, RTA_TABLE) + _U32.pack(table)
    body = _RTM.pack(family, 0, 0, 0, table if table <= 255 else 0, 0, 0, 0, 0) + attrs
    return _NLH.pack(_NLH.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def get_request(seq: int, dst: str) -> bytes:
    """An RTM_GETROUTE for one address (what `ip route get` asks)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    addr = socket.inet_pton(family, dst)
    body = _RTM.pack(family, len(addr) * 8, 0, 0, 0, 0, 0, 0, 0) + _RTA.pack(4 + len(addr), RTA_DST) + addr
    return _NLH.pack(_NLH.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    sock.settimeout(10.0)  # the kernel always answers; this only bounds a wedged one
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError:  # before Linux 4.20: no filtering in the kernel, dump_routes filters
        pass
    sock.bind((0, 0))
    return sock


def route_to(dst: str) -> Route:
    """The route the kernel would use for `dst` (`ip route get`); DumpError (ENETUNREACH...) if none."""
    with _socket() as sock:
        sock.send(get_request(1, dst))
        got, _ = parse(sock.recv(1 << 16))
        if not got:
            raise DumpError(errno.EBADMSG, f"route get {dst}: no route in the kernel's answer")
        return got[0]


def dump_routes(family: int = socket.AF_INET, *, table: int = 0, oif: int | None = None) -> list[Route]:
    """The routes of this network namespace, of `table` (0: all) through `oif` (None: any).
    The filters are applied here too: a kernel without strict checking dumps everything."""
    for _ in range(2):
        with contextlib.suppress(DumpInterrupted):
            return _dump(family, table, oif)
    return _dump(family, table, oif)  # a third interruption is the caller's


def _dump(family: int, table: int, oif: int | None) -> list[Route]:
    with _socket() as sock:
        sock.send(dump_request(1, family, table, oif))
        routes: list[Route] = []
        while True:
            got, done = parse(sock.recv(1 << 17))
            routes.extend(r for r in got if (not table or r.table == table) and (oif is None or r.oif == oif))
            if done:
                return routes
