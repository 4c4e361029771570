"""The lab's daemons as the journal records them: pid, start time, node, role and argv.

One place decides whether a recorded process is still the one we started (`alive`), starts
one again with its recorded argv, and stops them (SIGTERM, then SIGKILL) by recorded pid only.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labnet.errors import LabnetError
from labnet.lab.journal import Journal
from labnet.lab.zygote import Zygote
from labnet.nsexec import NodeNS, pid_alive, proc_starttime, same_process, spawn, terminate
from labnet.wait import poll


def alive(entry: dict[str, Any]) -> bool:
    """The recorded process runs, and its pid was not reused by another."""
    return same_process(int(entry["pid"]), entry.get("start"))


def describe(entry: dict[str, Any]) -> str:
    return f"{entry.get('what', 'process')} pid {entry['pid']} on {entry.get('node', '?')}"


# What each recorded process is, for status: the pid to signal is the one the journal records.
ROLES = {"agent": "supervisor of the node's process (agent, CNI server, datapath; restarts it)",
         "etcd": "etcd member", "bird": "BIRD"}


def start(journal: Journal, ns: NodeNS, node: str, what: str, argv: Sequence[str], *, log: Path,
          env: Mapping[str, str] | None = None, zygote: Zygote | None = None, nice: int = 0) -> dict[str, Any]:
    """Spawn a daemon inside `ns` and record it (pid, start time, argv, log, env, nice) in the
    journal, all that `repair` needs to start it again (by exec). With a zygote that serves it,
    the daemon is forked from the zygote instead: the same process, without the start-up.

    `nice` < 0 favours the lab's shared parts (etcd, route reflectors): they compete with every
    node for one machine's few cores, and at 200 busy nodes etcd at an equal share answered
    reads after the clients' 5 s deadline. Set before the daemon runs, so its threads have it."""
    if zygote is not None and zygote.serves(ns, argv):
        pid = zygote.spawn(ns, argv, log=log, env=env, nice=nice)
    else:
        pid = spawn(ns, niced(argv, nice), log=log, env=env)
    return journal.record("process", pid=pid, start=proc_starttime(pid), node=node, what=what, argv=list(argv),
                          log=str(log), env=dict(env) if env is not None else None, nice=nice)


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
    for e in journal.of_kind("process"):
        if alive(e) or not e.get("argv") or not e.get("log"):
            continue
        old = e["pid"]
        pid = respawn(journal, e, ns_of(e["node"]), e["argv"], log=Path(e["log"]), env=e.get("env"),
                      nice=int(e.get("nice") or 0))
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
    terminate(int(entry["pid"]), entry.get("start"), describe(entry), timeout)


def stop_all(entries: list[dict[str, Any]], timeout: float = 5.0) -> list[str]:
    """Stop many recorded processes at once: SIGTERM (and SIGCONT, for frozen ones) to all,
    one shared deadline, then SIGKILL for what is left. Returns what would not die."""
    mine = [e for e in entries if alive(e)]
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
