"""The same topology files and the same scenarios on both runtimes, one parametrised test."""

from __future__ import annotations

import json

import pytest
from _dockertools import containers_of, labnet_dockerd  # noqa: F401  (the session fixture)
from _labtools import TOPOLOGIES, lab_pids, labnet, snapshot


@pytest.mark.parametrize("runtime", ["netns", "docker"])
@pytest.mark.parametrize("topology", ["seed", "tor-bird"])
def test_scenarios_pass_on_both_runtimes(topology: str, runtime: str, request: pytest.FixtureRequest) -> None:
    if runtime == "docker":
        request.getfixturevalue("labnet_dockerd")
    name = f"t-rt-{topology[:4]}-{runtime[:2]}"
    f = str(TOPOLOGIES / f"{topology}.yaml")
    before = snapshot(name)
    labnet("up", f, "--name", name, "--runtime", runtime, "-q", timeout=900)
    pids = lab_pids(name)
    try:
        rows = json.loads(labnet("status", "-l", name, "--json").stdout)
        assert rows[0]["runtime"] == runtime
        res = labnet("check", f, "-l", name, "--json", check=False)
        results = json.loads(res.stdout)["results"]
        bad = [r["message"] for r in results if not r["ok"]]
        assert res.returncode == 0 and not bad, f"{topology} on {runtime}:\n" + "\n\n".join(bad)
    finally:
        labnet("down", "--name", name, check=False)
    if runtime == "docker":
        assert not containers_of(name), f"containers left: {containers_of(name)}"
    left = snapshot(name, pids).leftovers(before)
    assert not left, f"{topology} on {runtime} left: {left}"
