"""Node records in the datastore (Calico's Node resource, reduced) and the node-name checks.

A record at keys.node(name):
  {"kind": "Node", "apiVersion": "projectcalico.org/v3", "name": "ubuntu-3",
   "bgp": {"ipv4Address": "10.20.30.73/24", "asNumber": 64512, "ipv4IPIPTunnelAddr": "10.100.163.128"},
   "ipv4VXLANTunnelAddr": null, "vxlanTunnelMACAddr": null,
   "agent": {"pid": 1234, "started": "2026-11-24T20:31:00Z", "interface": "ens32"}}
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labnet.errors import BadInput


@dataclass(frozen=True)
class NodeRecord:
    name: str
    ipv4_address: str | None  # with prefix length, "10.20.30.73/24"
    asn: int | None = None
    ipip_tunnel_addr: str | None = None
    vxlan_tunnel_addr: str | None = None
    vxlan_tunnel_mac: str | None = None
    pid: int | None = None
    started: str | None = None
    interface: str | None = None
    ipv6_address: str | None = None  # "fd00:20::73/64": the IPv6 next hop of its IPv6 blocks
    vxlan_tunnel_addr_v6: str | None = None
    vxlan_tunnel_mac_v6: str | None = None

    @property
    def address6(self) -> ipaddress.IPv6Address | None:
        return ipaddress.IPv6Interface(self.ipv6_address).ip if self.ipv6_address else None

    @property
    def address(self) -> ipaddress.IPv4Address | None:
        return ipaddress.IPv4Interface(self.ipv4_address).ip if self.ipv4_address else None

    @property
    def interface_net(self) -> ipaddress.IPv4Interface | None:
        return ipaddress.IPv4Interface(self.ipv4_address) if self.ipv4_address else None

    def encode(self) -> str:
        bgp: dict[str, Any] = {"ipv4Address": self.ipv4_address}
        if self.asn is not None:
            bgp["asNumber"] = self.asn
        if self.ipip_tunnel_addr:
            bgp["ipv4IPIPTunnelAddr"] = self.ipip_tunnel_addr
        if self.ipv6_address:
            bgp["ipv6Address"] = self.ipv6_address
        doc: dict[str, Any] = {
            "kind": "Node", "apiVersion": "projectcalico.org/v3", "name": self.name, "bgp": bgp,
            "ipv4VXLANTunnelAddr": self.vxlan_tunnel_addr, "vxlanTunnelMACAddr": self.vxlan_tunnel_mac,
            "agent": {"pid": self.pid, "started": self.started, "interface": self.interface},
        }
        if self.vxlan_tunnel_addr_v6:  # Calico's names for the IPv6 VTEP
            doc.update(ipv6VXLANTunnelAddr=self.vxlan_tunnel_addr_v6, vxlanTunnelMACAddrV6=self.vxlan_tunnel_mac_v6)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def decode(cls, raw: bytes | str, key: str = "node record") -> NodeRecord:
        try:
            d = json.loads(raw)
            bgp = d.get("bgp") or {}
            agent = d.get("agent") or {}
            return cls(
                name=str(d["name"]), ipv4_address=bgp.get("ipv4Address"), asn=bgp.get("asNumber"),
                ipip_tunnel_addr=bgp.get("ipv4IPIPTunnelAddr"), vxlan_tunnel_addr=d.get("ipv4VXLANTunnelAddr"),
                vxlan_tunnel_mac=d.get("vxlanTunnelMACAddr"), pid=agent.get("pid"), started=agent.get("started"),
                interface=agent.get("interface"), ipv6_address=bgp.get("ipv6Address"),
                vxlan_tunnel_addr_v6=d.get("ipv6VXLANTunnelAddr"), vxlan_tunnel_mac_v6=d.get("vxlanTunnelMACAddrV6"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(f"{key}: not a node record: {exc}") from exc


def read_nodename(path: str | Path) -> str:
    """The node name the CNI plugin uses (Calico's /var/lib/calico/nodename)."""
    p = Path(path)
    try:
        name = p.read_text().strip()
    except FileNotFoundError as exc:
        raise BadInput(f"node name file {p} does not exist (the CNI install step writes it)") from exc
    if not name:
        raise BadInput(f"node name file {p} is empty")
    return name


def name_problems(agent_name: str, cni_name: str | None, nodename_file: str,
                  affine_nodes: set[str], registered: set[str]) -> list[str]:
    """The seed commenter's fault, said by name: routes are missing because names disagree."""
    out: list[str] = []
    if cni_name is not None and cni_name != agent_name:
        out.append(f"node name mismatch: agent registered as {agent_name!r} but the CNI plugin uses "
                   f"{cni_name!r} (from {nodename_file}): its blocks get no routes")
    for orphan in sorted(affine_nodes - registered):
        if orphan == cni_name and cni_name != agent_name:
            continue  # already said above
        out.append(f"IPAM blocks are affine to node {orphan!r}, which no agent registered: "
                   f"those blocks get no blackhole and are not advertised")
    return out
