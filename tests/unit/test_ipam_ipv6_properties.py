"""Properties of dual-stack IPAM under random assign/release sequences, and a huge IPv6 pool."""

from __future__ import annotations

import ipaddress

from hypothesis import event, given, settings
from hypothesis import strategies as st

from labnet import ipam
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore

# Four blocks of 4 addresses in each family: small enough to exhaust, big enough to borrow.
POOLS = {4: ipam.Pool("10.9.0.0/28", 30), 6: ipam.Pool("fd00:10:244::/124", 126)}
SIZE = 16
NODES = ("n0", "n1", "n2")
Held = dict[tuple[str, int], str]  # (handle, version) -> address

# Assigns outnumber releases 3:1 and 25 handles share 16 addresses per family: runs reach
# borrowing and exhaustion, not only the first block.
OPS = st.lists(st.tuples(st.sampled_from(("assign", "assign", "assign", "release")), st.integers(0, 24),
                         st.sampled_from((4, 6))), min_size=30, max_size=150)


def node_of(hid: str) -> str:
    return NODES[int(hid[len("net.c"):]) % len(NODES)]  # a pod stays on its node


def apply(s: MemStore, held: Held, op: str, hid: str, version: int) -> str:
    """Do `op` and check what it gives against the model; what happened, for the statistics."""
    if op == "release":
        freed = ipam.release(s, hid)
        want = {a for (h, _), a in held.items() if h == hid}
        assert set(freed) == want, (hid, freed, want)
        for v in (4, 6):
            held.pop((hid, v), None)
        return "released"
    try:
        a = ipam.auto_assign(s, node_of(hid), hid, POOLS[version])
    except ipam.PoolExhausted:
        used = sum(1 for (_, v) in held if v == version)
        assert (hid, version) not in held and used == POOLS[version].network.num_addresses, (hid, used)
        return f"IPv{version} pool exhausted"
    assert a.version == version
    if (hid, version) in held:
        assert a.address == held[(hid, version)], "a repeated assign of one family is idempotent"
    held[(hid, version)] = a.address
    return f"IPv{version} borrowed" if a.borrowed else "assigned"


def check(s: MemStore, held: Held) -> None:
    assert len(set(held.values())) == len(held), "an address handed out twice"
    u = ipam.usage(s)
    assert u["allocated"] == len(held) == sum(len(b["allocated"]) for b in u["blocks"])
    assert u["handles"] == sorted({h for h, _ in held})
    given_out = {}
    for b in u["blocks"]:
        pool, net = POOLS[b["version"]], ipaddress.ip_network(b["cidr"])
        assert pool.contains_block(b["cidr"]), b["cidr"]
        assert len(b["allocated"]) + b["free"] == net.num_addresses
        assert b["node"] in NODES and b["cidr"] in ipam.blocks_of(s, b["node"], b["version"])
        for addr, hid in b["allocated"].items():
            assert ipaddress.ip_address(addr) in net
            given_out[addr] = hid
    assert given_out == {a: h for (h, _), a in held.items()}
    for node in NODES:  # every affinity record names a block of that node
        for cidr in ipam.blocks_of(s, node, None):
            kv = s.get(keys.block(cidr))
            assert kv is not None and ipam.Block.decode(kv.value).node == node
    for hid in {h for h, _ in held}:
        assert {a.address for a in ipam.lookup(s, hid)} == {a for (h, _), a in held.items() if h == hid}


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_dual_stack_model_never_double_allocates(ops: list[tuple[str, int, int]]) -> None:
    s = MemStore()
    held: Held = {}
    for op, k, version in ops:
        event(apply(s, held, op, f"net.c{k}", version))
        check(s, held)


def test_filling_both_pools_exhausts_each_only_when_every_address_is_used() -> None:
    s = MemStore()
    held: Held = {}
    for version in (6, 4):
        outcomes = [apply(s, held, "assign", f"net.c{k}", version) for k in range(SIZE + 1)]
        check(s, held)
        assert outcomes[-1] == f"IPv{version} pool exhausted" and f"IPv{version} borrowed" in outcomes
        assert sum(1 for (_, v) in held if v == version) == SIZE
    for k in range(0, SIZE + 1, 2):
        apply(s, held, "release", f"net.c{k}", 4)
    check(s, held)
    for k in range(SIZE + 8, SIZE - 8, -1):
        apply(s, held, "assign", f"net.c{k}", 6)
        check(s, held)


def test_a_huge_ipv6_pool_assigns_without_enumerating_its_blocks() -> None:
    pool = ipam.Pool("fd00::/48", 122)
    assert pool.n_blocks == 1 << 74
    s = MemStore()
    firsts = {n: ipam.auto_assign(s, n, f"net.{n}", pool) for n in NODES}
    more = [ipam.auto_assign(s, "n0", f"net.more{i}", pool) for i in range(64)]  # n0 claims a second block
    # (listing the pool's blocks would never end: that it returns at all is the point)
    for n, a in firsts.items():
        assert a.block == pool.node_order(n)[0] and a.ordinal == 0 and not a.borrowed
    assert more[-1].block == pool.node_order("n0")[1]
    assert ipam.tunnel_address(s, "n1", pool) == str(ipaddress.IPv6Network(firsts["n1"].block).network_address + 1)
