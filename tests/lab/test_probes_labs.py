"""Probes on labs of their own: the path MTU over VXLAN, and the pod's own address at the outside
host when the pool does not NAT outgoing traffic."""

from __future__ import annotations

import re

import yaml
from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet.lab.view import LabView
from labnet.scenario.run import run_step


def test_the_path_mtu_over_vxlan_is_1450() -> None:
    lab = "t-probes-vx"
    before = snapshot(lab)
    labnet("up", str(TOPOLOGIES / "vxlan.yaml"), "--name", lab, "-q")
    try:
        (r,) = run_step(LabView(lab), "connect", {"from": "pod-1", "to": "pod-3", "mtu": 1450}, 30)
        assert r.ok and "largest passing 1450, refused with mtu 1450" in r.detail, r.detail
    finally:
        labnet("down", "--name", lab)
    assert not snapshot(lab).leftovers(before)


def test_without_nat_outgoing_the_outside_host_sees_the_pod(tmp_path) -> None:
    lab = "t-probes-nonat"
    doc = yaml.safe_load((TOPOLOGIES / "seed.yaml").read_text())
    doc["cluster"]["pool"]["nat_outgoing"] = False
    doc["scenarios"] = {}
    path = tmp_path / "seed-no-nat.yaml"
    path.write_text(yaml.safe_dump(doc))
    before = snapshot(lab)
    labnet("up", str(path), "--name", lab, "-q")
    try:
        view = LabView(lab)
        pod = view.address("net-test")
        # the router knows no pod routes (it does not speak BGP here): the way back, by hand
        lab_exec(lab, "gw", "ip", "route", "add", f"{pod}/32", "via", view.address("ubuntu-3"))
        for proto in ("tcp", "udp"):
            (r,) = run_step(view, "connect", {"from": "net-test", "to": "ext", "proto": proto,
                                              "expect": "snat net-test"}, 30)
            assert re.search(rf"snat {re.escape(pod)}\b", r.detail), r.detail
    finally:
        labnet("down", "--name", lab)
    assert not snapshot(lab).leftovers(before)
