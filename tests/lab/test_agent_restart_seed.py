"""Killing ubuntu-4's agent on the seed lab, with and without graceful restart.

With graceful restart (the seed file as it is): the userspace tunl0 is a persistent TUN device, so
a SIGKILLed node process leaves tunl0 and the kernel routes in place (as killing calico-node leaves
Calico's kernel datapath), the peers keep ubuntu-4's routes as stale, and the restarted process
adopts the tunl0 it finds.

Without it (a copy of the seed file with graceful_restart off and a short hold time): a frozen
agent (SIGSTOP, supervisor too, so nothing restarts it) keeps its TCP sessions open, so only the
peers' hold timers notice; its block leaves every peer within the hold time, and comes back
when the agent is thawed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _labtools import TOPOLOGIES, labnet, snapshot

from labnet.checks import assert_blackhole_route, assert_tunnel_route
from labnet.lab.view import LabView
from labnet.nsexec import run
from labnet.wait import poll

pytestmark = pytest.mark.topology("../../topologies/seed.yaml", name="t-seedgr")

NODES = ["ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"]


def test_sigkill_agent_keeps_traffic_and_routes(lab, node) -> None:
    before = lab.view.agent_status("ubuntu-4")
    old_pid = before["pid"]
    assert before["ready"], f"ubuntu-4 agent not ready before the kill: {before}"
    assert before["tunnel"].get("mode") == "ipip-userspace", f"ubuntu-4: expected the userspace tunl0: {before['tunnel']}"
    (block4,) = lab.view.blocks("ubuntu-4")
    addr4 = lab.address("ubuntu-4")
    dst = lab.address("net-test-2")
    src = lab.pod("net-test")
    u3 = node("ubuntu-3")

    pings: list[int] = []
    route_gaps: list[Any] = []

    def probe() -> dict[str, Any] | None:
        pings.append(run(src, ["ping", "-c", "1", "-W", "1", dst], check=False).returncode)
        routes = json.loads(run(u3, ["ip", "-j", "route", "show", str(block4)]).stdout)
        if not any(r.get("gateway") == addr4 and r.get("dev") == "tunl0" for r in routes):
            route_gaps.append(routes)
        try:
            return lab.view.agent_status("ubuntu-4")  # type: ignore[no-any-return]
        except Exception:  # the agent is down: that is the point
            return None

    os.kill(old_pid, signal.SIGKILL)
    after = poll(probe, lambda st: st is not None and st["pid"] != old_pid and st["ready"], timeout=60,
                 what="ubuntu-4 agent restarted (new pid) and ready")
    lost = sum(1 for rc in pings if rc != 0)
    assert lost <= 1, f"net-test (ubuntu-3) -> net-test-2 {dst} (ubuntu-4): {lost} of {len(pings)} pings lost " \
                      f"while ubuntu-4's agent restarted (expected at most 1): {pings}"
    assert not route_gaps, f"ubuntu-3: route to ubuntu-4's block {block4} via {addr4} dev tunl0 was missing " \
                           f"during the restart: {route_gaps[:3]}"
    assert after["tunnel"].get("adopted") and not after["tunnel"].get("error"), \
        f"ubuntu-4: the restarted process should adopt the tunl0 the killed one left: {after['tunnel']}"

    blocks = {n: lab.view.blocks(n) for n in NODES}
    for n in NODES:
        for b in blocks[n]:
            assert_blackhole_route(node(n), str(b))
        for other in NODES:
            if other != n:
                for b in blocks[other]:
                    assert_tunnel_route(node(n), str(b), lab.address(other))
    poll(lambda: run(src, ["ping", "-c", "1", "-W", "1", dst], check=False).returncode, lambda rc: rc == 0,
         timeout=20, what=f"net-test -> net-test-2 {dst} after the restart")


HOLD, KEEPALIVE = 6, 2
NO_GR = "t-seedhold"


@pytest.fixture(scope="module")
def seed_no_gr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabView]:
    """The seed lab with graceful restart off and a 6 s hold time (keepalive 2 s)."""
    topo = yaml.safe_load((TOPOLOGIES / "seed.yaml").read_text())
    topo["name"] = NO_GR
    topo["cluster"]["bgp"].update(graceful_restart=False, hold_time=HOLD, keepalive=KEEPALIVE)
    path = Path(tmp_path_factory.mktemp("seed-no-gr")) / "seed-no-gr.yaml"
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    before = snapshot(NO_GR)
    labnet("up", str(path), "-q", timeout=600)
    try:
        yield LabView(NO_GR)
    finally:
        labnet("down", "--name", NO_GR, check=False)
    left = snapshot(NO_GR).leftovers(before)
    assert not left, f"lab {NO_GR} left things behind after down: {left}"


def _route_via(view: LabView, node: str, block: str, gateway: str) -> dict[str, Any] | None:
    routes = json.loads(run(view.ns(node), ["ip", "-j", "route", "show", block]).stdout)
    return next((r for r in routes if r.get("gateway") == gateway and r.get("dev") == "tunl0"), None)


def test_frozen_agent_without_graceful_restart_loses_its_blocks_after_the_hold_time(seed_no_gr: LabView) -> None:
    view = seed_no_gr
    st4 = view.agent_status("ubuntu-4")
    agent, sup = st4["pid"], st4["supervisor_pid"]
    assert agent and sup and agent != sup, f"ubuntu-4: agent pid {agent}, supervisor pid {sup}"
    (block4,) = (str(b) for b in view.blocks("ubuntu-4"))
    addr4 = view.address("ubuntu-4")
    peers = [n for n in NODES if n != "ubuntu-4"]
    for n in peers:
        assert _route_via(view, n, block4, addr4), \
            f"{n}: expected {block4} via {addr4} dev tunl0 before the freeze, got none"

    os.kill(sup, signal.SIGSTOP)  # the supervisor first: it must not notice anything and restart the agent
    os.kill(agent, signal.SIGSTOP)
    t0 = time.monotonic()
    gone_at: dict[str, float] = {}
    first_seen: dict[str, bool] = {}
    try:
        def sweep() -> dict[str, Any]:
            now = time.monotonic() - t0
            state = {}
            for n in peers:
                r = _route_via(view, n, block4, addr4)
                first_seen.setdefault(n, r is not None)
                if r is None:
                    gone_at.setdefault(n, now)
                state[n] = r
            return {"t": round(now, 2), "routes": state, "gone_at": dict(gone_at)}

        poll(sweep, lambda s: len(gone_at) == len(peers), timeout=HOLD + 10, interval=0.2,
             what=f"every peer of frozen ubuntu-4 to drop {block4} via {addr4} (hold time {HOLD}s)")
        print(f"ubuntu-4 frozen: {block4} gone from its peers after "
              f"{ {n: round(t, 2) for n, t in sorted(gone_at.items())} } s (hold time {HOLD}s)")
        for n in peers:
            assert first_seen[n], f"{n}: {block4} via {addr4} gone at once after the freeze; " \
                                  f"expected it kept until the hold timer ({HOLD}s) expires"
            # the last keepalive came about KEEPALIVE s before the freeze (HOLD - KEEPALIVE = 4 s); a late
            # one under load makes it earlier, so the floor is half the hold time
            assert HOLD / 2 <= gone_at[n] <= HOLD + 3, \
                f"{n}: {block4} via {addr4} withdrawn {gone_at[n]:.2f}s after the freeze, expected within " \
                f"[{HOLD / 2}, {HOLD + 3}] s (hold time {HOLD}s, keepalive {KEEPALIVE}s)"
        st3 = view.agent_status("ubuntu-3")
        p4 = next(p for p in st3["peers"] if p["peer_address"] == addr4)
        assert p4["bgp_state"] != "Established" and "hold timer expired" in p4["info"], \
            f"ubuntu-3: peer ubuntu-4 {addr4}: expected not Established with info 'hold timer expired', got {p4}"
        # ubuntu-4's own blackhole stays (its kernel state is untouched), the rest of the mesh too
        assert_blackhole_route(view.ns("ubuntu-4"), block4)
        (block3,) = (str(b) for b in view.blocks("ubuntu-3"))
        assert_tunnel_route(view.ns("ubuntu-1"), block3, view.address("ubuntu-3"))
    finally:
        os.kill(agent, signal.SIGCONT)
        os.kill(sup, signal.SIGCONT)

    back = poll(lambda: {n: _route_via(view, n, block4, addr4) for n in peers},
                lambda s: all(s.values()), timeout=40, interval=0.2,
                what=f"{block4} via {addr4} dev tunl0 back on every peer after ubuntu-4's agent thawed")
    print(f"ubuntu-4 thawed: {block4} back on {sorted(back)} after {time.monotonic() - t0:.1f}s")
    st4 = poll(lambda: view.agent_status("ubuntu-4"),
               lambda s: all(p["bgp_state"] == "Established" for p in s["peers"]) and len(s["peers"]) == 4,
               timeout=40, what="ubuntu-4: all 4 sessions Established again after the thaw")
    assert (st4["pid"], st4["supervisor_pid"]) == (agent, sup), \
        f"ubuntu-4: expected the same agent {agent} (supervisor {sup}) thawed, not restarted: " \
        f"got agent {st4['pid']}, supervisor {st4['supervisor_pid']}"
