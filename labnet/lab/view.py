"""A running lab, as checks, the CLI and the pytest plugin see it.

Built from the lab's journal (which keeps the topology it was built from), so it works when
the topology file has moved or changed.
"""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
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
    def address(self, name: str, family: int = 4) -> str:
        """A pod's or machine's address of that family (its ip6 / first address6 for 6), or an
        address given as such."""
        if name in self.journal.info.get("pods", {}):
            got = self.pod(name).get("ip" if family == 4 else "ip6")
            if got is None:
                raise BadInput(f"lab {self.name}: pod {name} has no IPv{family} address")
            return str(got)
        try:
            return str(ip_address(name))
        except ValueError:
            pass
        if family == 4:
            return str(self.topo.address_of(name))
        found = next((i.address6 for i in self.topo.machine(name).interfaces if i.address6 is not None), None)
        if found is None:
            raise BadInput(f"lab {self.name}: {name} has no IPv6 address (no interface with address6)")
        return str(found)

    def address_facing(self, name: str, other: str, family: int = 4) -> str:
        """`name`'s address on a LAN it shares with machine `other` (its first address when
        they share none): the next hop `other` sees for it."""
        theirs = {i.network for i in self.topo.machine(other).interfaces}
        for i in self.topo.machine(name).interfaces:
            addr = i.address if family == 4 else i.address6
            if i.network in theirs and addr is not None:
                return str(addr)
        return self.address(name, family)

    def endpoint(self, name: str, family: int = 4) -> Endpoint:
        from labnet.checks import Endpoint

        if name in self.journal.info.get("pods", {}):
            return Endpoint(name, self.pod_ns(name), self.address(name, family))
        if name in self.journal.info.get("machines", {}):
            return Endpoint(name, self.ns(name), self.address(name, family))
        try:
            return Endpoint(name, None, str(ip_address(name)))
        except ValueError:
            raise BadInput(f"lab {self.name}: {name!r} is neither a pod, a machine nor an IP address") from None

    # -- agent and datastore ------------------------------------------------------------
    def agent_status(self, node: str) -> dict[str, Any]:
        from labnet.lab.convergence import agent_status

        self.ns(node)  # a machine of this lab, or BadInput naming it
        return agent_status(self.runtime, node)

    def blocks(self, node: str, family: int | None = 4) -> list[IPv4Network | IPv6Network]:
        """The blocks `node` owns of one IP family (both with None), as its agent reports them."""
        status = self.agent_status(node)
        blocks = status.get("blocks")
        if blocks is None:
            raise LabnetError(f"node {node}: the agent's status has no blocks: {status}")
        nets = [ip_network(b) for b in blocks]
        return [n for n in nets if family is None or n.version == family]
