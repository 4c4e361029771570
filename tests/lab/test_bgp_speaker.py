"""labnet's asyncio speaker against itself and against scripted raw peers, inside a test namespace.

The speakers run in-process on an event loop thread that has entered a `lnet-test-*` network
namespace (setns is per thread), so every socket lives on that namespace's loopback.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

import pytest

from labnet.bgp.codec import (
    AsSegment,
    Capabilities,
    Framer,
    GracefulRestart,
    Keepalive,
    Message,
    Notification,
    Open,
    Origin,
    PathAttributes,
    SegType,
    Update,
    decode,
    encode,
    end_of_rib,
)
from labnet.bgp.speaker import PeerConfig, Speaker, format_status
from labnet.nsexec import NodeNS
from labnet.wait import poll

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PORT = 179
ASN = 64512


class NsLoop:
    """An asyncio loop on a thread that lives in `ns`."""

    def __init__(self, ns: NodeNS) -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.error: BaseException | None = None

        def main() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(ns.netns, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
                finally:
                    os.close(fd)
            except BaseException as exc:
                self.error = exc
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=f"bgp-{ns.name}", daemon=True)
        self.thread.start()
        ready.wait(10)
        if self.error is not None:
            raise self.error

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def inner() -> T:
            return fn(*args)

        return self.run(inner())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def nsloop(netns_factory: Any) -> Iterator[NsLoop]:
    ns = netns_factory("bgp")
    lp = NsLoop(ns)
    speakers: list[Speaker] = []
    lp.speakers = speakers  # type: ignore[attr-defined]
    try:
        yield lp
    finally:
        for sp in speakers:
            lp.run(sp.close())
        lp.stop()


def speaker(lp: NsLoop, addr: str, peers: list[PeerConfig], asn: int = ASN, **kw: Any) -> Speaker:
    async def make() -> Speaker:
        sp = Speaker(asn, addr, addr, **kw)
        for p in peers:
            sp.add_peer(p)
        await sp.start()
        return sp

    sp = lp.run(make())
    lp.speakers.append(sp)  # type: ignore[attr-defined]
    return sp


def peer(addr: str, asn: int = ASN, **kw: Any) -> PeerConfig:
    kw.setdefault("hold_time", 3)
    kw.setdefault("connect_retry", 1.0)
    return PeerConfig(addr, asn, **kw)


def states(lp: NsLoop, sp: Speaker) -> dict[str, str]:
    return {s.address: s.state for s in lp.call(sp.status)}


def wait_established(lp: NsLoop, sp: Speaker, who: str, timeout: float = 15) -> None:
    poll(lambda: states(lp, sp), lambda s: bool(s) and all(v == "Established" for v in s.values()),
         timeout=timeout, what=f"speaker {who}: all sessions Established")


def rib(lp: NsLoop, sp: Speaker) -> dict[str, PathAttributes]:
    return {str(p): path.attrs for p, path in lp.call(sp.loc_rib).items()}


# --- a scripted peer made of raw bytes -----------------------------------------------------------


class RawPeer:
    def __init__(self, lp: NsLoop, local: str, remote: str = "127.0.0.1") -> None:
        self.lp = lp
        self.reader, self.writer = lp.run(asyncio.open_connection(remote, PORT, local_addr=(local, 0)))
        self.framer = Framer()
        self.pending: list[bytes] = []
        self.four_octet = True

    def send(self, data: bytes | Message) -> None:
        raw = data if isinstance(data, bytes) else encode(data, self.four_octet)

        async def go() -> None:
            self.writer.write(raw)
            await self.writer.drain()

        self.lp.run(go())

    def recv(self, timeout: float = 10) -> Message | None:
        """Next message, or None when the speaker closed the connection."""

        async def go() -> Message | None:
            while not self.pending:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return None
                self.pending += self.framer.feed(data)
            return decode(self.pending.pop(0), self.four_octet)

        return self.lp.run(go(), timeout + 5)

    def recv_until(self, want: Callable[[Message | None], bool], timeout: float = 10) -> list[Message | None]:
        seen: list[Message | None] = []
        while True:
            m = self.recv(timeout)
            seen.append(m)
            if want(m) or m is None:
                return seen

    def establish(self, asn: int = ASN, rid: str = "10.9.9.9", gr: GracefulRestart | None = None,
                  hold: int = 30, four_octet: bool = True) -> Open:
        """OPEN/KEEPALIVE exchange; four_octet=False plays an RFC 4271-only (2-octet AS) speaker."""
        self.four_octet = four_octet
        caps = Capabilities(four_octet_as=asn if four_octet else None, multiprotocol=((1, 1),),
                            route_refresh=True, graceful_restart=gr)
        self.send(Open(asn=asn, hold_time=hold, router_id=IPv4Address(rid), capabilities=caps))
        their_open = self.recv()
        assert isinstance(their_open, Open), their_open
        assert isinstance(self.recv(), Keepalive)
        self.send(Keepalive())
        return their_open

    def abort(self) -> None:
        """Drop the TCP connection without a NOTIFICATION (a crash, from the speaker's view)."""

        async def go() -> None:
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.close()

        self.lp.run(go())

    def close(self) -> None:
        async def go() -> None:
            self.writer.close()

        self.lp.run(go())


def announce(*prefixes: str, nh: str = "127.0.0.3", **kw: Any) -> Update:
    return Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), next_hop=IPv4Address(nh), local_pref=100, **kw),
                  nlri=tuple(IPv4Network(p) for p in prefixes))


