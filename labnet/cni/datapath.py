"""The pod datapath, modelled on Calico's CNI plugin.

ADD builds it in two steps so the plugin can overlap them with IPAM: `prepare` creates the
veth pair (no address needed), `finish` adds address, routes, MTU and links up; both go
through labnet.cni.nlbatch (pyroute2's messages, batched). The rarer paths (leftovers of an
earlier attempt, DEL, CHECK) use pyroute2's IPRoute.

  node:  caliXXXXXXXXXXX (MAC ee:ee:ee:ee:ee:ee, up), proxy_arp=1, neigh proxy_delay=0,
         forwarding=1, route_localnet=1;  route `<ip> dev caliX scope link`
  pod:   eth0 `<ip>/32`;  `169.254.1.1 dev eth0 scope link`;  `default via 169.254.1.1 dev eth0`

The pod has no real gateway: the node answers its ARP for 169.254.1.1 by proxy-ARP on the
host veth, which needs the node itself to have a route there (its default route).

With an IPv6 address too (a dual-stack pool), as Calico does:

  node:  caliX accept_dad=0, accept_ra=0, forwarding=1;  route `<ip6>/128 dev caliX`
  pod:   eth0 `<ip6>/128` (nodad);  `default via fe80::ecee:eeff:feee:eeee dev eth0`

fe80::ecee:eeff:feee:eeee is the EUI-64 link-local address the kernel gives the host veth
for its MAC ee:ee:ee:ee:ee:ee, so the node answers the pod's neighbour solicitation for it
as its own address: no proxy needed. accept_dad=0 makes it usable the moment the link is up.

The plugin process runs in the node's network namespace; pod-side work happens after a
setns(2) into the pod's netns (netlink sockets stay bound to the netns they were opened in).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from labnet.cni import nlbatch
from labnet.cni._netlink import IPRoute, NetlinkError

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"
GATEWAY6 = "fe80::ecee:eeff:feee:eeee"  # EUI-64 of HOST_MAC: the host veth's own link-local
CLONE_NEWNET = 0x40000000
SYSCTLS = (
    ("ipv4/conf/{}/proxy_arp", "1"),
    ("ipv4/neigh/{}/proxy_delay", "0"),
    ("ipv4/conf/{}/forwarding", "1"),
    ("ipv4/conf/{}/route_localnet", "1"),
)
SYSCTLS6 = (  # written only for a pod with an IPv6 address
    ("ipv6/conf/{}/addr_gen_mode", "0"),  # EUI-64: the link-local is GATEWAY6 whatever the node's default
    ("ipv6/conf/{}/disable_ipv6", "0"),
    ("ipv6/conf/{}/accept_dad", "0"),
    ("ipv6/conf/{}/accept_ra", "0"),
    ("ipv6/conf/{}/forwarding", "1"),
)
POD_SYSCTLS6 = (("ipv6/conf/{}/disable_ipv6", "0"), ("ipv6/conf/{}/accept_dad", "0"))
RT_SCOPE_LINK = 253
RT_SCOPE_UNIVERSE = 0
SIOCGIFMTU = 0x8921
RTPROT_BOOT = 3  # what `ip route add` and Calico use: no "proto" shown in `ip route`


class DatapathError(Exception):
    pass


PRIMARY_IFNAME = "eth0"  # the attachment that gets the pod's routes; others are reachable, not routed by


def host_veth_name(container_id: str, namespace: str | None = None, pod: str | None = None,
                   ifname: str = PRIMARY_IFNAME) -> str:
    """Calico's name: 'cali' + first 11 hex of sha1('<namespace>.<pod>') (or of the container id).
    Another attachment of the same container (eth1, a second network) adds '/<ifname>' to what
    is hashed ('/' is in no pod name or container id), so attachments never share a veth."""
    key = f"{namespace}.{pod}" if pod else container_id
    if ifname != PRIMARY_IFNAME:
        key += f"/{ifname}"
    return "cali" + hashlib.sha1(key.encode()).hexdigest()[:11]


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block inside the netns at `path`, then come back. setns(2) moves only the calling
    thread, so the CNI server's worker threads can do this concurrently."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _sysctl_write(rel: str, value: str) -> None:
    with open(f"/proc/sys/net/{rel}", "w") as f:
        f.write(value)


def _sysctl_read(rel: str) -> str:
    try:
        with open(f"/proc/sys/net/{rel}") as f:
            return f.read().strip()
    except OSError as exc:
        return f"<{exc.strerror}>"


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def underlay_mtu() -> int:
    """MTU of the node's default-route device (1500 if the node has no default route)."""
    # Fast: the main table from /proc (of this thread's netns: the server's threads setns) and
    # one ioctl, instead of a netlink route dump (~6 ms through pyroute2). Anything unusual
    # (several default devices, one without a device, no /proc) goes the netlink way.
    try:
        with open("/proc/thread-self/net/route") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        devs = {r[0] for r in rows if len(r) >= 8 and r[1] == "00000000" and r[7] == "00000000"}
        if not devs:
            return 1500
        if len(devs) == 1 and "*" not in devs:
            return _dev_mtu(devs.pop())
    except OSError:
        pass
    return _underlay_mtu_netlink()


