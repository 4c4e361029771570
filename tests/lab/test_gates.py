"""Gates: a scenario fails, with the evidence, when during it a node's process restarted, a
daemon logged at ERROR, or a route labnet owns flapped, unless it declared that."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _labtools import lab_exec, labnet

from labnet.checks import CheckFailed
from labnet.scenario.run import run_steps
from labnet.topology.model import Step

pytestmark = pytest.mark.topology("../../topologies/seed.yaml", name="t-gates")


def _steps(*raw: dict[str, Any]) -> list[Step]:
    return [Step.model_validate(r) for r in raw]


# a step that takes about 2 s, during which something happens to the lab
BUSY = {"connect": {"from": "ubuntu-1", "to": "ubuntu-2", "expect": "loss <= 100%", "count": 100, "interval": 0.02}}


def _during(lab: Any, steps: list[Step], act: Callable[[], None]) -> list[Any]:
    timer = threading.Timer(0.3, act)
    timer.start()
    try:
        return run_steps(lab.view, steps, timeout=30)
    finally:
        timer.join()


def _node_pid(lab: Any, node: str) -> int:
    rows = json.loads(labnet("status", "-l", lab.name, "--json").stdout)[0]["processes"]
    return int(next(p["pid"] for p in rows if p["node"] == node and p["what"] == "node-process"))


def test_an_agent_restarted_during_a_scenario_that_did_not_declare_it_fails_it(lab: Any) -> None:
    pid = _node_pid(lab, "ubuntu-3")
    with pytest.raises(CheckFailed) as err:
        _during(lab, _steps(BUSY), lambda: os.kill(pid, signal.SIGKILL))
    msg = str(err.value)
    assert f"gates failed on {lab.name}" in msg and f"restart: node ubuntu-3: its process (agent, CNI server) was pid {pid}" \
        in msg, msg
    assert "steps that passed before it (1)" in msg, msg  # the step itself held
    # declared: the same passes
    pid = _node_pid(lab, "ubuntu-3")
    got = _during(lab, _steps(BUSY, {"tolerate": {"gates": ["restart", "route-flaps", "errors"]}}),
                  lambda: os.kill(pid, signal.SIGKILL))
    assert all(r.ok for r in got), got


def test_a_route_labnet_owns_deleted_during_a_scenario_is_a_flap(lab: Any) -> None:
    block = str(lab.view.blocks("ubuntu-4")[0])
    with pytest.raises(CheckFailed) as err:
        _during(lab, _steps(BUSY), lambda: lab_exec(lab.name, "ubuntu-3", "ip", "route", "del", block))
    msg = str(err.value)
    assert f"route-flaps: node ubuntu-3: 1 route(s) labnet owns were deleted: {block} via 192.168.50.74" in msg, msg
    lab.connect("net-test", "net-test-2", timeout=30)  # the agent put it back


def test_an_error_logged_during_a_scenario_is_shown(lab: Any) -> None:
    log = lab.view.runtime.host_path("ubuntu-5", "/var/log/labnet/agent.log")

    def error() -> None:
        with open(log, "a") as f:
            f.write("2026-12-07 00:00:00,000 labnet.agent[7] ERROR something the test made up\n")

    with pytest.raises(CheckFailed) as err:
        _during(lab, _steps(BUSY), error)
    msg = str(err.value)
    assert "errors: node ubuntu-5: 1 line(s) at ERROR or tracebacks in its logs" in msg, msg
    assert "ERROR something the test made up" in msg, msg


def test_a_fault_declares_what_it_breaks(lab: Any) -> None:
    got = run_steps(lab.view, _steps({"kill_agent": {"node": "ubuntu-2"}},
                                     {"ping": {"from": "net-test", "to": "net-test-2"}}), timeout=60)
    assert all(r.ok for r in got), got
