"""Top-level pytest configuration shared by unit and lab tests.

Lab tests (marker `lab`) need root. Outside CI they skip with the reason; with CI=true or
LABNET_REQUIRE_LAB=1 labnet's pytest plugin (labnet/pytest_plugin.py) turns any skip of a lab
test into a failure, so the suite can never pass by running nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labnet.nsexec import NodeNS, pid_alive
from labnet.paths import NETNS_DIR

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/lab/ is a lab test; labnet's plugin turns their skips into
    # failures under CI=true or LABNET_REQUIRE_LAB=1.
    for item in items:
        if "/tests/lab/" in str(item.fspath) and item.get_closest_marker("lab") is None:
            item.add_marker(pytest.mark.lab)


class NetnsFactory:
    """Throw-away network namespaces for component tests, named lnet-test-<run>-<n>.

    Everything made here (namespaces, daemons started with `track_pid`) is removed at teardown.
    """

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self.pids: list[int] = []

    def __call__(self, tag: str = "") -> NodeNS:
        name = f"lnet-test-{self.run_id}-{len(self.made)}{('-' + tag) if tag else ''}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return NodeNS(name=name, netns=str(NETNS_DIR / name))

    def track_pid(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
