"""A 30-node lab with two route reflectors and 300 pods comes up, and its first pod reaches its
last (issue 13: what a node costs). Asserts the outcome, never the time."""

from __future__ import annotations

import json
from pathlib import Path

from _labtools import labnet, snapshot

from labnet.topology.generate import generate

LAB = "t-scale30"


def test_thirty_nodes_two_route_reflectors_300_pods_first_pod_reaches_the_last(tmp_path: Path) -> None:
    f = tmp_path / "scale30.yaml"
    f.write_text(generate(30, LAB, pods_per_node=10, route_reflectors=2))
    before = snapshot(LAB)
    labnet("up", str(f), "-q", timeout=900)
    try:
        st = json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]
        assert st["state"] == "up" and len(st["pods"]) == 300, (
            f"lab {LAB}: expected state up with 300 pods, got {st['state']} with {len(st['pods'])}")
        alive = [p for p in st["processes"] if p["what"] == "node-process" and p["alive"]]
        assert len(alive) == 30, f"lab {LAB}: expected one node process per node (30), got {len(alive)}"
        res = labnet("check", str(f), "-l", LAB, "--json", check=False, timeout=300)
        results = json.loads(res.stdout)["results"]
        bad = [r["message"] for r in results if not r["ok"]]
        assert res.returncode == 0 and results and not bad, "\n\n".join(bad) or res.stderr
        # the route reflectors carry every block: node-30 has a route to node-3's block
        routes = labnet("exec", "-l", LAB, "node-30", "--", "ip", "route").stdout
        assert routes.count("proto bird") >= 30, f"node-30: expected a route per node's block, got:\n{routes}"
    finally:
        labnet("down", "--name", LAB, check=False, timeout=300)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
