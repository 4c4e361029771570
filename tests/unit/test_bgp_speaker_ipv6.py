"""The speaker with IPv6 unicast: configuration, family negotiation, and real TCP sessions on
loopback (127.0.0.1 and ::1, ephemeral ports) between two speakers or a speaker and a scripted peer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest

from labnet.bgp.codec import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    AsSegment,
    Capabilities,
    Framer,
    GracefulRestart,
    Keepalive,
    Message,
    Open,
    Origin,
    PathAttributes,
    RouteRefresh,
    SegType,
    Update,
    decode,
    encode,
    end_of_rib,
    mp_reach6,
)
from labnet.bgp.speaker import PeerConfig, PeerStatus, Speaker, _peer_key, negotiated_families

P4 = IPv4Network("10.100.1.0/26")
P4_LATER = IPv4Network("10.100.2.0/26")
P6 = IPv6Network("2001:db8:100::/48")
Q6 = IPv6Network("2001:db8:200::/48")
A6, B6 = IPv6Address("2001:db8::a"), IPv6Address("2001:db8::b")
BOTH = (IPV4_UNICAST, IPV6_UNICAST)


# --- configuration (no sockets) ---------------------------------------------------------------


def test_peer_config_takes_ipv6_addresses() -> None:
    PeerConfig("2001:db8::2", 64512, local_address="2001:db8::1").validate()
    PeerConfig("::1", 64512).validate()
    with pytest.raises(ValueError, match="not of the peer's family"):
        PeerConfig("2001:db8::2", 64512, local_address="10.0.0.1").validate()
    with pytest.raises(ValueError, match="link-local"):
        PeerConfig("10.0.0.2", 64512, local_address="fe80::1").validate()


def test_ipv6_peers_are_keyed_by_address() -> None:
    sp = Speaker(64512, "10.0.0.1", "10.0.0.1", next_hop6="2001:db8::1")
    sp.add_peer(PeerConfig("2001:db8::2", 64512))
    sp.add_peer(PeerConfig("10.0.0.2", 64512))
    with pytest.raises(ValueError, match="already configured"):
        sp.add_peer(PeerConfig("2001:db8:0::2", 64512))
    assert set(sp.peers) == {ip_address("2001:db8::2"), ip_address("10.0.0.2")}
    assert [s.address for s in sp.status()] == ["10.0.0.2", "2001:db8::2"]  # both families sort
    assert _peer_key(("2001:db8::2", 179, 0, 0)) == ip_address("2001:db8::2")
    assert _peer_key(("::ffff:10.0.0.2", 179, 0, 0)) == IPv4Address("10.0.0.2")
    assert _peer_key(("fe80::2%eth0", 179, 0, 2)) == ip_address("fe80::2")
    assert _peer_key(None) is None


def test_next_hop6_must_be_a_usable_ipv6_address() -> None:
    for bad in ("10.0.0.1", "fe80::1", "::", "ff02::2", "nope"):
        with pytest.raises(ValueError, match="next_hop6"):
            Speaker(64512, "10.0.0.1", "10.0.0.1", next_hop6=bad)
    assert Speaker(64512, "10.0.0.1", "10.0.0.1").families == (IPV4_UNICAST,)
    assert Speaker(64512, "10.0.0.1", "10.0.0.1", next_hop6=A6).families == BOTH


def test_originate_ipv6_updates_loc_rib() -> None:
    sp = Speaker(64512, "10.0.0.1", "10.0.0.1", next_hop6="2001:db8::1")
    sp.originate("2001:db8:100::/48")
    sp.originate("10.100.1.0/26")
    sp.originate("2001:db8:200::/48", "2001:db8::77")
    assert set(sp.loc_rib()) == {P4, P6, Q6}
    assert sp.loc_rib()[Q6].next_hop == IPv6Address("2001:db8::77")
    with pytest.raises(ValueError, match="IPv4 next hop"):
        sp.originate("2001:db8:300::/48", "10.0.0.1")
    sp.withdraw(P6)
    assert P6 not in sp.loc_rib()


@pytest.mark.parametrize("theirs,want", [
    ((), {IPV4_UNICAST}),                                # no MP capability: IPv4 unicast implied
    ((IPV4_UNICAST,), {IPV4_UNICAST}),
    (BOTH, set(BOTH)),
    ((IPV6_UNICAST,), {IPV6_UNICAST}),                   # offered MP without IPv4 unicast
    (((1, 2), (2, 1)), {IPV6_UNICAST}),
])
def test_negotiated_families(theirs: tuple[tuple[int, int], ...], want: set[tuple[int, int]]) -> None:
    assert negotiated_families(BOTH, Capabilities(multiprotocol=theirs)) == want
    assert negotiated_families((IPV4_UNICAST,), Capabilities(multiprotocol=theirs)) == want - {IPV6_UNICAST}


def test_open_offers_ipv6_only_with_next_hop6() -> None:
    from labnet.bgp.speaker import _Peer

    with_v6 = _Peer(Speaker(64512, "10.0.0.1", "10.0.0.1", next_hop6=A6), PeerConfig("10.0.0.2", 64512))._open()
    caps = with_v6.capabilities
    assert caps.multiprotocol == BOTH and caps.graceful_restart is not None
    assert caps.graceful_restart.afis == ((1, 1, True), (2, 1, True))
    v4 = _Peer(Speaker(64512, "10.0.0.1", "10.0.0.1"), PeerConfig("10.0.0.2", 64512))._open().capabilities
    assert v4.multiprotocol == (IPV4_UNICAST,) and v4.graceful_restart is not None
    assert v4.graceful_restart.afis == ((1, 1, True),)


# --- two speakers on loopback -----------------------------------------------------------------


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def port(sp: Speaker, version: int) -> int:
    return next(p for host, p in sp.listening() if (":" in host) == (version == 6))


def run(body: Callable[[Speaker, Speaker], Awaitable[None]], a: Speaker, b: Speaker, over: str) -> None:
    """Start both, peer them over `over` (both ends live there), run `body`, close both."""

    async def main() -> None:
        await a.start()
        await b.start()
        version = ip_address(over).version
        try:
            for me, other in ((b, a), (a, b)):
                me.add_peer(PeerConfig(over, other.asn, port=port(other, version), local_address=over,
                                       hold_time=30, connect_retry=1.0))
            await body(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_ipv6_prefix_over_an_ipv4_ibgp_session() -> None:
    a = Speaker(64512, "10.0.0.1", "127.0.0.1", port=0, next_hop6=A6)
    b = Speaker(64512, "10.0.0.2", "127.0.0.1", port=0, next_hop6=B6)
    a.originate(P6)
    a.originate(P4)
    b.originate(Q6)

    async def body(a: Speaker, b: Speaker) -> None:
        await until(lambda: {P4, P6} <= set(b.loc_rib()) and Q6 in a.loc_rib(), "both ways")
        got = b.loc_rib()[P6]
        assert got.next_hop == A6 and got.link_local is None  # next_hop6, not the IPv4 session address
        assert got.source is not None and got.source.address == IPv4Address("127.0.0.1")
        assert got.source.families == {IPV4_UNICAST, IPV6_UNICAST}
        assert got.attrs.local_pref == 100 and got.attrs.next_hop is None
        assert b.loc_rib()[P4].next_hop == IPv4Address("127.0.0.1")  # IPv4 over IPv4: the session's
        assert a.loc_rib()[Q6].next_hop == B6
        a.withdraw(P6)
        await until(lambda: P6 not in b.loc_rib(), "the IPv6 withdrawal")
        assert P4 in b.loc_rib()

    run(body, a, b, "127.0.0.1")


def test_both_families_over_an_ipv6_ebgp_session() -> None:
    # IPv4 addresses that are not the session's: the IPv4 next hop comes from local_address
    a = Speaker(64512, "10.0.0.1", "10.0.0.1", bind="127.0.0.1", port=0, next_hop6=A6, bind6="::1")
    b = Speaker(64513, "10.0.0.2", "10.0.0.2", bind="127.0.0.1", port=0, next_hop6=B6, bind6="::1")
    a.originate(P6)
    a.originate(P4)
    changes: list[object] = []
    b.on_change(lambda ch: changes.append(ch.prefix))

    async def body(a: Speaker, b: Speaker) -> None:
        await until(lambda: {P4, P6} <= set(b.loc_rib()), "both families over ::1")
        got = b.loc_rib()[P6]
        assert got.next_hop == A6 and got.source is not None and got.source.address == IPv6Address("::1")
        assert got.attrs.as_path == (AsSegment(SegType.AS_SEQUENCE, (64512,)),)
        assert b.loc_rib()[P4].next_hop == IPv4Address("10.0.0.1")
        assert {P4, P6} <= set(changes)
        assert [s.state for s in a.status()] == ["Established"]

    run(body, a, b, "::1")


def test_no_ipv6_with_a_speaker_without_next_hop6() -> None:
    a = Speaker(64512, "10.0.0.1", "127.0.0.1", port=0, next_hop6=A6)
    b = Speaker(64512, "10.0.0.2", "127.0.0.1", port=0)  # no IPv6: offers IPv4 unicast only
    a.originate(P6)
    a.originate(P4)

    async def body(a: Speaker, b: Speaker) -> None:
        await until(lambda: P4 in b.loc_rib(), "the IPv4 prefix")
        peer = a.peers[IPv4Address("127.0.0.1")]
        assert peer.info is not None and peer.info.families == {IPV4_UNICAST}
        assert set(a.rib.adj_out[peer.address]) == {P4}  # the IPv6 route was never sent
        # one TCP stream keeps the order: once a prefix originated after P6 is in, P6 would be too
        a.originate(P4_LATER)
        await until(lambda: P4_LATER in b.loc_rib(), "a prefix originated after the IPv6 one")
        assert P6 not in b.loc_rib() and set(b.loc_rib()) == {P4, P4_LATER}
        assert [h for h, _ in b.listening()] == ["127.0.0.1"]  # and b does not listen on IPv6

    run(body, a, b, "127.0.0.1")


# --- a scripted peer: End-of-RIB per family, route refresh, graceful restart per family ---------


class RawPeer:
    """A hand-driven BGP peer (AS 64513) on one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.framer = reader, writer, Framer()
        self.pending: list[Message] = []

    @classmethod
    async def connect(cls, sp: Speaker, gr_afis: tuple[tuple[int, int, bool], ...]) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(sp, 4))
        peer = cls(reader, writer)
        caps = Capabilities(four_octet_as=64513, multiprotocol=BOTH, route_refresh=True,
                            graceful_restart=GracefulRestart(120, False, False, gr_afis))
        peer.send(Open(64513, 30, IPv4Address("10.0.0.9"), caps), Keepalive())
        assert isinstance(await peer.next(), Open)
        assert isinstance(await peer.next(), Keepalive)
        return peer

    def send(self, *msgs: Message) -> None:
        for m in msgs:
            self.writer.write(encode(m))

    async def next(self) -> Message:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "connection closed"
            self.pending += [decode(f) for f in self.framer.feed(data)]
        return self.pending.pop(0)

    async def updates_until_end_of_rib(self, *families: tuple[int, int]) -> list[Update]:
        got: list[Update] = []
        want = set(families)
        while want:
            m = await self.next()
            if isinstance(m, Update):
                got.append(m)
                want.discard(m.end_of_rib_family())  # type: ignore[arg-type]
        return got


