"""Make the main table's `proto bird` routes match the agent's desired set (pyroute2, netlink).

The agent owns exactly the proto-12 routes of the main table: what it wants is replaced in,
what it no longer wants is deleted. A route of another protocol for the same destination
(the admin's, the kernel's) is never overwritten: that is reported as a conflict instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from labnet.agent import rtnl
from labnet.agent.routes import PROTO_BIRD, DesiredRoute, Net, OwnRoute, resolve_next_hop
from labnet.bgp.codec import prefix_key

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 4
IPV4 = (socket.AF_INET,)
DUAL = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class KernelRoute:
    dst: Net
    kind: str
    gateway: str | None
    oif: int | None
    onlink: bool


@dataclass
class ReconcileResult:
    added: list[str] = field(default_factory=list)  # replaced in (new or changed)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line each: route and the kernel's reason
    kept: list[str] = field(default_factory=list)  # stale routes kept on purpose (graceful restart)
    # learned prefixes the kernel already routes otherwise (e.g. the ToR advertising our own LAN):
    # the connected/admin route wins, as with BIRD, and that is not a fault
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _dst(r: rtnl.Route) -> Net:
    return ipaddress.ip_network(f"{r.dst}/{r.dst_len}")


def _kernel_route(r: rtnl.Route) -> KernelRoute:
    kind = "blackhole" if r.type == RTN_BLACKHOLE else "unicast" if r.type == RTN_UNICAST else str(r.type)
    return KernelRoute(_dst(r), kind, r.gateway, r.oif, bool(r.flags & RTNH_F_ONLINK))


def _dump(families: tuple[int, ...]) -> list[rtnl.Route]:
    return [r for family in families for r in rtnl.dump_routes(family, table=RT_TABLE_MAIN)]


def read_routes(families: tuple[int, ...] = IPV4) -> tuple[dict[Net, KernelRoute], set[Net], list[OwnRoute]]:
    """(our proto-bird routes by destination, destinations that other protocols hold at metric
    0 (IPv6's kernel routes carry metric 256: it counts the same there), the node's own unicast
    routes: what a next hop that is not on-link resolves through)."""
    ours: dict[Net, KernelRoute] = {}
    foreign: set[Net] = set()
    own: list[OwnRoute] = []
    for r in _dump(families):
        if r.proto == PROTO_BIRD:
            ours[_dst(r)] = _kernel_route(r)
            continue
        if not r.priority or (r.family == socket.AF_INET6 and r.priority <= 1024):
            foreign.add(_dst(r))
        if r.type == RTN_UNICAST and not r.flags & RTNH_F_ONLINK:
            own.append(OwnRoute(_dst(r), ipaddress.ip_address(r.gateway) if r.gateway else None, r.oif))
    return ours, foreign, own


class _Writer:
    """pyroute2 for the writes, opened at the first one: most passes change nothing."""

    def __init__(self, ipr: Any) -> None:
        self.ipr, self.own = ipr, False

    def route(self, *args: Any, **kw: Any) -> Any:
        if self.ipr is None:
            from pyroute2 import IPRoute

            self.ipr, self.own = IPRoute(), True
        return self.ipr.route(*args, **kw)

    def close(self) -> None:
        if self.own:
            self.ipr.close()


def _ifindex(dev: str) -> int | None:
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        return None


def _matches(have: KernelRoute, want: DesiredRoute, oif: int | None) -> bool:
    if have.kind != want.kind:
        return False
    if want.kind == "blackhole":
        return True
    return (have.gateway == (str(want.gateway) if want.gateway else None) and have.onlink == want.onlink
            and (oif is None or have.oif == oif))


def _family(dst: Net) -> int:
    return socket.AF_INET if dst.version == 4 else socket.AF_INET6


def reconcile(desired: Mapping[Net, DesiredRoute], *, keep_unicast: bool = False,
              ipr: Any = None, families: tuple[int, ...] = IPV4) -> ReconcileResult:
    """One pass. keep_unicast: do not delete learned routes (a graceful restart is in progress).
    `ipr`: a pyroute2 socket for the writes (else one is opened at the first write). The reads
    go through rtnl in the calling thread's network namespace, which must be the socket's.
    `families`: which route tables to own (DUAL on a dual-stack node)."""
    from pyroute2.netlink.exceptions import NetlinkError

    res = ReconcileResult()
    ipr = _Writer(ipr)
    oifs: dict[str, int | None] = {}  # device -> index: one lookup per device, not per route
    try:
        have, foreign, node_routes = read_routes(families)
        for dst, kr in sorted(have.items(), key=lambda x: prefix_key(x[0])):
            if dst in desired:
                continue
            if keep_unicast and kr.kind == "unicast":
                res.kept.append(str(dst))
                continue
            try:
                ipr.route("del", dst=str(dst), table=RT_TABLE_MAIN, proto=PROTO_BIRD, family=_family(dst),
                          type=RTN_BLACKHOLE if kr.kind == "blackhole" else RTN_UNICAST)
                res.removed.append(f"{dst} ({kr.kind})")
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    res.errors.append(f"delete {dst}: {exc}")
        for dst, want in sorted(desired.items(), key=lambda x: prefix_key(x[0])):
            oif: int | None = None
            if want.dev:
                if want.dev not in oifs:
                    oifs[want.dev] = _ifindex(want.dev)
                oif = oifs[want.dev]
                if oif is None:
                    res.errors.append(f"{want}: device {want.dev} does not exist")
                    continue
            if want.kind == "unicast" and want.gateway is not None and not want.dev and not want.onlink:
                via = resolve_next_hop(want.gateway, node_routes)
                if via is None:
                    res.errors.append(f"{want}: next hop {want.gateway} is unreachable: no route of this node "
                                      "leads there (not on a connected subnet, no default route)")
                    if dst in have:  # resolved before (through a route since deleted): it goes
                        with contextlib.suppress(NetlinkError):
                            ipr.route("del", dst=str(dst), table=RT_TABLE_MAIN, proto=PROTO_BIRD, type=RTN_UNICAST,
                                      family=_family(dst))
                            res.removed.append(f"{dst} (next hop unreachable)")
                    continue
                # as BIRD's `gateway recursive`: through the node's own route to the next hop
                want, oif = DesiredRoute(dst, gateway=via.gateway or want.gateway), via.oif
            cur = have.get(dst)
            if cur is not None and _matches(cur, want, oif):
                continue
            if cur is None and dst in foreign:
                res.skipped.append(f"{want}: a route of another protocol holds {dst}")
                continue
            spec: dict[str, Any] = {"dst": str(dst), "table": RT_TABLE_MAIN, "proto": PROTO_BIRD,
                                    "family": _family(dst)}
            if want.kind == "blackhole":
                spec["type"] = RTN_BLACKHOLE
            else:
                spec["type"] = RTN_UNICAST
                if want.gateway is not None:
                    spec["gateway"] = str(want.gateway)
                if oif is not None:
                    spec["oif"] = oif
                if want.onlink:
                    spec["flags"] = RTNH_F_ONLINK
            try:
                if cur is not None and cur.kind != want.kind:
                    ipr.route("del", dst=str(dst), table=RT_TABLE_MAIN, proto=PROTO_BIRD, family=_family(dst),
                              type=RTN_BLACKHOLE if cur.kind == "blackhole" else RTN_UNICAST)
                ipr.route("replace", **spec)
                res.added.append(str(want))
            except NetlinkError as exc:
                res.errors.append(f"{want}: {exc}")
    finally:
        ipr.close()
    return res


def remove_all(families: tuple[int, ...] = IPV4) -> ReconcileResult:
    """Delete every proto-bird route of the main table (clean shutdown)."""
    return reconcile({}, families=families)


def programmed(extra_proto: int | None = None, extra_dev: str | None = None, ipr: Any = None,
               families: tuple[int, ...] = IPV4, extra_devs: tuple[str, ...] = ()) -> list[str]:
    """Our routes as `ip route` would print them (for status): proto bird, plus the routes of
    `extra_proto` through `extra_dev` (the VXLAN routes tunnel.sync_vxlan programs, proto 80;
    `extra_devs`: more such devices, vxlan-v6.calico)."""
    from pyroute2 import IPRoute

    out = []
    devs = {extra_dev, *extra_devs} - {None}
    with _socket(ipr, IPRoute) as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        for r in _dump(families):
            proto = r.proto
            kr = _kernel_route(r)
            dev = names.get(kr.oif) if kr.oif is not None else None
            if proto != PROTO_BIRD and not (proto == extra_proto and dev in devs):
                continue
            name = "bird" if proto == PROTO_BIRD else str(proto)
            if kr.kind == "blackhole":
                out.append(f"blackhole {kr.dst} proto {name}")
                continue
            s = str(kr.dst)
            if kr.gateway:
                s += f" via {kr.gateway}"
            if dev is not None:
                s += f" dev {dev}"
            s += f" proto {name}" + (" onlink" if kr.onlink else "")
            out.append(s)
    return sorted(out, key=lambda x: prefix_key(ipaddress.ip_network(x.split()[1] if x.startswith("blackhole")
                                                                     else x.split()[0])))


POD_GATEWAY = "169.254.1.1"


def pod_gateway_problem() -> str | None:
    """The seed's proxy-ARP requirement 2: the node needs a route to 169.254.1.1 (normally its
    default route), else the kernel will not proxy-answer the pods' ARP for their gateway."""
    try:
        found = rtnl.route_to(POD_GATEWAY)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        if found.type == RTN_UNICAST:
            return None
        reason = "no route"
    return (f"no route to {POD_GATEWAY} ({reason}; the node has no default route): proxy-ARP on the "
            f"cali veths cannot answer the pods' ARP for their gateway {POD_GATEWAY}, so pods reach nothing")


@contextlib.contextmanager
def _socket(ipr: Any, factory: Any) -> Iterator[Any]:
    """The caller's netlink socket (left open), else a new one closed afterwards: the agent's
    kernel step opens one socket for all its requests."""
    if ipr is not None:
        yield ipr
        return
    with factory() as own:
        yield own
