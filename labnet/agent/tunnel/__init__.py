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
LABNET_IPIP=kernel|userspace), else the userspace datapath as threads of the calling process,
or, with `run_dir=`, as its own adoptable process (ipip_proc.IpipProcess: the agent's choice,
so tunl0 survives a killed agent). By hand: `python -m labnet.agent.tunnel.ipip_user --local A --address T
[--mtu M] [--status-file F]`, or `run_ipip(...)` (blocks; SIGTERM/SIGINT stop it and remove
tunl0, SIGHUP re-reads routes, SIGUSR1 writes the status file).

VXLAN (Calico's vxlan.calico)::

    mac = ensure_vxlan(local, address)            # vxlan.calico, VNI 4096, port 4789, MTU underlay - 50
    sync_vxlan([Vtep(node, underlay_ip, tunnel_ip, mac, blocks), ...])   # FDB, neigh, routes; idempotent

labnet.testing.tunnel_testbed builds a two-node Calico-style lab for the tunnel tests and bench/tunnel.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from labnet.agent.tunnel.detect import ipip_mode, kernel_has_ipip
    from labnet.agent.tunnel.ipip_kernel import KernelIpip
    from labnet.agent.tunnel.ipip_proc import IpipProcess
    from labnet.agent.tunnel.ipip_user import Counters, IpipDatapath, TunnelError, run_ipip
    from labnet.agent.tunnel.vxlan import SyncResult, Vtep, ensure_vxlan, remove_vxlan, sync_vxlan, vtep_mac

# Loaded on first use, so `python -m labnet.agent.tunnel.ipip_user` does not import itself twice.
_LAZY = {
    "ipip_mode": "detect", "kernel_has_ipip": "detect", "KernelIpip": "ipip_kernel",
    "IpipProcess": "ipip_proc",
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
               run_dir: Path | None = None, log_file: Path | None = None) -> Tunnel:
    """Bring up tunl0 in the current namespace, kernel or userspace (mode: "kernel"|"userspace").

    Userspace with `run_dir`: the datapath runs as its own process (pidfile and status file in
    run_dir, output to log_file) that survives a killed caller and is adopted on the next start;
    without: as threads of the calling process."""
    from labnet.agent.tunnel.detect import ipip_mode
    from labnet.agent.tunnel.ipip_kernel import KernelIpip
    from labnet.agent.tunnel.ipip_proc import IpipProcess
    from labnet.agent.tunnel.ipip_user import IpipDatapath

    chosen = mode or ipip_mode()
    if chosen not in ("kernel", "userspace"):
        raise ValueError(f"start_ipip: mode must be 'kernel' or 'userspace', got {chosen!r}")
    tun: Tunnel
    if chosen == "kernel":
        tun = KernelIpip(local, address, mtu)
    elif run_dir is not None:
        tun = IpipProcess(local, address, mtu, run_dir=run_dir, log_file=log_file)
    else:
        tun = IpipDatapath(local, address, mtu)
    tun.start()
    return tun


__all__ = [
    "Counters", "IpipDatapath", "IpipProcess", "KernelIpip", "SyncResult", "Tunnel", "TunnelError", "Vtep",
    "ensure_vxlan", "ipip_mode", "kernel_has_ipip", "remove_vxlan", "run_ipip", "start_ipip", "sync_vxlan",
    "vtep_mac",
]
