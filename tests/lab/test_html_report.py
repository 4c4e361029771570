"""The HTML report, opened in a real headless browser (Debian's chromium): the page renders the
lab's picture, the steps, and the matrix with its right cells green and its one wrong cell red;
the failed step's diagnostics are folded in a <details>."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _labtools import TOPOLOGIES, labnet, snapshot

LAB = "t-html"
GREEN, RED, LAN_BLUE = (0xD9, 0xF2, 0xE1), (0xFB, 0xDA, 0xD7), (0xAD, 0xD8, 0xE6)  # html.CSS, graph's lan fill


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (tools/sysdeps.sh installs it: apt-get install chromium)")
    return found


def _browser(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={cwd / 'profile'}", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_the_report_renders_in_a_browser(tmp_path: Path) -> None:
    from PIL import Image

    doc = yaml.safe_load((TOPOLOGIES / "policy.yaml").read_text())
    doc["scenarios"]["one-wrong"] = [{"reachability": {"expect": {
        "client": {"web": "reach", "other": "no-reach"}, "other": {"web": "reach"}}}}]
    topo = tmp_path / "policy.yaml"
    topo.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = snapshot(LAB)
    labnet("up", str(topo), "--name", LAB, "-q")
    try:
        page = tmp_path / "report.html"
        res = labnet("check", str(topo), "-l", LAB, "--timeout", "2", "--html", str(page), check=False)
        assert res.returncode == 1 and page.exists(), res.stdout + res.stderr
    finally:
        labnet("down", "--name", LAB)
    assert not snapshot(LAB).leftovers(before)

    dom = _browser("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    assert "<svg" in dom and "labnet: lab t-html" in dom, dom[:2000]
    assert dom.count("class=\"fail\">✗ want reach, got no-reach") == 1, dom
    assert dom.count("class=\"pass\">✓") >= 6, dom
    assert "<details><summary>diagnostics of the failed step: reachability (icmp)" in dom, dom

    shot = tmp_path / "report.png"
    _browser(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri(), cwd=tmp_path)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400), img.size
    colours = img.getcolors(maxcolors=1 << 20) or []
    count = {c: n for n, c in colours}

    def about(want: tuple[int, int, int]) -> int:
        return sum(n for c, n in count.items() if all(abs(a - b) <= 3 for a, b in zip(c, want, strict=True)))

    assert about(RED) > 500, "the wrong cell is not painted red"
    assert about(GREEN) > 2000, "the right cells are not painted green"
    assert about(LAN_BLUE) > 500, "the topology picture (the LAN's ellipse) is not drawn"
