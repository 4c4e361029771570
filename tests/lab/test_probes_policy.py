"""A reachability matrix on the policy lab (default deny, one allow rule: icmp from client to
web): with every expectation right it passes; with one wrong, the whole table is printed with
exactly that cell marked, and the tries and time it took."""

from __future__ import annotations

from typing import Any

import pytest

from labnet.checks import CheckFailed

pytestmark = pytest.mark.topology("../../topologies/policy.yaml", name="t-probes-pol")

RIGHT = {"client": {"web": "reach", "other": "no-reach"},
         "other": {"web": "no-reach", "client": "no-reach"},
         "web": {"client": "no-reach", "other": "no-reach"}}


def test_the_policy_truth_as_a_matrix(lab: Any) -> None:
    r = lab.reachability(RIGHT, timeout=10)
    assert r.ok and r.detail == "6/6 cells as expected", r.detail
    # the allow rule is for icmp only: tcp to web is dropped (the responder in web never hears it)
    tcp = lab.reachability({"client": {"web": "no-reach"}, "node-2": {"web": "reach"}}, proto="tcp", port=8080)
    assert tcp.ok, tcp.detail


def test_one_wrong_expectation_is_the_one_cell_marked(lab: Any) -> None:
    wrong = {**RIGHT, "other": {"web": "reach", "client": "no-reach"}}
    with pytest.raises(CheckFailed) as err:
        lab.reachability(wrong, timeout=2)
    msg = str(err.value)
    assert "1 of 6 cells wrong: other → web" in msg, msg
    assert msg.count("✗") == 1 and msg.count("✓") == 5, msg
    table = msg[msg.index("FROM \\ TO"):]
    other = next(line for line in table.splitlines() if line.strip().startswith("other"))
    assert "✗ want reach, got no-reach" in other, table
    assert "check failed on client, other, web: reachability (icmp) (waited" in msg and "attempts)" in msg, msg
    assert f"trace: labnet trace -l {lab.name} other web" in msg, msg  # how to see why
