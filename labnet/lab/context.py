"""What every phase of `labnet up` gets: the topology, the journal, the runtime, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labnet.lab.journal import Journal
    from labnet.lab.progress import Progress
    from labnet.lab.zygote import Zygote
    from labnet.runtime.base import Runtime
    from labnet.topology.model import Topology


@dataclass
class Context:
    topo: Topology
    journal: Journal
    runtime: Runtime
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)
    zygote: Zygote | None = None  # forks the node daemons during `up` (None: spawn by exec)


Phase = Callable[[Context], None]
