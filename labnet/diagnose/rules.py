"""Doctor's rules: each looks at the observed facts (labnet.diagnose.facts) and adds findings,
in plain words, with the evidence and a command that shows it.

The seed's readers hit three walls: a node without a default route (proxy-ARP for 169.254.1.1
stays silent), the agent and the CNI plugin disagreeing on the node name (blocks get no
routes), and a default-deny policy. Doctor diagnoses those and the other usual suspects (BGP
sessions down and why, routes missing compared with the datastore, MTU, rp_filter, stopped
daemons) from the kernel state inside each node, the agents' status and the lab's etcd.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from labnet.checks.routes import Route
from labnet.diagnose.facts import (
    ETCD_HOST_PREFIX,
    IPIP_DEVICE,
    POD_GATEWAY,
    VXLAN6_DEVICE,
    VXLAN_DEVICE,
    Finding,
    NodeFacts,
    StoreFacts,
    children,
    observe_node,
    observe_store,
    proc_state,
    tcp_probe,
)
from labnet.errors import BadInput
from labnet.lab.processes import SUPERVISOR, alive, current
from labnet.nsexec import run

if TYPE_CHECKING:
    from labnet.lab.view import LabView


class Doctor:
    def __init__(self, view: LabView, only: str | None = None) -> None:
        self.view = view
        self.lab = view.name
        self.only = only
        topo = view.topo
        if topo.cluster is None:
            raise BadInput(f"lab {self.lab} has no cluster: doctor checks cluster nodes")
        self.nodes = list(topo.cluster.nodes)
        if only is not None and only not in self.nodes:
            raise BadInput(f"lab {self.lab}: no cluster node named {only!r} (nodes: {', '.join(self.nodes)})")
        self.settings = topo.cluster_settings()  # the agents' own reading of the pool
        pool = self.settings.pool
        self.encap = None if pool.encap == "none" else pool.encap
        self.mode = pool.mode
        self.tunnel_dev = {"ipip": IPIP_DEVICE, "vxlan": VXLAN_DEVICE}.get(self.encap or "")
        self.findings: list[Finding] = []
        self.facts: dict[str, NodeFacts] = {}
        self.store = StoreFacts()

    def cmd(self, target: str, *argv: str) -> str:
        return f"labnet exec -l {self.lab} {target} -- {' '.join(argv)}"

    def add(self, node: str, problem: str, explanation: str, evidence: str, command: str) -> None:
        self.findings.append(Finding(node, problem, explanation, evidence.strip(), command))

    def run(self) -> list[Finding]:
        with ThreadPoolExecutor(max_workers=min(8, len(self.nodes) + 1)) as ex:
            store = ex.submit(observe_store, self.view)
            futs = {n: ex.submit(observe_node, self.view, n, self.tunnel_dev) for n in self.nodes}
            for n, fut in futs.items():
                try:
                    self.facts[n] = fut.result()
                except Exception as exc:  # one node we cannot look into must not hide the others
                    self.facts[n] = NodeFacts(n, self.view.ns(n), status_error=f"{type(exc).__name__}: {exc}")
            self.store = store.result()
        self.check_processes()
        for n in self.nodes:
            f = self.facts[n]
            self.check_default_route(f)
            self.check_names(f)
            self.check_bgp(f)
            self.check_mtu(f)
            self.check_rp_filter(f)
            self.check_policy(f)
            self.check_agent_problems(f)
        self.check_orphan_names()
        self.check_routes()
        out = [x for x in self.findings if self.only is None or x.node in (self.only, "etcd", "lab")]
        return sorted(out, key=lambda x: (x.node != "etcd", x.node))

    # -- processes ---------------------------------------------------------------------------

    def check_processes(self) -> None:
        for p in self.view.journal.of_kind("process"):
            now = current(p)
            pid, node, what = now["pid"], p.get("node", "?"), p.get("what", "process")
            state = proc_state(pid)
            if what == SUPERVISOR and (state in (None, "Z") or not alive(p)):
                self.add("lab", "the lab's supervisor is not running",
                         "Nothing starts a node's process again when it dies: that node's agent, CNI server "
                         "and tunnel stay down.", f"supervisor pid {pid} is gone",
                         f"labnet up {self.view.journal.topology_file}")
            elif what == SUPERVISOR and state == "T":
                self.add("lab", "the lab's supervisor is stopped (SIGSTOP)",
                         "A node process that dies now is not started again, and `labnet down` and the agent "
                         "faults wait on it.", f"supervisor pid {pid} in state T (stopped)",
                         f"kill -CONT {pid}")
            procs = [pid] + (children(pid) if what == "agent" else [])
            stopped = [x for x in procs if proc_state(x) == "T"]
            if what == "etcd" and (state is None or state == "Z" or stopped):
                why = "is stopped (SIGSTOP)" if stopped else "is not running"
                self.add("etcd", f"etcd on {node} {why}",
                         "No agent or CNI plugin can read or write the datastore: new pods fail with CNI code 11 "
                         "(try again), agents keep their last routes and cannot learn changes.",
                         f"etcd pid {pid} state {state or 'gone'}; {self.store.error or ''}",
                         f"labnet etcd -l {self.lab} health")
            elif what == "agent" and node in self.nodes:
                f = self.facts.get(node)
                if (state is None or state == "Z") and p.get("pidfile"):
                    self.add(node, "labnet-agent (the node's process) is not running",
                             "Routes, BGP, the CNI server and the tunnel of this node are unmanaged until the lab's "
                             f"supervisor starts it again{' (it is held: start_agent)' if now.get('held') else ''}.",
                             f"node process pid {pid} is gone", f"labnet status -l {self.lab}")
                elif state is None or state == "Z":
                    self.add(node, "labnet-agent's supervisor is not running",
                             "Nothing restarts the agent: routes, BGP and the tunnel of this node are unmanaged.",
                             f"supervisor pid {pid} is gone", f"labnet status -l {self.lab}")
                elif stopped:
                    self.add(node, "labnet-agent is stopped (SIGSTOP)",
                             "A stopped agent answers nothing: its BGP peers' hold timers expire, its routes "
                             "are not repaired and its status socket does not answer. The CNI server runs in "
                             "the same process: every ADD and DEL on this node hangs until it times out.",
                             f"process(es) {', '.join(map(str, stopped))} in state T (stopped)",
                             f"labnet status -l {self.lab}")
                elif f is not None and f.status is None:
                    self.add(node, "labnet-agent does not answer on its status socket",
                             "The agent is down or restarting: BGP, routes and tunnel of this node are unmanaged.",
                             f.status_error, f"labnet bgp status -l {self.lab} {node}")
        if self.store.error and not any(x.node == "etcd" for x in self.findings):
            self.add("etcd", "the lab's etcd does not answer",
                     "No agent or CNI plugin can read or write the datastore: new pods fail with CNI code 11.",
                     self.store.error, f"labnet etcd -l {self.lab} health")

    # -- the seed's proxy-ARP requirement 2 ----------------------------------------------------

    def check_default_route(self, f: NodeFacts) -> None:
        if f.routes is None:
            return
        if any(r.dst.prefixlen == 0 and r.dst.version == 4 for r in f.routes):  # an IPv6 default is no help
            return
        proc = run(f.ns, ["ip", "route", "get", POD_GATEWAY], check=False, timeout=10)
        if proc.returncode == 0:
            return  # a route to 169.254.1.1 some other way: proxy-ARP still works
        pods = [p for p, r in self.view.journal.info.get("pods", {}).items() if r.get("node") == f.name]
        self.add(f.name, f"no default route: proxy-ARP for {POD_GATEWAY} cannot answer",
                 f"Pods send everything to {POD_GATEWAY} and the node answers their ARP for it by proxy-ARP, "
                 f"which Linux only does when the node itself has a route to {POD_GATEWAY} - normally its "
                 f"default route (seed, proxy-ARP requirement 2). Without it the pods "
                 f"({', '.join(pods) or 'none yet'}) get no ARP answer and reach nothing.",
                 f"`ip route get {POD_GATEWAY}`: {(proc.stderr or proc.stdout).strip()}\nip route:\n{f.routes_text}",
                 self.cmd(f.name, "ip", "route"))

    # -- Frederic LOUI's second problem: node names --------------------------------------------

    def check_names(self, f: NodeFacts) -> None:
        st = f.status
        if not st:
            return
        agent, cni = st.get("nodename"), st.get("cni_nodename")
        if cni and agent and agent != cni:
            self.add(f.name, f"node name mismatch: the agent registered as {agent!r}, the CNI plugin uses {cni!r}",
                     f"The CNI plugin claims IPAM blocks for {cni!r}; the agent only blackholes and advertises "
                     f"blocks affine to {agent!r}, so the pods of this node get no routes on any node "
                     "(the seed's FELIX_FELIXHOSTNAME problem).",
                     f"agent status nodename={agent!r} cni_nodename={cni!r}; blocks in etcd: "
                     f"{agent}: {self.store.affinities.get(agent, [])}, {cni}: {self.store.affinities.get(cni, [])}",
                     f"labnet etcd -l {self.lab} ls {ETCD_HOST_PREFIX}")

    def _agent_names(self) -> set[str]:
        names = set()
        for n, f in self.facts.items():
            names.add(str(f.status.get("nodename")) if f.status else n)
        return names

    def check_orphan_names(self) -> None:
        if self.store.error:
            return
        agents = self._agent_names()
        said = {x.problem for x in self.findings}
        for name, blocks in sorted(self.store.affinities.items()):
            if name in agents:
                continue
            users = [n for n, f in self.facts.items() if f.status and f.status.get("cni_nodename") == name]
            where = users[0] if users else "etcd"
            if any("node name mismatch" in p and repr(name) in p for p in said):
                continue
            self.add(where, f"IPAM blocks are affine to node {name!r}, which no agent runs as",
                     "Blocks are routed only by the agent whose node name matches the block's affinity: these "
                     "get no blackhole and no BGP route anywhere, so their pods are unreachable. A CNI plugin "
                     "with another node name (or a leftover of a renamed node) claimed them.",
                     f"blocks {', '.join(blocks)} affine to {name!r}; agents run as {', '.join(sorted(agents))}",
                     f"labnet etcd -l {self.lab} ls {ETCD_HOST_PREFIX}{name}/")

    # -- BGP -----------------------------------------------------------------------------------

    def _peer_facts(self, address: str) -> tuple[str | None, NodeFacts | None]:
        for n, f in self.facts.items():
            if f.status and str(f.status.get("bgp_address", "")).split("/")[0] == address:
                return n, f
        for n, f in self.facts.items():
            if str(self.view.topo.address_of(n)) == address:
                return n, f
        return None, None

    def check_bgp(self, f: NodeFacts) -> None:
        if not f.status:
            return
        for p in f.status.get("peers") or []:
            if p.get("bgp_state") == "Established":
                continue
            addr, info = str(p.get("peer_address")), str(p.get("info") or "")
            peer_name, pf = self._peer_facts(addr)
            label = f"{addr} ({peer_name or p.get('name') or 'external peer'})"
            evidence = f"{f.name} peer {label}: state {p.get('bgp_state')}, info {info!r}"
            route = run(f.ns, ["ip", "route", "get", addr], check=False, timeout=10)
            low = info.lower()
            my_asn = f.status.get("asn")
            peer_asn = pf.status.get("asn") if pf and pf.status else None
            if route.returncode != 0:
                self.add(f.name, f"BGP session to {label} is down: no route to the peer",
                         "The node cannot reach the peer's address, so TCP port 179 never connects; the "
                         "routes that peer would announce are missing.",
                         f"{evidence}; `ip route get {addr}`: {(route.stderr or route.stdout).strip()}",
                         self.cmd(f.name, "ip", "route", "get", addr))
            elif "2/2" in low or "bad peer as" in low or (peer_asn is not None and p.get("asn") is not None
                                                          and peer_asn != p.get("asn")):
                self.add(f.name, f"BGP session to {label} is down: AS number mismatch",
                         "Each side checks the AS number in the other's OPEN against its configuration; "
                         "a mismatch ends the session with NOTIFICATION 2/2 (Bad Peer AS).",
                         f"{evidence}; {f.name} (AS {my_asn}) expects AS {p.get('asn')} for {label}, "
                         f"which runs AS {peer_asn if peer_asn is not None else '?'}",
                         f"labnet bgp status -l {self.lab} {f.name}")
            elif "hold" in low or "4/0" in low:
                self.add(f.name, f"BGP session to {label} is down: the hold timer expired",
                         "The peer stopped sending KEEPALIVEs (its agent hung or was stopped, or packets are "
                         "lost on the way) for longer than the hold time, so the session was torn down.",
                         evidence, f"labnet bgp status -l {self.lab} {f.name}")
            elif "refused" in low or "errno 111" in low or tcp_probe(f.ns, addr, 179) == "refused":
                self.add(f.name, f"BGP session to {label} is down: nothing listens on TCP 179 there",
                         "The peer's address answers but refuses the connection: its BGP speaker (the agent) "
                         "is not running.",
                         evidence + f"; a TCP connect from {f.name} to {addr}:179 is refused"
                         + (f"; the peer's agent: {pf.status_error}" if pf and pf.status_error else ""),
                         f"labnet bgp status -l {self.lab} {peer_name or f.name}")
            elif pf is not None and pf.status is not None and not pf.status.get("router_id"):
                why = "; ".join(pf.status.get("problems") or []) or "no reason given"
                self.add(f.name, f"BGP session to {label} is down: the peer's agent has not started BGP",
                         f"{peer_name}'s agent runs but has no BGP speaker yet (it is still starting, or waiting "
                         "for the datastore), so nothing answers on TCP 179 there.",
                         f"{evidence}; {peer_name}'s agent: {why}", f"labnet bgp status -l {self.lab} {peer_name}")
            elif "6/" in low or "cease" in low:
                self.add(f.name, f"BGP session to {label} is down: the peer closed it (Cease)",
                         "The peer ended the session on purpose (its agent stopped or restarted, or it removed "
                         "this peer from its configuration) and has not come back.",
                         evidence, f"labnet bgp status -l {self.lab} {peer_name or f.name}")
            else:
                self.add(f.name, f"BGP session to {label} is not Established",
                         "Routes to that peer's blocks are not learned while the session is down.",
                         evidence, f"labnet bgp status -l {self.lab} {f.name}")

    # -- routes against the datastore ----------------------------------------------------------

    def check_routes(self) -> None:
        if self.store.error:
            return
        agents = self._agent_names()
        owners = {name: blocks for name, blocks in self.store.affinities.items() if name in agents}
        name_to_node = {(f.status.get("nodename") if f.status else n): n for n, f in self.facts.items()}
        for n in self.nodes:
            f = self.facts[n]
            if f.routes is None:
                continue
            me = str(f.status.get("nodename")) if f.status else n
            by_dst: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, list[Route]] = {}
            for r in f.routes:
                by_dst.setdefault(r.dst, []).append(r)
            for block in owners.get(me, []):
                net = ipaddress.ip_network(block)
                if net.version == 6 and self.settings.pool6 is None:
                    continue
                if not any(r.type == "blackhole" for r in by_dst.get(net, [])):
                    self.add(n, f"missing blackhole route for its own block {block}",
                             "A node blackholes each block it owns, so traffic to unused addresses of the block "
                             "is dropped here instead of looping back out of the default route.",
                             f"etcd says {me} owns {block}; {n} has no `blackhole {block}` route:\n{f.routes_text}",
                             self.cmd(n, "ip", "route", "show", "type", "blackhole"))
            for other, blocks in owners.items():
                if other == me:
                    continue
                via = self.store.records.get(other)
                via_ip = via.split("/")[0] if via else None
                for block in blocks:
                    net = ipaddress.ip_network(block)
                    if net.version == 6 and self.settings.pool6 is None:
                        continue
                    got = [r for r in by_dst.get(net, []) if r.type == "unicast"]
                    if not got:
                        self.add(n, f"missing route to {other}'s block {block}",
                                 f"etcd says {other} owns {block}, but {n} has no route to it: its pods cannot "
                                 f"reach the pods of {other} in that block.",
                                 f"no route for {block} in {n}'s table:\n{f.routes_text}",
                                 self.cmd(n, "ip", "route", "show", block))
                        continue
                    r = got[0]
                    want_dev, encap = self.tunnel_dev if self.mode == "always" else None, self.encap
                    if net.version == 6:  # the IPv6 pool's own encapsulation: VXLAN or none
                        p6 = self.settings.pool6
                        assert p6 is not None
                        want_dev = VXLAN6_DEVICE if p6.encap == "vxlan" and p6.mode == "always" else None
                        encap, via_ip = None, None
                    wrong = []
                    if encap == "ipip" and via_ip and r.gateway is not None and str(r.gateway) != via_ip:
                        wrong.append(f"via {r.gateway}, expected via {via_ip}")
                    if want_dev and r.dev != want_dev:
                        wrong.append(f"dev {r.dev}, expected dev {want_dev}")
                    if wrong:
                        peer = name_to_node.get(other, other)
                        self.add(n, f"wrong route to {peer}'s block {block}: {'; '.join(wrong)}",
                                 "The route does not lead to the node that owns the block (or bypasses the tunnel "
                                 "the pool requires), so packets to those pods go astray.",
                                 f"{r}", self.cmd(n, "ip", "route", "show", block))

    # -- MTU -----------------------------------------------------------------------------------

    def check_mtu(self, f: NodeFacts) -> None:
        if self.tunnel_dev is None or self.tunnel_dev not in f.links:
            return
        tmtu = int(f.links[self.tunnel_dev].get("mtu", 0))
        for pod, mtu in sorted(f.pod_mtus.items()):
            if mtu is not None and mtu > tmtu:
                self.add(f.name, f"pod {pod} eth0 MTU {mtu} is larger than {self.tunnel_dev} MTU {tmtu}",
                         f"Packets of {tmtu + 1} to {mtu} bytes from {pod} to other nodes do not fit the "
                         f"tunnel: they are dropped (or need fragmentation/PMTU discovery), so small pings work "
                         f"while bulk transfers stall.",
                         f"{pod} eth0 mtu {mtu}; {f.name} {self.tunnel_dev} mtu {tmtu}",
                         self.cmd(f"{f.name}/{pod}", "ip", "link", "show", "eth0"))

    # -- rp_filter -----------------------------------------------------------------------------

    def _asymmetric(self, f: NodeFacts) -> list[str]:
        """Routes into the pool that leave by another device than the blocks' tunnel routes."""
        if f.routes is None or self.tunnel_dev is None or self.mode != "always":
            return []
        pool = ipaddress.IPv4Network(str(self.view.topo.cluster.pool4.cidr)) if self.view.topo.cluster else None
        out = []
        for r in f.routes:
            if pool is None or r.type != "unicast" or r.dst.version != 4 or not r.dst.subnet_of(pool):  # type: ignore[arg-type]
                continue
            if r.dev in (self.tunnel_dev, None) or (r.dev or "").startswith("cali"):
                continue
            out.append(str(r))
        return out

    def check_rp_filter(self, f: NodeFacts) -> None:
        strict = {k: v for k, v in f.sysctls.items() if v == "1"}
        if not strict:
            return
        asym = self._asymmetric(f)
        drops = f.rp_drops or 0
        if not drops and not asym:
            return  # strict rp_filter with symmetric paths drops nothing
        values = ", ".join(f"{k}={v}" for k, v in sorted(f.sysctls.items()))
        self.add(f.name, "rp_filter=1 (strict) drops pod traffic",
                 "With strict reverse-path filtering the kernel drops a packet whose source it would not route "
                 "back out of the interface it came in on. Pod traffic arriving over the tunnel (or the underlay) "
                 "while the route back goes the other way - an asymmetric path - is dropped silently. Use "
                 "rp_filter=2 (loose) or 0, or make the paths symmetric.",
                 f"{values}; IPReversePathFilter drops: {drops}"
                 + (f"; asymmetric pool routes: {'; '.join(asym)}" if asym else ""),
                 self.cmd(f.name, "sh", "-c", "'sysctl net.ipv4.conf | grep rp_filter; nstat -az "
                          "TcpExtIPReversePathFilter'"))

    # -- policy --------------------------------------------------------------------------------

    def check_policy(self, f: NodeFacts) -> None:
        if not f.policy:
            return
        pods_by_veth = {r.get("host_veth"): p for p, r in self.view.journal.info.get("pods", {}).items()
                        if r.get("node") == f.name}
        chains: dict[str, list[str]] = {}
        drops: list[tuple[str, str, int]] = []
        for obj in f.policy:
            rule = obj.get("rule")
            if not rule:
                continue
            comment = str(rule.get("comment", ""))
            chain = str(rule.get("chain", ""))
            exprs = rule.get("expr", [])
            chains.setdefault(chain, []).append(comment)
            packets = next((int(e["counter"]["packets"]) for e in exprs if isinstance(e, dict) and "counter" in e), 0)
            if packets and any(isinstance(e, dict) and "drop" in e for e in exprs):
                drops.append((chain, comment, packets))
        for chain, comment, packets in drops:
            veth = chain[3:] if chain.startswith("to_") else chain
            pod = pods_by_veth.get(veth, veth)
            policy = comment.removeprefix("policy=").split(" ")[0] or "?"
            allows = [c for c in chains.get(chain, []) if c.startswith("policy=") and " rule=" in c]
            names = sorted({c.removeprefix("policy=").split(" ")[0] for c in allows})
            if policy == "default-deny":  # name who selects the pod: their rules are the ones to extend
                why = "the lab's default is deny and no rule allows this traffic (" + (
                    f"policies selecting {pod}: {', '.join(names)}; none of their rules match it)" if names
                    else f"no policy selects {pod})")
            elif policy == "end-of-policies":
                why = f"policies {', '.join(names)} select the pod and none of their rules allow this traffic"
            else:
                why = f"policy {policy} drops it"
            self.add(f.name, f"policy {policy} dropped {packets} packet(s) to pod {pod}",
                     f"Traffic to {pod} is filtered on {f.name} (nft table inet labnet-policy, chain {chain}): "
                     f"{why}. As in the seed's comments: everything not explicitly allowed is dropped; add an "
                     f"allow rule for the traffic {pod} must receive.",
                     f"rule \"{comment}\" in chain {chain} counted {packets} dropped packet(s); "
                     f"allow rules in the chain: {', '.join(allows) or 'none'}",
                     self.cmd(f.name, "nft", "list", "table", "inet", "labnet-policy"))

    # -- whatever else the agent says ---------------------------------------------------------

    _COVERED = ("no route to 169.254.1.1", "node name mismatch", "IPAM blocks are affine")

    def check_agent_problems(self, f: NodeFacts) -> None:
        if not f.status:
            return
        for p in f.status.get("problems") or []:
            if any(str(p).startswith(c) for c in self._COVERED):
                continue
            if "etcd unreachable" in str(p):
                self.etcd_unreachable(f, str(p))
                continue
            self.add(f.name, f"the agent reports: {p}", "The node's agent found this during its last pass.",
                     str(p), f"labnet exec -l {self.lab} {f.name} -- tail /var/log/labnet/agent.log")


    def etcd_unreachable(self, f: NodeFacts, problem: str) -> None:
        endpoints = self.view.journal.info.get("etcd", {}).get("endpoints", [])
        hosts = [e.split("://")[-1].rsplit(":", 1)[0] for e in endpoints]
        routes = {h: run(f.ns, ["ip", "route", "get", h], check=False, timeout=10) for h in hosts}
        unrouted = [h for h, p in routes.items() if p.returncode != 0]
        if unrouted:
            self.add(f.name, f"the agent cannot reach etcd: no route to {', '.join(unrouted)}",
                     "Without the datastore the agent cannot read the cluster settings, register the node or "
                     "learn blocks: no BGP, no routes, and the CNI plugin on this node fails too.",
                     f"{problem}; `ip route get {unrouted[0]}`: {routes[unrouted[0]].stderr.strip()}",
                     self.cmd(f.name, "ip", "route", "get", unrouted[0]))
        else:
            self.add(f.name, "the agent cannot reach etcd",
                     "Without the datastore the agent cannot learn changes; the CNI plugin fails with code 11.",
                     problem, f"labnet etcd -l {self.lab} health")


def diagnose(view: LabView, node: str | None = None) -> list[Finding]:
    return Doctor(view, node).run()


