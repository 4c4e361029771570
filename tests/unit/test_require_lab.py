"""CI=true or LABNET_REQUIRE_LAB=1 turns a skipped lab test into a failure (labnet/pytest_plugin.py),
so a CI run can never pass by running nothing. Checked in real pytest subprocesses (pytester)."""

from __future__ import annotations

import pytest

TESTS = """
import pytest

@pytest.mark.lab
def test_lab_that_skips():
    pytest.skip("no lab on this machine")

def test_plain_skip():
    pytest.skip("not a lab test")
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_skips=TESTS)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("LABNET_REQUIRE_LAB", raising=False)

    def go(**env: str) -> pytest.RunResult:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return pytester.runpytest_subprocess("-rA")  # labnet's plugin loads by its pytest11 entry point

    return go


def test_without_the_switch_a_lab_test_may_skip(run) -> None:  # type: ignore[no-untyped-def]
    res = run()
    res.assert_outcomes(skipped=2)


@pytest.mark.parametrize("env", [{"LABNET_REQUIRE_LAB": "1"}, {"CI": "true"}], ids=["LABNET_REQUIRE_LAB", "CI"])
def test_a_skipped_lab_test_fails_when_a_lab_is_required(run, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    res = run(**env)
    res.assert_outcomes(failed=1, skipped=1)  # the plain test's skip stays a skip
    res.stdout.fnmatch_lines(["*lab test skipped, which is a failure when CI=true or LABNET_REQUIRE_LAB=1*"])
    res.stdout.fnmatch_lines(["FAILED test_skips.py::test_lab_that_skips*"])


def test_other_values_do_not_require_a_lab(run) -> None:  # type: ignore[no-untyped-def]
    res = run(CI="false", LABNET_REQUIRE_LAB="0")
    res.assert_outcomes(skipped=2)
