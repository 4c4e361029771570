"""Throw-away network namespaces for component tests and benchmarks (not for labs).

Named <prefix>-<run>-<n>[-tag]; everything made here (namespaces, daemons registered with
`track_pid`) is removed by `cleanup()`, processes by their recorded pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid

from labnet.nsexec import NodeNS, pid_alive, processes_in
from labnet.paths import NETNS_DIR
from labnet.wait import poll


class ScratchNamespaces:
    def __init__(self, prefix: str = "lnet-test") -> None:
        self.prefix = prefix
        self.run_id = uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self.pids: list[int] = []

    def __call__(self, tag: str = "") -> NodeNS:
        name = f"{self.prefix}-{self.run_id}-{len(self.made)}{('-' + tag) if tag else ''}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return NodeNS(name=name, netns=str(NETNS_DIR / name))

    def track_pid(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        # The recorded pids, and whatever else still runs inside these namespaces (a daemon's
        # own children, such as a supervisor's node process).
        inside = processes_in([str(NETNS_DIR / n) for n in self.made])
        for pid in [*reversed(self.pids), *inside]:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        poll(lambda: [p for p in inside if pid_alive(p)], lambda left: not left, timeout=10,
             what="processes in the scratch namespaces to exit")
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
