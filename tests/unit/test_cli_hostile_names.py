"""Every CLI verb, every name it takes, hostile values: exit 2, a clear message, no traceback, and
nothing made or removed anywhere (the state and run directories stay empty, /tmp unchanged).

Runs in-process (labnet.cli.main), as root or not: the names are refused while the arguments are
read, before any lab is looked up."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from labnet import cli

HOSTILE = [
    "../x", "../../../../tmp/labnet-esc", "/../../../../../tmp/labnet-esc/lk", "a/b", "..", ".", "",
    "a;b", "x;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=net-test", "$(touch /tmp/labnet-pwn)", "`id`",
    "a b", "a\nb", "a\x00b", "A", "x" * 300, "-", "*", "a=b", "é",
]

# Each verb with one name slot filled by {}; the rest are valid.
VERBS = [
    ["down", "--name", "{}"],
    ["status", "-l", "{}"],
    ["exec", "-l", "{}", "n1", "--", "true"],
    ["exec", "{}", "--", "true"],
    ["exec", "n1/{}", "--", "true"],
    ["capture", "{}", "eth0"],
    ["capture", "-l", "{}", "n1", "eth0"],
    ["pod", "add", "{}", "p1"],
    ["pod", "add", "n1", "{}"],
    ["pod", "add", "-l", "{}", "n1", "p1"],
    ["pod", "add", "n1", "p1", "--label", "{}"],
    ["pod", "del", "{}", "p1"],
    ["pod", "del", "n1", "{}"],
    ["pod", "del", "-l", "{}", "n1", "p1"],
    ["bgp", "status", "{}"],
    ["bgp", "status", "-l", "{}", "n1"],
    ["routes", "{}"],
    ["routes", "-l", "{}", "n1"],
    ["etcd", "-l", "{}", "ls"],
    ["etcd", "ls", "{}"],
    ["etcd", "get", "{}"],
    ["doctor", "{}"],
    ["doctor", "-l", "{}"],
    ["trace", "{}", "p1"],
    ["trace", "p1", "{}"],
    ["trace", "-l", "{}", "p1", "p2"],
    ["check", "topologies/seed.yaml", "-l", "{}"],
    ["up", "topologies/seed.yaml", "--name", "{}"],
]


def _accepted(verb: list[str], slot: int, value: str) -> bool:
    """Values a slot takes on purpose: NODE/POD for a target, K=V for a label, and any absolute,
    printable etcd key (a read of the lab's etcd, never a path here)."""
    if verb[slot] == "{}" and verb[0] in ("exec", "capture") and value == "a/b":
        return True
    if verb[slot - 1] == "--label" and value == "a=b":
        return True
    return verb[0] == "etcd" and verb[1] in ("ls", "get") and value.startswith("/") and value.isprintable()


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v).replace("{}", "NAME"))
def test_hostile_names_are_refused_with_exit_2(verb: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABNET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LABNET_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    tmp_before = sorted(p.name for p in Path("/tmp").iterdir() if p.name.startswith("labnet-"))
    slot = verb.index(next(a for a in verb if "{}" in a))
    for value in HOSTILE:
        if _accepted(verb, slot, value):
            continue
        argv = [a.replace("{}", value) for a in verb]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:  # argparse's usage error
                rc = exc.code  # type: ignore[assignment]
        text = err.getvalue()
        assert rc == 2, f"labnet {argv!r}: expected exit 2, got {rc}; stderr: {text[-300:]}"
        assert "Traceback" not in text and text.strip(), f"labnet {argv!r}: stderr {text[-300:]!r}"
        assert "not valid" in text or "no running lab" in text or "is not" in text, (
            f"labnet {argv!r}: the message should say what is wrong with the name: {text[-300:]}")
    assert _tree(tmp_path / "state") == [] and _tree(tmp_path / "run") == [], (
        f"state: {_tree(tmp_path / 'state')}, run: {_tree(tmp_path / 'run')}")
    tmp_after = sorted(p.name for p in Path("/tmp").iterdir() if p.name.startswith("labnet-"))
    assert tmp_after == tmp_before, f"/tmp changed: {sorted(set(tmp_after) ^ set(tmp_before))}"


def test_paths_refuse_names_that_are_not_names() -> None:
    from labnet import paths
    from labnet.errors import BadInput

    for bad in ("../x", "", "a/b", "A", "x" * 21):
        with pytest.raises(BadInput, match="lab name"):
            paths.lab_dir(bad)
        with pytest.raises(BadInput, match="lab name"):
            paths.netns_name(bad, "n1")
    with pytest.raises(BadInput, match="machine name"):
        paths.node_dir("lab", "../../etc")
    assert paths.lab_dir("seed").name == "seed"
