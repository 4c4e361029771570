"""BGP address autodetection, Calico's IP_AUTODETECTION_METHOD.

Pure functions over the data of `ip -j addr` and `ip -j route get` (unit-tested on fixtures);
`detect()` runs the commands in the current namespace.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from labnet.agent.config import parse_address_method
from labnet.errors import BadInput, LabnetError

# Calico's default skip list for first-found, plus our own device names.
SKIP_PREFIXES = ("lo", "cali", "tunl", "vxlan", "docker", "veth", "kube-ipvs", "virbr", "cni", "flannel",
                 "br-")


class DetectError(LabnetError):
    """No address matched the configured method (the message says what was looked at)."""


@dataclass(frozen=True)
class Detected:
    address: ipaddress.IPv4Interface  # e.g. 10.20.30.73/24
    ifname: str
    mtu: int
    address6: ipaddress.IPv6Interface | None = None  # the global IPv6 address on the same interface
    link_local6: ipaddress.IPv6Address | None = None  # that interface's link-local address (a BGP next hop)

    @property
    def ip6(self) -> str | None:
        return str(self.address6.ip) if self.address6 is not None else None

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.address.network


def _candidates(links: Sequence[dict[str, Any]]) -> list[Detected]:
    out: list[Detected] = []
    for link in links:
        name = str(link.get("ifname", ""))
        for a in link.get("addr_info") or []:
            if a.get("family") != "inet" or a.get("scope", "global") == "host":
                continue
            out.append(Detected(ipaddress.IPv4Interface(f"{a['local']}/{a.get('prefixlen', 32)}"), name,
                                int(link.get("mtu", 1500))))
    return out


def _is_up(link: dict[str, Any]) -> bool:
    flags = link.get("flags") or []
    return "UP" in flags or link.get("operstate") == "UP"


def _summary(links: Sequence[dict[str, Any]]) -> str:
    parts = [f"{c.ifname}={c.address}" for c in _candidates(links)]
    return ", ".join(parts) or "no IPv4 addresses at all"


def first_found(links: Sequence[dict[str, Any]]) -> Detected:
    for link in links:
        name = str(link.get("ifname", ""))
        if name.startswith(SKIP_PREFIXES) or not _is_up(link):
            continue
        found = _candidates([link])
        if found:
            return found[0]
    raise DetectError(f"bgp_address first-found: no up interface with an IPv4 address outside "
                      f"{', '.join(p + '*' for p in SKIP_PREFIXES)} (seen: {_summary(links)})")


def by_interface(links: Sequence[dict[str, Any]], pattern: str) -> Detected:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"bgp_address interface={pattern}: bad regular expression: {exc}") from exc
    for link in links:
        if rx.fullmatch(str(link.get("ifname", ""))):
            found = _candidates([link])
            if found:
                return found[0]
    raise DetectError(f"bgp_address interface={pattern}: no interface matching it has an IPv4 address "
                      f"(seen: {_summary(links)})")


def by_cidr(links: Sequence[dict[str, Any]], cidr: str) -> Detected:
    net = ipaddress.IPv4Network(cidr, strict=False)
    for c in _candidates(links):
        if c.address.ip in net:
            return c
    raise DetectError(f"bgp_address cidr={cidr}: no address inside it (seen: {_summary(links)})")


def by_address(links: Sequence[dict[str, Any]], address: str) -> Detected:
    want = ipaddress.IPv4Interface(address)
    for c in _candidates(links):
        if c.address.ip == want.ip:
            return c
    raise DetectError(f"bgp_address {address}: this node has no such address (seen: {_summary(links)})")


def by_route(links: Sequence[dict[str, Any]], route: Sequence[dict[str, Any]], target: str) -> Detected:
    """can-reach: the source address of the route to `target` (from `ip -j route get`)."""
    if not route:
        raise DetectError(f"bgp_address can-reach={target}: no route to {target}")
    src = route[0].get("prefsrc")
    dev = route[0].get("dev")
    for c in _candidates(links):
        if src and str(c.address.ip) == src:
            return c
    for c in _candidates(links):
        if dev and c.ifname == dev:
            return c
    raise DetectError(f"bgp_address can-reach={target}: route leaves via {dev} src {src}, "
                      f"which holds no usable address (seen: {_summary(links)})")


# `ip -j addr` flags of an address that is not (yet, or no longer) the node's to route through
_UNSTABLE = {"tentative", "dadfailed", "deprecated", "temporary"}


def ipv6_on(links: Sequence[dict[str, Any]], ifname: str) -> ipaddress.IPv6Interface | None:
    """The first global IPv6 address of `ifname` (the node's IPv6 BGP next hop): Calico's IPv6
    autodetection, kept to the interface the IPv4 method chose."""
    for link in links:
        if link.get("ifname") != ifname:
            continue
        for a in link.get("addr_info") or []:
            if a.get("family") == "inet6" and a.get("scope") == "global" and not _UNSTABLE & set(a):
                return ipaddress.IPv6Interface(f"{a['local']}/{a.get('prefixlen', 128)}")
    return None


def choose(method: str, links: Sequence[dict[str, Any]],
           route_get: Callable[[str], list[dict[str, Any]]] | None = None) -> Detected:
    found = _choose(method, links, route_get)
    return replace(found, address6=ipv6_on(links, found.ifname), link_local6=link_local_on(links, found.ifname))


def link_local_on(links: Sequence[dict[str, Any]], ifname: str) -> ipaddress.IPv6Address | None:
    for link in links:
        if link.get("ifname") == ifname:
            for a in link.get("addr_info") or []:
                if a.get("family") == "inet6" and a.get("scope") == "link" and not _UNSTABLE & set(a):
                    return ipaddress.IPv6Address(a["local"])
    return None


def _choose(method: str, links: Sequence[dict[str, Any]],
            route_get: Callable[[str], list[dict[str, Any]]] | None = None) -> Detected:
    kind, arg = parse_address_method(method)
    if kind == "first-found":
        return first_found(links)
    if kind == "interface":
        return by_interface(links, arg)
    if kind == "cidr":
        return by_cidr(links, arg)
    if kind == "address":
        return by_address(links, arg)
    assert route_get is not None, "can-reach needs a route lookup"
    return by_route(links, route_get(arg), arg)


def _ip_json(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise DetectError(f"`ip -j {' '.join(args)}` failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout or "[]")
    return data if isinstance(data, list) else []


def detect(method: str) -> Detected:
    """Run the method against this network namespace."""
    return choose(method, _ip_json("addr"), lambda ip: _ip_json("route", "get", ip))
