"""Top-level pytest configuration shared by unit and lab tests.

Lab tests (marker `lab`) need root. Outside CI they skip with the reason; with CI=true or
LABNET_REQUIRE_LAB=1 labnet's pytest plugin (labnet/pytest_plugin.py) turns any skip of a lab
test into a failure, so the suite can never pass by running nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
        if path.name.startswith("test_docker_") or path.name == "test_runtimes.py":
            item.add_marker(pytest.mark.docker)


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
