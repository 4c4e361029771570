"""CI=true or LABNET_REQUIRE_LAB=1 turns a skipped lab test into a failure (labnet/testing/pytest_plugin.py),
so a CI run can never pass by running nothing. Checked in real pytest subprocesses (pytester)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[2]


def _run_with_repo_conftest(tmp: Path, files: dict[str, str], **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess on `files` (under a tests/lab/ folder of `tmp`), with the repository's
    own conftest.py loaded as a plugin."""
    lab = tmp / "tests" / "lab"
    lab.mkdir(parents=True)
    for name, text in files.items():
        (lab / name).write_text(text)
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "LABNET_REQUIRE_LAB", "PYTEST_XDIST_WORKER", "LABNET_OUTER_PYTEST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp), str(lab)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**full, "PYTHONPATH": str(REPO), **env})


def test_a_lab_module_that_skips_at_collection_fails_when_a_lab_is_required(tmp_path: Path) -> None:
    files = {"test_mod_skip.py": "import pytest\npytest.skip('no lab here', allow_module_level=True)\n"}
    res = _run_with_repo_conftest(tmp_path / "a", files)
    assert res.returncode == 5 and "1 skipped" in res.stdout, res.stdout + res.stderr  # 5: no test ran
    res = _run_with_repo_conftest(tmp_path / "b", files, LABNET_REQUIRE_LAB="1")
    assert res.returncode != 0 and "skipped while collected" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the leftover check runs as root only")
def test_a_session_that_leaves_a_lab_behind_fails_naming_it(tmp_path: Path) -> None:
    files = {"test_leak.py": "import os, pathlib\n"
                             "def test_leaks():\n"
                             "    pathlib.Path(os.environ['LABNET_STATE_DIR'], 'labs', 'leaky').mkdir(parents=True)\n"}
    res = _run_with_repo_conftest(tmp_path, files, LABNET_STATE_DIR=str(tmp_path / "state"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "left these behind" in res.stdout and "labs/leaky" in res.stdout, res.stdout
