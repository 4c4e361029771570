"""asyncio BGP speaker: TCP sessions driven by the FSM, routes kept in the RIB.

One task per peer owns that peer's connections and FSMs; socket readers only decode and post
events to it, so FSM and RIB state change in one place at a time. Every connection has its own
FSM (RFC 4271 6.8 collisions are resolved between them); the outbound one is long-lived and
reconnects, inbound ones live as long as their TCP connection.

Families: IPv4 unicast always; IPv6 unicast (RFC 4760/2545) when the speaker has `next_hop6` and
the peer offers it too. Sessions run over IPv4 or IPv6; either carries both families, with next
hops from the speaker's own address of each family.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import socket
import struct
import termios
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network

from labnet.bgp.codec import (
    CARRIED,
    IPV4_UNICAST,
    IPV6_UNICAST,
    BgpError,
    Capabilities,
    CeaseSub,
    ErrCode,
    Framer,
    GracefulRestart,
    Keepalive,
    Message,
    Notification,
    Open,
    PathAttributes,
    Prefix,
    RouteRefresh,
    Update,
    decode,
    encode,
    end_of_rib,
    pack_updates,
    prefix_key,
)
from labnet.bgp.fsm import (
    ConnectTcp,
    DropTcp,
    Event,
    Fsm,
    FsmAction,
    FsmConfig,
    SendKeepalive,
    SendNotification,
    SendOpen,
    SessionDown,
    SessionUp,
    State,
    resolve_collision,
)
from labnet.bgp.rib import Address, Change, Family, Path, PeerInfo, Rib

log = logging.getLogger("labnet.bgp")

PEER_TYPES = ("node-to-node mesh", "global", "node specific")
INITIAL_CONNECT_RETRY = 0.1  # seconds after the first refused connect; doubles up to connect_retry


@dataclass(frozen=True)
class PeerConfig:
    address: str
    asn: int
    passive: bool = False
    rr_client: bool = False
    next_hop_self: bool = False
    graceful_restart: bool = True
    hold_time: int = 90
    peer_type: str = "node-to-node mesh"
    port: int = 179
    connect_retry: float = 5.0
    # source of our connection, of the peer address's family; default: the speaker's address of
    # that family (local_address or next_hop6)
    local_address: str | None = None

    def validate(self) -> None:
        family = 0
        for what, value in (("address", self.address), ("local address", self.local_address)):
            if value is None:
                continue
            try:
                addr = ip_address(value)
            except ValueError as exc:
                raise ValueError(f"BGP peer {what} {value!r} is not an IPv4 address nor an IPv6 address") from exc
            if addr.is_link_local and addr.version == 6:  # would need an interface scope
                raise ValueError(f"BGP peer {what} {value!r} is link-local: not an IPv4 address nor "
                                 f"a routable IPv6 address")
            if family and addr.version != family:
                raise ValueError(f"BGP peer {self.address}: local address {value} is not of the peer's family")
            family = addr.version
        if not 0 < self.asn <= 0xFFFFFFFF:
            raise ValueError(f"BGP peer {self.address}: AS {self.asn} out of range 1..4294967295")
        if self.hold_time in (1, 2) or not 0 <= self.hold_time <= 0xFFFF:
            raise ValueError(f"BGP peer {self.address}: hold time {self.hold_time} (must be 0 or 3..65535)")
        if self.peer_type not in PEER_TYPES:
            raise ValueError(f"BGP peer {self.address}: peer type {self.peer_type!r}, expected one of {PEER_TYPES}")


@dataclass(frozen=True)
class PeerStatus:
    address: str
    peer_type: str
    state: str
    since: float  # epoch seconds of the last state change
    info: str
    unacked: int = 0  # bytes sent on the session the peer has not acknowledged yet (TCP + buffer)
    stalled: bool = False  # TCP is retransmitting or probing: what was sent has not got through

    def row(self) -> list[str]:
        since = time.strftime("%H:%M:%S", time.gmtime(self.since))
        info = "Established" if self.state == State.ESTABLISHED.value else self.info
        return [self.address, self.peer_type, "up" if self.state == "Established" else "start", since, info]

    def as_dict(self) -> dict[str, object]:
        return {"peer_address": self.address, "peer_type": self.peer_type, "state": self.state,
                "since": self.since, "info": self.info, "unacked": self.unacked, "stalled": self.stalled}


def format_status(rows: list[PeerStatus]) -> str:
    """A table shaped like `calicoctl node status` (its STATE column says up/start)."""
    head = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]
    body = [r.row() for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    return "\n".join([sep, line(head), sep, *[line(b) for b in body], sep])


_conn_ids = itertools.count(1)


def _unacked(writer: asyncio.StreamWriter | None) -> int:
    """Bytes written to the session the peer has not acknowledged: the transport's buffer plus
    the socket's send queue (SIOCOUTQ). After a loss they wait for TCP's backed-off retransmit,
    which may come after the peer's hold timer: a session with bytes pending is not healthy yet."""
    if writer is None:
        return 0
    try:
        pending = writer.transport.get_write_buffer_size()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return pending
    except (OSError, AttributeError, ValueError):  # closing: its state is said elsewhere
        return 0


