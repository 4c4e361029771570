"""Lab-wide settings in etcd (the seed's calico-config ConfigMap), at keys.config("cluster").

`up` writes them once; every node's agent and CNI plugin reads them from etcd, so a node
needs nothing but its etcd endpoints and certificate. The shape and its parser are
labnet.settings.ClusterSettings; this module only stores and fetches it.
"""

from __future__ import annotations

import json

from labnet.errors import LabnetError
from labnet.etcd import keys
from labnet.etcd.store import KV, Datastore
from labnet.settings import ClusterSettings

CLUSTER_KEY = keys.config("cluster")


def write_cluster_config(store: Datastore, settings: ClusterSettings) -> int:
    """Store the settings (sorted JSON); return the revision written."""
    return store.put(CLUSTER_KEY, json.dumps(settings.to_dict(), sort_keys=True))


def read_cluster_config(store: Datastore) -> ClusterSettings:
    return decode_cluster_config(store.get(CLUSTER_KEY))


def decode_cluster_config(kv: KV | None) -> ClusterSettings:
    """The settings `up` wrote, from their etcd record. LabnetError if they are missing or not
    JSON; BadInput if a field is wrong (named)."""
    if kv is None:
        raise LabnetError(f"no cluster settings in etcd at {CLUSTER_KEY}: the lab was not set up "
                          "(labnet up writes them), or this is the wrong etcd")
    try:
        data = json.loads(kv.value)
    except ValueError as exc:
        raise LabnetError(f"cluster settings at {CLUSTER_KEY} are not JSON: {exc}: {kv.value[:200]!r}") from exc
    return ClusterSettings.from_dict(data, where=f"etcd {CLUSTER_KEY}")
