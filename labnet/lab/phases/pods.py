"""Phase pods: each topology pod ADDed through its node's conflist, then the policy applied.

Nodes take their pods side by side, as kubelets do (at most WORKERS at once); one node's pods
go in file order, so a lab's addresses are the same every time (the seed's net-test gets .129).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labnet.cni.invoke import CniFailed
from labnet.lab import pods
from labnet.lab.context import Context
from labnet.wait import poll

WORKERS = 8
TRY_AGAIN = 11  # the CNI spec's "try again later" (etcd busy): kubelet retries it, so do we
RETRY_FOR = 120.0


def add_retrying(add: Callable[[], object], what: str, timeout: float = RETRY_FOR) -> None:
    """One ADD; again (it was rolled back) while it fails with code 11, until `timeout`.
    Any other failure is raised at once."""

    def attempt() -> Exception | None:
        try:
            add()
        except Exception as exc:  # returned, not raised: poll() would take it for "not yet"
            return exc
        return None

    def done(r: Exception | None) -> bool:
        return not (isinstance(r, CniFailed) and r.code == TRY_AGAIN)

    last = poll(attempt, done, timeout=timeout, what=f"{what}: CNI ADD (code 11, try again later)")
    if last is not None:
        raise last


def run(ctx: Context) -> None:
    from labnet.policy.enforce import apply_all

    cluster = ctx.topo.cluster
    if cluster is None:
        return
    conflists: dict[str, Any] = {}

    def add_all(node: str, names: list[str]) -> None:
        from labnet.cni.invoke import read_conflist

        ns = ctx.runtime.ns(node)
        if node not in conflists:  # once per node: the phase installed it and nothing changes it
            conflists[node] = read_conflist(ns)
        for pod in names:
            spec = cluster.pods[pod]
            add_retrying(functools.partial(pods.add_to, ctx.journal, ns, node, pod, labels=spec.labels or None,
                                           conflist=conflists[node], ip=spec.ip, ip6=spec.ip6),
                          f"pod {pod} on {node}")

    # Pods that ask for an address go first, everywhere: an automatic one must not take it meanwhile.
    asked = {p for p, s in cluster.pods.items() if s.ip is not None or s.ip6 is not None}
    for wave in ([p for p in cluster.pods if p in asked], [p for p in cluster.pods if p not in asked]):
        by_node: dict[str, list[str]] = {}
        for pod in wave:
            by_node.setdefault(cluster.pods[pod].node, []).append(pod)
        if by_node:
            with ThreadPoolExecutor(max_workers=min(WORKERS, len(by_node))) as pool:
                for fut in [pool.submit(add_all, node, names) for node, names in by_node.items()]:
                    fut.result()  # a failure is raised (and up rolls back) once every node has stopped
    apply_all(ctx.journal.info, ctx.runtime.ns)  # the topology's policy, on the pods' host veths
