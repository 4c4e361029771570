"""Faults as scenario steps: break the lab, and put it back when the scenario ends.

Every fault step does one thing to a running lab, returns a CheckResult saying what it did
("fault: link_down node-3 ens32"), and pushes its undo onto the scenario's Undo stack
(labnet.scenarios), which runs when the scenario ends, whatever happened:

  link_down / link_up      {machine, interface[, side]}   cable pulled: the fabric-side veth goes down
                                                          (side: machine sets the machine's own end)
  packet_loss              {machine, interface, percent[, direction]}  random drop with nftables
                           (`numgen random mod 100 < N drop`) in a table labnet owns inside the
                           machine; netem is absent from this kernel
  kill_agent               {node}  SIGKILL the agent's own pid; its supervisor restarts it
  stop_agent / start_agent {node}  SIGTERM the supervisor (the agent removes its routes and
                                   tunnel, as on a clean shutdown) / start it again
  stop_node / start_node   {node}  the node "loses power" as its peers see it: every link cut at
                                   the fabric side and every process in its network namespace
                                   (supervisor, agent, etcd) frozen with SIGSTOP; start = SIGCONT
                                   and links up. Nothing inside the node is lost or restarted.
  kill_etcd / restart_etcd {node}  SIGKILL the etcd member by its journal-recorded pid / start it
                                   again with the same argv (the journal records the new pid)
  remove_default_route     {node}  the seed's first reader problem (proxy-ARP gets no answer)
  rename_agent             {node, name}  the seed's second one: the agent registers under
                                   another name than the CNI plugin's (AgentConfig.nodename)

State-polling steps (no fixed sleeps; they never change the lab):

  converge      {from, to, within}   ping until it answers; reports how long it took
  etcd_health   {expect}             etcd's /health is (or is not) ok on every member
  agent_problem {node, match}        the agent's status lists a problem containing `match`

Undo actions wait until the state is back (agent answering, etcd healthy), and the first
fault that disturbs routing also makes the scenario end with the lab converged again, so the
next scenario starts from a clean lab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from labnet import paths
from labnet.checks import CheckFailed, CheckResult
from labnet.checks.assertions import failure_message
from labnet.errors import BadInput, LabnetError, WaitTimeout
from labnet.labview import LabView
from labnet.nsexec import NodeNS, pid_alive, proc_starttime, run
from labnet.scenarios import FAULTS, STEPS, FaultFn, Undo
from labnet.topology.steps import ENDPOINTS, MACHINES, Ref, StepArgs, register_step
from labnet.wait import poll

if TYPE_CHECKING:
    from labnet.topology.model import Topology

log = logging.getLogger("labnet.faults")  # every fault and convergence time, for pytest's log capture
RECOVERY_TIMEOUT = 90.0  # an undo may wait this long for the lab to come back (BGP, etcd, agent)
AGENT_CONFIG_INSIDE = "/var/lib/labnet/agent.json"  # as labnet.phases writes it
LOGS_INSIDE = {"etcd": "/var/log/labnet/etcd.log", "agent": "/var/log/labnet/agent-supervisor.log"}
NFT_TABLE_PREFIX = "labnet-loss-"


# ---------------------------------------------------------------- step arguments


class LinkArgs(StepArgs):
    machine: str = Field(description="router, host or node")
    interface: str = Field(description="the machine's interface name, e.g. ens32")
    side: Literal["fabric", "machine"] = Field(
        default="fabric", description="fabric: the LAN-side veth (cable pulled; the machine keeps its routes); "
                                      "machine: the machine's own interface (the kernel drops its routes)")


class PacketLossArgs(StepArgs):
    machine: str
    interface: str
    percent: int = Field(ge=0, le=100, description="share of packets dropped, 0-100")
    direction: Literal["in", "out", "both"] = "both"


class NodeArgs(StepArgs):
    node: str


class RenameAgentArgs(StepArgs):
    node: str
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
                      description="the name the agent registers under instead of the CNI plugin's")


class ConvergeArgs(StepArgs):
    from_: str = Field(alias="from", description="pod or machine that pings")
    to: str = Field(description="pod, machine or IPv4 address")
    within: float = Field(default=30.0, gt=0, le=600, description="seconds allowed")


class BgpDownArgs(StepArgs):
    node: str
    peer: str = Field(description="peer machine name or address")
    within: float = Field(default=30.0, gt=0, le=600, description="seconds allowed (the hold time, and some)")


class EtcdHealthArgs(StepArgs):
    expect: Literal["healthy", "unhealthy"] = "healthy"


class AgentProblemArgs(StepArgs):
    node: str
    match: str = Field(min_length=1, description="text one of the agent's problems must contain")
    present: bool = True


def _interfaces_of(topo: Topology, machine: str) -> list[str] | None:
    try:
        spec = topo.machine(machine)
    except KeyError:
        return None  # the reference check reports the unknown machine
    return [str(i.name) for i in spec.interfaces]


def _check_interface(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    names = _interfaces_of(topo, str(args.get("machine")))
    if names is None or args.get("interface") in names:
        return []
    return [("interface", f"{args.get('machine')} has no interface {args.get('interface')!r} "
                          f"(it has: {', '.join(names)})")]


def _check_rename(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    name = args.get("name")
    if name == args.get("node"):
        return [("name", f"renaming {name} to its own name changes nothing")]
    if name in {n for n, _k, _s in topo.machines()}:
        return [("name", f"{name!r} is another machine of the lab; pick a name nobody uses")]
    return []


def _check_etcd_node(topo: Topology, args: dict[str, Any]) -> list[tuple[str, str]]:
    c = topo.cluster
    if c is None or args.get("node") in c.etcd.nodes:
        return []
    return [("node", f"{args.get('node')} runs no etcd member (members: {', '.join(c.etcd.nodes)})")]


_NODE = Ref(("node",))
_MACHINE = Ref(MACHINES)


def register() -> None:
    """Register the step kinds (argument models, references) and their runners."""
    register_step("link_down", LinkArgs, {"machine": _MACHINE},
                  "fault: set a machine's link down (undone: up again)", _check_interface)
    register_step("link_up", LinkArgs, {"machine": _MACHINE},
                  "set a machine's link up (ends a link_down early)", _check_interface)
    register_step("packet_loss", PacketLossArgs, {"machine": _MACHINE},
                  "fault: drop percent% of an interface's packets at random (nftables)", _check_interface)
    register_step("kill_agent", NodeArgs, {"node": _NODE},
                  "fault: SIGKILL the node's agent; its supervisor restarts it")
    register_step("stop_agent", NodeArgs, {"node": _NODE},
                  "fault: stop the node's agent and its supervisor (undone: started again)")
    register_step("start_agent", NodeArgs, {"node": _NODE}, "start a stopped agent again")
    register_step("stop_node", NodeArgs, {"node": _NODE},
                  "fault: freeze a node: links cut at the fabric, its processes SIGSTOPped")
    register_step("start_node", NodeArgs, {"node": _NODE}, "resume a stopped node")
    register_step("kill_etcd", NodeArgs, {"node": _NODE},
                  "fault: SIGKILL the node's etcd member (undone: restarted)", _check_etcd_node)
    register_step("restart_etcd", NodeArgs, {"node": _NODE},
                  "start a killed etcd member again with the same argv", _check_etcd_node)
    register_step("remove_default_route", NodeArgs, {"node": _NODE},
                  "fault: delete the node's default route (undone: re-added)")
    register_step("rename_agent", RenameAgentArgs, {"node": _NODE},
                  "fault: the agent registers under another name than the CNI plugin's", _check_rename)
    register_step("converge", ConvergeArgs, {"from": Ref(ENDPOINTS), "to": Ref(ENDPOINTS, ip=True)},
                  "ping until it answers, within `within` seconds; reports the time it took")
    register_step("bgp_down", BgpDownArgs, {"node": _NODE, "peer": Ref(MACHINES, ip=True)},
                  "the node's BGP session with peer is (or goes) down, within `within` seconds")
    register_step("etcd_health", EtcdHealthArgs, {}, "every etcd member is (or is not) healthy")
    register_step("agent_problem", AgentProblemArgs, {"node": _NODE},
                  "the node's agent reports (or does not report) a problem containing `match`")
    runners: dict[str, FaultFn] = {
        "link_down": link_down, "link_up": link_up, "packet_loss": packet_loss,
        "kill_agent": kill_agent, "stop_agent": stop_agent, "start_agent": start_agent,
        "stop_node": stop_node, "start_node": start_node, "kill_etcd": kill_etcd,
        "restart_etcd": restart_etcd, "remove_default_route": remove_default_route,
        "rename_agent": rename_agent,
    }
    FAULTS.update({kind: _as_check(kind, fn) for kind, fn in runners.items()})
    STEPS.update({"bgp_down": bgp_down, "converge": converge, "etcd_health": etcd_health, "agent_problem": agent_problem})


def _as_check(kind: str, fn: FaultFn) -> FaultFn:
    """A fault that could not be applied is a failed check (a row in the CLI's table, a test
    failure naming what was tried); bad input stays BadInput (exit 2)."""

    def runner(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
        __tracebackhide__ = True
        t0 = time.monotonic()
        try:
            return fn(view, a, timeout, undo)
        except BadInput:
            raise
        except LabnetError as exc:
            target = str(a.get("node") or a.get("machine") or view.name)
            what = " ".join(str(a[k]) for k in ("node", "machine", "interface") if a.get(k))
            name = f"fault: {kind} {what}".rstrip()
            msg = f"fault step failed on {target}: {name}\n  {exc}"
            raise CheckFailed(CheckResult(False, name, target, str(exc).splitlines()[0][:300],
                                          time.monotonic() - t0, message=msg)) from exc

    runner.__name__ = fn.__name__
    return runner


# ---------------------------------------------------------------- helpers


def _done(kind: str, target: str, what: str, detail: str, t0: float) -> list[CheckResult]:
    result = CheckResult(True, f"fault: {kind} {what}".rstrip(), target, detail, time.monotonic() - t0)
    log.info("%s", result.summary())
    return [result]


def _runtime(view: LabView) -> Any:
    from labnet.runtime import get_runtime

    return get_runtime(view.journal.runtime)(view.name, view.journal)


def _fabric(view: LabView) -> NodeNS:
    return NodeNS("fabric", str(paths.NETNS_DIR / paths.fabric_netns(view.name)))


def _fabric_veth(view: LabView, machine: str, iface: str) -> str:
    return paths.short_ifname(view.name, machine, iface)  # as the runtime names it (runtime/netns.py)


def _machine_ifaces(view: LabView, machine: str) -> list[str]:
    info = view.journal.info.get("machines", {})
    if machine not in info:
        raise BadInput(f"lab {view.name}: no router, host or node named {machine!r}")
    return [str(i["name"]) for i in info[machine]["interfaces"]]


def _need_iface(view: LabView, machine: str, iface: str) -> None:
    have = _machine_ifaces(view, machine)
    if iface not in have:
        raise BadInput(f"lab {view.name}: {machine} has no interface {iface!r} (it has: {', '.join(have)})")


def _link_state(ns: NodeNS, dev: str) -> dict[str, Any]:
    (link,) = json.loads(run(ns, ["ip", "-j", "link", "show", "dev", dev], timeout=10).stdout)
    return {"up": "UP" in link.get("flags", []), "operstate": link.get("operstate"),
            "carrier": "NO-CARRIER" not in link.get("flags", [])}


def _set_link(ns: NodeNS, dev: str, up: bool) -> None:
    run(ns, ["ip", "link", "set", "dev", dev, "up" if up else "down"], timeout=10)


def _routes_via(ns: NodeNS, dev: str) -> list[dict[str, Any]]:
    out = json.loads(run(ns, ["ip", "-j", "route", "show", "dev", dev], timeout=10).stdout or "[]")
    return [r for r in out if r.get("protocol") != "kernel"]  # the kernel re-adds its own


def _route_argv(r: dict[str, Any], dev: str) -> list[str]:
    argv = [str(r["dst"])]
    if r.get("gateway"):
        argv += ["via", str(r["gateway"])]
    argv += ["dev", dev]
    for key, word in (("protocol", "proto"), ("metric", "metric"), ("scope", "scope"), ("prefsrc", "src")):
        if r.get(key) not in (None, "", "global"):
            argv += [word, str(r[key])]
    if "onlink" in (r.get("flags") or []):
        argv.append("onlink")
    return argv


_MARKED: weakref.WeakSet[Undo] = weakref.WeakSet()


def _converge_at_end(view: LabView, undo: Undo) -> None:
    """The first routing fault of a scenario makes it end with the lab converged again (this
    undo is pushed first, so it runs last, after every other undo)."""
    if undo in _MARKED:
        return
    _MARKED.add(undo)
    undo.push("lab converged again", lambda: wait_converged(view, RECOVERY_TIMEOUT))


def _brief(view: LabView, node: str) -> dict[str, Any]:
    try:
        st = view.agent_status(node)
    except Exception as exc:
        return {"error": str(exc)[:200]}
    return {"pid": st.get("pid"), "nodename": st.get("nodename"), "blocks": st.get("blocks") or [],
            "peers": {p["peer_address"]: p.get("bgp_state") for p in st.get("peers", [])},
            "routes": st.get("routes") or []}


def wait_converged(view: LabView, timeout: float) -> None:
    """Every agent answers, every BGP session is Established, every node's blocks routed everywhere."""
    nodes = list(view.topo.nodes)
    expect_peers = len(nodes) > 1

    def ok(st: dict[str, dict[str, Any]]) -> bool:
        if any("error" in s or not s["blocks"] for s in st.values()):
            return False
        for n, s in st.items():
            if s["nodename"] != n or (expect_peers and not s["peers"]):
                return False
            if any(v != "Established" for v in s["peers"].values()):
                return False
            have = " ".join(map(str, s["routes"]))
            if any(b not in have for o in nodes if o != n for b in st[o]["blocks"]):
                return False
        return True

    poll(lambda: {n: _brief(view, n) for n in nodes}, ok, timeout=timeout,
         what=f"lab {view.name}: every agent back, BGP Established and every block routed everywhere")


