"""Graceful restart of ubuntu-4's agent on the seed lab (issue 5).

The userspace tunl0 runs as its own process, so a SIGKILLed agent leaves the datapath and the
kernel routes in place (as killing calico-node leaves Calico's kernel datapath), the peers keep
ubuntu-4's routes as stale (BGP graceful restart), and the restarted agent adopts the datapath.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from labnet.checks import assert_blackhole_route, assert_tunnel_route
from labnet.nsexec import run
from labnet.wait import poll

pytestmark = pytest.mark.topology("../../topologies/seed.yaml", name="t-seedgr")

NODES = ["ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"]


def test_sigkill_agent_keeps_traffic_and_routes(lab, node) -> None:
    before = lab.view.agent_status("ubuntu-4")
    old_pid = before["pid"]
    dp_pid = before["tunnel"].get("pid")
    assert before["ready"], f"ubuntu-4 agent not ready before the kill: {before}"
    assert dp_pid and dp_pid != old_pid, f"ubuntu-4: tunl0 datapath is not its own process: {before['tunnel']}"
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
    assert after["tunnel"].get("pid") == dp_pid and after["tunnel"].get("adopted"), \
        f"ubuntu-4: restarted agent should adopt datapath pid {dp_pid}: {after['tunnel']}"

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
