"""`labnet gc`'s orphan sweep when other processes remove the same things at the same moment.

Another `labnet gc`, or a lab's own `down`, may unmount and remove a namespace file or a lab's
/run/labnet/<lab> directory between gc's look and its act. No root and no real mounts here:
the state, run and netns directories are temporary, and `_umount` is replaced by one that plays
the other process (it removes things, then fails as umount does on a vanished mount).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from labnet import paths
from labnet.errors import LabnetError
from labnet.lab import gc as labgc
from labnet.lab import state
from labnet.runtime import docker, netns


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("state", "run", "netns")}
    for p in d.values():
        p.mkdir()
    monkeypatch.setenv("LABNET_STATE_DIR", str(d["state"]))
    monkeypatch.setenv("LABNET_RUN_DIR", str(d["run"]))
    monkeypatch.setattr(paths, "NETNS_DIR", d["netns"])
    monkeypatch.setattr(docker, "orphan_containers", lambda is_orphan: [])  # no dockerd in a unit test
    return d


def _orphan_lab(d: dict[str, Path], name: str) -> None:
    (d["netns"] / f"lnet-{name}.node-1").touch()
    (d["run"] / name).mkdir()
    for f in ("node-1.mnt", "node-1.uts"):
        (d["run"] / name / f).touch()


def test_gc_sweep_tolerates_paths_that_vanish_meanwhile(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        _orphan_lab(dirs, name)
    (dirs["netns"] / "not-a-lab").touch()
    umounted: list[str] = []

    def racing_umount(path: Path) -> None:
        umounted.append(path.name)
        if path.name == "lnet-a.node-1":  # another gc unmounted and unlinked it first
            path.unlink()
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if path.name == "node-1.mnt" and path.parent.name == "a":  # another gc removes lab a's dir
            shutil.rmtree(path.parent)
            raise LabnetError(f"cannot unmount {path}: umount: {path}: not mounted.")  # EINVAL

    real_load = state.load_journal

    def racing_load(name: str) -> Any:
        if name == "c":  # lab c's dir goes while gc holds c's lock: before gc lists its files
            shutil.rmtree(dirs["run"] / "c", ignore_errors=True)
        return real_load(name)

    monkeypatch.setattr(netns, "_umount", racing_umount)
    monkeypatch.setattr(labgc, "load_journal", racing_load)
    removed, failed = labgc.gc()
    assert failed == []
    assert sorted(p.name for p in dirs["netns"].iterdir()) == ["not-a-lab"], (
        f"netns dir after gc: expected only not-a-lab, got {sorted(p.name for p in dirs['netns'].iterdir())}")
    assert not list(dirs["run"].iterdir()), f"run dir after gc: expected empty, got {list(dirs['run'].iterdir())}"
    assert {"lnet-a.node-1", "node-1.mnt", "lnet-b.node-1"} <= set(umounted), umounted
    assert "orphan namespace lnet-b.node-1" in removed and f"orphan namespace files {dirs['run'] / 'b'}" in removed, (
        f"gc's report: expected lab b's orphans, got {removed}")


def test_gc_sweep_with_no_run_dir_at_all(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # the last lab's `down` removes /run/labnet itself
    monkeypatch.setenv("LABNET_RUN_DIR", str(dirs["run"] / "gone"))
    assert labgc.gc() == ([], [])


def test_gc_sweep_still_fails_on_a_mount_that_stays(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _orphan_lab(dirs, "a")

    def stuck(path: Path) -> None:
        raise LabnetError(f"cannot unmount {path}: target is busy")

    monkeypatch.setattr(netns, "_umount", stuck)
    monkeypatch.setattr(netns, "_is_mountpoint", lambda path: path.exists())
    with pytest.raises(LabnetError, match="target is busy"):
        labgc.gc()


def test_a_waiter_on_a_lock_file_its_holder_unlinked_takes_the_lock_at_the_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder of a lab's lock removes the lock file when the lab is gone; whoever waited on
    the old file must not count as holding the lab's lock, or a gc could take the new file and
    sweep a lab that an `up` has only started."""
    import threading

    monkeypatch.setenv("LABNET_STATE_DIR", str(tmp_path))
    got, release, answers = threading.Event(), threading.Event(), {}

    def waiter() -> None:
        with state.lab_lock("x") as mine:  # blocks until the first holder is done
            answers["waiter"] = mine
            got.set()
            release.wait(10)

    with state.lab_lock("x") as first:
        assert first
        t = threading.Thread(target=waiter)
        t.start()
        lock = tmp_path / "labs" / ".x.lock"
        from labnet.wait import poll
        poll(lambda: _waiting_on(lock), lambda n: n >= 2, timeout=10, what="the waiter to open the lock file")
    # the first holder unlinked the file (no lab dir); the waiter now holds the lock at the path
    assert got.wait(10), "the waiter never got the lock"
    with state.lab_lock("x", wait=False) as third:
        answers["third"] = third
    release.set()
    t.join(10)
    assert answers == {"waiter": True, "third": False}, answers


