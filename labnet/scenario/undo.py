"""What a scenario changed (faults) and must put back when it ends, newest first."""

from __future__ import annotations

from collections.abc import Callable


class Undo:
    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []
        self.converge_pushed = False  # the first routing fault pushes "lab converged again" (scenario.faults)

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.actions.append((what, fn))

    def run(self) -> list[str]:
        """Undo everything; return what could not be undone (never raises)."""
        problems = []
        while self.actions:
            what, fn = self.actions.pop()
            try:
                fn()
            except Exception as exc:
                problems.append(f"undo {what}: {exc}")
        return problems
