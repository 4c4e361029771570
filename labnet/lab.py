"""Lab lifecycle: plan a topology, apply it through a runtime, journal it, tear it down.

`up` runs a list of phases; each phase records what it creates in the journal before it
creates it, so `down` and `gc` can undo any prefix of the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labnet import paths
from labnet.errors import BadInput, LabnetError
from labnet.journal import Journal
from labnet.nsexec import NodeNS, pid_alive, proc_starttime
from labnet.runtime import get_runtime
from labnet.runtime.base import LinkSpec, MachineSpec, Runtime
from labnet.wait import poll

if TYPE_CHECKING:
    from labnet.topology.model import Topology


class Progress:
    """Phase progress: a rewritten line on a terminal, plain lines elsewhere."""

    def __init__(self, lab: str, stream: Any = None, quiet: bool = False) -> None:
        self.lab = lab
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet

    def start(self, phase: str, detail: str = "") -> None:
        if self.quiet:
            return
        text = f"labnet: {self.lab}: {phase}{(' (' + detail + ')') if detail else ''} ..."
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, phase: str, seconds: float) -> None:
        if self.quiet:
            return
        text = f"labnet: {self.lab}: {phase} done in {seconds:.2f}s"
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()


@dataclass
class Context:
    topo: Topology
    journal: Journal
    runtime: Runtime
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)


Phase = Callable[[Context], None]


def topology_hash(topo: Topology) -> str:
    return hashlib.sha256(topo.model_dump_json().encode()).hexdigest()[:16]


def journal_path(lab: str) -> Path:
    return paths.lab_dir(lab) / "journal.json"


def load_journal(lab: str) -> Journal | None:
    p = journal_path(lab)
    if not p.exists():
        return None
    try:
        return Journal.load(p)
    except (OSError, ValueError, TypeError) as exc:
        raise LabnetError(f"lab {lab}: journal {p} is unreadable ({exc}); remove it by hand") from exc


def list_labs() -> list[str]:
    root = paths.state_root() / "labs"
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "journal.json").exists())


@contextlib.contextmanager
def lab_lock(lab: str, wait: bool = True) -> Iterator[bool]:
    """One `up`/`down` per lab at a time. With wait=False, yields False when someone holds it
    (a flock dies with its process, so a held lock always has a live owner)."""
    root = paths.state_root() / "labs"
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f".{lab}.lock"
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        # The holder before us may have unlinked the file (its lab was gone) while we waited:
        # a lock on an unlinked file excludes nobody, so take the one now at the path.
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield True
    finally:
        if not (paths.lab_dir(lab)).exists():
            lock.unlink(missing_ok=True)
        os.close(fd)


# -- phases -------------------------------------------------------------------------------
def phase_underlay(ctx: Context) -> None:
    topo, rt = ctx.topo, ctx.runtime
    rt.prepare()
    for name, net in topo.networks.items():
        rt.add_network(name, net.mtu)
    machines = [
        MachineSpec(name=name, kind=kind, forward=kind in ("router", "node"), ipv6=topo.ipv6)
        for name, kind, _ in topo.machines()
    ]
    rt.add_machines(machines)
    links, gateways = [], {}
    info: dict[str, Any] = {}
    for name, kind, spec in topo.machines():
        ifs = []
        for iface in spec.interfaces:
            cidr = topo.interface_cidr(iface)
            mtu = iface.mtu or topo.networks[iface.network].mtu
            links.append(LinkSpec(name, iface.name or "eth0", iface.network, cidr, mtu))
            ifs.append({"name": iface.name, "network": iface.network, "address": str(cidr)})
        if spec.gateway is not None:
            gateways[name] = spec.gateway
        info[name] = {"kind": kind, "interfaces": ifs, "netns": rt.ns(name).netns}
    rt.add_links(links, gateways)
    ctx.journal.info["machines"] = info
    ctx.journal.save()


PHASES: list[tuple[str, Phase]] = [("underlay", phase_underlay)]


def register_phase(name: str, fn: Phase, after: str | None = None) -> None:
    """Later subsystems (etcd, cni, agent, pods) add their phase here."""
    names = [n for n, _ in PHASES]
    if name in names:
        return
    pos = names.index(after) + 1 if after in names else len(PHASES)
    PHASES.insert(pos, (name, fn))


# -- lifecycle ----------------------------------------------------------------------------
class _Interrupted(BaseException):
    pass


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM during `up` raise, so the build is rolled back."""
    owner = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            # A forked helper (pyroute2's NetNS child) inherits this handler: it must just die,
            # never run our rollback.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise _Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def up(topo: Topology, topology_file: str, *, runtime: str | None = None,
       progress: Progress | None = None) -> tuple[Journal, dict[str, float], bool]:
    """Build the lab. Returns (journal, phase timings, changed)."""
    from labnet import phases  # noqa: F401  (registers etcd, cni, agents, pods)

    lab = topo.name
    progress = progress or Progress(lab)
    rt_name = runtime or topo.runtime
    with lab_lock(lab):
        existing = load_journal(lab)
        if existing is not None:
            if existing.state == "up" and _alive(existing):
                if existing.topology_hash == topology_hash(topo) and existing.runtime == rt_name:
                    return existing, {}, False
                raise BadInput(
                    f"lab {lab!r} is already up from {existing.topology_file} with a different topology "
                    f"or runtime; run `labnet down --name {lab}` first"
                )
            if existing.state == "building" and existing.owner_alive():
                raise BadInput(f"lab {lab!r} is being built by pid {existing.owner_pid}")
            _teardown(existing)  # leftovers of a dead or half-built lab
        paths.lab_dir(lab).mkdir(parents=True, exist_ok=True)
        journal = Journal(path=journal_path(lab), lab=lab, topology_file=str(Path(topology_file).resolve()),
                          topology_hash=topology_hash(topo), runtime=rt_name)
        journal.info["topology"] = topo.model_dump(mode="json", by_alias=True)
        journal.claim()
        rt = get_runtime(rt_name)(lab, journal)
        ctx = Context(topo, journal, rt, progress)
        try:
            with _interruptible():
                for name, fn in PHASES:
                    progress.start(name)
                    t0 = time.monotonic()
                    fn(ctx)
                    ctx.timings[name] = round(time.monotonic() - t0, 4)
                    progress.done(name, ctx.timings[name])
            journal.state = "up"
            journal.info["timings"] = ctx.timings
            journal.save()
        except BaseException as exc:
            progress.start("rolling back", str(exc) or type(exc).__name__)
            problems = _teardown(journal)
            if problems:
                sys.stderr.write("labnet: rollback left problems:\n  " + "\n  ".join(problems) + "\n")
            if isinstance(exc, _Interrupted):
                raise KeyboardInterrupt(str(exc)) from None
            raise
        return journal, ctx.timings, True


