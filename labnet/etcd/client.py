"""EtcdStore: the one Datastore implementation, over etcd's v3 JSON gateway (etcd3gw).

Why the JSON gateway and not gRPC: the CNI plugin runs once per pod, and the grpc/protobuf
stack costs far more import time than `requests` (figures in docs/etcd-client.md).

etcd3gw gives the HTTP session (TLS with client cert), URL building and the mapping of
HTTP status codes to exceptions. The request payloads are built here, because etcd3gw
encodes str keys as latin-1 and offers no revision-based compare-and-swap, and the watch
is implemented here because etcd3gw's watcher neither reports a broken stream nor resumes.

A client in another network namespace: a socket belongs to the namespace it was created
in. With `EtcdConfig.extra["netns"]` set (an nsfs path such as /run/netns/NAME), every
connection is opened by a short-lived thread inside that namespace, and then used from any
thread of the caller; so a host process (the lab, `labnet etcd ls`, tests) uses the store
as if etcd were local, watches included. Without it, the caller's own namespace is used
(a node's agent and CNI plugin already run inside their node).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.exceptions
from etcd3gw import exceptions as gw_exc
from etcd3gw.client import Etcd3Client

from labnet.etcd.store import KV, Conflict, DatastoreUnavailable, EtcdConfig, Event, LeaseExpired, Snapshot

T = TypeVar("T")

# etcd 3.4 serves the gateway under /v3/; fixing it saves the /version round trip per client.
API_PATH = "/v3/"

# Errors meaning "this endpoint cannot serve now": try the next member.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    gw_exc.ConnectionFailedError,  # refused, reset, TLS failure, HTTP 503 (e.g. no leader)
    gw_exc.ConnectionTimeoutError,
    gw_exc.InternalServerError,
)
# A broken watch stream shows up as any of these while reading.
_STREAM_BROKEN: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,  # a truncated JSON line
)


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # empty prefix (or all 0xff): to the end of the keyspace


def _kv(item: dict[str, Any]) -> KV:
    return KV(
        key=_unb64(item.get("key")).decode(errors="surrogateescape"),
        value=_unb64(item.get("value")),
        mod_revision=int(item.get("mod_revision", 0)),
        create_revision=int(item.get("create_revision", 0)),
        version=int(item.get("version", 0)),
    )


def _netns_adapter(netns: str) -> requests.adapters.HTTPAdapter:
    """An adapter whose connections are opened inside the network namespace `netns`."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    from labnet.etcd.netns import call_in_netns

    class Conn(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return call_in_netns(netns, super()._new_conn)

    class TlsConn(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return call_in_netns(netns, super()._new_conn)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = TlsConn

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

    return Adapter()


def _client_for(endpoint: str, config: EtcdConfig, session: requests.Session | None = None) -> Etcd3Client:
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"bad etcd endpoint {endpoint!r}: expected http(s)://HOST:PORT")
    if url.scheme == "https" and not config.ca_file:
        raise ValueError(f"etcd endpoint {endpoint} is https but no ca_file is configured")
    client = Etcd3Client(
        host=url.hostname, port=url.port or 2379, protocol=url.scheme,
        ca_cert=config.ca_file, cert_cert=config.cert_file, cert_key=config.key_file,
        timeout=config.timeout, api_path=API_PATH, session=session,
    )
    if session is not None:  # etcd3gw only applies TLS settings to sessions it makes itself
        if config.ca_file:
            session.verify = config.ca_file
        if config.cert_file and config.key_file:
            session.cert = (config.cert_file, config.key_file)
    return client


class EtcdStore:
    """Datastore over one etcd cluster. Fails over between `config.endpoints`.

    Thread-safe for plain calls (one requests.Session, whose pool is thread-safe). A watch
    iterator belongs to the thread that iterates it.
    """

    def __init__(self, config: EtcdConfig) -> None:
        if not config.endpoints:
            raise ValueError("EtcdConfig has no endpoints")
        for what, path in (("ca_file", config.ca_file), ("cert_file", config.cert_file),
                           ("key_file", config.key_file)):
            if path and not (isinstance(path, str) and os.path.isfile(path)):
                raise ValueError(f"etcd {what} {path} does not exist (or is not a file)")
        self.config = config
        self._session = requests.Session()
        # Not the environment's: REQUESTS_CA_BUNDLE would replace our CA, and an http(s)_proxy
        # would carry lab traffic out of the namespace.
        self._session.trust_env = False
        netns = config.extra.get("netns")
        if netns:
            if not os.path.exists(netns):
                raise ValueError(f"EtcdConfig netns {netns} does not exist")
            adapter = _netns_adapter(netns)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        self._clients = [_client_for(ep, config, self._session) for ep in config.endpoints]
        self._current = 0
        self._closed = False
        self._lock = threading.Lock()
        self._streams: set[requests.Response] = set()

    # -- plumbing -----------------------------------------------------------------------

    def _endpoint(self, i: int) -> str:
        return self.config.endpoints[i]

    def _call(self, what: str, fn: Callable[[Etcd3Client], T]) -> T:
        """Run `fn` against the current member, moving on to the next ones if it is down.

        A write whose connection broke after it was sent may be retried on another member;
        for a cas that shows as a lost race (False), which callers already handle.
        """
        if self._closed:
            raise DatastoreUnavailable(f"etcd store is closed ({what})")
        errors: list[str] = []
        n = len(self._clients)
        start = self._current
        for k in range(n):
            i = (start + k) % n
            try:
                result = fn(self._clients[i])
            except _UNREACHABLE as exc:
                errors.append(f"{self._endpoint(i)}: {_reason(exc)}")
                continue
            except OSError as exc:  # requests' own check of the cert files, e.g. one deleted since
                raise DatastoreUnavailable(f"etcd {what}: {exc}") from exc
            except gw_exc.Etcd3Exception as exc:
                if "lease not found" in _reason(exc):
                    raise LeaseExpired(f"{what}: {_reason(exc)}") from exc
                raise DatastoreUnavailable(
                    f"etcd at {self._endpoint(i)} refused {what}: {_reason(exc)}"
                ) from exc
            self._current = i
            return result
        raise DatastoreUnavailable(f"etcd unreachable for {what}: " + "; ".join(errors))

    def _post(self, what: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        def go(c: Etcd3Client) -> dict[str, Any]:
            return dict(c.post(c.get_url(path), json=payload))

        return self._call(what, go)

    # -- Datastore ----------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        res = self._post(f"get {key}", "kv/range", {"key": _b64(key)})
        kvs = res.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> list[KV]:
        """Every key starting with `prefix`, sorted by key."""
        key = _b64(prefix) if prefix else _b64(b"\0")
        payload = {"key": key, "range_end": _b64(prefix_end(prefix)), "sort_order": 1, "sort_target": 0}
        res = self._post(f"range {prefix!r}", "kv/range", payload)
        return [_kv(item) for item in res.get("kvs") or []]

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            payload["lease"] = str(lease)
        res = self._post(f"put {key}", "kv/put", payload)
        return int(res["header"]["revision"])

    def _txn(self, what: str, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> dict[str, Any]:
        return self._post(what, "kv/txn", {"compare": compare, "success": success, "failure": []})

    @staticmethod
    def _compare_rev(key: str, mod_revision: int) -> dict[str, Any]:
        if mod_revision == 0:  # "must not exist": a key that never existed has create_revision 0
            return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
        return {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(mod_revision)}

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        res = self._txn(f"cas {key}@{mod_revision}", [self._compare_rev(key, mod_revision)],
                        [{"request_put": put}])
        return bool(res.get("succeeded", False))

    def cas_or_raise(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> None:
        """cas that raises Conflict (naming the key and revisions) when the race is lost."""
        if not self.cas(key, value, mod_revision, lease):
            now = self.get(key)
            actual = now.mod_revision if now else 0
            raise Conflict(f"{key}: expected mod_revision {mod_revision}, found {actual}")

    def cas_many(self, writes: Sequence[tuple[str, bytes | str, int | None]]) -> bool:
        what = "cas " + ", ".join(f"{k}@{rev}" if rev is not None else k for k, _, rev in writes)
        res = self._txn(what, [self._compare_rev(k, rev) for k, _, rev in writes if rev is not None],
                        [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v, _ in writes])
        return bool(res.get("succeeded", False))

    def snapshot(self, keys: Sequence[str] = (), prefixes: Sequence[str] = ()) -> Snapshot:
        """One txn with no compares: its reads all see the same revision."""
        reads: list[dict[str, dict[str, Any]]] = [{"request_range": {"key": _b64(k)}} for k in keys]
        reads += [{"request_range": {"key": _b64(p) if p else _b64(b"\0"), "range_end": _b64(prefix_end(p)),
                                     "sort_order": 1, "sort_target": 0}} for p in prefixes]
        what = "read " + ", ".join([*keys, *(repr(p) for p in prefixes)])
        responses = self._txn(what, [], reads).get("responses") or []
        if len(responses) != len(reads):
            raise DatastoreUnavailable(f"etcd {what}: expected {len(reads)} answers, got {len(responses)}")
        found = [[_kv(i) for i in (r.get("response_range") or {}).get("kvs") or []] for r in responses]
        return Snapshot({k: (f[0] if f else None) for k, f in zip(keys, found, strict=False)},
                        dict(zip(prefixes, found[len(keys):], strict=True)))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        if mod_revision is None:
            res = self._post(f"delete {key}", "kv/deleterange", {"key": _b64(key)})
            return int(res.get("deleted", 0)) > 0
        res = self._txn(f"delete {key}@{mod_revision}", [self._compare_rev(key, mod_revision)],
                        [{"request_delete_range": {"key": _b64(key)}}])
        if not res.get("succeeded"):
            return False
        deleted = res.get("responses", [{}])[0].get("response_delete_range", {}).get("deleted", 0)
        return int(deleted) > 0

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("delete_prefix with an empty prefix would wipe the whole etcd")
        res = self._post(f"delete prefix {prefix}", "kv/deleterange",
                         {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(res.get("deleted", 0))

    def grant_lease(self, ttl: int) -> int:
        res = self._post(f"grant lease ttl={ttl}", "lease/grant", {"TTL": ttl, "ID": 0})
        return int(res["ID"])

    def keepalive(self, lease: int) -> None:
        """Refresh `lease` once. Raises LeaseExpired when etcd no longer knows it."""
        res = self._post(f"keepalive lease {lease}", "lease/keepalive", {"ID": str(lease)})
        # The gateway streams: {"result": {"ID": ..., "TTL": ...}}; TTL absent/0 = expired.
        result = res.get("result", res)
        if int(result.get("TTL", 0)) <= 0:
            raise LeaseExpired(f"lease {lease:x} has expired")

    def revoke_lease(self, lease: int) -> None:
        try:
            self._post(f"revoke lease {lease}", "lease/revoke", {"ID": str(lease)})
        except DatastoreUnavailable as exc:
            if "not found" not in str(exc):
                raise

    def revision(self) -> int:
        """The store's current revision (header of an empty range)."""
        res = self._post("revision", "kv/range", {"key": _b64(b"\0"), "count_only": True, "limit": 1})
        return int(res["header"]["revision"])

    def watch(self, prefix: str, start_revision: int | None = None) -> Iterator[Event]:
        """Events under `prefix`, from `start_revision` (default: from now on).

        When the stream breaks (member killed, restarted, network gone) the watch reconnects,
        to any configured member, from the revision after the last one it delivered, so no
        event is lost or repeated. It retries until the store is closed. The first connection
        must succeed: if etcd is unreachable when watch() is called, DatastoreUnavailable
        is raised.
        Raises DatastoreUnavailable if the revision to resume from was compacted away.
        """
        # Fix the start revision now, not at the first next(): a put made right after
        # watch() returns must be seen even though the stream opens lazily.
        first = start_revision if start_revision is not None else self.revision() + 1
        return self._watch(prefix, first)

    def _watch(self, prefix: str, next_rev: int) -> Iterator[Event]:
        connected_once = False
        delay = 0.05
        while not self._closed:
            try:
                resp = self._open_watch(prefix, next_rev)
            except DatastoreUnavailable:
                if not connected_once or self._closed:
                    raise
                time.sleep(delay)  # reconnect backoff of a long-lived watch, not a test wait
                delay = min(delay * 2, 1.0)
                continue
            connected_once = True
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        break  # the gateway reports the stream's end; reconnect
                    result = msg.get("result", {})
                    compacted = int(result.get("compact_revision", 0))
                    if compacted:
                        raise DatastoreUnavailable(
                            f"watch on {prefix!r} cannot resume from revision {next_rev}: "
                            f"compacted up to {compacted}; list again and watch from there")
                    events = result.get("events") or []
                    if events:
                        delay = 0.05
                    for ev in events:
                        kv = _kv(ev["kv"])
                        next_rev = kv.mod_revision + 1
                        yield Event(type="delete" if ev.get("type") == "DELETE" else "put", kv=kv)
                    if result.get("canceled"):
                        break
            except _STREAM_BROKEN:
                pass  # the member went away mid-stream; reconnect below
            finally:
                self._forget_stream(resp)
            if not self._closed:
                time.sleep(delay)  # reconnect backoff, see above
                delay = min(delay * 2, 1.0)

    def _open_watch(self, prefix: str, start_revision: int) -> requests.Response:
        create: dict[str, Any] = {"key": _b64(prefix) if prefix else _b64(b"\0"),
                                  "range_end": _b64(prefix_end(prefix))}
        create["start_revision"] = str(start_revision)

        def go(c: Etcd3Client) -> requests.Response:
            try:
                resp = self._session.post(c.get_url("watch"), json={"create_request": create}, stream=True,
                                          timeout=(self.config.timeout, None))
            except requests.exceptions.ConnectionError as exc:
                raise gw_exc.ConnectionFailedError(str(exc)) from exc
            except requests.exceptions.Timeout as exc:
                raise gw_exc.ConnectionTimeoutError(str(exc)) from exc
            if resp.status_code != 200:
                text = resp.text
                resp.close()
                cls = gw_exc.ConnectionFailedError if resp.status_code >= 500 else gw_exc.Etcd3Exception
                raise cls(text, resp.reason)
            return resp

        resp = self._call(f"watch {prefix!r}", go)
        with self._lock:
            self._streams.add(resp)
        return resp

    def _forget_stream(self, resp: requests.Response) -> None:
        with self._lock:
            self._streams.discard(resp)
        resp.close()

    def health(self) -> dict[str, tuple[bool, str]]:
        """Per endpoint: (healthy, detail) from etcd's /health, asked with our client cert."""
        out: dict[str, tuple[bool, str]] = {}
        for i, c in enumerate(self._clients):
            ep = self._endpoint(i)
            try:
                resp = self._session.get(c.base_url + "/health", timeout=self.config.timeout)
            except requests.RequestException as exc:
                out[ep] = (False, _reason(exc))
                continue
            try:
                body = resp.json()
            except ValueError:
                out[ep] = (False, f"HTTP {resp.status_code}: {resp.text.strip()[:200]}")
                continue
            ok = resp.status_code == 200 and str(body.get("health")) == "true"
            out[ep] = (ok, json.dumps(body, sort_keys=True))
        return out

    def close(self) -> None:
        """Close the store; watches running in other threads end (their stream is shut down)."""
        self._closed = True
        with self._lock:
            streams = list(self._streams)
        for resp in streams:
            _shutdown_stream(resp)
        self._session.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown_stream(resp: requests.Response) -> None:
    """Unblock a thread reading a streaming response: shut the socket down under it."""
    try:
        fd = resp.raw._fp.fileno()  # type: ignore[union-attr]
        s = socket.socket(fileno=socket.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()
    except (AttributeError, OSError, ValueError):
        pass


def _reason(exc: BaseException) -> str:
    """A one-line reason from an etcd3gw/requests exception (they hide it in odd places)."""
    detail = getattr(exc, "detail_text", None)
    if detail:
        try:
            body = json.loads(detail)
            detail = body.get("message") or body.get("error") or detail
        except (ValueError, AttributeError):
            pass
        return str(detail).strip()[:300]
    text = str(exc) or type(exc).__name__
    return text.strip()[:300]


def open_store(config: EtcdConfig) -> EtcdStore:
    return EtcdStore(config)
