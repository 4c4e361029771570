"""RFC 4271 FSM driven directly with events and a fake clock (no sockets, no waiting)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from labnet.bgp.codec import BgpError, Capabilities, Open
from labnet.bgp.fsm import (
    ConnectTcp,
    DropTcp,
    Event,
    Fsm,
    FsmConfig,
    SendKeepalive,
    SendNotification,
    SendOpen,
    SessionDown,
    SessionUp,
    State,
    resolve_collision,
)

LOCAL = IPv4Address("10.0.0.1")
REMOTE = IPv4Address("10.0.0.2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw: object) -> Fsm:
    cfg = FsmConfig(local_as=64512, peer_as=64512, router_id=LOCAL, hold_time=9, connect_retry_time=5,
                    idle_hold_time=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return Fsm(cfg, clock=clock, wall=clock)


def peer_open(asn: int = 64512, hold: int = 30, rid: IPv4Address = REMOTE) -> Open:
    return Open(asn=asn, hold_time=hold, router_id=rid, capabilities=Capabilities(four_octet_as=asn))


def established(clock: Clock, **kw: object) -> Fsm:
    f = make(clock, **kw)
    assert f.handle(Event.MANUAL_START) == [ConnectTcp()]
    assert f.handle(Event.TCP_CR_ACKED) == [SendOpen()]
    assert f.handle(Event.BGP_OPEN, peer_open()) == [SendKeepalive()]
    acts = f.handle(Event.KEEPALIVE_MSG)
    assert acts == [SessionUp(peer_open())] and f.state == State.ESTABLISHED
    return f


def test_active_open_reaches_established_and_negotiates_hold_time() -> None:
    clock = Clock()
    f = established(clock)
    assert f.negotiated_hold == 9 and f.keepalive_time == 3  # min(9, 30), a third of it
    assert f.since == clock.now


def test_passive_peer_waits_in_active_and_never_dials() -> None:
    clock = Clock()
    f = make(clock, passive=True)
    assert f.handle(Event.MANUAL_START_PASSIVE) == [] and f.state == State.ACTIVE
    clock.now += 100
    assert f.fire_timers() == [] and f.state == State.ACTIVE
    assert f.handle(Event.TCP_CONNECTION_CONFIRMED) == [SendOpen()] and f.state == State.OPEN_SENT


def test_connect_retry_timer_redials() -> None:
    clock = Clock()
    f = make(clock)
    f.handle(Event.MANUAL_START)
    assert f.next_deadline() == clock.now + 5
    clock.now += 5
    assert f.fire_timers() == [DropTcp(), ConnectTcp()] and f.state == State.CONNECT
    assert f.handle(Event.TCP_CONNECTION_FAILS) == [DropTcp()] and f.state == State.ACTIVE
    assert f.connect_retry_counter == 1
    clock.now += 5
    assert f.fire_timers() == [ConnectTcp()] and f.state == State.CONNECT


def test_keepalives_are_sent_every_third_of_hold_time() -> None:
    clock = Clock()
    f = established(clock)
    clock.now += 3
    assert f.fire_timers() == [SendKeepalive()]
    clock.now += 2
    assert f.fire_timers() == []
    clock.now += 1
    assert f.fire_timers() == [SendKeepalive()]


def test_hold_timer_expiry_sends_4_0_and_is_graceful() -> None:
    clock = Clock()
    f = established(clock)
    clock.now += 6
    f.handle(Event.KEEPALIVE_MSG)  # restarts the hold timer
    clock.now += 8.9
    assert SendNotification(4, 0) not in f.fire_timers()
    clock.now += 0.2
    acts = f.fire_timers()
    assert acts[0] == SendNotification(4, 0)
    assert DropTcp() in acts and any(isinstance(a, SessionDown) and a.graceful for a in acts)
    assert f.state == State.IDLE and "hold timer" in f.info


def test_idle_hold_timer_restarts_after_an_error() -> None:
    clock = Clock()
    f = established(clock)
    f.notification_received(6, 2)
    assert f.state == State.IDLE and f.info.startswith("NOTIFICATION received 6/2")
    clock.now += 1
    assert f.fire_timers() == [ConnectTcp()] and f.state == State.CONNECT


def test_manual_stop_sends_cease_and_stays_idle() -> None:
    clock = Clock()
    f = established(clock)
    acts = f.handle(Event.MANUAL_STOP)
    assert acts[0] == SendNotification(6, 2) and f.state == State.IDLE
    assert isinstance(acts[-1], SessionDown) and not acts[-1].graceful
    assert f.next_deadline() is None


def test_wrong_peer_as_is_2_2() -> None:
    clock = Clock()
    f = make(clock)
    f.handle(Event.MANUAL_START)
    f.handle(Event.TCP_CR_ACKED)
    acts = f.handle(Event.BGP_OPEN, peer_open(asn=65000))
    assert acts[0] == SendNotification(2, 2) and f.state == State.IDLE
    assert "65000" in f.info and "64512" in f.info


def test_own_router_id_from_ibgp_peer_is_2_3() -> None:
    clock = Clock()
    f = make(clock)
    f.handle(Event.MANUAL_START)
    f.handle(Event.TCP_CR_ACKED)
    assert f.handle(Event.BGP_OPEN, peer_open(rid=LOCAL))[0] == SendNotification(2, 3)


def test_decode_errors_become_their_notification() -> None:
    clock = Clock()
    f = established(clock)
    acts = f.handle(Event.UPDATE_MSG_ERR, error=BgpError(3, 10, b"", "bad prefix"))
    assert acts[0] == SendNotification(3, 10) and f.state == State.IDLE
    assert "3/10" in f.info


@pytest.mark.parametrize("state_events,sub", [
    ([Event.MANUAL_START, Event.TCP_CR_ACKED], 1),
])
def test_unexpected_message_in_open_sent_is_fsm_error(state_events: list[Event], sub: int) -> None:
    clock = Clock()
    f = make(clock)
    for ev in state_events:
        f.handle(ev)
    assert f.handle(Event.KEEPALIVE_MSG)[0] == SendNotification(5, sub)


def test_open_in_established_is_fsm_error_5_3() -> None:
    clock = Clock()
    f = established(clock)
    assert f.handle(Event.BGP_OPEN, peer_open())[0] == SendNotification(5, 3)


def test_collision_dump_sends_cease_7() -> None:
    clock = Clock()
    f = make(clock)
    f.handle(Event.MANUAL_START)
    f.handle(Event.TCP_CR_ACKED)
    f.handle(Event.BGP_OPEN, peer_open())
    assert f.handle(Event.OPEN_COLLISION_DUMP)[0] == SendNotification(6, 7)


def test_collision_resolution_keeps_the_higher_ids_connection() -> None:
    assert resolve_collision(IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"))  # we are higher: keep ours
    assert not resolve_collision(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))


def test_hold_time_zero_means_no_keepalives() -> None:
    clock = Clock()
    f = make(clock, hold_time=0)
    f.handle(Event.MANUAL_START)
    f.handle(Event.TCP_CR_ACKED)
    f.handle(Event.BGP_OPEN, peer_open())
    f.handle(Event.KEEPALIVE_MSG)
    assert f.state == State.ESTABLISHED and f.next_deadline() is None


def test_tcp_loss_in_established_is_graceful() -> None:
    clock = Clock()
    f = established(clock)
    acts = f.handle(Event.TCP_CONNECTION_FAILS)
    assert acts == [DropTcp(), SessionDown("connection lost", graceful=True)]


def test_events_in_idle_are_ignored() -> None:
    clock = Clock()
    f = make(clock, auto_restart=False)
    for ev in (Event.KEEPALIVE_MSG, Event.UPDATE_MSG, Event.TCP_CONNECTION_FAILS, Event.HOLD_TIMER_EXPIRES):
        assert f.handle(ev) == [] and f.state == State.IDLE


def _next_connect(f: Fsm, clock: Clock) -> float:
    """Run the clock to the FSM's next timer, which must dial again; the time it waited."""
    deadline = f.next_deadline()
    assert deadline is not None
    waited = round(deadline - clock.now, 3)
    clock.now = deadline
    assert f.fire_timers() == [ConnectTcp()]
    return waited


