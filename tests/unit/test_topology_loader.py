"""Loader behaviour: positions, formatting, all-at-once reporting, and robustness (fuzzed)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labnet.topology import Diagnostic, Topology, TopologyError, load, loads

ROOT = Path(__file__).resolve().parents[2]
SEED_TEXT = (ROOT / "topologies/seed.yaml").read_text(encoding="utf-8")
SEED_DATA = yaml.safe_load(SEED_TEXT)

LAB = """\
name: t
networks:
  lan: {cidr: 10.0.0.0/24}
cluster:
  etcd: {node: n1}
  pool: {cidr: 10.100.0.0/16}
  nodes:
    n1: {interfaces: [{network: lan, address: 10.0.0.11}], gateway: none}
    n2: {interfaces: [{network: lan, address: 10.0.0.12}], gateway: none}
  pods:
    p1: {node: n1}
    p2: {node: n2}
"""


def errors(text: str) -> list[Diagnostic]:
    with pytest.raises(TopologyError) as info:
        loads(text, "lab.yaml")
    return info.value.diagnostics


def test_diagnostic_format() -> None:
    d = Diagnostic("f.yaml", 7, 21, "cluster.nodes.ubuntu-3.gateway", "gateway 10.9.9.1 is off", "did you mean x?")
    assert str(d) == "f.yaml:7:21: cluster.nodes.ubuntu-3.gateway: gateway 10.9.9.1 is off (did you mean x?)"
    assert d.to_dict()["line"] == 7


def test_every_error_reported_at_once_in_position_order() -> None:
    text = LAB.replace("address: 10.0.0.12}", "address: 10.0.1.12}").replace("{node: n2}", "{node: n3}")
    text = text.replace("cidr: 10.100.0.0/16", "cidr: 10.0.0.0/16")
    diags = errors(text)
    assert [(d.line, d.path) for d in diags] == [
        (6, "cluster.pool.cidr"),
        (9, "cluster.nodes.n2.interfaces[0].address"),
        (12, "cluster.pods.p2.node"),
    ]
    assert diags[2].hint == "known nodes: n1, n2"


def test_type_error_in_one_node_does_not_hide_or_cause_other_errors() -> None:
    # n2 has a typo'd key (so it is left out of the model); p2 still refers to it: no extra error.
    text = LAB.replace("address: 10.0.0.12}", "adress: 10.0.0.12}").replace("{node: n1}\n    p2", "{node: nx}\n    p2")
    diags = errors(text)
    # the misspelt key is one error (not also "address is missing"), and p2 -> n2 is not reported
    assert [(d.path, d.message, d.hint) for d in diags] == [
        ("cluster.nodes.n2.interfaces[0].adress", "unknown key 'adress'", "did you mean 'address'?"),
        ("cluster.pods.p1.node", "pod p1 is on an unknown node 'nx'", "known nodes: n1, n2"),
    ]


def test_duplicate_key_points_at_second_occurrence() -> None:
    text = LAB.replace("  pods:\n", "  pods:\n    p1: {node: n2}\n")
    (d,) = errors(text)
    assert (d.line, d.col, d.path) == (12, 5, "cluster.pods.p1")
    assert "duplicate key 'p1' (first at line 11, column 5)" in d.message


def test_yaml_keys_are_taken_as_written() -> None:
    # YAML 1.1 would read `on` and `yes` as booleans; names are names.
    topo = loads(LAB.replace("p1:", "on:").replace("p2:", "yes:"))
    assert set(topo.pods) == {"on", "yes"}
    # as a value it is a boolean, and the error says what to do
    (d,) = errors(LAB.replace("{node: n2}", "{node: yes}"))
    assert (d.path, d.message, d.hint) == ("cluster.pods.p2.node", "expected a string, got the boolean true", "quote it")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(TopologyError, match="not UTF-8"):
        load(bad)


def test_model_validate_directly_gets_the_same_defaults() -> None:
    topo = Topology.model_validate(yaml.safe_load(LAB))
    assert topo.nodes["n1"].interfaces[0].name == "eth0"
    assert topo.cluster is not None and topo.cluster.etcd.nodes == ["n1"]


def test_cni_side_does_not_import_topology() -> None:
    """The CNI plugin runs once per pod: it must not pay for pydantic and PyYAML."""
    if not (ROOT / "labnet/cni/plugin.py").exists():
        pytest.skip("labnet.cni.plugin not written yet")
    code = "import sys, labnet.cni.plugin; print('labnet.topology' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", "labnet.cni.plugin imports labnet.topology"


def _alias_bomb(levels: int, width: int, under: str) -> str:
    """Chained anchors ("billion laughs"): level k holds `width` aliases of level k-1, so the
    last one stands for width**levels values while the text stays a few lines long."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]" for k in range(1, levels)]
    return LAB + "x-anchors:\n" + "".join(f"  {line}\n" for line in lines) + under.replace("LAST", f"*l{levels - 1}")


# In a child process, as a guard only: without the loader's cap, walking 10**10 values would
# never end and would eat the machine's memory; the child has an address-space limit and a
# deadline, so a regression fails this test instead of hanging it.
_CHILD = """\
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from labnet.topology import TopologyError, loads
try:
    loads(sys.stdin.read(), "bomb.yaml")
except TopologyError as exc:
    print(json.dumps([d.to_dict() for d in exc.diagnostics]))
else:
    print("[]")
"""


