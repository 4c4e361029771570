"""Pods of a running lab: created and removed through the node's CNI config, as a runtime does.

The lab's journal keeps one record per pod (node, IP, host veth, netns) so checks and
`labnet exec NODE/POD` find it; the node keeps the CNI side of the record itself.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

from labnet.errors import BadInput
from labnet.lab.journal import Journal
from labnet.lab.state import lab_lock, node_ns, running_journal
from labnet.nsexec import NodeNS
from labnet.paths import check_name


def _record(node: str, pod: str, result: dict[str, Any], netns: str, cid: str) -> dict[str, Any]:
    ifs = result.get("interfaces", [])
    ips = result.get("ips", [])
    host = next((i["name"] for i in ifs if not i.get("sandbox")), None)
    bare = [i["address"].split("/")[0] for i in ips]
    ip = next((a for a in bare if ":" not in a), None)
    ip6 = next((a for a in bare if ":" in a), None)
    return {"node": node, "ip": ip, "host_veth": host, "netns": netns, "container_id": cid,
            **({"ip6": ip6} if ip6 else {})}


def add_to(journal: Journal, ns: NodeNS, node: str, pod: str, labels: dict[str, str] | None = None,
           conflist: dict[str, Any] | None = None, ip: IPv4Address | None = None,
           namespace: str = "default", ip6: IPv6Address | None = None) -> dict[str, Any]:
    """ADD `pod` (of Kubernetes namespace `namespace`) on `node` and record it in the journal
    (recorded first: a crash leaves a trace)."""
    from labnet.cni import invoke

    cid = invoke.container_id(journal.lab, node, pod, namespace)
    netns = f"/var/run/netns/{invoke.netns_name(cid)}"
    # other pods may be added beside this one (phases.pods): set_info takes the journal's lock
    journal.set_info(("pods", pod), {"node": node, "ip": None, "host_veth": None, "netns": netns, "container_id": cid,
                                     "namespace": namespace})
    try:
        result = invoke.add_pod(ns, pod, namespace=namespace, labels=labels, lab=journal.lab, conflist=conflist, ip=ip,
                                ip6=ip6)
    except BaseException:
        # add_pod has already rolled the pod back (CNI DEL); forget it, so a retry can work.
        journal.set_info(("pods", pod), remove=True)
        raise
    rec = {**_record(node, pod, result, netns, cid), "labels": dict(labels or {}), "namespace": namespace}
    journal.set_info(("pods", pod), rec)
    return rec


def reapply_policy(journal: Journal) -> None:
    """Pods changed: every node's policy table follows (sources are pod IPs by selector)."""
    from labnet.policy.enforce import apply_all

    apply_all(journal.info, lambda node: node_ns(journal.lab, node))


def add(lab: str, node: str, pod: str, labels: dict[str, str] | None = None,
        ip: IPv4Address | None = None, namespace: str = "default", ip6: IPv6Address | None = None) -> dict[str, Any]:
    check_name("pod", pod)
    check_name("namespace", namespace)
    with lab_lock(lab):
        journal = running_journal(lab)
        if pod in journal.info.get("pods", {}):
            raise BadInput(f"lab {lab}: pod {pod!r} exists already (on {journal.info['pods'][pod]['node']})")
        rec = add_to(journal, node_ns(lab, node), node, pod, labels, ip=ip, namespace=namespace, ip6=ip6)
        reapply_policy(journal)
        return rec


def remove(lab: str, node: str, pod: str) -> None:
    check_name("pod", pod)
    from labnet.cni import invoke

    with lab_lock(lab):
        journal = running_journal(lab)
        rec = journal.info.get("pods", {}).get(pod)
        if rec is not None and rec["node"] != node:
            raise BadInput(f"lab {lab}: pod {pod!r} is on {rec['node']}, not {node}")
        invoke.del_pod(node_ns(lab, node), pod, namespace=(rec or {}).get("namespace") or "default", lab=lab)
        journal.info.get("pods", {}).pop(pod, None)
        journal.save()
        reapply_policy(journal)


def pod_ns(lab: str, node: str, pod: str) -> NodeNS:
    journal = running_journal(lab)
    rec = journal.info.get("pods", {}).get(pod)
    if rec is None:
        raise BadInput(f"lab {lab}: no pod named {pod!r} (pods: {', '.join(journal.info.get('pods', {})) or 'none'})")
    if rec["node"] != node:
        raise BadInput(f"lab {lab}: pod {pod!r} runs on {rec['node']}, not {node}")
    return node_ns(lab, node).pod(pod, rec["netns"])
