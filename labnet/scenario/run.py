"""Scenario steps → checks. The CLI (`labnet check`) and the pytest plugin both run steps here.

Each step's arguments are validated into their typed model (labnet.topology.steps) and handed
to its runner (labnet.scenario.table); faults are undone when the scenario ends.
"""

from __future__ import annotations

import time
from typing import Any

from labnet.checks import DEFAULT_TIMEOUT, CheckFailed, CheckResult
from labnet.errors import BadInput, LabnetError
from labnet.lab.view import LabView
from labnet.scenario.gates import Gates
from labnet.scenario.table import CHECKS, FAULTS, FaultFn
from labnet.scenario.undo import Undo
from labnet.topology.steps import STEP_KINDS, StepArgs


def typed_args(kind: str, args: Any) -> StepArgs:
    """The step's arguments as its model (defaults filled); a typed model passes through."""
    spec = STEP_KINDS.get(kind)
    if spec is None:
        raise BadInput(f"step kind {kind!r} has no runner (known: {', '.join(sorted(STEP_KINDS))})")
    if isinstance(args, spec.args):
        return args
    from pydantic import ValidationError

    try:
        return spec.args.model_validate(args or {})
    except ValidationError as exc:
        raise BadInput(f"step {kind}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def run_step(view: LabView, kind: str, args: Any, timeout: float = DEFAULT_TIMEOUT,
             undo: Undo | None = None) -> list[CheckResult]:
    """Run one step; raises CheckFailed on the first check that does not hold."""
    typed = typed_args(kind, args)
    if kind in FAULTS:
        if undo is None:
            raise BadInput(f"step {kind!r} changes the lab: run it inside a scenario (it is undone at the end)")
        return _as_check(kind, FAULTS[kind])(view, typed, timeout, undo)
    fn = CHECKS.get(kind)
    if fn is None:
        raise BadInput(f"step kind {kind!r} has no runner (known: {', '.join(sorted([*CHECKS, *FAULTS]))})")
    return fn(view, typed, timeout)


def _as_check(kind: str, fn: FaultFn) -> FaultFn:
    """A fault that could not be applied is a failed check (a row in the CLI's table, a test
    failure naming what was tried); bad input stays BadInput (exit 2)."""

    def runner(view: LabView, a: Any, timeout: float, undo: Undo) -> list[CheckResult]:
        __tracebackhide__ = True
        t0 = time.monotonic()
        try:
            return fn(view, a, timeout, undo)
        except BadInput:
            raise
        except LabnetError as exc:
            named = [str(getattr(a, k)) for k in ("node", "machine", "interface") if getattr(a, k, None)]
            target = named[0] if named else view.name
            name = f"fault: {kind} {' '.join(named)}".rstrip()
            msg = f"fault step failed on {target}: {name}\n  {exc}"
            raise CheckFailed(CheckResult(False, name, target, str(exc).splitlines()[0][:300],
                                          time.monotonic() - t0, message=msg)) from exc

    runner.__name__ = fn.__name__
    return runner


def tolerated(steps: list[Any]) -> set[str]:
    """The gates a scenario does not hold: what its faults break, and what it tolerates."""
    out: set[str] = set()
    for step in steps:
        spec = STEP_KINDS.get(step.kind)
        if spec is not None:
            out |= spec.breaks
        if step.kind == "tolerate":
            out |= set(typed_args("tolerate", step.typed or step.args).gates)  # type: ignore[attr-defined]
    return out


def run_steps(view: LabView, steps: list[Any], timeout: float = DEFAULT_TIMEOUT,
              collect: bool = False, gates: bool = True) -> list[CheckResult]:
    """Run steps in order, undoing their faults at the end whatever happens.

    collect=False raises CheckFailed at the first failure (pytest), with the results of the
    steps that passed before it in its message; collect=True records failures and goes on
    (the CLI's table). A fault that cannot be undone is a failure too, and so is what the
    scenario's gates (labnet.scenario.gates) saw that it did not declare.
    """
    undo = Undo()
    results: list[CheckResult] = []
    watch = Gates(view) if gates else None
    try:
        try:
            for step in steps:
                try:
                    results += run_step(view, step.kind, step.typed or step.args, timeout, undo)
                except CheckFailed as exc:
                    if not collect:
                        raise _with_passed(exc, results) from None
                    results.append(exc.result)
        finally:
            problems = undo.run()
        if problems:
            result = CheckResult(False, "undo faults", view.name, "; ".join(problems), 0.0,
                                 message="the scenario's faults could not all be undone:\n" + "\n".join(problems))
            if not collect:
                raise _with_passed(CheckFailed(result), results)
            results.append(result)
        if watch is not None:
            seen = watch.violations(tolerated(steps))
            if seen:
                result = gate_result(view.name, seen)
                if not collect:
                    raise _with_passed(CheckFailed(result), results)
                results.append(result)
    finally:
        if watch is not None:
            watch.close()
    return results


def gate_result(target: str, seen: list[str]) -> CheckResult:
    """A failed check for what the gates saw."""
    return CheckResult(False, "gates", target, "; ".join(x.splitlines()[0] for x in seen), 0.0,
                       message=f"gates failed on {target}: during the run, and not declared by a fault or a "
                               "`tolerate` step:\n" + "\n".join("  " + x for x in seen))


def _with_passed(exc: CheckFailed, passed: list[CheckResult]) -> CheckFailed:
    """The failure, with what held before it: a report shows how far the scenario got."""
    if not passed:
        return exc
    before = "\n".join("  " + r.summary() for r in passed)
    r = exc.result
    message = f"{r.message or r.summary()}\n\nsteps that passed before it ({len(passed)}):\n{before}"
    out = CheckFailed(CheckResult(r.ok, r.name, r.target, r.detail, r.elapsed, r.attempts, message))
    out.__cause__ = exc.__cause__
    return out