def _waiting_on(lock: Path) -> int:
    """How many open descriptors of this process point at `lock` (or at its unlinked inode)."""
    import os

    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(lock)):
                n += 1
        except OSError:
            pass
    return n


def test_gc_removes_free_lock_files_of_labs_without_a_state_dir(dirs: dict[str, Path]) -> None:
    labs = dirs["state"] / "labs"
    labs.mkdir(exist_ok=True)
    (labs / ".gone.lock").touch()
    (labs / "kept").mkdir()
    (labs / ".kept.lock").touch()
    (labs / ".busy.lock").touch()
    with state.lab_lock("busy", wait=False) as held:
        assert held
        labgc.sweep_orphans()
        left = sorted(p.name for p in labs.iterdir())
    assert left == [".busy.lock", ".kept.lock", "kept"], f"lock files after gc: {left}"


def test_a_lab_that_cannot_be_removed_is_reported_and_keeps_its_owner(
        dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """gc and down say what is left (exit 1), never "removed"; the journal is marked broken and is
    not rewritten to claim this process as the owner of a lab it could not remove."""
    import subprocess
    import sys

    from labnet.lab.journal import Journal
    from labnet.lab.lifecycle import teardown

    (dirs["state"] / "labs" / "stuck").mkdir(parents=True)
    j = Journal(path=dirs["state"] / "labs" / "stuck" / "journal.json", lab="stuck", state="building",
                owner_pid=999999999, owner_start=1)
    j.save()
    monkeypatch.setattr(netns.NetnsRuntime, "teardown", lambda self: ["cannot unmount /run/netns/lnet-stuck.a: busy"])
    removed, failed = labgc.gc()
    assert removed == [] and failed == ["lab stuck: cannot unmount /run/netns/lnet-stuck.a: busy"], (removed, failed)
    after = Journal.load(j.path)
    assert (after.state, after.owner_pid, after.owner_start) == ("broken", 999999999, 1), after
    assert after.info["left"] == ["cannot unmount /run/netns/lnet-stuck.a: busy"]
    assert teardown(after) and Journal.load(j.path).owner_pid == 999999999  # a second try: the same
    # the CLI: exit 1 and the words (as root only: gc needs it)
    code = ("import sys; from pathlib import Path; from labnet.runtime import netns; from labnet import cli, paths; "
            f"paths.NETNS_DIR = Path({str(dirs['netns'])!r}); "  # never the host's namespaces
            "netns.NetnsRuntime.teardown = lambda self: ['left: x']; "
            "import os; os.geteuid = lambda: 0; sys.exit(cli.main(['gc']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "LABNET_STATE_DIR": str(dirs["state"]),
                               "LABNET_RUN_DIR": str(dirs["run"])})
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "gc could not remove lab stuck: left: x" in proc.stderr and "removed lab" not in proc.stdout, proc