# --- tests --------------------------------------------------------------------------------------


def test_two_speakers_exchange_and_withdraw_routes(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.2")])
    b = speaker(nsloop, "127.0.0.2", [peer("127.0.0.1")])  # both active: collisions get resolved
    wait_established(nsloop, a, "127.0.0.1")
    wait_established(nsloop, b, "127.0.0.2")
    nsloop.call(a.originate, "10.100.1.0/26")
    got = poll(lambda: rib(nsloop, b), lambda r: "10.100.1.0/26" in r, timeout=10,
               what="speaker 127.0.0.2: 10.100.1.0/26 from 127.0.0.1 in Loc-RIB")
    assert got["10.100.1.0/26"].next_hop == IPv4Address("127.0.0.1")
    assert got["10.100.1.0/26"].local_pref == 100
    nsloop.call(a.withdraw, "10.100.1.0/26")
    poll(lambda: rib(nsloop, b), lambda r: "10.100.1.0/26" not in r, timeout=10,
         what="speaker 127.0.0.2: 10.100.1.0/26 withdrawn")
    table = nsloop.call(lambda: format_status(a.status()))
    assert "PEER ADDRESS" in table and "127.0.0.2" in table and "Established" in table
    assert "node-to-node mesh" in table


def test_changes_iterator_starts_with_the_table(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [], listen=False)
    nsloop.call(a.originate, "10.1.0.0/24")

    async def first_two() -> list[tuple[str, bool]]:
        it = a.changes()
        out = [await it.__anext__()]
        a.withdraw("10.1.0.0/24")
        out.append(await it.__anext__())
        await it.aclose()
        return [(str(c.prefix), c.best is not None) for c in out]

    assert nsloop.run(first_two()) == [("10.1.0.0/24", True), ("10.1.0.0/24", False)]


def test_route_reflector_reflects_between_clients(nsloop: NsLoop) -> None:
    rr = speaker(nsloop, "127.0.0.1", [peer("127.0.0.2", rr_client=True), peer("127.0.0.3", rr_client=True)],
                 cluster_id="10.255.0.1")
    c1 = speaker(nsloop, "127.0.0.2", [peer("127.0.0.1", passive=True)])
    c2 = speaker(nsloop, "127.0.0.3", [peer("127.0.0.1", passive=True)])
    for sp, who in ((rr, "rr"), (c1, "client1"), (c2, "client2")):
        wait_established(nsloop, sp, who)
    nsloop.call(c1.originate, "10.100.2.0/26")
    got = poll(lambda: rib(nsloop, c2), lambda r: "10.100.2.0/26" in r, timeout=10,
               what="client 127.0.0.3: route of client 127.0.0.2 reflected")
    a = got["10.100.2.0/26"]
    assert a.originator_id == IPv4Address("127.0.0.2")
    assert a.cluster_list == (IPv4Address("10.255.0.1"),)
    assert a.next_hop == IPv4Address("127.0.0.2")


def bad_prefix(r: RawPeer) -> None:
    r.establish()
    r.send(b"\xff" * 16 + b"\x00\x1c\x02\x00\x00\x00\x00\x21\x0a\x00\x00\x00")  # NLRI 10.0.0.0/33


def test_malformed_messages_get_the_rfc_notification_and_the_speaker_carries_on(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.2"), peer("127.0.0.5", passive=True)])
    b = speaker(nsloop, "127.0.0.2", [peer("127.0.0.1")])
    wait_established(nsloop, b, "127.0.0.2")

    cases: list[tuple[str, Callable[[RawPeer], None], tuple[int, int]]] = [
        ("bad marker", lambda r: r.send(b"\x00" * 16 + b"\x00\x13\x04"), (1, 1)),
        ("bad length", lambda r: r.send(b"\xff" * 16 + b"\x00\x05\x04"), (1, 2)),
        ("bad type", lambda r: r.send(b"\xff" * 16 + b"\x00\x13\x09"), (1, 3)),
        ("version 3", lambda r: r.send(encode(Open(ASN, 30, IPv4Address("10.9.9.9")))[:19] + b"\x03"
                                      + encode(Open(ASN, 30, IPv4Address("10.9.9.9")))[20:]), (2, 1)),
        ("wrong AS", lambda r: r.send(Open(65001, 30, IPv4Address("10.9.9.9"),
                                           Capabilities(four_octet_as=65001))), (2, 2)),
        ("hold time 2", lambda r: r.send(Open(ASN, 2, IPv4Address("10.9.9.9"))), (2, 6)),
        ("bgp id 0", lambda r: r.send(Open(ASN, 30, IPv4Address("0.0.0.0"))), (2, 3)),
        ("prefix /33", bad_prefix, (3, 10)),
        ("update before open", lambda r: r.send(end_of_rib()), (5, 1)),
    ]
    for what, act, expected in cases:
        raw = RawPeer(nsloop, "127.0.0.5")
        act(raw)
        seen = raw.recv_until(lambda m: isinstance(m, Notification))
        notes = [m for m in seen if isinstance(m, Notification)]
        assert notes, f"{what}: speaker 127.0.0.1 sent no NOTIFICATION, saw {seen}"
        got = (notes[0].code, notes[0].subcode)
        assert got == expected, f"{what}: NOTIFICATION {got}, expected {expected}"
        assert raw.recv() is None, f"{what}: connection should be closed after the NOTIFICATION"
        raw.close()
    # the real session never noticed
    assert states(nsloop, a)["127.0.0.2"] == "Established"
    nsloop.call(a.originate, "10.100.3.0/26")
    poll(lambda: rib(nsloop, b), lambda r: "10.100.3.0/26" in r, timeout=10,
         what="speaker 127.0.0.2: route after the malformed sessions")
    info = {s.address: s.info for s in nsloop.call(a.status)}["127.0.0.5"]
    assert "5/1" in info, info


def test_unconfigured_source_is_rejected_with_cease_5(nsloop: NsLoop) -> None:
    speaker(nsloop, "127.0.0.1", [])
    raw = RawPeer(nsloop, "127.0.0.9")
    m = raw.recv()
    assert isinstance(m, Notification) and (m.code, m.subcode) == (6, 5)
    raw.close()


def test_treat_as_withdraw_keeps_the_session(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True)])
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish()
    raw.send(announce("10.7.0.0/16"))
    poll(lambda: rib(nsloop, a), lambda r: "10.7.0.0/16" in r, timeout=10, what="10.7.0.0/16 learned")
    bad_origin = bytearray(encode(announce("10.7.0.0/16")))
    bad_origin[26] = 7  # ORIGIN value 7 → RFC 7606 treat-as-withdraw
    raw.send(bytes(bad_origin))
    poll(lambda: rib(nsloop, a), lambda r: "10.7.0.0/16" not in r, timeout=10,
         what="10.7.0.0/16 treated as withdrawn")
    assert states(nsloop, a)["127.0.0.5"] == "Established"
    raw.close()