def _dead(journal: Journal) -> bool:
    """Left behind: its `up`/`down` died midway, or it is 'up' but its namespaces vanished."""
    if journal.state == "up":
        return not _alive(journal)
    return not journal.owner_alive()


def _alive(journal: Journal) -> bool:
    """An 'up' lab whose namespaces are gone (say, after a reboot cleared /run) is dead."""
    return all((paths.NETNS_DIR / e["name"]).exists() for e in journal.of_kind("netns"))


def stop_process(entry: dict[str, Any], timeout: float = 5.0) -> None:
    pid, start = entry["pid"], entry.get("start")
    if not pid_alive(pid) or (start is not None and proc_starttime(pid) != start):
        return  # gone, or the pid now belongs to someone else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=timeout,
             what=f"{entry.get('what', 'process')} pid {pid} on {entry.get('node', '?')} to exit")
    except LabnetError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=5,
             what=f"{entry.get('what', 'process')} pid {pid} to die after SIGKILL")


def stop_processes(entries: list[dict[str, Any]], timeout: float = 5.0) -> list[str]:
    """Stop many recorded processes at once: SIGTERM (and SIGCONT, for frozen ones) to all,
    one shared deadline, then SIGKILL for what is left. Returns what would not die."""
    mine = [e for e in entries if pid_alive(e["pid"])
            and (e.get("start") is None or proc_starttime(e["pid"]) == e.get("start"))]
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for e in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(e["pid"], sig)

    def alive() -> list[str]:
        return [f"{e.get('what', 'process')} pid {e['pid']} on {e.get('node', '?')}" for e in mine
                if pid_alive(e["pid"])]

    try:
        poll(alive, lambda left: not left, timeout=timeout, what="the lab's processes to exit after SIGTERM")
        return []
    except LabnetError:
        for e in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(e["pid"], signal.SIGKILL)
    try:
        poll(alive, lambda left: not left, timeout=5, what="the lab's processes to die after SIGKILL")
    except LabnetError as exc:
        return [str(exc)]
    return []


