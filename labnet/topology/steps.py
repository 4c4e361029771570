"""Scenario step kinds: one table of every kind, its arguments and what they refer to.

A step is written as a one-key mapping `{kind: {args}}`. Each kind has a pydantic model for its
arguments (defaults live there, once) and a map from argument name to the kind of lab object it
names, so validation checks references without knowing the kind. The runners that carry the
steps out are labnet.scenario's, keyed by the same names; a new kind goes in both tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


# What a scenario's gates watch (labnet.scenario.gates); a fault declares which it breaks.
Gate = Literal["restart", "errors", "route-flaps"]
GATES: tuple[Gate, ...] = ("restart", "errors", "route-flaps")
AGENT_FAULT: frozenset[Gate] = frozenset(GATES)  # the agent stops or restarts: all of it
NETWORK_FAULT: frozenset[Gate] = frozenset({"errors", "route-flaps"})  # sessions drop, routes go


@dataclass(frozen=True)
class StepKind:
    args: type[StepArgs]
    refs: dict[str, Ref]  # argument name as written in YAML -> what it names
    doc: str
    check: StepCheck | None = None
    breaks: frozenset[Gate] = frozenset()  # the gates a scenario with this step does not hold


class StepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Expect = Literal["success", "fail"]


Family = Literal[4, 6]
FAMILY_DOC = "IP family of the addresses a name stands for: 4, or 6 (a pod's ip6, a machine's address6)"


class PingArgs(StepArgs):
    from_: str = Field(alias="from", description="pod or machine that sends")
    to: str = Field(description="pod, machine or IP address")
    count: int = Field(default=3, ge=1, le=100)
    expect: Expect = "success"
    family: Family = Field(default=4, description=FAMILY_DOC)


class ConnectivityArgs(StepArgs):
    pods: list[str] | None = Field(default=None, description="pods to test pairwise; default all pods")
    expect: Expect = "success"
    family: Family = Field(default=4, description=FAMILY_DOC)


PROTOS = ("icmp", "tcp", "udp")
Proto = Literal["icmp", "tcp", "udp"]
DEFAULT_PORT = 8080
EXPECT_FORMS = "reach | no-reach | snat <address, machine or pod> | loss <= N%"


@dataclass(frozen=True)
class Expectation:
    """What a probe must see: `reach`, `no-reach`, `snat X` (reach, and the target sees source
    address X, or the address of machine or pod X), `loss <= N%` (of `count` probes)."""

    kind: Literal["reach", "no-reach", "snat", "loss"]
    source: str | None = None  # snat: the address (or the name of what has it) the target sees
    max_loss: float | None = None  # loss: the most that may be lost, in percent

    def __str__(self) -> str:
        if self.kind == "snat":
            return f"snat {self.source}"
        if self.kind == "loss":
            return f"loss <= {self.max_loss:g}%"
        return self.kind


_LOSS = re.compile(r"loss\s*<=\s*(\d+(?:\.\d+)?)\s*%")


def parse_expectation(text: str) -> Expectation:
    """An expectation as written in a step; ValueError naming the forms there are."""
    words = str(text).split()
    if words in (["reach"], ["no-reach"]):
        return Expectation(words[0])  # type: ignore[arg-type]
    if len(words) == 2 and words[0] == "snat":
        return Expectation("snat", source=words[1])
    m = _LOSS.fullmatch(" ".join(words))
    if m and float(m.group(1)) <= 100:
        return Expectation("loss", max_loss=float(m.group(1)))
    raise ValueError(f"expectation {text!r} is none of: {EXPECT_FORMS}")


def _valid_expectation(text: str) -> str:
    parse_expectation(text)
    return text


ExpectText = Annotated[str, AfterValidator(_valid_expectation)]


class ConnectArgs(StepArgs):
    from_: str = Field(alias="from", description="pod or machine that sends")
    to: str = Field(description="pod, machine or IPv4 address (for tcp/udp to an address, something must answer)")
    proto: Proto = "icmp"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="tcp/udp port the target's responder uses")
    expect: ExpectText = Field(default="reach", description=EXPECT_FORMS)
    count: int = Field(default=100, ge=1, le=10000, description="probes sent for a loss expectation")
    interval: float = Field(default=0.02, ge=0.002, le=10, description="seconds between the probes of a loss "
                            "expectation (count x interval: the duration)")
    duration: float | None = Field(default=None, gt=0, le=3600, description="a loss expectation over this many "
                                   "seconds instead of `count` probes (duration / interval of them)")
    mtu: int | None = Field(default=None, ge=68, le=65535,
                            description="instead: the largest DF packet that passes must be this size, and one "
                                        "byte more must be refused (ICMP fragmentation needed)")
    family: Family = Field(default=4, description=FAMILY_DOC)


class ReachabilityArgs(StepArgs):
    proto: Proto = "icmp"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    expect: dict[str, Annotated[dict[str, ExpectText], Field(min_length=1)]] = Field(
        min_length=1, description="from -> to -> expectation (" + EXPECT_FORMS + "); all probed at once")
    family: Family = Field(default=4, description=FAMILY_DOC)


class PolicyCasesArgs(StepArgs):
    cases: list[str] | None = Field(default=None, description="the generated policy cases to run "
                                    "(labnet policy-cases --list); default all")
    within: float = Field(default=10.0, gt=0, le=600, description="seconds each case may take to hold")


class ProxyArpArgs(StepArgs):
    pod: str


class BlackholeArgs(StepArgs):
    node: str
    block: str | None = Field(default=None, description="one block CIDR; default every block the node owns "
                              "(of `family` when given)")
    family: Family | None = Field(default=None, description="only the blocks of this IP family; default both")


class TunnelRouteArgs(StepArgs):
    node: str
    to: str = Field(description="the node whose blocks must be routed")
    via: str | None = Field(default=None, description="the router the routes go through (a ToR that "
                            "re-advertises with next-hop-self): its address on a LAN it shares with `node`; "
                            "default: `to` itself")
    family: Family = Field(default=4, description="4: the IPv4 blocks (via tunl0, vxlan.calico or the LAN); "
                           "6: the IPv6 blocks (via vxlan-v6.calico or the LAN)")


class NoRouteArgs(StepArgs):
    node: str
    dst: str = Field(description="IP address, CIDR, or pod/machine name")
    family: Family = Field(default=4, description=FAMILY_DOC)


class RouteArgs(StepArgs):
    node: str
    match: dict[str, Any] = Field(min_length=1, description="fields of `ip -j route` that must match")
    present: bool = True
    family: Family | None = Field(default=None, description="the IPv4 or IPv6 table; default: the family of "
                                  "the match's dst or gateway, else 4")


class BgpEstablishedArgs(StepArgs):
    node: str
    peer: str | None = Field(default=None, description="peer machine name or address; default every peer")


class SysctlArgs(StepArgs):
    node: str
    key: str
    value: int | str


# -- faults and state-polling steps -------------------------------------------------------


class LinkArgs(StepArgs):
    machine: str = Field(description="router, host or node")
    interface: str = Field(description="the machine's interface name, e.g. ens32")
    side: Literal["fabric", "machine"] = Field(
        default="fabric", description="fabric: the LAN-side veth (cable pulled; the machine keeps its routes); "
                                      "machine: the machine's own interface (the kernel drops its routes)")


class PacketLossArgs(StepArgs):
    machine: str
    interface: str
    percent: int = Field(ge=0, le=100, description="share of packets dropped, 0-100")
    direction: Literal["in", "out", "both"] = "both"


class NodeArgs(StepArgs):
    node: str


class RenameAgentArgs(StepArgs):
    node: str
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
                      description="the name the agent registers under instead of the CNI plugin's")


class ConvergeArgs(StepArgs):
    from_: str = Field(alias="from", description="pod or machine that pings")
    to: str = Field(description="pod, machine or IPv4 address")
    within: float = Field(default=30.0, gt=0, le=600, description="seconds allowed")


class BgpDownArgs(StepArgs):
    node: str
    peer: str = Field(description="peer machine name or address")
    within: float = Field(default=30.0, gt=0, le=600, description="seconds allowed (the hold time, and some)")


class EtcdHealthArgs(StepArgs):
    expect: Literal["healthy", "unhealthy"] = "healthy"


class TolerateArgs(StepArgs):
    gates: list[Gate] = Field(min_length=1, description="what this scenario may do without failing: "
                              + ", ".join(GATES))


class AgentProblemArgs(StepArgs):
    node: str
    match: str = Field(min_length=1, description="text one of the agent's problems must contain")
    present: bool = True


# -- cross-checks against the topology ------------------------------------------------------


def _check_blackhole(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    block, cl = args.get("block"), topo.cluster
    if block is None or cl is None:
        return []
    try:
        net = ip_network(block)
    except ValueError:
        return [("block", f"{block!r} is not an IP network (host bits set?)")]
    pool = cl.pool_of(net.version)
    if pool is None:
        return [("block", f"{block}: the cluster has no IPv{net.version} pool")]
    if not net.subnet_of(pool.cidr) or net.prefixlen != pool.block:  # type: ignore[arg-type]
        return [("block", f"{block} is not a /{pool.block} block of pool {pool.cidr}")]
    return []


def _check_tunnel_route(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    node, via = args.get("node"), args.get("via")
    if node == args.get("to"):
        return [("to", f"a node has no tunnel route to its own blocks ({node} to itself)")]
    if via is None or node not in topo.nodes:
        return []
    if via not in topo.routers:
        return [("via", f"via {via!r}: routes of another node's blocks go via a router (a ToR), and {via} is not "
                        "one")]
    family = args.get("family", 4)
    mine = {i.network for i in topo.nodes[node].interfaces}
    if not any(i.network in mine and (i.address if family == 4 else i.address6) is not None
               for i in topo.routers[via].interfaces):
        return [("via", f"router {via} has no IPv{family} address on a LAN of {node}")]
    return []


def _check_interface(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        spec = topo.machine(str(args.get("machine")))
    except KeyError:
        return []  # the reference check reports the unknown machine
    names = [str(i.name) for i in spec.interfaces]
    if args.get("interface") in names:
        return []
    return [("interface", f"{args.get('machine')} has no interface {args.get('interface')!r} "
                          f"(it has: {', '.join(names)})")]


def _check_rename(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    name = args.get("name")
    if name == args.get("node"):
        return [("name", f"renaming {name} to its own name changes nothing")]
    if name in {n for n, _k, _s in topo.machines()}:
        return [("name", f"{name!r} is another machine of the lab; pick a name nobody uses")]
    return []


def _probe_rules(proto: str, exp: Expectation) -> str | None:
    if exp.kind == "snat" and proto == "icmp":
        return "an snat expectation needs proto tcp or udp: the target's responder reports the source it saw"
    return None


def _endpoint_names(topo: Topology) -> set[str]:
    names = {n for n, _k, _s in topo.machines()}
    if topo.cluster is not None:
        names |= set(topo.cluster.pods)
    return names


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _check_snat_source(topo: Topology, exp: Expectation) -> str | None:
    if exp.kind != "snat" or exp.source is None or _is_address(exp.source) or exp.source in _endpoint_names(topo):
        return None
    return f"snat {exp.source!r}: neither an IP address nor a machine or pod of the lab"


def _check_connect(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    a = ConnectArgs.model_validate(args)
    exp = parse_expectation(a.expect)
    out = [("expect", m) for m in (_probe_rules(a.proto, exp), _check_snat_source(topo, exp)) if m]
    if a.mtu is not None and a.proto != "icmp":
        out.append(("mtu", "the MTU probe pings with DF set: proto must be icmp"))
    if a.from_ == a.to:
        out.append(("to", f"{a.to} probing itself proves nothing about the network"))
    return out


def _check_reachability(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    a = ReachabilityArgs.model_validate(args)
    out = []
    for src, row in a.expect.items():
        if _is_address(src):
            out.append(("expect", f"{src}: an address cannot send; rows are pods or machines"))
        for dst, text in row.items():
            exp = parse_expectation(text)
            out += [("expect", f"{src} -> {dst}: {m}") for m in (_probe_rules(a.proto, exp),
                                                                 _check_snat_source(topo, exp)) if m]
            if src == dst:
                out.append(("expect", f"{src} -> {dst}: probing itself proves nothing about the network"))
    return out


def _check_etcd_node(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    c = topo.cluster
    if c is None or args.get("node") in c.etcd.nodes:
        return []
    return [("node", f"{args.get('node')} runs no etcd member (members: {', '.join(c.etcd.nodes)})")]


_NODE = Ref(("node",))
_MACHINE = Ref(MACHINES)

# Every step kind, in the order `labnet schema` and the docs list them.
STEP_KINDS: dict[str, StepKind] = {
    "ping": StepKind(PingArgs, {"from": Ref(ENDPOINTS), "to": Ref(ENDPOINTS, ip=True)},
                     "ping from a pod or machine to a pod, machine or address"),
    "connectivity": StepKind(ConnectivityArgs, {"pods": Ref(("pod",))},
                             "every listed pod reaches every other (default: all pods)"),
    "connect": StepKind(ConnectArgs, {"from": Ref(ENDPOINTS), "to": Ref(ENDPOINTS, ip=True)},
                        "probe over icmp, tcp or udp: reach, no-reach, the source address the target sees "
                        "(snat), loss, or the path MTU", _check_connect),
    "reachability": StepKind(ReachabilityArgs, {"expect": Ref(ENDPOINTS, ip=True)},
                             "a matrix of probes, all at once; on failure the whole table, wrong cells marked",
                             _check_reachability),
    "policy_cases": StepKind(PolicyCasesArgs, {},
                             "apply generated policy cases to the lab and compare each truth table with the "
                             "model's (fixed pods a/b/c × web/db/client are added for it, and removed)"),
    "proxy_arp": StepKind(ProxyArpArgs, {"pod": Ref(("pod",))},
                          "the pod's host-side veth answers ARP for 169.254.1.1"),
    "blackhole": StepKind(BlackholeArgs, {"node": _NODE, "block": Ref((), cidr=True)},
                          "the node has a blackhole route for each block it owns", _check_blackhole),
    "tunnel_route": StepKind(TunnelRouteArgs, {"node": _NODE, "to": _NODE, "via": _MACHINE},
                             "the node routes the other node's blocks (over the tunnel, or via a router)", _check_tunnel_route),
    "no_route": StepKind(NoRouteArgs, {"node": _MACHINE, "dst": Ref(ENDPOINTS, ip=True, cidr=True)},
                         "the machine has no route to dst"),
    "route": StepKind(RouteArgs, {"node": _MACHINE}, "a route matching `match` is (or is not) present"),
    "bgp_established": StepKind(BgpEstablishedArgs, {"node": _NODE, "peer": Ref(MACHINES, ip=True)},
                                "the node's BGP sessions are Established"),
    "sysctl": StepKind(SysctlArgs, {"node": _MACHINE}, "a sysctl has a value inside the machine"),
    "link_down": StepKind(LinkArgs, {"machine": _MACHINE},
                          "fault: set a machine's link down (undone: up again)", _check_interface, NETWORK_FAULT),
    "link_up": StepKind(LinkArgs, {"machine": _MACHINE},
                        "set a machine's link up (ends a link_down early)", _check_interface, NETWORK_FAULT),
    "packet_loss": StepKind(PacketLossArgs, {"machine": _MACHINE},
                            "fault: drop percent% of an interface's packets at random (nftables)", _check_interface,
                            NETWORK_FAULT),
    "kill_agent": StepKind(NodeArgs, {"node": _NODE}, "fault: SIGKILL the node's agent; its supervisor restarts it",
                           breaks=AGENT_FAULT),
    "stop_agent": StepKind(NodeArgs, {"node": _NODE},
                           "fault: stop the node's agent; its supervisor leaves it stopped (undone: started again)",
                           breaks=AGENT_FAULT),
    "start_agent": StepKind(NodeArgs, {"node": _NODE}, "start a stopped agent again", breaks=AGENT_FAULT),
    "stop_node": StepKind(NodeArgs, {"node": _NODE},
                          "fault: freeze a node: links cut at the fabric, its processes SIGSTOPped",
                          breaks=NETWORK_FAULT),
    "start_node": StepKind(NodeArgs, {"node": _NODE}, "resume a stopped node", breaks=NETWORK_FAULT),
    "kill_etcd": StepKind(NodeArgs, {"node": _NODE},
                          "fault: SIGKILL the node's etcd member (undone: restarted)", _check_etcd_node,
                          frozenset({"errors"})),
    "restart_etcd": StepKind(NodeArgs, {"node": _NODE},
                             "start a killed etcd member again with the same argv", _check_etcd_node,
                             frozenset({"errors"})),
    "remove_default_route": StepKind(NodeArgs, {"node": _NODE},
                                     "fault: delete the node's default route (undone: re-added)",
                                     breaks=NETWORK_FAULT),
    "rename_agent": StepKind(RenameAgentArgs, {"node": _NODE},
                             "fault: the agent registers under another name than the CNI plugin's", _check_rename,
                             AGENT_FAULT),
    "converge": StepKind(ConvergeArgs, {"from": Ref(ENDPOINTS), "to": Ref(ENDPOINTS, ip=True)},
                         "ping until it answers, within `within` seconds; reports the time it took"),
    "bgp_down": StepKind(BgpDownArgs, {"node": _NODE, "peer": Ref(MACHINES, ip=True)},
                         "the node's BGP session with peer is (or goes) down, within `within` seconds"),
    "etcd_health": StepKind(EtcdHealthArgs, {}, "every etcd member is (or is not) healthy"),
    "agent_problem": StepKind(AgentProblemArgs, {"node": _NODE},
                              "the node's agent reports (or does not report) a problem containing `match`"),
    "tolerate": StepKind(TolerateArgs, {}, "this scenario may restart a node's process, log errors or flap "
                         "routes without failing its gates (faults declare what they break themselves)"),
}
