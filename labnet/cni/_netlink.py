"""pyroute2's IPRoute and NetlinkError, imported in one place.

An earlier version registered a stub `pyroute2` package to skip ~25 ms of imports per exec'd
plugin; in a larger process (a test run, the runtime) that stub broke other code's
`from pyroute2 import NetNS`. The fast path (labnet.cni.server) imports this once per node, so
the plain import costs nothing that matters.
"""

from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["IPRoute", "NetlinkError"]
