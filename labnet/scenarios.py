"""Scenario steps → checks. The CLI (`labnet check`) and the pytest plugin both run steps here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labnet.checks import (
    DEFAULT_TIMEOUT,
    CheckResult,
    assert_bgp_established,
    assert_blackhole_route,
    assert_connectivity,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_route,
    assert_sysctl,
    assert_tunnel_route,
)
from labnet.errors import BadInput
from labnet.labview import LabView


class Undo:
    """What a scenario changed (faults) and must put back when it ends, newest first."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.actions.append((what, fn))

    def run(self) -> list[str]:
        """Undo everything; return what could not be undone (never raises)."""
        problems = []
        while self.actions:
            what, fn = self.actions.pop()
            try:
                fn()
            except Exception as exc:
                problems.append(f"undo {what}: {exc}")
        return problems


StepFn = Callable[[LabView, dict[str, Any], float], list[CheckResult]]
# Steps that change the lab (faults) take the scenario's Undo as a fourth argument.
FaultFn = Callable[[LabView, dict[str, Any], float, Undo], list[CheckResult]]
FAULTS: dict[str, FaultFn] = {}


def _ping(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    src = v.endpoint(a["from"])
    if src.ns is None:
        raise BadInput(f"ping from {a['from']!r}: an address cannot send pings")
    dst = v.endpoint(a["to"])
    return [assert_ping(src.ns, dst.ip, count=a.get("count", 1), expect=a.get("expect", "success") == "success",
                        timeout=t, dst_name=a["to"] if a["to"] != dst.ip else None)]


def _connectivity(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    pods = a.get("pods") or list(v.journal.info.get("pods", {}))
    want = a.get("expect", "success") == "success"
    matrix = {s: {d: want for d in pods if d != s} for s in pods}
    return [assert_connectivity(matrix, v.endpoint, timeout=t)]


def _proxy_arp(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    rec = v.pod(a["pod"])
    return [assert_proxy_arp(v.ns(rec["node"]), v.pod_ns(a["pod"]), rec["host_veth"], timeout=t)]


def _blackhole(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    blocks = [a["block"]] if a.get("block") else v.blocks(a["node"])
    if not blocks:
        raise BadInput(f"node {a['node']} owns no block, so there is no blackhole route to check")
    return [assert_blackhole_route(v.ns(a["node"]), str(b), timeout=t) for b in blocks]


def _tunnel_route(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    via = v.address(a["to"])
    blocks = v.blocks(a["to"])
    if not blocks:
        raise BadInput(f"node {a['to']} owns no block, so {a['node']} has nothing to route to it")
    return [assert_tunnel_route(v.ns(a["node"]), str(b), via, timeout=t) for b in blocks]


def _no_route(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    dst = a["dst"]
    if "/" not in dst:
        dst = v.address(dst)
    return [assert_no_route(v.ns(a["node"]), dst, timeout=t)]


def _route(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    if a.get("present", True):
        return [assert_route(v.ns(a["node"]), a["match"], timeout=t)]
    # The whole match counts (dev, protocol, type, table...), not just its dst.
    return [assert_no_route(v.ns(a["node"]), match=a["match"], timeout=t)]


def _bgp(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    node = a["node"]
    peer = a.get("peer")
    if peer and peer in v.journal.info.get("machines", {}):
        peer = v.address(peer)

    def peers() -> list[dict[str, Any]]:
        return [{"peer": p["peer_address"], "state": p.get("bgp_state"), "info": p.get("info"),
                 "name": p.get("name")} for p in v.agent_status(node).get("peers", [])]

    return [assert_bgp_established(peers, peer, node=node, timeout=t)]


def _sysctl(v: LabView, a: dict[str, Any], t: float) -> list[CheckResult]:
    return [assert_sysctl(v.ns(a["node"]), a["key"], a["value"], timeout=t)]


STEPS: dict[str, StepFn] = {
    "ping": _ping, "connectivity": _connectivity, "proxy_arp": _proxy_arp, "blackhole": _blackhole,
    "tunnel_route": _tunnel_route, "no_route": _no_route, "route": _route, "bgp_established": _bgp,
    "sysctl": _sysctl,
}


def run_step(view: LabView, kind: str, args: dict[str, Any], timeout: float = DEFAULT_TIMEOUT,
             undo: Undo | None = None) -> list[CheckResult]:
    """Run one step; raises CheckFailed on the first check that does not hold."""
    if kind in FAULTS:
        if undo is None:
            raise BadInput(f"step {kind!r} changes the lab: run it inside a scenario (it is undone at the end)")
        return FAULTS[kind](view, args, timeout, undo)
    fn = STEPS.get(kind)
    if fn is None:
        raise BadInput(f"step kind {kind!r} has no runner (known: {', '.join(sorted([*STEPS, *FAULTS]))})")
    return fn(view, args, timeout)


def run_steps(view: LabView, steps: list[Any], timeout: float = DEFAULT_TIMEOUT,
              collect: bool = False) -> list[CheckResult]:
    """Run steps in order, undoing their faults at the end whatever happens.

    collect=False raises CheckFailed at the first failure (pytest); collect=True records
    failures and goes on (the CLI's table). A fault that cannot be undone is a failure too.
    """
    from labnet.checks import CheckFailed, CheckResult

    undo = Undo()
    results: list[CheckResult] = []
    try:
        for step in steps:
            try:
                results += run_step(view, step.kind, step.args, timeout, undo)
            except CheckFailed as exc:
                if not collect:
                    raise
                results.append(exc.result)
    finally:
        problems = undo.run()
    if problems:
        result = CheckResult(False, "undo faults", view.name, "; ".join(problems), 0.0,
                             message="the scenario's faults could not all be undone:\n" + "\n".join(problems))
        if not collect:
            raise CheckFailed(result)
        results.append(result)
    return results


def run_scenario(view: LabView, name: str, timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """Every step of scenario `name`, collecting results (failed checks included, not raised)."""
    steps = view.topo.scenarios.get(name)
    if steps is None:
        raise BadInput(f"lab {view.name}: no scenario {name!r} (have: {', '.join(view.topo.scenarios)})")
    return run_steps(view, steps, timeout, collect=True)
