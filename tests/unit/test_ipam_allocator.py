"""Block-affinity IPAM against the in-memory store (same revision/cas semantics as etcd)."""

from __future__ import annotations

import ipaddress
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labnet import ipam
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore

POOL = ipam.Pool("10.100.0.0/16", 26)
POOL6 = ipam.Pool("fd00:10:244::/64", 122)
BOTH = pytest.mark.parametrize("pool", [POOL, POOL6], ids=["ipv4", "ipv6"])


def test_first_address_is_lowest_ordinal_of_a_26_with_host_affinity() -> None:
    s = MemStore()
    a = ipam.auto_assign(s, "ubuntu-3", "net.c1", POOL)
    net = ipaddress.IPv4Network(a.block)
    assert net.prefixlen == 26 and a.ordinal == 0 and a.address == str(net.network_address)
    assert a.affinity == "ubuntu-3" and not a.borrowed
    assert ipam.blocks_of(s, "ubuntu-3") == [a.block]
    assert json.loads(s.get(keys.block(a.block)).value)["affinity"] == "host:ubuntu-3"  # type: ignore[union-attr]
    assert json.loads(s.get(keys.handle("net.c1")).value) == {"handleID": "net.c1", "block": {a.block: 1}}  # type: ignore[union-attr]


@BOTH
def test_block_choice_is_deterministic_per_node_and_differs_between_nodes(pool: ipam.Pool) -> None:
    blocks = {n: ipam.auto_assign(MemStore(), n, "net.x", pool).block for n in ("ubuntu-1", "ubuntu-3")}
    again = {n: ipam.auto_assign(MemStore(), n, "net.x", pool).block for n in ("ubuntu-1", "ubuntu-3")}
    assert blocks == again
    assert blocks["ubuntu-1"] != blocks["ubuntu-3"]


@BOTH
def test_same_handle_gets_same_address(pool: ipam.Pool) -> None:
    s = MemStore()
    a = ipam.auto_assign(s, "n1", "net.c1", pool)
    assert ipam.auto_assign(s, "n1", "net.c1", pool) == a
    assert ipam.usage(s)["allocated"] == 1


def test_released_address_is_reused_last() -> None:
    s = MemStore()
    addrs = [ipam.auto_assign(s, "n1", f"net.c{i}", POOL).address for i in range(3)]
    assert ipam.release(s, "net.c0") == [addrs[0]]
    nxt = ipam.auto_assign(s, "n1", "net.c3", POOL).address
    assert nxt != addrs[0] and ipaddress.IPv4Address(nxt) == ipaddress.IPv4Address(addrs[2]) + 1
    # fill the rest of the block: the released one comes back only at the very end
    got = [ipam.auto_assign(s, "n1", f"net.d{i}", POOL).address for i in range(61)]
    assert got[-1] == addrs[0]


def test_release_unknown_handle_is_a_no_op() -> None:
    s = MemStore()
    assert ipam.release(s, "net.nothing") == []
    assert ipam.release(s, "net.nothing") == []


def test_full_block_claims_another_then_borrows_then_exhausts_naming_the_pool() -> None:
    s = MemStore()
    pool = ipam.Pool("10.9.0.0/28", 29)  # two blocks of 8
    b = ipam.auto_assign(s, "node-b", "net.b0", pool)
    got = [ipam.auto_assign(s, "node-a", f"net.a{i}", pool) for i in range(15)]
    own = [g for g in got if not g.borrowed]
    borrowed = [g for g in got if g.borrowed]
    assert len(own) == 8 and len(borrowed) == 7
    assert all(g.block == b.block and g.affinity == "node-b" for g in borrowed)
    assert ipam.blocks_of(s, "node-a") == [own[0].block]
    with pytest.raises(ipam.PoolExhausted, match=r"10\.9\.0\.0/28"):
        ipam.auto_assign(s, "node-a", "net.a-last", pool)
    assert len({g.address for g in got} | {b.address}) == 16


def test_node_claims_a_second_block_when_its_first_is_full() -> None:
    s = MemStore()
    pool = ipam.Pool("10.9.0.0/24", 28)
    got = [ipam.auto_assign(s, "n1", f"net.c{i}", pool) for i in range(17)]
    assert len({g.block for g in got}) == 2 and not any(g.borrowed for g in got)
    assert len(ipam.blocks_of(s, "n1")) == 2