def test_scripted_peer_sees_end_of_rib_per_family_and_graceful_restart_is_per_family() -> None:
    sp = Speaker(64512, "10.0.0.1", "127.0.0.1", bind="127.0.0.1", port=0, next_hop6=A6)
    sp.originate(P6)
    sp.originate(P4)
    mine4, mine6 = IPv4Network("10.200.0.0/24"), Q6
    their4 = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(AsSegment(SegType.AS_SEQUENCE, (64513,)),),
                                         next_hop=IPv4Address("127.0.0.1")), nlri=(mine4,))
    their6 = Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(AsSegment(SegType.AS_SEQUENCE, (64513,)),),
                                         mp_reach=mp_reach6(IPv6Address("2001:db8::9"), (mine6,),
                                                            IPv6Address("fe80::9"))))
    addr = IPv4Address("127.0.0.1")

    async def main() -> None:
        await sp.start()
        sp.add_peer(PeerConfig("127.0.0.1", 64513, passive=True))
        try:
            raw = await RawPeer.connect(sp, ((1, 1, True), (2, 1, True)))
            ups = await raw.updates_until_end_of_rib(IPV4_UNICAST, IPV6_UNICAST)
            assert [u.end_of_rib_family() for u in ups[-2:]] == [IPV4_UNICAST, IPV6_UNICAST]
            sent6 = [u for u in ups if P6 in u.announced()]
            assert len(sent6) == 1 and sent6[0].next_hop6() == (A6, None) and sent6[0].attrs.next_hop is None
            assert [u.nlri for u in ups if u.nlri] == [(P4,)]

            raw.send(RouteRefresh(2, 1))  # only the IPv6 table comes again
            again = await raw.next()
            assert isinstance(again, Update) and again.announced() == (P6,)

            raw.send(their4, their6, end_of_rib(), end_of_rib(IPV6_UNICAST))
            await until(lambda: {mine4, mine6} <= set(sp.loc_rib()), "the peer's routes")
            assert sp.loc_rib()[mine6].next_hop == IPv6Address("2001:db8::9")
            assert sp.loc_rib()[mine6].link_local == IPv6Address("fe80::9")

            # TCP lost without NOTIFICATION: both families kept, stale
            raw.writer.close()
            await until(lambda: sp.rib.stale_count(addr) == 2, "stale routes")
            # back, restarting; IPv6 End-of-RIB sweeps only IPv6
            raw = await RawPeer.connect(sp, ((1, 1, True),))
            await raw.updates_until_end_of_rib(IPV4_UNICAST, IPV6_UNICAST)
            raw.send(end_of_rib(IPV6_UNICAST))
            await until(lambda: mine6 not in sp.loc_rib(), "IPv6 stale sweep")
            assert sp.loc_rib()[mine4].stale
            raw.send(their6)
            await until(lambda: mine6 in sp.loc_rib(), "IPv6 route again")
            # this session's capability lists IPv4 only: on loss the IPv6 route goes at once
            raw.writer.close()
            await until(lambda: mine6 not in sp.loc_rib(), "IPv6 route dropped")
            assert sp.loc_rib()[mine4].stale
        finally:
            await sp.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_status_rows_for_ipv6_peers() -> None:
    row = PeerStatus("2001:db8::2", "node-to-node mesh", "Established", 0.0, "").row()
    assert row[0] == "2001:db8::2" and row[2] == "up"


def test_an_ipv6_listener_that_cannot_bind_fails_start_cleanly() -> None:
    async def main() -> None:
        sp = Speaker(64512, "10.0.0.1", "127.0.0.1", port=0, bind6="2001:db8::77")  # not on this host
        with pytest.raises(OSError):
            await sp.start()
        assert sp.listening() == []

    asyncio.run(main())
