"""The ADD fast path's datastore round trips: one read (settings, handle, blocks at one
revision) and one transaction (block and handle, each compared on its revision); the
compares still catch a writer that came in between."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from labnet import ipam
from labnet.cni import ipam_plugin, settings
from labnet.cni.spec import parse_env
from labnet.etcd import keys
from labnet.etcd.store import KV, Snapshot
from labnet.ipam.memstore import MemStore
from labnet.settings import ClusterSettings, PoolSettings

POOL = ipam.Pool("10.100.0.0/16", 26)


class Counting(MemStore):
    """MemStore that logs every call, and can run a hook right after a (multi-key) read."""

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

    def snapshot(self, keys: Sequence[str] = (), prefixes: Sequence[str] = ()) -> Snapshot:
        self.calls.append(("read", ",".join([*keys, *prefixes])))
        out = super().snapshot(keys, prefixes)
        hook, self.after_range = self.after_range, None
        if hook is not None:
            hook()
        return out

    def cas_many(self, writes: Sequence[tuple[str, bytes | str, int]]) -> bool:
        self.calls.append(("txn", ",".join(k for k, _, _ in writes)))
        return super().cas_many(writes)


def test_add_in_an_affine_block_reads_each_key_once() -> None:
    s = Counting()
    first = ipam.auto_assign(s, "n1", "net.c1", POOL)
    s.calls.clear()
    second = ipam.auto_assign(s, "n1", "net.c2", POOL)
    assert second.block == first.block and second.ordinal == 1
    # the node's own block only (named by its affinity), not every block of the pool
    assert s.calls == [("read", f"{keys.handle('net.c2')},{keys.block(first.block)},{keys.affinities('n1')}"),
                       ("txn", f"{keys.block(first.block)},{keys.handle('net.c2')}")], s.calls


def test_a_process_new_to_the_node_reads_its_blocks_in_a_second_trip_not_the_pool() -> None:
    s = Counting()
    for n in ("n1", "n2", "n3"):
        ipam.auto_assign(s, n, f"net.{n}", POOL)
    ipam.allocator._affine_seen.clear()
    s.calls.clear()
    a = ipam.auto_assign(s, "n2", "net.x", POOL)
    assert a.affinity == "n2" and not a.borrowed
    assert [c[0] for c in s.calls] == ["read", "read", "txn"], s.calls
    assert all(keys.BLOCKS not in c[1].split(",") for c in s.calls[:2]), s.calls


def test_full_blocks_fall_back_to_the_whole_pool_then_claim() -> None:
    s = Counting()
    pool = ipam.Pool("10.100.0.0/29", 30)  # two blocks of 4
    got = [ipam.auto_assign(s, "n1", f"net.c{i}", pool) for i in range(6)]
    assert len({g.address for g in got}) == 6
    assert len({g.block for g in got}) == 2 and all(g.affinity == "n1" for g in got)


def test_a_repeated_add_finds_its_borrowed_address() -> None:
    s = Counting()
    pool = ipam.Pool("10.100.0.0/29", 30)
    for i in range(4):
        ipam.auto_assign(s, "n1", f"net.a{i}", pool)  # n1 fills and claims both blocks... the second
    ipam.auto_assign(s, "n2", "net.b0", pool)         # n2 takes what is left, or borrows
    first = ipam.auto_assign(s, "n2", "net.b1", pool)
    again = ipam.auto_assign(s, "n2", "net.b1", pool)
    assert again.address == first.address


def test_ipam_plugin_add_reads_settings_with_the_blocks_and_shares_them() -> None:
    s = Counting()
    s.put(keys.config("cluster"), '{"pool": {"cidr": "10.100.0.0/16"}}')
    ipam.auto_assign(s, "n1", "k8s-pod-network.c0", POOL)  # the node's block exists
    s.calls.clear()
    memo = settings.RequestMemo()
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "nodename": "n1"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/"}
    out = ipam_plugin._dispatch(parse_env(env), conf, s, memo)
    assert out is not None and out["ips"][0]["address"].endswith("/32"), out
    assert [c[0] for c in s.calls] == ["read", "txn"], s.calls
    assert settings.CLUSTER_KEY in s.calls[0][1], s.calls
    settings.cluster(conf, s, memo)  # the plugin's MTU: served by the same read
    assert [c[0] for c in s.calls] == ["read", "txn"], s.calls


def test_a_block_write_between_the_range_read_and_the_cas_is_not_lost() -> None:
    s = Counting()
    first = ipam.auto_assign(s, "n1", "net.c1", POOL)
    other = MemStore.__new__(MemStore)
    other.__dict__ = s.__dict__  # the same data, without the hook: a concurrent writer
    s.after_range = lambda: ipam.auto_assign(other, "n1", "net.c2", POOL)
    mine = ipam.auto_assign(s, "n1", "net.c3", POOL)
    theirs = ipam.lookup(s, "net.c2")[0]
    assert s.conflicts == 1, f"expected the stale block txn to fail once, conflicts={s.conflicts}"
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
    assert s.conflicts >= 1, f"expected the txn on the stale block and absent handle to fail, conflicts={s.conflicts}"
    assert [a.address for a in held] == [got.address], (held, got)
    assert ipam.usage(s)["allocated"] == 2


def test_request_memo_reads_a_key_once_for_concurrent_readers() -> None:
    s = Counting()
    s.put(keys.config("cluster"), '{"pool": {"cidr": "10.100.0.0/16"}}')
    memo = settings.RequestMemo()
    conf: dict[str, Any] = {"name": "net"}
    out: list[ClusterSettings] = []
    threads = [threading.Thread(target=lambda: out.append(settings.cluster(conf, s, memo))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.calls.count(("get", keys.config("cluster"))) == 1, s.calls
    assert out == [ClusterSettings(PoolSettings("10.100.0.0/16", 26, "always"))] * 4
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


def test_memstore_multi_key_primitives_behave_like_etcd() -> None:
    s = MemStore()
    ra = s.put("/m/a", "1")
    snap = s.snapshot(["/m/a", "/m/absent"], ["/m/"])
    assert snap.keys["/m/a"] is not None and snap.keys["/m/a"].mod_revision == ra and snap.keys["/m/absent"] is None
    assert not s.cas_many([("/m/a", "2", ra), ("/m/b", "b", 1)])  # /m/b is absent: revision 0
    assert s.get("/m/a").value == b"1" and s.get("/m/b") is None  # type: ignore[union-attr]
    assert s.cas_many([("/m/a", "2", ra), ("/m/b", "b", 0)])
    a, b = s.get("/m/a"), s.get("/m/b")
    assert a is not None and b is not None and a.mod_revision == b.mod_revision == s.revision(), (a, b)


DUAL = '{"pool": {"cidr": "10.100.0.0/16"}, "pool6": {"cidr": "fd00:100::/48"}}'


def _ipam_add(s: MemStore, cid: str, args: str = "", **conf: Any) -> Any:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/",
           "CNI_ARGS": args}
    return ipam_plugin._dispatch(parse_env(env), {"cniVersion": "1.0.0", "name": "net", "nodename": "n1", **conf}, s)


def test_a_refused_dual_stack_add_assigns_nothing() -> None:
    from labnet.cni.spec import CniError

    s = MemStore()
    s.put(keys.config("cluster"), DUAL)
    cases = [("", {"ipam": {"type": "labnet-ipam", "assign_ipv6": "maybe"}}, "assign_ipv6"),
             ("IP=fd00:100::5,fd00:100::6", {}, "one IPv6 address"),
             ("IP=fd00:100::5", {"ipam": {"type": "labnet-ipam", "assign_ipv6": "false"}}, "no IPv6 pool")]
    for args, conf, says in cases:
        try:
            _ipam_add(s, "c1", args, **conf)
        except CniError as err:
            assert says in str(err), (args, conf, str(err))
        else:
            raise AssertionError(f"{args} {conf}: expected a refusal")
        assert ipam.lookup(s, "net.c1") == [], f"{args} {conf}: an address stayed assigned"


def test_an_ipv6_failure_gives_back_the_new_ipv4_address_but_not_a_running_pods() -> None:
    s = MemStore()
    s.put(keys.config("cluster"), DUAL)
    out = _ipam_add(s, "live", "IP=10.100.7.7,fd00:100::5")
    assert [ip["address"] for ip in out["ips"]] == ["10.100.7.7/32", "fd00:100::5/128"]
    try:  # the same pod asks again for another IPv6 address: refused, and it keeps both
        _ipam_add(s, "live", "IP=10.100.7.7,fd00:100::6")
    except ipam.IpamError as err:
        assert "already holds fd00:100::5" in str(err)
    else:
        raise AssertionError("a second IPv6 address for a pod was not refused")
    assert sorted(a.address for a in ipam.lookup(s, "net.live")) == ["10.100.7.7", "fd00:100::5"]
    try:  # a new pod asking for the live pod's IPv6 address: its new IPv4 address goes back
        _ipam_add(s, "new", "IP=fd00:100::5")
    except ipam.IpamError as err:
        assert "fd00:100::5" in str(err)
    else:
        raise AssertionError("a taken IPv6 address was given twice")
    assert ipam.lookup(s, "net.new") == []


def test_ipv4_only_cluster_refuses_an_ipv6_request_up_front() -> None:
    from labnet.cni.spec import CniError

    s = MemStore()
    s.put(keys.config("cluster"), '{"pool": {"cidr": "10.100.0.0/16"}}')
    try:
        _ipam_add(s, "c1", "IP=fd00::1")
    except CniError as err:
        assert err.code == 7 and "no IPv6 pool" in str(err)
    assert ipam.lookup(s, "net.c1") == []
    assert [ip["address"][-3:] for ip in _ipam_add(s, "c2")["ips"]] == ["/32"]
