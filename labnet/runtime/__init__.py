"""Runtimes turn a planned lab into namespaces (netns, the default) or containers (docker).

RUNTIMES is the table of runtimes by name; a new runtime is a Runtime subclass added there.
"""

from __future__ import annotations

from labnet.errors import BadInput
from labnet.runtime.base import Runtime
from labnet.runtime.docker import DockerRuntime
from labnet.runtime.netns import NetnsRuntime

RUNTIMES: dict[str, type[Runtime]] = {"netns": NetnsRuntime, "docker": DockerRuntime}


def get_runtime(name: str) -> type[Runtime]:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise BadInput(f"runtime {name!r} is not available here (known: {', '.join(RUNTIMES)})") from None