def _dev_mtu(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # bound to this thread's netns
        ifreq = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si", name.encode(), 0))
    return int(struct.unpack("16si", ifreq)[1])


def _underlay_mtu_netlink() -> int:
    with IPRoute() as ipr:
        for r in ipr.get_default_routes(family=2):
            oif = r.get_attr("RTA_OIF")
            if oif:
                return int(ipr.link("get", index=oif)[0].get_attr("IFLA_MTU"))
    return 1500


@dataclass(frozen=True)
class Endpoint:
    host_ifname: str
    host_mac: str
    container_ifname: str
    container_mac: str
    address: str  # without prefix
    created: bool


def _pod_state(ifname: str, ipr: Any) -> tuple[str, list[str], str] | None:
    """(mac, addresses, state) of the pod interface, through `ipr` (a socket in the pod netns)."""
    idx = _index(ipr, ifname)
    if idx is None:
        return None
    link = ipr.link("get", index=idx)[0]
    addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)]
    return str(link.get_attr("IFLA_ADDRESS")), addrs, str(link.get_attr("IFLA_OPERSTATE"))


@dataclass
class Pair:
    """A veth pair made (or found) before the pod's address is known: the CNI plugin builds it
    while IPAM runs, and finishes it with `finish` (or undoes it with `discard`)."""

    node: nlbatch.Socket  # in the node's netns
    pod: nlbatch.Socket  # opened in the pod's netns (a netlink socket stays bound there)
    host_if: str
    netns: str
    ifname: str
    created: bool  # False: the names were taken (an earlier attempt); `finish` decides what to keep
    index: int = 0  # of a created pair: host end, pod end, and the pod end's MAC
    pod_index: int = 0
    pod_mac: str = ""

    def close(self) -> None:
        self.pod.close()
        self.node.close()


def prepare(host_if: str, netns: str, ifname: str) -> Pair:
    """Create the veth pair (host MAC set, host sysctls written, both ends down), or find the
    names taken. Needs neither the address nor the MTU."""
    node = nlbatch.Socket()
    try:
        with in_netns(netns):
            pod = nlbatch.Socket()
    except BaseException:
        node.close()
        raise
    pair = Pair(node, pod, host_if, netns, ifname, False)
    try:
        # Create first (the usual case, no lookups): EEXIST means a name is taken, by the pair
        # of an earlier attempt (kept if intact) or by leftovers (rebuilt); `finish` tells which.
        _create(pair)
    except BaseException:
        discard(pair)
        raise
    return pair


