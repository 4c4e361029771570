"""Fault step kinds: registration, argument validation, nft scripts, error wrapping (no root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labnet.checks import CheckFailed
from labnet.errors import BadInput, LabnetError
from labnet.scenario import faults
from labnet.scenario.run import _as_check, run_step
from labnet.scenario.table import CHECKS as STEPS
from labnet.scenario.table import FAULTS
from labnet.scenario.undo import Undo
from labnet.topology import TopologyError, load, loads
from labnet.topology.steps import STEP_KINDS, NodeArgs

REPO = Path(__file__).resolve().parents[2]
FAULT_KINDS = ["link_down", "link_up", "packet_loss", "kill_agent", "stop_agent", "start_agent", "stop_node",
               "start_node", "kill_etcd", "restart_etcd", "remove_default_route", "rename_agent"]
POLL_KINDS = ["converge", "bgp_down", "etcd_health", "agent_problem"]

BASE = """\
name: f-unit
networks:
  lan: {cidr: 10.20.30.0/24}
routers:
  gw: {interfaces: [{network: lan, address: 10.20.30.1}]}
cluster:
  etcd: {node: node-1}
  pool: {cidr: 10.100.0.0/16}
  nodes:
    node-1: {interfaces: [{name: ens32, network: lan, address: 10.20.30.11}], gateway: 10.20.30.1}
    node-2: {interfaces: [{network: lan, address: 10.20.30.12}], gateway: 10.20.30.1}
  pods:
    pod-1: {node: node-1}
scenarios:
  s:
