"""Interop: labnet's BGP speaker against BIRD 2 over a veth between two test namespaces.

labnet (10.0.0.1, AS 64512) peers with one BIRD that has two sessions: iBGP from 10.0.0.2
(AS 64512) and eBGP from 10.0.0.3 (AS 65000). Both sides are active, so connection collisions
are resolved on every start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _bgp_bird import Bird, LabnetSpeaker, link, start_bird, start_labnet

from labnet.nsexec import NodeNS, run
from labnet.wait import poll

LABNET = "10.0.0.1"
LABNET_E = "10.0.0.4"  # labnet's source for the eBGP session: BIRD locks sessions by neighbor address
BIRD_I = "10.0.0.2"  # BIRD's iBGP session address, AS 64512
BIRD_E = "10.0.0.3"  # BIRD's eBGP session address, AS 65000
BIRD_CONFIG = f"""
log stderr all;
router id {BIRD_I};
protocol device {{ scan time 10; }}
protocol static static_i {{ ipv4; route 10.100.5.192/26 blackhole; }}
protocol static static_e {{ ipv4; route 10.100.6.0/26 blackhole; route 10.100.7.0/26 blackhole; }}
template bgp labnet_peer {{
  debug {{ states, events }};
  hold time 6; keepalive time 2; connect delay time 1; connect retry time 1; error wait time 1, 3;
}}
protocol bgp ibgp1 from labnet_peer {{
  local {BIRD_I} as 64512;
  neighbor {LABNET} as 64512;
  direct; graceful restart on;
  ipv4 {{ import all; export where proto = "static_i"; next hop self; }};
}}
protocol bgp ebgp1 from labnet_peer {{
  local {BIRD_E} as 65000;
  neighbor {LABNET_E} as 64512;
  ipv4 {{ import all; export where proto = "static_e"; }};
}}
"""

RAW_CLIENT = textwrap.dedent("""
    import json, socket, struct, sys
    src, dst, payload = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    s = socket.create_connection((dst, 179), timeout=10, source_address=(src, 0))
    buf, seen = b"", []
    def messages():
        global buf
        while True:
            while len(buf) >= 19:
                n = struct.unpack_from("!H", buf, 16)[0]
                if len(buf) < n:
                    break
                m, buf = buf[:n], buf[n:]
                yield m
            data = s.recv(4096)
            if not data:
                yield None
                return
            buf += data
    it = messages()
    first = next(it)
    seen.append({"type": first[18]})                # the speaker's OPEN
    s.sendall(payload)
    for m in it:
        if m is None:
            seen.append({"closed": True})
            break
        seen.append({"type": m[18], "code": m[19] if m[18] == 3 else None,
                     "subcode": m[20] if m[18] == 3 else None})
    print(json.dumps(seen))
