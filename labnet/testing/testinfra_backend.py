"""A testinfra backend for lab machines and pods: `labnet://<lab>/<node>[/<pod>]`.

Commands run through nsenter in the node's (or pod's) namespaces, so `host.interface`,
`host.sysctl`, `host.file` and `host.socket` see the node's own view, not the host's.
"""

from __future__ import annotations

import shlex
import urllib.parse
from typing import Any

import testinfra
import testinfra.backend as _backends
from testinfra.backend import base

SCHEME = "labnet"


def split_spec(spec: str) -> tuple[str, str, str | None]:
    """'labnet://seed/ubuntu-3/net-test' -> ('seed', 'ubuntu-3', 'net-test')."""
    url = urllib.parse.urlparse(spec if "://" in spec else f"{SCHEME}://{spec}")
    parts = [p for p in url.path.split("/") if p]
    if url.scheme != SCHEME or not url.netloc or not 1 <= len(parts) <= 2:
        raise ValueError(f"{spec!r}: expected labnet://<lab>/<node>[/<pod>]")
    return url.netloc, parts[0], parts[1] if len(parts) == 2 else None


class LabnetBackend(base.BaseBackend):
    NAME = SCHEME

    def __init__(self, hostname: str, *args: Any, **kwargs: Any) -> None:
        from labnet.lab.view import LabView

        self.lab, self.node, self.pod = split_spec(hostname)
        view = LabView(self.lab)
        self.ns = view.pod_ns(self.pod) if self.pod else view.ns(self.node)
        super().__init__(hostname, *args, **kwargs)

    def get_pytest_id(self) -> str:
        return str(self.hostname)  # already labnet://<lab>/<node>[/<pod>]

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        argv = self.ns.argv(["/bin/sh", "-c", cmd])
        out = self.run_local(" ".join(shlex.quote(a) for a in argv))
        out.command = self.encode(cmd)
        return out


_orig_parse = _backends.parse_hostspec


def _parse_hostspec(hostspec: str) -> tuple[str, dict[str, Any]]:
    # testinfra keeps only the URL's netloc as the host; ours needs the path (node/pod) too.
    if isinstance(hostspec, str) and hostspec.startswith(f"{SCHEME}://"):
        return hostspec, {"connection": SCHEME}
    return _orig_parse(hostspec)


def register() -> None:
    """Teach testinfra the labnet:// scheme (the pytest plugin does this at configure time)."""
    _backends.BACKENDS[SCHEME] = f"{__name__}.LabnetBackend"
    _backends.parse_hostspec = _parse_hostspec


def get_host(spec: str) -> testinfra.host.Host:
    """A testinfra Host for `labnet://<lab>/<node>[/<pod>]`."""
    register()
    return testinfra.get_host(spec if "://" in spec else f"{SCHEME}://{spec}")
