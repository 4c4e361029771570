"""Phase pods: each topology pod ADDed through its node's conflist, then the policy applied.

Nodes take their pods side by side, as kubelets do (at most WORKERS at once); one node's pods
go in file order, so a lab's addresses are the same every time (the seed's net-test gets .129).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
    by_node: dict[str, list[str]] = {}
    for pod, spec in cluster.pods.items():
        by_node.setdefault(spec.node, []).append(pod)

    def add_all(node: str) -> None:
        from labnet.cni.invoke import read_conflist

        ns = ctx.runtime.ns(node)
        conflist = read_conflist(ns)  # once per node: the phase installed it and nothing changes it
        for pod in by_node[node]:
            spec = cluster.pods[pod]
            add_retrying(functools.partial(pods.add_to, ctx.journal, ns, node, pod, labels=spec.labels or None,
                                           conflist=conflist, ip=spec.ip), f"pod {pod} on {node}")

    if by_node:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(by_node))) as pool:
            for fut in [pool.submit(add_all, node) for node in by_node]:
                fut.result()  # a failure is raised (and up rolls back) once every node has stopped
    apply_all(ctx.journal.info, ctx.runtime.ns)  # the topology's policy, on the pods' host veths
