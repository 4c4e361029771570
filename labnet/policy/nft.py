"""Render the policy model into one nftables table per node, apply it atomically, read counters.

Layout (Calico enforces on the host side of each pod's veth; so do we):

    table inet labnet-policy
      set src_<policy>_<rule>      the IPs of the pods a rule's `from.selector` matches (all nodes)
        set dst_<policy>_e<rule>     the same for an egress rule's `to`
      chain forward                hook forward: `iifname "caliX" jump from_caliX` for each local
                                   pod whose egress is isolated, then `oifname "caliX" jump to_caliX`
      chain from_caliX             egress of one pod: established/related and allowed traffic
                                   `return` (its ingress at the other end is judged next), denied
                                   is dropped, and so is what no rule allows
      chain to_caliX               ingress to one pod: established/related, the rules of every
                                   policy selecting the pod (in order), then the default

Dual-stack pods are judged the same for both families: a pod-selecting rule has an IPv6 set
beside its IPv4 one (`src_<policy>_<rule>_6`, the pods' IPv6 addresses) and an `ip6` twin of
its rule with the same comment; a cidr rule is rendered for its cidr's family only.

Only the forward hook is filtered: traffic from the node itself to its pods (output hook) and
from pods to the node (input hook) is never dropped, as with the seed's
FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT and Calico's host-to-local-workload allowance
(kubelet probes must reach pods). Every rule has a counter and a comment; the comments are
what `explain_drop` matches on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from labnet.errors import BadInput, CommandFailed
from labnet.nsexec import NodeNS, run
from labnet.policy.model import Peer, PolicySettings, PolicySpec, Rule
from labnet.policy.selector import parse

TABLE = "labnet-policy"
FAMILY = "inet"
NAMESPACE_LABEL = "projectcalico.org/namespace"  # on every pod: its namespace
NAMESPACE_NAME = "projectcalico.org/name"  # on every namespace: its name
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_LABEL_TEXT = re.compile(r'^[^"\\\n]*$')


@dataclass(frozen=True)
class PodInfo:
    """What enforcement needs to know of a pod: its IP, its host-side veth, its labels."""

    name: str
    ip: IPv4Address
    host_veth: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    namespace: str = "default"
    ip6: IPv6Address | None = None  # a dual-stack pod's IPv6 address

    def has(self, ip: IPv4Address | IPv6Address) -> bool:
        return ip in (self.ip, self.ip6)

    def selector_labels(self) -> dict[str, str]:
        """Its labels as selectors see them: with the namespace label Calico adds to every pod."""
        return {**self.labels, NAMESPACE_LABEL: self.namespace}

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", IPv4Address(self.ip))
        if self.ip6 is not None:
            object.__setattr__(self, "ip6", IPv6Address(self.ip6))
        if not _IFNAME.match(self.host_veth):
            raise BadInput(f"pod {self.name}: host veth {self.host_veth!r} is not an interface name")
        if not _LABEL_TEXT.match(self.name):
            raise BadInput(f"pod name {self.name!r} has a quote, backslash or newline")


def chain_name(pod: PodInfo) -> str:
    return f"to_{pod.host_veth}"


def egress_chain(pod: PodInfo) -> str:
    return f"from_{pod.host_veth}"


def set_name(policy: PolicySpec, index: int, egress: bool = False) -> str:
    return f"dst_{policy.name}_e{index}" if egress else f"src_{policy.name}_{index}"


def rule_comment(policy: PolicySpec, index: int, egress: bool = False) -> str:
    return f"policy={policy.name} egress={index}" if egress else f"policy={policy.name} rule={index}"


END_OF_EGRESS = "policy=end-of-egress"


def default_comment(settings: PolicySettings, selected_by: Sequence[PolicySpec]) -> str:
    """The verdict for a packet no rule allows (see model.py for the semantics)."""
    if settings.default == "deny":
        return "policy=default-deny"
    return "policy=end-of-policies" if selected_by else "policy=default-allow"


def _selecting(settings: PolicySettings, pod: PodInfo) -> list[PolicySpec]:
    return [p for p in settings.policies if p.target().matches(pod.selector_labels())]


def policies_for(settings: PolicySettings, pod: PodInfo) -> list[PolicySpec]:
    """The policies that judge the pod's ingress."""
    return [p for p in _selecting(settings, pod) if p.ingress_isolating]


def egress_isolated(settings: PolicySettings, pod: PodInfo) -> list[PolicySpec]:
    """The policies that isolate the pod's egress (those selecting it with an `egress` list)."""
    return [p for p in _selecting(settings, pod) if p.egress is not None]


