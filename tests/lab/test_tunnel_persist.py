"""The agent's userspace tunl0 is a persistent TUN device: a killed process leaves tunl0, its
address and the routes through it; the next start adopts it; a clean stop removes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from labnet.nsexec import NodeNS, pid_alive, run, spawn
from labnet.wait import poll

START = (
    "import json, signal, sys, threading\n"
    "from labnet.agent.tunnel import start_ipip\n"
    "t = start_ipip('10.99.0.1', '10.100.1.0', 1400, mode='userspace', persist=True)\n"
    "print(json.dumps(t.status()), flush=True)\n"
    "stop = threading.Event()\n"
    "signal.signal(signal.SIGTERM, lambda *_: stop.set())\n"
    "while not stop.wait(0.2):\n"
    "    pass\n"
    "t.stop()\n"
)


def _tunl0(ns: NodeNS) -> dict[str, Any] | None:
    links = json.loads(run(ns, ["ip", "-j", "addr", "show"]).stdout)
    return next((lk for lk in links if lk["ifname"] == "tunl0"), None)


def _start(ns: NodeNS, tmp: Path, n: int, track: Any) -> tuple[int, dict[str, Any]]:
    out = tmp / f"dp{n}.out"
    pid = spawn(ns, [sys.executable, "-c", START], log=out)
    track(pid)
    text = poll(lambda: out.read_text() if out.exists() else "", lambda s: s.strip().startswith("{") or
                not pid_alive(pid), timeout=20, what=f"datapath {n} (pid {pid}) to print its status")
    assert text.strip().startswith("{"), f"datapath {n} pid {pid} failed: {text}"
    return pid, json.loads(text.splitlines()[0])


def test_killed_leaves_tunl0_and_routes_the_next_adopts_a_clean_stop_removes(netns_factory, tmp_path: Path) -> None:
    ns = netns_factory("tunpersist")
    run(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "lo"])
    pid, st = _start(ns, tmp_path, 1, netns_factory.track_pid)
    assert st["adopted"] is False, st
    run(ns, ["ip", "route", "add", "10.100.2.0/26", "via", "10.98.0.2", "dev", "tunl0", "onlink", "proto", "bird"])

    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda up: not up, timeout=10, what=f"datapath pid {pid} to die")
    link = _tunl0(ns)
    assert link is not None and [a["local"] for a in link["addr_info"]] == ["10.100.1.0"], \
        f"tunl0 after SIGKILL of its process: expected it kept with 10.100.1.0, got {link}"
    routes = run(ns, ["ip", "route", "show", "10.100.2.0/26"]).stdout
    assert "dev tunl0" in routes, f"route via tunl0 after SIGKILL: expected kept, got {routes!r}"

    pid2, st2 = _start(ns, tmp_path, 2, netns_factory.track_pid)
    assert st2["adopted"] is True and st2["routes"] == {"10.100.2.0/26": "10.98.0.2"}, st2

    os.kill(pid2, signal.SIGTERM)
    poll(lambda: pid_alive(pid2), lambda up: not up, timeout=10, what=f"datapath pid {pid2} to stop")
    assert _tunl0(ns) is None, "a clean stop must remove the persistent tunl0"


def test_a_persistent_tunl0_goes_with_its_namespace_not_to_the_host(netns_factory, tmp_path: Path) -> None:
    ns = netns_factory("tungone")
    run(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "lo"])
    assert "tunl0" not in {name for _, name in socket.if_nameindex()}, "the host has a tunl0 before the test"
    pid, _ = _start(ns, tmp_path, 1, netns_factory.track_pid)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda up: not up, timeout=10, what=f"datapath pid {pid} to die")
    assert _tunl0(ns) is not None
    netns_factory.cleanup()  # the namespace goes: a persistent TUN must go with it
    host = sorted(name for _, name in socket.if_nameindex())
    assert "tunl0" not in host, f"the namespace's persistent tunl0 moved to the host: {host}"
