"""Scenarios run N times: pass rates, failures by run, the slowest step and convergence."""

from __future__ import annotations

from labnet.checks import CheckResult
from labnet.scenario.repeat import format_tallies, repeat


def _r(name: str, ok: bool = True, elapsed: float = 0.1, detail: str = "fine") -> CheckResult:
    return CheckResult(ok, name, "lab", detail, elapsed)


def test_pass_rates_failures_by_run_and_the_slowest() -> None:
    calls: list[str] = []
    plan = {("steady", 1): [_r("ping a")], ("steady", 2): [_r("ping a")], ("steady", 3): [_r("ping a")],
            ("flaky", 1): [_r("converge a → b", elapsed=0.4)],
            ("flaky", 2): [_r("converge a → b", ok=False, elapsed=30.0, detail="no reply within 30s")],
            ("flaky", 3): [_r("converge a → b", elapsed=1.2)],
            ("broken", 1): [_r("route x", ok=False)], ("broken", 2): [_r("route x", ok=False)],
            ("broken", 3): [_r("route x", ok=False)]}
    run = {n: 0 for n in ("steady", "flaky", "broken")}

    def run_one(name: str) -> list[CheckResult]:
        run[name] += 1
        calls.append(name)
        return plan[(name, run[name])]

    tallies, every = repeat(["steady", "flaky", "broken"], 3, run_one)
    assert calls == ["steady", "flaky", "broken"] * 3, "runs interleave, as in a suite"
    assert len(every) == 9
    by = {t.scenario: t for t in tallies}
    assert (by["steady"].passed, by["flaky"].passed, by["broken"].passed) == (3, 2, 0)
    assert by["flaky"].slowest == (30.0, "converge a → b", 2) and by["flaky"].slowest_converge == (30.0, 2)
    assert by["flaky"].failures == ["run 2: converge a → b: no reply within 30s"]
    text = format_tallies(tallies)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert lines[0] == "SCENARIO PASSED RATE SLOWEST STEP SLOWEST CONVERGENCE", lines
    assert "flaky 2/3 67% 30.00s converge a → b (run 2) 30.00s (run 2)" in lines, lines
    assert "steady 3/3 100% 0.10s ping a (run 1) -" in lines, lines
    assert text.endswith("5/9 scenario runs passed; flaky: flaky; always failing: broken")
    assert by["flaky"].to_dict()["rate"] == 0.6667
