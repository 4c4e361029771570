"""Routers and hosts run the user's daemons (topologies/rr-gobgp.yaml: GoBGP as the route
reflector): status shows them, `up` on the running lab starts a dead one again, `down` stops them."""

from __future__ import annotations

import json
import os
import signal

from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet.nsexec import pid_alive
from labnet.wait import poll

LAB = "t-daemons"
RR = str(TOPOLOGIES / "rr-gobgp.yaml")


def _gobgpd() -> dict[str, object]:
    rows = json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["processes"]
    return next(p for p in rows if p["node"] == "rr" and p["what"] == "gobgpd")


def _established() -> int:
    neighbors = json.loads(lab_exec(LAB, "rr", "gobgp", "neighbor", "-j", check=False).stdout or "[]")
    return sum(1 for n in neighbors if n["state"].get("session_state") == 6)


def test_a_daemon_is_shown_repaired_and_stopped() -> None:
    before = snapshot(LAB)
    labnet("up", RR, "--name", LAB, "-q")
    try:
        first = _gobgpd()
        assert first["alive"], first
        assert f"gobgpd({first['pid']})" in labnet("status", "-l", LAB).stdout
        log = (labnet("exec", "-l", LAB, "rr", "--", "cat", "/var/log/labnet/gobgpd.log").stdout)
        assert "Peer Up" in log, f"gobgpd's log in the machine's /var/log/labnet: {log[-500:]}"
        os.kill(int(str(first["pid"])), signal.SIGKILL)
        poll(lambda: pid_alive(int(str(first["pid"]))), lambda up: not up, timeout=10, what="gobgpd to die")
        out = labnet("up", RR, "--name", LAB).stdout
        assert f"gobgpd on rr: pid {first['pid']} was dead" in out, out
        again = _gobgpd()
        assert again["alive"] and again["pid"] != first["pid"], again
        poll(_established, lambda n: n == 3, timeout=60, what="the three nodes' sessions with the new gobgpd")
    finally:
        labnet("down", "--name", LAB, check=False)
    assert not pid_alive(int(str(again["pid"]))), "gobgpd outlived down"
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
