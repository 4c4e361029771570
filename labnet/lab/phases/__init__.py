"""The phases of `labnet up`, in the order they run. A new phase is a module with
`run(ctx)`, added to PHASES at its place; nothing registers itself."""

from __future__ import annotations

from labnet.lab.context import Phase
from labnet.lab.phases import agents, cni, converge, daemons, etcd, pods, routers, underlay

PHASES: list[tuple[str, Phase]] = [
    ("underlay", underlay.run),
    ("routers", routers.run),
    ("daemons", daemons.run),
    ("etcd", etcd.run),
    ("cni", cni.run),
    ("agents", agents.run),
    ("pods", pods.run),
    ("converge", converge.run),
]
