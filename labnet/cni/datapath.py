"""The pod datapath, modelled on Calico's CNI plugin (netlink through pyroute2).

  node:  caliXXXXXXXXXXX (MAC ee:ee:ee:ee:ee:ee, up), proxy_arp=1, neigh proxy_delay=0,
         forwarding=1, route_localnet=1;  route `<ip> dev caliX scope link`
  pod:   eth0 `<ip>/32`;  `169.254.1.1 dev eth0 scope link`;  `default via 169.254.1.1 dev eth0`

The pod has no real gateway: the node answers its ARP for 169.254.1.1 by proxy-ARP on the
host veth, which needs the node itself to have a route there (its default route).

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

from labnet.cni._netlink import IPRoute, NetlinkError

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"
CLONE_NEWNET = 0x40000000
SYSCTLS = (
    ("ipv4/conf/{}/proxy_arp", "1"),
    ("ipv4/neigh/{}/proxy_delay", "0"),
    ("ipv4/conf/{}/forwarding", "1"),
    ("ipv4/conf/{}/route_localnet", "1"),
)
RT_SCOPE_LINK = 253
RT_SCOPE_UNIVERSE = 0
SIOCGIFMTU = 0x8921
RTPROT_BOOT = 3  # what `ip route add` and Calico use: no "proto" shown in `ip route`


class DatapathError(Exception):
    pass


def host_veth_name(container_id: str, namespace: str | None = None, pod: str | None = None) -> str:
    """Calico's name: 'cali' + first 11 hex of sha1('<namespace>.<pod>') (or of the container id)."""
    key = f"{namespace}.{pod}" if pod else container_id
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
    addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)]
    return str(link.get_attr("IFLA_ADDRESS")), addrs, str(link.get_attr("IFLA_OPERSTATE"))


def setup(host_if: str, netns: str, ifname: str, address: str, mtu: int) -> Endpoint:
    """Create (or find intact) the veth pair, addresses, routes and sysctls for one pod."""
    with IPRoute() as node:
        # One pod-side socket for the whole setup: a netlink socket stays bound to the netns it
        # was opened in, so it works from here after the thread has gone back to the node's.
        with in_netns(netns):
            pod = IPRoute()
        try:
            # Create first (the usual case, no lookups): EEXIST means a name is taken, by the
            # pair of an earlier attempt (intact: done) or by leftovers (removed, then create).
            if not _add_pair(node, netns, host_if, ifname, mtu, exist_ok=True):
                idx = _index(node, host_if)
                if idx is not None:
                    state = _pod_state(ifname, pod)
                    host = node.link("get", index=idx)[0]
                    if state and f"{address}/32" in state[1] and host.get_attr("IFLA_LINK_NETNSID") is not None:
                        return Endpoint(host_if, str(host.get_attr("IFLA_ADDRESS")), ifname, state[0], address,
                                        False)
                    node.link("del", index=idx)  # stale: from an older attempt, rebuild it
                stale = _index(pod, ifname)
                if stale is not None:
                    pod.link("del", index=stale)
                _add_pair(node, netns, host_if, ifname, mtu, exist_ok=False)
            pod_mac = _configure(node, pod, host_if, netns, ifname, address)
        finally:
            pod.close()
    return Endpoint(host_if, HOST_MAC, ifname, pod_mac, address, True)


def _add_pair(node: Any, netns: str, host_if: str, ifname: str, mtu: int, exist_ok: bool) -> bool:
    """Create the veth pair (host MAC set at creation); False on EEXIST if `exist_ok`."""
    pod_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        node.link("add", ifname=host_if, kind="veth", mtu=mtu, address=HOST_MAC,
                  peer={"ifname": ifname, "net_ns_fd": pod_fd, "mtu": mtu})
    except NetlinkError as exc:
        if exist_ok and exc.code == errno.EEXIST:
            return False
        raise
    finally:
        os.close(pod_fd)
    return True


def _configure(node: Any, pod: Any, host_if: str, netns: str, ifname: str, address: str) -> str:
    """Sysctls, addresses, routes and link states of a fresh pair; the pod interface's MAC."""
    idx = _index(node, host_if)
    if idx is None:
        raise DatapathError(f"veth {host_if} vanished right after creation")
    for rel, value in SYSCTLS:  # /proc/sys/net is the node's: this thread is in the node netns
        _sysctl_write(rel.format(host_if), value)
    try:  # index and MAC in one request (setting the link up does not change its MAC)
        link = pod.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        raise DatapathError(f"{ifname} did not appear in pod netns {netns}: {exc}") from exc
    pidx = int(link["index"])
    pod.link("set", index=pidx, state="up")
    pod.addr("add", index=pidx, address=address, prefixlen=32)
    pod.route("add", dst=f"{GATEWAY}/32", oif=pidx, scope=RT_SCOPE_LINK, proto=RTPROT_BOOT)
    pod.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=pidx, proto=RTPROT_BOOT)
    node.link("set", index=idx, state="up")
    node.route("replace", dst=f"{address}/32", oif=idx, scope=RT_SCOPE_LINK, proto=RTPROT_BOOT)
    return str(link.get_attr("IFLA_ADDRESS"))


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


def check(host_if: str, netns: str, ifname: str, address: str) -> list[str]:
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
        for rel, value in SYSCTLS:
            got = _sysctl_read(rel.format(host_if))
            if got != value:
                problems.append(f"sysctl net.{rel.format(host_if).replace('/', '.')}: expected {value}, found {got}")
        routes = [r for r in node.get_routes(family=2, oif=idx)
                  if r.get_attr("RTA_DST") == address and r["dst_len"] == 32]
        if not any(r["scope"] == RT_SCOPE_LINK for r in routes):
            problems.append(f"node route: expected '{address} dev {host_if} scope link', found none")
    with in_netns(netns), IPRoute() as ipr:
        pidx = _index(ipr, ifname)
        if pidx is None:
            return [*problems, f"pod {ifname} in {netns}: expected present, found absent"]
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=pidx, family=2)]
        if f"{address}/32" not in addrs:
            problems.append(f"pod {ifname} address: expected {address}/32, found {addrs}")
        routes = ipr.get_routes(family=2, oif=pidx, table=254)
        if not any(r.get_attr("RTA_DST") == GATEWAY and r["dst_len"] == 32 and r["scope"] == RT_SCOPE_LINK
                   for r in routes):
            problems.append(f"pod route: expected '{GATEWAY} dev {ifname} scope link', found none")
        if not any(r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == GATEWAY for r in routes):
            problems.append(f"pod route: expected 'default via {GATEWAY} dev {ifname}', found none")
    return problems
