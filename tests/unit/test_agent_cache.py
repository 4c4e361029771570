"""The agent's watch cache: events and full reads race, the newest revision of each key wins."""

from __future__ import annotations

import json

from labnet.agent.cache import KeyCache
from labnet.agent.config import AgentConfig, EtcdSettings
from labnet.agent.daemon import WATCHED, Agent
from labnet.agent.nodes import NodeRecord
from labnet.etcd import keys
from labnet.etcd.store import KV, Event
from labnet.ipam.memstore import MemStore

P = "/p/"


def kv(key: str, rev: int, value: bytes = b"v") -> KV:
    return KV(key, value, rev)


def put(key: str, rev: int, value: bytes = b"v") -> Event:
    return Event("put", kv(key, rev, value))


def delete(key: str, rev: int) -> Event:
    return Event("delete", KV(key, b"", rev))


def test_events_update_the_cache_and_stale_ones_are_ignored() -> None:
    c = KeyCache((P,))
    assert c.apply(P, put("/p/a", 5, b"new"))
    assert not c.apply(P, put("/p/a", 4, b"old")), "an older put must not win over a newer one"
    assert c.get(P, "/p/a") == kv("/p/a", 5, b"new")
    assert c.apply(P, delete("/p/a", 6))
    assert not c.apply(P, put("/p/a", 5, b"new")), "a put older than the delete must not resurrect the key"
    assert c.values(P) == []


def test_a_full_read_replaces_keys_without_newer_events() -> None:
    c = KeyCache((P,))
    c.apply(P, put("/p/gone", 1))
    c.apply(P, put("/p/b", 1))
    c.load(c.mark(), {P: [kv("/p/b", 3), kv("/p/a", 2)]})
    assert c.values(P) == [kv("/p/a", 2), kv("/p/b", 3)], "missed events: the full read is the truth"


def test_events_during_a_full_read_are_not_undone_by_it() -> None:
    c = KeyCache((P,))
    c.load(c.mark(), {P: [kv("/p/old", 1), kv("/p/x", 1)]})
    mark = c.mark()  # the read starts; then, before it returns, three events land
    c.apply(P, put("/p/new", 7))  # created after the read saw the prefix
    c.apply(P, delete("/p/old", 8))  # deleted after the read saw it
    c.apply(P, put("/p/x", 9, b"x9"))
    c.load(mark, {P: [kv("/p/old", 1), kv("/p/x", 1)]})
    assert c.values(P) == [kv("/p/new", 7), kv("/p/x", 9, b"x9")]
    # the next read, started after those events, is the truth again
    c.load(c.mark(), {P: [kv("/p/x", 9, b"x9")]})
    assert c.values(P) == [kv("/p/x", 9, b"x9")]


def test_the_cached_snapshot_equals_a_fresh_read() -> None:
    store = MemStore()
    store.put(keys.config("cluster"), json.dumps(
        {"pool": {"cidr": "10.100.0.0/29", "block_size": 30, "ipip": "always"}, "bgp": {"asn": 64512}}))
    store.put(keys.node("a"), NodeRecord("a", "10.20.30.1/24").encode())
    agent = Agent(AgentConfig(etcd=EtcdSettings(["http://127.0.0.1:1"])), store=store)
    agent.name = "a"
    mark = agent._cache.mark()
    agent._cache.load(mark, agent._read_all())
    rev = store.revision()
    store.put(keys.node("b"), NodeRecord("b", "10.20.30.2/24").encode())
    store.put(keys.affinity("a", "10.100.0.0/30"), json.dumps({"state": "confirmed"}))
    for prefix in WATCHED:
        for ev in store.watch(prefix, start_revision=rev + 1):
            agent._cache.apply(prefix, ev)
    assert agent._cached_snapshot() == agent._read_snapshot()
    assert agent._cached_snapshot().my_blocks == ["10.100.0.0/30"]
