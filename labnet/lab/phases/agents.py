"""Phase agents: labnet-agent (under its supervisor) in every node, as calico-node's DaemonSet.

`up` goes on once every agent has registered and claimed its block and tunnel address: pods
come next, and the seed's pod gets the address after the tunnel's (tunl0 .128, net-test .129).
"""

from __future__ import annotations

import sys

from labnet.agent.config import DEFAULT_CONFIG, AgentConfig, EtcdSettings
from labnet.cni.install import TLS_INSIDE
from labnet.lab import processes
from labnet.lab.context import Context
from labnet.lab.convergence import NotReady, agents_lacking, briefs
from labnet.wait import poll

AGENT_LOG_INSIDE = "/var/log/labnet/agent.log"
SUPERVISOR_LOG_INSIDE = "/var/log/labnet/agent-supervisor.log"


def agent_argv() -> list[str]:
    return [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", DEFAULT_CONFIG]


def run(ctx: Context) -> None:
    c = ctx.topo.cluster
    if c is None:
        return
    rt, info = ctx.runtime, ctx.journal.info
    tls = info["etcd"]["tls"]
    for node, spec in c.nodes.items():
        etcd = EtcdSettings(
            endpoints=list(info["etcd"]["endpoints"]),
            ca_file=f"{TLS_INSIDE}/etcd-ca" if tls else None,
            cert_file=f"{TLS_INSIDE}/etcd-cert" if tls else None,
            key_file=f"{TLS_INSIDE}/etcd-key" if tls else None,
        )
        cfg = AgentConfig(etcd=etcd, bgp_address=spec.bgp_address, log_file=AGENT_LOG_INSIDE)
        cfg.save(rt.host_path(node, DEFAULT_CONFIG))
        processes.start(ctx.journal, rt.ns(node), node, "agent", agent_argv(),
                        log=rt.host_path(node, SUPERVISOR_LOG_INSIDE))
    tunnel = ctx.topo.cluster_settings().pool.encap != "none"
    poll(lambda: NotReady(agents_lacking(briefs(rt, c.nodes), needs_tunnel=tunnel)), lambda left: not left,
         timeout=scaled_timeout(len(c.nodes)), what="every agent to register and claim its block and tunnel address")


def scaled_timeout(nodes: int) -> float:
    """Deadlines grow with the lab: 50 agents start one after another on a 2-core machine."""
    return 60.0 + 2.0 * nodes
