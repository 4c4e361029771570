"""Does this kernel do IPIP itself? Decides between the kernel tunl0 and the userspace one."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Literal

PROBE_IFNAME = "lnet-ipipprobe"
PROBE_REMOTE = "192.0.2.1"  # TEST-NET-1; a distinct remote keeps the probe from clashing with tunl0


def kernel_has_ipip(*, netns: str | None = None) -> bool:
    """True if the kernel can make ipip links in this namespace (or `netns`, a path).

    Cheap signs first (module loaded, or tunl0 already an ipip device), then a throwaway ipip
    link, which also loads the module where modprobe can.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if Path("/sys/module/ipip").exists():
        return True
    ipr: Any = IPRoute(netns=netns) if netns else IPRoute()
    with ipr:
        for idx in ipr.link_lookup(ifname="tunl0"):
            info = ipr.get_links(idx)[0].get("IFLA_LINKINFO")
            if info and info.get("IFLA_INFO_KIND") == "ipip":
                return True
        name = PROBE_IFNAME
        try:
            ipr.link("add", ifname=name, kind="ipip", ipip_remote=PROBE_REMOTE)
        except NetlinkError as exc:
            # EOPNOTSUPP: "Unknown device type"; EEXIST: an equal ipip tunnel exists, so it works
            return exc.code == errno.EEXIST
        for idx in ipr.link_lookup(ifname=name):
            ipr.link("del", index=idx)
        return True


def ipip_mode(*, netns: str | None = None) -> Literal["kernel", "userspace"]:
    """`LABNET_IPIP=kernel|userspace` forces a mode; otherwise ask the kernel."""
    forced = os.environ.get("LABNET_IPIP", "")
    if forced in ("kernel", "userspace"):
        return forced  # type: ignore[return-value]
    return "kernel" if kernel_has_ipip(netns=netns) else "userspace"
