"""labnet-agent under faults: graceful restart, the supervisor, and the seed's wrong-node-name fault."""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

from _agent_cluster import (
    HOLD,
    agents_running,
    bird_routes,
    established,
    exited,
    route_to,
    setup_cluster,
    start_agent,
    start_supervised,
    status,
)

from labnet.nsexec import pid_alive, run
from labnet.wait import poll

RESTART_TIME = 6


def test_graceful_restart_keeps_stale_routes_until_the_restart_timer(netns_factory: Any, tmp_path: Path) -> None:
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2, graceful_restart=True, restart_time=RESTART_TIME)
    n1, n2 = nodes
    with agents_running(nodes, stop=False):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        poll(lambda: established(n1, 1), lambda v: isinstance(v, dict), timeout=40,
             what=f"{n1.name}: session with {n2.name} Established")
        poll(lambda: route_to(n1, n2.block), lambda r: r is not None, timeout=20,
             what=f"{n1.name}: route to {n2.block}")
        os.kill(n2.pid, signal.SIGKILL)

        def peer_state() -> str:
            return str(status(n1)["peers"][0]["bgp_state"])

        poll(peer_state, lambda s: s != "Established", timeout=15, what=f"{n1.name}: session with {n2.name} down")
        down = time.monotonic()
        # the helper keeps the dead speaker's route (stale) for the restart time ...
        assert route_to(n1, n2.block) is not None, \
            f"{n1.name}: route to {n2.block} gone at once, expected it kept for {RESTART_TIME}s (graceful restart)"
        # ... and drops it when the restart timer runs out, not before (a protocol timer, not a speed)
        poll(lambda: route_to(n1, n2.block), lambda r: r is None, timeout=RESTART_TIME + 10,
             what=f"{n1.name}: stale route to {n2.block} swept after the restart time")
        held = time.monotonic() - down
        assert held >= RESTART_TIME - 1, (
            f"{n1.name}: stale route to {n2.block} went {held:.1f}s after the session, before the {RESTART_TIME}s "
            "restart time")
        assert route_to(n1, n1.block) is not None  # our own blackhole stays


def test_supervisor_restarts_a_killed_agent_and_forwards_sigterm(netns_factory: Any, tmp_path: Path) -> None:
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2)
    n1, n2 = nodes
    with agents_running(nodes):
        start_agent(netns_factory, n1, tmp_path)
        sup = start_supervised(netns_factory, n2, tmp_path)
        first = poll(lambda: established(n2, 1), lambda v: isinstance(v, dict), timeout=40,
                     what=f"{n2.name}: supervised agent Established")
        agent_pid = int(first["pid"])
        assert agent_pid != sup and first["supervisor_pid"] == sup, first
        netns_factory.track_pid(agent_pid)

        os.kill(agent_pid, signal.SIGKILL)  # just the agent: the supervisor brings it back
        again = poll(lambda: established(n2, 1), lambda v: isinstance(v, dict) and v["pid"] != agent_pid,
                     timeout=40, what=f"{n2.name}: agent restarted by the supervisor and Established again")
        new_pid = int(again["pid"])
        netns_factory.track_pid(new_pid)
        poll(lambda: route_to(n1, n2.block), lambda r: r is not None, timeout=20,
             what=f"{n1.name}: route to {n2.block} back after the restart")
        log = (n2.config.parent / "agent.log").read_text()
        assert f"agent pid {agent_pid} killed by signal 9" in log and "restart #1" in log, log[-2000:]

        os.kill(sup, signal.SIGTERM)  # forwarded: the agent shuts down cleanly, then the supervisor exits
        poll(lambda: (pid_alive(sup), pid_alive(new_pid)), lambda v: v == (False, False), timeout=20,
             what=f"{n2.name}: supervisor {sup} and agent {new_pid} gone after SIGTERM")
        assert [str(r) for r in bird_routes(n2.ns)] == [], f"{n2.name}: agent left routes behind"
        assert run(n2.ns, ["ip", "link", "show", "tunl0"], check=False).returncode != 0, "tunl0 left behind"
        assert run(n2.ns, ["nft", "list", "table", "ip", "labnet-nat"], check=False).returncode != 0
        # the peer saw a Cease, not a timeout: its route to node-2 goes at once
        poll(lambda: route_to(n1, n2.block), lambda r: r is None, timeout=10,
             what=f"{n1.name}: route to {n2.block} withdrawn after node-2's clean stop")


