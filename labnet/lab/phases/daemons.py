"""Phase daemons: the programs the topology gives routers and hosts (FRR, GoBGP, ...).

Each daemon's files are written into the machine's own directories, then it starts inside the
machine's namespaces with its log at /var/log/labnet/<name>.log, recorded in the journal: `down`
stops it, `up` on a running lab starts it again if it died, and status shows it.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from labnet.errors import LabnetError
from labnet.lab import processes

if TYPE_CHECKING:
    from labnet.lab.context import Context
    from labnet.topology.model import Daemon


def _start(ctx: Context, kind: str, machine: str, name: str, daemon: Daemon) -> None:
    rt = ctx.runtime
    argv = daemon.argv()
    if rt.shares_host_python and shutil.which(argv[0], path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") \
            is None:
        raise LabnetError(f"{kind} {machine}: daemon {name}: command {argv[0]!r} is not installed here "
                          "(`make sysdeps` installs FRR and GoBGP)")
    for path, f in daemon.files.items():
        dest = rt.host_path(machine, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.text or "")
    log = rt.host_path(machine, f"/var/log/labnet/{name}.log")
    processes.start(ctx.journal, rt.ns(machine), machine, name, argv, log=log)


def run(ctx: Context) -> None:
    for kind, machines in (("router", ctx.topo.routers), ("host", ctx.topo.hosts)):
        for machine, spec in machines.items():
            for name, daemon in spec.daemons.items():
                _start(ctx, kind, machine, name, daemon)
