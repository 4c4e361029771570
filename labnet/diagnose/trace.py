"""`labnet trace FROM TO`: the path a packet takes through the lab, hop by hop, and why it stops.

On each machine the kernel itself is asked which route it takes (`ip route get`, with the
interface it came in on, so reverse-path and forwarding checks apply as for a real packet).
From a pod, the proxy-ARP answer for 169.254.1.1 on the node's veth is checked (Calico's seed
requirements); into a tunnel the packet is wrapped (IPIP: outer source and destination; VXLAN:
the VTEP the node's FDB names) and the outer packet is followed to the node that unwraps it;
leaving the pool through a node that masquerades, its source becomes the node's; into a pod,
labnet's policy decides (the model's verdict, and the rule nftables ran for one real packet of
that flow: `nft monitor trace`; the rule counters that moved when nothing was traced). It ends in "delivered to X" or "dropped at M: reason".

IPv6 (`-6`, or an IPv6 address) takes the same path with the family's parts: the pod's
gateway is its host veth's link-local fe80::ecee:eeff:feee:eeee (answered as the veth's own
address, no proxy), the IPv6 pool's tunnel is vxlan-v6.calico, NAT66 is table ip6 labnet-nat.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_interface, ip_network
from typing import Any

from labnet.agent.tunnel.vxlan import IFNAME6 as VXLAN6_DEVICE
from labnet.checks.assertions import CALICO_GATEWAY, Endpoint, proxy_arp_diagnosis, read_sysctl
from labnet.checks.probe import connect_once, responding
from labnet.cni.datapath import GATEWAY6
from labnet.diagnose.nftrace import decided, flow_match, trace_flow
from labnet.errors import BadInput
from labnet.lab.view import LabView
from labnet.nsexec import NodeNS, run
from labnet.policy.enforce import enforced, pod_infos, settings_of
from labnet.policy.explain import evaluate, evaluate_egress
from labnet.policy.nft import chain_name, node_counters
from labnet.topology.steps import DEFAULT_PORT

MAX_HOPS = 16
TUNNELS = ("tunl0", "vxlan.calico", VXLAN6_DEVICE)


@dataclass
class Hop:
    machine: str
    said: list[str] = field(default_factory=list)  # what happened here, in order


@dataclass
class Trace:
    src: str
    dst: str
    proto: str
    port: int | None
    hops: list[Hop] = field(default_factory=list)
    delivered: bool = False
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        where = f" port {self.port}" if self.port else ""
        lines = [f"trace {self.src} → {self.dst} ({self.proto}{where})"]
        for i, h in enumerate(self.hops, 1):
            lines.append(f"{i:>2}  {h.machine}")
            lines += [f"      {s}" for s in h.said]
        lines.append(self.verdict if self.delivered else "DROPPED" + self.verdict.removeprefix("dropped"))
        return "\n".join(lines)


class _Drop(Exception):
    """The packet stops here, for this reason."""


def _route_get(ns: NodeNS, dst: str, *, src: str | None = None, iif: str | None = None) -> dict[str, Any]:
    argv = ["ip", "-6" if ":" in dst else "-4", "-j", "-d", "route", "get", dst]
    if iif is not None and src is not None:
        argv += ["from", src, "iif", iif]
    proc = run(ns, argv, check=False, timeout=10)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().removeprefix("RTNETLINK answers: ")
        how = f" (arriving on {iif} from {src})" if iif else ""
        raise _Drop(f"no route to {dst}{how}: {said or f'ip route get exited {proc.returncode}'}")
    got = json.loads(proc.stdout or "[]")
    if not got:
        raise _Drop(f"no route to {dst}")
    return dict(got[0])


def _route_text(r: dict[str, Any]) -> str:
    parts = [f"{r.get('type', 'unicast')} {r.get('dst')}" if r.get("type") not in (None, "unicast") else str(r.get("dst"))]
    if r.get("gateway"):
        parts.append(f"via {r['gateway']}")
    if r.get("dev"):
        parts.append(f"dev {r['dev']}")
    if r.get("prefsrc"):
        parts.append(f"src {r['prefsrc']}")
    return "route " + " ".join(parts)


class _Lab:
    """Who is where: machines' addresses by network, pods by address and host veth."""

    def __init__(self, view: LabView) -> None:
        self.view = view
        info = view.journal.info
        self.machines: dict[str, dict[str, Any]] = info.get("machines", {})
        self.pods: dict[str, dict[str, Any]] = info.get("pods", {})
        c = view.topo.cluster
        self.pools = [ip_network(str(p.cidr)) for p in (c.pool4, c.pool6) if p is not None] if c is not None else []
        self._blocks: dict[str, list[IPv4Network | IPv6Network]] | None = None

    @property
    def pool(self) -> bool:
        return bool(self.pools)

    def in_pool(self, ip: str) -> bool:
        addr = ip_address(ip)
        return any(addr in p for p in self.pools)

    def network_of(self, machine: str, dev: str) -> str | None:
        for i in self.machines.get(machine, {}).get("interfaces", []):
            if i.get("name") == dev:
                return str(i.get("network"))
        return None

    def address_on(self, machine: str, dev: str, family: int = 4) -> str | None:
        key = "address" if family == 4 else "address6"
        for i in self.machines.get(machine, {}).get("interfaces", []):
            if i.get("name") == dev and i.get(key):
                return str(ip_interface(i[key]).ip)
        return None

    def owner(self, network: str, ip: str) -> tuple[str, str] | None:
        """The machine with `ip` (of either family) on `network`, and its interface there."""
        want = ip_address(ip)
        for name, m in self.machines.items():
            for i in m.get("interfaces", []):
                if i.get("network") == network and any(i.get(k) and ip_interface(i[k]).ip == want
                                                       for k in ("address", "address6")):
                    return name, str(i["name"])
        return None

    def pod_on_veth(self, node: str, veth: str) -> str | None:
        return next((p for p, rec in self.pods.items() if rec.get("node") == node and rec.get("host_veth") == veth),
                    None)

    def ns(self, name: str) -> NodeNS:
        return self.view.pod_ns(name) if name in self.pods else self.view.ns(name)

    def block_owner(self, ip: str) -> str | None:
        """The node whose block holds `ip`, from the datastore's affinities (not from the
        agents: the one that matters may be the one that does not answer)."""
        if self._blocks is None:
            from labnet.etcd.admin import admin_store
            from labnet.ipam.allocator import blocks_of

            store = admin_store(self.view.journal.info)
            try:
                self._blocks = {n: [ip_network(c) for c in blocks_of(store, n, None)] for n in self.view.topo.nodes}
            finally:
                store.close()
        addr = ip_address(ip)
        return next((n for n, nets in self._blocks.items() if any(addr in net for net in nets)), None)


