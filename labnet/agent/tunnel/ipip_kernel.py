"""The kernel's own `tunl0`, where the kernel has the ipip module (not on this lab machine).

Calico's way: the ipip fallback device `tunl0` (remote any, local any) exists in every network
namespace once the module is loaded; asking for an ipip link named tunl0 loads the module if
needed and leaves us that fallback device. We set its MTU and the /32 tunnel address and bring
it up. Routes `<block> via <node> dev tunl0 onlink` then make the kernel encapsulate towards
the route's gateway, exactly what the userspace datapath reproduces.
The fallback device cannot be deleted, so `stop()` only takes it down and drops its addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from labnet.errors import BadInput, LabnetError
from labnet.settings import IPIP_OVERHEAD

IFNAME = "tunl0"


class KernelTunnelError(LabnetError):
    pass


def _kind(ipr: Any, idx: int) -> str | None:
    info = ipr.get_links(idx)[0].get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


class KernelIpip:
    """tunl0 as the kernel's ipip fallback device, in the current namespace (or `netns`, a path)."""

    mode = "ipip-kernel"

    def __init__(self, local: str, address: str, mtu: int | None = None, *, netns: str | None = None) -> None:
        try:
            self.local = str(ipaddress.IPv4Address(local))
            self.address = str(ipaddress.IPv4Address(address))
        except ValueError as exc:
            raise BadInput(f"{IFNAME}: {exc}") from exc
        self.mtu = mtu
        self.netns = netns
        self.ifname = IFNAME

    def _ipr(self) -> Any:
        from pyroute2 import IPRoute

        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def start(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._ipr() as ipr:
            if self.mtu is None:
                self.mtu = _underlay_mtu(ipr, self.local) - IPIP_OVERHEAD
            if not ipr.link_lookup(ifname=IFNAME):
                try:
                    ipr.link("add", ifname=IFNAME, kind="ipip")
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # EEXIST: loading the module made the fallback tunl0
                        raise KernelTunnelError(f"{IFNAME}: cannot create the ipip device: {exc}") from exc
            found = ipr.link_lookup(ifname=IFNAME)
            if not found:
                raise KernelTunnelError(f"{IFNAME}: missing after creating it")
            idx = found[0]
            kind = _kind(ipr, idx)
            if kind != "ipip":
                raise KernelTunnelError(f"{IFNAME}: exists but is a {kind!r} device, expected 'ipip'")
            ipr.link("set", index=idx, mtu=self.mtu)
            for a in ipr.get_addr(index=idx, family=socket.AF_INET):
                if (a.get("IFA_ADDRESS"), a["prefixlen"]) != (self.address, 32):
                    ipr.addr("del", index=idx, address=a.get("IFA_ADDRESS"), prefixlen=a["prefixlen"])
            if not ipr.get_addr(index=idx, family=socket.AF_INET, address=self.address):
                ipr.addr("add", index=idx, address=self.address, prefixlen=32)
            ipr.link("set", index=idx, state="up")

    def stop(self) -> None:
        with self._ipr() as ipr:
            for idx in ipr.link_lookup(ifname=IFNAME):
                ipr.flush_addr(index=idx)
                ipr.link("set", index=idx, state="down")

    def update_routes(self) -> None:
        """Nothing to mirror: the kernel reads its route table itself."""

    def status(self) -> dict[str, object]:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=IFNAME)
            stats = dict(ipr.get_links(found[0])[0].get("IFLA_STATS64") or {}) if found else {}
        return {
            "ifname": IFNAME, "mode": self.mode, "local": self.local, "address": self.address,
            "mtu": self.mtu,
            "counters": {k: stats.get(k, 0) for k in ("tx_packets", "tx_bytes", "tx_dropped", "tx_errors",
                                                      "rx_packets", "rx_bytes", "rx_dropped", "rx_errors")},
        }

    def __enter__(self) -> KernelIpip:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _underlay_mtu(ipr: Any, local: str) -> int:
    for a in ipr.get_addr(family=socket.AF_INET):
        if a.get("IFA_ADDRESS") == local:
            return int(ipr.get_links(a["index"])[0].get("IFLA_MTU"))
    raise BadInput(f"{IFNAME}: local address {local} is not assigned to any interface in this network namespace")