def record_process(journal: Journal, pid: int, node: str, what: str) -> dict[str, Any]:
    return journal.record("process", pid=pid, start=proc_starttime(pid), node=node, what=what)


def respawn_process(journal: Journal, entry: dict[str, Any], ns: NodeNS, argv: list[str], *, log: Path,
                    env: dict[str, str] | None = None) -> int:
    """Start a recorded process again (a fault's undo: labnet.faults) with `argv`, and record the
    new pid in its journal entry, so `down` stops the new process."""
    from labnet.nsexec import spawn

    pid = spawn(ns, argv, log=log, env=env)
    journal.update(entry, pid=pid, start=proc_starttime(pid), argv=list(argv))
    return pid


def _teardown(journal: Journal) -> list[str]:
    journal.state = "tearing-down"
    journal.claim()  # this process owns the lab now: gc leaves it alone unless we die too
    problems: list[str] = []
    procs = journal.of_kind("process")
    # Agents, CNI servers and routers first (their shutdown may still talk to etcd), then etcd.
    problems += stop_processes([e for e in procs if e.get("what") != "etcd"])
    problems += stop_processes([e for e in procs if e.get("what") == "etcd"])
    rt = get_runtime(journal.runtime)(journal.lab, journal)
    problems += rt.teardown()
    if not problems:
        shutil.rmtree(paths.lab_dir(journal.lab), ignore_errors=True)
    return problems


def down(lab: str) -> list[str]:
    with lab_lock(lab):
        journal = load_journal(lab)
        if journal is None:
            from labnet.runtime.docker import remove_lab_containers

            if remove_lab_containers(lab):  # a docker lab whose journal is gone: found by label
                return []
            raise BadInput(f"no lab named {lab!r} (running labs: {', '.join(list_labs()) or 'none'})")
        return _teardown(journal)


def gc() -> list[str]:
    """Remove labs whose owner died mid-build or whose namespaces vanished, and orphans.

    Other processes may remove the same things at the same moment (another `labnet gc`, a
    lab's own `down`): whatever vanishes while gc looks at it counts as removed, not as an error.
    """
    removed: list[str] = []
    for lab in list_labs():
        with lab_lock(lab, wait=False) as mine:
            if not mine:
                continue  # an `up` or `down` of it is running right now
            # Decide under the lock, on a fresh read.
            try:
                journal = load_journal(lab)
            except LabnetError:
                if not journal_path(lab).exists():
                    continue  # removed between the check and the read: nothing left to collect
                raise
            if journal is None or not _dead(journal):
                continue
            problems = _teardown(journal)
        removed.append(f"lab {lab}" + (f" (problems: {'; '.join(problems)})" if problems else ""))
    removed += sweep_orphans()
    from labnet.runtime.docker import orphan_containers

    removed += orphan_containers()  # containers labelled with a lab that has no journal
    return removed