# -- recorded processes (etcd members, agent supervisors) --------------------------------------


def _entry(view: LabView, node: str, what: str) -> dict[str, Any]:
    for e in view.journal.of_kind("process"):
        if e.get("node") == node and e.get("what") == what:
            return e
    raise BadInput(f"lab {view.name}: node {node} has no recorded {what} process")


@contextlib.contextmanager
def _journal_edit(view: LabView) -> Iterator[Any]:
    """Change the lab's journal under the lab's lock, from its newest copy on disk."""
    from labnet import lab

    with lab.lab_lock(view.name):
        journal = lab.load_journal(view.name)
        if journal is None:
            raise LabnetError(f"lab {view.name}: its journal is gone (was the lab taken down?)")
        yield journal
        view.journal = journal


def _alive(entry: dict[str, Any]) -> bool:
    pid, start = int(entry["pid"]), entry.get("start")
    return pid_alive(pid) and (start is None or proc_starttime(pid) == start)


def _remember_argv(view: LabView, node: str, what: str) -> dict[str, Any]:
    """Keep the running process's argv in its journal entry, so it can be started again later,
    also by another labnet process."""
    entry = _entry(view, node, what)
    if entry.get("argv") or not _alive(entry):
        return entry
    raw = Path(f"/proc/{entry['pid']}/cmdline").read_bytes()
    argv = [a.decode() for a in raw.split(b"\0") if a]
    with _journal_edit(view) as j:
        fresh = _entry_in(j, node, what)
        j.update(fresh, argv=argv)
    return _entry(view, node, what)