def _create(pair: Pair) -> bool:
    """Create the pair, read both ends' indexes and the pod end's MAC, write the host sysctls.
    False if a name is taken; `pair.created` says whether this call made it."""
    pod_fd = os.open(pair.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        made, found = pair.node.batch([nlbatch.veth_add(pair.host_if, HOST_MAC, pair.ifname, pod_fd),
                                       nlbatch.link_get(pair.host_if)])
    finally:
        os.close(pod_fd)
    if made.error == errno.EEXIST:
        return False
    made.ok()
    pair.created = True
    pair.index, _ = nlbatch.index_and_mac(found)
    try:
        pair.pod_index, pair.pod_mac = nlbatch.index_and_mac(pair.pod.batch([nlbatch.link_get(pair.ifname)])[0])
    except OSError as exc:
        raise DatapathError(f"{pair.ifname} did not appear in pod netns {pair.netns}: {exc}") from exc
    for rel, value in SYSCTLS:  # /proc/sys/net is the node's: this thread is in the node netns
        _sysctl_write(rel.format(pair.host_if), value)
    return True


def finish(pair: Pair, address: str, mtu: int, address6: str | None = None) -> Endpoint:
    """Address(es), routes, MTU and link states on a prepared pair; an intact pair from an
    earlier ADD of the same container is kept as it is. Closes the pair's sockets."""
    try:
        if not pair.created:
            kept = _keep_or_clear(pair, address, address6)
            if kept is not None:
                pair.close()
                return kept
            if not _create(pair):
                raise DatapathError(f"veth {pair.host_if} or {pair.ifname} came back while being rebuilt")
        # One batch per netns. The kernel runs them in order and answers each; a failure does
        # not stop the rest, but the first one fails the ADD and the pair goes.
        pidx, idx = pair.pod_index, pair.index
        primary = pair.ifname == PRIMARY_IFNAME
        routes = [  # the pod's gateway and default route go with its primary attachment only
            nlbatch.route(GATEWAY, 32, pidx, RT_SCOPE_LINK, RTPROT_BOOT),
            nlbatch.route("0.0.0.0", 0, pidx, RT_SCOPE_UNIVERSE, RTPROT_BOOT, gateway=GATEWAY),
        ] if primary else []
        pod6: list[tuple[str, Any, int, int]] = []
        node6: list[tuple[str, Any, int, int]] = []
        if address6 is not None:
            _ipv6_on(pair)
            pod6 = [nlbatch.addr_add(pidx, address6, 128, pair.ifname)]
            if primary:
                pod6.append(nlbatch.route("::", 0, pidx, RT_SCOPE_UNIVERSE, RTPROT_BOOT, gateway=GATEWAY6))
            node6 = [nlbatch.route(address6, 128, idx, RT_SCOPE_UNIVERSE, RTPROT_BOOT, replace=True)]
        for answer in pair.pod.batch([
            nlbatch.link_up(pidx, mtu, pair.ifname),
            nlbatch.addr_add(pidx, address, 32, pair.ifname),
            *routes,
            *pod6,
        ]) + pair.node.batch([
            nlbatch.link_up(idx, mtu, pair.host_if),
            nlbatch.route(address, 32, idx, RT_SCOPE_LINK, RTPROT_BOOT, replace=True),
            *node6,
        ]):
            answer.ok()
    except BaseException:
        discard(pair)  # nothing half-built stays: the pair goes if this ADD made it
        raise
    pair.close()
    return Endpoint(pair.host_if, HOST_MAC, pair.ifname, pair.pod_mac, address, True)


def _ipv6_on(pair: Pair) -> None:
    """IPv6 on both ends before they come up, without duplicate address detection: the host
    end's link-local (the pod's gateway) must answer at once, not after DAD's second."""
    for rel, value in SYSCTLS6:
        _sysctl_write(rel.format(pair.host_if), value)
    with in_netns(pair.netns):
        for rel, value in POD_SYSCTLS6:
            _sysctl_write(rel.format(pair.ifname), value)


def _keep_or_clear(pair: Pair, address: str, address6: str | None = None) -> Endpoint | None:
    """Names were taken: the Endpoint if it is this pod's intact pair, else remove the leftovers."""
    with IPRoute() as node:
        idx = _index(node, pair.host_if)
        with in_netns(pair.netns):
            pod = IPRoute()
        try:
            if idx is not None:
                state = _pod_state(pair.ifname, pod)
                host = node.link("get", index=idx)[0]
                want = {f"{address}/32"} | ({f"{address6}/128"} if address6 else set())
                if state and want <= set(state[1]) and host.get_attr("IFLA_LINK_NETNSID") is not None:
                    return Endpoint(pair.host_if, str(host.get_attr("IFLA_ADDRESS")), pair.ifname, state[0],
                                    address, False)
                node.link("del", index=idx)  # stale: from an older attempt, rebuild it
            stale = _index(pod, pair.ifname)
            if stale is not None:
                pod.link("del", index=stale)
        finally:
            pod.close()
    return None


def discard(pair: Pair) -> None:
    """Undo `prepare` (the ADD failed): remove the pair if this ADD made it; close its sockets."""
    try:
        if pair.created:
            with IPRoute() as node:
                idx = _index(node, pair.host_if)
                if idx is not None:
                    node.link("del", index=idx)  # the pod end goes with it
    finally:
        pair.close()


def setup(host_if: str, netns: str, ifname: str, address: str, mtu: int, address6: str | None = None) -> Endpoint:
    """Create (or find intact) the veth pair, addresses, routes and sysctls for one pod."""
    return finish(prepare(host_if, netns, ifname), address, mtu, address6)


def teardown(host_if: str, netns: str | None, ifname: str) -> bool:
    """Remove the pod's veth pair (its node route goes with it). True if something was removed."""
    removed = False
    if netns and os.path.exists(netns):
        try:
            with in_netns(netns), IPRoute() as ipr:
                idx = _index(ipr, ifname)
                if idx is not None:
                    ipr.link("del", index=idx)
                    removed = True
        except OSError:
            pass  # not a netns any more (its bind mount went away): fall through to the node side
    with IPRoute() as node:
        idx = _index(node, host_if)
        if idx is not None:
            try:
                node.link("del", index=idx)
                removed = True
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: the pod side took it with it meanwhile
                    raise
    return removed


def check(host_if: str, netns: str, ifname: str, address: str, address6: str | None = None) -> list[str]:
    """Every difference between the kernel and the expected datapath, as 'what: expected X, found Y'."""
    problems: list[str] = []
    with IPRoute() as node:
        idx = _index(node, host_if)
        if idx is None:
            return [f"host veth {host_if}: expected present, found absent"]
        link = node.link("get", index=idx)[0]
        if link.get_attr("IFLA_ADDRESS") != HOST_MAC:
            problems.append(f"host veth {host_if} MAC: expected {HOST_MAC}, found {link.get_attr('IFLA_ADDRESS')}")
        if not link["flags"] & 1:
            problems.append(f"host veth {host_if}: expected up, found down")
        problems += _sysctl_problems(SYSCTLS, host_if)
        routes = [r for r in node.get_routes(family=2, oif=idx)
                  if r.get_attr("RTA_DST") == address and r["dst_len"] == 32]
        if not any(r["scope"] == RT_SCOPE_LINK for r in routes):
            problems.append(f"node route: expected '{address} dev {host_if} scope link', found none")
        if address6 is not None:
            problems += _check_host6(node, host_if, idx, address6)
    with in_netns(netns), IPRoute() as ipr:
        pidx = _index(ipr, ifname)
        if pidx is None:
            return [*problems, f"pod {ifname} in {netns}: expected present, found absent"]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=pidx, family=2)]
        if f"{address}/32" not in addrs:
            problems.append(f"pod {ifname} address: expected {address}/32, found {addrs}")
        routes = ipr.get_routes(family=2, oif=pidx, table=254)
        if ifname != PRIMARY_IFNAME:
            return problems
        if not any(r.get_attr("RTA_DST") == GATEWAY and r["dst_len"] == 32 and r["scope"] == RT_SCOPE_LINK
                   for r in routes):
            problems.append(f"pod route: expected '{GATEWAY} dev {ifname} scope link', found none")
        if not any(r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == GATEWAY for r in routes):
            problems.append(f"pod route: expected 'default via {GATEWAY} dev {ifname}', found none")
        if address6 is not None:
            problems += _check_pod6(ipr, ifname, pidx, address6)
    return problems