def test_refused_connects_are_retried_sooner_then_at_the_configured_interval() -> None:
    """A lab starts its speakers together: the first dial often finds no listener. Retries start
    at initial_connect_retry and double up to connect_retry_time; Established starts it over."""
    clock = Clock()
    f = make(clock, initial_connect_retry=0.1)
    f.handle(Event.MANUAL_START)
    delays = []
    for _ in range(8):
        assert f.handle(Event.TCP_CONNECTION_FAILS) == [DropTcp()] and f.state == State.ACTIVE
        delays.append(_next_connect(f, clock))
        assert f.state == State.CONNECT
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5], delays
    assert f.handle(Event.TCP_CR_ACKED) == [SendOpen()]
    f.handle(Event.BGP_OPEN, peer_open())
    f.handle(Event.KEEPALIVE_MSG)
    assert f.state == State.ESTABLISHED and f.connect_retry_counter == 0
    # off (0): every retry waits the full interval, as before
    g = make(Clock(), initial_connect_retry=0)
    g.handle(Event.MANUAL_START)
    g.handle(Event.TCP_CONNECTION_FAILS)
    assert g.next_deadline() == g.clock() + 5


def test_a_peer_that_rejects_us_before_it_knows_us_is_tried_again_soon() -> None:
    """Cease 6/5 (connection rejected) in OpenSent: the peer listens but has not configured us
    yet. Back off from initial_connect_retry as for a refused connect, not the idle hold time."""
    clock = Clock()
    f = make(clock, initial_connect_retry=0.1)
    f.handle(Event.MANUAL_START)
    delays = []
    for _ in range(3):
        assert f.handle(Event.TCP_CR_ACKED) == [SendOpen()] and f.state == State.OPEN_SENT
        f.notification_received(6, 5)
        assert f.state == State.IDLE
        delays.append(_next_connect(f, clock))
    assert delays == [0.1, 0.2, 0.4], delays
    # another NOTIFICATION keeps the idle hold time
    f.handle(Event.TCP_CR_ACKED)
    f.notification_received(2, 2)
    assert f.next_deadline() == clock.now + f.config.idle_hold_time
