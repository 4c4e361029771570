"""Policy truth tables on the policy lab: every generated case as labnet's model says, reported
per case and in total, with JUnit; and a deliberately broken enforcement (each chain's rules in
the wrong order) caught, with the wrong cells named."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from _labtools import labnet

from labnet.policy import apply, remove, render
from labnet.policy.cases import case_named
from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo
from labnet.scenario.policy_cases import run_cases, total

pytestmark = pytest.mark.topology("../../topologies/policy.yaml", name="t-polcases")


def test_every_case_is_as_the_model_says(lab: Any, tmp_path: Path) -> None:
    junit = tmp_path / "cases.xml"
    res = labnet("policy-cases", "-l", lab.name, "--junit", str(junit), check=False, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().endswith("6 policy cases: 0 wrong, 2160 correct"), res.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.attrib["tests"] == "6" and suite.attrib["failures"] == "0"
    # the lab is as it was: its own pods, its own policy
    pods = set(json.loads(labnet("status", "-l", lab.name, "--json").stdout)[0]["pods"])
    assert pods == {"client", "other", "web"}, pods
    lab.reachability({"client": {"web": "reach"}, "other": {"web": "no-reach"}})


def _rules_reversed(script: str) -> str:
    """The bug: in every chain, the policy rules in the opposite order."""
    out: list[str] = []
    block: list[str] = []
    for line in script.splitlines():
        if 'comment "policy=' in line and (" rule=" in line or " egress=" in line):
            block.append(line)
            continue
        out += reversed(block)
        block = []
        out.append(line)
    return "\n".join(out + list(reversed(block))) + "\n"


def test_a_rule_order_swapped_is_caught_with_the_wrong_cells_named(lab: Any) -> None:
    def broken(view: Any, settings: PolicySettings, everyone: list[PodInfo]) -> None:
        where = view.journal.info.get("pods", {})
        for node in view.topo.nodes:
            mine = [p for p in everyone if where.get(p.name, {}).get("node") == node]
            if mine:
                apply(view.ns(node), _rules_reversed(render(settings, mine, everyone)))
            else:
                remove(view.ns(node))

    (result,) = run_cases(lab.view, [case_named("combined")], timeout=3, applier=broken)
    assert not result.ok
    # web's "deny namespace c" now comes after "allow tcp from any pod": c's tcp gets through;
    # the clients' "deny db of b" after "allow everything": client-a's udp/80 reaches db-b
    want = {(src, dst) for src in ("web-c", "db-c", "client-c") for dst in ("web-a", "web-b", "web-c") if src != dst}
    named = set(re.findall(r"^  (\S+) → (\S+): want", result.message, re.M))
    assert named == want | {("client-a", "db-b")}, result.message
    assert result.detail == "17 wrong, 343 correct (9 of 72 pairs wrong)", result.detail
    assert total([result]) == "1 policy cases: 17 wrong, 343 correct; wrong in: combined"
    rows = {row[0]: dict(zip(result.table[0][1:], row[1:], strict=True)) for row in result.table[1:]}
    for src, dst in want:
        assert rows[src][dst] == "✗ want 00000 got 01100", (src, dst, rows[src][dst])
    assert rows["client-a"]["db-b"] == "✗ want 00000 got 00010"
    assert sum(c.startswith("✗") for r in rows.values() for c in r.values()) == 9
    # and the lab's own policy is back
    lab.reachability({"client": {"web": "reach"}, "other": {"web": "no-reach"}})