def _stalled(writer: asyncio.StreamWriter | None) -> bool:
    """TCP is retransmitting (or probing a zero window) on the session: after a loss its timer
    backs off, and the next try may come after the peer's hold timer. Bytes merely in flight
    (every keepalive for one round trip) do not count."""
    if writer is None:
        return False
    try:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return any(info[2:5])  # tcpi_retransmits, tcpi_probes, tcpi_backoff
    except (OSError, AttributeError, ValueError):
        return False


class _Conn:
    """One TCP connection (or, for the dialer, the slot for one) with its own FSM."""

    def __init__(self, fsm: Fsm, inbound: bool) -> None:
        self.id = next(_conn_ids)
        self.fsm = fsm
        self.inbound = inbound
        self.gen = 0  # bumped whenever the transport changes, so late events are dropped
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.four_octet = True
        self.closing: list[asyncio.StreamWriter] = []

    def close_transport(self) -> None:
        self.gen += 1
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()  # buffered data (a NOTIFICATION) is still flushed
            self.closing = [self.writer]  # so stop() can wait for the flush
        self.reader = self.writer = None


_Item = tuple[_Conn | None, int, str, object]
_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _streams(payload: object) -> _Streams:
    assert isinstance(payload, tuple) and len(payload) == 2
    return payload  # type: ignore[return-value]


