"""The pytest plugin's collection, without root: YAML scenarios as items, -k, markers, topology selection."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "topologies" / "seed.yaml"
SEED_SCENARIOS = ["pod-to-pod-across-subnets", "egress-nat", "seed-routes", "underlay"]


def test_k_selects_one_seed_scenario_as_a_user_runs_it() -> None:
    # exactly `pytest topologies/seed.yaml -k pod-to-pod`, from the repo root, with its own configuration
    proc = subprocess.run([sys.executable, "-m", "pytest", "topologies/seed.yaml", "-k", "pod-to-pod",
                           "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    items = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert items == ["topologies/seed.yaml::pod-to-pod-across-subnets"], proc.stdout
    assert "1/4 tests collected (3 deselected)" in proc.stdout, proc.stdout


def test_scenarios_collect_under_strict_markers_with_the_plugins_own_markers(pytester: pytest.Pytester) -> None:
    # pytester's directory has no pyproject: `lab` and `topology` must come from the plugin
    shutil.copy(SEED, pytester.path / "seed.yaml")
    pytester.makepyfile(test_marked=textwrap.dedent("""
        import pytest
        pytestmark = [pytest.mark.topology("seed.yaml"), pytest.mark.lab]

        def test_uses_lab(lab):
            pass
    """))
    res = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "-q", "-k", "pod-to-pod or seed-routes")
    assert res.ret == 0, res.stdout.str() + res.stderr.str()
    res.stdout.fnmatch_lines(["seed.yaml::pod-to-pod-across-subnets", "seed.yaml::seed-routes",
                              "*2/5 tests collected (3 deselected)*"])
    res = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "-q", "-k", "seed and not egress")
    # the topology's name is a keyword of its scenarios (and not of the python test)
    res.stdout.fnmatch_lines(["seed.yaml::pod-to-pod-across-subnets", "seed.yaml::seed-routes", "seed.yaml::underlay",
                              "*3/5 tests collected (2 deselected)*"])
    res = pytester.runpytest_subprocess("--strict-markers", "--markers")
    res.stdout.fnmatch_lines(["@pytest.mark.lab:*", "@pytest.mark.topology(path, name=None):*"])


def test_a_marker_the_lab_scope_cannot_honour_is_a_usage_error(pytester: pytest.Pytester) -> None:
    for name in ("seed.yaml", "other.yaml"):
        shutil.copy(SEED, pytester.path / name)
    pytester.makepyfile(test_marked=textwrap.dedent("""
        import pytest
        pytestmark = pytest.mark.topology("seed.yaml")

        def test_uses_lab(lab):
            pass
    """))
    # --labnet-topology makes `lab` one lab for the session: a module asking for another is refused
    res = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "test_marked.py",
                                        "--labnet-topology", "other.yaml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str() + res.stderr.str()
    assert "marked topology(" in res.stderr.str() and "--labnet-topology other.yaml" in res.stderr.str()
    # the same file is fine
    res = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "test_marked.py",
                                        "--labnet-topology", "seed.yaml")
    assert res.ret == 0, res.stdout.str() + res.stderr.str()
    # `lab` is module-scoped: a marker on one function cannot pick another lab
    pytester.makepyfile(test_fn_marker=textwrap.dedent("""
        import pytest

        @pytest.mark.topology("other.yaml")
        def test_uses_lab(lab):
            pass
    """))
    res = pytester.runpytest_subprocess("--strict-markers", "--collect-only", "test_fn_marker.py")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str() + res.stderr.str()
    assert "mark the module" in res.stderr.str(), res.stderr.str()
