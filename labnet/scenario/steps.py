"""Check steps: each turns its typed arguments into assertions on the running lab."""

from __future__ import annotations

from dataclasses import replace

from labnet.agent.tunnel.vxlan import IFNAME6 as VXLAN6_DEVICE
from labnet.checks import (
    CheckFailed,
    CheckResult,
    assert_bgp_established,
    assert_blackhole_route,
    assert_connect,
    assert_connectivity,
    assert_mtu,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_reachability,
    assert_route,
    assert_sysctl,
    assert_tunnel_route,
)
from labnet.checks.reach import matrix_cells
from labnet.errors import BadInput
from labnet.lab.view import LabView
from labnet.topology import steps as s


def ping(v: LabView, a: s.PingArgs, t: float) -> list[CheckResult]:
    src = v.endpoint(a.from_)
    if src.ns is None:
        raise BadInput(f"ping from {a.from_!r}: an address cannot send pings")
    dst = v.endpoint(a.to, a.family)
    try:
        return [assert_ping(src.ns, dst.ip, count=a.count, expect=a.expect == "success",
                            timeout=t, dst_name=a.to if a.to != dst.ip else None)]
    except CheckFailed as exc:
        raise _traced(exc, v, [(a.from_, a.to)], family=a.family) from None


def connectivity(v: LabView, a: s.ConnectivityArgs, t: float) -> list[CheckResult]:
    pods = a.pods or list(v.journal.info.get("pods", {}))
    want = a.expect == "success"
    matrix = {src: {d: want for d in pods if d != src} for src in pods}
    return [assert_connectivity(matrix, lambda name: v.endpoint(name, a.family), timeout=t)]


def _traced(exc: CheckFailed, v: LabView, pairs: list[tuple[str, str]], proto: str = "icmp",
            port: int | None = None, family: int = 4) -> CheckFailed:
    """The probe's failure as it is, with how to follow those packets (labnet trace)."""
    r = exc.result
    opts = ("" if proto == "icmp" else f" --proto {proto} --port {port}") + (" -6" if family == 6 else "")
    hint = "\n".join(f"  trace: labnet trace -l {v.name} {a} {b}{opts}" for a, b in pairs[:5])
    return CheckFailed(replace(r, message=f"{r.message or r.summary()}\n{hint}"))


def connect(v: LabView, a: s.ConnectArgs, t: float) -> list[CheckResult]:
    src, dst = v.endpoint(a.from_, a.family), v.endpoint(a.to, a.family)
    if src.ns is None:
        raise BadInput(f"connect from {a.from_!r}: an address cannot send probes")
    try:
        if a.mtu is not None:
            return [assert_mtu(src, dst, a.mtu, timeout=t)]
        exp = s.parse_expectation(a.expect)
        snat = v.address(exp.source, a.family) if exp.kind == "snat" and exp.source else None
        count = max(1, round(a.duration / a.interval)) if a.duration else a.count
        return [assert_connect(src, dst, exp, proto=a.proto, port=a.port, count=count, interval=a.interval,
                               snat_ip=snat, timeout=max(t, (a.duration or 0) * 1.5))]
    except CheckFailed as exc:
        raise _traced(exc, v, [(a.from_, a.to)], a.proto, a.port, a.family) from None


def reachability(v: LabView, a: s.ReachabilityArgs, t: float) -> list[CheckResult]:
    cells = matrix_cells(a.expect, lambda n: v.endpoint(n, a.family), lambda n: v.address(n, a.family))
    try:
        return [assert_reachability(cells, proto=a.proto, port=a.port, timeout=t)]
    except CheckFailed as exc:
        wrong = [(c.src.name, c.dst.name) for c in cells if f"{c.src.name} → {c.dst.name} (" in exc.result.detail]
        raise _traced(exc, v, wrong, a.proto, a.port, a.family) from None


def proxy_arp(v: LabView, a: s.ProxyArpArgs, t: float) -> list[CheckResult]:
    rec = v.pod(a.pod)
    return [assert_proxy_arp(v.ns(rec["node"]), v.pod_ns(a.pod), rec["host_veth"], timeout=t)]


def blackhole(v: LabView, a: s.BlackholeArgs, t: float) -> list[CheckResult]:
    blocks = [a.block] if a.block else v.blocks(a.node, a.family)
    if not blocks:
        raise BadInput(f"node {a.node} owns no {'' if a.family is None else f'IPv{a.family} '}block, so there is "
                       "no blackhole route to check")
    return [assert_blackhole_route(v.ns(a.node), str(b), timeout=t) for b in blocks]