def _entry_in(journal: Any, node: str, what: str) -> dict[str, Any]:
    for e in journal.of_kind("process"):
        if e.get("node") == node and e.get("what") == what:
            return e  # type: ignore[no-any-return]
    raise LabnetError(f"lab {journal.lab}: node {node} has no recorded {what} process")


def _start_recorded(view: LabView, node: str, what: str) -> int:
    """Start a stopped recorded process again with its argv; the journal gets the new pid."""
    from labnet import lab

    entry = _entry(view, node, what)
    if _alive(entry):
        return int(entry["pid"])
    argv = entry.get("argv")
    if not argv:
        raise LabnetError(f"lab {view.name}: node {node}: the {what} process (pid {entry['pid']}) is gone and "
                          f"its argv was never recorded, so it cannot be started again")
    env = None
    if what == "etcd":
        from labnet.etcd.server import etcd_env

        env = etcd_env()
    rt = _runtime(view)
    with _journal_edit(view) as j:
        fresh = _entry_in(j, node, what)
        return lab.respawn_process(j, fresh, rt.ns(node), argv, log=rt.host_path(node, LOGS_INSIDE[what]), env=env)


def _stop_recorded(view: LabView, node: str, what: str, sig: signal.Signals) -> int:
    from labnet import lab

    entry = _remember_argv(view, node, what)
    if not _alive(entry):
        raise LabnetError(f"node {node}: the {what} process (pid {entry['pid']}) is not running")
    pid = int(entry["pid"])
    if sig == signal.SIGTERM:
        lab.stop_process(entry, timeout=20)
    else:
        os.kill(pid, sig)
        poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=10,
             what=f"{what} pid {pid} on {node} to die after {sig.name}")
    return pid


