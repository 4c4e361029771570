"""Helpers for BGP lab tests: a veth between two test namespaces, BIRD 2 and labnet's speaker as daemons."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labnet.bgp.cli import control
from labnet.nsexec import NodeNS, run, spawn
from labnet.wait import poll

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"


def link(a: NodeNS, a_if: str, a_addrs: list[str], b: NodeNS, b_if: str, b_addrs: list[str]) -> None:
    """A veth made inside `a` with its peer end sent straight to `b` (never the root namespace)."""
    run(a, ["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.netns])
    for ns, ifname, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
        for addr in addrs:
            run(ns, ["ip", "addr", "add", addr, "dev", ifname])
        run(ns, ["ip", "link", "set", ifname, "up"])


@dataclass
class Bird:
    ns: NodeNS
    sock: Path
    pid: int
    log: Path

    def cmd(self, *args: str) -> str:
        return run(None, [BIRDC, "-s", str(self.sock), *args], timeout=10).stdout

    def protocols(self) -> dict[str, str]:
        """Protocol name → BGP state from `birdc show protocols` (Info column)."""
        out: dict[str, str] = {}
        for line in self.cmd("show", "protocols").splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "BGP":
                out[parts[0]] = parts[5]
        return out

    def routes(self, protocol: str) -> set[str]:
        """Prefixes BIRD holds from `protocol` (`birdc show route protocol P`)."""
        text = self.cmd("show", "route", "protocol", protocol)
        return set(re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s", text, re.M))

    def route_detail(self, prefix: str) -> str:
        return self.cmd("show", "route", prefix, "all")


def start_bird(ns: NodeNS, tmp: Path, config: str, track_pid: Any, recovery: bool = False) -> Bird:
    """BIRD in `ns`, foreground, pid tracked. `recovery` (-R) restarts it as a graceful restart."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf, sock, pidfile, log = tmp / "bird.conf", tmp / "bird.ctl", tmp / "bird.pid", tmp / "bird.log"
    conf.write_text(config)
    run(None, [BIRD, "-p", "-c", str(conf)])  # parse only: a config error fails here, readably
    argv = [BIRD, "-f", "-c", str(conf), "-s", str(sock), "-P", str(pidfile)] + (["-R"] if recovery else [])
    pid = track_pid(spawn(ns, argv, log=log))
    bird = Bird(ns, sock, pid, log)
    poll(lambda: bird.cmd("show", "status"), lambda out: "Daemon is up" in out, timeout=10,
         what=f"BIRD in {ns.name} answering on {sock} (log {log})")
    return bird


@dataclass
class LabnetSpeaker:
    ns: NodeNS
    control: Path
    pid: int
    log: Path

    def status(self) -> dict[str, dict[str, Any]]:
        return {s["peer_address"]: s for s in control(self.control, "status")}

    def states(self) -> dict[str, str]:
        return {a: s["state"] for a, s in self.status().items()}

    def rib(self) -> dict[str, dict[str, Any]]:
        return {r["prefix"]: r for r in control(self.control, "rib")}

    def originate(self, prefix: str) -> None:
        control(self.control, "originate", prefix=prefix)

    def withdraw(self, prefix: str) -> None:
        control(self.control, "withdraw", prefix=prefix)

    def table(self) -> str:
        return str(control(self.control, "status_table"))


def start_labnet(ns: NodeNS, tmp: Path, config: dict[str, Any], track_pid: Any) -> LabnetSpeaker:
    tmp.mkdir(parents=True, exist_ok=True)
    ctl, log, conf = tmp / "labnet-bgp.ctl", tmp / "labnet-bgp.log", tmp / "labnet-bgp.json"
    conf.write_text(json.dumps({**config, "control": str(ctl)}))
    pid = track_pid(spawn(ns, [sys.executable, "-m", "labnet.bgp.cli", str(conf)], log=log))
    sp = LabnetSpeaker(ns, ctl, pid, log)
    poll(lambda: control(ctl, "status"), lambda s: isinstance(s, list), timeout=15,
         what=f"labnet speaker in {ns.name} answering on {ctl} (log {log})")
    return sp