def _sysctl_problems(pairs: tuple[tuple[str, str], ...], ifname: str, what: str = "sysctl") -> list[str]:
    """Each of `pairs` (a per-interface sysctl and its value) that the calling thread's netns differs on."""
    out = []
    for rel, value in pairs:
        got = _sysctl_read(rel.format(ifname))
        if got != value:
            out.append(f"{what} net.{rel.format(ifname).replace('/', '.')}: expected {value}, found {got}")
    return out


def _check_host6(node: Any, host_if: str, idx: int, address6: str) -> list[str]:
    problems = _sysctl_problems(SYSCTLS6, host_if)
    lls = [a.get_attr("IFA_ADDRESS") for a in node.get_addr(index=idx, family=10)]
    if GATEWAY6 not in lls:
        problems.append(f"host veth {host_if} link-local: expected {GATEWAY6}, found {lls or 'none'}")
    if not any(r.get_attr("RTA_DST") == address6 and r["dst_len"] == 128
               for r in node.get_routes(family=10, oif=idx)):
        problems.append(f"node route: expected '{address6} dev {host_if}', found none")
    return problems


def _check_pod6(ipr: Any, ifname: str, pidx: int, address6: str) -> list[str]:
    """The pod's side; the calling thread is in the pod's netns (its /proc/sys/net is the pod's)."""
    problems = _sysctl_problems(POD_SYSCTLS6, ifname, "pod sysctl")
    addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=pidx, family=10)]
    if f"{address6}/128" not in addrs:
        problems.append(f"pod {ifname} address: expected {address6}/128, found {addrs}")
    if ifname == PRIMARY_IFNAME and not any(
            r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == GATEWAY6
            for r in ipr.get_routes(family=10, oif=pidx, table=254)):
        problems.append(f"pod route: expected 'default via {GATEWAY6} dev {ifname}', found none")
    return problems