# -- agent ------------------------------------------------------------------------------------


def _agent_pid(view: LabView, node: str) -> int:
    st = view.agent_status(node)
    pid = st.get("pid")
    if not isinstance(pid, int):
        raise LabnetError(f"node {node}: the agent's status has no pid: {st}")
    _same_netns(view, node, pid)
    return pid


def _same_netns(view: LabView, node: str, pid: int) -> None:
    """Never signal a pid that is not inside the node (say, one a restarted runtime reused)."""
    want = os.stat(view.ns(node).netns).st_ino
    try:
        got = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError as exc:
        raise LabnetError(f"node {node}: pid {pid} is gone ({exc})") from exc
    if got != want:
        raise LabnetError(f"node {node}: pid {pid} does not run in the node's network namespace")


def _wait_agent(view: LabView, node: str, timeout: float, *, not_pid: int | None = None,
                name: str | None = None) -> dict[str, Any]:
    """Until the node's agent answers (a new one, when not_pid is given) under `name`, ready."""
    want = name or node

    def ok(b: dict[str, Any]) -> bool:
        return "error" not in b and b["pid"] != not_pid and b["nodename"] == want and bool(b["blocks"])

    return poll(lambda: _brief(view, node), ok, timeout=timeout,
                what=f"the agent of {node} to answer again as {want!r}"
                     + (f" with a new pid (old {not_pid})" if not_pid else ""))


