"""Key layout: Calico's etcd v3 layout under labnet's own prefix. The one place keys are built."""

from __future__ import annotations

import re

PREFIX = "/labnet"
CALICO = f"{PREFIX}/calico"
CONFIG = f"{PREFIX}/config"  # lab-wide settings written by `up` (the seed's ConfigMap)

IPAM = f"{CALICO}/ipam/v2"
RESOURCES = f"{CALICO}/resources/v3/projectcalico.org"


def cidr_key(cidr: str) -> str:
    """'10.100.163.128/26' -> '10.100.163.128-26', 'fd00:10:244::/122' -> 'fd00:10:244::-122'
    (Calico's form in keys: libcalico-go's BlockKey replaces the one '/'; ':' stays)."""
    return cidr.replace("/", "-")


def cidr_from_key(part: str) -> str:
    return part.replace("-", "/")


def family(cidr: str) -> int:
    """4 or 6: the IP version of a cidr or address, without parsing it (only IPv6 has ':')."""
    return 6 if ":" in cidr else 4


def blocks(version: int = 4) -> str:
    """The prefix of one family's blocks (Calico: /ipam/v2/assignment/ipv<4|6>/block/)."""
    if version not in (4, 6):
        raise ValueError(f"IP version {version!r} is neither 4 nor 6")
    return f"{IPAM}/assignment/ipv{version}/block/"


BLOCKS = blocks(4)
BLOCKS6 = blocks(6)


def block(cidr: str) -> str:
    return f"{blocks(family(cidr))}{cidr_key(cidr)}"


def affinity(node: str, cidr: str) -> str:
    return f"{IPAM}/host/{node}/ipv{family(cidr)}/block/{cidr_key(cidr)}"


def affinities(node: str | None = None, version: int | None = 4) -> str:
    """A node's affinity records of one family (both with version None); every node's without node."""
    if not node:
        return f"{IPAM}/host/"
    return f"{IPAM}/host/{node}/" if version is None else f"{IPAM}/host/{node}/ipv{version}/block/"


def parse_affinity(key: str) -> tuple[str, str] | None:
    """(node, cidr) of an affinity key of either family; None for any other key."""
    m = _AFFINITY.match(key)
    return (m.group(1), cidr_from_key(m.group(2))) if m else None


_AFFINITY = re.compile(re.escape(f"{IPAM}/host/") + r"([^/]+)/ipv[46]/block/([^/]+)$")


def handle(handle_id: str) -> str:
    return f"{IPAM}/handle/{handle_id}"


HANDLES = f"{IPAM}/handle/"


def node(name: str) -> str:
    return f"{RESOURCES}/nodes/{name}"


NODES = f"{RESOURCES}/nodes/"


def workload_endpoint(node_name: str, pod: str, container_id: str, ifname: str = "eth0") -> str:
    """One attachment's record: the container's eth0 at <container_id>, another interface of it
    (a second network, eth1) at <container_id>/<ifname>."""
    base = f"{RESOURCES}/workloadendpoints/{node_name}/{pod}/{container_id}"
    return base if ifname == "eth0" else f"{base}/{ifname}"


def workload_endpoints(node_name: str | None = None) -> str:
    base = f"{RESOURCES}/workloadendpoints/"
    return f"{base}{node_name}/" if node_name else base


def ippool(cidr: str) -> str:
    return f"{RESOURCES}/ippools/{cidr_key(cidr)}"


IPPOOLS = f"{RESOURCES}/ippools/"


def bgp_peer(name: str) -> str:
    return f"{RESOURCES}/bgppeers/{name}"


def config(name: str) -> str:
    """Lab-wide settings: config('pool'), config('bgp'), config('cluster')."""
    return f"{CONFIG}/{name}"
