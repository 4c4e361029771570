"""Scenario steps → assertions, without namespaces: the step runners pass every argument through.

The node's route table is the seed's ubuntu-3 table (fixtures/checks/node_route.json, made by
make_seed_routes.sh in a real namespace); `get_routes` is replaced so no namespace is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import labnet.checks.assertions as A
from labnet.checks import CheckFailed
from labnet.checks.routes import Route, parse_routes
from labnet.errors import BadInput
from labnet.nsexec import NodeNS
from labnet.scenario import run as scenarios

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "checks"
ROUTES = parse_routes((FIX / "node_route.json").read_text())


class FakeView:
    """The little of LabView the route steps use."""

    name = "fake"

    def ns(self, node: str) -> NodeNS:
        return NodeNS(name=node, netns=f"/nonexistent/{node}")

    def address(self, name: str) -> str:
        return {"ubuntu-4": "192.168.50.74"}[name]


@pytest.fixture(autouse=True)
def seed_table(monkeypatch: pytest.MonkeyPatch) -> list[Route]:
    tables: list[str] = []

    def fake(ns: NodeNS, table: str | int = "main", family: int = 4) -> list[Route]:
        tables.append(str(table))
        return ROUTES if family == 4 else []

    monkeypatch.setattr(A, "get_routes", fake)
    return ROUTES


def step(kind: str, args: dict[str, Any], timeout: float = 0.2) -> list[Any]:
    return scenarios.run_step(FakeView(), kind, args, timeout)  # type: ignore[arg-type]


def test_the_table_is_the_seed_one() -> None:
    # guards the tests below: they rely on tunl0 routes and a blackhole being there
    assert any(r.dev == "tunl0" for r in ROUTES), [str(r) for r in ROUTES]
    assert any(r.type == "blackhole" for r in ROUTES), [str(r) for r in ROUTES]


def test_route_absent_by_dev_only() -> None:
    # `{route: {node, match: {dev: tunl0}, present: false}}` used to raise BadInput (only dst was passed)
    with pytest.raises(CheckFailed) as info:
        step("route", {"node": "ubuntu-3", "match": {"dev": "tunl0"}, "present": False})
    msg = str(info.value)
    assert "check failed on ubuntu-3: no route dev tunl0" in msg, msg
    assert "actual:   present: `10.100." in msg and "dev tunl0" in msg, msg
    (res,) = step("route", {"node": "ubuntu-3", "match": {"dev": "tunl9"}, "present": False})
    assert res.ok and res.name == "no route dev tunl9", res


def test_route_absent_uses_every_field_of_the_match() -> None:
    tunnel = next(r for r in ROUTES if r.dev == "tunl0")
    dst, via = str(tunnel.dst), str(tunnel.gateway)
    # same dst, another gateway: no such route, so the step passes (dst alone would have failed it)
    (res,) = step("route", {"node": "ubuntu-3", "match": {"dst": dst, "gateway": "192.0.2.1"}, "present": False})
    assert res.ok, res
    assert res.name == f"no route {dst} via 192.0.2.1", res.name
    with pytest.raises(CheckFailed, match=f"no route {dst} via {via} dev tunl0 proto bird"):
        step("route", {"node": "ubuntu-3", "present": False,
                       "match": {"dst": dst, "via": via, "dev": "tunl0", "proto": 12}})


def test_route_absent_passes_the_timeout() -> None:
    with pytest.raises(CheckFailed) as info:
        step("route", {"node": "ubuntu-3", "match": {"type": "blackhole"}, "present": False}, timeout=0.6)
    res = info.value.result
    assert res.elapsed >= 0.6 and res.attempts > 1, f"waited {res.elapsed:.2f}s over {res.attempts} attempts"
    assert "(waited 0." in str(info.value) or "(waited 1." in str(info.value), str(info.value)


def test_route_present_and_no_route_steps() -> None:
    tunnel = next(r for r in ROUTES if r.dev == "tunl0")
    (res,) = step("route", {"node": "ubuntu-3", "match": {"dst": str(tunnel.dst), "dev": "tunl0", "onlink": True}})
    assert res.ok, res
    (res,) = step("no_route", {"node": "ubuntu-3", "dst": "198.51.100.0/24"})
    assert res.ok and res.name == "no route 198.51.100.0/24", res
    with pytest.raises(CheckFailed, match=f"no route {tunnel.dst}"):
        step("no_route", {"node": "ubuntu-3", "dst": str(tunnel.dst)})


def test_a_failure_report_lists_the_steps_that_passed_before_it() -> None:
    from labnet.topology.model import Step

    steps = [Step.model_validate({"route": {"node": "ubuntu-3", "match": {"dev": "tunl0"}}}),
             Step.model_validate({"no_route": {"node": "ubuntu-3", "dst": "198.51.100.0/24"}}),
             Step.model_validate({"route": {"node": "ubuntu-3", "match": {"dev": "tunl9"}}})]
    with pytest.raises(CheckFailed) as info:
        scenarios.run_steps(FakeView(), steps, timeout=0.2, gates=False)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "route dev tunl9" in msg and "steps that passed before it (2):" in msg, msg
    assert "[ubuntu-3] route dev tunl0: ok" in msg and "[ubuntu-3] no route 198.51.100.0/24: ok" in msg, msg
    # collected (the CLI's table): every result, the failed one too, nothing raised
    got = scenarios.run_steps(FakeView(), steps, timeout=0.2, collect=True, gates=False)  # type: ignore[arg-type]
    assert [r.ok for r in got] == [True, True, False], got


def test_step_arguments_reach_the_runner_typed_with_their_defaults() -> None:
    from labnet.topology import steps as s

    typed = scenarios.typed_args("ping", {"from": "a", "to": "b"})
    assert isinstance(typed, s.PingArgs) and (typed.from_, typed.count, typed.expect) == ("a", 3, "success")
    assert scenarios.typed_args("ping", typed) is typed
    with pytest.raises(BadInput, match="step ping"):
        scenarios.typed_args("ping", {"from": "a"})


def test_what_a_scenario_tolerates_is_what_its_faults_break_and_its_tolerate_steps_say() -> None:
    from labnet.topology.model import Step

    def of(*raw: dict[str, Any]) -> set[str]:
        return scenarios.tolerated([Step.model_validate(r) for r in raw])

    assert of({"ping": {"from": "a", "to": "b"}}) == set()
    assert of({"kill_agent": {"node": "n"}}) == {"restart", "errors", "route-flaps"}
    assert of({"link_down": {"machine": "n", "interface": "eth0"}}) == {"errors", "route-flaps"}
    assert of({"kill_etcd": {"node": "n"}}, {"tolerate": {"gates": ["restart"]}}) == {"errors", "restart"}
    failed = scenarios.gate_result("lab1", ["restart: node n1: its process was pid 5, is now 9", "errors: node n2: x\n  y"])
    assert not failed.ok and failed.detail == "restart: node n1: its process was pid 5, is now 9; errors: node n2: x"
    assert "not declared by a fault or a `tolerate` step" in failed.message