def test_wrong_node_name_is_diagnosed_and_its_blocks_get_no_routes(netns_factory: Any, tmp_path: Path) -> None:
    # node-2's CNI plugin uses "node-2" (its nodename file); its agent is told to register as "x"
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2, overrides={"node-2": {"nodename": "x"}})
    n1, n2 = nodes
    with agents_running(nodes):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        poll(lambda: established(n1, 1), lambda v: isinstance(v, dict), timeout=40,
             what=f"{n1.name}: session with {n2.name} (registered as 'x') Established")
        st2 = poll(lambda: status(n2), lambda s: bool(s["problems"]) and s["passes"] > 0, timeout=20,
                   what=f"{n2.name}: problems reported")
        assert st2["nodename"] == "x" and st2["cni_nodename"] == "node-2"
        assert ("node name mismatch: agent registered as 'x' but the CNI plugin uses 'node-2' "
                f"(from {n2.config.parent / 'nodename'}): its blocks get no routes") in st2["problems"], st2["problems"]
        # the agent claimed a block for 'x'; the CNI's block (node-2's) has no owner in BGP
        assert n2.block not in st2["blocks"]
        st1 = poll(lambda: status(n1), lambda s: any("'node-2', which no agent registered" in p
                                                      for p in s["problems"]),
                   timeout=20, what=f"{n1.name}: orphaned blocks of node-2 reported")
        assert st1["nodename"] == "node-1"
        assert route_to(n1, n2.block) is None, f"{n1.name}: unexpected route to node-2's block {n2.block}"
        assert route_to(n2, n2.block) is None, f"{n2.name}: unexpected blackhole for the CNI's block {n2.block}"


def test_hold_timer_withdraws_the_routes_of_a_frozen_agent(netns_factory: Any, tmp_path: Path) -> None:
    # SIGSTOP keeps the TCP connection open: only the hold timer (3 s) can notice
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2)
    n1, n2 = nodes
    with agents_running(nodes):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        poll(lambda: route_to(n1, n2.block), lambda r: r is not None, timeout=40,
             what=f"{n1.name}: route to {n2.block}")
        os.kill(n2.pid, signal.SIGSTOP)
        try:
            poll(lambda: route_to(n1, n2.block), lambda r: r is None, timeout=HOLD * 4,
                 what=f"{n1.name}: route to frozen {n2.name}'s block withdrawn when the hold timer expires")
            info = status(n1)["peers"][0]["info"]
            assert "hold timer expired" in info, f"{n1.name}: peer info {info!r}, expected a hold timer expiry"
        finally:
            os.kill(n2.pid, signal.SIGCONT)
        poll(lambda: route_to(n1, n2.block), lambda r: r is not None, timeout=40,
             what=f"{n1.name}: route to {n2.block} back after {n2.name} thawed")


def test_agent_stops_when_its_supervisor_is_killed(netns_factory: Any, tmp_path: Path) -> None:
    # the lab records only the supervisor: killing it must not leave an orphaned agent behind
    nodes, _ = setup_cluster(netns_factory, tmp_path, 1)
    n1 = nodes[0]
    sup = start_supervised(netns_factory, n1, tmp_path)
    st = poll(partial(status, n1), lambda s: s["passes"] > 0, timeout=30, what=f"{n1.name}: supervised agent synced")
    agent_pid = int(st["pid"])
    netns_factory.track_pid(agent_pid)
    os.kill(sup, signal.SIGKILL)
    poll(partial(exited, agent_pid), timeout=20, what=f"{n1.name}: agent {agent_pid} gone after its supervisor died")
    assert route_to(n1, n1.block) is None, f"{n1.name}: the agent did not clean up its blackhole on the way out"
