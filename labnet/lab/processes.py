"""The lab's daemons as the journal records them: pid, start time, node, role and argv.

One place decides whether a recorded process is still the one we started (`alive`), starts
one again with its recorded argv, and stops them (SIGTERM, then SIGKILL) by recorded pid only.
A node process the lab's supervisor keeps running (labnet.lab.supervisor) has a pid file
beside the journal: the supervisor writes each new pid there, and `current` reads it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labnet.errors import LabnetError
from labnet.lab import supervisor
from labnet.lab.journal import Journal
from labnet.lab.zygote import Zygote
from labnet.nsexec import NodeNS, pid_alive, proc_starttime, same_process, spawn, terminate
from labnet.wait import poll

SUPERVISOR = "supervisor"  # the `what` of the lab's supervisor's entry (it has no node)


def current(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with the pid its process has now: the lab's supervisor may have started a
    node process again under a new pid (its pid file says which, and how often)."""
    if not entry.get("pidfile"):
        return entry
    now = supervisor.read_pidfile(entry["pidfile"])
    if now is None:
        return entry
    return {**entry, "pid": now["pid"], "start": now.get("start"), "restarts": now.get("restarts", 0),
            "held": bool(now.get("held"))}


def alive(entry: dict[str, Any]) -> bool:
    """The recorded process runs, and its pid was not reused by another."""
    e = current(entry)
    return same_process(int(e["pid"]), e.get("start"))


def describe(entry: dict[str, Any]) -> str:
    e = current(entry)
    where = f" on {e['node']}" if e.get("node") else ""
    return f"{e.get('what', 'process')} pid {e['pid']}{where}"


# What each recorded process is, for status: the pid to signal is the one the journal records.
ROLES = {"agent": "supervisor of the node's process (agent, CNI server, datapath; restarts it)",
         "etcd": "etcd member", "bird": "BIRD",
         SUPERVISOR: "the lab's supervisor: it forked each node's process and starts it again when it dies"}


def start(journal: Journal, ns: NodeNS, node: str, what: str, argv: Sequence[str], *, log: Path,
          env: Mapping[str, str] | None = None, zygote: Zygote | None = None, nice: int = 0) -> dict[str, Any]:
    """Spawn a daemon inside `ns` and record it (pid, start time, argv, log, env, nice) in the
    journal, all that `repair` needs to start it again (by exec). With a zygote that serves it,
    the daemon is forked from the zygote instead: the same process, without the start-up.

    `nice` < 0 favours the lab's shared parts (etcd, route reflectors): they compete with every
    node for one machine's few cores, and at 200 busy nodes etcd at an equal share answered
    reads after the clients' 5 s deadline. Set before the daemon runs, so its threads have it."""
    extra: dict[str, Any] = {}
    if zygote is not None and zygote.serves(ns, argv):
        extra["pidfile"] = str(supervisor.pidfile(journal.lab, node))
        pid = zygote.spawn(node, ns, argv, log=log, env=env, nice=nice, pidfile=Path(extra["pidfile"]))
    else:
        pid = spawn(ns, niced(argv, nice), log=log, env=env)
    return journal.record("process", pid=pid, start=proc_starttime(pid), node=node, what=what, argv=list(argv),
                          log=str(log), env=dict(env) if env is not None else None, nice=nice, **extra)


def start_supervisor(journal: Journal) -> Zygote:
    """The lab's supervisor (the zygote of `up`), recorded: `down` stops it first, and `repair`
    starts it again (`--adopt`) if it died."""
    z = Zygote(journal.lab, supervisor.log_path(journal.lab))
    journal.record("process", pid=z.proc.pid, start=proc_starttime(z.proc.pid), what=SUPERVISOR,
                   argv=[*z.argv, "--adopt"], log=str(z.log))
    return z


def supervisor_entry(journal: Journal) -> dict[str, Any] | None:
    return next((e for e in journal.of_kind("process") if e.get("what") == SUPERVISOR), None)


def _revive_supervisor(journal: Journal, entry: dict[str, Any]) -> int:
    """Start the lab's supervisor again; it watches the node processes that run and starts the
    others. Returns once it answers on its socket."""
    pid = spawn(None, entry["argv"], log=Path(entry["log"]))
    journal.update(entry, pid=pid, start=proc_starttime(pid))

    def answer() -> str:
        if not pid_alive(pid):
            raise LabnetError(f"lab {journal.lab}: the supervisor started again (pid {pid}) exited; "
                              f"its log: {entry['log']}")
        try:
            return str(supervisor.ask(journal.lab, "status", timeout=2)["pid"])
        except LabnetError as exc:
            return str(exc)

    poll(answer, lambda said: said == str(pid), timeout=60, what=f"lab {journal.lab}: the supervisor pid {pid} "
         "started again to answer on its socket")
    return pid


