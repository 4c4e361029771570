"""Calico's VXLAN mode: the `vxlan.calico` device and its forwarding state, from a list of VTEPs.

As Felix does it, no BGP involved: every remote node is a VTEP (underlay address, tunnel
address, VTEP MAC, its blocks) read from the datastore, and for each one we program

    bridge fdb   <vtep mac> dst <node ip> dev vxlan.calico self permanent
    ip neigh     <tunnel ip> lladdr <vtep mac> dev vxlan.calico nud permanent
    ip route     <block> via <tunnel ip> dev vxlan.calico onlink proto 80

`sync_vxlan` is idempotent and removes what is no longer wanted: FDB entries with a remote
on the device, permanent neighbours on the device, and routes of our protocol through it.
Everything runs in the current network namespace unless `netns` (a path) is given.

An IPv6 pool in VXLAN mode gets its own device, `vxlan-v6.calico` (VNI 6096, as Calico's),
over the IPv6 underlay: the same three kinds of entries, each of the IPv6 family.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labnet.errors import BadInput, LabnetError
from labnet.settings import VXLAN6_OVERHEAD, VXLAN_OVERHEAD

IFNAME = "vxlan.calico"
IFNAME6 = "vxlan-v6.calico"
VNI = 4096
VNI6 = 6096
PORT = 4789
PROTO_FELIX = 80  # Felix's route protocol for VXLAN routes
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4
RT_TABLE_MAIN = 254
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class VxlanError(LabnetError):
    pass


@dataclass(frozen=True)
class Vtep:
    """One remote node as a VXLAN tunnel endpoint."""

    node: str
    underlay_ip: str
    tunnel_ip: str
    mac: str
    blocks: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        try:
            under = ipaddress.ip_address(self.underlay_ip)
            tunnel = ipaddress.ip_address(self.tunnel_ip)
            nets = tuple(ipaddress.ip_network(b) for b in self.blocks)
        except ValueError as exc:
            raise BadInput(f"vtep {self.node}: {exc}") from exc
        if under.version != tunnel.version or any(n.version != tunnel.version for n in nets):
            raise BadInput(f"vtep {self.node}: underlay {under}, tunnel {tunnel} and blocks "
                           f"{', '.join(map(str, nets))} must be of one IP family")
        object.__setattr__(self, "underlay_ip", str(under))
        object.__setattr__(self, "tunnel_ip", str(tunnel))
        mac = self.mac.lower()
        if not _MAC.match(mac):
            raise BadInput(f"vtep {self.node}: mac {self.mac!r} is not of the form aa:bb:cc:dd:ee:ff")
        object.__setattr__(self, "mac", mac)
        object.__setattr__(self, "blocks", tuple(map(str, nets)))

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.tunnel_ip).version


@dataclass
class SyncResult:
    """What one sync changed (empty lists: the kernel already matched)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for a node's VTEP (Calico stores a random one)."""
    d = hashlib.sha1(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([(d[0] & 0xFC) | 0x02]) + d[1:6])


def _ipr(netns: str | None) -> Any:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()