def _entries_of(d: Path) -> list[Path]:
    """d's entries, sorted; none when d vanished (or was never there) while we looked."""
    try:
        return sorted(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _umount_vanishing(path: Path) -> None:
    """Unmount `path` (every mount stacked on it); a path or mount that vanishes meanwhile
    (someone else unmounted or removed it: ENOENT, EINVAL) is what we wanted anyway."""
    from labnet.runtime.netns import _is_mountpoint, _umount

    try:
        _umount(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except LabnetError:
        if path.exists() and _is_mountpoint(path):
            raise


def sweep_orphans() -> list[str]:
    """Namespace files of labs that have no journal and no `up`/`down` running: /run/netns/lnet-<lab>.*
    and /run/labnet/<lab>/ (mount/UTS namespace files, itself a private bind mount)."""
    removed: list[str] = []

    def orphan(lab: str) -> bool:
        """No journal and nobody building it: an `up` holds the lock before it writes anything."""
        with lab_lock(lab, wait=False) as free:
            if not free:
                return False
            try:
                return load_journal(lab) is None
            except LabnetError:
                return not journal_path(lab).exists()

    for f in _entries_of(paths.NETNS_DIR):
        owner = paths.lab_of_netns(f.name)
        if owner is not None and orphan(owner):
            _umount_vanishing(f)
            f.unlink(missing_ok=True)
            removed.append(f"orphan namespace {f.name}")
    for d in _entries_of(paths.run_root()):
        if d.is_dir() and orphan(d.name):
            for f in _entries_of(d):
                _umount_vanishing(f)
            _umount_vanishing(d)
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"orphan namespace files {d}")
    labs_root = paths.state_root() / "labs"
    for f in _entries_of(labs_root):  # lock files of labs whose state dir is gone
        name = f.name[1:-len(".lock")]
        if f.name.startswith(".") and f.name.endswith(".lock") and not (labs_root / name).exists():
            with lab_lock(name, wait=False):
                pass  # a free lock of a lab without a state dir is unlinked on the way out
    return removed


def node_ns(lab: str, machine: str) -> NodeNS:
    journal = load_journal(lab)
    if journal is None:
        raise BadInput(f"no lab named {lab!r}")
    machines = journal.info.get("machines", {})
    if machine not in machines:
        raise BadInput(f"lab {lab}: no machine named {machine!r} (have: {', '.join(machines)})")
    return get_runtime(journal.runtime)(lab, journal).ns(machine)


def pick_lab(name: str | None) -> str:
    if name:
        return name
    labs = [lab for lab in list_labs() if (j := load_journal(lab)) is not None and j.state == "up"]
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise BadInput("no lab is running (start one with `labnet up FILE`)")
    raise BadInput(f"several labs are running ({', '.join(labs)}): choose one with -l NAME")


def status(lab: str | None = None) -> list[dict[str, Any]]:
    out = []
    for name in [lab] if lab else list_labs():
        j = load_journal(name)
        if j is None:
            continue
        procs = [{**{k: e.get(k) for k in ("pid", "node", "what")}, "alive": pid_alive(e["pid"])}
                 for e in j.of_kind("process")]
        state = j.state if j.state != "up" or _alive(j) else "dead"
        out.append({"lab": name, "state": state, "runtime": j.runtime, "topology": j.topology_file,
                    "machines": j.info.get("machines", {}), "pods": j.info.get("pods", {}),
                    "processes": procs, "timings": j.info.get("timings", {})})
    return out


def format_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no labs"
    lines = []
    for r in rows:
        lines.append(f"lab {r['lab']}  state {r['state']}  runtime {r['runtime']}  ({r['topology']})")
        table = [("MACHINE", "KIND", "INTERFACES", "PROCESSES")]
        for m, info in r["machines"].items():
            ifs = ", ".join(f"{i['name']} {i['address']} [{i['network']}]" for i in info["interfaces"])
            procs = ", ".join(f"{p['what']}({p['pid']}{'' if p['alive'] else ' DEAD'})"
                              for p in r["processes"] if p["node"] == m)
            table.append((m, info["kind"], ifs, procs or "-"))
        for pod, p in r["pods"].items():
            table.append((f"{p['node']}/{pod}", "pod", f"eth0 {p.get('ip', '?')}", "-"))
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines)


def status_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)
