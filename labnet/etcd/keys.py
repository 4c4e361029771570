"""Key layout: Calico's etcd v3 layout under labnet's own prefix. The one place keys are built."""

from __future__ import annotations

PREFIX = "/labnet"
CALICO = f"{PREFIX}/calico"
CONFIG = f"{PREFIX}/config"  # lab-wide settings written by `up` (the seed's ConfigMap)

IPAM = f"{CALICO}/ipam/v2"
RESOURCES = f"{CALICO}/resources/v3/projectcalico.org"


def cidr_key(cidr: str) -> str:
    """'10.100.163.128/26' -> '10.100.163.128-26' (Calico's form in keys)."""
    return cidr.replace("/", "-")


def cidr_from_key(part: str) -> str:
    return part.replace("-", "/")


def block(cidr: str) -> str:
    return f"{IPAM}/assignment/ipv4/block/{cidr_key(cidr)}"


BLOCKS = f"{IPAM}/assignment/ipv4/block/"


def affinity(node: str, cidr: str) -> str:
    return f"{IPAM}/host/{node}/ipv4/block/{cidr_key(cidr)}"


def affinities(node: str | None = None) -> str:
    return f"{IPAM}/host/{node}/ipv4/block/" if node else f"{IPAM}/host/"


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