def _ifindex(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise VxlanError(f"{ifname}: no such link in this network namespace (call ensure_vxlan first)")
    return int(found[0])


def _vxlan_data(link: Any) -> dict[str, Any]:
    """VNI, port and local address (either family, under IFLA_VXLAN_LOCAL) of a vxlan link."""
    info = link.get("IFLA_LINKINFO")
    if not info or info.get("IFLA_INFO_KIND") != "vxlan":
        return {}
    data = info.get("IFLA_INFO_DATA")
    if not data:
        return {}
    out = {k: data.get(k) for k in ("IFLA_VXLAN_ID", "IFLA_VXLAN_PORT", "IFLA_VXLAN_LOCAL")}
    if out["IFLA_VXLAN_LOCAL"] is None and data.get("IFLA_VXLAN_LOCAL6"):
        out["IFLA_VXLAN_LOCAL"] = str(ipaddress.IPv6Address(data.get("IFLA_VXLAN_LOCAL6")))
    return out


def ensure_vxlan(
    local: str,
    address: str,
    mtu: int | None = None,
    *,
    mac: str | None = None,
    ifname: str = IFNAME,
    vni: int = VNI,
    port: int = PORT,
    netns: str | None = None,
) -> str:
    """Create or fix `vxlan.calico`; return its MAC (publish it as this node's VTEP MAC).

    local: the node's underlay address; address: the tunnel address (first address of the
    node's block, set as /32, or /128 for IPv6); mtu: default underlay MTU − 50 (− 70 over
    IPv6). A device with the wrong VNI, port or local address is recreated, as Felix does.
    """
    try:
        under, tun = ipaddress.ip_address(local), ipaddress.ip_address(address)
    except ValueError as exc:
        raise BadInput(f"{ifname}: {exc}") from exc
    if under.version != tun.version:
        raise BadInput(f"{ifname}: local {under} and tunnel address {tun} are of different IP families")
    local, address = str(under), str(tun)
    family, plen = (socket.AF_INET, 32) if tun.version == 4 else (socket.AF_INET6, 128)
    if mac is not None and not _MAC.match(mac.lower()):
        raise BadInput(f"{ifname}: mac {mac!r} is not of the form aa:bb:cc:dd:ee:ff")
    with _ipr(netns) as ipr:
        if mtu is None:
            mtu = _underlay_mtu(ipr, local, family) - (VXLAN_OVERHEAD if family == socket.AF_INET else VXLAN6_OVERHEAD)
        want = {"IFLA_VXLAN_ID": vni, "IFLA_VXLAN_PORT": port, "IFLA_VXLAN_LOCAL": local}
        found = ipr.link_lookup(ifname=ifname)
        if found and _vxlan_data(ipr.get_links(found[0])[0]) != want:
            ipr.link("del", index=found[0])
            found = []
        if not found:
            where = {"vxlan_local": local} if family == socket.AF_INET else {"vxlan_local6": local}
            ipr.link("add", ifname=ifname, kind="vxlan", vxlan_id=vni, vxlan_port=port, **where,
                     vxlan_learning=0, mtu=mtu, **({"address": mac.lower()} if mac else {}))
        idx = _ifindex(ipr, ifname)
        link = ipr.get_links(idx)[0]
        if link.get("IFLA_MTU") != mtu:
            ipr.link("set", index=idx, mtu=mtu)
        # Only when it differs: a MAC change flushes the device's neighbours, permanent ones too.
        if mac and link.get("IFLA_ADDRESS") != mac.lower():
            ipr.link("set", index=idx, address=mac.lower())
        for a in ipr.get_addr(index=idx, family=family):
            kept = (a.get("IFA_ADDRESS"), a["prefixlen"]) == (address, plen)
            if not kept and not (family == socket.AF_INET6 and str(a.get("IFA_ADDRESS")).startswith("fe80:")):
                ipr.addr("del", index=idx, address=a.get("IFA_ADDRESS"), prefixlen=a["prefixlen"])
        if not ipr.get_addr(index=idx, family=family, address=address):
            ipr.addr("add", index=idx, address=address, prefixlen=plen,
                     **({"flags": 0x02} if family == socket.AF_INET6 else {}))  # IFA_F_NODAD
        ipr.link("set", index=idx, state="up")
        return str(ipr.get_links(idx)[0].get("IFLA_ADDRESS"))


def remove_vxlan(*, ifname: str = IFNAME, netns: str | None = None) -> bool:
    """Delete the device (its FDB, neighbours and routes go with it). False if it was absent."""
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True


def _underlay_mtu(ipr: Any, local: str, family: int = socket.AF_INET) -> int:
    for a in ipr.get_addr(family=family):
        if a.get("IFA_ADDRESS") == local:
            return int(ipr.get_links(a["index"])[0].get("IFLA_MTU"))
    raise BadInput(f"{IFNAME}: local address {local} is not assigned to any interface in this network namespace")


def sync_vxlan(
    vteps: Iterable[Vtep],
    *,
    ifname: str = IFNAME,
    proto: int = PROTO_FELIX,
    netns: str | None = None,
) -> SyncResult:
    """Make FDB, neighbours and routes on `ifname` match `vteps` exactly; idempotent.

    A VTEP whose underlay address is the device's own local address is skipped, so the agent
    may pass the whole list. Two VTEPs claiming one block or one tunnel address is bad input.
    """
    vteps = list(vteps)
    res = SyncResult()
    with _ipr(netns) as ipr:
        idx = _ifindex(ipr, ifname)
        local = _vxlan_data(ipr.get_links(idx)[0]).get("IFLA_VXLAN_LOCAL")
        want_fdb, want_neigh, want_routes = plan(vteps, local, ifname=ifname)
        family = socket.AF_INET6 if local is not None and ":" in local else socket.AF_INET

        # FDB: remote MAC -> underlay address
        have_fdb: dict[str, set[str]] = {}
        for e in ipr.fdb("dump", ifindex=idx):
            dst = e.get("NDA_DST")
            if e["ifindex"] == idx and dst:
                have_fdb.setdefault(str(e.get("NDA_LLADDR")), set()).add(dst)
        for mac, dsts in have_fdb.items():
            for dst in dsts:
                if want_fdb.get(mac) != dst:
                    ipr.fdb("del", ifindex=idx, lladdr=mac, dst=dst)
                    res.removed.append(f"fdb {mac} dst {dst}")
        for mac, dst in want_fdb.items():
            if dst not in have_fdb.get(mac, set()):
                ipr.fdb("append", ifindex=idx, lladdr=mac, dst=dst)
                res.added.append(f"fdb {mac} dst {dst}")

        # neighbours: remote tunnel address -> remote VTEP MAC
        have_neigh = {
            str(n.get("NDA_DST")): str(n.get("NDA_LLADDR"))
            for n in ipr.neigh("dump", ifindex=idx, family=family)
            if n["ifindex"] == idx and n["state"] & NUD_PERMANENT
        }
        for dst, mac in have_neigh.items():
            if dst not in want_neigh:
                ipr.neigh("del", ifindex=idx, dst=dst, lladdr=mac)
                res.removed.append(f"neigh {dst} lladdr {mac}")
        for dst, mac in want_neigh.items():
            if have_neigh.get(dst) != mac:
                ipr.neigh("replace", ifindex=idx, dst=dst, lladdr=mac, state=NUD_PERMANENT)
                res.added.append(f"neigh {dst} lladdr {mac}")

        # routes: remote block via remote tunnel address, onlink
        have_routes: dict[str, str | None] = {}
        for r in ipr.route("dump", family=family, table=RT_TABLE_MAIN):
            if r.get("RTA_OIF") == idx and r["proto"] == proto:
                have_routes[f"{r.get('RTA_DST')}/{r['dst_len']}"] = r.get("RTA_GATEWAY")
        for dst, gw in have_routes.items():
            if dst not in want_routes:
                ipr.route("del", dst=dst, oif=idx, proto=proto, table=RT_TABLE_MAIN, family=family)
                res.removed.append(f"route {dst} via {gw}")
        for dst, gw in want_routes.items():
            if have_routes.get(dst) != gw:
                ipr.route("replace", dst=dst, gateway=gw, oif=idx, flags=RTNH_F_ONLINK, proto=proto,
                          table=RT_TABLE_MAIN, family=family)
                res.added.append(f"route {dst} via {gw}")
    return res


def plan(
    vteps: Sequence[Vtep], local: str | None, *, ifname: str = IFNAME
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The wanted state: FDB {mac: underlay ip}, neighbours {tunnel ip: mac}, routes {block: tunnel ip}.

    VTEPs at our own underlay address `local` are left out. Raises BadInput when two remote
    VTEPs share a MAC, a tunnel address, or a block.
    """
    mine = ipaddress.ip_address(local).version if local else None
    remote = [v for v in vteps if v.underlay_ip != local]
    if mine is not None and any(v.version != mine for v in remote):
        raise BadInput(f"{ifname}: VTEPs of another IP family than its local address {local}")
    fdb: dict[str, str] = {}
    neigh: dict[str, str] = {}
    routes: dict[str, str] = {}
    owner: dict[str, str] = {}
    for v in remote:
        for kind, key in (("MAC", v.mac), ("tunnel address", v.tunnel_ip)):
            if f"{kind}={key}" in owner:
                raise BadInput(f"{ifname}: {kind} {key} of node {v.node} is also used by node "
                               f"{owner[f'{kind}={key}']}")
            owner[f"{kind}={key}"] = v.node
        fdb[v.mac] = v.underlay_ip
        neigh[v.tunnel_ip] = v.mac
        for b in v.blocks:
            if b in routes:
                raise BadInput(f"{ifname}: block {b} of node {v.node} is also claimed by node {owner[b]}")
            routes[b] = v.tunnel_ip
            owner[b] = v.node
    return fdb, neigh, routes


def main(argv: Sequence[str] | None = None) -> int:
    """Debugging entry: `setup` the device, or `sync` it from a JSON list of VTEPs."""
    ap = argparse.ArgumentParser(prog="python -m labnet.agent.tunnel.vxlan", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create/fix vxlan.calico; prints its MAC")
    s.add_argument("--local", required=True)
    s.add_argument("--address", required=True)
    s.add_argument("--mtu", type=int, default=None)
    s.add_argument("--mac", default=None)
    y = sub.add_parser("sync", help='sync from JSON: [{"node":..,"underlay_ip":..,"tunnel_ip":..,"mac":..,"blocks":[..]}]')
    y.add_argument("file", help="JSON file, or - for stdin")
    sub.add_parser("remove")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "setup":
            print(ensure_vxlan(args.local, args.address, args.mtu, mac=args.mac))
        elif args.cmd == "sync":
            raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            try:
                items = json.loads(raw)
                vteps = [Vtep(i["node"], i["underlay_ip"], i["tunnel_ip"], i["mac"], tuple(i.get("blocks", ())))
                         for i in items]
            except (ValueError, KeyError, TypeError) as exc:
                raise BadInput(f"vxlan sync: bad VTEP list in {args.file}: {exc!r}") from exc
            r = sync_vxlan(vteps)
            print(json.dumps({"added": r.added, "removed": r.removed}))
        else:
            remove_vxlan()
    except LabnetError as exc:
        print(f"labnet-vxlan: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