def test_tunnel_address_is_first_of_the_nodes_block_and_idempotent() -> None:
    s = MemStore()
    s.put(keys.config("cluster"), json.dumps({"pool": {"cidr": "10.100.0.0/16", "block_size": 26}}))
    t = ipam.tunnel_address(s, "ubuntu-3")
    assert t == str(ipaddress.IPv4Network(ipam.blocks_of(s, "ubuntu-3")[0]).network_address)
    assert ipam.tunnel_address(s, "ubuntu-3") == t
    assert ipam.tunnel_handle("ubuntu-3") in ipam.usage(s)["handles"]


def test_gc_releases_invalid_attachments_and_orphans_only() -> None:
    s = MemStore()
    for c in ("keep", "drop"):
        ipam.auto_assign(s, "n1", f"k8s-pod-network.{c}", POOL)
    ipam.auto_assign(s, "n1", "other-net.drop", POOL)
    tunnel = ipam.auto_assign(s, "n1", ipam.tunnel_handle("n1"), POOL)
    # an orphan: block entry without handle record
    orphan = ipam.auto_assign(s, "n1", "k8s-pod-network.orphan", POOL)
    s.delete(keys.handle("k8s-pod-network.orphan"))
    released = ipam.gc(s, "k8s-pod-network", {"k8s-pod-network.keep"}, "n1")
    assert sorted(released) == ["k8s-pod-network.drop", "k8s-pod-network.orphan"]
    used = {a for b in ipam.usage(s)["blocks"] for a in b["allocated"]}
    assert tunnel.address in used and orphan.address not in used
    assert ipam.usage(s)["handles"] == sorted(["k8s-pod-network.keep", "other-net.drop", ipam.tunnel_handle("n1")])


def test_gc_on_one_node_leaves_the_other_nodes_pods_alone() -> None:
    """CNI GC's valid attachments are one node's runtime's: node-b's pods, borrowed addresses
    included, are not node-a's to release."""
    pool = ipam.Pool("10.9.0.0/28", 29)
    s = MemStore()
    a = ipam.auto_assign(s, "node-a", "net.a-gone", pool)
    ipam.auto_assign(s, "node-b", "net.b-first", pool)
    b_own = [ipam.auto_assign(s, "node-b", f"net.b{i}", pool) for i in range(7)]
    b_borrowed = ipam.auto_assign(s, "node-b", "net.b-borrowed", pool)  # node-b's block is full
    assert b_borrowed.borrowed and b_borrowed.block == a.block, b_borrowed
    released = ipam.gc(s, "net", set(), "node-a")
    assert released == ["net.a-gone"], f"gc on node-a: expected only node-a's handle, released {released}"
    held = ipam.usage(s)["handles"]
    assert "net.b-borrowed" in held and all(f"net.b{i}" in held for i in range(7)), held
    assert ipam.lookup(s, "net.b-borrowed")[0].address == b_borrowed.address
    assert ipam.gc(s, "net", {"net.b-first"}, "node-b") == sorted(["net.b-borrowed", *(f"net.b{i}" for i in range(7))])
    assert ipam.usage(s)["handles"] == ["net.b-first"]
    assert len(b_own) == 7


@BOTH
def test_concurrent_assignments_never_share_an_address(pool: ipam.Pool) -> None:
    s = MemStore()
    results: list[ipam.Assignment] = []
    lock = threading.Lock()

    def worker(node: str, i: int) -> None:
        a = ipam.auto_assign(s, node, f"net.{node}-{i}", pool)
        with lock:
            results.append(a)

    threads = [threading.Thread(target=worker, args=(f"n{i % 3}", i)) for i in range(90)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.address for r in results}) == 90
    for node in ("n0", "n1", "n2"):
        assert len(ipam.blocks_of(s, node, pool.version)) == 1  # racing siblings never claim a spare block


def test_same_container_concurrently_gets_one_address() -> None:
    s = MemStore()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(ipam.auto_assign(s, "n1", "net.same", POOL).address))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and ipam.usage(s)["allocated"] == 1


def test_bad_pool_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="block_size /8"):
        ipam.Pool("10.0.0.0/16", 8)
    with pytest.raises(ValueError, match="not an IPv4 network"):
        ipam.Pool("10.0.0.1/16", 26)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=60))
def test_model_never_double_allocates(ops: list[tuple[bool, int]]) -> None:
    """Random assign/release sequences: allocations stay unique and the store stays consistent."""
    s = MemStore()
    pool = ipam.Pool("10.9.0.0/27", 29)
    held: dict[str, str] = {}
    for assign, k in ops:
        hid = f"net.c{k}"
        if assign:
            try:
                held[hid] = ipam.auto_assign(s, f"n{k % 2}", hid, pool).address
            except ipam.PoolExhausted:
                assert len(held) == 32
        else:
            ipam.release(s, hid)
            held.pop(hid, None)
        assert len(set(held.values())) == len(held)
        u = ipam.usage(s)
        assert u["allocated"] == len(held)
        assert sorted(u["handles"]) == sorted(held)


