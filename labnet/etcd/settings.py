"""Lab-wide settings in etcd (the seed's calico-config ConfigMap), at keys.config("cluster").

`up` writes them once; every node's agent and CNI plugin reads them from etcd, so a node
needs nothing but its etcd endpoints and certificate. Import-light: Datastore only.
"""

from __future__ import annotations

import json
from typing import Any

from labnet.errors import BadInput, LabnetError
from labnet.etcd import keys
from labnet.etcd.store import Datastore

CLUSTER_KEY = keys.config("cluster")

# The shape `labnet up` writes (see labnet.agent.config), with the JSON types of the fields
# that are checked; other fields are kept as they are, for later additions.
KNOWN: dict[str, type | tuple[type, ...]] = {
    "pool.cidr": str,
    "pool.block_size": int,
    "pool.ipip": str,  # always | cross-subnet | never
    "pool.vxlan": str,  # always | cross-subnet | never
    "pool.nat_outgoing": bool,
    "mtu": int,
    "bgp.asn": int,
    "bgp.mesh": (str, bool),
    "node_asn": dict,
}


def _type_name(typ: type | tuple[type, ...]) -> str:
    return typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)


def _check(settings: Any, where: str) -> None:
    if not isinstance(settings, dict):
        raise BadInput(f"{where}: cluster settings must be a JSON object, got {type(settings).__name__}")
    for dotted, typ in KNOWN.items():
        node: Any = settings
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                raise BadInput(f"{where}: cluster setting {'.'.join(parts[:i])!r} should be an object, "
                               f"got {node!r}")
            node = node.get(part)
            if node is None:
                break
        else:
            if not isinstance(node, typ) or (typ is int and isinstance(node, bool)):
                raise BadInput(f"{where}: cluster setting {dotted!r} should be {_type_name(typ)}, got {node!r}")


def write_cluster_config(store: Datastore, settings: dict[str, Any]) -> int:
    """Store the settings (sorted JSON); return the revision written.

    Shape: {"pool": {"cidr", "block_size", "ipip", "vxlan", "nat_outgoing"}, "mtu",
    "bgp": {"asn", "mesh", ...}, "node_asn": {node: asn}}.
    """
    _check(settings, f"writing {CLUSTER_KEY}")
    try:
        data = json.dumps(settings, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"writing {CLUSTER_KEY}: settings are not JSON-serialisable: {exc}") from exc
    return store.put(CLUSTER_KEY, data)


def read_cluster_config(store: Datastore) -> dict[str, Any]:
    """The settings `up` wrote. LabnetError if they are missing or not a JSON object."""
    kv = store.get(CLUSTER_KEY)
    if kv is None:
        raise LabnetError(f"no cluster settings in etcd at {CLUSTER_KEY}: the lab was not set up "
                          "(labnet up writes them), or this is the wrong etcd")
    try:
        data = json.loads(kv.value)
    except ValueError as exc:
        raise LabnetError(f"cluster settings at {CLUSTER_KEY} are not JSON: {exc}: {kv.value[:200]!r}") from exc
    _check(data, f"reading {CLUSTER_KEY}")
    return dict(data)
