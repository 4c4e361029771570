"""State-polling steps: they wait for a state (with a deadline) and never change the lab.

  converge      {from, to, within}   ping until it answers; reports how long it took
  bgp_down      {node, peer, within} the session with peer leaves Established
  etcd_health   {expect}             etcd's /health is (or is not) ok on every member
  agent_problem {node, match}        the agent's status lists a problem containing `match`
"""

from __future__ import annotations

import logging
import time

from labnet.checks import CheckFailed, CheckResult
from labnet.checks.assertions import Observation, failure_message, run_check
from labnet.errors import BadInput, WaitTimeout
from labnet.lab.convergence import NotReady, briefs, lacking
from labnet.lab.view import LabView
from labnet.nsexec import run
from labnet.topology import steps as s
from labnet.wait import poll

log = logging.getLogger("labnet.faults")  # every fault and convergence time, for pytest's log capture


def wait_converged(view: LabView, timeout: float) -> None:
    """Every agent back under its own name, BGP Established, every node's blocks routed everywhere
    (labnet.lab.convergence: the same test `up` waits for)."""
    nodes = list(view.topo.nodes)
    settings = view.topo.cluster_settings()
    expect, unwaited = settings.expects_peers(nodes), settings.unwaited
    poll(lambda: NotReady(lacking(briefs(view.runtime, nodes), expect_peers=expect, unwaited=unwaited)),
         lambda left: not left, timeout=timeout,
         what=f"lab {view.name}: every agent back, BGP Established and every block routed everywhere")


def converge(view: LabView, a: s.ConvergeArgs, timeout: float) -> list[CheckResult]:
    """Ping (one echo, 0.3 s wait) until a reply comes, for at most `within` seconds."""
    src = view.endpoint(a.from_)
    if src.ns is None:
        raise BadInput(f"converge from {a.from_!r}: an address cannot send pings")
    sender = src.ns
    dst = view.endpoint(a.to)
    label = f"{a.to} ({dst.ip})" if a.to != dst.ip else dst.ip
    name = f"converge {a.from_} → {label}"
    attempts = 0
    t0 = time.monotonic()

    def probe() -> str:
        nonlocal attempts
        attempts += 1
        proc = run(sender, ["ping", "-n", "-c", "1", "-W", "0.3", dst.ip], check=False, timeout=10)
        if proc.returncode == 0:
            return "reply"
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return lines[-1] if lines else f"ping exited {proc.returncode}"

    try:
        poll(probe, lambda r: r == "reply", timeout=a.within, what=name, max_interval=0.1)
    except WaitTimeout as exc:
        # where the packets go: from the sender, and from its node when the sender is a pod
        where = [sender]
        if a.from_ in view.journal.info.get("pods", {}):
            where.append(view.ns(view.pod(a.from_)["node"]))
        state = "\n".join(f"{ns.name}: " + (run(ns, ["ip", "route", "get", dst.ip], check=False, timeout=10).stdout
                                             or "no route").strip() for ns in where)
        obs = Observation(False, f"a reply from {label} within {a.within:g} s", f"no reply; last: {exc.last}",
                          state, f"ip route get {dst.ip}")
        msg = failure_message(name, sender.name, obs, exc.waited, attempts)
        raise CheckFailed(CheckResult(False, name, sender.name, f"no reply within {a.within:g} s; last: {exc.last}",
                                      exc.waited, attempts, msg)) from None
    took = time.monotonic() - t0
    result = CheckResult(True, name, sender.name, f"reached after {took:.2f} s ({attempts} pings)", took, attempts)
    log.info("%s", result.summary())
    return [result]


def bgp_down(view: LabView, a: s.BgpDownArgs, timeout: float) -> list[CheckResult]:
    """The session with `peer` leaves Established (e.g. its hold timer expired after a fault)."""
    addr = view.address(a.peer) if a.peer in view.journal.info.get("machines", {}) else a.peer

    def probe() -> Observation:
        peers = {p["peer_address"]: p for p in view.agent_status(a.node).get("peers", [])}
        p = peers.get(addr)
        if p is None:
            return Observation(True, f"no Established session with {a.peer}", f"{addr} is not a peer (any more)")
        state = f"{p.get('bgp_state')} ({p.get('info') or p.get('state')})"
        return Observation(p.get("bgp_state") != "Established", f"session with {a.peer} ({addr}) down",
                           f"session with {addr} {state}")

    return [run_check(f"BGP session with {a.peer} down", a.node, probe, a.within)]


def etcd_health_now(view: LabView) -> dict[str, tuple[bool, str]]:
    from labnet.etcd.admin import admin_store
    from labnet.etcd.netns import call_in_netns

    store = admin_store(view.journal.info)
    try:
        return call_in_netns(view.journal.info["etcd"]["netns"], store.health)
    finally:
        store.close()


def etcd_health(view: LabView, a: s.EtcdHealthArgs, timeout: float) -> list[CheckResult]:
    want = a.expect == "healthy"

    def probe() -> Observation:
        h = etcd_health_now(view)
        healthy = bool(h) and all(ok for ok, _ in h.values())
        actual = "; ".join(f"{ep}: {'healthy' if ok else 'unhealthy'} ({why})" for ep, (ok, why) in h.items())
        return Observation(healthy == want, f"every member {'healthy' if want else 'not healthy'}",
                           actual or "no endpoints")

    return [run_check(f"etcd {'healthy' if want else 'unhealthy'}", "etcd", probe, timeout)]


def agent_problem(view: LabView, a: s.AgentProblemArgs, timeout: float) -> list[CheckResult]:
    def probe() -> Observation:
        problems = [str(p) for p in view.agent_status(a.node).get("problems") or []]
        hits = [p for p in problems if a.match in p]
        return Observation(bool(hits) == a.present, f"a problem containing {a.match!r}" if a.present
                           else f"no problem containing {a.match!r}",
                           hits[0] if hits else ("problems: " + " | ".join(problems) if problems else "no problems"),
                           "\n".join(problems), f"agent problems on {a.node}")

    return [run_check(f"agent problem {a.match!r}" if a.present else f"no agent problem {a.match!r}", a.node, probe,
                      timeout)]
