"""`labnet up FILE` on a lab that is up starts again the daemons that died, and says so; status
says which recorded process is which (the agent's pid there is its supervisor's)."""

from __future__ import annotations

import json
import os
import signal

from _labtools import TOPOLOGIES, labnet, snapshot

from labnet.nsexec import pid_alive
from labnet.wait import poll

LAB = "t-repair"
MINIMAL = str(TOPOLOGIES / "minimal.yaml")


def _procs() -> list[dict[str, object]]:
    return list(json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["processes"])


def test_up_again_starts_what_died_and_the_lab_converges() -> None:
    before = snapshot(LAB)
    labnet("up", MINIMAL, "--name", LAB, "-q")
    try:
        table = labnet("status", "-l", LAB).stdout
        assert "agent-supervisor(" in table, f"status should name the agent's supervisor:\n{table}"
        assert "node-process(" in table, f"status should show each node's process under its supervisor:\n{table}"
        procs = _procs()
        sup = next(p for p in procs if p["node"] == "node-2" and p["what"] == "agent")
        node = next(p for p in procs if p["node"] == "node-2" and p["what"] == "node-process")
        assert str(sup["role"]).startswith("supervisor of the node's process"), sup
        assert "agent, CNI server" in str(node["role"]), node
        os.kill(int(str(sup["pid"])), signal.SIGKILL)  # its node process follows it (parent-death signal)
        poll(lambda: [p["pid"] for p in (sup, node) if pid_alive(int(str(p["pid"])))], lambda left: not left,
             timeout=20, what="the killed supervisor and its node process to be gone")
        out = labnet("up", MINIMAL, "--name", LAB).stdout
        assert "already up; started again what had died" in out, out
        assert f"agent on node-2: pid {sup['pid']} was dead" in out, out
        after = {(p["node"], p["what"]): p for p in _procs()}
        for old in (sup, node):
            new = after[(old["node"], old["what"])]
            assert new["alive"] and new["pid"] != old["pid"], f"{old['what']} on node-2: {old} -> {new}"
        res = labnet("check", MINIMAL, "-l", LAB, "--json", check=False)
        bad = [r["message"] for r in json.loads(res.stdout)["results"] if not r["ok"]]
        assert res.returncode == 0 and not bad, "\n\n".join(bad)
        again = labnet("up", MINIMAL, "--name", LAB).stdout
        assert "already up; nothing changed" in again, again
    finally:
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