""")


def lab(netns_factory: Any, tmp_path: Path, labnet_passive: bool = False) -> tuple[NodeNS, NodeNS, Bird, LabnetSpeaker]:
    ns_l = netns_factory("bgp-labnet")
    ns_b = netns_factory("bgp-bird")
    link(ns_l, "eth0", [f"{LABNET}/24", f"{LABNET_E}/24"], ns_b, "eth0", [f"{BIRD_I}/24", f"{BIRD_E}/24"])
    bird = start_bird(ns_b, tmp_path / "bird", BIRD_CONFIG, netns_factory.track_pid)
    sp = start_labnet(ns_l, tmp_path / "labnet", {
        "asn": 64512, "router_id": LABNET, "local_address": LABNET, "bind": "0.0.0.0", "restart_time": 30,
        "peers": [
            {"address": BIRD_I, "asn": 64512, "hold_time": 6, "connect_retry": 1.0, "passive": labnet_passive,
             "peer_type": "global"},
            {"address": BIRD_E, "asn": 65000, "hold_time": 6, "connect_retry": 1.0, "passive": labnet_passive,
             "peer_type": "node specific", "local_address": LABNET_E},
        ],
        "originate": ["10.100.1.0/26"],
    }, netns_factory.track_pid)
    return ns_l, ns_b, bird, sp


def both_established(bird: Bird, sp: LabnetSpeaker) -> None:
    poll(bird.protocols, lambda p: p.get("ibgp1") == "Established" and p.get("ebgp1") == "Established",
         timeout=30, what=f"BIRD: ibgp1 and ebgp1 Established (bird log {bird.log})")
    poll(sp.states, lambda s: s == {BIRD_I: "Established", BIRD_E: "Established"}, timeout=30,
         what=f"labnet speaker: sessions with {BIRD_I} and {BIRD_E} Established (log {sp.log})")


@pytest.mark.parametrize("labnet_passive", [False, True], ids=["both-active", "labnet-passive"])
def test_ibgp_and_ebgp_with_bird(netns_factory: Any, tmp_path: Path, labnet_passive: bool) -> None:
    _, _, bird, sp = lab(netns_factory, tmp_path, labnet_passive)
    both_established(bird, sp)
    table = sp.table()
    assert "Established" in table and "global" in table and "node specific" in table, table

    # labnet → BIRD, on both sessions
    poll(lambda: (bird.routes("ibgp1"), bird.routes("ebgp1")),
         lambda r: "10.100.1.0/26" in r[0] and "10.100.1.0/26" in r[1], timeout=15,
         what="BIRD: 10.100.1.0/26 from labnet over ibgp1 and ebgp1")
    detail = bird.route_detail("10.100.1.0/26")
    assert f"via {LABNET}" in detail and f"via {LABNET_E}" in detail, detail
    assert "BGP.as_path: 64512" in detail, f"eBGP copy should carry AS_PATH 64512:\n{detail}"
    assert "BGP.local_pref: 100" in detail, detail

    # BIRD → labnet: iBGP route keeps an empty path, eBGP routes carry 65000
    rib = poll(sp.rib, lambda r: {"10.100.5.192/26", "10.100.6.0/26", "10.100.7.0/26"} <= set(r), timeout=15,
               what="labnet Loc-RIB: BIRD's static routes")
    assert rib["10.100.5.192/26"]["from"] == BIRD_I and rib["10.100.5.192/26"]["as_path"] == []
    assert rib["10.100.5.192/26"]["next_hop"] == BIRD_I
    assert rib["10.100.6.0/26"]["from"] == BIRD_E and rib["10.100.6.0/26"]["as_path"] == [65000]
    assert rib["10.100.6.0/26"]["next_hop"] == BIRD_E

    # withdrawals both ways
    sp.withdraw("10.100.1.0/26")
    poll(lambda: bird.routes("ibgp1") | bird.routes("ebgp1"), lambda r: "10.100.1.0/26" not in r, timeout=15,
         what="BIRD: 10.100.1.0/26 withdrawn by labnet")
    bird.cmd("disable", "static_e")
    poll(sp.rib, lambda r: not {"10.100.6.0/26", "10.100.7.0/26"} & set(r), timeout=15,
         what="labnet Loc-RIB: BIRD withdrew 10.100.6.0/26 and 10.100.7.0/26")
    bird.cmd("enable", "static_e")
    poll(sp.rib, lambda r: {"10.100.6.0/26", "10.100.7.0/26"} <= set(r), timeout=15,
         what="labnet Loc-RIB: 10.100.6.0/26 back after BIRD re-enabled static_e")

    # route refresh: BIRD asks labnet to resend its table
    sp.originate("10.100.2.0/26")
    poll(lambda: bird.routes("ibgp1"), lambda r: "10.100.2.0/26" in r, timeout=15, what="BIRD: 10.100.2.0/26")
    bird.cmd("reload", "in", "ibgp1")
    poll(lambda: bird.routes("ibgp1"), lambda r: "10.100.2.0/26" in r, timeout=15,
         what="BIRD: 10.100.2.0/26 still there after `reload in` (ROUTE-REFRESH)")
    assert bird.protocols()["ibgp1"] == "Established"


def raw_client(ns: NodeNS, src: str, payload: bytes) -> list[dict[str, Any]]:
    out = run(ns, [sys.executable, "-c", RAW_CLIENT, src, LABNET, payload.hex()], timeout=30)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("what,payload,expected", [
    pytest.param(what, payload, expected, id=what.replace(" ", "-"))
    for what, payload, expected in [
        ("bad marker", b"\x00" * 16 + b"\x00\x13\x04", (1, 1)),
        ("bad length", b"\xff" * 16 + b"\x10\x01\x04", (1, 2)),
        ("bad type", b"\xff" * 16 + b"\x00\x13\x07", (1, 3)),
        ("OPEN version 3", b"\xff" * 16 + b"\x00\x1d\x01\x03\xfc\x00\x00\x1e\x0a\x00\x00\x02\x00", (2, 1)),
        ("OPEN hold time 1", b"\xff" * 16 + b"\x00\x1d\x01\x04\xfc\x00\x00\x01\x0a\x00\x00\x02\x00", (2, 6)),
        ("OPEN wrong AS", b"\xff" * 16 + b"\x00\x1d\x01\x04\xfd\xe9\x00\x1e\x0a\x00\x00\x02\x00", (2, 2)),
    ]
])
def test_malformed_input_gets_notification_and_bird_sessions_stay(
    netns_factory: Any, tmp_path: Path, what: str, payload: bytes, expected: tuple[int, int]
) -> None:
    _, ns_b, bird, sp = lab(netns_factory, tmp_path)
    both_established(bird, sp)
    since = {a: s["since"] for a, s in sp.status().items()}

    seen = raw_client(ns_b, BIRD_I, payload)  # from BIRD's own address: a second connection of that peer
    notes = [m for m in seen if m.get("type") == 3]
    assert notes, f"{what}: labnet sent no NOTIFICATION; client saw {seen} (log {sp.log})"
    assert (notes[0]["code"], notes[0]["subcode"]) == expected, f"{what}: got {notes[0]}, expected {expected}"
    assert seen[-1] == {"closed": True}, f"{what}: connection not closed after the NOTIFICATION: {seen}"

    # the speaker is still serving BIRD: same sessions, and new routes still flow
    assert bird.protocols() == {"ibgp1": "Established", "ebgp1": "Established"}
    assert {a: s["since"] for a, s in sp.status().items()} == since, "labnet's BIRD sessions flapped"
    sp.originate("10.100.3.0/26")
    poll(lambda: bird.routes("ibgp1"), lambda r: "10.100.3.0/26" in r, timeout=15,
         what=f"BIRD: 10.100.3.0/26 from labnet after the {what} connection")


def test_graceful_restart_with_bird(netns_factory: Any, tmp_path: Path) -> None:
    """BIRD dies (no NOTIFICATION): its iBGP routes stay in labnet as stale (GR negotiated), its eBGP
    routes (no GR on that session) go at once. BIRD comes back in recovery mode with a changed table:
    re-announced routes are fresh, the one it no longer has is swept at End-of-RIB."""
    _, ns_b, bird, sp = lab(netns_factory, tmp_path)
    both_established(bird, sp)
    poll(sp.rib, lambda r: {"10.100.5.192/26", "10.100.6.0/26"} <= set(r), timeout=15,
         what="labnet Loc-RIB: BIRD's routes before the restart")

    os.kill(bird.pid, signal.SIGKILL)
    poll(sp.states, lambda s: s[BIRD_I] != "Established" and s[BIRD_E] != "Established", timeout=15,
         what="labnet: both sessions down after BIRD was killed")
    rib = sp.rib()
    assert rib.get("10.100.5.192/26", {}).get("stale") is True, f"iBGP route should be kept stale: {rib}"
    assert "10.100.6.0/26" not in rib, f"eBGP route (no graceful restart) should be gone: {rib}"

    changed = BIRD_CONFIG.replace("route 10.100.5.192/26 blackhole;", "route 10.100.9.0/26 blackhole;")
    bird = start_bird(ns_b, tmp_path / "bird2", changed, netns_factory.track_pid, recovery=True)
    both_established(bird, sp)
    rib = poll(sp.rib, lambda r: "10.100.9.0/26" in r and "10.100.5.192/26" not in r, timeout=30,
               what="labnet Loc-RIB: new BIRD route in, stale 10.100.5.192/26 swept")
    assert not [p for p, r in rib.items() if r["stale"]], f"stale routes left: {rib}"
