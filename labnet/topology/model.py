"""The topology model: typed, strict (`extra="forbid"`), defaults filled in one place.

Field defaults live on the models; everything that depends on other fields (interface names by
position, interface MTU from its network, step argument defaults) is filled by `_normalise`,
which runs once after validation. Cross-object checks (references, overlaps) live in validate.py.
"""

from __future__ import annotations

import ipaddress
import shlex
from functools import partial
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from labnet.paths import LAB_NAME_RE
from labnet.policy.model import PolicySettings
from labnet.settings import (
    DEFAULT_BLOCK,
    BgpSettings,
    ClusterSettings,
    PeerSettings,
    PoolSettings,
    default_ipip,
    default_nat,
)
from labnet.topology.steps import STEP_KINDS, StepArgs

ASN_MAX = 4294967295


_NETS: dict[int, type[IPv4Network] | type[IPv6Network]] = {4: IPv4Network, 6: IPv6Network, 46: IPv4Network}
_ADDRS: dict[int, type[IPv4Address] | type[IPv6Address]] = {4: IPv4Address, 6: IPv6Address, 46: IPv4Address}
_EXAMPLE = {4: ("IPv4", "10.0.0.0/24", "10.0.0.1", 24), 6: ("IPv6", "fd00:20::/64", "fd00:20::1", 64),
            46: ("IP", "10.0.0.0/24 or fd00:20::/64", "10.0.0.1 or fd00::1", 24)}


def _family(text: str, version: int) -> int:
    """4 or 6: which family to parse `text` as (46 accepts either, by its spelling)."""
    return (6 if ":" in text else 4) if version == 46 else version


def _other_family(value: Any, text: str, version: int, what: str) -> None:
    """An address of the other family where one of `version` is expected: said so, plainly."""
    spelled = 6 if ":" in text else 4
    if version != 46 and spelled != version and (text[:1].isdigit() or ":" in text):
        example = _EXAMPLE[version][1 if what == "network" else 2]
        raise PydanticCustomError(f"{what}_family", "{value} is an IPv{got} " + what + "; this field takes an IPv{want} "
                                  "one, like {example}", {"value": repr(value), "got": spelled, "want": version,
                                                          "example": example})


def _special6(value: Any, addr: IPv6Address, what: str) -> None:
    """IPv6 values a lab cannot use: scoped, multicast, loopback, unspecified, IPv4-mapped, or
    link-local (a lab's addresses are global or unique-local; fe80::/10 is each link's own)."""
    kind = ("scoped (%zone)" if addr.scope_id else "multicast" if addr.is_multicast else "loopback" if addr.is_loopback
            else "unspecified" if addr.is_unspecified else "IPv4-mapped" if addr.ipv4_mapped is not None
            else "link-local" if addr.is_link_local else None)
    if kind is not None:
        raise PydanticCustomError(f"{what}_special", "{value} is a {kind} IPv6 " + what + "; use a global or "
                                  "unique-local one (fd00::/8)", {"value": repr(value), "kind": kind})


def _parse_cidr(value: Any, version: int = 4) -> Any:
    """Strict network of that IP version (46: either) with a hint for the usual mistakes (host
    bits, missing prefix)."""
    if isinstance(value, IPv4Network | IPv6Network) and version in (46, value.version):
        return value
    what, example, _a, plen = _EXAMPLE[version]
    if not isinstance(value, str):  # ipaddress would take 5 or true as a network
        raise PydanticCustomError("cidr_type", "expected an {what} network like {example}, got {value}",
                                  {"value": repr(value), "what": what, "example": example})
    text = value.strip()
    _other_family(value, text.split("/")[0], version, "network")
    fam = _family(text, version)
    what = "IPv4" if fam == 4 else "IPv6"
    if "/" not in text:
        raise PydanticCustomError(
            "cidr_prefix", "{value} has no prefix length",
            {"value": repr(value), "hint": f"write it as {text}/{24 if fam == 4 else 64}"},
        )
    cls = _NETS[fam]
    try:
        net = cls(text)
    except ValueError as exc:
        try:
            fixed = cls(text, strict=False)
        except ValueError:
            raise PydanticCustomError(
                "cidr", "{value} is not a valid {what} network ({reason})",
                {"value": repr(value), "reason": str(exc), "what": what}
            ) from None
        raise PydanticCustomError(
            "cidr_host_bits", "{value} has host bits set", {"value": repr(value), "hint": f"did you mean {fixed}?"}
        ) from None
    if isinstance(net, IPv6Network) and not net.is_link_local:  # fe80::/10 overlaps: validate.py says why
        _special6(value, net.network_address if net.prefixlen < 128 else net.network_address, "network")
    return net


