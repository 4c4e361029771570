"""Runtimes turn a planned lab into namespaces (netns, the default) or containers (docker)."""

from __future__ import annotations

from labnet.runtime.base import Runtime


def get_runtime(name: str) -> type[Runtime]:
    if name == "netns":
        from labnet.runtime.netns import NetnsRuntime

        return NetnsRuntime
    if name == "docker":
        from labnet.runtime.docker import DockerRuntime

        return DockerRuntime
    from labnet.errors import BadInput

    raise BadInput(f"runtime {name!r} is not available here (known: netns, docker)")