def peer_matches_pod(peer: Peer, pod: PodInfo) -> bool:
    """The pod-selecting half of a peer (selector AND namespace_selector); the cidr is apart."""
    if peer.selector is not None and not parse(peer.selector).matches(pod.selector_labels()):
        return False
    return peer.namespace_selector is None or parse(peer.namespace_selector).matches({NAMESPACE_NAME: pod.namespace})


def peer_pods(peer: Peer | None, all_pods: Iterable[PodInfo]) -> list[PodInfo]:
    if peer is None or not peer.selects_pods:
        return []
    return sorted((p for p in all_pods if peer_matches_pod(peer, p)), key=lambda p: p.ip)


def _match(policy: PolicySpec, index: int, rule: Rule, egress: bool = False, family: int = 4) -> str | None:
    """The rule's match for packets of one IP family; None when no packet of it can match."""
    parts: list[str] = []
    peer, addr = (rule.to, "daddr") if egress else (rule.from_, "saddr")
    ip = "ip" if family == 4 else "ip6"
    if peer is not None:
        if peer.cidr is not None and peer.cidr.version != family:
            return None
        if peer.selects_pods:
            parts.append(f"{ip} {addr} @{set_name(policy, index, egress)}{'' if family == 4 else '_6'}")
        if peer.cidr is not None:
            parts.append(f"{ip} {addr} {peer.cidr}")
        if family == 6 and not parts:
            return None
    elif family == 6 and rule.protocol != "icmp":
        return None  # no address and no ICMP: the IPv4 line matches both families
    if rule.protocol is not None:
        ranges = rule.port_ranges()
        if ranges:
            elems = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
            parts.append(f"{rule.protocol} dport {{ {elems} }}")
        else:  # ICMP is a protocol of each family: ICMPv6 for IPv6 packets
            parts.append(f"meta l4proto {'ipv6-icmp' if family == 6 and rule.protocol == 'icmp' else rule.protocol}")
    return " ".join(parts)


def _matches(policy: PolicySpec, index: int, rule: Rule, egress: bool, dual: bool) -> list[str]:
    """The rule's lines: its IPv4 match, and with dual-stack pods its IPv6 twin, where each can
    match anything (a rule with no address match is one line for both families)."""
    four = _match(policy, index, rule, egress)
    peer = rule.to if egress else rule.from_
    # an IPv6 cidr alone matches IPv6 packets in any lab; with a selector too, only where pods
    # have IPv6 addresses (the IPv6 set exists only then)
    v6_cidr = peer is not None and peer.cidr is not None and peer.cidr.version == 6 and not peer.selects_pods
    six = _match(policy, index, rule, egress, 6) if dual or v6_cidr else None
    return [m for m in (four, six) if m is not None]


def _unique(pods: Sequence[PodInfo], attr: str, what: str) -> None:
    seen: dict[object, str] = {}
    for pod in pods:
        value = getattr(pod, attr)
        if value in seen and seen[value] != pod.name:
            raise BadInput(f"pods {seen[value]} and {pod.name} have the same {what} {value}")
        seen[value] = pod.name