def test_hold_timer_expiry_sends_4_0(nsloop: NsLoop) -> None:
    speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True, hold_time=3)])
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(hold=3)
    # we stay silent; the speaker keeps sending KEEPALIVEs, then gives up after 3 s
    seen = raw.recv_until(lambda m: isinstance(m, Notification), timeout=10)
    assert isinstance(seen[-1], Notification) and (seen[-1].code, seen[-1].subcode) == (4, 0)
    assert any(isinstance(m, Keepalive) for m in seen)
    raw.close()


def test_graceful_restart_keeps_stale_routes_until_end_of_rib(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True)])
    gr = GracefulRestart(restart_time=60, afis=((1, 1, True),))
    raw = RawPeer(nsloop, "127.0.0.5")
    their = raw.establish(gr=gr)
    assert their.capabilities.graceful_restart is not None
    raw.send(announce("10.8.1.0/24", "10.8.2.0/24"))
    poll(lambda: rib(nsloop, a), lambda r: {"10.8.1.0/24", "10.8.2.0/24"} <= set(r), timeout=10,
         what="routes from the GR peer")
    raw.abort()  # peer "crashes": TCP reset, no NOTIFICATION
    poll(lambda: states(nsloop, a)["127.0.0.5"], lambda s: s != "Established", timeout=10,
         what="session with 127.0.0.5 down")
    stale = {str(p): path.stale for p, path in nsloop.call(a.loc_rib).items()}
    assert stale == {"10.8.1.0/24": True, "10.8.2.0/24": True}
    # it restarts, re-announces one route and sends End-of-RIB: the other one goes
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(gr=GracefulRestart(60, restarting=True, afis=((1, 1, True),)))
    raw.send(announce("10.8.1.0/24"))
    raw.send(end_of_rib())
    got = poll(lambda: nsloop.call(a.loc_rib), lambda r: len(r) == 1, timeout=10,
               what="stale 10.8.2.0/24 swept at End-of-RIB")
    assert [(str(p), path.stale) for p, path in got.items()] == [("10.8.1.0/24", False)]
    raw.close()


