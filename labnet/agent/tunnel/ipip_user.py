"""Userspace IPIP: a TUN device named `tunl0` whose packets travel as real IPIP (IPv4 protocol 4).

For kernels without the `ipip` module. The wire format is the kernel's: an outer IPv4 header
(src = this node's underlay address, dst = the remote node, protocol 4) around the inner packet.

Outbound: the kernel routes `10.100.5.192/26 via 192.168.50.74 dev tunl0 onlink` into the TUN
device, which hands us the bare inner packet (the gateway is lost on the way). So we mirror the
main table's routes through tunl0 into a longest-prefix-match table (packet.RouteTable) and
find the remote node there. A netlink monitor keeps the mirror in step with the kernel, so the
kernel route table stays the single source of truth, also when someone edits it by hand.
Inbound: a raw socket of protocol 4 bound to the node address gets every IPIP packet for this
node with its outer header; we check it and write the inner packet into the TUN device.

Threads: one per direction plus the route monitor. Each datapath thread drains its fd without
blocking and only polls (with a wake-up pipe for shutdown) when it runs dry, so a busy tunnel
costs one read and one write syscall per packet. Closing the TUN fd removes tunl0 (and with it
every route through it), which is what a clean shutdown does.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from labnet.agent import rtnl
from labnet.agent.tunnel.packet import (
    ICMP_FRAG_NEEDED,
    ICMP_NET_UNREACH,
    IP_DF,
    IPPROTO_IPIP,
    RouteTable,
    TunnelRoute,
    decap,
    icmp_unreachable,
    is_icmp_error,
)
from labnet.errors import BadInput, LabnetError
from labnet.settings import IPIP_OVERHEAD

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
RTMGRP_IPV4_ROUTE = 0x40
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
TXQUEUELEN = 1000
UNREACH_PER_SECOND = 10  # cap on ICMP net-unreachable answers, as the kernel rate-limits its own

_u32 = struct.Struct("!I").unpack_from


class TunnelError(LabnetError):
    """The tunnel could not be set up (message names the namespace object and what went wrong)."""


@dataclass
class Counters:
    """What the datapath did. tx = encapsulated towards the underlay, rx = decapsulated into tunl0."""

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped_no_route: int = 0
    tx_dropped_too_big: int = 0  # DF set and larger than the tunnel MTU: answered with ICMP 3/4
    tx_dropped_bad: int = 0  # not IPv4
    tx_errors: int = 0  # sendto failed
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped_bad: int = 0  # not IPIP, or inner not IPv4
    rx_errors: int = 0  # TUN write failed
    route_reloads: int = 0
    routes: int = 0


def ensure_tun_node() -> None:
    """/dev/net/tun must exist; a fresh mount namespace with its own /dev may lack it."""
    try:
        st = os.stat(TUN_PATH)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(TUN_PATH), exist_ok=True)
        os.mknod(TUN_PATH, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
        return
    if not stat.S_ISCHR(st.st_mode):
        raise TunnelError(f"{TUN_PATH} exists but is not a character device (mode {oct(st.st_mode)})")


def _link_exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
        return True
    except OSError:
        return False


def open_tun(ifname: str, persist: bool = False) -> tuple[int, bool]:
    """Create the TUN device `ifname` (IFF_TUN | IFF_NO_PI) and return (its fd, adopted).

    persist: the device outlives this process (TUNSETPERSIST), with its addresses and the routes
    through it, so a killed agent leaves tunl0 in place; the next start attaches to it again
    (adopted=True). Only a clean stop clears the flag, which removes the device."""
    ensure_tun_node()
    existed = persist and _link_exists(ifname)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        hint = ""
        if exc.errno in (errno.EBUSY, errno.EINVAL, errno.EEXIST):
            hint = (f": an interface named {ifname} already exists in this network namespace"
                    " (the kernel's ipip fallback device, or another datapath still holding it);"
                    " use the kernel tunnel then")
        raise TunnelError(f"cannot create TUN device {ifname}: {exc}{hint}") from exc
    os.set_blocking(fd, False)
    return fd, existed


def local_interface_mtu(local: str) -> int:
    """MTU of the interface holding `local` in this network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            if a.get("IFA_ADDRESS") == local or a.get("IFA_LOCAL") == local:
                links = ipr.get_links(a["index"])
                return int(links[0].get("IFLA_MTU"))
    raise BadInput(f"local address {local} is not assigned to any interface in this network namespace")


def _sysctl(ifname: str, key: str, value: str) -> None:
    Path(f"/proc/sys/net/ipv4/conf/{ifname}/{key}").write_text(value)


