"""Policy in a running lab: render and apply each node's nft table from the topology's policy
and the pods the lab has (topology pods and `labnet pod add` pods alike).

Re-applied after every pod change: a policy's allowed sources are the IPs of the pods its
selector matches, wherever they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo, apply, remove, render

if TYPE_CHECKING:
    from labnet.nsexec import NodeNS


def settings_of(topology: dict[str, Any]) -> PolicySettings:
    cluster = topology.get("cluster") or {}
    return PolicySettings.model_validate(cluster.get("policy") or {})


def enforced(settings: PolicySettings) -> bool:
    """allow-all with no policy is the seed's setting: no table at all, as without Felix rules."""
    return settings.default == "deny" or bool(settings.policies)


def pod_infos(pods: dict[str, dict[str, Any]]) -> list[PodInfo]:
    return [PodInfo(name, IPv4Address(rec["ip"]), rec["host_veth"], dict(rec.get("labels") or {}),
                    str(rec.get("namespace") or "default"), IPv6Address(rec["ip6"]) if rec.get("ip6") else None)
            for name, rec in sorted(pods.items()) if rec.get("ip") and rec.get("host_veth")]


def apply_all(info: dict[str, Any], ns_of: Any) -> list[str]:
    """Apply the lab's policy on every node that has pods; return the nodes touched."""
    settings = settings_of(info["topology"])
    nodes = list((info["topology"].get("cluster") or {}).get("nodes", {}))
    if not enforced(settings):
        return []
    apply_settings(settings, nodes, info.get("pods", {}), ns_of)
    return nodes


def apply_settings(settings: PolicySettings, nodes: Iterable[str], pods: dict[str, dict[str, Any]],
                   ns_of: Callable[[str], NodeNS]) -> None:
    """`settings` on every node, one nft transaction each; a node without pods has no table."""
    everyone = pod_infos(pods)
    for node in nodes:
        mine = [p for p in everyone if pods[p.name]["node"] == node]
        if mine:
            apply(ns_of(node), render(settings, mine, everyone))
        else:
            remove(ns_of(node))
