"""Phase converge: `up` returns once every BGP session is Established and every route is in place."""

from __future__ import annotations

from labnet.lab.context import Context
from labnet.lab.convergence import NotReady, briefs, lacking
from labnet.lab.phases.agents import scaled_timeout
from labnet.wait import poll


def run(ctx: Context) -> None:
    c = ctx.topo.cluster
    if c is None:
        return
    settings = ctx.topo.cluster_settings()
    expect, unwaited = settings.expects_peers(list(c.nodes)), settings.unwaited
    poll(lambda: NotReady(lacking(briefs(ctx.runtime, c.nodes), expect_peers=expect, unwaited=unwaited)),
         lambda left: not left,
         timeout=30 + scaled_timeout(len(c.nodes)),
         what="BGP sessions Established and every node's blocks routed everywhere")