def trace(view: LabView, src_name: str, dst_name: str, proto: str = "icmp", port: int | None = None,
          family: int = 4) -> Trace:
    dst = view.endpoint(dst_name, family)
    src = view.endpoint(src_name, 6 if ":" in dst.ip else 4)  # an IPv6 address to reach: the IPv6 source
    if src.ns is None:
        raise BadInput(f"trace from {src_name!r}: an address sends nothing; start from a pod or machine")
    if proto not in ("icmp", "tcp", "udp"):
        raise BadInput(f"proto {proto!r} is none of icmp, tcp, udp")
    if proto == "icmp":
        port = None
    elif port is None:
        port = DEFAULT_PORT  # the port the real packet goes to: the model judges the same one
    elif not 1 <= port <= 65535:
        raise BadInput(f"port {port} is outside 1..65535")
    out = Trace(src.name, f"{dst.name} ({dst.ip})" if dst.name != dst.ip else dst.ip, proto, port)
    lab = _Lab(view)
    try:
        _walk(lab, src, dst, proto, port, out)
    except _Drop as exc:
        out.delivered, out.verdict = False, f"dropped at {out.hops[-1].machine}: {exc}"
    return out


def _walk(lab: _Lab, src: Endpoint, dst: Endpoint, proto: str, port: int | None, out: Trace) -> None:
    here, iif, src_ip = src.name, None, src.ip
    outer: tuple[str, str, str] | None = None  # (kind, outer src, outer dst) while wrapped
    pending: list[str] = []  # what the next machine said before its route (a pod's egress policy)
    for _ in range(MAX_HOPS):
        hop = Hop(here, pending)
        pending = []
        out.hops.append(hop)
        ns = lab.ns(here)
        target = outer[2] if outer else dst.ip
        r = _route_get(ns, target, src=outer[1] if outer else src_ip, iif=iif)
        kind = r.get("type", "unicast")
        if kind == "local" or (outer is None and here == dst.name):
            if outer is not None:  # the tunnel's far end: unwrap, and route the inner packet here
                hop.said.append(f"{outer[0]} from {outer[1]} unwrapped (outer destination {outer[2]} is local)")
                iif, outer = outer[0], None
                r = _route_get(ns, dst.ip, src=src_ip, iif=iif)
                kind = r.get("type", "unicast")
            if kind == "local" or here == dst.name:
                hop.said.append(f"{_route_text(r)}: local")
                out.delivered, out.verdict = True, f"delivered to {dst.name} ({dst.ip})"
                return
        hop.said.append(_route_text(r) + (f" (in on {iif})" if iif else ""))
        if kind in ("blackhole", "unreachable", "prohibit"):
            owner = lab.block_owner(dst.ip) if lab.in_pool(dst.ip) else None
            why = f" (the {kind} route of a block this node owns: no pod has {dst.ip})" if owner == here else ""
            raise _Drop(f"{_route_text(r)}{why}")
        dev, gw = str(r.get("dev")), r.get("gateway")
        if here in lab.pods:  # leaving a pod: through its veth, to its node, via proxy-ARP
            node, veth = str(lab.pods[here]["node"]), str(lab.pods[here]["host_veth"])
            if gw == CALICO_GATEWAY:
                _proxy_arp(lab, here, node, veth, hop)
            elif gw == GATEWAY6:
                _gateway6(lab, node, veth, hop)
            pending = _egress(lab, here, dst, proto, port, out)
            here, iif = node, veth
            continue
        if outer is None and dev in TUNNELS:  # into the tunnel: wrap
            outer = _wrap(lab, ns, here, dev, str(gw), hop)
            r = _route_get(ns, outer[2])
            hop.said.append(f"outer: {_route_text(r)}")
            dev, gw = str(r.get("dev")), r.get("gateway")
        elif outer is None and lab.pool and here not in lab.pods:
            _nat(lab, ns, here, src_ip, dst.ip, dev, r, hop)
            if hop.said[-1].startswith("masquerade"):
                src_ip = lab.address_on(here, dev, 6 if ":" in src_ip else 4) or src_ip
        if dev.startswith("cali") and outer is None:  # into a pod of this node
            into = lab.pod_on_veth(here, dev)
            if into is None:
                raise _Drop(f"{dev} leads to no pod labnet knows")
            _policy(lab, here, into, src, src_ip, dst, proto, port, hop)
            here, iif = into, "eth0"
            continue
        network = lab.network_of(here, dev)
        nexthop = str(gw) if gw else (outer[2] if outer else dst.ip)
        found = lab.owner(network, nexthop) if network else None
        if found is None:
            raise _Drop(f"nothing on {network or dev} has {nexthop} (no machine answers its ARP)")
        here, iif = found
        if outer is None and lab.in_pool(dst.ip) and lab.machines.get(here, {}).get("kind") != "node":
            owner = lab.block_owner(dst.ip)
            if owner is not None:
                hop.said.append(f"note: {dst.ip} is in {owner}'s block, but {hop.machine} sends it to {here} "
                                f"({nexthop}), not through a tunnel: {hop.machine} has no route for that block "
                                f"(is its BGP session with {owner} up?)")
    raise _Drop(f"more than {MAX_HOPS} hops: a loop?")