class _Peer:
    def __init__(self, speaker: Speaker, cfg: PeerConfig) -> None:
        self.sp = speaker
        self.cfg = cfg
        self.address: Address = ip_address(cfg.address)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.conns: list[_Conn] = []
        self.dialer: _Conn | None = None
        if not cfg.passive:
            self.dialer = _Conn(self._fsm(auto_restart=True), inbound=False)
            self.conns.append(self.dialer)
        self.up: _Conn | None = None
        self.info: PeerInfo | None = None
        local = ip_address(cfg.local_address) if cfg.local_address else None
        # our IPv4 next hop; over IPv4 also the source of the connection (then its local end)
        self.local_addr = local if isinstance(local, IPv4Address) else speaker.local_address
        self.source6 = local if isinstance(local, IPv6Address) else speaker.next_hop6  # over IPv6
        # RFC 2545 3: a peer on our link (an IPv6 session inside our IPv6 subnet) also gets our
        # link-local address as next hop
        peer_ip = ip_address(cfg.address)
        on_link = speaker.net6 is not None and isinstance(peer_ip, IPv6Address) and peer_ip in speaker.net6
        self.link_local6 = speaker.link_local6 if on_link else None
        self.peer_gr: GracefulRestart | None = None
        self.gr_timer: asyncio.TimerHandle | None = None
        self.last = (State.ACTIVE.value if cfg.passive else State.IDLE.value, time.time(), "")
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    def _fsm(self, auto_restart: bool) -> Fsm:
        cfg = self.cfg
        return Fsm(FsmConfig(
            local_as=self.sp.asn, peer_as=cfg.asn, router_id=self.sp.router_id, hold_time=cfg.hold_time,
            connect_retry_time=cfg.connect_retry, initial_connect_retry=min(INITIAL_CONNECT_RETRY, cfg.connect_retry),
            idle_hold_time=1.0, passive=cfg.passive, auto_restart=auto_restart,
        ))

    # --- status --------------------------------------------------------------------------------

    def status(self) -> PeerStatus:
        rank = {State.ESTABLISHED: 5, State.OPEN_CONFIRM: 4, State.OPEN_SENT: 3, State.CONNECT: 2,
                State.ACTIVE: 2, State.IDLE: 1}
        best = max(self.conns, key=lambda c: rank[c.fsm.state], default=None)
        state, since, info = self.last
        if best is not None and (best.fsm.state != State.IDLE or best is self.dialer):
            state, since = best.fsm.state.value, best.fsm.since
            info = best.fsm.info or info
        writer = self.up.writer if self.up is not None else None
        return PeerStatus(self.cfg.address, self.cfg.peer_type, state, since,
                          "Established" if state == "Established" else info, _unacked(writer), _stalled(writer))

    # --- event loop ----------------------------------------------------------------------------

    def post(self, conn: _Conn | None, gen: int, kind: str, payload: object = None) -> None:
        self.queue.put_nowait((conn, gen, kind, payload))

    async def run(self) -> None:
        if self.dialer is not None:
            self._perform(self.dialer, self.dialer.fsm.handle(Event.MANUAL_START))
        while True:
            deadlines = [d for c in self.conns if (d := c.fsm.next_deadline()) is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            item: _Item | None = None
            try:
                item = self.queue.get_nowait()  # a busy session skips wait_for's task per message
            except asyncio.QueueEmpty:
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    pass
            if item is not None and item[2] == "stop":
                return
            try:
                if item is not None:
                    self._dispatch(item)
                for c in list(self.conns):
                    self._perform(c, c.fsm.fire_timers())
                self._housekeeping()
            except Exception:  # a bug must not take the speaker down: reset this peer instead
                log.exception("peer %s: internal error; resetting its connections", self.address)
                for c in list(self.conns):
                    self._perform(c, c.fsm.handle(Event.UPDATE_MSG_ERR, error=BgpError(
                        ErrCode.CEASE, CeaseSub.OUT_OF_RESOURCES, reason="internal error")))

    def _housekeeping(self) -> None:
        for c in list(self.conns):
            if c.inbound and c.fsm.state == State.IDLE:
                # a passive peer waits for the next connection: Active, with the last error as INFO
                rest = State.ACTIVE if self.cfg.passive else State.IDLE
                self.last = (rest.value, c.fsm.since, c.fsm.info)
                c.close_transport()
                self.conns.remove(c)
        d = self.dialer
        if d is None or self.stopping:
            return
        if self.up is not None and self.up is not d:
            # an inbound session is up: the dialer rests until it goes down
            if d.fsm.state in (State.CONNECT, State.ACTIVE):
                self._perform(d, d.fsm.handle(Event.MANUAL_STOP))
            if d.fsm.state == State.IDLE:
                d.fsm.timers.clear()
        elif self.up is None and d.fsm.state == State.IDLE and not d.fsm.timers:
            self._perform(d, d.fsm.handle(Event.AUTOMATIC_START))

    def _dispatch(self, item: _Item) -> None:
        conn, gen, kind, payload = item
        if kind == "inbound":
            reader, writer = _streams(payload)
            c = _Conn(self._fsm(auto_restart=False), inbound=True)
            self.conns.append(c)
            self._attach(c, reader, writer)
            self._perform(c, c.fsm.handle(Event.MANUAL_START_PASSIVE))
            self._perform(c, c.fsm.handle(Event.TCP_CONNECTION_CONFIRMED))
            return
        if kind == "gr_expired":
            if self.sp.rib.stale_count(self.address):
                log.info("peer %s: graceful restart time over; dropping stale routes", self.address)
                self.sp.publish(self.sp.rib.sweep_stale(self.address))
            return
        if conn is None or conn not in self.conns or gen != conn.gen:
            if kind == "connected":
                _streams(payload)[1].close()
            return
        if kind == "connected":
            if conn.fsm.state == State.CONNECT:
                reader, writer = _streams(payload)
                self._attach(conn, reader, writer)
                self._perform(conn, conn.fsm.handle(Event.TCP_CR_ACKED))
            else:
                _streams(payload)[1].close()
        elif kind == "connect_failed":
            conn.fsm.info = f"Connect Socket: {payload}"
            self._perform(conn, conn.fsm.handle(Event.TCP_CONNECTION_FAILS))
        elif kind == "eof":
            if conn.fsm.state not in (State.IDLE, State.CONNECT, State.ACTIVE):
                conn.fsm.info = str(payload)
            self._perform(conn, conn.fsm.handle(Event.TCP_CONNECTION_FAILS))
        elif kind == "error":
            assert isinstance(payload, BgpError)
            log.warning("peer %s: %s", self.address, payload)
            ev = {1: Event.BGP_HEADER_ERR, 2: Event.BGP_OPEN_MSG_ERR}.get(payload.code, Event.UPDATE_MSG_ERR)
            self._perform(conn, conn.fsm.handle(ev, error=payload))
        elif kind == "msg":
            self._on_message(conn, payload)  # type: ignore[arg-type]

    def _on_message(self, conn: _Conn, msg: Message) -> None:
        fsm = conn.fsm
        if isinstance(msg, Open):
            self._perform(conn, fsm.handle(Event.BGP_OPEN, msg))
            if fsm.state == State.OPEN_CONFIRM:
                self._collisions(conn, msg)
        elif isinstance(msg, Keepalive):
            self._perform(conn, fsm.handle(Event.KEEPALIVE_MSG))
        elif isinstance(msg, Notification):
            log.warning("peer %s: NOTIFICATION received %s", self.address, msg.describe())
            self._perform(conn, fsm.notification_received(msg.code, msg.subcode))
        elif isinstance(msg, RouteRefresh):
            if fsm.state == State.ESTABLISHED:
                self._perform(conn, fsm.handle(Event.ROUTE_REFRESH_MSG))
                if self.info is not None and (msg.afi, msg.safi) in self.info.families:
                    self.sp.rib.reset_out(self.address, (msg.afi, msg.safi))
                    self.advertise(None)
            else:
                self._perform(conn, fsm.handle(Event.UPDATE_MSG))  # FSM error outside Established
        elif isinstance(msg, Update):
            was_established = fsm.state == State.ESTABLISHED
            self._perform(conn, fsm.handle(Event.UPDATE_MSG))
            if was_established and conn is self.up and self.info is not None:
                self._on_update(msg)

    def _on_update(self, msg: Update) -> None:
        for err in msg.errors:
            log.warning("peer %s: UPDATE %s", self.address, err)
        family = msg.end_of_rib_family()
        if family is not None:
            if family in CARRIED:
                self.sp.publish(self.sp.rib.sweep_stale(self.address, family))
            return
        assert self.info is not None
        self.sp.publish(self.sp.rib.accept(self.info, msg))

    def _collisions(self, conn: _Conn, msg: Open) -> None:
        for other in list(self.conns):
            if other is conn or other.fsm.state not in (State.OPEN_SENT, State.OPEN_CONFIRM, State.ESTABLISHED):
                continue
            if other.fsm.state == State.ESTABLISHED:
                loser = conn
            elif conn.inbound == other.inbound:
                loser = other  # two connections in the same direction: the newer one wins
            else:
                keep_ours = resolve_collision(self.sp.router_id, msg.router_id)
                outbound, inbound = (other, conn) if conn.inbound else (conn, other)
                loser = inbound if keep_ours else outbound
            log.info("peer %s: connection collision, closing the %s connection", self.address,
                     "inbound" if loser.inbound else "outbound")
            self._perform(loser, loser.fsm.handle(Event.OPEN_COLLISION_DUMP))
            if loser is conn:
                return

    # --- actions -------------------------------------------------------------------------------

    def _attach(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn.close_transport()
        conn.reader, conn.writer = reader, writer
        conn.four_octet = True
        task = asyncio.get_running_loop().create_task(self._read(conn, conn.gen, reader))
        conn.tasks.add(task)

    async def _read(self, conn: _Conn, gen: int, reader: asyncio.StreamReader) -> None:
        framer = Framer()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.post(conn, gen, "eof", "connection closed by peer")
                    return
                for frame in framer.feed(data):
                    msg = decode(frame, conn.four_octet)
                    if isinstance(msg, Open):
                        conn.four_octet = msg.capabilities.four_octet_as is not None
                    self.post(conn, gen, "msg", msg)
        except BgpError as exc:
            self.post(conn, gen, "error", exc)
        except (ConnectionError, OSError) as exc:
            self.post(conn, gen, "eof", f"connection error: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the fuzz test says this cannot happen; never crash on input anyway
            log.exception("peer %s: decoder failure", self.address)
            self.post(conn, gen, "error", BgpError(ErrCode.CEASE, 0, reason=f"decoder failure: {exc}"))

    async def _dial(self, conn: _Conn, gen: int) -> None:
        try:
            source = self.local_addr if self.address.version == 4 else self.source6
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.cfg.address, self.cfg.port,
                                        local_addr=(str(source), 0) if source is not None else None),
                timeout=max(1.0, self.cfg.connect_retry),
            )
        except (OSError, TimeoutError) as exc:
            self.post(conn, gen, "connect_failed", exc.strerror if isinstance(exc, OSError) and exc.strerror
                      else type(exc).__name__)
            return
        self.post(conn, gen, "connected", (reader, writer))

    def _send(self, conn: _Conn, msg: Message) -> None:
        if conn.writer is None:
            return
        try:
            conn.writer.write(encode(msg, conn.four_octet))
        except Exception as exc:  # the reader sees the broken connection and reports it
            log.debug("peer %s: send failed: %s", self.address, exc)

    def _open(self) -> Open:
        sp = self.sp
        afis = tuple((afi, safi, True) for afi, safi in sp.families)
        gr = GracefulRestart(sp.restart_time, False, False, afis) if self.cfg.graceful_restart else None
        caps = Capabilities(four_octet_as=sp.asn, multiprotocol=sp.families, route_refresh=True,
                            graceful_restart=gr)
        return Open(asn=sp.asn, hold_time=self.cfg.hold_time, router_id=sp.router_id, capabilities=caps)

    def _perform(self, conn: _Conn, actions: list[FsmAction]) -> None:
        for a in actions:
            if isinstance(a, ConnectTcp):
                conn.close_transport()
                task = asyncio.get_running_loop().create_task(self._dial(conn, conn.gen))
                conn.tasks.add(task)
            elif isinstance(a, SendOpen):
                self._send(conn, self._open())
            elif isinstance(a, SendKeepalive):
                self._send(conn, Keepalive())
            elif isinstance(a, SendNotification):
                log.warning("peer %s: sending NOTIFICATION %d/%d", self.address, a.code, a.subcode)
                self._send(conn, Notification(a.code, a.subcode, a.data))
            elif isinstance(a, DropTcp):
                conn.close_transport()
            elif isinstance(a, SessionUp):
                self._session_up(conn, a.peer_open)
            elif isinstance(a, SessionDown):
                self._session_down(conn, a)

    def _session_up(self, conn: _Conn, peer_open: Open) -> None:
        log.info("peer %s: session established", self.address)
        self.up = conn
        if conn.writer is not None and self.address.version == 4:
            sock = conn.writer.get_extra_info("sockname")
            if sock:
                self.local_addr = IPv4Address(sock[0])
        families = negotiated_families(self.sp.families, peer_open.capabilities)
        self.info = PeerInfo(self.address, self.cfg.asn, peer_open.router_id, self.cfg.asn == self.sp.asn,
                             self.cfg.rr_client, self.cfg.next_hop_self, families)
        gr = peer_open.capabilities.graceful_restart if self.cfg.graceful_restart else None
        self.peer_gr = gr
        if self.gr_timer is not None:
            self.gr_timer.cancel()
            self.gr_timer = None
        for family in CARRIED:
            if not self.sp.rib.stale_count(self.address, family):
                continue
            kept = family in families and gr is not None and any((a, s) == family and f for a, s, f in gr.afis)
            if not kept:  # RFC 4724 4.2: forwarding state not preserved → stale routes go now
                self.sp.publish(self.sp.rib.sweep_stale(self.address, family))
            else:  # bound the wait for End-of-RIB
                self._arm_gr_timer(float(max(gr.restart_time, 30)) if gr else 30.0)
        self.sp.rib.adj_out.pop(self.address, None)
        self.advertise(None)
        for family in sorted(families):
            self._send(conn, end_of_rib(family))

    def _session_down(self, conn: _Conn, down: SessionDown) -> None:
        log.info("peer %s: session down: %s", self.address, down.reason)
        if conn is not self.up:
            return
        self.up = None
        self.info = None
        # RFC 4724 4.2: retain only the families the peer listed in its GR capability
        gr = self.peer_gr
        kept = {(a, s) for a, s, _ in gr.afis} & set(CARRIED) if gr is not None else set()
        keep = down.graceful and not self.stopping and bool(kept)
        self.sp.publish(self.sp.rib.peer_down(self.address, keep_stale=keep, families=kept))
        if keep and self.peer_gr is not None:
            self._arm_gr_timer(float(self.peer_gr.restart_time))

    def _arm_gr_timer(self, seconds: float) -> None:
        if self.gr_timer is not None:
            self.gr_timer.cancel()
        self.gr_timer = asyncio.get_running_loop().call_later(seconds, self.post, None, 0, "gr_expired")

    def advertise(self, prefixes: list[Prefix] | None) -> None:
        """Send the Adj-RIB-Out difference for `prefixes` (all when None) on the live session."""
        conn = self.up
        if conn is None or self.info is None:
            return
        announce, withdraw = self.sp.rib.out_diff(self.info, self.local_addr, prefixes, self.sp.next_hop6,
                                                  self.link_local6)
        # one UPDATE per attribute set; an attribute set belongs to one family (NEXT_HOP or MP_REACH)
        groups: dict[PathAttributes, list[Prefix]] = {}
        for prefix, attrs in announce.items():
            groups.setdefault(attrs, []).append(prefix)
        for upd in pack_updates(PathAttributes(), [], withdraw, conn.four_octet):
            self._send(conn, upd)
        for attrs, nlri in groups.items():
            for upd in pack_updates(attrs, nlri, [], conn.four_octet):
                self._send(conn, upd)

    async def stop(self) -> None:
        self.stopping = True
        if self.gr_timer is not None:
            self.gr_timer.cancel()
        writers: list[asyncio.StreamWriter] = []
        for c in list(self.conns):
            self._perform(c, c.fsm.handle(Event.MANUAL_STOP))
            c.close_transport()
            writers += c.closing
        self.post(None, 0, "stop")
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        # let the Cease NOTIFICATIONs leave before the loop may end
        for w in writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)


