"""Top-level pytest configuration shared by unit and lab tests.

Lab tests (marker `lab`) need root. Outside CI they skip with the reason; with CI=true or
LABNET_REQUIRE_LAB=1 labnet's pytest plugin (labnet/testing/pytest_plugin.py) turns any skip of
a lab test into a failure, and so does a skip while collecting tests/lab, so the suite can never
pass by running nothing. A session that ran lab tests fails if it leaves a namespace or a lab
behind that was not there when it started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labnet import paths
from labnet.testing.pytest_plugin import lab_required
from labnet.testing.scratch import ScratchNamespaces

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/lab/ is a lab test; labnet's plugin turns their skips into
    # failures under CI=true or LABNET_REQUIRE_LAB=1.
    for item in items:
        path = Path(str(item.fspath))
        if "/tests/lab/" in str(path) and item.get_closest_marker("lab") is None:
            item.add_marker(pytest.mark.lab)
        # Docker tests share one labnet dockerd: tox runs them in their own env, one at a time.
        # The netns half of a test parametrised by runtime is a plain lab test.
        params = getattr(getattr(item, "callspec", None), "params", {})
        if path.name.startswith("test_docker_") or params.get("runtime") == "docker":
            item.add_marker(pytest.mark.docker)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A lab test module that skips while it is collected is a failure where a skip would be."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.skipped and "/tests/lab/" in str(collector.path) and lab_required():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"lab test module skipped while collected, a failure when CI=true or LABNET_REQUIRE_LAB=1: {reason}"


def _leftovers() -> set[str]:
    """What a lab leaves on the host: namespace files of labs, and lab state directories."""
    netns = {f"namespace {p.name}" for p in paths.NETNS_DIR.glob("lnet-*")} if paths.NETNS_DIR.is_dir() else set()
    labs = paths.state_root() / "labs"
    state = {f"lab state {p}" for p in labs.iterdir() if not p.name.startswith(".")} if labs.is_dir() else set()
    return netns | state


OUTER = "LABNET_OUTER_PYTEST"  # set by the outermost session: a pytest run inside a test leaves the check to it


def pytest_configure(config: pytest.Config) -> None:
    outer = not hasattr(config, "workerinput") and OUTER not in os.environ
    if outer:
        os.environ[OUTER] = str(os.getpid())  # inherited by xdist workers and the pytest runs tests start
    config.stash[_OUTERMOST] = outer


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _leftovers()


@pytest.hookimpl(trylast=True)  # after pytest's own sessionfinish has torn down session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only the outermost session looks (once every xdist worker is done): a pytest run by a test
    # would see the labs of tests running beside it.
    if not session.config.stash.get(_OUTERMOST, False) or os.geteuid() != 0:
        return
    left = sorted(_leftovers() - session.config.stash[_BEFORE])
    if left:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "the test session left these behind (a lab or a test did not clean up):\n  " + "\n  ".join(left)
        if tr is not None:
            tr.write_sep("=", "leftovers", red=True)
            tr.write_line(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set[str]]()
_OUTERMOST = pytest.StashKey[bool]()


NetnsFactory = ScratchNamespaces  # the fixture's type, for annotations in tests


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
