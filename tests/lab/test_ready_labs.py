"""Every ready lab in topologies/ comes up and passes its own scenarios; BIRD interop on tor-bird."""

from __future__ import annotations

import json

import pytest
from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

LABS = ["minimal", "cross-subnet", "vxlan", "route-reflectors", "tor-bird", "two-labs-b", "policy"]


@pytest.mark.parametrize("topology", LABS)
def test_ready_lab_passes_its_scenarios(topology: str) -> None:
    name = f"t-{topology}"[:20]
    f = str(TOPOLOGIES / f"{topology}.yaml")
    before = snapshot(name)
    labnet("up", f, "--name", name, "-q")
    try:
        res = labnet("check", f, "-l", name, "--json", check=False)
        results = json.loads(res.stdout)["results"]
        bad = [r for r in results if not r["ok"]]
        assert res.returncode == 0 and not bad, "\n\n".join(r["message"] for r in bad) or res.stderr
        assert results, f"{topology} has no checks"
        if topology == "tor-bird":
            _bird_interop(name)
    finally:
        labnet("down", "--name", name, check=False)
    assert not snapshot(name).leftovers(before)


def _bird_interop(lab: str) -> None:
    """BIRD (Debian's bird2) and labnet's own speaker agree: sessions up, every block in BIRD's table."""
    protocols = lab_exec(lab, "tor", "birdc", "show", "protocols").stdout
    for node in ("node-1", "node-2", "node-3"):
        row = next((ln for ln in protocols.splitlines() if ln.startswith("n_" + node.replace("-", "_"))), "")
        assert "Established" in row, f"BIRD on tor: session with {node}: {row!r}\n{protocols}"
    table = lab_exec(lab, "tor", "birdc", "show", "route").stdout
    for node in ("node-1", "node-2", "node-3"):
        peers = json.loads(labnet("bgp", "status", node, "-l", lab, "--json").stdout)
        assert [p["bgp_state"] for p in peers] == ["Established"], f"labnet on {node}: {peers}"
    blocks = json.loads(labnet("etcd", "-l", lab, "ls", "/labnet/calico/ipam/v2/host/", "--json").stdout)
    cidrs = {kv["key"].rsplit("/", 1)[1].replace("-", "/") for kv in blocks}
    assert cidrs, f"no block affinities in etcd: {blocks}"
    for cidr in cidrs:
        assert cidr in table, f"BIRD's table on tor lacks block {cidr}:\n{table}"