def _prefix(prefix: str | Prefix) -> Prefix:
    try:
        return ip_network(prefix) if isinstance(prefix, str) else prefix
    except ValueError as exc:
        raise ValueError(f"BGP prefix {prefix!r}: {exc}") from exc


def _own_ipv6(value: str | IPv6Address) -> IPv6Address:
    try:
        addr = IPv6Address(value)
    except ValueError as exc:
        raise ValueError(f"next_hop6 {value!r} is not an IPv6 address") from exc
    if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
        raise ValueError(f"next_hop6 {value!r} must be a global (or unique local) IPv6 address")
    return addr


def negotiated_families(ours: tuple[Family, ...], theirs: Capabilities) -> frozenset[Family]:
    """The families a session carries: IPv6 unicast when both sides offered it; IPv4 unicast
    unless the peer offered multiprotocol families without it (RFC 4760 8: no MP capability at
    all means IPv4 unicast)."""
    mp = set(theirs.multiprotocol)
    out = {f for f in ours if f in mp}
    if IPV4_UNICAST in ours and not mp:
        out.add(IPV4_UNICAST)
    return frozenset(out)


def _peer_key(peername: object) -> Address | None:
    """The configured-peer key for a connection's remote end (IPv4-mapped IPv6 taken as IPv4)."""
    try:
        addr = ip_address(str(peername[0]).split("%", 1)[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Speaker:
    """A BGP-4 speaker for one node. Call the route and peer methods from the event loop's thread.

    `next_hop6`: this node's own global IPv6 address, the next hop of the IPv6 routes it originates
    or sends with next-hop-self; None: no IPv6 unicast. `bind6`: the IPv6 address to listen on
    as well as `bind`; default "::" when the speaker has `next_hop6`, else no IPv6 listener.
    """

    def __init__(
        self,
        asn: int,
        router_id: str | IPv4Address,
        local_address: str | IPv4Address,
        *,
        bind: str | None = None,
        port: int = 179,
        listen: bool = True,
        cluster_id: str | None = None,
        restart_time: int = 120,
        next_hop6: str | IPv6Address | None = None,
        bind6: str | None = None,
        net6: str | IPv6Network | None = None,
        link_local6: str | IPv6Address | None = None,
    ) -> None:
        if not 0 < asn <= 0xFFFFFFFF:
            raise ValueError(f"local AS {asn} out of range 1..4294967295")
        self.asn = asn
        self.router_id = IPv4Address(router_id)
        self.local_address = IPv4Address(local_address)
        self.next_hop6 = _own_ipv6(next_hop6) if next_hop6 else None
        # the IPv6 subnet of our link and our link-local address on it: peers inside that
        # subnet get the link-local address as a second next hop
        self.net6 = IPv6Network(net6, strict=False) if net6 and self.next_hop6 else None
        self.link_local6 = IPv6Address(link_local6) if link_local6 and self.net6 else None
        if self.link_local6 is not None and not self.link_local6.is_link_local:
            raise ValueError(f"link_local6 {link_local6!r} is not a link-local (fe80::/10) address")
        self.families: tuple[Family, ...] = (IPV4_UNICAST, IPV6_UNICAST) if self.next_hop6 else (IPV4_UNICAST,)
        self.bind = bind if bind is not None else str(self.local_address)
        self.bind6 = bind6
        self.port = port
        self.listen = listen
        self.restart_time = restart_time
        self.rib = Rib(asn, self.router_id, IPv4Address(cluster_id) if cluster_id else None)
        self.peers: dict[Address, _Peer] = {}
        self._servers: list[asyncio.Server] = []
        self._started = False
        self._callbacks: list[Callable[[Change], None]] = []
        self._subscribers: list[asyncio.Queue[Change]] = []

    async def start(self) -> None:
        if self.listen:
            self._servers.append(await asyncio.start_server(self._accept, self.bind, self.port, reuse_address=True))
            if self.bind6 is not None or self.next_hop6 is not None:
                try:
                    self._servers.append(await asyncio.start_server(
                        self._accept, self.bind6 or "::", self.port, reuse_address=True))
                except OSError as exc:
                    if self.bind6 is not None:
                        self._servers.pop().close()
                        raise
                    log.warning("not listening on IPv6 (::): %s; IPv6 peers must connect out", exc)
        self._started = True
        for peer in self.peers.values():
            self._launch(peer)

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every listening socket."""
        return [tuple(sock.getsockname()[:2]) for srv in self._servers for sock in srv.sockets]

    def _launch(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(peer.run(), name=f"bgp-peer-{peer.address}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        key = _peer_key(remote)
        peer = self.peers.get(key) if key is not None else None
        if peer is None or peer.stopping:
            log.warning("rejecting BGP connection from unconfigured address %s", key or remote)
            writer.write(encode(Notification(ErrCode.CEASE, CeaseSub.CONNECTION_REJECTED)))
            writer.close()
            return
        peer.post(None, 0, "inbound", (reader, writer))

    def add_peer(self, cfg: PeerConfig) -> None:
        cfg.validate()
        addr = ip_address(cfg.address)
        if addr in self.peers:
            raise ValueError(f"BGP peer {cfg.address} is already configured")
        peer = _Peer(self, cfg)
        self.peers[addr] = peer
        if self._started:
            self._launch(peer)

    async def remove_peer(self, address: str) -> None:
        peer = self.peers.pop(ip_address(address))
        await peer.stop()
        self.publish(self.rib.peer_down(peer.address, keep_stale=False))

    def originate(self, prefix: str | Prefix, next_hop: str | Address | None = None) -> None:
        """Announce `prefix` (IPv4 or IPv6) from this node. Next hop: given, else our own address
        of the prefix's family when sending (the session's for IPv4 over IPv4, next_hop6 for IPv6)."""
        self.publish(self.rib.originate(_prefix(prefix), ip_address(next_hop) if next_hop else None))

    def withdraw(self, prefix: str | Prefix) -> None:
        self.publish(self.rib.withdraw(_prefix(prefix)))

    def publish(self, changes: list[Change]) -> None:
        """Tell listeners about Loc-RIB changes and update every live session's Adj-RIB-Out."""
        if not changes:
            return
        for ch in changes:
            for cb in self._callbacks:
                try:
                    cb(ch)
                except Exception:
                    log.exception("Loc-RIB change callback failed")
            for q in self._subscribers:
                q.put_nowait(ch)
        prefixes = [c.prefix for c in changes]
        for peer in self.peers.values():
            peer.advertise(prefixes)

    def on_change(self, callback: Callable[[Change], None]) -> None:
        self._callbacks.append(callback)

    async def changes(self) -> AsyncGenerator[Change, None]:
        """Loc-RIB changes, starting with the current table (so a late listener misses nothing)."""
        q: asyncio.Queue[Change] = asyncio.Queue()
        for prefix in sorted(self.rib.loc, key=prefix_key):
            q.put_nowait(Change(prefix, self.rib.loc[prefix]))
        self._subscribers.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

    def loc_rib(self) -> dict[Prefix, Path]:
        """Best paths of both families; Path.next_hop is the family's global next hop."""
        return dict(self.rib.loc)

    def status(self) -> list[PeerStatus]:
        return [self.peers[a].status() for a in sorted(self.peers, key=lambda a: (a.version, int(a)))]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers = []
        for peer in list(self.peers.values()):
            await peer.stop()
        self._started = False
