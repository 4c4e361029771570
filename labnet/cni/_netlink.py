"""pyroute2's IPRoute without the rest of pyroute2.

`import pyroute2` loads NDB, IPDB, conntrack, nftables and more (~80 ms), on every pod ADD.
The plugin needs only IPRoute, so it registers a bare `pyroute2` package object (same
__path__) and imports the one submodule; if that ever fails it falls back to the normal import.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

IPRoute: Any
NetlinkError: Any


def _load() -> tuple[Any, Any]:
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations is not None:
            stub = types.ModuleType("pyroute2")
            stub.__path__ = list(spec.submodule_search_locations)
            stub.__spec__ = spec
            sys.modules["pyroute2"] = stub
            try:
                from pyroute2.iproute.linux import IPRoute as ipr
                from pyroute2.netlink.exceptions import NetlinkError as err

                return ipr, err
            except Exception:
                for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                    del sys.modules[name]
    from pyroute2 import IPRoute as ipr
    from pyroute2.netlink.exceptions import NetlinkError as err

    return ipr, err


IPRoute, NetlinkError = _load()
