"""A running lab, as checks, the CLI and the pytest plugin see it.

Built from the lab's journal (which keeps the topology it was built from), so it works when
the topology file has moved or changed.
"""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from labnet.errors import BadInput, LabnetError
from labnet.lab.journal import Journal
from labnet.nsexec import NodeNS

if TYPE_CHECKING:
    from labnet.checks import Endpoint
    from labnet.runtime.base import Runtime
    from labnet.topology.model import Topology


class LabView:
    def __init__(self, name: str) -> None:
        from labnet.lab.state import load_journal

        journal = load_journal(name)
        if journal is None:
            raise BadInput(f"no lab named {name!r} is running (start it with `labnet up FILE`)")
        self.name = name
        self.journal: Journal = journal

    @cached_property
    def topo(self) -> Topology:
        from labnet.topology.model import Topology

        return Topology.model_validate(self.journal.info["topology"])

    @cached_property
    def runtime(self) -> Runtime:
        from labnet.runtime import get_runtime

        return get_runtime(self.journal.runtime)(self.name, self.journal)

    def ns(self, machine: str) -> NodeNS:
        if machine not in self.journal.info.get("machines", {}):
            raise BadInput(f"lab {self.name}: no router, host or node named {machine!r}")
        return self.runtime.ns(machine)

    # -- pods -------------------------------------------------------------------------
    def pod(self, pod: str) -> dict[str, Any]:
        """The pod's record: node, ip, host veth, netns (as the lab recorded it at ADD)."""
        pods = self.journal.info.get("pods", {})
        if pod not in pods:
            raise BadInput(f"lab {self.name}: no pod named {pod!r} (pods: {', '.join(pods) or 'none'})")
        return pods[pod]  # type: ignore[no-any-return]

    def pod_ns(self, pod: str) -> NodeNS:
        rec = self.pod(pod)
        return self.ns(rec["node"]).pod(pod, rec["netns"])

    # -- addressing -------------------------------------------------------------------
    def address(self, name: str) -> str:
        if name in self.journal.info.get("pods", {}):
            return str(self.pod(name)["ip"])
        try:
            return str(IPv4Address(name))
        except ValueError:
            pass
        return str(self.topo.address_of(name))

    def endpoint(self, name: str) -> Endpoint:
        from labnet.checks import Endpoint

        if name in self.journal.info.get("pods", {}):
            return Endpoint(name, self.pod_ns(name), self.address(name))
        if name in self.journal.info.get("machines", {}):
            return Endpoint(name, self.ns(name), self.address(name))
        try:
            return Endpoint(name, None, str(IPv4Address(name)))
        except ValueError:
            raise BadInput(f"lab {self.name}: {name!r} is neither a pod, a machine nor an IPv4 address") from None

    # -- agent and datastore ------------------------------------------------------------
    def agent_status(self, node: str) -> dict[str, Any]:
        from labnet.lab.convergence import agent_status

        self.ns(node)  # a machine of this lab, or BadInput naming it
        return agent_status(self.runtime, node)

    def blocks(self, node: str) -> list[IPv4Network]:
        """The blocks `node` owns, as its agent reports them."""
        status = self.agent_status(node)
        blocks = status.get("blocks")
        if blocks is None:
            raise LabnetError(f"node {node}: the agent's status has no blocks: {status}")
        return [IPv4Network(b) for b in blocks]
