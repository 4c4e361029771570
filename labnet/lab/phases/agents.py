"""Phase agents: each node's process (agent, CNI server, userspace tunl0), as calico-node's
DaemonSet. On the netns runtime the lab's supervisor forks them (no start-up each) and restarts
them; on docker each node's process has a supervisor of its own inside the container.

`up` goes on once every agent has registered and claimed its block and tunnel address and every
CNI server answers: pods come next, and the seed's pod gets the address after the tunnel's
(tunl0 .128, net-test .129).
"""

from __future__ import annotations

import sys

from labnet.agent.config import DEFAULT_CONFIG, AgentConfig, EtcdSettings
from labnet.cni.install import TLS_INSIDE
from labnet.cni.server import DEFAULT_SOCKET as CNI_SOCKET
from labnet.cni.server import ping
from labnet.lab import processes
from labnet.lab.context import Context
from labnet.lab.convergence import NotReady, agents_lacking, briefs
from labnet.runtime.base import Runtime
from labnet.wait import poll

REFLECTOR_NICE = -5
AGENT_LOG_INSIDE = "/var/log/labnet/agent.log"
SUPERVISOR_LOG_INSIDE = "/var/log/labnet/agent-supervisor.log"


def agent_argv(lab_supervised: bool) -> list[str]:
    """The node process itself when the lab's supervisor forks and restarts it; else (docker:
    exec'd in the container) a supervisor of its own that does."""
    return [sys.executable, "-m", "labnet.agent.main", "run" if lab_supervised else "supervise",
            "--config", DEFAULT_CONFIG]


def run(ctx: Context) -> None:
    c = ctx.topo.cluster
    if c is None:
        return
    rt, info = ctx.runtime, ctx.journal.info
    reflectors = set(ctx.topo.cluster_settings().bgp.route_reflectors)
    tls = info["etcd"]["tls"]
    for node, spec in c.nodes.items():
        etcd = EtcdSettings(
            endpoints=list(info["etcd"]["endpoints"]),
            ca_file=f"{TLS_INSIDE}/etcd-ca" if tls else None,
            cert_file=f"{TLS_INSIDE}/etcd-cert" if tls else None,
            key_file=f"{TLS_INSIDE}/etcd-key" if tls else None,
        )
        cfg = AgentConfig(etcd=etcd, bgp_address=spec.bgp_address, log_file=AGENT_LOG_INSIDE, cni_socket=CNI_SOCKET)
        cfg.save(rt.host_path(node, DEFAULT_CONFIG))
        # a route reflector carries every other node's routes: it must keep up with them all
        ns = rt.ns(node)
        argv = agent_argv(ctx.zygote is not None and ctx.zygote.serves(ns, agent_argv(True)))
        processes.start(ctx.journal, ns, node, "agent", argv, zygote=ctx.zygote,
                        log=rt.host_path(node, SUPERVISOR_LOG_INSIDE), nice=REFLECTOR_NICE if node in reflectors else 0)
    tunnel = ctx.topo.cluster_settings().pool.encap != "none"
    waiting = set(c.nodes)

    def lacking() -> NotReady:
        lacks = _lacking(rt, sorted(waiting), tunnel)
        waiting.intersection_update(lacks)  # a node once ready is not asked again
        return lacks

    poll(lacking, lambda left: not left, timeout=scaled_timeout(len(c.nodes)),
         what="every agent to register and claim its block and tunnel address, and every CNI server to answer")


def _lacking(rt: Runtime, nodes: list[str], tunnel: bool) -> NotReady:
    lacks = agents_lacking(briefs(rt, nodes), needs_tunnel=tunnel)
    for n in nodes:
        if n not in lacks and not ping(rt.host_path(n, CNI_SOCKET), timeout=2):
            lacks.setdefault(n, []).append(f"CNI server not answering on {CNI_SOCKET}")
    return NotReady(lacks)


def scaled_timeout(nodes: int) -> float:
    """Deadlines grow with the lab: 50 agents start one after another on a 2-core machine."""
    return 60.0 + 2.0 * nodes
