"""Phase pods: each topology pod ADDed through its node's conflist, then the policy applied.

Nodes take their pods side by side, as kubelets do (at most WORKERS at once); one node's pods
go in file order, so a lab's addresses are the same every time (the seed's net-test gets .129).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from labnet.lab import pods
from labnet.lab.context import Context

WORKERS = 8


def run(ctx: Context) -> None:
    from labnet.policy.enforce import apply_all

    cluster = ctx.topo.cluster
    if cluster is None:
        return
    by_node: dict[str, list[str]] = {}
    for pod, spec in cluster.pods.items():
        by_node.setdefault(spec.node, []).append(pod)

    def add_all(node: str) -> None:
        from labnet.cni.invoke import read_conflist

        ns = ctx.runtime.ns(node)
        conflist = read_conflist(ns)  # once per node: the phase installed it and nothing changes it
        for pod in by_node[node]:
            pods.add_to(ctx.journal, ns, node, pod, labels=cluster.pods[pod].labels or None, conflist=conflist)

    if by_node:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(by_node))) as pool:
            for fut in [pool.submit(add_all, node) for node in by_node]:
                fut.result()  # a failure is raised (and up rolls back) once every node has stopped
    apply_all(ctx.journal.info, ctx.runtime.ns)  # the topology's policy, on the pods' host veths
