"""The runner of every step kind, keyed as labnet.topology.steps.STEP_KINDS (a unit test keeps
the two tables equal). Checks and waits take (view, args, timeout); faults also take the
scenario's Undo, onto which they push what puts the lab back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labnet.checks import CheckResult
from labnet.lab.view import LabView
from labnet.scenario import faults, steps, waits
from labnet.scenario.undo import Undo

StepFn = Callable[[LabView, Any, float], list[CheckResult]]
FaultFn = Callable[[LabView, Any, float, Undo], list[CheckResult]]

CHECKS: dict[str, StepFn] = {
    "ping": steps.ping, "connectivity": steps.connectivity, "connect": steps.connect,
    "reachability": steps.reachability, "proxy_arp": steps.proxy_arp,
    "blackhole": steps.blackhole, "tunnel_route": steps.tunnel_route, "no_route": steps.no_route,
    "route": steps.route, "bgp_established": steps.bgp_established, "sysctl": steps.sysctl,
    "converge": waits.converge, "bgp_down": waits.bgp_down, "etcd_health": waits.etcd_health,
    "agent_problem": waits.agent_problem, "tolerate": steps.tolerate, "policy_cases": steps.policy_cases,
}

FAULTS: dict[str, FaultFn] = {
    "link_down": faults.link_down, "link_up": faults.link_up, "packet_loss": faults.packet_loss,
    "kill_agent": faults.kill_agent, "stop_agent": faults.stop_agent, "start_agent": faults.start_agent,
    "stop_node": faults.stop_node, "start_node": faults.start_node, "kill_etcd": faults.kill_etcd,
    "restart_etcd": faults.restart_etcd, "remove_default_route": faults.remove_default_route,
    "rename_agent": faults.rename_agent,
}
