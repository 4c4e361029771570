"""The lab's etcd from the host: the admin certificate, used from inside the lab's network.

The lab's etcd listens only on lab addresses, so every call runs in a thread that has entered
the etcd node's network namespace (labnet.etcd.netns); the rest of the CLI stays where it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labnet.errors import LabnetError

if TYPE_CHECKING:
    from labnet.labview import LabView


class NetnsStore:
    """A Datastore whose every call runs inside `netns` (an nsfs path)."""

    def __init__(self, netns: str, config: Any) -> None:
        from labnet.etcd.client import EtcdStore

        self._netns = netns
        self._store = EtcdStore(config)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr) or name == "close":
            return attr
        from labnet.etcd.netns import call_in_netns

        def call(*args: Any, **kwargs: Any) -> Any:
            return call_in_netns(self._netns, attr, *args, **kwargs)

        return call

    def close(self) -> None:
        self._store.close()


def admin_store(info: dict[str, Any]) -> NetnsStore:
    """The admin store of a lab, from its journal's info."""
    from labnet.phases import admin_config

    if "etcd" not in info:
        raise LabnetError("this lab has no etcd (its topology has no cluster)")
    return NetnsStore(info["etcd"]["netns"], admin_config(info))


def etcd_ls_text(view: LabView, prefix: str = "/labnet/") -> str:
    from labnet.etcd.cli import format_ls

    store = admin_store(view.journal.info)
    try:
        return format_ls(store.range(prefix), False)
    finally:
        store.close()
