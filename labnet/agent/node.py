"""One node's process: the agent, the CNI server and the userspace tunl0 datapath together.

Each used to be its own interpreter (four per node with the supervisor). Here the CNI server
answers on its socket from threads, the agent runs its asyncio loop in the main thread, and
the datapath runs as threads over a persistent TUN device (it outlives a killed process, so a
restart keeps tunl0 and its routes). Its supervisor (the lab's, labnet.lab.supervisor, or on
docker the node's own, labnet.agent.main) forks this process from a pre-imported interpreter,
so a restart costs a fork, not a start-up.
"""

from __future__ import annotations

import asyncio
import logging

from labnet.agent.config import AgentConfig
from labnet.agent.daemon import Agent
from labnet.cni import server as cni_server

log = logging.getLogger("labnet.agent")


def run_node(cfg: AgentConfig) -> int:
    """Serve CNI on cfg.cni_socket (if set) and run the agent until it stops; the agent's exit status."""
    agent = Agent(cfg)
    if cfg.cni_socket is None:
        return asyncio.run(agent.run())
    server = cni_server.open_server(cfg.cni_socket, lambda *a: after_cni(agent, *a))
    try:
        return asyncio.run(agent.run())
    finally:
        cni_server.close_server(server)


def after_cni(agent: Agent, command: str, code: int, borrowed: bool | None) -> None:
    """The agent does not watch every block (each pod's address would fire an event on every
    node): the addresses this node borrows from others' blocks change only by its own ADD and
    DEL, so those make it re-read the datastore. `borrowed` None: not known (re-read)."""
    if code == 0 and (command == "DEL" or (command == "ADD" and borrowed is not False)):
        agent.kick_threadsafe(datastore=True)