def _parse_address(value: Any, version: int = 4) -> Any:
    if isinstance(value, IPv4Address | IPv6Address) and version in (46, value.version):
        return value
    what, _n, example, _p = _EXAMPLE[version]
    if not isinstance(value, str):
        raise PydanticCustomError("address_type", "expected an {what} address like {example}, got {value}",
                                  {"value": repr(value), "what": what, "example": example})
    text = value.strip()
    if "/" in text:
        bare = text.split("/", 1)[0]
        raise PydanticCustomError(
            "address_prefix",
            "{value}: give a bare address; the prefix comes from the network",
            {"value": repr(value), "hint": f"write {bare}"},
        )
    _other_family(value, text, version, "address")
    fam = _family(text, version)
    try:
        addr = _ADDRS[fam](text)
    except ValueError:
        raise PydanticCustomError("address", "{value} is not a valid {what} address",
                                  {"value": repr(value), "what": "IPv4" if fam == 4 else "IPv6"}) from None
    if isinstance(addr, IPv6Address):
        _special6(value, addr, "address")
    return addr


def _lower_mode(value: Any) -> Any:
    # Accept Calico's spelling (Always, CrossSubnet, Never) as well as ours.
    if isinstance(value, str):
        low = value.strip().lower()
        return "cross-subnet" if low in ("crosssubnet", "cross_subnet") else low
    return value


