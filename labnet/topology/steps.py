"""The scenario step registry: one table of step kinds, their arguments and what they refer to.

A step is written as a one-key mapping `{kind: {args}}`. Each kind has a pydantic model for its
arguments (defaults live there) and a map from argument name to the kind of lab object it names,
so validation can check references without knowing the kind. Later issues add kinds (faults)
with `register_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from labnet.topology.model import Topology

# A step's own cross-checks: (topology, validated args) -> [(argument, message)].
StepCheck = Callable[["Topology", dict[str, Any]], list[tuple[str, str]]]

# What an argument may name: a pod, a cluster node, a router, a host; optionally an IPv4
# address or CIDR written literally.
Category = Literal["pod", "node", "router", "host"]
MACHINES: tuple[Category, ...] = ("node", "router", "host")
ENDPOINTS: tuple[Category, ...] = ("pod", "node", "router", "host")


@dataclass(frozen=True)
class Ref:
    names: tuple[Category, ...]
    ip: bool = False  # a literal IPv4 address is accepted too
    cidr: bool = False  # a literal IPv4 network is accepted too


@dataclass(frozen=True)
class StepKind:
    args: type[BaseModel]
    refs: dict[str, Ref]  # argument name as written in YAML -> what it names
    doc: str
    check: StepCheck | None = None


class StepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Expect = Literal["success", "fail"]


class PingArgs(StepArgs):
    from_: str = Field(alias="from", description="pod or machine that sends")
    to: str = Field(description="pod, machine or IPv4 address")
    count: int = Field(default=3, ge=1, le=100)
    expect: Expect = "success"


class ConnectivityArgs(StepArgs):
    pods: list[str] | None = Field(default=None, description="pods to test pairwise; default all pods")
    expect: Expect = "success"


class ProxyArpArgs(StepArgs):
    pod: str


class BlackholeArgs(StepArgs):
    node: str
    block: str | None = Field(default=None, description="one block CIDR; default every block the node owns")


class TunnelRouteArgs(StepArgs):
    node: str
    to: str = Field(description="the node whose blocks must be routed")


class NoRouteArgs(StepArgs):
    node: str
    dst: str = Field(description="IPv4 address, CIDR, or pod/machine name")


class RouteArgs(StepArgs):
    node: str
    match: dict[str, Any] = Field(min_length=1, description="fields of `ip -j route` that must match")
    present: bool = True


class BgpEstablishedArgs(StepArgs):
    node: str
    peer: str | None = Field(default=None, description="peer machine name or address; default every peer")


class SysctlArgs(StepArgs):
    node: str
    key: str
    value: int | str


STEP_KINDS: dict[str, StepKind] = {}


def register_step(
    name: str, args: type[BaseModel], refs: dict[str, Ref], doc: str, check: StepCheck | None = None
) -> None:
    if name in STEP_KINDS:
        raise ValueError(f"step kind {name!r} is already registered")
    STEP_KINDS[name] = StepKind(args=args, refs=refs, doc=doc, check=check)


def _check_blackhole(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    block, cl = args.get("block"), topo.cluster
    if block is None or cl is None:
        return []
    try:
        net = IPv4Network(block)
    except ValueError:
        return [("block", f"{block!r} is not an IPv4 network (host bits set?)")]
    if not net.subnet_of(cl.pool.cidr) or net.prefixlen != cl.pool.block_size:
        return [("block", f"{block} is not a /{cl.pool.block_size} block of pool {cl.pool.cidr}")]
    return []


def _check_tunnel_route(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    if args.get("node") == args.get("to"):
        return [("to", f"a node has no tunnel route to its own blocks ({args.get('node')} to itself)")]
    return []


_NODE = Ref(("node",))
_MACHINE = Ref(MACHINES)

register_step("ping", PingArgs, {"from": Ref(ENDPOINTS), "to": Ref(ENDPOINTS, ip=True)},
              "ping from a pod or machine to a pod, machine or address")
register_step("connectivity", ConnectivityArgs, {"pods": Ref(("pod",))},
              "every listed pod reaches every other (default: all pods)")
register_step("proxy_arp", ProxyArpArgs, {"pod": Ref(("pod",))},
              "the pod's host-side veth answers ARP for 169.254.1.1")
register_step("blackhole", BlackholeArgs, {"node": _NODE, "block": Ref((), cidr=True)},
              "the node has a blackhole route for each block it owns", _check_blackhole)
register_step("tunnel_route", TunnelRouteArgs, {"node": _NODE, "to": _NODE},
              "the node routes the other node's blocks over the tunnel", _check_tunnel_route)
register_step("no_route", NoRouteArgs, {"node": _MACHINE, "dst": Ref(ENDPOINTS, ip=True, cidr=True)},
              "the machine has no route to dst")
register_step("route", RouteArgs, {"node": _MACHINE}, "a route matching `match` is (or is not) present")
register_step("bgp_established", BgpEstablishedArgs, {"node": _NODE, "peer": Ref(MACHINES, ip=True)},
              "the node's BGP sessions are Established")
register_step("sysctl", SysctlArgs, {"node": _MACHINE}, "a sysctl has a value inside the machine")
