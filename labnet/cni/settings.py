"""Where the plugins get their settings: the conflist entry, the nodename file, and etcd.

- etcd endpoints and TLS files: the conflist entry (`etcd_endpoints`, `etcd_key_file`,
  `etcd_cert_file`, `etcd_ca_cert_file`), exactly as in the seed's cni_network_config.
- node name: `nodename` in the conf, else /var/lib/labnet/nodename (written by install),
  else the hostname, as Calico's plugin does.
- lab-wide settings: etcd key keys.config("cluster"), which the conf's own `mtu` and
  `ipam.pool` / `ipam.block_size` override.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from labnet.cni.spec import INVALID_CONFIG, TRY_AGAIN_LATER, CniError
from labnet.errors import BadInput
from labnet.etcd.settings import CLUSTER_KEY
from labnet.etcd.store import DatastoreUnavailable, EtcdConfig
from labnet.settings import ClusterSettings

if TYPE_CHECKING:
    from labnet.etcd.store import KV, Datastore

NODENAME_FILE = "/var/lib/labnet/nodename"


def etcd_config(conf: dict[str, Any]) -> EtcdConfig:
    eps = conf.get("etcd_endpoints")
    if not isinstance(eps, str) or not eps.strip():
        raise CniError(INVALID_CONFIG, f"network {conf.get('name')!r}: 'etcd_endpoints' is missing "
                       "(a comma-separated list like https://ubuntu-1:2379)")
    endpoints = tuple(e.strip() for e in eps.split(",") if e.strip())
    for key in ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file"):
        path = conf.get(key)
        if path is not None and not isinstance(path, str):
            raise CniError(INVALID_CONFIG, f"network {conf.get('name')!r}: {key} must be a path string, "
                           f"not {type(path).__name__}")
        if path and not os.path.isfile(path):
            raise CniError(INVALID_CONFIG, f"network {conf.get('name')!r}: {key} {path} does not exist")
    if any(e.startswith("https://") for e in endpoints) and not conf.get("etcd_ca_cert_file"):
        raise CniError(INVALID_CONFIG, f"etcd endpoints {eps} are https but etcd_ca_cert_file is not set")
    timeout = conf.get("etcd_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise CniError(INVALID_CONFIG, f"network {conf.get('name')!r}: etcd_timeout must be seconds "
                       f"(a number from 0 to 300), not {timeout!r}")
    return EtcdConfig(endpoints, conf.get("etcd_ca_cert_file") or None, conf.get("etcd_cert_file") or None,
                      conf.get("etcd_key_file") or None, timeout=float(timeout))


def nodename(conf: dict[str, Any]) -> str:
    name = conf.get("nodename")
    if isinstance(name, str) and name:
        return name
    path = conf.get("nodename_file") or NODENAME_FILE
    try:
        with open(path) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    return socket.gethostname()


def open_store(conf: dict[str, Any]) -> Datastore:
    cfg = etcd_config(conf)
    from labnet.etcd.client import EtcdStore  # imported late: VERSION and bad input never pay for it

    try:
        return EtcdStore(cfg)
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, f"etcd_endpoints {conf.get('etcd_endpoints')!r}: {exc}") from exc


@contextmanager
def store_for(conf: dict[str, Any], pool: Any = None) -> Iterator[Datastore]:
    """The store for this run: the pool's shared one (the CNI server keeps it warm), else a
    fresh one closed at the end (an exec'd plugin)."""
    if pool is not None:
        yield pool.get(conf)
        return
    store = open_store(conf)
    try:
        yield store
    finally:
        store.close()


def unavailable(conf: dict[str, Any], exc: BaseException) -> CniError:
    return CniError(TRY_AGAIN_LATER, f"etcd at {conf.get('etcd_endpoints')} is unreachable, try again later",
                    str(exc))


class RequestMemo:
    """Datastore reads shared within ONE request (never across requests, so nothing goes
    stale): the first reader of a key does the round trip, concurrent and later readers of
    the same key (the plugin and its in-process IPAM thread) wait for and share its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, Future[KV | None]] = {}
        # What the ADD learnt that the node's agent wants and the runtime must not see: the
        # address came from another node's block (labnet.agent.node.after_cni). None: no ADD.
        self.borrowed: bool | None = None

    def get(self, store: Datastore, key: str) -> KV | None:
        with self._lock:
            fut = self._reads.get(key)
            owner = fut is None
            if fut is None:
                fut = self._reads[key] = Future()
        if owner:
            try:
                fut.set_result(store.get(key))
            except BaseException as exc:  # every waiter sees the same failure
                fut.set_exception(exc)
        return fut.result()

    def prime(self, key: str, kv: KV | None) -> None:
        """Record a read made elsewhere (in a multi-key read); a read already under way wins."""
        with self._lock:
            if key not in self._reads:
                fut: Future[KV | None] = Future()
                fut.set_result(kv)
                self._reads[key] = fut


def cluster(conf: dict[str, Any], store: Datastore, memo: RequestMemo | None = None) -> ClusterSettings:
    try:
        kv = memo.get(store, CLUSTER_KEY) if memo is not None else store.get(CLUSTER_KEY)
    except DatastoreUnavailable as exc:
        raise unavailable(conf, exc) from exc
    return cluster_from(conf, kv)


def cluster_from(conf: dict[str, Any], kv: KV | None) -> ClusterSettings:
    """The lab settings record (`kv`, as read from etcd) with the network config's overrides
    (`mtu`, `ipam.pool`, `ipam.block_size`), parsed by the one cluster-settings parser."""
    try:
        doc: dict[str, Any] = json.loads(kv.value) if kv else {}
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, f"etcd key {CLUSTER_KEY} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CniError(INVALID_CONFIG, f"etcd key {CLUSTER_KEY} is not a JSON object")
    pool: dict[str, Any] = dict(doc.get("pool") or {})
    ipam_conf = conf.get("ipam") or {}
    if isinstance(ipam_conf.get("pool"), str):
        pool["cidr"] = ipam_conf["pool"]
    if ipam_conf.get("block_size"):
        pool["block_size"] = ipam_conf["block_size"]
    if not pool.get("cidr"):
        raise CniError(INVALID_CONFIG, f"no IP pool: etcd key {CLUSTER_KEY} has no pool.cidr "
                       "and the network config has no ipam.pool")
    merged = {**doc, "pool": pool}
    if conf.get("mtu"):
        merged["mtu"] = conf["mtu"]
    try:
        return ClusterSettings.from_dict(merged, where=f"network {conf.get('name')!r} with etcd {CLUSTER_KEY}")
    except BadInput as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from exc
