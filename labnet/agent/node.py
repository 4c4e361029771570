"""One node's process: the agent, the CNI server and the userspace tunl0 datapath together.

Each used to be its own interpreter (four per node with the supervisor). Here the CNI server
answers on its socket from threads, the agent runs its asyncio loop in the main thread, and
the datapath runs as threads over a persistent TUN device (it outlives a killed process, so a
restart keeps tunl0 and its routes). The supervisor (labnet.agent.main) forks this process
from its own pre-imported interpreter, so a restart costs a fork, not a start-up.
"""

from __future__ import annotations

import logging

from labnet.agent.config import AgentConfig
from labnet.agent.daemon import run_agent
from labnet.cni import server as cni_server

log = logging.getLogger("labnet.agent")


def run_node(cfg: AgentConfig) -> int:
    """Serve CNI on cfg.cni_socket (if set) and run the agent until it stops; the agent's exit status."""
    if cfg.cni_socket is None:
        return run_agent(cfg)
    server = cni_server.open_server(cfg.cni_socket)
    try:
        return run_agent(cfg)
    finally:
        cni_server.close_server(server)