def _proxy_arp(lab: _Lab, pod: str, node: str, veth: str, hop: Hop) -> None:
    node_ns = lab.view.ns(node)
    proxy = read_sysctl(node_ns, f"net.ipv4.conf.{veth}.proxy_arp")
    fwd = read_sysctl(node_ns, f"net.ipv4.conf.{veth}.forwarding")
    why = proxy_arp_diagnosis(node_ns, veth, CALICO_GATEWAY, proxy, fwd)
    if why:
        raise _Drop(f"its ARP for {CALICO_GATEWAY} gets no answer: {why}")
    hop.said.append(f"ARP {CALICO_GATEWAY}: answered by proxy-ARP on {veth} of {node} (proxy_arp=1, forwarding=1)")


def _gateway6(lab: _Lab, node: str, veth: str, hop: Hop) -> None:
    """The pod's IPv6 gateway is its host veth's own link-local address: the node answers the
    pod's neighbour solicitation for it when the veth has it (not tentative)."""
    got = json.loads(run(lab.view.ns(node), ["ip", "-6", "-j", "addr", "show", "dev", veth], check=False,
                         timeout=10).stdout or "[]")
    addrs = [a for link in got for a in link.get("addr_info", []) if a.get("local") == GATEWAY6]
    if not addrs:
        raise _Drop(f"its neighbour solicitation for {GATEWAY6} gets no answer: {veth} of {node} does not have "
                    "that link-local address (its MAC is not ee:ee:ee:ee:ee:ee, or IPv6 is off on it)")
    if addrs[0].get("tentative"):
        raise _Drop(f"{GATEWAY6} on {veth} of {node} is still tentative (duplicate address detection): "
                    "no answer to the pod's neighbour solicitation yet")
    hop.said.append(f"NS {GATEWAY6}: answered by {veth} of {node} (its own link-local address)")


