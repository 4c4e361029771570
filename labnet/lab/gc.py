"""`labnet gc`: labs whose owner died mid-build or whose namespaces vanished, and orphans.

Other processes may remove the same things at the same moment (another `labnet gc`, a lab's
own `down`): whatever vanishes while gc looks at it counts as removed, not as an error.
"""

from __future__ import annotations

from labnet import paths
from labnet.errors import LabnetError
from labnet.lab.lifecycle import release_unused, teardown
from labnet.lab.state import is_dead, journal_path, lab_lock, list_labs, load_journal
from labnet.runtime import RUNTIMES


def gc() -> tuple[list[str], list[str]]:
    """(what was removed, what could not be: each lab with what is left of it)."""
    removed: list[str] = []
    failed: list[str] = []
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
            if journal is None or not is_dead(journal):
                continue
            problems = teardown(journal)
        if problems:
            failed.append(f"lab {lab}: " + "; ".join(problems))
        else:
            removed.append(f"lab {lab}")
    removed += sweep_orphans()
    removed += release_unused()
    return removed, failed


def orphan(lab: str) -> bool:
    """No journal and nobody building it: an `up` holds the lock before it writes anything.
    A name no lab can have (lnet-… made by someone else) is not ours to remove."""
    if paths.lab_name_error(lab):
        return False
    with lab_lock(lab, wait=False) as free:
        if not free:
            return False
        try:
            return load_journal(lab) is None
        except LabnetError:
            return not journal_path(lab).exists()


def sweep_orphans() -> list[str]:
    """What each runtime finds of labs that have no journal, then free lock files of labs
    whose state dir is gone."""
    removed: list[str] = []
    for rt in RUNTIMES.values():
        removed += rt.sweep_orphans(orphan)
    labs_root = paths.state_root() / "labs"
    try:
        entries = sorted(labs_root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for f in entries:
        name = f.name[1:-len(".lock")]
        if (f.name.startswith(".") and f.name.endswith(".lock") and not paths.lab_name_error(name)
                and not (labs_root / name).exists()):
            with lab_lock(name, wait=False):
                pass  # a free lock of a lab without a state dir is unlinked on the way out
    return removed
