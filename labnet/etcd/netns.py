"""Run client code inside a lab node's network namespace from a host process.

A socket belongs to the network namespace of the thread that created it, and setns(2) with
CLONE_NEWNET moves only the calling thread. So a fresh thread that enters the namespace can
talk to an etcd that is reachable only inside the lab, while the rest of the process stays
in the root namespace. (os.setns exists only from Python 3.12; ctypes covers 3.11.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from labnet.nsexec import setns

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (an nsfs file)."""
    setns(path, CLONE_NEWNET)


def call_in_netns(path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run fn(*args, **kwargs) in a new thread inside the netns at `path`; return or raise its outcome."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            enter_netns(path)
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=runner, name=f"netns:{os.path.basename(path)}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def thread_in_netns(path: str, fn: Callable[[], object], name: str = "") -> threading.Thread:
    """A started daemon thread that runs fn() inside the netns at `path`."""

    def runner() -> None:
        enter_netns(path)
        fn()

    t = threading.Thread(target=runner, name=name or f"netns:{os.path.basename(path)}", daemon=True)
    t.start()
    return t
