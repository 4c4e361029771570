"""Probes: does a packet from A reach B, over ICMP, TCP or UDP, with which source address as B
sees it, with how much loss, and what is the largest packet the path lets through.

Calico's FV connectivity checker runs a client and a server container per probe. Here the
probing process opens its sockets inside the source's and the target's network namespaces (a
socket stays in the namespace it was made in, whichever thread uses it later), so the target's
responder is a listening socket, started and stopped with the probe, that answers every
connection or datagram with the address and port it came from. Nothing is left in the lab.
ICMP probes and the MTU probe run `ping` in the source's namespaces. Every probe works for
either IP family: the target address says which.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from labnet.errors import BadInput, LabnetError
from labnet.nsexec import NodeNS, in_netns, run

PROTOS = ("icmp", "tcp", "udp")
CONNECT_TIMEOUT = 1.0  # one try; a probe retries until its deadline
RECEIVED = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_MTU_SAID = re.compile(r"mtu ?[=:] ?(\d+)")  # v4 says mtu=1430, v6 mtu: 1430


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def socket_in(ns: NodeNS, kind: socket.SocketKind, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A socket of `family` made inside `ns`'s network namespace."""
    return in_netns(ns, lambda: socket.socket(family, kind | socket.SOCK_CLOEXEC))