def test_a_stale_handle_without_addresses_is_taken_over() -> None:
    s = MemStore()
    a = ipam.auto_assign(s, "n1", "net.c1", POOL)
    # the block lost the allocation (e.g. swept by hand) but the handle record stayed
    blk = ipam.Block.decode(s.get(keys.block(a.block)).value)  # type: ignore[union-attr]
    blk.release("net.c1")
    s.put(keys.block(a.block), blk.encode())
    b = ipam.auto_assign(s, "n1", "net.c1", POOL)
    assert ipam.lookup(s, "net.c1") == [b]


def test_a_claim_whose_answer_is_lost_still_leaves_the_block_routed() -> None:
    # etcd did the claim, but its answer timed out: the retry must find the block AND its
    # affinity record (the agent's index of its own blocks), not a block nobody routes
    from labnet.etcd.store import DatastoreUnavailable

    class LostAnswer(MemStore):
        lost = False

        def cas_many(self, writes):  # type: ignore[no-untyped-def]
            done = super().cas_many(writes)
            if not self.lost:
                self.lost = True
                raise DatastoreUnavailable("etcd at https://10.20.1.11:2379 is unreachable: Read timed out")
            return done

    s = LostAnswer()
    with pytest.raises(DatastoreUnavailable):
        ipam.tunnel_address(s, "node-170", POOL)
    addr = ipam.tunnel_address(s, "node-170", POOL)  # the agent's retry
    (block,) = ipam.blocks_of(s, "node-170")
    assert ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(block), (addr, block)
    # a stale affinity record of the node does not block a new claim of that block
    s2 = MemStore()
    first = POOL.node_order("node-9")[0]
    s2.put(keys.affinity("node-9", first), json.dumps({"state": "confirmed"}))
    assert ipaddress.IPv4Address(ipam.tunnel_address(s2, "node-9", POOL)) in ipaddress.IPv4Network(first)


# -- a requested address (podman's --ip, a pod's `ip:`): Calico's AssignIP ------------------------


def test_assign_ip_claims_the_block_of_a_free_address_for_the_node() -> None:
    s = MemStore()
    a = ipam.assign_ip(s, "n1", "net.want", POOL, "10.100.200.7")
    assert (a.address, a.block, a.ordinal, a.affinity, a.borrowed) == ("10.100.200.7", "10.100.200.0/26", 7, "n1", False)
    assert ipam.blocks_of(s, "n1") == ["10.100.200.0/26"]
    assert ipam.assign_ip(s, "n1", "net.want", POOL, "10.100.200.7") == a, "a repeated ADD gets the same"
    # the node's next automatic address comes from that block too, never the requested one again
    b = ipam.auto_assign(s, "n1", "net.next", POOL)
    assert b.block == a.block and b.address != a.address


def test_assign_ip_borrows_from_another_nodes_block_and_refuses_what_is_taken() -> None:
    s = MemStore()
    owner = ipam.auto_assign(s, "n1", "net.first", POOL)
    free = str(ipaddress.IPv4Network(owner.block).network_address + 9)
    b = ipam.assign_ip(s, "n2", "net.borrower", POOL, free)
    assert b.borrowed and b.affinity == "n1" and ipam.blocks_of(s, "n2") == []
    with pytest.raises(ipam.AddressUnavailable, match=f"{owner.address} is taken: handle net.first holds it") as e:
        ipam.assign_ip(s, "n2", "net.thief", POOL, owner.address)
    assert e.value.code == 101
    with pytest.raises(ipam.AddressUnavailable, match="outside IP pool 10.100.0.0/16"):
        ipam.assign_ip(s, "n2", "net.out", POOL, "10.20.30.7")
    with pytest.raises(ipam.AddressUnavailable, match="already holds"):
        ipam.assign_ip(s, "n1", "net.first", POOL, free)
    assert ipam.usage(s)["allocated"] == 2 and sorted(ipam.usage(s)["handles"]) == ["net.borrower", "net.first"]


def test_concurrent_requests_for_one_address_give_it_once() -> None:
    s = MemStore()
    won: list[str] = []
    lost: list[str] = []

    def worker(i: int) -> None:
        try:
            ipam.assign_ip(s, f"n{i % 3}", f"net.c{i}", POOL, "10.100.7.7")
            won.append(f"net.c{i}")
        except ipam.AddressUnavailable as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 11, (won, lost[:2])
    assert ipam.usage(s)["allocated"] == 1
