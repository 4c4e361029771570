"""A BGP peer labnet does not run (the user's own router, maybe not there yet): the topology is
accepted with a warning, `up` does not wait for the session, and status shows it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from _labtools import TOPOLOGIES, labnet, snapshot

LAB = "t-outpeer"


def test_up_does_not_wait_for_a_peer_it_does_not_run(tmp_path: Path) -> None:
    topo = yaml.safe_load((TOPOLOGIES / "minimal.yaml").read_text())
    topo["cluster"]["bgp"] = {"peers": [{"address": "10.20.30.250", "asn": 65000}]}  # nobody there
    path = tmp_path / "outpeer.yaml"
    path.write_text(yaml.safe_dump(topo))
    before = snapshot(LAB)
    res = labnet("up", str(path), "--name", LAB, "-q")
    try:
        assert "warning: nothing in the lab answers at BGP peer 10.20.30.250" in res.stderr, res.stderr
        peers = json.loads(labnet("bgp", "status", "node-1", "-l", LAB, "--json").stdout)
        rows = {p["peer_address"]: p for p in peers}
        assert rows["10.20.30.250"]["bgp_state"] != "Established", rows
        assert rows["10.20.30.12"]["bgp_state"] == "Established", rows  # the mesh is up all the same
        res = labnet("check", str(path), "pod-to-pod", "-l", LAB, "--json", check=False)
        assert res.returncode == 0, res.stdout
    finally:
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
