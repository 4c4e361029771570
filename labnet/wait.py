"""Polling with a deadline: the only way labnet waits for state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from labnet.errors import WaitTimeout

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds a check polls before it fails, unless told otherwise (CLI, plugin, assertions)


def poll(
    probe: Callable[[], T],
    ok: Callable[[T], bool] = bool,
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    max_interval: float = 0.25,
) -> T:
    """Call `probe` until `ok(result)` holds; return that result.

    On timeout raise WaitTimeout naming `what`, the time waited and the last result
    (or the last exception the probe raised).
    """
    start = time.monotonic()
    deadline = start + timeout
    last: object = "<never probed>"
    while True:
        try:
            value = probe()
            if ok(value):
                return value
            last = value
        except WaitTimeout:
            raise
        except Exception as exc:  # a probe that raises is "not yet", but we keep the reason
            last = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(what, now - start, last)
        time.sleep(min(interval, max(0.0, deadline - now)))  # the poll interval, not a fixed wait
        interval = min(interval * 1.5, max_interval)