"""


def _topo(*steps: str) -> Any:
    return loads(BASE + "".join(f"    - {s}\n" for s in steps), "t.yaml")


def _errors(*steps: str) -> str:
    with pytest.raises(TopologyError) as info:
        _topo(*steps)
    return str(info.value)


def test_every_kind_is_registered_with_a_runner() -> None:
    for kind in FAULT_KINDS:
        assert kind in STEP_KINDS and kind in FAULTS, kind
        assert kind not in STEPS, f"{kind} changes the lab: it must run with an Undo"
    for kind in POLL_KINDS:
        assert kind in STEP_KINDS and kind in STEPS, kind


def test_the_runner_table_and_the_step_kinds_name_the_same_kinds() -> None:
    assert set(STEPS) | set(FAULTS) == set(STEP_KINDS)
    assert not set(STEPS) & set(FAULTS)


def test_the_faults_topology_is_valid_and_defaults_are_filled() -> None:
    topo = load(str(REPO / "topologies" / "faults.yaml"))
    assert {"link-flap", "lossy-link", "agent-crash", "etcd-outage", "no-default-route", "wrong-node-name",
            "node-outage"} <= set(topo.scenarios)
    (down, *_rest) = topo.scenarios["link-flap"]
    assert down.kind == "link_down" and down.args == {"machine": "node-3", "interface": "ens32", "side": "fabric"}
    assert topo.cluster is not None and topo.cluster.bgp.hold_time == 9


def test_good_steps_validate() -> None:
    topo = _topo("{link_down: {machine: node-2, interface: eth0}}",
                 "{packet_loss: {machine: gw, interface: eth0, percent: 30, direction: in}}",
                 "{kill_etcd: {node: node-1}}", "{rename_agent: {node: node-2, name: typo-2}}",
                 "{converge: {from: pod-1, to: 10.20.30.12, within: 5}}")
    assert [s.kind for s in topo.scenarios["s"]][-1] == "converge"
    assert topo.scenarios["s"][-1].args == {"from": "pod-1", "to": "10.20.30.12", "within": 5.0}


@pytest.mark.parametrize(("step", "needle"), [
    ("{link_down: {machine: node-1, interface: eth0}}", "node-1 has no interface 'eth0' (it has: ens32)"),
    ("{link_down: {machine: node-9, interface: eth0}}", "'node-9' is not a known"),
    ("{packet_loss: {machine: node-1, interface: ens32, percent: 101}}", "100"),
    ("{packet_loss: {machine: node-1, interface: ens32}}", "percent"),
    ("{kill_etcd: {node: node-2}}", "node-2 runs no etcd member (members: node-1)"),
    ("{rename_agent: {node: node-2, name: node-2}}", "changes nothing"),
    ("{rename_agent: {node: node-2, name: node-1}}", "another machine"),
    ("{rename_agent: {node: node-2, name: Bad_Name}}", "name"),
    ("{converge: {from: pod-1, to: pod-9}}", "'pod-9' is not a known"),
    ("{converge: {from: pod-1, to: node-2, within: 0}}", "within"),
    ("{wait: {seconds: 3}}", "unknown step kind 'wait'"),
])
def test_bad_steps_are_reported_by_position(step: str, needle: str) -> None:
    text = _errors(step)
    assert needle in text, text
    assert "t.yaml:" in text, text


def test_nft_script_for_each_percent_and_direction() -> None:
    s = faults.nft_loss_script("labnet-loss-ens32", "ens32", 30, "both")
    assert s.startswith("add table inet labnet-loss-ens32\ndelete table inet labnet-loss-ens32\n")
    assert 'iifname "ens32" numgen random mod 100 < 30 counter drop;' in s
    assert 'oifname "ens32" numgen random mod 100 < 30 counter drop;' in s
    full = faults.nft_loss_script("t", "ens32", 100, "in")
    assert 'iifname "ens32" counter drop;' in full and "numgen" not in full and "egress" not in full
    none = faults.nft_loss_script("t", "ens32", 0, "out")
    assert "drop" not in none and "chain egress" in none and "ingress" not in none
    with pytest.raises(BadInput, match="0-100"):
        faults.nft_loss_script("t", "ens32", 101, "in")
    with pytest.raises(BadInput, match="interface name"):
        faults.nft_loss_script("t", 'x" drop; #', 10, "in")


def test_route_argv_rebuilds_ip_route_arguments() -> None:
    r = {"dst": "default", "gateway": "10.20.30.1", "dev": "ens32", "protocol": "static", "metric": 10,
         "flags": ["onlink"]}
    assert faults._route_argv(r, "ens32") == ["default", "via", "10.20.30.1", "dev", "ens32", "proto", "static",
                                              "metric", "10", "onlink"]
    assert faults._route_argv({"dst": "10.0.0.0/8", "dev": "ens32", "scope": "link"}, "ens32") == [
        "10.0.0.0/8", "dev", "ens32", "scope", "link"]


def test_fault_outside_a_scenario_is_refused() -> None:
    with pytest.raises(BadInput, match="inside a scenario"):
        run_step(object(), "kill_agent", {"node": "node-1"})  # type: ignore[arg-type]


def test_a_fault_that_cannot_be_applied_is_a_failed_check_naming_it() -> None:
    def broken(view: Any, a: dict[str, Any], t: float, undo: Undo) -> list[Any]:
        raise LabnetError("node node-3: the agent process (pid 42) is not running")

    def bad(view: Any, a: dict[str, Any], t: float, undo: Undo) -> list[Any]:
        raise BadInput("no such thing")

    class View:
        name = "lab-x"

    with pytest.raises(CheckFailed) as info:
        _as_check("stop_agent", broken)(View(), NodeArgs(node="node-3"), 1.0, Undo())  # type: ignore[arg-type]
    r = info.value.result
    assert (r.ok, r.name, r.target) == (False, "fault: stop_agent node-3", "node-3")
    assert "pid 42" in r.detail and "pid 42" in str(info.value)
    with pytest.raises(BadInput):
        _as_check("stop_agent", bad)(View(), NodeArgs(node="node-3"), 1.0, Undo())  # type: ignore[arg-type]


def test_converge_at_end_is_pushed_once_per_scenario() -> None:
    undo = Undo()
    faults._converge_at_end(object(), undo)  # type: ignore[arg-type]
    faults._converge_at_end(object(), undo)  # type: ignore[arg-type]
    assert [w for w, _ in undo.actions] == ["lab converged again"]
    undo.actions.clear()  # never run it: there is no lab
