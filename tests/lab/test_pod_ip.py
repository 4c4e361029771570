"""A pod can ask for its address: a pod's `ip:` in the topology and `labnet pod add --ip` (both
CNI_ARGS IP=, as podman's --ip). A free block is claimed for the pod's node; an address in
another node's block is borrowed and routed as a /32; a taken one is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

LAB = "t-podip"


def _pods() -> dict[str, dict[str, object]]:
    return dict(json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["pods"])


def _ping(src: str, dst: str) -> str:
    return lab_exec(LAB, src, "ping", "-c1", "-W5", dst, check=False).stdout


def test_pods_get_the_addresses_they_ask_for(tmp_path: Path) -> None:
    text = (TOPOLOGIES / "minimal.yaml").read_text().replace("name: minimal", f"name: {LAB}")
    text = text.replace("pod-2: {node: node-2}", "pod-2: {node: node-2, ip: 10.100.250.9}")
    topo = tmp_path / "lab.yaml"
    topo.write_text(text)
    before = snapshot(LAB)
    labnet("up", str(topo), "-q")
    try:
        pods = _pods()
        assert pods["pod-2"]["ip"] == "10.100.250.9", pods["pod-2"]
        assert "1 received" in _ping("node-1/pod-1", "10.100.250.9"), "pod-1 -> pod-2 at its requested address"
        # borrowed: an address in node-2's block, asked for on node-1, is routed as a /32
        labnet("pod", "add", "-l", LAB, "node-1", "pod-3", "--ip", "10.100.250.20")
        assert _pods()["pod-3"]["ip"] == "10.100.250.20"
        assert "1 received" in _ping("node-2/pod-2", "10.100.250.20"), "pod-2 -> pod-3 (borrowed from node-2's block)"
        # taken: refused, naming who holds it, and nothing is left of the attempt
        taken = labnet("pod", "add", "-l", LAB, "node-1", "pod-4", "--ip", "10.100.250.9", check=False)
        assert taken.returncode == 1 and "10.100.250.9 is taken" in taken.stderr, taken.stderr
        assert "pod-4" not in _pods()
        out = labnet("pod", "add", "-l", LAB, "node-1", "pod-5", "--ip", "10.20.30.50", check=False)
        assert out.returncode == 1 and "outside IP pool 10.100.0.0/16" in out.stderr, out.stderr
        bad = labnet("pod", "add", "-l", LAB, "node-1", "pod-6", "--ip", "10.100.1.300", check=False)
        assert bad.returncode == 2 and "not an IPv4 address" in bad.stderr, bad.stderr
        # released with the pod: asked for again, it is given
        labnet("pod", "del", "-l", LAB, "node-1", "pod-3")
        labnet("pod", "add", "-l", LAB, "node-2", "pod-7", "--ip", "10.100.250.20")
        assert _pods()["pod-7"]["ip"] == "10.100.250.20"
    finally:
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
