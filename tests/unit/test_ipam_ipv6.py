"""IPv6 block-affinity IPAM beside IPv4: Calico's keys, /122 blocks, one handle per pod with an
address of each family. Mirrors test_ipam_allocator.py (the IPv4 tests)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading

import pytest
from test_cni_round_trips import Counting  # the store that logs its calls

from labnet import ipam
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore

POOL4 = ipam.Pool("10.100.0.0/16", 26)
POOL6 = ipam.Pool("fd00:10:244::/64", 122)


def block_doc(s: MemStore, cidr: str) -> dict[str, object]:
    kv = s.get(keys.block(cidr))
    assert kv is not None, f"no block record at {keys.block(cidr)}"
    return dict(json.loads(kv.value))


# -- keys: Calico's layout (libcalico-go BlockKey / BlockAffinityKey: ipv<version>, '/' -> '-') ----


def test_ipv6_keys_are_calicos_layout() -> None:
    cidr = "fd00:10:244::/122"
    assert keys.block(cidr) == "/labnet/calico/ipam/v2/assignment/ipv6/block/fd00:10:244::-122"
    assert keys.affinity("node-1", cidr) == "/labnet/calico/ipam/v2/host/node-1/ipv6/block/fd00:10:244::-122"
    assert keys.blocks(6) == keys.BLOCKS6 == "/labnet/calico/ipam/v2/assignment/ipv6/block/"
    assert keys.affinities("node-1", 6) == "/labnet/calico/ipam/v2/host/node-1/ipv6/block/"
    assert keys.affinities("node-1", None) == "/labnet/calico/ipam/v2/host/node-1/"
    assert keys.cidr_from_key(keys.cidr_key(cidr)) == cidr
    assert keys.parse_affinity(keys.affinity("node-1", cidr)) == ("node-1", cidr)
    assert keys.parse_affinity(keys.block(cidr)) is None
    with pytest.raises(ValueError, match="neither 4 nor 6"):
        keys.blocks(5)


def test_ipv4_keys_are_unchanged() -> None:
    assert keys.block("10.100.163.128/26") == "/labnet/calico/ipam/v2/assignment/ipv4/block/10.100.163.128-26"
    assert keys.affinity("n1", "10.100.163.128/26") == "/labnet/calico/ipam/v2/host/n1/ipv4/block/10.100.163.128-26"
    assert keys.BLOCKS == "/labnet/calico/ipam/v2/assignment/ipv4/block/"
    assert keys.affinities("n1") == "/labnet/calico/ipam/v2/host/n1/ipv4/block/"
    assert keys.affinities() == "/labnet/calico/ipam/v2/host/"
    assert keys.parse_affinity(keys.affinity("n1", "10.100.163.128/26")) == ("n1", "10.100.163.128/26")


# -- Pool --------------------------------------------------------------------------------------


def test_ipv6_pool_helpers() -> None:
    assert ipam.Pool("fd00:10:244::/64").block_size == 122, "Calico's IPv6 default block"
    assert ipam.Pool("10.100.0.0/16").block_size == 26
    assert POOL6.version == 6 and POOL6.n_blocks == 1 << 58 and POOL6.block_len == 64
    assert POOL6.block_at(0) == "fd00:10:244::/122"
    assert POOL6.block_at(1) == "fd00:10:244::40/122"
    assert POOL6.block_at(POOL6.n_blocks - 1) == "fd00:10:244:0:ffff:ffff:ffff:ffc0/122"
    with pytest.raises(IndexError):
        POOL6.block_at(POOL6.n_blocks)
    assert POOL6.index_of("fd00:10:244::40/122") == 1
    assert POOL6.contains_block("fd00:10:244::40/122")
    assert not POOL6.contains_block("fd00:10:244::/121")  # not a block of this size
    assert not POOL6.contains_block("fd00:10:245::/122")  # outside
    assert not POOL6.contains_block("10.100.0.0/26") and not POOL4.contains_block("fd00:10:244::/122")
    walk = POOL6.node_order("node-1")
    assert walk[0] == POOL6.block_at(walk.start) and walk[1] == POOL6.block_at((walk.start + 1) % POOL6.n_blocks)
    rank = POOL6.rank("node-1")
    assert rank(walk[0]) == 0 and rank(walk[1]) == 1 and rank(walk[-1]) == POOL6.n_blocks - 1


def test_tiny_ipv6_pool_walks_every_block_once() -> None:
    pool = ipam.Pool("fd00::/120", 122)
    order = list(pool.node_order("n1"))
    assert sorted(order, key=pool.index_of) == [f"fd00::{x}/122" for x in ("", "40", "80", "c0")]
    assert [pool.rank("n1")(c) for c in order] == [0, 1, 2, 3]


def test_bad_ipv6_pool_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="block_size /118 must be between /120 and /128"):
        ipam.Pool("fd00::/120", 118)
    with pytest.raises(ValueError, match="block_size /100 must be between /116 and /128"):
        ipam.Pool("fd00::/64", 100)  # a block lists each of its addresses: Calico stops at /116
    with pytest.raises(ValueError, match="not an IPv6 network"):
        ipam.Pool("fd00::1/64", 122)


def test_ipv4_walk_is_the_one_it_always_was() -> None:
    """The walk is computed now, not tabled: same blocks in the same order as the old table."""

    def old(pool: ipam.Pool, node: str) -> list[str]:
        n, base, step = pool.n_blocks, int(pool.network.network_address), pool.block_len
        start = int(hashlib.sha256(node.encode()).hexdigest(), 16) % n
        return [f"{ipaddress.IPv4Address(base + ((start + k) % n) * step)}/{pool.block_size}" for k in range(n)]

    for pool in (POOL4, ipam.Pool("10.9.0.0/28", 29), ipam.Pool("10.9.0.0/24", 28)):
        for node in ("ubuntu-1", "ubuntu-3", "node-9", "n1"):
            want = old(pool, node)
            assert list(pool.node_order(node)) == want
            rank = pool.rank(node)
            assert [rank(c) for c in want] == list(range(len(want)))


# -- auto_assign -------------------------------------------------------------------------------


def test_first_ipv6_address_is_lowest_ordinal_of_a_122_with_host_affinity() -> None:
    s = MemStore()
    a = ipam.auto_assign(s, "ubuntu-3", "net.c1", POOL6)
    net = ipaddress.IPv6Network(a.block)
    assert net.prefixlen == 122 and net.subnet_of(POOL6.network)  # type: ignore[arg-type]
    assert a.ordinal == 0 and a.address == str(net.network_address) and a.version == 6
    assert a.host_prefix == f"{a.address}/128"
    assert a.affinity == "ubuntu-3" and not a.borrowed
    assert a.block == POOL6.node_order("ubuntu-3")[0]
    assert ipam.blocks_of(s, "ubuntu-3", 6) == [a.block]
    assert ipam.blocks_of(s, "ubuntu-3") == [], "blocks_of is IPv4 unless asked"
    assert ipam.blocks_of(s, "ubuntu-3", None) == [a.block]
    doc = block_doc(s, a.block)
    assert doc["affinity"] == "host:ubuntu-3" and len(doc["allocations"]) == 64  # type: ignore[arg-type]
    assert s.get(f"{keys.IPAM}/assignment/ipv6/block/{a.block.replace('/', '-')}") is not None
    assert s.get(f"{keys.IPAM}/host/ubuntu-3/ipv6/block/{a.block.replace('/', '-')}") is not None
    assert s.range(keys.BLOCKS) == [] and s.range(keys.affinities("ubuntu-3")) == []
    assert json.loads(s.get(keys.handle("net.c1")).value) == {"handleID": "net.c1", "block": {a.block: 1}}  # type: ignore[union-attr]


def test_released_ipv6_address_is_reused_last() -> None:
    s = MemStore()
    addrs = [ipam.auto_assign(s, "n1", f"net.c{i}", POOL6).address for i in range(3)]
    assert [ipaddress.IPv6Address(x) for x in addrs[1:]] == [ipaddress.IPv6Address(addrs[0]) + i for i in (1, 2)]
    assert ipam.release(s, "net.c0") == [addrs[0]]
    nxt = ipam.auto_assign(s, "n1", "net.c3", POOL6).address
    assert ipaddress.IPv6Address(nxt) == ipaddress.IPv6Address(addrs[2]) + 1
    got = [ipam.auto_assign(s, "n1", f"net.d{i}", POOL6).address for i in range(61)]
    assert got[-1] == addrs[0], "the released address comes back only when the block is otherwise full"
    # the block stays the node's when empty (as IPv4's do): released last, never given back
    for h in ["net.c1", "net.c2", "net.c3", *(f"net.d{i}" for i in range(61))]:
        ipam.release(s, h)
    assert ipam.usage(s)["allocated"] == 0 and ipam.blocks_of(s, "n1", 6) == [ipaddress.IPv6Network(
        f"{addrs[0]}/122", strict=False).with_prefixlen]


def test_node_claims_a_second_ipv6_block_when_its_first_is_full() -> None:
    s = MemStore()
    got = [ipam.auto_assign(s, "n1", f"net.c{i}", POOL6) for i in range(65)]
    assert len({g.block for g in got}) == 2 and not any(g.borrowed for g in got)
    walk = POOL6.node_order("n1")
    assert ipam.blocks_of(s, "n1", 6) == sorted([walk[0], walk[1]], key=ipaddress.IPv6Network)
    assert got[-1].block == walk[1] and got[-1].ordinal == 0


def test_full_ipv6_pool_claims_then_borrows_then_exhausts_naming_the_pool() -> None:
    s = MemStore()
    pool = ipam.Pool("fd00::/120", 122)  # four blocks of 64
    b = ipam.auto_assign(s, "node-b", "net.b0", pool)
    got = [ipam.auto_assign(s, "node-a", f"net.a{i}", pool) for i in range(255)]
    own = [g for g in got if not g.borrowed]
    borrowed = [g for g in got if g.borrowed]
    assert len(own) == 192 and len(borrowed) == 63
    assert all(g.block == b.block and g.affinity == "node-b" for g in borrowed)
    assert len(ipam.blocks_of(s, "node-a", 6)) == 3 and ipam.blocks_of(s, "node-b", 6) == [b.block]
    with pytest.raises(ipam.PoolExhausted, match=r"IP pool fd00::/120 is exhausted: all 256 addresses in its 4 /122"):
        ipam.auto_assign(s, "node-a", "net.a-last", pool)
    assert len({g.address for g in got} | {b.address}) == 256
    # an IPv4 pool is not touched by the IPv6 one being full
    assert ipam.auto_assign(s, "node-a", "net.a-last", POOL4).version == 4


# (concurrent assignments: test_ipam_allocator.py runs them for both families)


# -- one handle, both families ------------------------------------------------------------------


def test_one_handle_holds_an_ipv4_and_an_ipv6_address() -> None:
    s = MemStore()
    a4 = ipam.auto_assign(s, "n1", "k8s-pod-network.c1", POOL4)
    a6 = ipam.auto_assign(s, "n1", "k8s-pod-network.c1", POOL6)
    assert (a4.version, a6.version) == (4, 6) and a6.address != a4.address and a6.ordinal == 0
    # each family's repeat is idempotent, and does not return the other family's address
    assert ipam.auto_assign(s, "n1", "k8s-pod-network.c1", POOL6) == a6
    assert ipam.auto_assign(s, "n1", "k8s-pod-network.c1", POOL4) == a4
    doc = json.loads(s.get(keys.handle("k8s-pod-network.c1")).value)  # type: ignore[union-attr]
    assert doc == {"handleID": "k8s-pod-network.c1", "block": {a4.block: 1, a6.block: 1}}
    assert ipam.lookup(s, "k8s-pod-network.c1", "n1") == [a4, a6]
    u = ipam.usage(s)
    assert u["allocated"] == 2 and u["handles"] == ["k8s-pod-network.c1"]
    assert [(b["cidr"], b["version"]) for b in u["blocks"]] == [(a4.block, 4), (a6.block, 6)]
    assert ipam.blocks_of(s, "n1", None) == [a4.block, a6.block]
    assert ipam.release(s, "k8s-pod-network.c1") == [a4.address, a6.address]
    assert ipam.lookup(s, "k8s-pod-network.c1") == [] and ipam.usage(s)["allocated"] == 0


def test_ipv6_first_then_ipv4_and_one_first_read_for_both() -> None:
    s = MemStore()
    first = ipam.first_read(s, "net.c1", keys.config("cluster"), node="n1", versions=(4, 6))
    assert keys.BLOCKS in first.prefixes and keys.BLOCKS6 in first.prefixes
    a6 = ipam.auto_assign(s, "n1", "net.c1", POOL6, first=first)
    a4 = ipam.auto_assign(s, "n1", "net.c1", POOL4, first=first)  # stale handle in `first`: re-read, not lost
    assert ipam.lookup(s, "net.c1") == [a4, a6]
    assert ipam.auto_assign(s, "n1", "net.c1", POOL6, first=first) == a6
    assert ipam.usage(s)["allocated"] == 2


def test_ipv4_first_read_passed_to_an_ipv6_assign_reads_its_family() -> None:
    s = MemStore()
    first = ipam.first_read(s, "net.c1", node="n1")  # IPv4 only, as the plugin made it before IPv6
    a6 = ipam.auto_assign(s, "n1", "net.c1", POOL6, first=first)
    assert a6.version == 6 and ipam.lookup(s, "net.c1") == [a6]


def test_dual_stack_handles_racing_both_families_keep_both() -> None:
    s = MemStore()
    out: dict[str, ipam.Assignment] = {}

    def add(pool: ipam.Pool, tag: str) -> None:
        out[tag] = ipam.auto_assign(s, "n1", "net.same", pool)

    threads = [threading.Thread(target=add, args=(p, f"{p.version}-{i}")) for i in range(5) for p in (POOL4, POOL6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({a.address for t, a in out.items() if t.startswith("4")}) == 1
    assert len({a.address for t, a in out.items() if t.startswith("6")}) == 1
    assert [a.version for a in ipam.lookup(s, "net.same")] == [4, 6] and ipam.usage(s)["allocated"] == 2


# -- a requested address ------------------------------------------------------------------------


def test_assign_ip_v6_claims_borrows_and_refuses() -> None:
    s = MemStore()
    a = ipam.assign_ip(s, "n1", "net.want", POOL6, "fd00:10:244::1:7")
    assert (a.address, a.block, a.ordinal, a.affinity, a.borrowed) == (
        "fd00:10:244::1:7", "fd00:10:244::1:0/122", 7, "n1", False)
    assert ipam.assign_ip(s, "n1", "net.want", POOL6, "fd00:10:244::1:7") == a
    assert ipam.blocks_of(s, "n1", 6) == ["fd00:10:244::1:0/122"]
    b = ipam.assign_ip(s, "n2", "net.borrower", POOL6, "fd00:10:244::1:9")
    assert b.borrowed and b.affinity == "n1" and ipam.blocks_of(s, "n2", 6) == []
    with pytest.raises(ipam.AddressUnavailable, match="fd00:10:244::1:7 is taken: handle net.want holds it"):
        ipam.assign_ip(s, "n2", "net.thief", POOL6, "fd00:10:244::1:7")
    with pytest.raises(ipam.AddressUnavailable, match="outside IP pool fd00:10:244::/64"):
        ipam.assign_ip(s, "n2", "net.out", POOL6, "fd00:10:245::7")
    with pytest.raises(ipam.AddressUnavailable, match="'10.100.0.7' is not an IPv6 address"):
        ipam.assign_ip(s, "n2", "net.v4", POOL6, "10.100.0.7")
    with pytest.raises(ipam.AddressUnavailable, match="'fd00:10:244::7' is not an IPv4 address"):
        ipam.assign_ip(s, "n2", "net.v6", POOL4, "fd00:10:244::7")
    with pytest.raises(ipam.AddressUnavailable, match="already holds fd00:10:244::1:7"):
        ipam.assign_ip(s, "n1", "net.want", POOL6, "fd00:10:244::1:8")
    # the IPv4 address of the same handle is no obstacle
    a4 = ipam.assign_ip(s, "n1", "net.want", POOL4, "10.100.200.7")
    assert ipam.lookup(s, "net.want") == [a4, a]


# -- tunnel address, cluster pools ---------------------------------------------------------------


def dual_stack_settings(s: MemStore, pool6: dict[str, object] | None) -> None:
    d: dict[str, object] = {"pool": {"cidr": "10.100.0.0/16", "block_size": 26}}
    if pool6 is not None:
        d["pool6"] = pool6
    s.put(keys.config("cluster"), json.dumps(d))


def test_cluster_pools() -> None:
    s = MemStore()
    dual_stack_settings(s, {"cidr": "fd00:10:244::/64"})
    assert ipam.cluster_pool(s) == POOL4
    assert ipam.cluster_pool6(s) == ipam.Pool("fd00:10:244::/64", 122)
    assert ipam.cluster_pools(s) == [POOL4, ipam.Pool("fd00:10:244::/64", 122)]
    dual_stack_settings(s, None)
    assert ipam.cluster_pool6(s) is None and ipam.cluster_pools(s) == [POOL4]
    dual_stack_settings(s, {"cidr": "10.200.0.0/16"})
    with pytest.raises(ipam.IpamError, match="pool6 10.200.0.0/16 is not an IPv6 pool"):
        ipam.cluster_pool6(s)
    with pytest.raises(ipam.IpamError, match="no lab settings"):
        ipam.cluster_pool6(MemStore())


def test_ipv6_tunnel_address_is_first_of_the_nodes_v6_block_beside_the_v4_one() -> None:
    s = MemStore()
    dual_stack_settings(s, {"cidr": "fd00:10:244::/64", "block_size": 122, "vxlan": "always"})
    assert ipam.tunnel_handle("ubuntu-3", 6) == "vxlan-v6-tunnel-addr-ubuntu-3"
    assert ipam.tunnel_handle("ubuntu-3") == "ipip-tunnel-addr-ubuntu-3"
    t4 = ipam.tunnel_address(s, "ubuntu-3")
    t6 = ipam.tunnel_address(s, "ubuntu-3", version=6)
    assert t6 == str(ipaddress.IPv6Network(ipam.blocks_of(s, "ubuntu-3", 6)[0]).network_address)
    assert t4 == str(ipaddress.IPv4Network(ipam.blocks_of(s, "ubuntu-3")[0]).network_address)
    assert ipam.tunnel_address(s, "ubuntu-3", version=6) == t6
    assert ipam.tunnel_address(s, "ubuntu-3", POOL6) == t6, "the pool's family picks the handle"
    assert {ipam.tunnel_handle("ubuntu-3"), ipam.tunnel_handle("ubuntu-3", 6)} == set(ipam.usage(s)["handles"])
    attrs = block_doc(s, ipam.blocks_of(s, "ubuntu-3", 6)[0])["attributes"]
    assert attrs == {"vxlan-v6-tunnel-addr-ubuntu-3": {"node": "ubuntu-3", "type": "vxlanV6TunnelAddress"}}
    dual_stack_settings(s, None)
    with pytest.raises(ipam.IpamError, match="no IPv6 pool"):
        ipam.tunnel_address(s, "ubuntu-4", version=6)


# -- gc ------------------------------------------------------------------------------------------


def test_gc_releases_invalid_attachments_of_both_families_and_orphans() -> None:
    s = MemStore()
    for c in ("keep", "drop"):
        for pool in (POOL4, POOL6):
            ipam.auto_assign(s, "n1", f"k8s-pod-network.{c}", pool)
    ipam.auto_assign(s, "n1", "other-net.drop", POOL6)
    tunnel = ipam.auto_assign(s, "n1", ipam.tunnel_handle("n1", 6), POOL6)
    orphan = ipam.auto_assign(s, "n1", "k8s-pod-network.orphan", POOL6)
    s.delete(keys.handle("k8s-pod-network.orphan"))
    released = ipam.gc(s, "k8s-pod-network", {"k8s-pod-network.keep"}, "n1")
    assert sorted(released) == ["k8s-pod-network.drop", "k8s-pod-network.orphan"]
    used = {a for b in ipam.usage(s)["blocks"] for a in b["allocated"]}
    assert tunnel.address in used and orphan.address not in used
    assert [a.version for a in ipam.lookup(s, "k8s-pod-network.keep")] == [4, 6]
    assert ipam.usage(s)["allocated"] == 4  # keep (v4, v6), other-net.drop, the tunnel


def test_ipv6_gc_on_one_node_leaves_the_other_nodes_pods_alone() -> None:
    pool = ipam.Pool("fd00::/121", 122)  # two blocks of 64
    s = MemStore()
    a = ipam.auto_assign(s, "node-a", "net.a-gone", pool)
    ipam.auto_assign(s, "node-b", "net.b-first", pool)
    for i in range(63):
        ipam.auto_assign(s, "node-b", f"net.b{i}", pool)
    b_borrowed = ipam.auto_assign(s, "node-b", "net.b-borrowed", pool)
    assert b_borrowed.borrowed and b_borrowed.block == a.block, b_borrowed
    assert ipam.gc(s, "net", set(), "node-a") == ["net.a-gone"]
    assert ipam.lookup(s, "net.b-borrowed")[0].address == b_borrowed.address


# -- reads: the node's own IPv6 blocks, not the pool's ---------------------------------------------


def test_ipv6_add_in_an_affine_block_reads_each_key_once() -> None:
    s = Counting()
    first = ipam.auto_assign(s, "n1", "net.c1", POOL6)
    s.calls.clear()
    second = ipam.auto_assign(s, "n1", "net.c2", POOL6)
    assert second.block == first.block and second.ordinal == 1
    assert [c for c in s.calls if c[0] != "txn"] == [("read", f"{keys.handle('net.c2')},{keys.block(first.block)},{keys.affinities('n1', 6)}")]
