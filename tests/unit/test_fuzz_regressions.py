"""Crashes found by bench/fuzz.py, one reproducer each in fixtures/fuzz/crashes/.

Fixed crashes (labnet.fuzz.known.FIXED) are plain regression tests. A crash not fixed yet
(KNOWN) is xfail(strict=True) naming the bug, so its fix is noticed (XPASS fails the run) and
moved to FIXED. tests/unit/test_fuzz_targets.py tolerates KNOWN keys only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labnet.fuzz.known import FIXED, KNOWN
from labnet.fuzz.targets import run_target

CRASHES = Path(__file__).resolve().parents[2] / "fixtures" / "fuzz" / "crashes"

# crash key (Type@file:function, see labnet.fuzz.targets.crash_key) -> (reproducer, the bug)


@pytest.mark.parametrize(
    ("key", "reproducer"),
    [pytest.param(key, path, marks=pytest.mark.xfail(strict=True, reason=bug), id=Path(path).stem)
     for key, (path, bug) in sorted(KNOWN.items())]
    + [pytest.param(key, path, id=Path(path).stem) for key, (path, _bug) in sorted(FIXED.items())],
)
def test_fuzz_crash_is_fixed(key: str, reproducer: str) -> None:
    target = Path(reproducer).stem.rsplit("-", 1)[0]
    data = (CRASHES / reproducer).read_bytes()
    assert run_target(target, data) is None, f"{target} still crashes with {key} on {reproducer}"


def test_every_reproducer_is_listed() -> None:
    files = sorted(p.name for p in CRASHES.glob("*.bin")) if CRASHES.is_dir() else []
    assert files == sorted(path for path, _ in [*KNOWN.values(), *FIXED.values()])


def _invoke_plugin(reproducer: str) -> dict[str, object]:
    """The reproducer as a real CNI invocation: env + stdin into `python -m labnet.cni.plugin`."""
    import json
    import subprocess
    import sys

    from labnet.fuzz.targets import split_cni_request

    env, stdin = split_cni_request((CRASHES / reproducer).read_bytes())
    env["CNI_COMMAND"] = "DEL"  # ADD checks the netns first; DEL reads the config straight away
    proc = subprocess.run([sys.executable, "-m", "labnet.cni.plugin"], input=stdin, capture_output=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60)
    assert proc.returncode != 0, f"plugin accepted {reproducer}: {proc.stdout!r}"
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


@pytest.mark.parametrize(
    ("reproducer", "code"),
    [pytest.param(path, code, id=Path(path).stem)
     for path, code in [("cni_request-2.bin", 7), ("cni_request-4.bin", 7), ("cni_request-5.bin", 6)]],
)
def test_real_plugin_run_answers_with_a_spec_code(reproducer: str, code: int) -> None:
    # These fail before the plugin talks to etcd: the real binary must answer with the spec's code.
    doc = _invoke_plugin(reproducer)
    assert doc.get("code") == code, f"labnet CNI plugin on {reproducer}: expected code {code}, got {doc}"