Cidr = Annotated[IPv4Network, BeforeValidator(_parse_cidr)]
Address = Annotated[IPv4Address, BeforeValidator(_parse_address)]
Cidr6 = Annotated[IPv6Network, BeforeValidator(partial(_parse_cidr, version=6))]
Address6 = Annotated[IPv6Address, BeforeValidator(partial(_parse_address, version=6))]
AnyCidr = Annotated[IPv4Network | IPv6Network, BeforeValidator(partial(_parse_cidr, version=46))]
AnyAddress = Annotated[IPv4Address | IPv6Address, BeforeValidator(partial(_parse_address, version=46))]
Mtu = Annotated[int, Field(ge=68, le=65535)]
Asn = Annotated[int, Field(ge=1, le=ASN_MAX)]
EncapMode = Annotated[Literal["always", "cross-subnet", "never"], BeforeValidator(_lower_mode)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Network(_Model):
    """A LAN: one bridge in the lab's fabric namespace. IPv4, IPv6 or both."""

    cidr: Cidr | None = Field(default=None, description="the LAN's IPv4 prefix")
    cidr6: Cidr6 | None = Field(default=None, description="the LAN's IPv6 prefix (a dual-stack or IPv6-only LAN)")
    mtu: Mtu = 1500

    @model_validator(mode="after")
    def _some_prefix(self) -> Network:
        if self.cidr is None and self.cidr6 is None:
            raise PydanticCustomError("network_empty", "a network needs a cidr, a cidr6 or both")
        return self


class Interface(_Model):
    name: str | None = Field(default=None, description="default eth0, eth1, ... by position")
    network: str
    address: Address | None = Field(default=None, description="IPv4 address, in the network's cidr (every "
                                    "interface of a LAN with a cidr has one; a cluster node's first one always)")
    address6: Address6 | None = Field(default=None, description="IPv6 address, in the network's cidr6")
    mtu: Mtu | None = Field(default=None, description="default: the network's MTU")


class RouterBgp(_Model):
    asn: Asn
    peers: Literal["cluster"] | list[str] = Field(default="cluster", description="'cluster' (every node) or node names")


class DaemonFile(_Model):
    """One file a daemon needs, written into the machine's own directories before it starts."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    text: str | None = Field(default=None, description="the file's content")
    from_: str | None = Field(default=None, alias="from", description="a file to copy, relative to the topology file")


class Daemon(_Model):
    """A program of the user's (FRR, GoBGP, ...) that the machine runs: started after the
    underlay, stopped by down, logged to /var/log/labnet/<name>.log, restarted by up if dead."""

    command: list[str] | str = Field(description="argv, or one string split as a shell splits words (no shell runs)")
    files: dict[str, DaemonFile] = Field(
        default={}, description="path inside the machine, under one of its own directories (/var/lib/labnet, "
                                "/var/run, /var/log/labnet, /var/tmp, /var/lib/cni, /var/lib/containers, "
                                "/etc/cni/net.d, /opt/cni/bin) -> its content")

    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


class Router(_Model):
    interfaces: list[Interface] = Field(min_length=1)
    gateway: Address | None = None
    gateway6: Address6 | None = None
    bgp: RouterBgp | None = None
    daemons: dict[str, Daemon] = {}


class Host(_Model):
    interfaces: list[Interface] = Field(min_length=1)
    gateway: Address | None = None
    gateway6: Address6 | None = Field(default=None, description="IPv6 default route")
    daemons: dict[str, Daemon] = {}


class ClusterNode(_Model):
    interfaces: list[Interface] = Field(min_length=1)
    gateway: Address | Literal["none"] | None = Field(
        default=None, description="default route; without one proxy-ARP gets no answer, so a node with pods needs one "
                                  "('none': on purpose, to reproduce that)")
    gateway6: Address6 | None = Field(default=None, description="IPv6 default route (a router's address6)")
    bgp_address: str = Field(
        default="first-found", description="first-found | interface=REGEX | can-reach=IP | cidr=CIDR | an IPv4 address"
    )
    asn: Asn | None = Field(default=None, description="this node's AS (Calico Node.spec.bgp.asNumber); default cluster.bgp.asn")


class EtcdSpec(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _etcd_schema(schema),
    )

    nodes: list[str] = Field(min_length=1)
    tls: bool = True

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `node: x` is shorthand for `nodes: [x]`.
        if isinstance(data, dict) and "node" in data:
            if "nodes" in data:
                raise PydanticCustomError("etcd_both", "give either 'node' or 'nodes', not both")
            data = {("nodes" if k == "node" else k): ([v] if k == "node" else v) for k, v in data.items()}
        return data


def _etcd_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["node"] = {"type": "string", "description": "shorthand for nodes: [NODE]"}
    schema.pop("required", None)
    schema["oneOf"] = [{"required": ["nodes"]}, {"required": ["node"]}]


# Defaults come from labnet.settings, the one cluster-settings type, so the topology, the agent
# and the CNI plugin cannot disagree about what an unset field means.
class PoolSpec(_Model):
    cidr: AnyCidr
    block_size: int | None = Field(default=None, ge=20, le=128,
                                   description="default Calico's: 26 for IPv4, 122 for IPv6")
    ipip: EncapMode | None = Field(default=None, description="default always for IPv4; IPv6 has no IPIP")
    vxlan: EncapMode = PoolSettings.vxlan  # type: ignore[assignment]
    nat_outgoing: bool | None = Field(default=None, description="masquerade traffic leaving the pool (NAT66 for "
                                      "IPv6); default on for IPv4, off for IPv6, as calico-node's default pools")

    @property
    def version(self) -> int:
        return self.cidr.version

    @property
    def block(self) -> int:
        """The block size, defaulted per family."""
        return DEFAULT_BLOCK[self.version] if self.block_size is None else self.block_size

    @property
    def ipip_mode(self) -> str:
        return default_ipip(self.version) if self.ipip is None else self.ipip

    def settings(self) -> PoolSettings:
        nat = default_nat(self.version) if self.nat_outgoing is None else self.nat_outgoing
        return PoolSettings(str(self.cidr), self.block, self.ipip_mode, self.vxlan, nat)


class BgpPeer(_Model):
    address: AnyAddress = Field(description="IPv4, or IPv6 for a session over the IPv6 underlay")
    asn: Asn
    node: str | None = Field(default=None, description="only this node peers (Calico BGPPeer.spec.node); default all")
    wait: bool | None = Field(default=None, description="up waits for this session; default: yes for a speaker "
                                                         "labnet runs (a node, a router with bgp:), no for one you bring")


class BgpSpec(_Model):
    asn: Asn = BgpSettings.asn
    mesh: Literal["full", "none"] = "full" if BgpSettings.mesh else "none"
    route_reflectors: list[str] = []
    peers: list[BgpPeer] = []
    graceful_restart: bool = BgpSettings.graceful_restart
    restart_time: int = Field(default=BgpSettings.restart_time, ge=0, le=4095,
                              description="seconds peers keep this node's routes while it restarts (RFC 4724)")
    hold_time: int = Field(default=BgpSettings.hold_time, ge=0, le=65535)
    keepalive: int | None = Field(default=BgpSettings.keepalive, ge=0, le=21845,
                                  description="seconds; default a third of hold_time")


class PodSpec(_Model):
    node: str
    labels: dict[str, str] = {}
    ip: Address | None = Field(default=None, description="the pod's address, from the pool (as Calico's "
                               "cni.projectcalico.org/ipAddrs annotation); default: the next free one")
    ip6: Address6 | None = Field(default=None, description="the pod's IPv6 address, from the IPv6 pool")


class Cluster(_Model):
    etcd: EtcdSpec
    pool: PoolSpec | None = Field(default=None, description="the IPv4 pool; shorthand for pools: [POOL]")
    pools: list[PoolSpec] = Field(default=[], description="the IPv4 pool and, for dual-stack pods, an IPv6 one")
    bgp: BgpSpec = Field(default_factory=BgpSpec)
    mtu: Mtu | None = Field(default=None, description="pod MTU; default underlay MTU - 20 (ipip) / - 50 (vxlan)")
    nodes: dict[str, ClusterNode] = Field(min_length=1)
    pods: dict[str, PodSpec] = {}
    policy: PolicySettings = Field(
        default_factory=PolicySettings,
        description="ingress policy on the pods' host-side veths: default allow|deny, allow rules by selector/cidr/port",
    )

    def pool_of(self, version: int) -> PoolSpec | None:
        """The pool of that family (`pool` counts as the IPv4 one)."""
        return next((p for p in ([self.pool] if self.pool else []) + self.pools if p.version == version), None)

    @property
    def pool4(self) -> PoolSpec:
        """The IPv4 pool every cluster has (validate.py reports one that lacks it)."""
        p = self.pool_of(4)
        if p is None:
            raise KeyError("the cluster has no IPv4 pool")
        return p

    @property
    def pool6(self) -> PoolSpec | None:
        return self.pool_of(6)


class Step(_Model):
    """One scenario step. Written `{kind: {args}}`; stored as kind + args (defaults filled)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema: _step_schema(schema))

    kind: str
    args: dict[str, Any] = {}
    _typed: StepArgs | None = PrivateAttr(default=None)  # args as their model, set once by _normalise

    @property
    def typed(self) -> StepArgs | None:
        """The arguments as their step kind's model (None for a kind validation reports)."""
        return self._typed

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1:
            ((kind, args),) = data.items()
            if args is not None and not isinstance(args, dict):
                raise PydanticCustomError(
                    "step_args", "the arguments of step {kind} must be a mapping, got {value}",
                    {"kind": str(kind), "value": repr(args)[:60]},
                )
            return {"kind": kind, "args": {} if args is None else args}
        if isinstance(data, dict) and set(data) == {"kind", "args"}:
            return data  # already in stored form (e.g. a model_dump)
        raise PydanticCustomError(
            "step_shape",
            "a step is a one-key mapping like {ping: {from: a, to: b}}, got {value}",
            {"value": repr(data)[:60]},
        )