# ---------------------------------------------------------------- fault runners


def _link(view: LabView, a: dict[str, Any], up: bool) -> tuple[NodeNS, str, str]:
    machine, iface = a["machine"], a["interface"]
    _need_iface(view, machine, iface)
    if a.get("side", "fabric") == "machine":
        return view.ns(machine), iface, f"{machine}'s own {iface}"
    veth = _fabric_veth(view, machine, iface)
    return _fabric(view), veth, f"fabric veth {veth} of {machine}:{iface}"


_DOWN_LINKS: dict[tuple[str, str, str], Callable[[], None]] = {}


def link_down(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    ns, dev, label = _link(view, a, False)
    machine, iface = a["machine"], a["interface"]
    routes = _routes_via(view.ns(machine), iface) if a.get("side") == "machine" else []
    _set_link(ns, dev, False)

    def back() -> None:
        _set_link(ns, dev, True)
        if routes:  # the kernel dropped the machine's routes through the device: put them back
            m = view.ns(machine)
            poll(lambda: _link_state(m, iface), lambda s: s["up"], timeout=10, what=f"{machine} {iface} up")
            for r in routes:
                run(m, ["ip", "route", "replace", *_route_argv(r, iface)], timeout=10)

    key = (view.name, machine, iface)

    def undo_down() -> None:
        _DOWN_LINKS.pop(key, None)
        back()

    undo.push(f"link_down {machine} {iface}", undo_down)
    _DOWN_LINKS[key] = back  # link_up brings back the routes too
    st = poll(lambda: _link_state(view.ns(machine), iface), lambda s: not (s["up"] and s["carrier"]),
              timeout=timeout, what=f"{machine} {iface} to lose its link")
    return _done("link_down", machine, f"{machine} {iface}",
                 f"{label} down; {machine} sees {iface} {st['operstate']}", t0)


def link_up(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    ns, dev, label = _link(view, a, True)
    machine, iface = a["machine"], a["interface"]
    back = _DOWN_LINKS.pop((view.name, machine, iface), None)
    if back is not None:
        back()  # also the routes the kernel dropped (its undo, still pushed, runs again harmlessly)
    _set_link(ns, dev, True)
    st = poll(lambda: _link_state(view.ns(machine), iface), lambda s: s["up"] and s["carrier"],
              timeout=timeout, what=f"{machine} {iface} to have its link back")
    return _done("link_up", machine, f"{machine} {iface}", f"{label} up; {machine} sees {iface} {st['operstate']}",
                 t0)


def nft_loss_script(table: str, iface: str, percent: int, direction: str) -> str:
    """The nft transaction that (re)creates the loss table: `add` first so `delete` never fails."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", iface):
        raise BadInput(f"interface name {iface!r} is not a Linux interface name")
    if not 0 <= percent <= 100:
        raise BadInput(f"packet loss percent must be 0-100, not {percent}")
    # numgen values are 0-99: `< 100` is out of range, so 100% is a plain drop, 0% no rule
    match = "" if percent == 100 else f" numgen random mod 100 < {percent}"
    rule = "" if percent == 0 else f"{{dir}}ifname \"{iface}\"{match} counter drop; "
    chains = []
    if direction in ("in", "both"):
        chains.append("  chain ingress { type filter hook prerouting priority -300; policy accept; "
                      + rule.replace("{dir}", "i") + "}")
    if direction in ("out", "both"):
        chains.append("  chain egress { type filter hook postrouting priority -300; policy accept; "
                      + rule.replace("{dir}", "o") + "}")
    if not chains:
        raise BadInput(f"packet loss direction must be in, out or both, not {direction!r}")
    return (f"add table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n" + "\n".join(chains) + "\n}\n")


def loss_table(iface: str) -> str:
    return NFT_TABLE_PREFIX + iface


def packet_loss(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    machine, iface, pct = a["machine"], a["interface"], int(a["percent"])
    _need_iface(view, machine, iface)
    ns, table = view.ns(machine), loss_table(iface)
    run(ns, ["nft", "-f", "-"], input=nft_loss_script(table, iface, pct, a.get("direction", "both")), timeout=10)

    def remove() -> None:
        run(ns, ["nft", "-f", "-"], input=f"add table inet {table}\ndelete table inet {table}\n", timeout=10)

    undo.push(f"packet_loss {machine} {iface}", remove)
    return _done("packet_loss", machine, f"{machine} {iface} {pct}%",
                 f"nft table inet {table} drops {pct}% of {a.get('direction', 'both')} packets on {iface}", t0)


def kill_agent(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a["node"]
    pid = _agent_pid(view, node)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=timeout, what=f"agent pid {pid} on {node} to die")

    def back() -> None:
        _wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=pid)

    undo.push(f"kill_agent {node}", back)
    return _done("kill_agent", node, node, f"SIGKILL agent pid {pid}; its supervisor restarts it", t0)


def stop_agent(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a["node"]
    pid = _stop_recorded(view, node, "agent", signal.SIGTERM)

    def back() -> None:
        _start_agent(view, node)

    undo.push(f"stop_agent {node}", back)
    return _done("stop_agent", node, node, f"supervisor pid {pid} and its agent stopped (SIGTERM)", t0)


def _start_agent(view: LabView, node: str, timeout: float = RECOVERY_TIMEOUT) -> int:
    pid = _start_recorded(view, node, "agent")
    _wait_agent(view, node, timeout)
    return pid


def start_agent(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    pid = _start_agent(view, a["node"], max(timeout, RECOVERY_TIMEOUT))
    return _done("start_agent", a["node"], a["node"], f"supervisor pid {pid}; the agent answers", t0)


def _netns_pids(netns: str) -> list[int]:
    ino = os.stat(netns).st_ino
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{d}/ns/net").st_ino == ino:
                    out.append(int(d))
    return sorted(out)


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _freeze(netns: str, frozen: list[tuple[int, int | None]], node: str) -> None:
    """SIGSTOP every process in the namespace until a whole pass finds them all stopped: a
    signal takes effect when the process next runs, and a child forked meanwhile needs its own."""

    def sweep() -> list[str]:
        running = []
        for p in _netns_pids(netns):
            state = _proc_state(p)
            if state in ("T", "t", "Z", "X", "gone"):
                continue
            if all(p != q for q, _s in frozen):
                frozen.append((p, proc_starttime(p)))
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
            running.append(f"{p}:{state}")
        return running

    poll(sweep, lambda running: not running, timeout=10, what=f"every process of {node} stopped")


def stop_node(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a["node"]
    fab = _fabric(view)
    veths = [(i, _fabric_veth(view, node, i)) for i in _machine_ifaces(view, node)]
    frozen: list[tuple[int, int | None]] = []

    def resume() -> None:
        for p, start in frozen:
            if proc_starttime(p) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
        for _i, veth in veths:
            _set_link(fab, veth, True)
        _wait_agent(view, node, RECOVERY_TIMEOUT)

    def undo_stop() -> None:
        _STOPPED.pop((view.name, node), None)
        resume()

    undo.push(f"stop_node {node}", undo_stop)
    for _i, veth in veths:
        _set_link(fab, veth, False)
    _freeze(view.ns(node).netns, frozen, node)
    _STOPPED[(view.name, node)] = resume
    return _done("stop_node", node, node,
                 f"links {', '.join(i for i, _ in veths)} cut at the fabric; "
                 f"{len(frozen)} processes frozen (SIGSTOP: {' '.join(str(p) for p, _ in frozen) or 'none'})", t0)


_STOPPED: dict[tuple[str, str], Callable[[], None]] = {}


def start_node(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    node = a["node"]
    resume = _STOPPED.pop((view.name, node), None)
    if resume is None:
        # not stopped by this process: links up and every process of the node continued
        fab = _fabric(view)
        for i in _machine_ifaces(view, node):
            _set_link(fab, _fabric_veth(view, node, i), True)
        for p in _netns_pids(view.ns(node).netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        _wait_agent(view, node, RECOVERY_TIMEOUT)
    else:
        resume()  # its undo (still pushed) runs again at the end, harmlessly
    return _done("start_node", node, node, "links up, processes continued (SIGCONT); the agent answers", t0)


def kill_etcd(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a["node"]
    pid = _stop_recorded(view, node, "etcd", signal.SIGKILL)

    def back() -> None:
        _restart_etcd(view, node)

    undo.push(f"kill_etcd {node}", back)
    return _done("kill_etcd", node, node, f"SIGKILL etcd pid {pid} (journal-recorded)", t0)


def _restart_etcd(view: LabView, node: str) -> int:
    pid = _start_recorded(view, node, "etcd")
    poll(lambda: etcd_health_now(view), lambda h: bool(h) and all(ok for ok, _ in h.values()),
         timeout=RECOVERY_TIMEOUT, what=f"etcd member on {node} (pid {pid}) healthy again")
    return pid


def restart_etcd(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    pid = _restart_etcd(view, a["node"])
    return _done("restart_etcd", a["node"], a["node"], f"etcd pid {pid} started with its recorded argv; healthy",
                 t0)


def remove_default_route(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    node = a["node"]
    ns = view.ns(node)
    defaults = json.loads(run(ns, ["ip", "-j", "-4", "route", "show", "default"], timeout=10).stdout or "[]")
    if not defaults:
        raise LabnetError(f"node {node} has no default route to remove")
    for r in defaults:
        run(ns, ["ip", "route", "del", *_route_argv(r, r["dev"])], timeout=10)

    def back() -> None:
        for r in defaults:
            run(ns, ["ip", "route", "replace", *_route_argv(r, r["dev"])], timeout=10)

    undo.push(f"remove_default_route {node}", back)
    text = "; ".join(" ".join(_route_argv(r, r["dev"])) for r in defaults)
    return _done("remove_default_route", node, node, f"deleted `{text}`", t0)


def rename_agent(view: LabView, a: dict[str, Any], timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node, name = a["node"], a["name"]
    path = _runtime(view).host_path(node, AGENT_CONFIG_INSIDE)
    original = path.read_bytes()
    cfg = json.loads(original)
    cfg["nodename"] = name
    old_pid = _agent_pid(view, node)

    def restore() -> None:
        path.write_bytes(original)
        pid = _agent_pid(view, node)
        os.kill(pid, signal.SIGTERM)  # a clean exit; the supervisor starts it with the old config
        _wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=pid)
        forget_node(view, name)

    undo.push(f"rename_agent {node}", restore)
    tmp = path.with_suffix(".fault.tmp")
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, path)
    os.kill(old_pid, signal.SIGTERM)
    _wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=old_pid, name=name)
    return _done("rename_agent", node, f"{node} → {name}",
                 f"agent restarted with nodename {name!r} (the CNI plugin still says {node!r})", t0)


def forget_node(view: LabView, name: str) -> None:
    """Remove what an agent registered under `name`: its node record, its tunnel address, and the
    blocks it claimed once they are empty (so the renamed node leaves no trace in etcd)."""
    from labnet.etcd import keys
    from labnet.etcd.admin import admin_store
    from labnet.ipam import allocator

    store = admin_store(view.journal.info)
    try:
        store.delete(keys.node(name))
        allocator.release(store, allocator.tunnel_handle(name))
        for cidr in allocator.blocks_of(store, name):
            kv = store.get(keys.block(cidr))
            if kv is not None and allocator.Block.decode(kv.value).used() == 0:
                store.delete(keys.block(cidr), mod_revision=kv.mod_revision)
            store.delete(keys.affinity(name, cidr))
    finally:
        store.close()


# ---------------------------------------------------------------- state-polling steps


def converge(view: LabView, a: dict[str, Any], timeout: float) -> list[CheckResult]:
    """Ping (one echo, 0.3 s wait) until a reply comes, for at most `within` seconds."""
    src = view.endpoint(a["from"])
    if src.ns is None:
        raise BadInput(f"converge from {a['from']!r}: an address cannot send pings")
    dst = view.endpoint(a["to"])
    within = float(a.get("within", 30.0))
    label = f"{a['to']} ({dst.ip})" if a["to"] != dst.ip else dst.ip
    name = f"converge {a['from']} → {label}"
    attempts = 0
    t0 = time.monotonic()

    def probe() -> str:
        nonlocal attempts
        attempts += 1
        proc = run(src.ns, ["ping", "-n", "-c", "1", "-W", "0.3", dst.ip], check=False, timeout=10)
        if proc.returncode == 0:
            return "reply"
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return lines[-1] if lines else f"ping exited {proc.returncode}"

    try:
        poll(probe, lambda r: r == "reply", timeout=within, what=name, max_interval=0.1)
    except WaitTimeout as exc:
        from labnet.checks.assertions import Observation

        # where the packets go: from the sender, and from its node when the sender is a pod
        where = [src.ns]
        if a["from"] in view.journal.info.get("pods", {}):
            where.append(view.ns(view.pod(a["from"])["node"]))
        state = "\n".join(f"{ns.name}: " + (run(ns, ["ip", "route", "get", dst.ip], check=False, timeout=10).stdout
                                             or "no route").strip() for ns in where)
        obs = Observation(False, f"a reply from {label} within {within:g} s", f"no reply; last: {exc.last}",
                          state, f"ip route get {dst.ip}")
        msg = failure_message(name, src.ns.name, obs, exc.waited, attempts)
        raise CheckFailed(CheckResult(False, name, src.ns.name, f"no reply within {within:g} s; last: {exc.last}",
                                      exc.waited, attempts, msg)) from None
    took = time.monotonic() - t0
    result = CheckResult(True, name, src.ns.name, f"reached after {took:.2f} s ({attempts} pings)", took, attempts)
    log.info("%s", result.summary())
    return [result]


def bgp_down(view: LabView, a: dict[str, Any], timeout: float) -> list[CheckResult]:
    """The session with `peer` leaves Established (e.g. its hold timer expired after a fault)."""
    from labnet.checks.assertions import Observation, run_check

    node, peer = a["node"], a["peer"]
    addr = view.address(peer) if peer in view.journal.info.get("machines", {}) else peer

    def probe() -> Observation:
        peers = {p["peer_address"]: p for p in view.agent_status(node).get("peers", [])}
        p = peers.get(addr)
        if p is None:
            return Observation(True, f"no Established session with {peer}", f"{addr} is not a peer (any more)")
        state = f"{p.get('bgp_state')} ({p.get('info') or p.get('state')})"
        return Observation(p.get("bgp_state") != "Established", f"session with {peer} ({addr}) down",
                           f"session with {addr} {state}")

    return [run_check(f"BGP session with {peer} down", node, probe, float(a.get("within", 30.0)))]


def etcd_health_now(view: LabView) -> dict[str, tuple[bool, str]]:
    from labnet.etcd.admin import admin_store
    from labnet.etcd.netns import call_in_netns

    store = admin_store(view.journal.info)
    try:
        return call_in_netns(view.journal.info["etcd"]["netns"], store.health)
    finally:
        store.close()


def etcd_health(view: LabView, a: dict[str, Any], timeout: float) -> list[CheckResult]:
    from labnet.checks.assertions import Observation, run_check

    want = a.get("expect", "healthy") == "healthy"

    def probe() -> Observation:
        h = etcd_health_now(view)
        healthy = bool(h) and all(ok for ok, _ in h.values())
        actual = "; ".join(f"{ep}: {'healthy' if ok else 'unhealthy'} ({why})" for ep, (ok, why) in h.items())
        return Observation(healthy == want, f"every member {'healthy' if want else 'not healthy'}",
                           actual or "no endpoints")

    return [run_check(f"etcd {'healthy' if want else 'unhealthy'}", "etcd", probe, timeout)]


def agent_problem(view: LabView, a: dict[str, Any], timeout: float) -> list[CheckResult]:
    from labnet.checks.assertions import Observation, run_check

    node, match, present = a["node"], a["match"], a.get("present", True)

    def probe() -> Observation:
        problems = [str(p) for p in view.agent_status(node).get("problems") or []]
        hits = [p for p in problems if match in p]
        return Observation(bool(hits) == present, f"a problem containing {match!r}" if present
                           else f"no problem containing {match!r}",
                           hits[0] if hits else ("problems: " + " | ".join(problems) if problems else "no problems"),
                           "\n".join(problems), f"agent problems on {node}")

    return [run_check(f"agent problem {match!r}" if present else f"no agent problem {match!r}", node, probe,
                      timeout)]


register()
