"""Scenarios run many times on one lab: pass rates, what failed in which run, the slowest step and
the slowest convergence. A test that passes 49 times in 50 is a flake to find, not a pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labnet.checks import CheckResult
from labnet.checks.report import render_table


@dataclass
class Tally:
    scenario: str
    runs: int = 0
    passed: int = 0
    slowest: tuple[float, str, int] | None = None  # (seconds, step, run)
    slowest_converge: tuple[float, int] | None = None  # (seconds, run)
    failures: list[str] = field(default_factory=list)  # "run 3: <step>: <detail>"

    def add(self, run: int, results: list[CheckResult]) -> None:
        self.runs += 1
        bad = [r for r in results if not r.ok]
        if not bad:
            self.passed += 1
        self.failures += [f"run {run}: {r.name}: {r.detail}"[:300] for r in bad]
        for r in results:
            if self.slowest is None or r.elapsed > self.slowest[0]:
                self.slowest = (r.elapsed, r.name, run)
            if r.name.startswith("converge") and (self.slowest_converge is None or r.elapsed > self.slowest_converge[0]):
                self.slowest_converge = (r.elapsed, run)

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "runs": self.runs, "passed": self.passed, "rate": round(self.rate, 4),
                "slowest_step": None if self.slowest is None else
                {"seconds": round(self.slowest[0], 3), "step": self.slowest[1], "run": self.slowest[2]},
                "slowest_convergence": None if self.slowest_converge is None else
                {"seconds": round(self.slowest_converge[0], 3), "run": self.slowest_converge[1]},
                "failures": self.failures}


def repeat(names: list[str], runs: int, run_one: Callable[[str], list[CheckResult]]) -> tuple[list[Tally],
                                                                                               list[CheckResult]]:
    """Each scenario `runs` times, in turn (run 1 of all, then run 2...), so a scenario's faults
    and their undo lie between the runs of the others as they would in a suite."""
    tallies = {n: Tally(n) for n in names}
    every: list[CheckResult] = []
    for i in range(1, runs + 1):
        for n in names:
            results = run_one(n)
            tallies[n].add(i, results)
            every += results
    return list(tallies.values()), every


def format_tallies(tallies: list[Tally]) -> str:
    rows = []
    for t in tallies:
        slow = "-" if t.slowest is None else f"{t.slowest[0]:.2f}s {t.slowest[1]} (run {t.slowest[2]})"
        conv = "-" if t.slowest_converge is None else f"{t.slowest_converge[0]:.2f}s (run {t.slowest_converge[1]})"
        rows.append([t.scenario, f"{t.passed}/{t.runs}", f"{100 * t.rate:.0f}%", slow, conv])
    out = render_table(["SCENARIO", "PASSED", "RATE", "SLOWEST STEP", "SLOWEST CONVERGENCE"], rows)
    flaky = [t for t in tallies if 0 < t.passed < t.runs]
    failing = [t for t in tallies if t.passed == 0 and t.runs]
    lines = [out]
    for t in tallies:
        lines += [f"  {t.scenario}: {f}" for f in t.failures[:10]]
        if len(t.failures) > 10:
            lines.append(f"  {t.scenario}: ... and {len(t.failures) - 10} more failures")
    total = sum(t.runs for t in tallies)
    ok = sum(t.passed for t in tallies)
    lines.append(f"{ok}/{total} scenario runs passed; flaky: {', '.join(t.scenario for t in flaky) or 'none'}; "
                 f"always failing: {', '.join(t.scenario for t in failing) or 'none'}")
    return "\n".join(lines)
