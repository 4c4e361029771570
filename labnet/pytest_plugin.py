"""labnet's pytest plugin (entry point pytest11). Fixtures and YAML scenarios come in issue 6."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root; builds real namespaces")
    config.addinivalue_line("markers", "topology(path): the topology file the lab fixture builds")