def tunnel_route(v: LabView, a: s.TunnelRouteArgs, t: float) -> list[CheckResult]:
    blocks = v.blocks(a.to, a.family)
    if not blocks:
        raise BadInput(f"node {a.to} owns no IPv{a.family} block, so {a.node} has nothing to route to it")
    if a.family == 4:
        via = v.address(a.to) if a.via is None else v.address_facing(a.via, a.node)
        if a.via is not None or v.topo.cluster_settings().pool.encap == "none":  # a plain route, no tunnel
            return [assert_route(v.ns(a.node), {"dst": str(b), "gateway": via, "protocol": "bird"}, timeout=t,
                                 name=f"route {b} via {via}") for b in blocks]
        return [assert_tunnel_route(v.ns(a.node), str(b), via, timeout=t) for b in blocks]
    # IPv6 blocks: over vxlan-v6.calico via the owner's IPv6 tunnel address, or plainly via its
    # IPv6 underlay address (Calico has no IPIP for IPv6)
    pool6 = v.topo.cluster_settings().pool6
    if pool6 is None:
        raise BadInput(f"lab {v.name} has no IPv6 pool, so no IPv6 tunnel routes")
    status = v.agent_status(a.to)
    me, them = v.topo.nodes[a.node].interfaces[0].network, v.topo.nodes[a.to].interfaces[0].network
    if pool6.encap_towards(same_subnet=me == them) == "vxlan" and a.via is None:
        via6 = (status.get("tunnel6") or {}).get("address")
        if not via6:
            raise BadInput(f"node {a.to}'s agent reports no IPv6 VXLAN tunnel address: {status.get('tunnel6')}")
        return [assert_route(v.ns(a.node), {"dst": str(b), "gateway": via6, "dev": VXLAN6_DEVICE, "onlink": True},
                             timeout=t, name=f"vxlan-v6 route {b} via {via6}") for b in blocks]
    via6 = v.address(a.to, 6) if a.via is None else v.address_facing(a.via, a.node, 6)
    return [assert_route(v.ns(a.node), {"dst": str(b), "gateway": via6, "protocol": "bird"}, timeout=t,
                         name=f"IPv6 route {b} via {via6}") for b in blocks]


def no_route(v: LabView, a: s.NoRouteArgs, t: float) -> list[CheckResult]:
    dst = a.dst if "/" in a.dst else v.address(a.dst, a.family)
    return [assert_no_route(v.ns(a.node), dst, timeout=t)]


def route(v: LabView, a: s.RouteArgs, t: float) -> list[CheckResult]:
    if a.present:
        return [assert_route(v.ns(a.node), a.match, timeout=t, family=a.family)]
    # The whole match counts (dev, protocol, type, table...), not just its dst.
    return [assert_no_route(v.ns(a.node), match=a.match, timeout=t, family=a.family)]


def bgp_established(v: LabView, a: s.BgpEstablishedArgs, t: float) -> list[CheckResult]:
    peer = a.peer
    if peer and peer in v.journal.info.get("machines", {}):
        peer = v.address(peer)

    def peers() -> list[dict[str, object]]:
        return [{"peer": p["peer_address"], "state": p.get("bgp_state"), "info": p.get("info"),
                 "name": p.get("name")} for p in v.agent_status(a.node).get("peers", [])]

    return [assert_bgp_established(peers, peer, node=a.node, timeout=t)]


def sysctl(v: LabView, a: s.SysctlArgs, t: float) -> list[CheckResult]:
    return [assert_sysctl(v.ns(a.node), a.key, a.value, timeout=t)]


def tolerate(v: LabView, a: s.TolerateArgs, t: float) -> list[CheckResult]:
    """Nothing to check: the scenario's gates read it (labnet.scenario.run.tolerated)."""
    return [CheckResult(True, f"tolerate {', '.join(a.gates)}", v.name, "this scenario's gates allow it", 0.0)]


def policy_cases(v: LabView, a: s.PolicyCasesArgs, t: float) -> list[CheckResult]:
    from labnet.policy.cases import CASES, case_named
    from labnet.scenario.policy_cases import run_cases

    try:
        cases = [case_named(n) for n in a.cases] if a.cases else list(CASES)
    except KeyError as exc:
        raise BadInput(str(exc.args[0])) from None
    from labnet.scenario.policy_cases import total

    results = run_cases(v, cases, timeout=a.within)
    failed = [r for r in results if not r.ok]
    if failed:  # one failure for the step, with every wrong case in it
        said = total(results)
        raise CheckFailed(CheckResult(False, "policy cases", v.name, said, sum(r.elapsed for r in results),
                                      message="\n\n".join(r.message for r in failed) + f"\n{said}",
                                      table=failed[0].table))
    return results
