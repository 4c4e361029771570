"""The CLI verbs that need no root: validate, schema, graph; and exit statuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "topologies" / "seed.yaml"
BAD = REPO / "fixtures" / "topologies" / "bad"


def labnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True, timeout=60)


def test_validate_ok() -> None:
    res = labnet("validate", str(SEED))
    assert res.returncode == 0, res.stderr
    assert "ok (lab seed: 3 networks, 7 machines, 2 pods" in res.stdout


def test_validate_bad_exits_2_with_positions() -> None:
    bad = sorted(BAD.glob("*.yaml"))[0]
    res = labnet("validate", str(bad))
    assert res.returncode == 2
    first = res.stderr.splitlines()[0]
    assert first.startswith(f"{bad}:"), first
    line, col = first.split(":")[1:3]
    assert line.isdigit() and col.isdigit()


def test_every_verb_has_help() -> None:
    for verb in ("up", "down", "gc", "status", "exec", "validate", "schema", "graph", "check"):
        res = labnet(verb, "--help")
        assert res.returncode == 0 and "usage: labnet" in res.stdout, verb


def test_schema_matches_the_model() -> None:
    from labnet.topology.schema import json_schema

    res = labnet("schema")
    assert res.returncode == 0
    assert json.loads(res.stdout) == json_schema()


def test_graph_dot(tmp_path: Path) -> None:
    out = tmp_path / "seed.dot"
    res = labnet("graph", str(SEED), "-o", str(out))
    assert res.returncode == 0, res.stderr
    dot = out.read_text()
    for needle in ('"ubuntu-3"', '"net:lan-a"', "10.20.30.0/24", '"pod:net-test"', "ens32 .73"):
        assert needle in dot, needle


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_graph_svg(tmp_path: Path) -> None:
    out = tmp_path / "seed.svg"
    res = labnet("graph", str(SEED), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_graph_unknown_format_is_bad_input(tmp_path: Path) -> None:
    res = labnet("graph", str(SEED), "-o", str(tmp_path / "x.bmp"))
    assert res.returncode == 2 and "unknown format" in res.stderr


def test_down_needs_a_lab_name() -> None:
    res = labnet("down")
    assert res.returncode == 2
