"""The lab's etcd from the host: the admin certificate, used from inside the lab's network.

The lab's etcd listens only on lab addresses; the store opens its connections from inside the
etcd node's network namespace (EtcdConfig.extra["netns"], see labnet.etcd.client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labnet.errors import LabnetError

if TYPE_CHECKING:
    from labnet.etcd.client import EtcdStore
    from labnet.labview import LabView


def admin_store(info: dict[str, Any]) -> EtcdStore:
    """The admin store of a lab, from its journal's info."""
    from labnet.etcd.client import EtcdStore
    from labnet.phases import admin_config

    if "etcd" not in info:
        raise LabnetError("this lab has no etcd (its topology has no cluster)")
    return EtcdStore(admin_config(info))


def etcd_ls_text(view: LabView, prefix: str = "/labnet/") -> str:
    from labnet.etcd.cli import format_ls

    store = admin_store(view.journal.info)
    try:
        return format_ls(store.range(prefix), False)
    finally:
        store.close()
