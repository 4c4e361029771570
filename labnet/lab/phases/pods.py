"""Phase pods: each topology pod ADDed through its node's conflist, then the policy applied."""

from __future__ import annotations

from labnet.lab import pods
from labnet.lab.context import Context


def run(ctx: Context) -> None:
    from labnet.policy.enforce import apply_all

    if ctx.topo.cluster is None:
        return
    for pod, spec in ctx.topo.cluster.pods.items():
        pods.add_to(ctx.journal, ctx.runtime.ns(spec.node), spec.node, pod, labels=spec.labels or None)
    apply_all(ctx.journal.info, ctx.runtime.ns)  # the topology's policy, on the pods' host veths