def configure_link(ifname: str, address: str, mtu: int) -> int:
    """Set MTU, the tunnel address as /32, and bring the link up. Returns its ifindex."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TunnelError(f"{ifname}: link vanished right after it was created")
        idx = int(found[0])
        # TUN's default queue of 500 overflows under one TCP stream before the reader catches up
        ipr.link("set", index=idx, mtu=mtu, txqlen=TXQUEUELEN)
        for a in ipr.get_addr(index=idx, family=socket.AF_INET):
            if (a.get("IFA_ADDRESS"), a["prefixlen"]) != (address, 32):
                ipr.addr("del", index=idx, address=a.get("IFA_ADDRESS"), prefixlen=a["prefixlen"])
        if not ipr.get_addr(index=idx, family=socket.AF_INET, address=address):
            ipr.addr("add", index=idx, address=address, prefixlen=32)
        # Our own ICMP errors come out of tunl0 with the tunnel address as source: let them in.
        _sysctl(ifname, "accept_local", "1")
        # The kernel's tunl0 carries no IPv6; keep the TUN from sending router solicitations.
        v6 = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
        if v6.exists():
            v6.write_text("1")
        ipr.link("set", index=idx, state="up")
    return idx


def read_tunnel_routes(ifindex: int) -> list[TunnelRoute]:
    """Unicast routes of the main table that leave through `ifindex` (the kernel filters)."""
    return [TunnelRoute(ipaddress.IPv4Network(f"{r.dst}/{r.dst_len}"),
                        ipaddress.IPv4Address(r.gateway) if r.gateway else None)
            for r in rtnl.dump_routes(socket.AF_INET, table=RT_TABLE_MAIN, oif=ifindex) if r.type == RTN_UNICAST]


class IpipDatapath:
    """The userspace tunl0 in the current network namespace.

    `start()` creates and configures tunl0 and starts the threads; `stop()` ends them and removes
    tunl0. `counters()` reports traffic; `update_routes()` re-reads the kernel routes now (the
    monitor does so by itself on every route change).
    """

    mode = "ipip-userspace"

    def __init__(
        self,
        local: str,
        address: str,
        mtu: int | None = None,
        *,
        ifname: str = "tunl0",
        answer_unreachable: bool = True,
        status_file: Path | None = None,
        status_interval: float = 1.0,
        on_failure: Callable[[BaseException], None] | None = None,
        persist: bool = False,
    ) -> None:
        try:
            self.local = str(ipaddress.IPv4Address(local))
            self.address = str(ipaddress.IPv4Address(address))
        except ValueError as exc:
            raise BadInput(f"ipip datapath: {exc} (local and address must be IPv4 addresses)") from exc
        if mtu is not None and not 68 <= mtu <= 65515:
            raise BadInput(f"ipip datapath: mtu {mtu} out of range 68..65515")
        if len(ifname.encode()) > 15:
            raise BadInput(f"ipip datapath: interface name {ifname!r} longer than 15 bytes")
        self.mtu = mtu
        self.ifname = ifname
        self.answer_unreachable = answer_unreachable
        self.status_file = status_file
        self.status_interval = status_interval
        self.table = RouteTable()
        self.ifindex = 0
        self._tun = -1
        self._sock: socket.socket | None = None
        self._nl: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._tx = (0, 0, 0, 0, 0, 0)
        self._rx = (0, 0, 0, 0)
        self._reloads = 0
        self._status_lock = threading.Lock()
        self._status_written = ""  # what the status file holds
        self.failed: BaseException | None = None
        self.on_failure = on_failure
        self.persist = persist
        self.adopted = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.mtu is None:
            self.mtu = local_interface_mtu(self.local) - IPIP_OVERHEAD
        try:
            self._sock = sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
            try:
                sock.bind((self.local, 0))
            except OSError as exc:
                raise BadInput(f"ipip datapath: cannot use local address {self.local}: {exc}") from exc
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            # Subscribe to route changes before the first read, so no change can slip in between.
            self._nl = nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            nl.bind((0, RTMGRP_IPV4_ROUTE))
            nl.setblocking(False)
            self._tun, self.adopted = open_tun(self.ifname, self.persist)
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self.ifindex = configure_link(self.ifname, self.address, self.mtu)
            self.update_routes()
        except BaseException:
            if not self.adopted:
                self._unpersist()
            self._close()  # also removes a half-configured tunl0 (not one adopted from before)
            raise
        for target, name in ((self._tx_loop, "tx"), (self._rx_loop, "rx"), (self._monitor_loop, "routes")):
            t = threading.Thread(target=self._guard, args=(target,), name=f"{self.ifname}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, loop: Callable[[], None]) -> None:
        """A datapath thread that dies takes the tunnel down with it: say so, and tell the owner."""
        try:
            loop()
        except BaseException as exc:
            if self._stopping:
                return
            self.failed = exc
            print(f"{self.ifname}: {threading.current_thread().name} thread failed:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            if self.on_failure is not None:
                self.on_failure(exc)

    def stop(self) -> None:
        """End the threads and remove tunl0 (closing a non-persistent TUN fd deletes the link)."""
        self._stopping = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.write_status()
        self._unpersist()
        self._close()

    def _unpersist(self) -> None:
        if self.persist and self._tun >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._tun, TUNSETPERSIST, 0)  # closing the fd now removes tunl0

    def __enter__(self) -> IpipDatapath:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close(self) -> None:
        for fd in (self._tun, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._tun = self._wake_r = self._wake_w = -1
        for s in (self._sock, self._nl):
            if s is not None:
                s.close()
        self._sock = self._nl = None

    # -- status ----------------------------------------------------------------------------

    def counters(self) -> Counters:
        tp, tb, nr, tb2, bad, terr = self._tx
        rp, rb, rbad, rerr = self._rx
        return Counters(tp, tb, nr, tb2, bad, terr, rp, rb, rbad, rerr, self._reloads, len(self.table.routes))

    def status(self) -> dict[str, object]:
        return {
            "ifname": self.ifname, "mode": self.mode, "local": self.local,
            "address": self.address, "mtu": self.mtu, "adopted": self.adopted,
            "routes": {str(r.prefix): str(r.gateway) if r.gateway else None for r in self.table.routes},
            "counters": asdict(self.counters()),
        }

    def write_status(self) -> None:
        if self.status_file is None:
            return
        with self._status_lock:
            text = json.dumps(self.status(), indent=1) + "\n"
            if text == self._status_written:  # an idle tunnel: 200 nodes rewrote 200 files a second
                return
            tmp = self.status_file.with_suffix(self.status_file.suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.status_file)
            self._status_written = text

    def update_routes(self) -> None:
        """Re-read the routes through tunl0 from the kernel into the LPM table."""
        self.table.replace(read_tunnel_routes(self.ifindex))
        self._reloads += 1

    # -- datapath threads ------------------------------------------------------------------

    def _tx_loop(self) -> None:
        """tunl0 → raw socket: find the remote node, wrap, send."""
        assert self._sock is not None and self.mtu is not None
        tun, sock, mtu, lookup = self._tun, self._sock, self.mtu, self.table.lookup
        tunnel_src = socket.inet_aton(self.address)
        buf = bytearray(65536)
        mv = memoryview(buf)
        bufs = [buf]
        readv, sendto = os.readv, sock.sendto
        poller = select.poll()
        poller.register(tun, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        packets = nbytes = no_route = too_big = bad = errors = 0
        unreach_window, unreach_sent = 0.0, 0
        batch = 0
        while True:
            try:
                n = readv(tun, bufs)
            except BlockingIOError:
                self._tx = (packets, nbytes, no_route, too_big, bad, errors)
                if self._stopping:
                    return
                poller.poll()
                continue
            except OSError:
                if self._stopping:
                    return
                raise
            batch += 1
            if batch >= 256:  # publish now and then under sustained load too
                batch = 0
                self._tx = (packets, nbytes, no_route, too_big, bad, errors)
                if self._stopping:
                    return
            if n < 20 or buf[0] >> 4 != 4:
                bad += 1
                continue
            addr = lookup(_u32(buf, 16)[0])
            if addr is None:
                no_route += 1
                if self.answer_unreachable and not is_icmp_error(mv[:n]):
                    now = time.monotonic()
                    if now - unreach_window >= 1.0:
                        unreach_window, unreach_sent = now, 0
                    if unreach_sent < UNREACH_PER_SECOND:
                        unreach_sent += 1
                        self._inject(icmp_unreachable(mv[:n], tunnel_src, ICMP_NET_UNREACH))
                continue
            if n > mtu and buf[6] & IP_DF:
                # Normally the kernel already refused this against tunl0's MTU; we hold the line
                # when someone raised the link MTU above what the underlay carries.
                too_big += 1
                if not is_icmp_error(mv[:n]):
                    self._inject(icmp_unreachable(mv[:n], tunnel_src, ICMP_FRAG_NEEDED, mtu))
                continue
            try:
                sendto(mv[:n], addr)
            except OSError:
                errors += 1
                continue
            packets += 1
            nbytes += n

    def _inject(self, pkt: bytes) -> None:
        """Hand an ICMP error we generated to the kernel, as if it came from the tunnel."""
        try:
            os.write(self._tun, pkt)
        except OSError:
            pass

    def _rx_loop(self) -> None:
        """raw socket → tunl0: check the outer header, strip it, hand the inner packet over."""
        assert self._sock is not None
        tun, sock = self._tun, self._sock
        buf = bytearray(65536)
        mv = memoryview(buf)
        recv_into, write = sock.recv_into, os.write
        dontwait = socket.MSG_DONTWAIT
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        packets = nbytes = bad = errors = 0
        batch = 0
        while True:
            try:
                n = recv_into(buf, 65536, dontwait)
            except BlockingIOError:
                self._rx = (packets, nbytes, bad, errors)
                if self._stopping:
                    return
                poller.poll()
                continue
            except OSError:
                if self._stopping:
                    return
                raise
            batch += 1
            if batch >= 256:
                batch = 0
                self._rx = (packets, nbytes, bad, errors)
                if self._stopping:
                    return
            off = decap(buf, n)
            if off < 0:
                bad += 1
                continue
            try:
                write(tun, mv[off:n])
            except OSError:
                errors += 1
                continue
            packets += 1
            nbytes += n - off

    def _monitor_loop(self) -> None:
        """Reload the LPM table whenever an IPv4 route changes; write the status file now and then."""
        assert self._nl is not None
        nl = self._nl
        poller = select.poll()
        poller.register(nl.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        next_status = time.monotonic()
        while not self._stopping:
            timeout_ms = max(0, int((next_status - time.monotonic()) * 1000)) if self.status_file else -1
            events = poller.poll(timeout_ms)
            if self._stopping:
                return
            changed = False
            if events:
                while True:  # drain the burst, then reload once
                    try:
                        if not nl.recv(65536):
                            break
                        changed = True
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno == errno.ENOBUFS:  # we missed messages: a reload covers them
                            changed = True
                            continue
                        raise
            if changed:
                try:
                    self.update_routes()
                except Exception as exc:  # keep the old table; say why
                    print(f"{self.ifname}: route reload failed: {exc}", file=sys.stderr, flush=True)
            if self.status_file and time.monotonic() >= next_status:
                self.write_status()
                next_status = time.monotonic() + self.status_interval


def run_ipip(
    local: str,
    address: str,
    mtu: int | None = None,
    *,
    ifname: str = "tunl0",
    status_file: Path | None = None,
    answer_unreachable: bool = True,
) -> int:
    """Run the userspace tunl0 in the CURRENT network namespace until SIGTERM or SIGINT.

    SIGHUP re-reads the routes, SIGUSR1 writes the status file now. Must run in the main thread
    (it owns the signals). Returns 0 after a clean shutdown, which removes tunl0; 1 when a
    datapath thread failed (the traceback is on stderr).
    """
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
    # Block before the threads start, so they inherit the mask and only sigwait sees the signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    # a dead datapath thread ends the process (non-zero), so whoever supervises us notices
    dp = IpipDatapath(local, address, mtu, ifname=ifname, status_file=status_file,
                      answer_unreachable=answer_unreachable,
                      on_failure=lambda exc: os.kill(os.getpid(), signal.SIGTERM))
    dp.start()
    print(f"labnet-ipip: {ifname} up: local={dp.local} address={dp.address}/32 mtu={dp.mtu}",
          file=sys.stderr, flush=True)
    try:
        while True:
            sig = signal.sigwait(sigs)
            if sig == signal.SIGHUP:
                dp.update_routes()
            elif sig == signal.SIGUSR1:
                dp.write_status()
            else:
                break
    finally:
        dp.stop()
    c = dp.counters()
    print(f"labnet-ipip: {ifname} removed; tx {c.tx_packets} pkts rx {c.rx_packets} pkts", file=sys.stderr,
          flush=True)
    return 1 if dp.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m labnet.agent.tunnel.ipip_user",
        description="Userspace IPIP tunl0 (TUN + raw socket of protocol 4) in the current network namespace.",
    )
    ap.add_argument("--local", required=True, help="this node's underlay IPv4 address (outer source)")
    ap.add_argument("--address", required=True, help="tunnel address, the first address of the node's block")
    ap.add_argument("--mtu", type=int, default=None, help="tunl0 MTU (default: underlay MTU - 20)")
    ap.add_argument("--ifname", default="tunl0")
    ap.add_argument("--status-file", type=Path, default=None, help="write counters here as JSON every second")
    ap.add_argument("--no-unreachable", action="store_true", help="drop unroutable packets silently")
    args = ap.parse_args(argv)
    try:
        return run_ipip(args.local, args.address, args.mtu, ifname=args.ifname, status_file=args.status_file,
                        answer_unreachable=not args.no_unreachable)
    except LabnetError as exc:
        print(f"labnet-ipip: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
