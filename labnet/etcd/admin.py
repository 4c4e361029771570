"""The lab's etcd from the host: the admin certificate, used from inside the lab's network.

The lab's etcd listens only on lab addresses; the store opens its connections from inside the
etcd node's network namespace (EtcdConfig.extra["netns"], see labnet.etcd.client).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from labnet.errors import LabnetError
from labnet.etcd.store import EtcdConfig

if TYPE_CHECKING:
    from labnet.etcd.client import EtcdStore
    from labnet.lab.view import LabView


T = TypeVar("T")


def admin_config(info: dict[str, Any]) -> EtcdConfig:
    """How the host-side CLI reaches the lab's etcd: the admin certificate, and connections
    opened from inside the etcd node's network namespace (the only place etcd is reachable)."""
    if "etcd" not in info:
        raise LabnetError("this lab has no etcd (its topology has no cluster)")
    e = info["etcd"]
    return EtcdConfig(endpoints=tuple(e["endpoints"]), ca_file=e.get("ca"), cert_file=e.get("cert"),
                      key_file=e.get("key"), extra={"netns": e["netns"]})


def admin_store(info: dict[str, Any]) -> EtcdStore:
    """The admin store of a lab, from its journal's info."""
    from labnet.etcd.client import EtcdStore

    return EtcdStore(admin_config(info))


def with_store(info: dict[str, Any], fn: Callable[[EtcdStore], T]) -> T:
    """fn(store) with the lab's admin store, closed afterwards."""
    store = admin_store(info)
    try:
        return fn(store)
    finally:
        store.close()


def etcd_ls_text(view: LabView, prefix: str = "/labnet/") -> str:
    from labnet.etcd.cli import format_ls

    store = admin_store(view.journal.info)
    try:
        return format_ls(store.range(prefix), False)
    finally:
        store.close()
