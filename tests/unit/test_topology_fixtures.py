"""Every bad topology fixture produces exactly the diagnostics its `# expect:` lines name, and
every ready lab and good fixture loads cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labnet.errors import BadInput
from labnet.topology import TopologyError, load

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "fixtures/topologies/bad").glob("*.yaml"))
GOOD = sorted((ROOT / "topologies").glob("*.yaml")) + sorted((ROOT / "fixtures/topologies/good").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (\S+): (.+)$")


def expectations(path: Path) -> list[tuple[int, int, str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EXPECT.match(line)
        if not m:
            break
        out.append((int(m[1]), int(m[2]), m[3], m[4]))
    return out


def test_enough_bad_fixtures() -> None:
    assert len(BAD) >= 30, f"only {len(BAD)} bad topology fixtures"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_topology_reports_expected_error(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name}: first line must be '# expect: LINE:COL: PATH: MESSAGE'"
    with pytest.raises(TopologyError) as info:  # and nothing else: any other exception fails here
        load(path)
    got = info.value.diagnostics
    report = "\n".join(str(d) for d in got)
    assert len(got) == len(expected), f"{path.name}: expected {len(expected)} diagnostic(s), got:\n{report}"
    for line, col, dpath, text in expected:
        match = [d for d in got if (d.line, d.col, d.path) == (line, col, dpath) and text in str(d)]
        assert match, f"{path.name}: expected {line}:{col}: {dpath}: ...{text}...; got:\n{report}"
    # str() is one line per diagnostic, FILE:LINE:COL: path: message, sorted by position
    lines = str(info.value).splitlines()
    assert len(lines) == len(got)
    assert all(ln.startswith(f"{path}:") for ln in lines)
    assert [(d.line, d.col) for d in got] == sorted((d.line, d.col) for d in got)
    assert isinstance(info.value, BadInput) and info.value.exit_code == 2


@pytest.mark.parametrize("path", GOOD, ids=[f"{p.parent.name}/{p.stem}" for p in GOOD])
def test_good_topology_loads(path: Path) -> None:
    topo = load(path)
    assert topo.networks
    for _name, _kind, spec in topo.machines():
        assert all(i.name and i.mtu for i in spec.interfaces)


WARN = sorted((ROOT / "fixtures/topologies/warn").glob("*.yaml"))
WARN_LINE = re.compile(r"^# warn: (\d+:\d+: \S+: .+)$")


@pytest.mark.parametrize("path", WARN, ids=[p.stem for p in WARN])
def test_a_topology_with_warnings_loads_and_says_them(path: Path) -> None:
    """BGP peers that labnet does not run are accepted, with a warning each (FILE:LINE:COL)."""
    expected = [m[1] for line in path.read_text().splitlines() if (m := WARN_LINE.match(line))]
    assert expected, f"{path.name}: first lines must be '# warn: LINE:COL: PATH: MESSAGE'"
    topo = load(path)
    assert len(topo.warnings) == len(expected), topo.warnings
    for want, got in zip(expected, topo.warnings, strict=True):
        assert got.startswith(f"{path}:") and want in got, f"{path.name}: expected ...{want}...; got {got}"
    # and up waits for none of those sessions
    assert topo.cluster is not None and all(not p.wait for p in topo.cluster_settings().bgp.peers)
