"""The datastore interface every labnet component codes against.

`labnet.etcd.client.EtcdStore` is the one real implementation (the only code that talks to
etcd). Keys are plain str, values bytes; every write that can race uses `cas`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0

    def text(self) -> str:
        return self.value.decode()


@dataclass(frozen=True)
class Event:
    type: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach the lab's etcd. Paths are as seen from where the client runs."""

    endpoints: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """What `Datastore.snapshot` read: each key (None if absent) and each prefix's KVs, sorted."""

    keys: dict[str, KV | None]
    prefixes: dict[str, list[KV]]
    # prefixes that hold only some of their keys (IPAM reads only a node's own blocks)
    partial: frozenset[str] = frozenset()


class DatastoreUnavailable(Exception):
    """etcd could not be reached (CNI maps this to code 11, try again)."""


class Conflict(Exception):
    """A compare-and-swap lost: the key's revision moved."""


class LeaseExpired(Exception):
    """keepalive on a lease etcd no longer knows (it expired or was revoked)."""


class Datastore(Protocol):
    def get(self, key: str) -> KV | None: ...

    def range(self, prefix: str) -> list[KV]: ...

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        """Unconditional write; returns the new revision."""
        ...

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        """Write only if the key's mod_revision is `mod_revision` (0: the key must not exist)."""
        ...

    def cas_many(self, writes: Sequence[tuple[str, bytes | str, int | None]]) -> bool:
        """All of `writes` (key, value, mod_revision as in `cas`; None: whatever it is) in one
        atomic step, or none: False if any compared key's revision moved."""
        ...

    def snapshot(self, keys: Sequence[str] = (), prefixes: Sequence[str] = ()) -> Snapshot:
        """Several keys and prefixes read at one revision (one round trip)."""
        ...

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete (only at `mod_revision` when given). False if nothing was deleted."""
        ...

    def delete_prefix(self, prefix: str) -> int: ...

    def grant_lease(self, ttl: int) -> int: ...

    def keepalive(self, lease: int) -> None: ...

    def watch(self, prefix: str, start_revision: int | None = None) -> Iterator[Event]:
        """Events under `prefix`; resumes from the last revision seen after a reconnect."""
        ...

    def close(self) -> None: ...
