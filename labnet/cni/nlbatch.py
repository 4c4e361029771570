"""Batched rtnetlink for the CNI ADD path: pyroute2's message classes on one plain socket.

pyroute2's IPRoute runs an asyncio loop per request (~0.4 ms of CPU each, the largest part
of an ADD's CPU); an ADD makes about a dozen requests. Here the messages are pyroute2's
(its encoders and decoders), but each batch goes to the kernel in one write and the answers
are read back by sequence number: four round trips per ADD. The kernel runs a batch's
requests in order and answers each; a failed one does not stop the ones after it, so
batches only hold requests that make sense on their own.

A socket belongs to the network namespace of the thread that opened it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

NLMSG_ERROR = 2
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
_HDR = struct.Struct("=IHHII")
NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
AF_INET = 2
AF_INET6 = 10
IFA_F_NODAD = 0x02  # an IPv6 address usable at once: a pod's /128 is its own, no duplicate to detect
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
TIMEOUT = 30.0


class NetlinkFailed(OSError):
    """One request of a batch failed: errno, and which request."""


@dataclass
class Answer:
    """The kernel's answer to one request: its error (0: done) and any messages it sent back."""

    what: str
    error: int = 0
    message: str = ""  # the kernel's extended ack text, if it gave one
    replies: list[Any] = field(default_factory=list)

    def ok(self) -> Answer:
        if self.error:
            detail = f" ({self.message})" if self.message else ""
            raise NetlinkFailed(self.error, f"{self.what}: {os.strerror(self.error)}{detail}")
        return self


class Socket:
    """An rtnetlink socket in the calling thread's network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(TIMEOUT)  # the kernel always answers; this only bounds a wedged one
        self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # errors come with the kernel's own text
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def batch(self, requests: list[tuple[str, Any, int, int]]) -> list[Answer]:
        """Send (description, message, type, flags) requests in one write; their answers, in order."""
        buf = bytearray()
        answers: dict[int, Answer] = {}
        order: list[int] = []
        for what, msg, mtype, flags in requests:
            self._seq += 1
            msg["header"]["type"] = mtype
            msg["header"]["flags"] = flags | NLM_F_ACK
            msg["header"]["sequence_number"] = self._seq
            msg.encode()
            buf += msg.data
            answers[self._seq] = Answer(what)
            order.append(self._seq)
        self._sock.send(bytes(buf))
        pending = set(order)
        while pending:
            data = self._sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, flags, seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                answer = answers.get(seq)
                if answer is not None:
                    if mtype == NLMSG_ERROR:
                        answer.error = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        if answer.error and flags & NLM_F_ACK_TLVS:
                            answer.message = _ext_ack_text(data[off:off + length], bool(flags & NLM_F_CAPPED))
                        pending.discard(seq)
                    elif mtype == RTM_NEWLINK:
                        reply = ifinfmsg(data[off:off + length])
                        reply.decode()
                        answer.replies.append(reply)
                off += (length + 3) & ~3
        return [answers[s] for s in order]


def _ext_ack_text(msg: bytes, capped: bool) -> str:
    """NLMSGERR_ATTR_MSG from an error answer: after the error code and the request (only
    its header if capped) come TLVs."""
    orig_len = _HDR.unpack_from(msg, _HDR.size + 4)[0] if len(msg) >= 2 * _HDR.size + 4 else 0
    off = _HDR.size + 4 + (_HDR.size if capped else (orig_len + 3) & ~3)
    while off + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, off)
        if length < 4:
            break
        if kind & 0x3FFF == NLMSGERR_ATTR_MSG:
            return msg[off + 4:off + length].split(b"\0", 1)[0].decode(errors="replace")
        off += (length + 3) & ~3
    return ""


def veth_add(host_if: str, mac: str, peer: str, peer_netns_fd: int) -> tuple[str, Any, int, int]:
    """Create host_if (with `mac`) and its peer `peer` directly in the netns of `peer_netns_fd`."""
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_IFNAME", host_if), ("IFLA_ADDRESS", mac),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd)]})]}),
        ]}),
    ]
    return f"create veth {host_if} <-> {peer}", msg, RTM_NEWLINK, NEW


def link_get(name: str) -> tuple[str, Any, int, int]:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return f"find {name}", msg, RTM_GETLINK, NLM_F_REQUEST


def link_up(index: int, mtu: int, name: str) -> tuple[str, Any, int, int]:
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
    msg["attrs"] = [("IFLA_MTU", mtu)]
    return f"set {name} up, mtu {mtu}", msg, RTM_NEWLINK, NLM_F_REQUEST


def _family(address: str) -> int:
    return AF_INET6 if ":" in address else AF_INET


def addr_add(index: int, address: str, prefixlen: int, name: str) -> tuple[str, Any, int, int]:
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = _family(address), prefixlen, index
    if msg["family"] == AF_INET6:
        msg["flags"] = IFA_F_NODAD
        msg["attrs"] = [("IFA_ADDRESS", address)]
    else:
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    return f"add {address}/{prefixlen} to {name}", msg, RTM_NEWADDR, NEW


def route(dst: str, dst_len: int, index: int, scope: int, proto: int, gateway: str | None = None,
          replace: bool = False) -> tuple[str, Any, int, int]:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = _family(dst), dst_len, RT_TABLE_MAIN, proto
    msg["scope"], msg["type"] = scope, RTN_UNICAST
    attrs: list[tuple[str, Any]] = [("RTA_OIF", index)]
    if dst_len:
        attrs.insert(0, ("RTA_DST", dst))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    msg["attrs"] = attrs
    via = f" via {gateway}" if gateway else ""
    return f"{'replace' if replace else 'add'} route {dst}/{dst_len}{via} dev #{index}", msg, RTM_NEWROUTE, \
        REPLACE if replace else NEW


def index_and_mac(answer: Answer) -> tuple[int, str]:
    """The ifindex and MAC from a link_get answer."""
    answer.ok()
    if not answer.replies:
        raise NetlinkFailed(errno.ENODEV, f"{answer.what}: no answer")
    link = answer.replies[0]
    return int(link["index"]), str(link.get_attr("IFLA_ADDRESS"))
