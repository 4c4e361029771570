"""Flakes and failures, as a user meets them: `labnet check --repeat N` and `pytest
--labnet-repeat N` give pass rates per scenario; `--labnet-shell-on-failure` opens a shell in
the failing lab when there is a terminal, and only says how to open one when there is none."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import textwrap
import time

import pytest
from _labtools import TOPOLOGIES, labnet, snapshot

LAB = "t-repeat"
POLICY = str(TOPOLOGIES / "policy.yaml")


@pytest.fixture(scope="module")
def policy_lab():
    before = snapshot(LAB)
    labnet("up", POLICY, "--name", LAB, "-q")
    try:
        yield LAB
    finally:
        labnet("down", "--name", LAB, check=False)
    assert not snapshot(LAB).leftovers(before)


def test_check_repeat_reports_pass_rates(policy_lab: str) -> None:
    out = labnet("check", POLICY, "-l", policy_lab, "--repeat", "3").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    for name in ("default-deny-blocks", "allow-rule-restores", "node-reaches-its-pods", "the-whole-truth"):
        assert rows[name][1:3] == ["3/3", "100%"], out
    assert "12/12 scenario runs passed; flaky: none; always failing: none" in out, out
    doc = json.loads(labnet("check", POLICY, "the-whole-truth", "-l", policy_lab, "--repeat", "2", "--json").stdout)
    (t,) = doc["scenarios"]
    assert (t["runs"], t["passed"], t["rate"]) == (2, 2, 1.0) and t["slowest_step"]["step"].startswith("reachability")
    bad = labnet("check", POLICY, "-l", policy_lab, "--repeat", "0", check=False)
    assert bad.returncode == 2 and "not a number of runs" in bad.stderr


def test_pytest_repeat_gives_each_scenario_its_rate(pytester: pytest.Pytester, policy_lab: str) -> None:
    res = pytester.runpytest_subprocess(POLICY, "--labnet-attach", policy_lab, "--labnet-repeat", "2",
                                        "-p", "no:cacheprovider", "-k", "allow or whole")
    res.assert_outcomes(passed=2)
    out = res.stdout.str()
    assert "labnet: scenarios x2" in out, out
    assert any(line.split()[:3] == ["the-whole-truth", "2/2", "100%"] for line in out.splitlines()), out


FAILING = '''
def test_fails(lab):
    lab.connect("other", "web", timeout=1)
'''


def test_shell_on_failure_without_a_terminal_says_how_and_goes_on(pytester: pytest.Pytester,
                                                                    policy_lab: str) -> None:
    pytester.makepyfile(test_fail=textwrap.dedent(FAILING))
    t0 = time.monotonic()
    res = pytester.runpytest_subprocess("test_fail.py", "--labnet-attach", policy_lab, "--labnet-shell-on-failure",
                                        "-p", "no:cacheprovider",
                                        timeout=120)
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert f"no terminal: to open a shell in the failing lab yourself: labnet exec -l {policy_lab} node-1/other -- sh" \
        in out, out
    assert time.monotonic() - t0 < 110


def test_shell_on_failure_with_a_terminal_opens_one_in_the_lab(tmp_path, policy_lab: str) -> None:
    (tmp_path / "test_fail.py").write_text(textwrap.dedent(FAILING))
    pid, fd = pty.fork()
    if pid == 0:  # the child: pytest on a terminal, as a developer runs it
        os.chdir(tmp_path)
        os.execv(sys.executable, [sys.executable, "-m", "pytest", "test_fail.py", "--labnet-attach", policy_lab,
                                  "--labnet-shell-on-failure", "-p", "no:cacheprovider", "-q"])
    seen = b""
    deadline = time.monotonic() + 120
    sent = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child is gone: the terminal closed
                    break
                if not chunk:
                    break
                seen += chunk
            if not sent and b"(exit to go on)" in seen and f"[{policy_lab} node-1/other]#".encode() in seen:
                os.write(fd, b"echo INSIDE-$(hostname)-$(ip -o -4 addr show eth0 | wc -l); exit\n")
                sent = True
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert sent, f"no shell prompt came:\n{text[-3000:]}"
    assert "INSIDE-node-1-1" in text, text[-3000:]  # the pod's namespace, on its node
    assert "1 failed" in text and os.waitstatus_to_exitcode(status) == 1, text[-3000:]


def test_pytest_writes_the_html_report(pytester: pytest.Pytester, policy_lab: str) -> None:
    out = pytester.path / "report.html"
    res = pytester.runpytest_subprocess(POLICY, "--labnet-attach", policy_lab, "--labnet-html", str(out),
                                        "-p", "no:cacheprovider")
    res.assert_outcomes(passed=4)
    assert f"labnet: report {out}" in res.stdout.str()
    page = out.read_text()
    assert "<svg" in page and page.count("<section id=") == 4 and "class='matrix'" in page, page[:3000]
