"""`labnet down FILE` after the file changed (machines dropped, broken YAML), `down --all`,
and IPv6 on only when the topology asks (`ipv6: true`). Underlay-only labs: each comes up in ~1 s."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from _labtools import REPO, lab_exec, labnet, snapshot

from labnet import paths
from labnet.lab import state as lab

IPV6_LAB = REPO / "fixtures" / "topologies" / "good" / "ipv6-underlay.yaml"


def _copy_as(dest: Path, name: str) -> Path:
    """The ipv6-underlay fixture under another lab name, in a file of its own."""
    text = IPV6_LAB.read_text().replace("name: ipv6-underlay", f"name: {name}")
    assert f"name: {name}" in text
    dest.write_text(text)
    return dest


def _sysctl(lab: str, machine: str, key: str) -> str:
    return lab_exec(lab, machine, "sysctl", "-n", key).stdout.strip()


def test_down_file_after_the_file_was_edited_or_broken(tmp_path: Path) -> None:
    name = "t-downfile"
    before = snapshot(name)
    topo = _copy_as(tmp_path / "lab.yaml", name)
    try:
        labnet("up", str(topo), "-q")
        # ipv6: true keeps IPv6 on in every machine (labnet turns it off unless asked).
        for m in ("r1", "h1", "h2"):
            got = _sysctl(name, m, "net.ipv6.conf.all.disable_ipv6")
            assert got == "0", f"lab {name} ({m}): ipv6: true, net.ipv6.conf.all.disable_ipv6 expected 0, got {got}"

        # Edited: a machine dropped from the file. down still removes all the journal holds.
        topo.write_text(topo.read_text().replace(
            "  h2: {interfaces: [{network: lan, address: 10.77.5.11}], gateway: 10.77.5.1}\n", ""))
        assert "h2:" not in topo.read_text()
        out = labnet("down", str(topo)).stdout
        assert f"lab {name}: removed" in out, f"down {topo} (h2 dropped from the file): {out}"
        left = snapshot(name).leftovers(before)
        assert not left, f"lab {name}: down FILE after h2 was dropped from the file left: {left}"

        # Broken: the file is no longer YAML at all. down FILE finds the lab by the file its journal records.
        _copy_as(topo, name)
        labnet("up", str(topo), "-q")
        topo.write_text("name: [this is : not {yaml\n")
        res = labnet("down", str(topo), check=False)
        assert res.returncode == 0 and f"lab {name}: removed" in res.stdout, \
            f"down {topo} (broken YAML): exit {res.returncode}, {res.stdout}{res.stderr}"
        left = snapshot(name).leftovers(before)
        assert not left, f"lab {name}: down FILE after the file was broken left: {left}"

        # A broken file that no lab was brought up from: a clear error, exit 2.
        stray = tmp_path / "stray.yaml"
        stray.write_text("name: [oops\n")
        res = labnet("down", str(stray), check=False)
        assert res.returncode == 2 and "use --name" in res.stderr, \
            f"down of a broken file no lab came from: exit {res.returncode}, {res.stderr}"
    finally:
        labnet("down", "--name", name, check=False)


def _private_env(tmp_path: Path) -> dict[str, str]:
    """A state and run directory of our own: `--all` there sees only the labs made there."""
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run.mkdir()
    return {**os.environ, "PYTHONUNBUFFERED": "1", "LABNET_STATE_DIR": str(state), "LABNET_RUN_DIR": str(run)}


def _private(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, f"labnet {' '.join(args)} (private state dir) exited {proc.returncode}:\n" \
                                 f"{proc.stdout}{proc.stderr}"
    return proc


def test_down_all_removes_every_lab_of_the_state_dir(tmp_path: Path) -> None:
    """`down --all` with LABNET_STATE_DIR/LABNET_RUN_DIR pointed at a private directory: it removes
    both labs made there, and a lab in the normal state directory (ours, made for this) stays up.
    The other labs on this machine (other test workers') are never in reach."""
    env = _private_env(tmp_path)
    mine, keep = ("t-all-a", "t-all-b"), "t-all-keep"
    befores = {n: snapshot(n) for n in (*mine, keep)}
    # A `labnet gc` of another test worker sees the private labs' namespaces in /run/netns but
    # not their journals: holding their names' locks in the normal state dir tells it hands off.
    guard = contextlib.ExitStack()
    for n in mine:
        assert guard.enter_context(lab.lab_lock(n, wait=False)), f"lab name {n} is busy in the normal state dir"
    try:
        labnet("up", str(_copy_as(tmp_path / "keep.yaml", keep)), "-q")
        for n in mine:
            _private(env, "up", str(_copy_as(tmp_path / f"{n}.yaml", n)), "-q")
        rows = json.loads(_private(env, "status", "--json").stdout)
        assert sorted((r["lab"], r["state"]) for r in rows) == [(n, "up") for n in mine], \
            f"labs in the private state dir: {[(r['lab'], r['state']) for r in rows]}"
        assert all((Path(env["LABNET_STATE_DIR"]) / "labs" / n).is_dir() for n in mine)

        out = _private(env, "down", "--all").stdout
        assert sorted(out.splitlines()) == [f"lab {n}: removed" for n in mine], f"down --all said: {out!r}"
        assert json.loads(_private(env, "status", "--json").stdout) == [], "labs left after down --all"
        for n in mine:
            left = snapshot(n).leftovers(befores[n])
            left.pop("state dir", None)  # snapshot looks in the normal state dir; the private one:
            if (Path(env["LABNET_STATE_DIR"]) / "labs" / n).exists():
                left["state dir"] = str(Path(env["LABNET_STATE_DIR"]) / "labs" / n)
            with open("/proc/self/mountinfo") as f:
                mounts = [ln.split()[4] for ln in f if ln.split()[4].startswith(env["LABNET_RUN_DIR"] + f"/{n}")]
            if mounts:
                left["mounts in the private run dir"] = mounts
            assert not left, f"lab {n}: down --all left: {left}"

        rows = json.loads(labnet("status", "-l", keep, "--json").stdout)
        assert rows and rows[0]["state"] == "up", f"lab {keep} (normal state dir) after a private down --all: {rows}"
        assert lab_exec(keep, "h1", "hostname").stdout.strip() == "h1"
    finally:
        subprocess.run([sys.executable, "-m", "labnet.cli", "down", "--all"], env=env, capture_output=True,
                       timeout=120)
        labnet("down", "--name", keep, check=False)
        guard.close()
    left = snapshot(keep).leftovers(befores[keep])
    assert not left, f"lab {keep}: left after down: {left}"
    assert not paths.lab_dir(keep).exists()
