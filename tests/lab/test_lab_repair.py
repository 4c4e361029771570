"""`labnet up FILE` on a lab that is up starts again the daemons that died (the lab's
supervisor too), and says so; status says which recorded process is which."""

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
        assert "the lab's supervisor: pid" in table, f"status should name the lab's supervisor:\n{table}"
        assert "node-process(" in table, f"status should show each node's process:\n{table}"
        procs = _procs()
        sup = next(p for p in procs if p["what"] == "supervisor")
        node = next(p for p in procs if p["node"] == "node-2" and p["what"] == "node-process")
        assert str(sup["role"]).startswith("the lab's supervisor"), sup
        assert "agent, CNI server" in str(node["role"]), node
        # the supervisor first (else it starts the node process again), then node-2's process
        for p in (sup, node):
            os.kill(int(str(p["pid"])), signal.SIGKILL)
        poll(lambda: [p["pid"] for p in (sup, node) if pid_alive(int(str(p["pid"])))], lambda left: not left,
             timeout=20, what="the killed supervisor and node process to be gone")
        assert "the lab's supervisor: pid" in labnet("status", "-l", LAB).stdout
        out = labnet("up", MINIMAL, "--name", LAB).stdout
        assert "already up; started again what had died" in out, out
        assert f"the lab's supervisor: pid {sup['pid']} was dead" in out, out
        assert f"agent on node-2: pid {node['pid']} was dead" in out, out
        after = {(p["node"], p["what"]): p for p in _procs()}
        for old in (sup, node):
            new = after[(old["node"], old["what"])]
            assert new["alive"] and new["pid"] != old["pid"], f"{old['what']} on {old['node']}: {old} -> {new}"
        others = [p for p in procs if p["what"] == "node-process" and p["node"] != "node-2"]
        for old in others:  # adopted by the new supervisor, not restarted
            assert after[(old["node"], old["what"])]["pid"] == old["pid"], (old, after)
        res = labnet("check", MINIMAL, "-l", LAB, "--json", check=False)
        bad = [r["message"] for r in json.loads(res.stdout)["results"] if not r["ok"]]
        assert res.returncode == 0 and not bad, "\n\n".join(bad)
        again = labnet("up", MINIMAL, "--name", LAB).stdout
        assert "already up; nothing changed" in again, again
    finally:
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