def _wrap(lab: _Lab, ns: NodeNS, here: str, dev: str, gw: str, hop: Hop) -> tuple[str, str, str]:
    if dev == "tunl0":
        outer_dst = gw
        how = "IPIP (protocol 4)"
    else:
        neigh = json.loads(run(ns, ["ip", "-j", "neigh", "show", gw, "dev", dev], check=False, timeout=10).stdout
                           or "[]")
        mac = neigh[0].get("lladdr") if neigh else None
        fdb = json.loads(run(ns, ["bridge", "-j", "fdb", "show", "dev", dev], check=False, timeout=10).stdout or "[]")
        outer = next((f.get("dst") for f in fdb if mac and f.get("mac") == mac and f.get("dst")), None)
        if outer is None:
            raise _Drop(f"VXLAN: no FDB entry names the VTEP of {gw} on {dev} (neighbour {mac or 'missing'})")
        outer_dst, how = str(outer), f"VXLAN (VTEP {gw} is-at {mac}, FDB dst {outer})"
    r = _route_get(ns, outer_dst)
    outer_src = str(r.get("prefsrc") or lab.view.address(here, 6 if ":" in outer_dst else 4))
    hop.said.append(f"{how}: outer {outer_src} → {outer_dst}")
    return dev, outer_src, outer_dst


def _nat(lab: _Lab, ns: NodeNS, here: str, src_ip: str, dst_ip: str, dev: str, r: dict[str, Any], hop: Hop) -> None:
    if not lab.in_pool(src_ip) or lab.in_pool(dst_ip):
        return
    fam = "ip6" if ":" in src_ip else "ip"
    proc = run(ns, ["nft", "list", "table", fam, "labnet-nat"], check=False, timeout=10)
    if proc.returncode == 0 and "masquerade" in proc.stdout:
        mine = lab.address_on(here, dev, 6 if fam == "ip6" else 4)
        hop.said.append(f"masquerade (nat_outgoing, table {fam} labnet-nat): source {src_ip} becomes "
                        f"{mine or r.get('prefsrc') or 'the address of ' + dev} leaving {dev}")
    else:
        hop.said.append(f"no NAT: {src_ip} leaves {here} as it is (nat_outgoing is off); replies need a route "
                        f"back to the pool")


def _policy(lab: _Lab, node: str, pod: str, src: Endpoint, src_ip: str, dst: Endpoint, proto: str,
            port: int | None, hop: Hop) -> None:
    settings = settings_of(lab.view.journal.info.get("topology", {}))
    if not enforced(settings):
        hop.said.append(f"policy: none enforced (lab default {settings.default}); into {pod} on its veth")
        return
    pods = pod_infos(lab.pods)
    dst_pod = next(p for p in pods if p.name == pod)
    verdict = evaluate(settings, dst_pod, src_ip, proto, port, pods)
    node_ns = lab.view.ns(node)
    chain = chain_name(dst_pod)
    steps = trace_flow(node_ns, flow_match(src_ip, dst.ip, proto, port), lambda: _one_packet(lab, src, dst, proto, port))
    last = decided([s for s in steps if s.chain == chain])
    if last is not None:
        evidence = f"nft trace of one packet: chain {chain}, rule \"{last.comment}\", verdict {last.verdict}"
        if last.comment != verdict.comment:
            evidence += f" — the kernel disagrees with the model, which expects \"{verdict.comment}\""
    else:  # the monitor saw nothing: the rule counters are the evidence
        before = node_counters(node_ns)
        _one_packet(lab, src, dst, proto, port)
        after = node_counters(node_ns)
        moved = [c.comment for key, c in after.items()
                 if key[0] == chain and c.packets > (before[key].packets if key in before else 0)]
        evidence = f"nft chain {chain}: counters that moved for one packet of this flow: {', '.join(moved) or 'none'}"
    if not verdict.allowed:
        raise _Drop(f"policy: {verdict.reason} (nft rule \"{verdict.comment}\"); {evidence}")
    hop.said.append(f"policy: {verdict.reason} (nft rule \"{verdict.comment}\"); {evidence}")