def test_yaml_alias_bomb_is_refused_with_a_clear_error() -> None:
    """Regression (fuzz campaign): chained anchors made the loader walk every expanded value."""
    text = _alias_bomb(levels=10, width=10, under="  bomb: LAST\n")  # 10**10 values once expanded
    assert len(text) < 3000, len(text)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], input=text, capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("alias bomb: expected a TopologyError, the loader was still walking after 120 s")
    assert proc.returncode == 0, (f"alias bomb: expected a TopologyError, the loader died "
                                  f"(exit {proc.returncode}): {proc.stderr[-2000:]}")
    diags = json.loads(proc.stdout)
    assert [(d["file"], d["path"], d["message"], d["hint"]) for d in diags] == [
        ("bomb.yaml", "<yaml>", "YAML aliases expand to more than 200000 values",
         "anchors referring to anchors multiply; write the values out")], f"alias bomb: got {diags}"
    # it points into the anchors, not at line 1
    first_anchor = LAB.count("\n") + 2
    assert diags[0]["line"] >= first_anchor, f"alias bomb: expected a line ≥ {first_anchor}, got {diags[0]}"


def test_yaml_aliases_below_the_cap_still_load() -> None:
    # the cap refuses bombs, not anchors: a label map shared by two pods loads as written
    text = LAB.replace("p1: {node: n1}", "p1: {node: n1, labels: &l {app: web, tier: front}}").replace(
        "p2: {node: n2}", "p2: {node: n2, labels: *l}")
    topo = loads(text, "lab.yaml")
    assert topo.cluster is not None
    assert topo.cluster.pods["p1"].labels == topo.cluster.pods["p2"].labels == {"app": "web", "tier": "front"}


# -- fuzzing: whatever the input, the loader answers with a Topology or a TopologyError ------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("abn:-{}[],'\"&*!#|>\t\n 0123456789./")), max_size=120))
def test_fuzz_arbitrary_text(text: str) -> None:
    try:
        loads(text)
    except TopologyError as exc:
        assert exc.diagnostics and all(d.line >= 1 for d in exc.diagnostics)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, prefix + (i,))
    return out


SEED_PATHS = _paths(SEED_DATA)[1:]
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.sampled_from(["", "x", "10.0.0.1", "1.2.3.0/24", "ubuntu-9",
                                                                       "eth0/1", "never", "cluster"]),
    st.lists(st.sampled_from(["a", "ubuntu-1", 3]), max_size=2), st.dictionaries(st.sampled_from(["a", "node"]),
                                                                                 st.sampled_from([1, "x"]), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(SEED_PATHS), st.one_of(st.just("<delete>"), JUNK)), min_size=1, max_size=3))
def test_fuzz_mutated_seed(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = copy.deepcopy(SEED_DATA)
    for path, value in edits:
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            if value == "<delete>":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        loads(text, "mutated.yaml")
    except TopologyError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.line >= 1 and d.col >= 1 and d.path and d.message, d


WORDS = ["name", "networks", "routers", "hosts", "cluster", "scenarios", "cidr", "mtu", "interfaces", "network",
         "address", "gateway", "bgp", "asn", "peers", "etcd", "node", "nodes", "pool", "pods", "ipip", "vxlan",
         "block_size", "mesh", "route_reflectors", "lan", "n1", "p1", "gw", "ping", "from", "to", "blackhole"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1, 70000),
                    st.sampled_from(WORDS + ["10.0.0.0/24", "10.0.0.1", "10.0.0.5/24", "cluster", "full", "always"]))
TREES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                    st.dictionaries(st.sampled_from(WORDS), kids, max_size=4)),
                     max_leaves=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(WORDS[:6]), TREES, min_size=1, max_size=6))
def test_fuzz_structured_documents(doc: dict[str, Any]) -> None:
    try:
        loads(yaml.safe_dump(doc), "fuzz.yaml")
    except TopologyError as exc:
        assert exc.diagnostics and all(d.line >= 1 for d in exc.diagnostics)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from labnet.topology import TopologyError, load, loads
    from labnet.topology.loader import MAX_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("name: big\nnetworks:\n" + "".join(f"  n{i}: {{cidr: 10.0.0.0/24}}\n" for i in range(900_000)))
    with pytest.raises(TopologyError, match=r"big.yaml:1:1: <file>: the file is \d+\.\d MB; topologies are refused "
                                            r"above 4 MiB"):
        load(big)
    with pytest.raises(TopologyError, match="refused above 4 MiB"):
        loads("#" * (MAX_BYTES + 1), "s.yaml")


def test_daemon_files_from_are_read_relative_to_the_topology_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gobgpd.yaml").write_text("global: {}\n")
    text = """name: d
networks: {lan: {cidr: 10.20.30.0/24}}
hosts:
  rr:
    interfaces: [{network: lan, address: 10.20.30.5}]
    daemons:
      gobgpd:
        command: gobgpd -f /var/lib/labnet/gobgpd.yaml
        files:
          /var/lib/labnet/gobgpd.yaml: {from: conf/gobgpd.yaml}
"""
    good = tmp_path / "good.yaml"
    good.write_text(text)
    topo = load(good)
    d = topo.hosts["rr"].daemons["gobgpd"]
    assert d.argv() == ["gobgpd", "-f", "/var/lib/labnet/gobgpd.yaml"]
    assert d.files["/var/lib/labnet/gobgpd.yaml"].text == "global: {}\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("conf/gobgpd.yaml", "conf/missing.yaml"))
    with pytest.raises(TopologyError) as err:
        load(bad)
    (diag,) = err.value.diagnostics
    assert (diag.line, diag.path) == (10, "hosts.rr.daemons.gobgpd.files./var/lib/labnet/gobgpd.yaml.from"), str(diag)
    assert "cannot read" in str(diag) and "missing.yaml" in str(diag)
