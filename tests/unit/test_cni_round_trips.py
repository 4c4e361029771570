"""The ADD fast path's datastore round trips: values already read are reused, and the
compare-and-swaps that make that safe still catch a writer that came in between."""

from __future__ import annotations

import threading
from typing import Any

from labnet import ipam
from labnet.cni import settings
from labnet.etcd import keys
from labnet.etcd.store import KV
from labnet.ipam.memstore import MemStore

POOL = ipam.Pool("10.100.0.0/16", 26)


class Counting(MemStore):
    """MemStore that logs every call, and can run a hook right after a range read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.after_range: Any = None

    def get(self, key: str) -> KV | None:
        self.calls.append(("get", key))
        return super().get(key)

    def range(self, prefix: str) -> list[KV]:
        self.calls.append(("range", prefix))
        out = super().range(prefix)
        hook, self.after_range = self.after_range, None
        if hook is not None:
            hook()
        return out

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        self.calls.append(("cas", key))
        return super().cas(key, value, mod_revision, lease)


def test_add_in_an_affine_block_reads_each_key_once() -> None:
    s = Counting()
    first = ipam.auto_assign(s, "n1", "net.c1", POOL)
    s.calls.clear()
    second = ipam.auto_assign(s, "n1", "net.c2", POOL)
    assert second.block == first.block and second.ordinal == 1
    assert s.calls == [("get", keys.handle("net.c2")), ("range", keys.BLOCKS),
                       ("cas", keys.block(first.block)), ("cas", keys.handle("net.c2"))], s.calls


def test_a_block_write_between_the_range_read_and_the_cas_is_not_lost() -> None:
    s = Counting()
    first = ipam.auto_assign(s, "n1", "net.c1", POOL)
    other = MemStore.__new__(MemStore)
    other.__dict__ = s.__dict__  # the same data, without the hook: a concurrent writer
    s.after_range = lambda: ipam.auto_assign(other, "n1", "net.c2", POOL)
    mine = ipam.auto_assign(s, "n1", "net.c3", POOL)
    theirs = ipam.lookup(s, "net.c2")[0]
    assert s.conflicts == 1, f"expected the stale block cas to fail once, conflicts={s.conflicts}"
    assert len({first.address, theirs.address, mine.address}) == 3, (first, theirs, mine)
    assert ipam.usage(s)["allocated"] == 3


def test_a_handle_created_meanwhile_wins_and_ours_is_given_back() -> None:
    s = Counting()
    ipam.auto_assign(s, "n1", "net.c0", POOL)
    other = MemStore.__new__(MemStore)
    other.__dict__ = s.__dict__
    s.after_range = lambda: ipam.auto_assign(other, "n1", "net.c1", POOL)  # same container, raced
    got = ipam.auto_assign(s, "n1", "net.c1", POOL)
    held = ipam.lookup(s, "net.c1")
    assert s.conflicts >= 2, f"expected a lost block cas and a lost handle create, conflicts={s.conflicts}"
    assert [a.address for a in held] == [got.address], (held, got)
    assert ipam.usage(s)["allocated"] == 2


def test_request_memo_reads_a_key_once_for_concurrent_readers() -> None:
    s = Counting()
    s.put(keys.config("cluster"), '{"pool": {"cidr": "10.100.0.0/16"}}')
    memo = settings.RequestMemo()
    conf: dict[str, Any] = {"name": "net"}
    out: list[settings.Cluster] = []
    threads = [threading.Thread(target=lambda: out.append(settings.cluster(conf, s, memo))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.calls.count(("get", keys.config("cluster"))) == 1, s.calls
    assert out == [settings.Cluster("10.100.0.0/16", 26, "ipip", None)] * 4
    settings.cluster(conf, s)  # without a memo: a fresh read every time
    assert s.calls.count(("get", keys.config("cluster"))) == 2


def test_request_memo_hands_every_reader_the_same_failure() -> None:
    class Down(MemStore):
        def get(self, key: str) -> KV | None:
            raise settings.DatastoreUnavailable("etcd down")

    memo = settings.RequestMemo()
    for _ in range(2):
        try:
            settings.cluster({"name": "net", "etcd_endpoints": "http://x:2379"}, Down(), memo)
        except settings.CniError as err:
            assert err.code == 11 and "unreachable" in err.msg
        else:
            raise AssertionError("expected a CniError for an unreachable etcd")
