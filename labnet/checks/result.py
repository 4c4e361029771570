"""What a check returns (CheckResult) and raises (CheckFailed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labnet.errors import LabnetError


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str  # what was checked, e.g. "blackhole 10.100.163.128/26 proto bird"
    target: str  # the node, pod or matrix it was checked on
    detail: str  # one line: what was seen (ok) or expected vs actual (failed)
    elapsed: float  # seconds from the first probe to the verdict
    attempts: int = 1
    message: str = ""  # the full failure text (empty when ok)
    # a matrix the check judged, header row first (reachability, policy truth tables): for reports
    table: tuple[tuple[str, ...], ...] = ()

    @property
    def retried(self) -> bool:
        return self.attempts > 1

    def summary(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        when = f" after {self.elapsed:.1f}s ({self.attempts} attempts)" if self.retried or not self.ok else ""
        return f"[{self.target}] {self.name}: {verdict}{when}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckFailed(LabnetError, AssertionError):
    """A check did not hold before its deadline.

    An AssertionError so pytest reports it as a test failure (with the message as is), and a
    LabnetError so the CLI exits 1 with the message.
    """

    exit_code = 1

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        super().__init__(result.message or result.summary())