def _egress(lab: _Lab, pod: str, dst: Endpoint, proto: str, port: int | None, out: Trace) -> list[str]:
    """The pod's egress policy, judged as the packet enters its node: what the node's hop says
    first; a drop there ends the trace."""
    settings = settings_of(lab.view.journal.info.get("topology", {}))
    pods = pod_infos(lab.pods)
    src = next((p for p in pods if p.name == pod), None)
    if src is None or not enforced(settings):
        return []
    verdict = evaluate_egress(settings, src, dst.ip, proto, port, pods)
    if verdict.policy == "egress-open":
        return []
    said = f"egress of {pod}: {verdict.reason} (nft rule \"{verdict.comment}\" in chain from_{lab.pods[pod]['host_veth']})"
    if not verdict.allowed:
        out.hops.append(Hop(str(lab.pods[pod]["node"])))
        raise _Drop(f"policy: {said}")
    return [said]


def _one_packet(lab: _Lab, src: Endpoint, dst: Endpoint, proto: str, port: int | None) -> None:
    assert src.ns is not None
    with responding(dst.ns, proto, port or DEFAULT_PORT):
        connect_once(src.ns, dst.ip, proto, port or DEFAULT_PORT)


# -- the CLI verb -----------------------------------------------------------------------------

def endpoint_arg(value: str) -> str:
    """An argparse `type=` for a pod, a machine, or an IP address."""
    import argparse

    from labnet.paths import name_error

    try:
        return str(ip_address(value))
    except ValueError:
        pass
    error = name_error("pod or machine", value)
    if error:
        raise argparse.ArgumentTypeError(error + ", or an IP address")
    return value


def _port(value: str) -> int:
    import argparse

    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"port {value!r} is not a number 1..65535")
    return int(value)


def cmd_trace(args: Any) -> int:
    import os

    from labnet.lab import state

    if os.geteuid() != 0:
        raise BadInput("labnet trace needs root to look inside the lab's namespaces (run it with sudo)")
    view = LabView(state.pick_lab(args.lab))
    t = trace(view, args.src, args.dst, args.proto, args.port, 6 if args.ipv6 else 4)
    print(json.dumps(t.to_dict(), indent=2) if args.json else t.format())
    return 0 if t.delivered else 1


def register(sub: Any) -> None:
    from labnet.paths import lab_arg

    s = sub.add_parser("trace", help="the path a packet takes, hop by hop, and where and why it stops",
                       description="Follow a packet from FROM to TO through the lab: the route each machine "
                                   "chooses (ip route get), proxy-ARP at the pod's veth, tunnel encapsulation "
                                   "with its outer addresses, NAT, and the policy verdict with the nft rule "
                                   "that decided. Exit 0 when it is delivered, 1 when it is dropped.")
    s.add_argument("src", metavar="FROM", type=endpoint_arg, help="pod or machine that sends")
    s.add_argument("dst", metavar="TO", type=endpoint_arg, help="pod, machine or IP address")
    s.add_argument("-6", "--ipv6", action="store_true",
                   help="follow an IPv6 packet: TO's IPv6 address (a pod's ip6, a machine's address6)")
    s.add_argument("--proto", choices=("icmp", "tcp", "udp"), default="icmp")
    s.add_argument("--port", type=_port, default=None,
                   help="tcp/udp destination port (policy decides by it; default 8080)")
    s.add_argument("-l", "--lab", type=lab_arg, help="the lab (default: the only running one)")
    s.add_argument("--json", action="store_true", help="machine output: the hops and the verdict")
    s.set_defaults(func=cmd_trace)
