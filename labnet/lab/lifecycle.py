"""Lab lifecycle: apply a topology through a runtime, phase by phase, and tear it down.

`up` runs the ordered list labnet.lab.phases.PHASES; each phase records what it creates in
the journal before it creates it, so `down`, `gc` and a rolled-back `up` can undo any prefix
of the work, newest first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labnet import paths
from labnet.errors import BadInput, LabnetError
from labnet.lab import processes, supervisor
from labnet.lab.context import Context
from labnet.lab.journal import Journal
from labnet.lab.phases import PHASES, converge
from labnet.lab.progress import Progress
from labnet.lab.state import (
    journal_path,
    lab_lock,
    list_labs,
    load_journal,
    namespaces_present,
    topology_hash,
)
from labnet.runtime import RUNTIMES, get_runtime

if TYPE_CHECKING:
    from labnet.topology.model import Topology


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
    lab = topo.name
    progress = progress or Progress(lab)
    rt_name = runtime or topo.runtime
    with lab_lock(lab):
        existing = load_journal(lab)
        if existing is not None:
            if existing.state == "up" and namespaces_present(existing):
                if existing.topology_hash == topology_hash(topo) and existing.runtime == rt_name:
                    _repair(existing, topo, progress)
                    return existing, {}, False
                raise BadInput(
                    f"lab {lab!r} is already up from {existing.topology_file} with a different topology "
                    f"or runtime; run `labnet down --name {lab}` first"
                )
            if existing.state == "building" and existing.owner_alive():
                raise BadInput(f"lab {lab!r} is being built by pid {existing.owner_pid}")
            teardown(existing)  # leftovers of a dead or half-built lab
        paths.lab_dir(lab).mkdir(parents=True, exist_ok=True)
        journal = Journal(path=journal_path(lab), lab=lab, topology_file=str(Path(topology_file).resolve()),
                          topology_hash=topology_hash(topo), runtime=rt_name)
        journal.info["topology"] = topo.model_dump(mode="json", by_alias=True)
        journal.claim()
        rt = get_runtime(rt_name)(lab, journal)
        ctx = Context(topo, journal, rt, progress)
        try:
            if topo.cluster is not None and rt.shares_host_python:
                # the lab's supervisor: it imports the node software while the underlay comes up
                ctx.zygote = processes.start_supervisor(journal)
            with _interruptible():
                for name, fn in PHASES:
                    progress.start(name)
                    t0 = time.monotonic()
                    fn(ctx)
                    ctx.timings[name] = round(time.monotonic() - t0, 4)
                    progress.done(name, ctx.timings[name])
            if ctx.zygote is not None:
                ctx.zygote.detach()  # the lab's node processes are its to keep running now
            journal.state = "up"
            journal.info["timings"] = ctx.timings
            journal.save()
        except BaseException as exc:
            progress.start("rolling back", str(exc) or type(exc).__name__)
            problems = teardown(journal)
            if problems:
                sys.stderr.write("labnet: rollback left problems:\n  " + "\n  ".join(problems) + "\n")
            if isinstance(exc, _Interrupted):
                raise KeyboardInterrupt(str(exc)) from None
            raise
        finally:
            if ctx.zygote is not None:
                ctx.zygote.close()
        return journal, ctx.timings, True


def _repair(journal: Journal, topo: Topology, progress: Progress) -> None:
    """`up` of a lab that is up: daemons that died are started again, and the lab waited for
    until it has converged; journal.info["repaired"] says what this `up` started."""
    rt = get_runtime(journal.runtime)(journal.lab, journal)
    journal.info["repaired"] = processes.repair(journal, rt.ns)
    journal.save()
    if journal.info["repaired"]:
        progress.start("converge", f"after restarting {len(journal.info['repaired'])} daemons")
        converge.run(Context(topo, journal, rt, progress))


def teardown(journal: Journal) -> list[str]:
    """Stop the lab's processes and undo its journal; what could not be undone (empty: clean).

    A teardown that leaves something behind marks the journal "broken" with what is left, and
    hands ownership back: no process claims a lab it could not remove, so `gc` tries again."""
    owner = (journal.owner_pid, journal.owner_start)
    journal.state = "tearing-down"
    journal.claim()  # this process owns the lab now: gc leaves it alone unless we die too
    problems: list[str] = []
    procs = journal.of_kind("process")
    # The lab's supervisor first (it would start the node processes again), then agents, CNI
    # servers and routers (their shutdown may still talk to etcd), then etcd.
    nodes = sum(1 for e in procs if e.get("pidfile"))  # it stops them (SIGTERM, then SIGKILL) before it exits
    problems += processes.stop_all([e for e in procs if e.get("what") == processes.SUPERVISOR],
                                   timeout=supervisor.stop_timeout(nodes) + supervisor.KILL_WAIT + 5.0)
    problems += processes.stop_all([e for e in procs if e.get("what") not in ("etcd", processes.SUPERVISOR)])
    problems += processes.stop_all([e for e in procs if e.get("what") == "etcd"])
    rt = get_runtime(journal.runtime)(journal.lab, journal)
    problems += rt.teardown()
    if not problems:
        shutil.rmtree(paths.lab_dir(journal.lab), ignore_errors=True)
        release_unused()
        return problems
    journal.state = "broken"
    journal.owner_pid, journal.owner_start = owner
    journal.info["left"] = problems
    journal.save()
    return problems


def release_unused() -> list[str]:
    """Stop what a runtime keeps running for its labs (labnet's dockerd) once no lab uses it."""
    used = set()
    for lab in list_labs():
        try:
            journal = load_journal(lab)
        except LabnetError:
            continue
        if journal is not None:
            used.add(journal.runtime)
    return [what for name, rt in RUNTIMES.items() if name not in used and (what := rt.release())]


def down(lab: str) -> list[str]:
    with lab_lock(lab):
        journal = load_journal(lab)
        if journal is None:
            # a lab whose journal is gone may still be found by its runtime (docker: by label)
            if any(rt.remove_unjournaled(lab) for rt in RUNTIMES.values()):
                return []
            raise BadInput(f"no lab named {lab!r} (running labs: {', '.join(list_labs()) or 'none'})")
        return teardown(journal)