def test_graceful_restart_timer_expiry_drops_stale_routes(nsloop: NsLoop) -> None:
    restart = 2
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True)])
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(gr=GracefulRestart(restart_time=restart, afis=((1, 1, True),)))
    raw.send(announce("10.8.3.0/24"))
    poll(lambda: rib(nsloop, a), lambda r: "10.8.3.0/24" in r, timeout=10, what="route learned")
    raw.abort()
    poll(lambda: states(nsloop, a)["127.0.0.5"], lambda s: s != "Established", timeout=10,
         what="session with 127.0.0.5 down")
    down = time.monotonic()
    # a speaker that ignored graceful restart would have dropped the route with the session
    kept = {str(p): path.stale for p, path in nsloop.call(a.loc_rib).items()}
    assert kept == {"10.8.3.0/24": True}, f"right after the session dropped, expected the route kept as stale: {kept}"
    poll(lambda: rib(nsloop, a), lambda r: "10.8.3.0/24" not in r, timeout=10,
         what=f"stale route gone after the {restart} s restart time")
    held = time.monotonic() - down
    # a protocol timer, not a speed: the stale route must outlive most of the restart time
    assert held >= restart - 0.5, f"stale route dropped {held:.2f}s after the session, before the {restart}s restart time"


def test_without_graceful_restart_routes_go_with_the_session(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True)])
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(gr=None)
    raw.send(announce("10.8.4.0/24"))
    poll(lambda: rib(nsloop, a), lambda r: "10.8.4.0/24" in r, timeout=10, what="route learned")
    raw.abort()
    poll(lambda: rib(nsloop, a), lambda r: "10.8.4.0/24" not in r, timeout=10, what="route gone with session")


def test_ebgp_session_prepends_and_sets_next_hop(nsloop: NsLoop) -> None:
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", asn=65000, passive=True)])
    nsloop.call(a.originate, "10.100.4.0/26")
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(asn=65000)
    seen = raw.recv_until(lambda m: isinstance(m, Update) and m.is_end_of_rib())
    ups = [m for m in seen if isinstance(m, Update) and m.nlri]
    assert ups and ups[0].nlri == (IPv4Network("10.100.4.0/26"),)
    assert ups[0].attrs.as_path_asns() == (ASN,) and ups[0].attrs.next_hop == IPv4Address("127.0.0.1")
    assert ups[0].attrs.local_pref is None
    raw.close()



def test_graceful_restart_aware_peer_without_families_gets_no_stale_routes(nsloop: NsLoop) -> None:
    """RFC 4724 4.2: only the families listed in the peer's capability are retained (BIRD's default
    `graceful restart aware` lists none)."""
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", passive=True)])
    raw = RawPeer(nsloop, "127.0.0.5")
    raw.establish(gr=GracefulRestart(restart_time=60, afis=()))
    raw.send(announce("10.8.5.0/24"))
    poll(lambda: rib(nsloop, a), lambda r: "10.8.5.0/24" in r, timeout=10, what="route learned")
    raw.abort()
    poll(lambda: rib(nsloop, a), lambda r: "10.8.5.0/24" not in r, timeout=10,
         what="route of a GR-aware (no families) peer gone with its session")


