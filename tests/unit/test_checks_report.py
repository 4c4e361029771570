from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labnet.checks.report import format_results, render_table, results_json, write_junit
from labnet.checks.result import CheckResult

RESULTS = [
    CheckResult(True, "blackhole 10.100.163.128/26 proto bird", "ubuntu-3", "present: blackhole ...", 0.01),
    CheckResult(True, "ping 10.100.5.193", "ubuntu-3/net-test", "1/1 replies", 1.52, attempts=4),
    CheckResult(False, "proxy-ARP for 169.254.1.1 on cali1", "ubuntu-3 ↔ ubuntu-3/net-test",
                "expected x; actual y", 5.0, 9, "check failed on ubuntu-3: ...\n  expected: x\n  actual:   y"),
]


def test_render_table_aligns() -> None:
    assert render_table(["A", "LONGER"], [["xx", "1"], ["y", "22"]]) == "A   LONGER\nxx  1\ny   22"


def test_render_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        render_table(["A"], [["x", "y"]])


def test_format_results() -> None:
    text = format_results(RESULTS)
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "TARGET", "RESULT", "TIME", "DETAIL"]
    assert "FAILED" in lines[3] and "5.0s" in lines[3]
    assert "--- proxy-ARP for 169.254.1.1 on cali1 on ubuntu-3 ↔ ubuntu-3/net-test ---" in text
    assert "  expected: x" in text
    assert lines[-1] == "2 passed, 1 failed"
    assert format_results([]).startswith("(no checks)")


def test_results_json() -> None:
    doc = json.loads(results_json(RESULTS))
    assert doc["ok"] is False and doc["passed"] == 2 and doc["failed"] == 1
    assert doc["results"][1] == {"ok": True, "name": "ping 10.100.5.193", "target": "ubuntu-3/net-test",
                                 "detail": "1/1 replies", "elapsed": 1.52, "attempts": 4, "message": "", "table": []}


def test_write_junit(tmp_path: Path) -> None:
    path = write_junit(RESULTS, tmp_path / "out" / "junit.xml", suite="seed")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.attrib["tests"] == "3" and suite.attrib["failures"] == "1" and suite.attrib["name"] == "seed"
    cases = suite.findall("testcase")
    assert [c.attrib["name"] for c in cases] == [r.name for r in RESULTS]
    assert cases[0].attrib["classname"] == "seed.ubuntu-3"
    fail = cases[2].find("failure")
    assert fail is not None and fail.attrib["message"] == "expected x; actual y"
    assert fail.text is not None and "expected: x" in fail.text
    out = cases[1].find("system-out")
    assert out is not None and out.text == "passed after 1.5s (4 attempts): 1/1 replies"