def _unmapped(ip: str) -> str:
    """An address as the target saw it: an IPv4 client of the dual-stack responder shows as
    ::ffff:a.b.c.d, which is a.b.c.d."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class Responder:
    """A TCP or UDP echo on `port` inside `ns`: each connection or datagram is answered with
    "<source address> <source port>" as the target saw them. Use as a context manager."""

    def __init__(self, ns: NodeNS, proto: str, port: int) -> None:
        if proto not in ("tcp", "udp"):
            raise BadInput(f"a responder speaks tcp or udp, not {proto!r}")
        if not 1 <= port <= 65535:
            raise BadInput(f"port {port} is outside 1..65535")
        self.ns, self.proto, self.port = ns, proto, port
        # one dual-stack socket answers both families; a machine without IPv6 gets an IPv4 one
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        try:
            self.sock, any_addr = socket_in(ns, kind, socket.AF_INET6), "::"
        except OSError:
            self.sock, any_addr = socket_in(ns, kind), "0.0.0.0"
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if any_addr == "::":
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                self.sock.bind((any_addr, port))
            except OSError as exc:
                raise LabnetError(f"{ns.name}: cannot listen on {proto} port {port} for a probe: "
                                  f"{exc.strerror}") from exc
            if proto == "tcp":
                self.sock.listen(64)
            self._stop_r, self._stop_w = os.pipe()
        except BaseException:
            self.sock.close()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"responder-{ns.name}-{proto}-{port}", daemon=True)
        self.seen: list[str] = []  # source addresses, in order

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock.fileno(), self._stop_r], [], [])
            if self._stop_r in ready:
                return
            with contextlib.suppress(OSError):
                if self.proto == "tcp":
                    conn, peer = self.sock.accept()
                    ip, port = _unmapped(peer[0]), peer[1]
                    with conn:
                        conn.sendall(f"{ip} {port}\n".encode())
                else:
                    data, peer = self.sock.recvfrom(2048)
                    ip, port = _unmapped(peer[0]), peer[1]
                    self.sock.sendto(f"{ip} {port} {data[:64].decode(errors='replace')}\n".encode(), peer)
                self.seen.append(ip)


@dataclass(frozen=True)
class Outcome:
    reached: bool
    source: str | None  # the source address the target saw (tcp, udp)
    detail: str  # what happened, for the report


def connect_once(src: NodeNS, dst_ip: str, proto: str, port: int = 0, timeout: float = CONNECT_TIMEOUT) -> Outcome:
    """One probe from `src` to dst_ip: a ping, a TCP connect or a UDP datagram, and the answer."""
    if proto == "icmp":
        wait = f"{max(timeout, 0.1):g}"  # iputils takes fractions of a second
        proc = run(src, ["ping", "-n", "-c", "1", "-W", wait, dst_ip], check=False, timeout=10 + timeout)
        m = RECEIVED.search(proc.stdout)
        if m:
            got = int(m.group(2)) > 0
            return Outcome(got, None, "echo reply" if got else f"no echo reply within {wait}s")
        return Outcome(False, None, f"ping exited {proc.returncode}: {_last_line(proc.stderr + proc.stdout, '')}")
    sock = socket_in(src, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM, family_of(dst_ip))
    with sock:
        sock.settimeout(timeout)
        try:
            if proto == "tcp":
                sock.connect((dst_ip, port))
                answer = sock.recv(256)
            else:
                sock.sendto(b"labnet-probe", (dst_ip, port))
                answer = sock.recv(256)
        except TimeoutError:
            return Outcome(False, None, f"no answer within {timeout:.1f}s")
        except ConnectionRefusedError:
            return Outcome(False, None, "connection refused")
        except OSError as exc:
            return Outcome(False, None, exc.strerror or str(exc))
    words = answer.decode(errors="replace").split()
    return Outcome(True, words[0] if words else None, f"answered from {dst_ip}:{port}, source seen "
                   f"{words[0] if words else '?'}")


def _last_line(text: str, default: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else default


@dataclass(frozen=True)
class LossOutcome:
    sent: int
    received: int

    @property
    def percent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0


def measure_loss(src: NodeNS, dst_ip: str, proto: str, port: int = 0, count: int = 100,
                 interval: float = 0.02) -> LossOutcome:
    """Send `count` probes `interval` apart and count the answers (ICMP: one ping run; UDP:
    numbered datagrams, each answer counted once; TCP: one connect each)."""
    if count < 1:
        raise BadInput(f"a loss probe sends at least one packet, not {count}")
    if proto == "icmp":
        proc = run(src, ["ping", "-n", "-q", "-c", str(count), "-i", f"{max(interval, 0.002):.3f}", "-W", "1",
                         dst_ip], check=False, timeout=30 + count * (interval + 0.01))
        m = RECEIVED.search(proc.stdout)
        if not m:
            raise LabnetError(f"{src.name}: ping {dst_ip} said nothing countable: "
                              f"{_last_line(proc.stdout + proc.stderr, 'no output')}")
        return LossOutcome(int(m.group(1)), int(m.group(2)))
    if proto == "tcp":
        got = sum(connect_once(src, dst_ip, "tcp", port).reached for _ in range(count))
        return LossOutcome(count, got)
    sock = socket_in(src, socket.SOCK_DGRAM, family_of(dst_ip))
    answered: set[int] = set()
    with sock:
        sock.setblocking(False)
        for i in range(count):
            sock.sendto(f"seq {i}".encode(), (dst_ip, port))
            _drain(sock, answered, interval)
        _drain(sock, answered, 1.0)  # the last answers
    return LossOutcome(count, len(answered))


def _drain(sock: socket.socket, answered: set[int], wait: float) -> None:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return
        with contextlib.suppress(OSError):
            words = sock.recv(256).decode(errors="replace").split()
            if len(words) >= 4 and words[2] == "seq" and words[3].isdigit():
                answered.add(int(words[3]))


@dataclass(frozen=True)
class MtuOutcome:
    largest: int | None  # the largest IP packet (header included) that got through with DF set (IPv6: no fragmenting)
    said: int | None  # the MTU an oversized DF packet was refused with (fragmentation needed)
    detail: str


def _df_ping(src: NodeNS, dst_ip: str, size: int) -> tuple[bool, int | None, str]:
    """One ping of an IP packet of `size` bytes with DF set: (answered, MTU said back, text).
    IPv6 routers never fragment: the same probe, with 48 bytes of IPv6 and ICMPv6 headers."""
    headers = 48 if ":" in dst_ip else 28
    proc = run(src, ["ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", str(size - headers), dst_ip], check=False,
               timeout=15)
    text = proc.stdout + proc.stderr
    m = RECEIVED.search(proc.stdout)
    mtu = _MTU_SAID.search(text)
    return bool(m and int(m.group(2)) > 0), int(mtu.group(1)) if mtu else None, _last_line(text, "no output")


def path_mtu(src: NodeNS, dst_ip: str, low: int = 576, high: int = 1500) -> MtuOutcome:
    """The largest DF packet from `src` that reaches dst_ip (a binary search between low and
    high), and what an oversized one is told: the MTU of the hop that refused it, said back
    in an ICMP fragmentation-needed (or by the source's own kernel, for its first hop)."""
    # a path MTU learnt earlier (an exception route, kept for minutes) would answer for the path
    run(src, ["ip", "route", "flush", "cache"], check=False, timeout=10)
    ok, _, first = _df_ping(src, dst_ip, low)
    if not ok:
        return MtuOutcome(None, None, f"not even a {low}-byte packet got through: {first}")
    lo, hi = low, high + 1  # lo passes, hi does not (or is past what we try)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _df_ping(src, dst_ip, mid)[0]:
            lo = mid
        else:
            hi = mid
    said, text = None, f"{lo} bytes passed"
    if lo < high:
        for _ in range(3):  # the first oversized packet may be what teaches the source the PMTU
            passed, said, last = _df_ping(src, dst_ip, lo + 1)
            if said is not None:
                text = f"{lo} bytes passed; {lo + 1} refused: {last}"
                break
            text = f"{lo} bytes passed; {lo + 1} {'passed' if passed else 'got no answer'}: {last}"
    return MtuOutcome(lo, said, text)


def need_ping() -> None:
    if shutil.which("ping") is None:
        raise LabnetError("ping is not installed on this machine; install iputils-ping (apt-get install iputils-ping)")


@contextlib.contextmanager
def responding(ns: NodeNS | None, proto: str, port: int) -> Iterator[Responder | None]:
    """A responder in `ns` for a tcp/udp probe; nothing for icmp or a target that is only an
    address (something else must answer there)."""
    if proto == "icmp" or ns is None:
        yield None
        return
    with Responder(ns, proto, port) as r:
        yield r

