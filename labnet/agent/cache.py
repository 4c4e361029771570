"""The agent's copy of the datastore keys it watches, kept current from watch events.

A block claim anywhere in the cluster fires two watch events on every agent; re-reading four
prefixes per event made every claim cost ~8 Range requests per node. The watch already carries
each key's new value, so the agent applies it here and rebuilds its snapshot from memory; the
periodic full read (`load`) stays as the safety net. Reads and events race, so every key keeps
the newest revision seen, and deletes leave a tombstone until a later full read covers them.
Call everything from one thread (the agent's event loop).
"""

from __future__ import annotations

from labnet.etcd.store import KV, Event


class KeyCache:
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.kvs: dict[str, dict[str, KV]] = {p: {} for p in prefixes}
        self._seq = 0  # counts applied events; a full read remembers where it started
        self._touched: dict[str, int] = {}  # key -> seq of its last event
        self._deleted: dict[str, int] = {}  # key -> revision of its delete

    def apply(self, prefix: str, ev: Event) -> bool:
        """One watch event for the watch on `prefix`; False if it was older than what we hold."""
        bucket = self.kvs[prefix]
        key, rev = ev.kv.key, ev.kv.mod_revision
        cur = bucket.get(key)
        if (cur is not None and cur.mod_revision > rev) or self._deleted.get(key, 0) > rev:
            return False
        self._seq += 1
        self._touched[key] = self._seq
        if ev.type == "put":
            bucket[key] = ev.kv
            self._deleted.pop(key, None)
        else:
            bucket.pop(key, None)
            self._deleted[key] = rev
        return True

    def mark(self) -> int:
        """Call right before a full read starts; pass the result to `load`."""
        return self._seq

    def load(self, mark: int, read: dict[str, list[KV]]) -> None:
        """Merge a full read of some prefixes. Keys with no event since `mark` take the read's
        value (or go, if the read lacks them); keys with a newer event keep the newer revision."""
        for prefix, kvs in read.items():
            bucket = self.kvs[prefix]
            fresh = {kv.key: kv for kv in kvs}
            for key in set(bucket) | set(fresh):
                got = fresh.get(key)
                if self._touched.get(key, 0) <= mark:
                    if got is None:
                        del bucket[key]
                    else:
                        bucket[key] = got
                    continue
                have = bucket.get(key)
                if (got is not None and (have is None or got.mod_revision > have.mod_revision)
                        and self._deleted.get(key, 0) < got.mod_revision):
                    bucket[key] = got
        # events before the read started are reflected in it: their bookkeeping is done
        self._touched = {k: s for k, s in self._touched.items() if s > mark}
        self._deleted = {k: r for k, r in self._deleted.items() if k in self._touched}

    def values(self, prefix: str) -> list[KV]:
        return sorted(self.kvs[prefix].values(), key=lambda kv: kv.key)

    def get(self, prefix: str, key: str) -> KV | None:
        return self.kvs[prefix].get(key)
