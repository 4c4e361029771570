"""One HTML page people read: the lab's picture, each scenario's steps and results, matrices as
coloured tables, and the diagnostics of failed steps folded away. Self-contained (no scripts,
no links out): it can be attached to a CI run and opened anywhere.

`labnet check FILE --html out.html` and `pytest --labnet-html out.html` write it.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from labnet.checks import CheckResult
from labnet.scenario.repeat import Tally
from labnet.topology.graph import to_dot
from labnet.topology.model import Topology

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #1d2330; }
h1 { margin-bottom: 0.2em; } .sub { color: #5a6372; margin-top: 0; }
.ok { color: #0f7b3a; } .bad { color: #b3261e; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #d5d9e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.pass { background: #d9f2e1; } td.fail { background: #fbdad7; } td.none { background: #f4f5f7; color: #8a93a3; }
td.unknown { background: #fff3cd; }
section { border-top: 2px solid #eef1f5; padding-top: 0.4em; }
details { margin: 0.3em 0 1em; } summary { cursor: pointer; color: #3b4a63; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
.picture svg { max-width: 100%; height: auto; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def picture(topo: Topology) -> str:
    """The lab as an inline SVG (Graphviz), or its DOT source when Graphviz is missing."""
    dot = to_dot(topo)
    if shutil.which("dot") is not None:
        proc = subprocess.run(["dot", "-Tsvg"], input=dot, text=True, capture_output=True, timeout=60)
        if proc.returncode == 0 and "<svg" in proc.stdout:
            return proc.stdout[proc.stdout.index("<svg"):]
    return f"<p>Graphviz is not installed (apt-get install graphviz); the lab as DOT:</p><pre>{_e(dot)}</pre>"


def _cell_class(text: str) -> str:
    return {"✓": "pass", "✗": "fail", "·": "none", "?": "unknown"}.get(text[:1], "")


def matrix(table: Sequence[Sequence[str]]) -> str:
    """A judged matrix, header first: right cells green, wrong red, cells not asked grey."""
    head, *body = table
    out = ["<table class='matrix'><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        cells = [f"<th>{_e(row[0])}</th>"]
        cells += [f"<td class='{_cell_class(c)}'>{_e(c)}</td>" for c in row[1:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _steps(results: Sequence[CheckResult]) -> str:
    rows = ["<table class='steps'><tr><th></th><th>step</th><th>on</th><th>what was seen</th><th>time</th>"
            "<th>tries</th></tr>"]
    extra = []
    for r in results:
        mark = "<td class='pass'>✓</td>" if r.ok else "<td class='fail'>✗</td>"
        rows.append(f"<tr>{mark}<td>{_e(r.name)}</td><td>{_e(r.target)}</td><td>{_e(r.detail)}</td>"
                    f"<td>{r.elapsed:.2f}s</td><td>{r.attempts}</td></tr>")
        if r.table:
            extra.append(f"<p>{_e(r.name)}:</p>{matrix(r.table)}")
        if not r.ok and r.message:
            extra.append(f"<details><summary>diagnostics of the failed step: {_e(r.name)}</summary>"
                         f"<pre>{_e(r.message)}</pre></details>")
    return "".join(rows) + "</table>" + "".join(extra)


def _tallies(tallies: Sequence[Tally]) -> str:
    rows = ["<table class='tallies'><tr><th>scenario</th><th>passed</th><th>rate</th><th>slowest step</th></tr>"]
    for t in tallies:
        cls = "pass" if t.passed == t.runs else "fail"
        slow = "-" if t.slowest is None else f"{t.slowest[0]:.2f}s {t.slowest[1]} (run {t.slowest[2]})"
        rows.append(f"<tr><td>{_e(t.scenario)}</td><td class='{cls}'>{t.passed}/{t.runs}</td>"
                    f"<td class='{cls}'>{100 * t.rate:.0f}%</td><td>{_e(slow)}</td></tr>")
    return "".join(rows) + "</table>"


def page(lab: str, topo: Topology, scenarios: Mapping[str, Sequence[CheckResult]],
         tallies: Sequence[Tally] = ()) -> str:
    every = [r for rs in scenarios.values() for r in rs]
    bad = sum(1 for r in every if not r.ok)
    verdict = (f"<span class='ok'>all {len(every)} checks passed</span>" if not bad
               else f"<span class='bad'>{bad} of {len(every)} checks failed</span>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>labnet: {_e(lab)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>labnet: lab {_e(lab)}</h1>",
             f"<p class='sub'>{verdict}; {len(scenarios)} scenarios; {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             f"<div class='picture'>{picture(topo)}</div>"]
    if tallies:
        parts.append(f"<section><h2>Runs</h2>{_tallies(tallies)}</section>")
    for name, results in scenarios.items():
        ok = all(r.ok for r in results)
        mark = "<span class='ok'>✓</span>" if ok else "<span class='bad'>✗</span>"
        parts.append(f"<section id='{_e(name)}'><h2>{mark} {_e(name)}</h2>{_steps(results)}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: str | Path, lab: str, topo: Topology, scenarios: Mapping[str, Sequence[CheckResult]],
          tallies: Sequence[Tally] = ()) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page(lab, topo, scenarios, tallies), encoding="utf-8")
    tmp.replace(out)
    return out
