"""Phase underlay: LANs, machines (namespaces or containers), links, addresses, default routes."""

from __future__ import annotations

from typing import Any

from labnet.lab.context import Context
from labnet.runtime.base import LinkSpec, MachineSpec


def run(ctx: Context) -> None:
    topo, rt = ctx.topo, ctx.runtime
    rt.prepare()
    for name, net in topo.networks.items():
        rt.add_network(name, net.mtu)
    machines = [
        MachineSpec(name=name, kind=kind, forward=kind in ("router", "node"), ipv6=topo.dual_stack)
        for name, kind, _ in topo.machines()
    ]
    rt.add_machines(machines)
    links, gateways, gateways6 = [], {}, {}
    info: dict[str, Any] = {}
    for name, kind, spec in topo.machines():
        ifs = []
        for iface in spec.interfaces:
            cidr = topo.interface_cidr(iface)
            mtu = iface.mtu or topo.networks[iface.network].mtu
            cidr6 = topo.interface_cidr6(iface)
            links.append(LinkSpec(name, iface.name or "eth0", iface.network, cidr, mtu, cidr6))
            ifs.append({"name": iface.name, "network": iface.network, **({"address": str(cidr)} if cidr else {}),
                        **({"address6": str(cidr6)} if cidr6 else {})})
        gateway = topo.gateway_of(spec)
        if gateway is not None:
            gateways[name] = gateway
        if spec.gateway6 is not None:
            gateways6[name] = spec.gateway6
        info[name] = {"kind": kind, "interfaces": ifs, "netns": rt.ns(name).netns}
    rt.add_links(links, gateways, gateways6)
    ctx.journal.info["machines"] = info
    ctx.journal.save()
