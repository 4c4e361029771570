"""Helpers for lab tests: run the real CLI, and snapshot what a lab leaves on the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from labnet import paths

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


def labnet(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `labnet ARGS` as a user would (a fresh process each time)."""
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"labnet {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def lab_exec(lab: str, target: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return labnet("exec", "-l", lab, target, "--", *cmd, check=check, timeout=60)


@dataclass(frozen=True)
class Snapshot:
    """What of a lab can be seen on the host: namespaces, mounts, root links, state, pids."""

    netns: frozenset[str]
    mounts: frozenset[str]
    root_links: frozenset[str]
    state: bool
    pids: frozenset[int]
    inits: frozenset[int] = frozenset()  # labnet-nsinit processes of the lab's machines

    def leftovers(self, before: Snapshot) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.netns - before.netns:
            out["namespaces"] = sorted(self.netns - before.netns)
        if self.mounts - before.mounts:
            out["mounts"] = sorted(self.mounts - before.mounts)
        if self.root_links != before.root_links:
            out["root netns links changed"] = sorted(self.root_links ^ before.root_links)
        if self.state:
            out["state dir"] = True
        if self.pids:
            out["processes alive"] = sorted(self.pids)
        if self.inits - before.inits:
            out["machine inits alive"] = sorted(self.inits - before.inits)
        return out


def snapshot(lab: str, pids: frozenset[int] = frozenset()) -> Snapshot:
    ns = frozenset(n for n in os.listdir(paths.NETNS_DIR) if paths.lab_of_netns(n) == lab) \
        if paths.NETNS_DIR.is_dir() else frozenset()
    def ours(mountpoint: str) -> bool:
        # exact prefixes: lab "t-seed" must not claim the mounts of lab "t-seedfull"
        return (mountpoint == f"/run/labnet/{lab}" or mountpoint.startswith(f"/run/labnet/{lab}/")
                or mountpoint.startswith(f"/run/netns/lnet-{lab}.") or f"/labs/{lab}/" in mountpoint)

    with open("/proc/self/mountinfo") as f:
        mounts = frozenset(mp for mp in (line.split()[4] for line in f) if ours(mp))
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    root_links = frozenset(f"{x['ifname']}" for x in links)
    alive = frozenset(p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p))
    return Snapshot(ns, mounts, root_links, paths.lab_dir(lab).exists(), alive, _inits(lab))


def _inits(lab: str) -> frozenset[int]:
    """Running labnet-nsinit processes of `lab` (their argv names the machine's netns file)."""
    mark = f"/run/netns/{paths.lab_prefix(lab)}.".encode()
    found = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"/labnet-nsinit") and any(a.startswith(mark) for a in argv) and _not_zombie(int(p)):
                found.add(int(p))
    return frozenset(found)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lab_pids(lab: str) -> frozenset[int]:
    rows = json.loads(labnet("status", "-l", lab, "--json").stdout)
    return frozenset(p["pid"] for r in rows for p in r["processes"])
