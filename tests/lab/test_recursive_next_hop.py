"""A learned next hop that is not on a connected subnet (the seed's two LANs with `ipip: never`:
ubuntu-1 on lan-a learns ubuntu-4's block with next hop 192.168.50.74 on lan-b) is resolved
through the node's own routes, as BIRD's `gateway recursive` does. Before, the route was never
installed, the agent logged `Network is unreachable` on every pass, and `up` timed out. Without
any route towards the next hop, the agent says so in its problems and installs nothing."""

from __future__ import annotations

from pathlib import Path

from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet.lab.view import LabView
from labnet.wait import poll

LAB = "t-recur"


def _route(dst: str) -> str:
    return lab_exec(LAB, "ubuntu-1", "ip", "route", "show", dst).stdout.strip()


def test_next_hops_on_another_lan_resolve_through_the_nodes_routes(tmp_path: Path) -> None:
    text = (TOPOLOGIES / "seed.yaml").read_text()
    assert "ipip: always" in text
    topo = tmp_path / "seed-no-ipip.yaml"
    topo.write_text(text.replace("name: seed", f"name: {LAB}", 1).replace("ipip: always", "ipip: never"))
    before = snapshot(LAB)
    labnet("up", str(topo), "-q")  # converged: every block routed on every node
    try:
        view = LabView(LAB)
        far, near = str(view.blocks("ubuntu-4")[0]), str(view.blocks("ubuntu-2")[0])
        assert _route(far) == f"{far} via 10.20.30.1 dev ens32 proto bird", \
            f"ubuntu-1: ubuntu-4's block {far} (next hop 192.168.50.74, on lan-b) should go via the gateway"
        assert _route(near) == f"{near} via 10.20.30.72 dev ens32 proto bird", f"ubuntu-1: {_route(near)!r}"
        assert not view.agent_status("ubuntu-1").get("problems"), view.agent_status("ubuntu-1")["problems"]
        # no route of ubuntu-1's leads to lan-b any more: the agent says why, and the route goes
        lab_exec(LAB, "ubuntu-1", "ip", "route", "del", "default")
        problems = poll(lambda: view.agent_status("ubuntu-1").get("problems") or [],
                        lambda ps: any("192.168.50.74 is unreachable" in p for p in ps), timeout=30,
                        what="ubuntu-1's agent to report ubuntu-4's next hop unreachable")
        assert any(far in p for p in problems), problems
        shown = labnet("routes", "-l", LAB, "ubuntu-1").stdout
        assert f"not installed: {far} via 192.168.50.74 proto bird: next hop 192.168.50.74 is unreachable" in shown, \
            shown
        poll(lambda: _route(far), lambda r: r == "", timeout=30, what=f"ubuntu-1's route to {far} to go")
        lab_exec(LAB, "ubuntu-1", "ip", "route", "add", "default", "via", "10.20.30.1")
        poll(lambda: _route(far), lambda r: r == f"{far} via 10.20.30.1 dev ens32 proto bird", timeout=30,
             what=f"ubuntu-1's route to {far} back through the restored default route")
    finally:
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
