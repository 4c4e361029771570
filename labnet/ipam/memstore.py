"""An in-memory Datastore for fast unit tests of the allocator.

It keeps etcd's revision semantics exactly: one global revision that every write bumps,
per-key mod/create revision and version, and `cas` comparing mod_revision (0 = absent).
Thread-safe, so concurrency tests can race real threads against it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from labnet.etcd.store import KV, Event, Snapshot


class MemStore:
    def __init__(self) -> None:
        self._data: dict[str, KV] = {}
        self._rev = 1
        self._lock = threading.Lock()
        self._history: list[Event] = []
        self._next_lease = 1
        self.writes = 0  # successful writes, for tests that count contention
        self.conflicts = 0  # failed cas, likewise

    def _write(self, key: str, value: bytes | str, same_revision: bool = False) -> int:
        """`same_revision`: another write of the same transaction (etcd gives a txn one revision)."""
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if not same_revision:
            self._rev += 1
        old = self._data.get(key)
        kv = KV(
            key=key, value=raw, mod_revision=self._rev,
            create_revision=old.create_revision if old else self._rev,
            version=(old.version + 1) if old else 1,
        )
        self._data[key] = kv
        self._history.append(Event("put", kv))
        self.writes += 1
        return self._rev

    def get(self, key: str) -> KV | None:
        with self._lock:
            return self._data.get(key)

    def range(self, prefix: str) -> list[KV]:
        with self._lock:
            return [self._data[k] for k in sorted(self._data) if k.startswith(prefix)]

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        with self._lock:
            return self._write(key, value)

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        with self._lock:
            old = self._data.get(key)
            current = old.mod_revision if old else 0
            if current != mod_revision:
                self.conflicts += 1
                return False
            self._write(key, value)
            return True

    def cas_many(self, writes: Sequence[tuple[str, bytes | str, int | None]]) -> bool:
        with self._lock:
            for key, _, rev in writes:
                if rev is None:
                    continue
                old = self._data.get(key)
                if (old.mod_revision if old else 0) != rev:
                    self.conflicts += 1
                    return False
            for i, (key, value, _) in enumerate(writes):
                self._write(key, value, same_revision=i > 0)
            return True

    def snapshot(self, keys: Sequence[str] = (), prefixes: Sequence[str] = ()) -> Snapshot:
        with self._lock:
            return Snapshot({k: self._data.get(k) for k in keys},
                            {p: [self._data[k] for k in sorted(self._data) if k.startswith(p)] for p in prefixes})

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        with self._lock:
            old = self._data.get(key)
            if old is None:
                return False
            if mod_revision is not None and old.mod_revision != mod_revision:
                self.conflicts += 1
                return False
            self._rev += 1
            del self._data[key]
            self._history.append(Event("delete", KV(key, b"", self._rev, old.create_revision, 0)))
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            keys = [k for k in self._data if k.startswith(prefix)]
        return sum(1 for k in keys if self.delete(k))

    def grant_lease(self, ttl: int) -> int:
        with self._lock:
            self._next_lease += 1
            return self._next_lease

    def keepalive(self, lease: int) -> None:
        return None

    def watch(self, prefix: str, start_revision: int | None = None) -> Iterator[Event]:
        """Past events only (from start_revision); enough for tests, never blocks."""
        with self._lock:
            events = list(self._history)
        for ev in events:
            if ev.kv.key.startswith(prefix) and (start_revision is None or ev.kv.mod_revision >= start_revision):
                yield ev

    def revision(self) -> int:
        with self._lock:
            return self._rev

    def close(self) -> None:
        return None
