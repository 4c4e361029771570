"""`labnet` killed with SIGKILL at random points of `up` and `down`; `labnet gc` leaves nothing.

Kill points are picked by polling the journal: for `up`, until its entry count reaches a random
threshold (the journal records each object before making it, so every threshold is a point
where something is half-built); for `down`, after it started tearing down, once a random number
of the lab's recorded processes are gone. After each kill, `labnet gc` must remove every
namespace, mount, process (by the pids the journal recorded before the kill) and the lab's state
dir. The generator's seed is printed (and can be set with LABNET_SIGKILL_SEED) to replay a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _labtools import TOPOLOGIES, labnet, snapshot

from labnet import paths
from labnet.lab.journal import Journal
from labnet.nsexec import pid_alive
from labnet.wait import poll

LAB = "t-sigkill"
MINIMAL = str(TOPOLOGIES / "minimal.yaml")
KILLS = 10


def _journal() -> dict | None:  # type: ignore[type-arg]
    p = paths.lab_dir(LAB) / "journal.json"
    try:  # the file and its tail (labnet.lab.journal)
        j = Journal.load(p)
        return {"entries": j.entries, "state": j.state}
    except (OSError, ValueError):
        return None  # not there yet, or already removed


def _entries() -> int:
    j = _journal()
    return len(j["entries"]) if j else 0


def _pids() -> frozenset[int]:
    j = _journal()
    return frozenset(e["pid"] for e in (j or {}).get("entries", []) if e["kind"] == "process")


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "labnet.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _gc_leaves_nothing(what: str, pids: frozenset[int]) -> None:
    before_empty = snapshot("no-such-lab")  # the shape of "nothing": used for the netns/mount diff

    # gc is global and other labs may be torn down at the same moment: its sweep takes what
    # vanishes meanwhile as removed (tests/unit/test_lab_gc.py), so one run must succeed
    proc = labnet("gc", check=False)
    assert proc.returncode == 0, f"{what}: `labnet gc` exited {proc.returncode}: {proc.stderr or proc.stdout}"
    left = snapshot(LAB, pids).leftovers(before_empty)
    left.pop("root netns links changed", None)  # other engineers' labs may come and go meanwhile
    assert not left, f"{what}: after SIGKILL and `labnet gc`, lab {LAB} left: {left}"


def _kill_up(threshold: int) -> tuple[int, frozenset[int]]:
    """Start `up`, SIGKILL it once the journal holds `threshold` entries; (entries, recorded pids)."""
    proc = _start("up", MINIMAL, "--name", LAB, "-q")
    try:
        poll(lambda: (_entries(), proc.poll()), lambda s: s[0] >= threshold or s[1] is not None,
             timeout=120, what=f"`labnet up` to journal {threshold} entries")
    finally:
        _kill(proc)
    return _entries(), _pids()  # the journal on disk: what was recorded before the kill


def _kill_down(rng: random.Random) -> tuple[int, frozenset[int]]:
    """Build the lab, start `down`, SIGKILL it after it stopped a random number of processes."""
    labnet("up", MINIMAL, "--name", LAB, "-q")
    recorded = _pids()
    gone = rng.randint(0, len(recorded))
    proc = _start("down", "--name", LAB)

    def progress() -> tuple[str | None, int, int | None]:
        return (_journal() or {}).get("state"), sum(not pid_alive(p) for p in recorded), proc.poll()

    try:
        poll(progress, lambda s: s[0] is None or s[2] is not None or (s[0] == "tearing-down" and s[1] >= gone),
             timeout=120, what=f"`labnet down` to start and stop {gone} processes")
    finally:
        _kill(proc)
    return gone, recorded


@pytest.fixture
def seed() -> int:
    if os.geteuid() != 0:
        pytest.skip("needs root to build labs")
    value = int(os.environ.get("LABNET_SIGKILL_SEED", random.randrange(2**32)))
    print(f"test_sigkill: random seed {value} (replay with LABNET_SIGKILL_SEED={value})")
    return value


def test_sigkill_up_and_down_then_gc(seed: int) -> None:
    rng = random.Random(seed)
    assert _journal() is None, f"lab {LAB} exists already; remove it with `labnet down --name {LAB}`"
    try:
        # One full build tells how many journal entries `up` makes.
        labnet("up", MINIMAL, "--name", LAB, "-q")
        total = _entries()
        assert total > 5, f"a full `up` journalled only {total} entries"
        labnet("down", "--name", LAB)
        kinds = ["up"] * (KILLS // 2) + ["down"] * (KILLS - KILLS // 2)
        rng.shuffle(kinds)
        for i, kind in enumerate(kinds):
            if kind == "up":
                at, pids = _kill_up(rng.randint(1, total - 1))
                what = f"kill {i + 1}/{KILLS} (seed {seed}): `up` killed at {at}/{total} journal entries"
                if (_journal() or {}).get("state") == "up":  # the kill came after `up` had finished
                    labnet("down", "--name", LAB)
                    what += " (too late: up had finished; removed with down)"
            else:
                gone, pids = _kill_down(rng)
                what = f"kill {i + 1}/{KILLS} (seed {seed}): `down` killed after {gone} of {len(pids)} processes"
            print(what)
            _gc_leaves_nothing(what, pids)
    finally:
        if Path(paths.lab_dir(LAB)).exists():
            labnet("down", "--name", LAB, check=False)
        labnet("gc", check=False)
