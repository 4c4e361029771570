"""Gates: what must not happen while a scenario (or a gated test) runs, unless it says so.

Before the first step: each node's process (its pid), the end of each node's logs, and one
netlink socket per node subscribed to its route events (made inside the node's namespace; the
kernel queues the events until they are read). After the last step and the faults' undo:

  restart       a node's process (agent, CNI server, userspace tunl0) is not the one it was
  errors        a daemon of a node logged at ERROR, or a Python traceback
  route-flaps   a route labnet owns (proto bird: blocks, blackholes, tunnel routes) was deleted

each fails the run with the evidence, unless a step declared it: a fault declares what it
breaks (labnet.topology.steps: StepKind.breaks), and a `tolerate` step declares it by hand.
FRR topotests fail a test on a daemon's crash or memory leak in the same spirit.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labnet.agent.rtnl import RTM_DELROUTE, parse_events
from labnet.lab.phases.agents import AGENT_LOG_INSIDE, SUPERVISOR_LOG_INSIDE
from labnet.lab.processes import current
from labnet.lab.view import LabView
from labnet.nsexec import children, in_netns

RTMGRP_IPV4_ROUTE = 0x40
RTPROT_BIRD = 12  # labnet's routes say `proto bird`, as Calico's do
EVIDENCE_LINES = 5  # per node and gate; the rest is counted
_ERROR = re.compile(r" ERROR |Traceback \(most recent call last\)")


def node_process(entry: dict[str, Any]) -> int | None:
    """The pid of a node's process: the entry's own (the lab's supervisor keeps it), or the
    child of the node's own supervisor (docker)."""
    now = current(entry)
    if entry.get("pidfile"):
        return int(now["pid"])
    kids = children(int(now["pid"]))
    return kids[0] if kids else None


@dataclass
class _Node:
    name: str
    pid: int | None
    logs: dict[Path, int] = field(default_factory=dict)  # host path -> size before
    watch: socket.socket | None = None


class Gates:
    """Marks taken before a run (`Gates(view)`), judged after it (`violations`)."""

    def __init__(self, view: LabView) -> None:
        self.view = view
        self.nodes: list[_Node] = []
        try:
            self._mark()
        except BaseException:
            self.close()  # the sockets made for the nodes before
            raise

    def _mark(self) -> None:
        view = self.view
        for e in view.journal.of_kind("process"):
            if e.get("what") != "agent" or not e.get("node"):
                continue
            name = str(e["node"])
            n = _Node(name, node_process(e))
            for inside in (AGENT_LOG_INSIDE, SUPERVISOR_LOG_INSIDE):
                with contextlib.suppress(OSError, ValueError):
                    path = Path(view.runtime.host_path(name, inside))
                    n.logs[path] = path.stat().st_size
            with contextlib.suppress(OSError, ValueError):
                n.watch = in_netns(view.ns(name), _route_socket)
            self.nodes.append(n)

    def violations(self, tolerated: Iterable[str] = ()) -> list[str]:
        """What happened that should not have, one entry per node and gate, with evidence."""
        allowed = set(tolerated)
        out: list[str] = []
        entries = {str(e["node"]): e for e in self.view.journal.of_kind("process")
                   if e.get("what") == "agent" and e.get("node")}
        for n in self.nodes:
            if "restart" not in allowed and n.name in entries:
                now = node_process(entries[n.name])
                if now != n.pid:
                    out.append(f"restart: node {n.name}: its process (agent, CNI server) was pid {n.pid}, "
                               f"is now {now if now is not None else 'not running'}")
            if "errors" not in allowed:
                lines = [ln for path, size in n.logs.items() for ln in _new_lines(path, size) if _ERROR.search(ln)]
                if lines:
                    more = f" (and {len(lines) - EVIDENCE_LINES} more)" if len(lines) > EVIDENCE_LINES else ""
                    out.append(f"errors: node {n.name}: {len(lines)} line(s) at ERROR or tracebacks in its logs"
                               f"{more}:\n" + "\n".join("    " + ln[:300] for ln in lines[:EVIDENCE_LINES]))
            if "route-flaps" not in allowed and n.watch is not None:
                deleted, lost = _deleted_routes(n.watch)
                if deleted:
                    more = f" (and {len(deleted) - EVIDENCE_LINES} more)" if len(deleted) > EVIDENCE_LINES else ""
                    out.append(f"route-flaps: node {n.name}: {len(deleted)} route(s) labnet owns were deleted"
                               f"{more}: " + ", ".join(deleted[:EVIDENCE_LINES]))
                elif lost:
                    out.append(f"route-flaps: node {n.name}: its route events overflowed the socket's buffer; "
                               "whether a route flapped cannot be told")
        return out

    def close(self) -> None:
        for n in self.nodes:
            if n.watch is not None:
                n.watch.close()
                n.watch = None


def _route_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    with contextlib.suppress(OSError):  # a larger queue than the default, for a busy run
        s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root)
    s.bind((0, RTMGRP_IPV4_ROUTE))
    s.setblocking(False)
    return s


def _deleted_routes(s: socket.socket) -> tuple[list[str], bool]:
    """The labnet routes the kernel deleted since the socket was made, and whether events were
    lost (the queue overflowed)."""
    deleted: list[str] = []
    lost = False
    while True:
        try:
            data = s.recv(1 << 16)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            lost = True
            continue
        for kind, r in parse_events(data):
            if kind == RTM_DELROUTE and r.proto == RTPROT_BIRD:
                deleted.append(f"{r.dst}/{r.dst_len}" + (f" via {r.gateway}" if r.gateway else "")
                               + (" blackhole" if r.type == 6 else ""))
    return deleted, lost


def _new_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) < offset:
                offset = 0  # rotated or truncated: all of it is new
            f.seek(offset)
            return f.read(4 << 20).decode(errors="replace").splitlines()
    except OSError:
        return []
