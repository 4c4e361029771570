"""Node tunnels: `tunl0` for IPIP (kernel device or userspace datapath) and `vxlan.calico`.

Everything acts on the CURRENT network namespace (the agent runs inside its node's
namespaces); the vxlan functions, KernelIpip and kernel_has_ipip also take `netns=<path>`.

IPIP (the seed's tunl0 and its routes)::

    tun = start_ipip(local="10.20.30.73", address="10.100.163.128")   # mtu default: underlay - 20
    ...  # then install `<block> via <node> dev tunl0 proto bird onlink`; the tunnel follows the
    ...  # kernel route table (a netlink monitor mirrors it; tun.update_routes() forces a re-read)
    tun.status()   # {"ifname", "mode", "local", "address", "mtu", "counters": {...}, ...}
    tun.stop()     # userspace: removes tunl0 (and its routes); kernel: down + addresses flushed

`start_ipip` picks the kernel's ipip device when the kernel has one (detect.ipip_mode, or
LABNET_IPIP=kernel|userspace), else the userspace datapath as threads of the calling process;
with `persist=True` (the agent's choice) the TUN device outlives the process, so tunl0 and its
routes survive a killed agent and the restarted one attaches to it again (adopted). By hand: `python -m labnet.agent.tunnel.ipip_user --local A --address T
[--mtu M] [--status-file F]`, or `run_ipip(...)` (blocks; SIGTERM/SIGINT stop it and remove
tunl0, SIGHUP re-reads routes, SIGUSR1 writes the status file).

VXLAN (Calico's vxlan.calico)::

    mac = ensure_vxlan(local, address)            # vxlan.calico, VNI 4096, port 4789, MTU underlay - 50
    sync_vxlan([Vtep(node, underlay_ip, tunnel_ip, mac, blocks), ...])   # FDB, neigh, routes; idempotent

labnet.testing.tunnel_testbed builds a two-node Calico-style lab for the tunnel tests and bench/tunnel.py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from labnet.agent.tunnel.detect import ipip_mode, kernel_has_ipip
    from labnet.agent.tunnel.ipip_kernel import KernelIpip
    from labnet.agent.tunnel.ipip_user import Counters, IpipDatapath, TunnelError, run_ipip
    from labnet.agent.tunnel.vxlan import SyncResult, Vtep, ensure_vxlan, remove_vxlan, sync_vxlan, vtep_mac

# Loaded on first use, so `python -m labnet.agent.tunnel.ipip_user` does not import itself twice.
_LAZY = {
    "ipip_mode": "detect", "kernel_has_ipip": "detect", "KernelIpip": "ipip_kernel",
    "Counters": "ipip_user", "IpipDatapath": "ipip_user", "TunnelError": "ipip_user", "run_ipip": "ipip_user",
    "SyncResult": "vxlan", "Vtep": "vxlan", "ensure_vxlan": "vxlan", "remove_vxlan": "vxlan",
    "sync_vxlan": "vxlan", "vtep_mac": "vxlan",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Tunnel(Protocol):
    mode: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def update_routes(self) -> None: ...
    def status(self) -> dict[str, object]: ...


def start_ipip(local: str, address: str, mtu: int | None = None, *, mode: str | None = None,
               persist: bool = False) -> Tunnel:
    """Bring up tunl0 in the current namespace, kernel or userspace (mode: "kernel"|"userspace").

    Userspace: the datapath runs as threads of the calling process; with `persist` its TUN
    device (and the routes through it) outlives the process and is adopted on the next start."""
    from labnet.agent.tunnel.detect import ipip_mode
    from labnet.agent.tunnel.ipip_kernel import KernelIpip
    from labnet.agent.tunnel.ipip_user import IpipDatapath

    chosen = mode or ipip_mode()
    if chosen not in ("kernel", "userspace"):
        raise ValueError(f"start_ipip: mode must be 'kernel' or 'userspace', got {chosen!r}")
    tun: Tunnel
    if chosen == "kernel":
        tun = KernelIpip(local, address, mtu)
    else:
        tun = IpipDatapath(local, address, mtu, persist=persist)
    tun.start()
    return tun


__all__ = [
    "Counters", "IpipDatapath", "KernelIpip", "SyncResult", "Tunnel", "TunnelError", "Vtep",
    "ensure_vxlan", "ipip_mode", "kernel_has_ipip", "remove_vxlan", "run_ipip", "start_ipip", "sync_vxlan",
    "vtep_mac",
]
