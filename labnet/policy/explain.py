"""Why is a packet dropped? Evaluate the model, then confirm with the node's nft counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from labnet.nsexec import NodeNS
from labnet.policy.model import PolicySettings, Rule
from labnet.policy.nft import (
    END_OF_EGRESS,
    FAMILY,
    TABLE,
    PodInfo,
    RuleCounter,
    chain_name,
    counters,
    default_comment,
    egress_isolated,
    peer_matches_pod,
    policies_for,
    rule_comment,
    ruleset,
)

PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str  # a policy name, or default-deny / default-allow / end-of-policies
    rule: int | None
    comment: str  # the nft comment of the deciding rule
    reason: str


def _rule_matches(rule: Rule, peer_ip: IPv4Address | IPv6Address, peer_pod: PodInfo | None, proto: str, port: int | None,
                  egress: bool = False) -> bool:
    peer = rule.to if egress else rule.from_
    if peer is not None:
        if peer.selects_pods and (peer_pod is None or not peer_matches_pod(peer, peer_pod)):
            return False
        if peer.cidr is not None and peer_ip not in peer.cidr:
            return False
    if rule.protocol is not None and rule.protocol != proto:
        return False
    ranges = rule.port_ranges()
    return not ranges or (port is not None and any(lo <= port <= hi for lo, hi in ranges))


def evaluate(
    settings: PolicySettings,
    dst: PodInfo,
    src_ip: IPv4Address | IPv6Address | str,
    proto: str,
    port: int | None,
    all_pods: Sequence[PodInfo],
) -> Verdict:
    """The model's verdict for a new connection src -> dst at dst's ingress (what the pod's
    nft chain does): the first matching rule of the policies selecting dst, else the default."""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    src = ip_address(src_ip)
    src_pod = next((p for p in all_pods if p.has(src)), None)
    selected = policies_for(settings, dst)
    for policy in selected:
        for i, rule in enumerate(policy.ingress):
            if _rule_matches(rule, src, src_pod, proto, port):
                allowed = rule.action == "allow"
                return Verdict(allowed, policy.name, i, rule_comment(policy, i),
                               f"{'allowed' if allowed else 'denied'} by policy {policy.name} (ingress rule {i})")
    names = ", ".join(p.name for p in selected) or "none"
    comment = default_comment(settings, selected)
    if comment == "policy=default-allow":
        return Verdict(True, "default-allow", None, comment, f"no policy selects pod {dst.name}; the lab default is allow")
    if comment == "policy=default-deny":
        return Verdict(False, "default-deny", None, comment,
                       f"dropped by default-deny: no rule allows it (policies selecting pod {dst.name}: {names})")
    return Verdict(False, "end-of-policies", None, comment,
                   f"dropped at end-of-policies: pod {dst.name} is selected by {names}, and none of their rules "
                   "allows it")


def evaluate_egress(
    settings: PolicySettings,
    src: PodInfo,
    dst_ip: IPv4Address | IPv6Address | str,
    proto: str,
    port: int | None,
    all_pods: Sequence[PodInfo],
) -> Verdict:
    """The model's verdict for a new connection from pod `src` at its egress."""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    dst = ip_address(dst_ip)
    dst_pod = next((p for p in all_pods if p.has(dst)), None)
    isolating = egress_isolated(settings, src)
    if not isolating:
        return Verdict(True, "egress-open", None, "", f"no policy isolates pod {src.name}'s egress")
    for policy in isolating:
        for i, rule in enumerate(policy.egress or []):
            if _rule_matches(rule, dst, dst_pod, proto, port, egress=True):
                allowed = rule.action == "allow"
                return Verdict(allowed, policy.name, i, rule_comment(policy, i, egress=True),
                               f"{'allowed' if allowed else 'denied'} by policy {policy.name} (egress rule {i})")
    names = ", ".join(p.name for p in isolating)
    return Verdict(False, "end-of-egress", None, END_OF_EGRESS,
                   f"dropped at end-of-egress: pod {src.name}'s egress is isolated by {names}, and none of their "
                   "rules allows it")


def flow(settings: PolicySettings, src: PodInfo, dst: PodInfo, proto: str, port: int | None,
         all_pods: Sequence[PodInfo]) -> Verdict:
    """Pod to pod: the source's egress, then the destination's ingress; the first that drops
    decides. The oracle of the policy truth tables."""
    out = evaluate_egress(settings, src, dst.ip, proto, port, all_pods)
    if not out.allowed:
        return out
    return evaluate(settings, dst, src.ip, proto, port, all_pods)


def _describe(c: RuleCounter | None, before: Mapping[tuple[str, str], RuleCounter] | None) -> str:
    if c is None:
        return "the node has no such rule (policy not applied, or applied from another model)"
    text = f"nft rule \"{c.comment}\" in chain {c.chain} counted {c.packets} packet(s)"
    if before is not None:
        old = before.get((c.chain, c.comment))
        text += f", {c.packets - (old.packets if old else 0)} since the snapshot"
    return text


def explain_drop(
    node_ns: NodeNS,
    src_ip: IPv4Address | str,
    dst_ip: IPv4Address | str,
    proto: str,
    port: int | None = None,
    *,
    settings: PolicySettings,
    pods: Sequence[PodInfo],
    before: Mapping[tuple[str, str], RuleCounter] | None = None,
) -> str:
    """One paragraph saying whether labnet's policy drops src -> dst on this node, and which
    policy (or default) decides, backed by the node's counters.

    `pods` are all the lab's pods (sources are matched by IP); `before`, a `node_counters`
    snapshot taken before sending the packet, makes the report say which counters moved.
    """
    dst = ip_address(dst_ip)
    flow = f"{proto} {src_ip} -> {dst}{f':{port}' if port is not None else ''}"
    dst_pod = next((p for p in pods if p.has(dst)), None)
    if dst_pod is None:
        return f"node {node_ns.name}: {flow}: {dst} is not a pod labnet knows; labnet policy only filters ingress to pods"
    objects = ruleset(node_ns)
    if objects is None:
        return (f"node {node_ns.name}: {flow}: not dropped by labnet policy: table {FAMILY} {TABLE} is absent "
                "(allow-all)")
    chain = chain_name(dst_pod)
    if not any(o.get("chain", {}).get("name") == chain for o in objects):
        return (f"node {node_ns.name}: {flow}: pod {dst_pod.name} ({dst_pod.host_veth}) is not enforced on this "
                f"node (no chain {chain}); ask the node that hosts it")
    verdict = evaluate(settings, dst_pod, src_ip, proto, port, pods)
    now = counters(objects)
    head = f"node {node_ns.name}: {flow} (to pod {dst_pod.name}): {verdict.reason}"
    tail = "; " + _describe(now.get((chain, verdict.comment)), before)
    if before is not None:
        moved = [c.comment for key, c in now.items()
                 if key[0] == chain and c.packets > (before[key].packets if key in before else 0)]
        tail += f"; rules of {chain} whose counters moved: {', '.join(moved) or 'none'}"
        if moved and verdict.comment not in moved and "labnet=established" not in moved:
            tail += f" — they disagree with the model, which expects \"{verdict.comment}\""
    return head + tail
