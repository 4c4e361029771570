"""Where a lab's state lives and how it is found: its journal, its lock, the list of labs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from labnet import paths
from labnet.errors import BadInput, LabnetError
from labnet.lab.journal import Journal

if TYPE_CHECKING:
    from labnet.nsexec import NodeNS
    from labnet.topology.model import Topology


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
    return sorted(d.name for d in root.iterdir()
                  if not paths.lab_name_error(d.name) and (d / "journal.json").exists())


def namespaces_present(journal: Journal) -> bool:
    """An 'up' lab whose namespaces are gone (say, after a reboot cleared /run) is dead."""
    return all((paths.NETNS_DIR / e["name"]).exists() for e in journal.of_kind("netns"))


def is_dead(journal: Journal) -> bool:
    """Left behind: its `up`/`down` died midway, or it is 'up' but its namespaces vanished."""
    if journal.state == "up":
        return not namespaces_present(journal)
    return not journal.owner_alive()


@contextlib.contextmanager
def lab_lock(lab: str, wait: bool = True) -> Iterator[bool]:
    """One `up`/`down` per lab at a time. With wait=False, yields False when someone holds it
    (a flock dies with its process, so a held lock always has a live owner)."""
    lock = paths.lock_file(lab)
    lock.parent.mkdir(parents=True, exist_ok=True)
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


def running_journal(lab: str) -> Journal:
    """The journal of a lab that is up; BadInput otherwise."""
    journal = load_journal(lab)
    if journal is None or journal.state != "up":
        raise BadInput(f"no running lab named {lab!r}")
    return journal


def pick_lab(name: str | None) -> str:
    if name:
        return name
    labs = [lab for lab in list_labs() if (j := load_journal(lab)) is not None and j.state == "up"]
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise BadInput("no lab is running (start one with `labnet up FILE`)")
    raise BadInput(f"several labs are running ({', '.join(labs)}): choose one with -l NAME")


def node_ns(lab: str, machine: str) -> NodeNS:
    from labnet.runtime import get_runtime

    journal = load_journal(lab)
    if journal is None:
        raise BadInput(f"no lab named {lab!r}")
    machines = journal.info.get("machines", {})
    if machine not in machines:
        raise BadInput(f"lab {lab}: no machine named {machine!r} (have: {', '.join(machines)})")
    return get_runtime(journal.runtime)(lab, journal).ns(machine)