def render(settings: PolicySettings, pods_on_node: Sequence[PodInfo], all_pods: Sequence[PodInfo]) -> str:
    """The nft script (one table definition) for a node. Pure and deterministic."""
    _unique(pods_on_node, "host_veth", "host veth")
    _unique(all_pods, "ip", "IP")
    dual = any(p.ip6 is not None for p in all_pods)  # IPv6 sets and rules only where pods have IPv6
    out = [f"table {FAMILY} {TABLE} {{", f'\tcomment "labnet policy, default {settings.default}"']
    for policy in settings.policies:
        for egress, rules in ((False, policy.ingress), (True, policy.egress or [])):
            for i, rule in enumerate(rules):
                peer = rule.to if egress else rule.from_
                if peer is None or not peer.selects_pods:
                    continue
                # nft comments hold 128 bytes and no quotes: name the rule, not its selector text.
                out += [f"\tset {set_name(policy, i, egress)} {{", "\t\ttype ipv4_addr",
                        f'\t\tcomment "{rule_comment(policy, i, egress)}"']
                members = peer_pods(peer, all_pods)
                if members:
                    out.append("\t\telements = { " + ", ".join(str(p.ip) for p in members) + " }")
                out.append("\t}")
                if dual:
                    out += [f"\tset {set_name(policy, i, egress)}_6 {{", "\t\ttype ipv6_addr",
                            f'\t\tcomment "{rule_comment(policy, i, egress)}"']
                    six = [str(p.ip6) for p in members if p.ip6 is not None]
                    if six:
                        out.append("\t\telements = { " + ", ".join(six) + " }")
                    out.append("\t}")
    local = sorted(pods_on_node, key=lambda p: p.host_veth)
    isolated = [p for p in local if egress_isolated(settings, p)]
    out += ["\tchain forward {", "\t\ttype filter hook forward priority filter; policy accept;"]
    for pod in isolated:  # egress first: it returns what it allows, so ingress at the other end is judged too
        out.append(f'\t\tiifname "{pod.host_veth}" counter jump {egress_chain(pod)} comment "from pod={pod.name}"')
    for pod in local:
        out.append(f'\t\toifname "{pod.host_veth}" counter jump {chain_name(pod)} comment "pod={pod.name}"')
    out.append("\t}")
    for pod in isolated:
        out += [f"\tchain {egress_chain(pod)} {{",
                '\t\tct state established,related counter return comment "labnet=established"']
        for policy in egress_isolated(settings, pod):
            for i, rule in enumerate(policy.egress or []):
                verdict = "return" if rule.action == "allow" else "drop"
                for match in _matches(policy, i, rule, True, dual):
                    out.append(f'\t\t{match + " " if match else ""}counter {verdict} '
                               f'comment "{rule_comment(policy, i, egress=True)}"')
        out += [f'\t\tcounter drop comment "{END_OF_EGRESS}"', "\t}"]
    for pod in local:
        selected = policies_for(settings, pod)
        out += [f"\tchain {chain_name(pod)} {{",
                '\t\tct state established,related counter accept comment "labnet=established"']
        for policy in selected:
            for i, rule in enumerate(policy.ingress):
                verdict = "accept" if rule.action == "allow" else "drop"
                for match in _matches(policy, i, rule, False, dual):
                    out.append(f'\t\t{match + " " if match else ""}counter {verdict} comment "{rule_comment(policy, i)}"')
        comment = default_comment(settings, selected)
        verdict = "drop" if comment != "policy=default-allow" else "accept"
        out += [f'\t\tcounter {verdict} comment "{comment}"', "\t}"]
    out.append("}")
    return "\n".join(out) + "\n"


# --- the node side --------------------------------------------------------------------------------

# `table X` creates the table when absent, so the `delete` that follows never fails: one nft
# transaction replaces the whole table, and applying the same script twice changes nothing.
_REPLACE = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


def apply(node_ns: NodeNS, script: str) -> None:
    """Replace labnet's policy table in the node atomically (`nft -f -`, one transaction)."""
    try:
        run(node_ns, ["nft", "-f", "-"], input=_REPLACE + script)
    except CommandFailed as exc:
        raise CommandFailed(node_ns.name, ["nft", "-f", "-", f"(table {FAMILY} {TABLE})"], exc.rc,
                            exc.stderr) from None


def remove(node_ns: NodeNS) -> None:
    """Delete labnet's policy table from the node; nothing to do when it is absent."""
    run(node_ns, ["nft", "-f", "-"], input=_REPLACE)


def ruleset(node_ns: NodeNS) -> list[dict[str, Any]] | None:
    """The table as `nft -j` objects, or None when the node has no labnet policy table."""
    proc = run(node_ns, ["nft", "-j", "list", "table", FAMILY, TABLE], check=False)
    if proc.returncode != 0:
        if "No such file" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise CommandFailed(node_ns.name, ["nft", "-j", "list", "table", FAMILY, TABLE], proc.returncode,
                            proc.stderr)
    items: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
    return items


@dataclass(frozen=True)
class RuleCounter:
    chain: str
    comment: str
    packets: int
    bytes: int


def counters(objects: Sequence[dict[str, Any]]) -> dict[tuple[str, str], RuleCounter]:
    """Counter of every commented rule, keyed by (chain, comment)."""
    out: dict[tuple[str, str], RuleCounter] = {}
    for obj in objects:
        rule = obj.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                c = expr["counter"]
                key = (rule["chain"], rule["comment"])
                had = out.get(key)  # a rule's IPv4 and IPv6 lines share a comment: one counter
                out[key] = RuleCounter(rule["chain"], rule["comment"], int(c["packets"]) + (had.packets if had else 0),
                                       int(c["bytes"]) + (had.bytes if had else 0))
    return out


def node_counters(node_ns: NodeNS) -> dict[tuple[str, str], RuleCounter]:
    objects = ruleset(node_ns)
    return counters(objects) if objects is not None else {}