def _step_schema(schema: dict[str, Any]) -> None:
    variants = []
    for kind, spec in STEP_KINDS.items():
        args = spec.args.model_json_schema(by_alias=True)
        args.pop("title", None)
        args["description"] = spec.doc
        variants.append(
            {"type": "object", "properties": {kind: args}, "required": [kind], "additionalProperties": False}
        )
    schema.clear()
    schema.update({"title": "Step", "oneOf": variants})


MachineKind = Literal["router", "host", "node"]
Machine = Router | Host | ClusterNode


class Topology(_Model):
    name: str = Field(pattern=LAB_NAME_RE, description="lab name; prefixes namespace names lnet-<name>-<node>")
    runtime: Literal["netns", "docker"] = "netns"
    ipv6: bool = False
    networks: dict[str, Network] = Field(min_length=1)
    routers: dict[str, Router] = {}
    hosts: dict[str, Host] = {}
    cluster: Cluster | None = None
    scenarios: dict[str, list[Step]] = {}
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _defaults(self) -> Topology:
        _normalise(self)
        return self

    # -- helpers ---------------------------------------------------------------------------

    def machines(self) -> list[tuple[str, MachineKind, Machine]]:
        """Every machine in file order: routers, then hosts, then cluster nodes."""
        out: list[tuple[str, MachineKind, Machine]] = []
        out += [(n, "router", r) for n, r in self.routers.items()]
        out += [(n, "host", h) for n, h in self.hosts.items()]
        if self.cluster is not None:
            out += [(n, "node", c) for n, c in self.cluster.nodes.items()]
        return out

    def machine(self, name: str) -> Machine:
        for n, _kind, spec in self.machines():
            if n == name:
                return spec
        raise KeyError(f"lab {self.name} has no router, host or node named {name!r}")

    @property
    def nodes(self) -> dict[str, ClusterNode]:
        return {} if self.cluster is None else self.cluster.nodes

    @property
    def pods(self) -> dict[str, PodSpec]:
        return {} if self.cluster is None else self.cluster.pods

    def interface_cidr(self, iface: Interface) -> IPv4Interface | None:
        """The interface's address with its network's prefix, e.g. 10.20.30.71/24 (None on an
        IPv6-only LAN)."""
        net = self.networks[iface.network].cidr
        if iface.address is None or net is None:
            return None
        return IPv4Interface(f"{iface.address}/{net.prefixlen}")

    def interface_cidr6(self, iface: Interface) -> IPv6Interface | None:
        """The interface's IPv6 address with its network's prefix, e.g. fd00:20::71/64."""
        net = self.networks[iface.network].cidr6
        if iface.address6 is None or net is None:
            return None
        return IPv6Interface(f"{iface.address6}/{net.prefixlen}")

    @property
    def dual_stack(self) -> bool:
        """Some LAN or pool has IPv6: machines keep IPv6 on."""
        pool6 = self.cluster is not None and self.cluster.pool6 is not None
        return self.ipv6 or pool6 or any(n.cidr6 is not None for n in self.networks.values())

    def pods_on(self, node: str) -> dict[str, PodSpec]:
        return {name: pod for name, pod in self.pods.items() if pod.node == node}

    def address_of(self, machine: str) -> IPv4Address:
        """The machine's first IPv4 address (a node's BGP router id with first-found)."""
        found = next((i.address for i in self.machine(machine).interfaces if i.address is not None), None)
        if found is None:
            raise KeyError(f"{machine} has no IPv4 address (it is on IPv6-only LANs)")
        return found

    @staticmethod
    def gateway_of(spec: Machine) -> IPv4Address | None:
        """The machine's default route, if it has one (`gateway: none` is none)."""
        return spec.gateway if isinstance(spec.gateway, IPv4Address) else None

    def node_asn(self, node: str) -> int:
        if self.cluster is None:
            raise KeyError(f"lab {self.name} has no cluster, so no node {node!r}")
        own = self.cluster.nodes[node].asn
        return self.cluster.bgp.asn if own is None else own

    def cluster_settings(self) -> ClusterSettings:
        """The lab-wide settings `up` writes to etcd for the agents and the CNI plugins."""
        if self.cluster is None:
            raise KeyError(f"lab {self.name} has no cluster, so no cluster settings")
        c = self.cluster
        b = c.bgp
        peers = tuple(PeerSettings(str(p.address), p.asn, p.node, self.runs_bgp(p.address) if p.wait is None else p.wait)
                      for p in b.peers)
        bgp = BgpSettings(asn=b.asn, mesh=b.mesh == "full", route_reflectors=tuple(b.route_reflectors), peers=peers,
                          graceful_restart=b.graceful_restart, restart_time=b.restart_time, hold_time=b.hold_time,
                          keepalive=b.keepalive or None)
        pool6 = c.pool6.settings() if c.pool6 is not None else None
        return ClusterSettings(c.pool4.settings(), bgp, c.mtu, {n: self.node_asn(n) for n in c.nodes}, pool6)

    def runs_bgp(self, address: IPv4Address | IPv6Address) -> bool:
        """A BGP speaker labnet itself starts answers at `address`: a cluster node's, or a router's with bgp:."""
        owner = self.owner_of(address)
        if owner is None:
            return False
        return owner[0] in self.nodes or (owner[0] in self.routers and self.routers[owner[0]].bgp is not None)

    @property
    def warnings(self) -> list[str]:
        """What the loader accepted but wants said (FILE:LINE:COL: path: warning: ...)."""
        return list(self._warnings)

    def set_warnings(self, warnings: list[str]) -> None:
        self._warnings = list(warnings)

    def owner_of(self, address: IPv4Address | IPv6Address) -> tuple[str, Interface] | None:
        """Which machine and interface carry this address (of either family), if any."""
        for name, _kind, spec in self.machines():
            for iface in spec.interfaces:
                if address in (iface.address, iface.address6):
                    return name, iface
        return None


def _normalise(topo: Topology) -> None:
    """Fill the defaults that depend on other fields. The one place besides field defaults."""
    for _name, _kind, spec in topo.machines():
        for i, iface in enumerate(spec.interfaces):
            if iface.name is None:
                iface.name = f"eth{i}"
            if iface.mtu is None and iface.network in topo.networks:
                iface.mtu = topo.networks[iface.network].mtu
    for steps in topo.scenarios.values():
        for step in steps:
            kind = STEP_KINDS.get(step.kind)
            if kind is None:
                continue  # validate.py reports it
            try:
                args = kind.args.model_validate(step.args)
            except ValidationError:
                continue  # validate.py reports it with positions
            step.args = args.model_dump(by_alias=True)
            step._typed = args


def is_valid_cidr(text: str, v6: bool = False) -> bool:
    """An IPv4 network (or, with v6, an IPv6 one too)."""
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        return False
    return v6 or net.version == 4


def is_valid_address(text: str, v6: bool = False) -> bool:
    """An IPv4 address (or, with v6, an IPv6 one too)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return v6 or addr.version == 4
