"""The CLI verbs that need no root: validate, schema, graph; and exit statuses."""

from __future__ import annotations

import io
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


def test_graph_png_or_a_clear_error_without_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "seed.png"
    if shutil.which("dot") is not None:
        res = labnet("graph", str(SEED), "-o", str(out))
        assert res.returncode == 0, f"graph -o {out}: exit {res.returncode}, {res.stderr}"
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{out} is not a PNG: {out.read_bytes()[:16]!r}"
    # Without Graphviz on PATH: exit 1, and the message says what to install; no file written.
    nodot = tmp_path / "nodot.png"
    res = subprocess.run([sys.executable, "-m", "labnet.cli", "graph", str(SEED), "-o", str(nodot)],
                         capture_output=True, text=True, timeout=60, env={"PATH": str(tmp_path / "empty")})
    assert res.returncode == 1, f"graph without dot: expected exit 1, got {res.returncode}: {res.stderr}"
    assert "Graphviz `dot` is not installed: apt-get install graphviz" in res.stderr, res.stderr
    assert not nodot.exists(), f"graph without dot wrote {nodot}"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    from labnet.lab.progress import Progress

    s = _Stream(tty=True)
    p = Progress("seed", stream=s)
    p.start("underlay")
    p.done("underlay", 0.5)
    p.start("etcd", "3 members")
    p.done("etcd", 1.25)
    text = s.getvalue()
    # Each phase's "..." line is overwritten in place (\r + erase line), then "done" ends the line.
    assert text == ("\r\033[Klabnet: seed: underlay ..." "\r\033[Klabnet: seed: underlay done in 0.50s\n"
                    "\r\033[Klabnet: seed: etcd (3 members) ..." "\r\033[Klabnet: seed: etcd done in 1.25s\n"), \
        f"progress on a tty: {text!r}"


def test_progress_plain_lines_elsewhere_and_quiet() -> None:
    from labnet.lab.progress import Progress

    s = _Stream(tty=False)
    p = Progress("seed", stream=s)
    p.start("underlay")
    p.done("underlay", 0.5)
    text = s.getvalue()
    assert "\r" not in text and "\033" not in text, f"control characters in non-tty progress: {text!r}"
    assert text.splitlines() == ["labnet: seed: underlay ...", "labnet: seed: underlay done in 0.50s"], text
    q = _Stream(tty=True)
    quiet = Progress("seed", stream=q, quiet=True)
    quiet.start("underlay")
    quiet.done("underlay", 0.5)
    assert q.getvalue() == "", f"-q still printed progress: {q.getvalue()!r}"


def test_trailing_words_are_a_capture_filter_and_an_error_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    from labnet import cli

    parser = cli.build_parser()
    args, extra = parser.parse_known_args(["capture", "ubuntu-3", "ens32", "-w", "x.pcap", "ip proto 4"])
    assert (args.target, args.iface, args.write, args.filter, extra) == ("ubuntu-3", "ens32", "x.pcap", [],
                                                                        ["ip proto 4"])
    for argv in (["validate", "a.yaml", "extra"], ["capture", "n", "eth0", "-w", "x", "host", "--bogus"]):
        try:
            cli.main(argv)
        except SystemExit as exc:
            assert exc.code == 2, argv
        else:
            raise AssertionError(f"labnet {' '.join(argv)}: expected a usage error")
        assert "unrecognized arguments" in capsys.readouterr().err, argv


def test_check_that_runs_no_step_is_a_failure(tmp_path: Path) -> None:
    """`labnet check FILE` that verifies nothing (the file has no scenarios) exits 1, saying so; an empty
    scenario is a validation error already (exit 2)."""
    import os

    from labnet.lab.journal import Journal
    from labnet.topology import loads

    text = ("name: nocheck\nnetworks: {lan: {cidr: 10.0.0.0/24}}\n"
            "hosts: {h1: {interfaces: [{network: lan, address: 10.0.0.10}]}}\n")
    topo = loads(text, "f.yaml")
    (tmp_path / "labs" / "nocheck").mkdir(parents=True)
    j = Journal(path=tmp_path / "labs" / "nocheck" / "journal.json", lab="nocheck", state="up")
    j.info["topology"] = topo.model_dump(mode="json", by_alias=True)
    j.save()
    for body, rc, why in (("", 1, "no check ran (the file has no scenarios); nothing was verified"),
                          ("scenarios: {empty: []}\n", 2, "scenarios.empty: scenario empty has no steps")):
        f = tmp_path / "f.yaml"
        f.write_text(text + body)
        res = subprocess.run([sys.executable, "-m", "labnet.cli", "check", str(f)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "LABNET_STATE_DIR": str(tmp_path)})
        assert res.returncode == rc, (res.returncode, res.stdout, res.stderr)
        assert why in res.stderr, res.stderr