class Frames:
    """Read whole messages from one raw stream."""

    def __init__(self, lp: NsLoop, reader: asyncio.StreamReader) -> None:
        self.lp, self.reader, self.framer, self.pending = lp, reader, Framer(), list[bytes]()

    def recv(self, timeout: float = 10) -> Message | None:
        async def go() -> Message | None:
            while not self.pending:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return None
                self.pending += self.framer.feed(data)
            return decode(self.pending.pop(0))

        return self.lp.run(go(), timeout + 5)


@pytest.mark.parametrize("remote_id,survivor", [("200.0.0.1", "theirs"), ("10.0.0.9", "ours")])
def test_connection_collision_keeps_the_higher_ids_connection(nsloop: NsLoop, remote_id: str,
                                                              survivor: str) -> None:
    """RFC 4271 6.8 with both connections in flight at once: ours (A dialled the raw peer) and
    theirs (the raw peer dialled A). The one initiated by the higher BGP identifier survives;
    the other gets Cease 6/7. A's own id is 127.0.0.1."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def listen() -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.5", PORT)

    server = nsloop.run(listen())
    try:
        a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5")])
        our_r, our_w = nsloop.run(asyncio.wait_for(accepted.get(), 10))  # A's outbound connection
        ours = Frames(nsloop, our_r)
        assert isinstance(ours.recv(), Open)
        their_r, their_w = nsloop.run(asyncio.open_connection("127.0.0.1", PORT, local_addr=("127.0.0.5", 0)))
        theirs = Frames(nsloop, their_r)
        assert isinstance(theirs.recv(), Open)
        op = encode(Open(ASN, 30, IPv4Address(remote_id), Capabilities(four_octet_as=ASN)))

        def send(w: asyncio.StreamWriter, data: bytes) -> None:
            async def go() -> None:
                w.write(data)
                await w.drain()
            nsloop.run(go())

        send(our_w, op)  # A's outbound reaches OpenConfirm while the inbound one waits in OpenSent
        send(their_w, op)
        keep, lose = (ours, theirs) if survivor == "ours" else (theirs, ours)
        keep_w = our_w if survivor == "ours" else their_w
        msgs: list[Message | None] = []
        while True:
            m = lose.recv()
            msgs.append(m)
            if m is None or isinstance(m, Notification):
                break
        assert isinstance(msgs[-1], Notification) and (msgs[-1].code, msgs[-1].subcode) == (6, 7), \
            f"{survivor} should survive; the other connection saw {msgs}"
        assert isinstance(keep.recv(), Keepalive)
        send(keep_w, encode(Keepalive()))
        wait_established(nsloop, a, "127.0.0.1")
        for w in (our_w, their_w):
            w.close()
    finally:
        server.close()


def test_two_octet_as_peer(nsloop: NsLoop) -> None:
    """A peer without the 4-octet AS capability gets 2-octet AS_PATHs, with AS_TRANS and AS4_PATH
    standing in for our 4-octet AS (RFC 6793)."""
    big = 4200000000
    a = speaker(nsloop, "127.0.0.1", [peer("127.0.0.5", asn=65000, passive=True)], asn=big)
    nsloop.call(a.originate, "10.100.4.0/26")
    raw = RawPeer(nsloop, "127.0.0.5")
    their = raw.establish(asn=65000, four_octet=False)
    assert their.asn == big and their.capabilities.four_octet_as == big
    seen = raw.recv_until(lambda m: isinstance(m, Update) and m.is_end_of_rib())
    ups = [m for m in seen if isinstance(m, Update) and m.nlri]
    assert ups and ups[0].attrs.as_path_asns() == (big,), ups  # rebuilt from AS_TRANS + AS4_PATH
    raw.send(Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(AsSegment(SegType.AS_SEQUENCE, (65000, 1)),),
                                         next_hop=IPv4Address("127.0.0.5")), nlri=(IPv4Network("10.9.0.0/16"),)))
    got = poll(lambda: rib(nsloop, a), lambda r: "10.9.0.0/16" in r, timeout=10, what="route from the 2-octet peer")
    assert got["10.9.0.0/16"].as_path_asns() == (65000, 1)
    raw.close()
