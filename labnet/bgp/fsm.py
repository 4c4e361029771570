"""RFC 4271 section 8 finite state machine, without sockets.

The FSM consumes events and returns actions for the caller (the speaker) to perform. Timers are
deadlines against an injected clock: the caller asks for `next_deadline()` and calls
`fire_timers()`; tests drive a fake clock instead of waiting.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from labnet.bgp.codec import BgpError, CeaseSub, ErrCode, Open, OpenSub, error_name


class State(enum.Enum):
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPEN_SENT = "OpenSent"
    OPEN_CONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


class Event(enum.IntEnum):
    """RFC 4271 8.1 event numbers (the ones labnet uses)."""

    MANUAL_START = 1
    MANUAL_STOP = 2
    AUTOMATIC_START = 3
    MANUAL_START_PASSIVE = 4
    AUTOMATIC_START_PASSIVE = 5
    CONNECT_RETRY_TIMER_EXPIRES = 9
    HOLD_TIMER_EXPIRES = 10
    KEEPALIVE_TIMER_EXPIRES = 11
    IDLE_HOLD_TIMER_EXPIRES = 13
    TCP_CR_ACKED = 16
    TCP_CONNECTION_CONFIRMED = 17
    TCP_CONNECTION_FAILS = 18
    BGP_OPEN = 19
    BGP_HEADER_ERR = 21
    BGP_OPEN_MSG_ERR = 22
    OPEN_COLLISION_DUMP = 23
    NOTIF_MSG_VER_ERR = 24
    NOTIF_MSG = 25
    KEEPALIVE_MSG = 26
    UPDATE_MSG = 27
    UPDATE_MSG_ERR = 28
    ROUTE_REFRESH_MSG = 100  # not in RFC 4271's list; accepted in Established only


# --- actions the caller performs ---------------------------------------------------------------


@dataclass(frozen=True)
class ConnectTcp:
    pass


@dataclass(frozen=True)
class SendOpen:
    pass


@dataclass(frozen=True)
class SendKeepalive:
    pass


@dataclass(frozen=True)
class SendNotification:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class DropTcp:
    pass


@dataclass(frozen=True)
class SessionUp:
    peer_open: Open


@dataclass(frozen=True)
class SessionDown:
    reason: str
    graceful: bool  # no NOTIFICATION exchanged: a graceful-restart helper keeps the routes


FsmAction = ConnectTcp | SendOpen | SendKeepalive | SendNotification | DropTcp | SessionUp | SessionDown

LARGE_HOLD_TIME = 240.0  # RFC 4271 10: hold timer while waiting for the peer's OPEN


@dataclass
class FsmConfig:
    local_as: int
    peer_as: int
    router_id: IPv4Address
    hold_time: int = 90
    connect_retry_time: float = 5.0
    # First retries after a refused connect come sooner, doubling up to connect_retry_time: a lab
    # starts its speakers together, and the first dial often reaches a peer not listening yet
    # (RFC 4271 leaves the initial value to the implementation). 0: always connect_retry_time.
    initial_connect_retry: float = 0.0
    idle_hold_time: float = 1.0
    passive: bool = False  # never initiate TCP, only accept
    auto_restart: bool = True


def resolve_collision(local_id: IPv4Address, remote_id: IPv4Address) -> bool:
    """RFC 4271 6.8: True when the connection *we* initiated survives a collision.

    The connection initiated by the speaker with the higher BGP Identifier is kept.
    """
    return int(local_id) > int(remote_id)


@dataclass
class Fsm:
    config: FsmConfig
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    state: State = State.IDLE
    since: float = 0.0  # wall-clock time of the last state change
    info: str = ""  # last error / reason, shown in the status INFO column
    peer_open: Open | None = None
    negotiated_hold: float = 0.0
    connect_retry_counter: int = 0
    timers: dict[Event, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.since = self.wall()

    # --- timers --------------------------------------------------------------------------------

    def _start(self, ev: Event, seconds: float) -> None:
        if seconds > 0:
            self.timers[ev] = self.clock() + seconds

    def _stop(self, ev: Event) -> None:
        self.timers.pop(ev, None)

    def next_deadline(self) -> float | None:
        return min(self.timers.values(), default=None)

    def fire_timers(self) -> list[FsmAction]:
        actions: list[FsmAction] = []
        now = self.clock()
        for ev, deadline in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if deadline <= now and self.timers.get(ev) == deadline:
                del self.timers[ev]
                actions += self.handle(ev)
        return actions

    @property
    def keepalive_time(self) -> float:
        return self.negotiated_hold / 3

    # --- transitions ---------------------------------------------------------------------------

    def _goto(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.since = self.wall()

    def _to_idle(self, reason: str, *, restart: bool = True) -> list[FsmAction]:
        """Release everything and go Idle; with auto restart, try again after the idle hold time."""
        was_established = self.state == State.ESTABLISHED
        self.timers.clear()
        self.peer_open = None
        self.info = reason
        self._goto(State.IDLE)
        if restart and self.config.auto_restart:
            self._start(Event.IDLE_HOLD_TIMER_EXPIRES, self.config.idle_hold_time)
        acts: list[FsmAction] = [DropTcp()]
        if was_established:
            acts.append(SessionDown(reason, graceful=False))
        return acts

    def _notify_and_idle(self, code: int, subcode: int, data: bytes, reason: str) -> list[FsmAction]:
        acts: list[FsmAction] = [SendNotification(code, subcode, data)]
        return acts + self._to_idle(f"NOTIFICATION sent {code}/{subcode}: {reason}")

    def handle(self, ev: Event, msg: Open | None = None, error: BgpError | None = None) -> list[FsmAction]:
        s = self.state
        cfg = self.config
        if ev == Event.MANUAL_STOP:
            if s == State.IDLE:
                self.timers.clear()
                return []
            acts: list[FsmAction] = []
            if s in (State.OPEN_SENT, State.OPEN_CONFIRM, State.ESTABLISHED):
                acts.append(SendNotification(ErrCode.CEASE, CeaseSub.ADMINISTRATIVE_SHUTDOWN))
            self.connect_retry_counter = 0
            return acts + self._to_idle("administratively stopped", restart=False)

        if s == State.IDLE:
            if ev in (Event.MANUAL_START, Event.AUTOMATIC_START, Event.IDLE_HOLD_TIMER_EXPIRES) and not cfg.passive:
                self._stop(Event.IDLE_HOLD_TIMER_EXPIRES)
                self._start(Event.CONNECT_RETRY_TIMER_EXPIRES, cfg.connect_retry_time)
                self._goto(State.CONNECT)
                return [ConnectTcp()]
            if ev in (Event.MANUAL_START, Event.AUTOMATIC_START, Event.IDLE_HOLD_TIMER_EXPIRES,
                      Event.MANUAL_START_PASSIVE, Event.AUTOMATIC_START_PASSIVE):
                self._stop(Event.IDLE_HOLD_TIMER_EXPIRES)
                self._goto(State.ACTIVE)
                return []
            return []  # RFC 4271 8.2.2: other events are ignored in Idle

        if s in (State.CONNECT, State.ACTIVE):
            if ev == Event.CONNECT_RETRY_TIMER_EXPIRES:
                self._start(Event.CONNECT_RETRY_TIMER_EXPIRES, cfg.connect_retry_time)
                if cfg.passive:
                    return []
                self._goto(State.CONNECT)
                retry: list[FsmAction] = [DropTcp()] if s == State.CONNECT else []
                return [*retry, ConnectTcp()]
            if ev in (Event.TCP_CR_ACKED, Event.TCP_CONNECTION_CONFIRMED):
                self._stop(Event.CONNECT_RETRY_TIMER_EXPIRES)
                self._start(Event.HOLD_TIMER_EXPIRES, LARGE_HOLD_TIME)
                self._goto(State.OPEN_SENT)
                return [SendOpen()]
            if ev == Event.TCP_CONNECTION_FAILS:
                self.connect_retry_counter += 1
                self.info = "Connect Socket: connection failed"
                if not cfg.passive:
                    self._start(Event.CONNECT_RETRY_TIMER_EXPIRES, self._retry_delay())
                self._goto(State.ACTIVE)
                return [DropTcp()]
            if ev in (Event.IDLE_HOLD_TIMER_EXPIRES, Event.MANUAL_START, Event.AUTOMATIC_START,
                      Event.MANUAL_START_PASSIVE, Event.AUTOMATIC_START_PASSIVE):
                return []
            self.connect_retry_counter += 1
            return self._to_idle(f"unexpected event {ev.name} in {s.value}")

        if s == State.OPEN_SENT:
            if ev == Event.BGP_OPEN and msg is not None:
                return self._on_open(msg)
            if ev == Event.TCP_CONNECTION_FAILS:
                self.info = "connection closed by peer in OpenSent"
                self.timers.clear()
                self._start(Event.CONNECT_RETRY_TIMER_EXPIRES, cfg.connect_retry_time)
                self._goto(State.ACTIVE)
                return [DropTcp()]
        elif s == State.OPEN_CONFIRM:
            if ev == Event.KEEPALIVE_MSG:
                self._restart_hold()
                self._goto(State.ESTABLISHED)
                self.info = ""
                self.connect_retry_counter = 0
                assert self.peer_open is not None
                return [SessionUp(self.peer_open)]
            if ev == Event.KEEPALIVE_TIMER_EXPIRES:
                self._start(Event.KEEPALIVE_TIMER_EXPIRES, self.keepalive_time)
                return [SendKeepalive()]
        elif s == State.ESTABLISHED:
            if ev in (Event.KEEPALIVE_MSG, Event.UPDATE_MSG, Event.ROUTE_REFRESH_MSG):
                self._restart_hold()
                return []
            if ev == Event.KEEPALIVE_TIMER_EXPIRES:
                self._start(Event.KEEPALIVE_TIMER_EXPIRES, self.keepalive_time)
                return [SendKeepalive()]
            if ev == Event.TCP_CONNECTION_FAILS:
                return self._established_lost("connection lost", graceful=True)
            if ev == Event.HOLD_TIMER_EXPIRES:
                acts = [SendNotification(ErrCode.HOLD_TIMER, 0)]
                return acts + self._established_lost("NOTIFICATION sent 4/0: hold timer expired", graceful=True)

        # events common to OpenSent, OpenConfirm and Established
        if ev == Event.HOLD_TIMER_EXPIRES:
            return self._notify_and_idle(ErrCode.HOLD_TIMER, 0, b"", "hold timer expired")
        if ev == Event.TCP_CONNECTION_FAILS:
            return self._to_idle(f"connection lost in {s.value}")
        if ev in (Event.BGP_HEADER_ERR, Event.BGP_OPEN_MSG_ERR, Event.UPDATE_MSG_ERR) and error is not None:
            return self._notify_and_idle(error.code, error.subcode, error.data, error.reason)
        if ev == Event.OPEN_COLLISION_DUMP:
            return self._notify_and_idle(ErrCode.CEASE, CeaseSub.CONNECTION_COLLISION_RESOLUTION, b"",
                                         "connection collision resolution")
        if ev in (Event.NOTIF_MSG, Event.NOTIF_MSG_VER_ERR):
            return self._to_idle(self.info if self.info.startswith("NOTIFICATION received") else
                                 "NOTIFICATION received")
        if ev in (Event.IDLE_HOLD_TIMER_EXPIRES, Event.CONNECT_RETRY_TIMER_EXPIRES, Event.MANUAL_START,
                  Event.AUTOMATIC_START, Event.MANUAL_START_PASSIVE, Event.AUTOMATIC_START_PASSIVE):
            return []
        # anything else is a finite state machine error (RFC 6608 subcodes 1..3 by state)
        sub = {State.OPEN_SENT: 1, State.OPEN_CONFIRM: 2, State.ESTABLISHED: 3}[s]
        return self._notify_and_idle(ErrCode.FSM, sub, b"", f"unexpected {ev.name} in {s.value}")

    def _retry_delay(self) -> float:
        """ConnectRetryTime after the n-th failed connect: initial * 2**(n-1), at most the configured time."""
        cfg = self.config
        if cfg.initial_connect_retry <= 0:
            return cfg.connect_retry_time
        n = max(1, self.connect_retry_counter)
        return min(cfg.connect_retry_time, cfg.initial_connect_retry * 2 ** min(n - 1, 30))

    def notification_received(self, code: int, subcode: int) -> list[FsmAction]:
        self.info = f"NOTIFICATION received {code}/{subcode}: {error_name(code, subcode)}"
        before = self.state
        acts = self.handle(Event.NOTIF_MSG)
        if (code, subcode) == (ErrCode.CEASE, CeaseSub.CONNECTION_REJECTED) and before in (
                State.OPEN_SENT, State.OPEN_CONFIRM) and self.state == State.IDLE and self.config.auto_restart:
            # The peer is up but does not know us yet (a lab starting: its agent has not read our
            # node record). Come back as after a refused connect, soon and backing off, not after
            # the whole idle hold time.
            self.connect_retry_counter += 1
            self._start(Event.IDLE_HOLD_TIMER_EXPIRES, min(self.config.idle_hold_time, self._retry_delay()))
        return acts

    def _established_lost(self, reason: str, graceful: bool) -> list[FsmAction]:
        acts = self._to_idle(reason)
        return [a if not isinstance(a, SessionDown) else SessionDown(reason, graceful) for a in acts]

    def _restart_hold(self) -> None:
        if self.negotiated_hold > 0:
            self._start(Event.HOLD_TIMER_EXPIRES, self.negotiated_hold)

    def _on_open(self, peer: Open) -> list[FsmAction]:
        cfg = self.config
        if peer.asn != cfg.peer_as:
            return self._notify_and_idle(ErrCode.OPEN, OpenSub.BAD_PEER_AS, b"",
                                         f"peer says AS {peer.asn}, configured AS {cfg.peer_as}")
        if peer.router_id == cfg.router_id and cfg.local_as == cfg.peer_as:
            return self._notify_and_idle(ErrCode.OPEN, OpenSub.BAD_BGP_IDENTIFIER, b"",
                                         f"peer uses our own BGP identifier {peer.router_id}")
        self.peer_open = peer
        self.negotiated_hold = float(min(cfg.hold_time, peer.hold_time))
        self._stop(Event.CONNECT_RETRY_TIMER_EXPIRES)
        self._stop(Event.HOLD_TIMER_EXPIRES)
        if self.negotiated_hold > 0:
            self._start(Event.HOLD_TIMER_EXPIRES, self.negotiated_hold)
            self._start(Event.KEEPALIVE_TIMER_EXPIRES, self.keepalive_time)
        self._goto(State.OPEN_CONFIRM)
        return [SendKeepalive()]