def revive(journal: Journal, entry: dict[str, Any], ns_of: Callable[[str], NodeNS]) -> int:
    """Start a recorded process that is dead again; its new pid. A node process is the lab's
    supervisor's to start (started itself first, if it died too); anything else is started by
    exec with its recorded argv, log, env and niceness."""
    if entry.get("pidfile"):
        sup = supervisor_entry(journal)
        if sup is not None and not alive(sup):
            _revive_supervisor(journal, sup)
        return int(supervisor.ask(journal.lab, "start", entry["node"])["pid"])
    return respawn(journal, entry, ns_of(entry["node"]), entry["argv"], log=Path(entry["log"]),
                   env=entry.get("env"), nice=int(entry.get("nice") or 0))


def niced(argv: Sequence[str], nice: int) -> list[str]:
    """`argv` run at niceness `nice` (coreutils' nice execs it: the pid stays the daemon's)."""
    return ["nice", "-n", str(nice), *argv] if nice else list(argv)


def dead_machines(journal: Journal) -> list[str]:
    """Machines whose PID namespace init (labnet-nsinit) is gone: everything they ran went with
    it, and nothing can start there any more. One sentence each."""
    return [f"machine {e['node']}: its PID namespace init (pid {e['pid']}) is gone, and every process of the "
            "machine with it; nothing can start there: `labnet down`, then `labnet up`"
            for e in journal.of_kind("nsinit") if e.get("pid") and not same_process(int(e["pid"]), e.get("start"))]


def repair(journal: Journal, ns_of: Callable[[str], NodeNS]) -> list[str]:
    """Start again every recorded daemon that is dead, with its recorded argv, log and env; say
    what was started. A stopped (SIGSTOPped) process is alive: a fault's, left alone."""
    dead = dead_machines(journal)
    if dead:
        raise LabnetError(f"lab {journal.lab}: cannot repair: " + "; ".join(dead))
    done = []
    sup = supervisor_entry(journal)
    # the dead, before the supervisor comes back: started again, it starts its dead at once
    # a node process a fault holds stopped is the fault's to start again (its undo), not ours
    gone = [(e, current(e)["pid"]) for e in journal.of_kind("process")
            if e is not sup and e.get("argv") and e.get("log") and not alive(e) and not current(e).get("held")]
    if sup is not None and not alive(sup):
        old = sup["pid"]
        pid = _revive_supervisor(journal, sup)
        done.append(f"the lab's supervisor: pid {old} was dead; started again as pid {pid}")
    for e, old in gone:
        pid = revive(journal, e, ns_of)
        done.append(f"{e['what']} on {e['node']}: pid {old} was dead; started again as pid {pid}")
    return done


def respawn(journal: Journal, entry: dict[str, Any], ns: NodeNS, argv: Sequence[str], *, log: Path,
            env: Mapping[str, str] | None = None, nice: int = 0) -> int:
    """Start a recorded process again (a fault's undo) and record the new pid in its entry,
    so `down` stops the new process."""
    pid = spawn(ns, niced(argv, nice), log=log, env=env)
    journal.update(entry, pid=pid, start=proc_starttime(pid), argv=list(argv), log=str(log),
                   env=dict(env) if env is not None else None)
    return pid


def stop(entry: dict[str, Any], timeout: float = 5.0) -> None:
    e = current(entry)
    terminate(int(e["pid"]), e.get("start"), describe(e), timeout)


def stop_all(entries: list[dict[str, Any]], timeout: float = 5.0) -> list[str]:
    """Stop many recorded processes at once: SIGTERM (and SIGCONT, for frozen ones) to all,
    one shared deadline, then SIGKILL for what is left. Returns what would not die."""
    mine = [current(e) for e in entries if alive(e)]
    timeout = max(timeout, 0.05 * len(mine))  # 200 node processes shutting down share 2 cores
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for e in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(e["pid"], sig)

    def left() -> list[str]:
        return [describe(e) for e in mine if pid_alive(e["pid"])]

    try:
        poll(left, lambda rest: not rest, timeout=timeout, what="the lab's processes to exit after SIGTERM")
        return []
    except LabnetError:
        for e in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(e["pid"], signal.SIGKILL)
    try:
        poll(left, lambda rest: not rest, timeout=max(5.0, 0.05 * len(mine)),
             what="the lab's processes to die after SIGKILL")
    except LabnetError as exc:
        return [str(exc)]
    return []
