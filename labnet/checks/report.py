"""Check results as a text table (`labnet check`), JSON (`--json`) and JUnit XML (CI)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from labnet.checks.result import CheckResult


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, like `calicoctl node status` without the boxes.

    A cell's text is never cut; multi-line cells use their first line (details go below the table).
    """
    cells = [[str(c).splitlines()[0] if str(c) else "" for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, header has {len(headers)}: {row}")
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def format_results(results: Sequence[CheckResult], *, verbose: bool = True) -> str:
    """The results table, then each failure's full message, then a one-line total."""
    rows = [
        [r.name, r.target, "ok" if r.ok else "FAILED", f"{r.elapsed:.1f}s", r.detail]
        for r in results
    ]
    out = [render_table(["CHECK", "TARGET", "RESULT", "TIME", "DETAIL"], rows)] if rows else ["(no checks)"]
    failed = [r for r in results if not r.ok]
    if verbose:
        for r in failed:
            out += ["", f"--- {r.name} on {r.target} ---", r.message or r.detail]
    out += ["", f"{len(results) - len(failed)} passed, {len(failed)} failed"]
    return "\n".join(out)


def results_json(results: Sequence[CheckResult]) -> str:
    failed = sum(1 for r in results if not r.ok)
    doc = {"ok": failed == 0, "passed": len(results) - failed, "failed": failed,
           "results": [r.to_dict() for r in results]}
    return json.dumps(doc, indent=2, ensure_ascii=False)


def junit_xml(results: Sequence[CheckResult], suite: str = "labnet") -> str:
    failed = sum(1 for r in results if not r.ok)
    total = sum(r.elapsed for r in results)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failed),
                       errors="0", skipped="0", time=f"{total:.3f}")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{r.target}", name=r.name, time=f"{r.elapsed:.3f}")
        if not r.ok:
            fail = ET.SubElement(tc, "failure", message=r.detail, type="CheckFailed")
            fail.text = r.message or r.detail
        elif r.retried:
            out = ET.SubElement(tc, "system-out")
            out.text = f"passed after {r.elapsed:.1f}s ({r.attempts} attempts): {r.detail}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(results: Sequence[CheckResult], path: str | Path, suite: str = "labnet") -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(junit_xml(results, suite), encoding="utf-8")
    return p
