"""The lab's journal-recorded daemons (etcd members, node processes) as faults see them:
found by node and role, stopped by their recorded pid, started again with their recorded argv,
and the agent waited for until it answers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labnet.errors import BadInput, LabnetError
from labnet.lab import processes, supervisor
from labnet.lab.convergence import brief
from labnet.lab.journal import Journal
from labnet.lab.phases.agents import SUPERVISOR_LOG_INSIDE
from labnet.lab.phases.etcd import ETCD_LOG_INSIDE
from labnet.lab.state import lab_lock, load_journal
from labnet.lab.view import LabView
from labnet.nsexec import pid_alive
from labnet.wait import poll

LOGS_INSIDE = {"etcd": ETCD_LOG_INSIDE, "agent": SUPERVISOR_LOG_INSIDE}


def entry_in(journal: Journal, node: str, what: str) -> dict[str, Any]:
    for e in journal.of_kind("process"):
        if e.get("node") == node and e.get("what") == what:
            return e
    raise BadInput(f"lab {journal.lab}: node {node} has no recorded {what} process")


@contextlib.contextmanager
def journal_edit(view: LabView) -> Iterator[Journal]:
    """Change the lab's journal under the lab's lock, from its newest copy on disk."""
    with lab_lock(view.name):
        journal = load_journal(view.name)
        if journal is None:
            raise LabnetError(f"lab {view.name}: its journal is gone (was the lab taken down?)")
        yield journal
        view.journal = journal


def remember_argv(view: LabView, node: str, what: str) -> dict[str, Any]:
    """Keep the running process's argv in its journal entry (labs recorded before argv was),
    so it can be started again later, also by another labnet process."""
    entry = entry_in(view.journal, node, what)
    if entry.get("argv") or not processes.alive(entry):
        return entry
    raw = Path(f"/proc/{entry['pid']}/cmdline").read_bytes()
    argv = [a.decode() for a in raw.split(b"\0") if a]
    with journal_edit(view) as j:
        j.update(entry_in(j, node, what), argv=argv)
    return entry_in(view.journal, node, what)


def start_recorded(view: LabView, node: str, what: str) -> int:
    """Start a stopped recorded process again with its argv; the journal gets the new pid."""
    entry = entry_in(view.journal, node, what)
    if processes.alive(entry):
        return int(processes.current(entry)["pid"])
    if entry.get("pidfile"):  # the lab's supervisor starts it (and it ends the hold of stop_recorded)
        with journal_edit(view) as j:
            return processes.revive(j, entry_in(j, node, what), view.runtime.ns)
    argv = entry.get("argv")
    if not argv:
        raise LabnetError(f"lab {view.name}: node {node}: the {what} process (pid {entry['pid']}) is gone and "
                          f"its argv was never recorded, so it cannot be started again")
    env = None
    if what == "etcd":
        from labnet.etcd.server import etcd_env

        env = etcd_env()
    rt = view.runtime
    with journal_edit(view) as j:
        entry = entry_in(j, node, what)
        return processes.respawn(j, entry, rt.ns(node), argv, log=rt.host_path(node, LOGS_INSIDE[what]), env=env,
                                 nice=int(entry.get("nice") or 0))


def stop_recorded(view: LabView, node: str, what: str, sig: signal.Signals) -> int:
    entry = remember_argv(view, node, what)
    if not processes.alive(entry):
        raise LabnetError(f"node {node}: the {what} process (pid {processes.current(entry)['pid']}) is not running")
    if entry.get("pidfile"):  # the lab's supervisor is not to start it again: the fault's undo will
        sup = processes.supervisor_entry(view.journal)
        if sup is not None and processes.alive(sup):  # else nothing would start it again anyway
            supervisor.ask(view.name, "hold", node)
    pid = int(processes.current(entry)["pid"])
    if sig == signal.SIGTERM:
        processes.stop(entry, timeout=20)
    else:
        os.kill(pid, sig)
        poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=10,
             what=f"{what} pid {pid} on {node} to die after {sig.name}")
    return pid


# -- the agent --------------------------------------------------------------------------------


def agent_pid(view: LabView, node: str) -> int:
    st = view.agent_status(node)
    pid = st.get("pid")
    if not isinstance(pid, int):
        raise LabnetError(f"node {node}: the agent's status has no pid: {st}")
    same_netns(view, node, pid)
    return pid


def same_netns(view: LabView, node: str, pid: int) -> None:
    """Never signal a pid that is not inside the node (say, one a restarted runtime reused)."""
    want = os.stat(view.ns(node).netns).st_ino
    try:
        got = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError as exc:
        raise LabnetError(f"node {node}: pid {pid} is gone ({exc})") from exc
    if got != want:
        raise LabnetError(f"node {node}: pid {pid} does not run in the node's network namespace")


def wait_agent(view: LabView, node: str, timeout: float, *, not_pid: int | None = None,
               name: str | None = None) -> dict[str, Any]:
    """Until the node's agent answers (a new one, when not_pid is given) under `name`, ready."""
    want = name or node

    def ok(b: dict[str, Any]) -> bool:
        return "error" not in b and b["pid"] != not_pid and b["nodename"] == want and bool(b["blocks"])

    return poll(lambda: brief(view.runtime, node), ok, timeout=timeout,
                what=f"the agent of {node} to answer again as {want!r}"
                     + (f" with a new pid (old {not_pid})" if not_pid else ""))
