"""Faults as scenario steps: break the lab, and put it back when the scenario ends.

Every fault step does one thing to a running lab, returns a CheckResult saying what it did
("fault: link_down node-3 ens32"), and pushes its undo onto the scenario's Undo stack, which
runs when the scenario ends, whatever happened. Arguments: labnet.topology.steps.

  link_down / link_up      cable pulled: the fabric-side veth goes down (side: machine sets the
                           machine's own end)
  packet_loss              random drop with nftables (`numgen random mod 100 < N drop`) in a table
                           labnet owns inside the machine; netem is absent from this kernel
  kill_agent               SIGKILL the agent's own pid; its supervisor restarts it
  stop_agent / start_agent SIGTERM the node's process, which its supervisor then leaves stopped
                           (the agent removes its routes and tunnel, as on a clean shutdown) /
                           start it again
  stop_node / start_node   the node "loses power" as its peers see it: every link cut at the
                           fabric side and every process in its network namespace frozen with
                           SIGSTOP; start = SIGCONT and links up. Nothing inside is lost.
  kill_etcd / restart_etcd SIGKILL the etcd member by its journal-recorded pid / start it again
                           with the same argv (the journal records the new pid)
  remove_default_route     the seed's first reader problem (proxy-ARP gets no answer)
  rename_agent             the seed's second one: the agent registers under another name than
                           the CNI plugin's (AgentConfig.nodename)

Undo actions wait until the state is back (agent answering, etcd healthy), and the first
fault that disturbs routing also makes the scenario end with the lab converged again, so the
next scenario starts from a clean lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from labnet import paths
from labnet.agent.config import DEFAULT_CONFIG as AGENT_CONFIG_INSIDE
from labnet.checks import CheckResult
from labnet.errors import BadInput, LabnetError
from labnet.lab.view import LabView
from labnet.nsexec import NodeNS, pid_alive, proc_starttime, processes_in, run
from labnet.scenario.recorded import agent_pid, start_recorded, stop_recorded, wait_agent
from labnet.scenario.undo import Undo
from labnet.scenario.waits import etcd_health_now, log, wait_converged
from labnet.topology import steps as s
from labnet.wait import poll

RECOVERY_TIMEOUT = 90.0  # an undo may wait this long for the lab to come back (BGP, etcd, agent)
NFT_TABLE_PREFIX = "labnet-loss-"


def _done(kind: str, target: str, what: str, detail: str, t0: float) -> list[CheckResult]:
    result = CheckResult(True, f"fault: {kind} {what}".rstrip(), target, detail, time.monotonic() - t0)
    log.info("%s", result.summary())
    return [result]


def _converge_at_end(view: LabView, undo: Undo) -> None:
    """The first routing fault of a scenario makes it end with the lab converged again (this
    undo is pushed first, so it runs last, after every other undo)."""
    if undo.converge_pushed:
        return
    undo.converge_pushed = True
    undo.push("lab converged again", lambda: wait_converged(view, RECOVERY_TIMEOUT))


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


# ---------------------------------------------------------------- fault runners


def _link(view: LabView, a: s.LinkArgs, up: bool) -> tuple[NodeNS, str, str]:
    machine, iface = a.machine, a.interface
    _need_iface(view, machine, iface)
    if a.side == "machine":
        return view.ns(machine), iface, f"{machine}'s own {iface}"
    veth = _fabric_veth(view, machine, iface)
    return _fabric(view), veth, f"fabric veth {veth} of {machine}:{iface}"


_DOWN_LINKS: dict[tuple[str, str, str], Callable[[], None]] = {}


def link_down(view: LabView, a: s.LinkArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    ns, dev, label = _link(view, a, False)
    machine, iface = a.machine, a.interface
    routes = _routes_via(view.ns(machine), iface) if a.side == "machine" else []
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


def link_up(view: LabView, a: s.LinkArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    ns, dev, label = _link(view, a, True)
    machine, iface = a.machine, a.interface
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


def packet_loss(view: LabView, a: s.PacketLossArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    machine, iface, pct = a.machine, a.interface, a.percent
    _need_iface(view, machine, iface)
    ns, table = view.ns(machine), loss_table(iface)
    run(ns, ["nft", "-f", "-"], input=nft_loss_script(table, iface, pct, a.direction), timeout=10)

    def remove() -> None:
        run(ns, ["nft", "-f", "-"], input=f"add table inet {table}\ndelete table inet {table}\n", timeout=10)

    undo.push(f"packet_loss {machine} {iface}", remove)
    return _done("packet_loss", machine, f"{machine} {iface} {pct}%",
                 f"nft table inet {table} drops {pct}% of {a.direction} packets on {iface}", t0)


def kill_agent(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a.node
    pid = agent_pid(view, node)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=timeout, what=f"agent pid {pid} on {node} to die")

    def back() -> None:
        wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=pid)

    undo.push(f"kill_agent {node}", back)
    return _done("kill_agent", node, node, f"SIGKILL agent pid {pid}; its supervisor restarts it", t0)


def stop_agent(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a.node
    pid = stop_recorded(view, node, "agent", signal.SIGTERM)

    def back() -> None:
        _start_agent(view, node)

    undo.push(f"stop_agent {node}", back)
    return _done("stop_agent", node, node, f"agent pid {pid} stopped (SIGTERM; its supervisor does not start it "
                 "again: start_agent does)", t0)


def _start_agent(view: LabView, node: str, timeout: float = RECOVERY_TIMEOUT) -> int:
    pid = start_recorded(view, node, "agent")
    wait_agent(view, node, timeout)
    return pid


def start_agent(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    pid = _start_agent(view, a.node, max(timeout, RECOVERY_TIMEOUT))
    return _done("start_agent", a.node, a.node, f"agent pid {pid} started; it answers", t0)


def _netns_pids(netns: str) -> list[int]:
    return sorted(processes_in([netns]))


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


def stop_node(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a.node
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
        wait_agent(view, node, RECOVERY_TIMEOUT)

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


def start_node(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    node = a.node
    resume = _STOPPED.pop((view.name, node), None)
    if resume is None:
        # not stopped by this process: links up and every process of the node continued
        fab = _fabric(view)
        for i in _machine_ifaces(view, node):
            _set_link(fab, _fabric_veth(view, node, i), True)
        for p in _netns_pids(view.ns(node).netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        wait_agent(view, node, RECOVERY_TIMEOUT)
    else:
        resume()  # its undo (still pushed) runs again at the end, harmlessly
    return _done("start_node", node, node, "links up, processes continued (SIGCONT); the agent answers", t0)


def kill_etcd(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node = a.node
    pid = stop_recorded(view, node, "etcd", signal.SIGKILL)

    def back() -> None:
        _restart_etcd(view, node)

    undo.push(f"kill_etcd {node}", back)
    return _done("kill_etcd", node, node, f"SIGKILL etcd pid {pid} (journal-recorded)", t0)


def _restart_etcd(view: LabView, node: str) -> int:
    pid = start_recorded(view, node, "etcd")
    poll(lambda: etcd_health_now(view), lambda h: bool(h) and all(ok for ok, _ in h.values()),
         timeout=RECOVERY_TIMEOUT, what=f"etcd member on {node} (pid {pid}) healthy again")
    return pid


def restart_etcd(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    pid = _restart_etcd(view, a.node)
    return _done("restart_etcd", a.node, a.node, f"etcd pid {pid} started with its recorded argv; healthy",
                 t0)


def remove_default_route(view: LabView, a: s.NodeArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    node = a.node
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


def rename_agent(view: LabView, a: s.RenameAgentArgs, timeout: float, undo: Undo) -> list[CheckResult]:
    t0 = time.monotonic()
    _converge_at_end(view, undo)  # first: it must run after this fault's own undo
    node, name = a.node, a.name
    path = view.runtime.host_path(node, AGENT_CONFIG_INSIDE)
    original = path.read_bytes()
    cfg = json.loads(original)
    cfg["nodename"] = name
    old_pid = agent_pid(view, node)

    def restore() -> None:
        path.write_bytes(original)
        pid = agent_pid(view, node)
        os.kill(pid, signal.SIGTERM)  # a clean exit; the supervisor starts it with the old config
        wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=pid)
        forget_node(view, name)

    undo.push(f"rename_agent {node}", restore)
    tmp = path.with_suffix(".fault.tmp")
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, path)
    os.kill(old_pid, signal.SIGTERM)
    wait_agent(view, node, RECOVERY_TIMEOUT, not_pid=old_pid, name=name)
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
        allocator.release(store, allocator.tunnel_handle(name, 6))
        for cidr in allocator.blocks_of(store, name, None):
            kv = store.get(keys.block(cidr))
            if kv is not None and allocator.Block.decode(kv.value).used() == 0:
                store.delete(keys.block(cidr), mod_revision=kv.mod_revision)
            store.delete(keys.affinity(name, cidr))
    finally:
        store.close()


