"""Calico's block-affinity IPAM over the Datastore Protocol, for IPv4 and IPv6 pools.

The pool is cut into blocks (/26 by default, /122 for IPv6). A node claims a whole block by
creating the block record with a compare-and-swap on "absent"; it then hands out addresses from
its own blocks: per address, one read of the handle and every block of the family at one
revision, then one transaction writing the block and the handle, each compared on its
mod_revision. Every write that can race is compared so, and redone after re-reading on conflict,
so any number of concurrent CNI processes (on one node or many) never hand out one address twice.

Block record (JSON at keys.block(cidr): .../assignment/ipv4/block/10.100.0.0-26 or
.../assignment/ipv6/block/fd00:10:244::-122), Calico's AllocationBlock reduced:
  cidr, affinity ("host:<node>" or null), allocations[ordinal] = handle id or null,
  unallocated = free ordinals in hand-out order (lowest first; a released ordinal is
  appended, so it is reused last), attributes = {handle id: {...}}.
Handle record (keys.handle(id)): {"handleID", "block": {cidr: count}} - one per container; a
dual-stack container's handle names one block of each family.
Affinity record (keys.affinity(node, cidr)): {"state": "confirmed"}; the index the agent
reads to blackhole its own blocks. The block's own `affinity` field is the truth.

Block choice is deterministic: each node walks the pool's blocks from an offset derived
from sha256(node name), so a lab rebuilt from the same topology gets the same addresses.
The walk is computed, never listed: an IPv6 /64 of /122 blocks has 2^58 of them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from labnet.etcd import keys
from labnet.etcd.store import KV, Datastore, Snapshot
from labnet.settings import BLOCK_RANGE, DEFAULT_BLOCK

MAX_ATTEMPTS = 2000  # cas retries; each failure means another writer made progress
# Calico's smallest IPv6 block (IPPool validation: 116..128): a block lists each of its
# addresses, so a /64 block would be a list of 2^64 entries.
MIN_BLOCK6 = BLOCK_RANGE[6][0]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpamError(Exception):
    """An IPAM failure the CNI plugin reports with its own code (100+)."""

    code = 100


class PoolExhausted(IpamError):
    code = 100


class AddressUnavailable(IpamError):
    """A requested address cannot be given: outside the pool, or another container holds it."""

    code = 101


class IpamConflict(IpamError):
    """Gave up after MAX_ATTEMPTS lost compare-and-swaps (should not happen)."""

    code = 105


def _address(version: int, value: int) -> str:
    """The address `value` of that family (ip_address(int) would guess IPv4 for small ints)."""
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _net_key(cidr: str) -> tuple[int, IPNetwork]:
    """Sort key for cidrs of both families: IPv4Network and IPv6Network do not compare."""
    net = ipaddress.ip_network(cidr)
    return (net.version, net)


@dataclass(frozen=True)
class Pool:
    cidr: str
    block_size: int = 0  # 0: the family's default, Calico's /26 (IPv4) or /122 (IPv6)

    def __post_init__(self) -> None:
        family = f"IPv{keys.family(self.cidr)}"
        try:
            net = ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"IP pool {self.cidr!r} is not an {family} network: {exc}") from exc
        if self.block_size == 0:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK[net.version])
        low = net.prefixlen if net.version == 4 else max(net.prefixlen, MIN_BLOCK6)
        if not low <= self.block_size <= net.max_prefixlen:
            raise ValueError(
                f"IP pool {self.cidr}: block_size /{self.block_size} must be between /{low} and /{net.max_prefixlen}"
            )

    @cached_property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version

    @property
    def n_blocks(self) -> int:
        return 1 << (self.block_size - self.network.prefixlen)

    @property
    def block_len(self) -> int:
        return 1 << (self.network.max_prefixlen - self.block_size)

    def block_at(self, i: int) -> str:
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"IP pool {self.cidr} has {self.n_blocks} blocks, not block {i}")
        base = int(self.network.network_address) + i * self.block_len
        return f"{_address(self.version, base)}/{self.block_size}"

    def index_of(self, cidr: str) -> int:
        """The position of block `cidr` in the pool (its block_at index)."""
        net = ipaddress.ip_network(cidr)
        return (int(net.network_address) - int(self.network.network_address)) // self.block_len

    def contains_block(self, cidr: str) -> bool:
        net = ipaddress.ip_network(cidr)
        offset = int(net.network_address) - int(self.network.network_address)
        return (net.version == self.version and net.prefixlen == self.block_size
                and 0 <= offset < self.network.num_addresses)

    def node_order(self, node: str) -> Walk:
        """The node's deterministic walk over the pool's blocks (indexable, iterable, lazy)."""
        return Walk(self, int(hashlib.sha256(node.encode()).hexdigest(), 16) % self.n_blocks)

    def rank(self, node: str) -> Callable[[str], int]:
        """Block cidr -> its position in the node's walk: a sort key, computed, not tabled."""
        return self.node_order(node).rank


@dataclass(frozen=True)
class Walk:
    """A node's walk: the pool's blocks from index `start` on, wrapping around. Computed per
    step, so taking its first few blocks costs the same in a /16 of /26s and a /48 of /122s."""

    pool: Pool
    start: int

    def __getitem__(self, k: int) -> str:
        n = self.pool.n_blocks
        if not -n <= k < n:
            raise IndexError(f"walk of {n} blocks has no step {k}")
        return self.pool.block_at((self.start + k) % n)

    def __iter__(self) -> Iterator[str]:
        return (self[k] for k in range(self.pool.n_blocks))  # range is lazy even past 2^63

    def rank(self, cidr: str) -> int:
        return (self.pool.index_of(cidr) - self.start) % self.pool.n_blocks


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: list[str | None]
    unallocated: list[int]
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def new(cls, cidr: str, node: str | None) -> Block:
        size = ipaddress.ip_network(cidr).num_addresses
        return cls(cidr, f"host:{node}" if node else None, [None] * size, list(range(size)))

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        d = json.loads(raw)
        return cls(d["cidr"], d.get("affinity"), d["allocations"], d["unallocated"], d.get("attributes", {}))

    def encode(self) -> str:
        return json.dumps({
            "cidr": self.cidr, "affinity": self.affinity, "strictAffinity": False,
            "allocations": self.allocations, "unallocated": self.unallocated,
            "attributes": self.attributes,
        }, separators=(",", ":"))

    @property
    def node(self) -> str | None:
        return self.affinity[5:] if self.affinity and self.affinity.startswith("host:") else None

    @property
    def version(self) -> int:
        return keys.family(self.cidr)

    def address(self, ordinal: int) -> str:
        return str(ipaddress.ip_network(self.cidr).network_address + ordinal)

    def ordinal(self, address: str) -> int:
        return int(ipaddress.ip_address(address)) - int(ipaddress.ip_network(self.cidr).network_address)

    def take(self, handle_id: str, prefer: int | None, attrs: dict[str, Any] | None) -> int | None:
        if not self.unallocated:
            return None
        ordinal = prefer if prefer is not None and prefer in self.unallocated else self.unallocated[0]
        self.unallocated.remove(ordinal)
        self.allocations[ordinal] = handle_id
        if attrs:
            self.attributes[handle_id] = attrs
        return ordinal

    def release(self, handle_id: str) -> list[int]:
        freed = [i for i, h in enumerate(self.allocations) if h == handle_id]
        for i in freed:
            self.allocations[i] = None
            self.unallocated.append(i)  # reused last: the release order is the hand-out order
        self.attributes.pop(handle_id, None)
        return freed

    def used(self) -> int:
        return sum(1 for h in self.allocations if h is not None)

    def held_by(self, handle_id: str, node: str | None) -> list[Assignment]:
        """The handle's addresses in this block, as seen from `node` (borrowed if not its block)."""
        return [Assignment(self.address(i), self.cidr, i, handle_id, self.node, node is not None and self.node != node)
                for i, h in enumerate(self.allocations) if h == handle_id]


@dataclass(frozen=True)
class Assignment:
    address: str
    block: str
    ordinal: int
    handle: str
    affinity: str | None  # the node owning the block
    borrowed: bool  # True when the block belongs to another node (the agent routes a /32 or /128)

    @property
    def version(self) -> int:
        return keys.family(self.address)

    @property
    def host_prefix(self) -> str:
        """The address as a host route: '10.100.0.7/32', 'fd00:10:244::7/128' (the CNI result's)."""
        return f"{self.address}/{32 if self.version == 4 else 128}"

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address, "block": self.block, "ordinal": self.ordinal, "handle": self.handle,
            "affinity": self.affinity, "borrowed": self.borrowed,
        }


# -- reading ------------------------------------------------------------------------------

BLOCK_PREFIXES = (keys.BLOCKS, keys.BLOCKS6)


def _blocks(store: Datastore) -> list[Block]:
    """Every block of both families, read at one revision."""
    snap = store.snapshot([], BLOCK_PREFIXES)
    return [Block.decode(kv.value) for p in BLOCK_PREFIXES for kv in snap.prefixes[p]]


def _handle(store: Datastore, handle_id: str) -> tuple[KV, dict[str, Any]] | None:
    kv = store.get(keys.handle(handle_id))
    return (kv, json.loads(kv.value)) if kv else None


def _named(doc: dict[str, Any], version: int | None) -> list[str]:
    """The block cidrs a handle record names, of one family (or both with None), IPv4 first."""
    cidrs = [c for c in doc.get("block", {}) if version is None or keys.family(c) == version]
    return sorted(cidrs, key=keys.family)


def lookup(store: Datastore, handle_id: str, node: str | None = None) -> list[Assignment]:
    """The addresses a handle holds now, IPv4 first (empty when it holds none)."""
    found = _handle(store, handle_id)
    if found is None:
        return []
    out = []
    for cidr in _named(found[1], None):
        kv = store.get(keys.block(cidr))
        if kv is not None:
            out += Block.decode(kv.value).held_by(handle_id, node)
    return out


def blocks_of(store: Datastore, node: str, version: int | None = 4) -> list[str]:
    """CIDRs of the blocks affine to `node` (from its affinity records), sorted: of one IP
    version, or both with None (IPv4 first). IPv4 by default: the callers that predate IPv6
    parse what they get as IPv4 networks."""
    if version is None:
        return [*blocks_of(store, node, 4), *blocks_of(store, node, 6)]
    prefix = keys.affinities(node, version)
    return sorted((keys.cidr_from_key(kv.key[len(prefix):]) for kv in store.range(prefix)), key=_net_key)


def usage(store: Datastore) -> dict[str, Any]:
    """Every block (both families) with its owner and allocations, and every handle: for checks
    and doctor. `allocated` counts the addresses of both families."""
    out = []
    total = 0
    for b in sorted(_blocks(store), key=lambda b: _net_key(b.cidr)):
        used = {b.address(i): h for i, h in enumerate(b.allocations) if h is not None}
        total += len(used)
        out.append({"cidr": b.cidr, "version": b.version, "node": b.node, "allocated": used,
                    "free": len(b.unallocated)})
    handles = sorted(kv.key[len(keys.HANDLES):] for kv in store.range(keys.HANDLES))
    return {"blocks": out, "handles": handles, "allocated": total}

# -- writing ------------------------------------------------------------------------------


def _claim(store: Datastore, node: str, pool: Pool, taken: set[str]) -> str | None:
    """Claim the node's first unclaimed block; its cidr, or None if the pool has none left.

    The walk stops at the first block not in `taken`, so it costs len(taken) + 1 steps however
    many blocks the pool has. A lost race (a sibling process claimed the same block) still
    returns that cidr: the caller re-reads and finds it affine, or moves on.
    """
    for cidr in pool.node_order(node):
        if cidr in taken:
            continue
        _claim_block(store, node, cidr)
        return cidr
    return None


def _claim_block(store: Datastore, node: str, cidr: str) -> None:
    """Claim `cidr` for `node` if nobody has it. One transaction: a block claimed without its
    affinity record (the write of the one lost to a timeout after etcd had done it) would be the
    node's, yet never routed."""
    store.cas_many([(keys.block(cidr), Block.new(cidr, node).encode(), 0),
                    (keys.affinity(node, cidr), json.dumps({"state": "confirmed", "deleted": False}), None)])


def _commit(store: Datastore, snap: Snapshot, handle_id: str, node: str, kv: KV, block: Block,
            ordinal: int) -> Assignment | None:
    """Write `block` (an ordinal taken for the handle) and the handle, each compared on its
    revision in `snap`; the Assignment, or None when a racer moved either (read and decide again)."""
    hkey = keys.handle(handle_id)
    hkv = snap.keys.get(hkey)
    doc: dict[str, Any] = json.loads(hkv.value) if hkv else {"handleID": handle_id}
    # The other family's block stays named (a dual-stack pod's handle holds one of each); this
    # family's is new, or stale (its addresses were swept): take it over.
    other = {c: n for c, n in doc.get("block", {}).items() if keys.family(c) != block.version}
    doc["block"] = {**other, block.cidr: 1}
    if store.cas_many([(kv.key, block.encode(), kv.mod_revision),
                       (hkey, json.dumps(doc), hkv.mod_revision if hkv else 0)]):
        return Assignment(block.address(ordinal), block.cidr, ordinal, handle_id, block.node, block.node != node)
    return None


def _release_in(store: Datastore, cidr: str, handle_id: str) -> list[str]:
    for _ in range(MAX_ATTEMPTS):
        kv = store.get(keys.block(cidr))
        if kv is None:
            return []
        block = Block.decode(kv.value)
        freed = block.release(handle_id)
        if not freed:
            return []
        if store.cas(kv.key, block.encode(), kv.mod_revision):
            return [block.address(i) for i in freed]
    raise IpamConflict(f"block {cidr}: gave up after {MAX_ATTEMPTS} conflicting updates")


def first_read(store: Datastore, handle_id: str, *extra: str, node: str | None = None,
               versions: Iterable[int] = (4,)) -> Snapshot:
    """What auto_assign starts from, in one round trip: the handle, the blocks of each IP
    version in `versions` (one prefix each, keys.blocks(v)), and `extra` keys the caller wants
    at the same revision (the CNI IPAM plugin adds the cluster settings). A dual-stack ADD reads
    versions=(4, 6) once and passes it to the first family's auto_assign (the second one's
    handle compare would fail on what the first wrote: correct, one wasted transaction).

    With `node`: only that node's own blocks, which its affinity keys name, instead of every
    block of the pool (an ADD at 200 nodes read and decoded 200 blocks, and etcd served them).
    The snapshot says so (`partial`); auto_assign reads them all when it has to look further.
    A process that assigns again (the CNI server) names the blocks it saw last time in the same
    read; a new one costs a second round trip."""
    versions = tuple(versions)
    if node is None:
        return store.snapshot([keys.handle(handle_id), *extra], [keys.blocks(v) for v in versions])
    hint = [c for v in versions for c in _affine_seen.get((node, v), ())]
    owns = {v: keys.affinities(node, v) for v in versions}
    snap = store.snapshot([keys.handle(handle_id), *extra, *(keys.block(c) for c in hint)], list(owns.values()))
    cidrs = {v: tuple(sorted(keys.cidr_from_key(kv.key[len(own):]) for kv in snap.prefixes[own]))
             for v, own in owns.items()}
    found = dict(snap.keys)
    missing = [keys.block(c) for cs in cidrs.values() for c in cs if keys.block(c) not in found]
    if missing:
        found.update(store.snapshot(missing, []).keys)  # each block's revision is compared at commit
    if len(_affine_seen) >= 512:
        _affine_seen.clear()
    _affine_seen.update({(node, v): cs for v, cs in cidrs.items()})
    blocks = {keys.blocks(v): sorted((kv for c in cs if (kv := found.get(keys.block(c))) is not None),
                                     key=lambda kv: kv.key)
              for v, cs in cidrs.items()}
    return Snapshot({k: found[k] for k in (keys.handle(handle_id), *extra)}, blocks, partial=frozenset(blocks))


_affine_seen: dict[tuple[str, int], tuple[str, ...]] = {}  # (node, version) -> the blocks its last first_read found


def _handle_doc(snap: Snapshot, handle_id: str) -> dict[str, Any] | None:
    hkv = snap.keys.get(keys.handle(handle_id))
    return json.loads(hkv.value) if hkv else None


def _held(snap: Snapshot, handle_id: str, node: str, version: int = 4) -> list[Assignment]:
    """The addresses of that IP version the handle holds in `snap` (its record names the blocks
    to look in). Per family: a dual-stack pod's IPv4 address is not the IPv6 one it asks for."""
    doc = _handle_doc(snap, handle_id)
    if doc is None:
        return []
    by_key = {kv.key: kv for kv in snap.prefixes[keys.blocks(version)]}
    out = []
    for cidr in _named(doc, version):
        kv = by_key.get(keys.block(cidr))
        if kv is not None:
            out += Block.decode(kv.value).held_by(handle_id, node)
    return out


def handle_known(snap: Snapshot, handle_id: str) -> bool:
    """Whether the handle had a record in `snap` (a repeated ADD), as opposed to a new one."""
    return _handle_doc(snap, handle_id) is not None


def _pool_blocks(snap: Snapshot, pool: Pool) -> dict[str, tuple[KV, Block]]:
    """The blocks of `pool` in `snap`, by cidr."""
    out: dict[str, tuple[KV, Block]] = {}
    for kv in snap.prefixes[keys.blocks(pool.version)]:
        b = Block.decode(kv.value)
        if pool.contains_block(b.cidr):
            out[b.cidr] = (kv, b)
    return out


def _exhausted(pool: Pool, node: str, handle_id: str) -> PoolExhausted:
    return PoolExhausted(
        f"IP pool {pool.cidr} is exhausted: all {pool.network.num_addresses} addresses in its "
        f"{pool.n_blocks} /{pool.block_size} blocks are assigned (node {node}, handle {handle_id})"
    )


def auto_assign(
    store: Datastore, node: str, handle_id: str, pool: Pool,
    attrs: dict[str, Any] | None = None, prefer_first: bool = False, first: Snapshot | None = None,
) -> Assignment:
    """One address from `pool` (IPv4 or IPv6) for `handle_id`; the same one again if the handle
    already holds one of that IP version. A dual-stack pod calls it once per pool, same handle.

    Order: the node's own blocks (in its walk order, lowest free ordinal first), then a newly
    claimed block, then an address borrowed from another node's block. Raises PoolExhausted.
    `first`: a `first_read` the caller already made. In the usual case that read and one
    transaction (the block and the handle, each compared on its revision) are all it takes;
    a lost race re-reads and decides again, so two ADDs never share an address and two ADDs
    of one container end with one address (of each family).
    """
    attrs = {"node": node, **(attrs or {})}  # whose address it is, also when borrowed (gc reads it)
    v, bkey = pool.version, keys.blocks(pool.version)
    snap = first if first is not None and bkey in first.prefixes else first_read(store, handle_id, node=node,
                                                                                 versions=(v,))
    for _ in range(MAX_ATTEMPTS):
        partial = bkey in snap.partial
        doc = _handle_doc(snap, handle_id)
        if partial and doc is not None and _named(doc, v):
            snap = first_read(store, handle_id, versions=(v,))  # a repeated ADD: its address may be borrowed
            continue
        held = _held(snap, handle_id, node, v)
        if held:
            return held[0]
        blocks = _pool_blocks(snap, pool)
        rank = pool.rank(node)
        mine = sorted((c for c, (_, b) in blocks.items() if b.node == node), key=rank)
        cidr = next((c for c in mine if blocks[c][1].unallocated), None)
        prefer = 0 if prefer_first else None
        if cidr is None and partial:  # our blocks are full: claiming or borrowing needs them all
            snap = first_read(store, handle_id, versions=(v,))
            continue
        if cidr is None:
            if _claim(store, node, pool, set(blocks)) is not None:
                snap = first_read(store, handle_id, node=node, versions=(v,))
                continue  # allocate from the claimed block on the next pass
            others = sorted((c for c in blocks if c not in mine), key=rank)
            cidr = next((c for c in others if blocks[c][1].unallocated), None)
            prefer = None
            if cidr is None:  # every block of the pool exists and is full, all at one revision
                raise _exhausted(pool, node, handle_id)
        kv, block = blocks[cidr]
        ordinal = block.take(handle_id, prefer, attrs)
        assert ordinal is not None, f"block {cidr} has free ordinals"
        done = _commit(store, snap, handle_id, node, kv, block, ordinal)
        if done is not None:
            return done
        snap = first_read(store, handle_id, node=node, versions=(v,))  # a block or the handle moved: decide again
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts")


def _requested(pool: Pool, address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`address` parsed, if it is one of `pool`'s family inside `pool`; else AddressUnavailable."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None or ip.version != pool.version:
        raise AddressUnavailable(f"requested address {address!r} is not an IPv{pool.version} address")
    if ip not in pool.network:
        raise AddressUnavailable(f"requested address {ip} is outside IP pool {pool.cidr}")
    return ip


def assign_ip(
    store: Datastore, node: str, handle_id: str, pool: Pool, address: str,
    attrs: dict[str, Any] | None = None, first: Snapshot | None = None,
) -> Assignment:
    """Exactly `address` for `handle_id` (Calico's AssignIP: podman's --ip, a pod's `ip:`), the
    same again if the handle holds it already. Its block is claimed for `node` if nobody has
    it yet, else the address is borrowed from the block's node. AddressUnavailable when it is
    outside the pool, another container holds it, or the handle holds another address of that
    IP version (one of the other version is no obstacle: a dual-stack pod has one of each)."""
    ip = _requested(pool, address)
    cidr = str(ipaddress.ip_network(f"{ip}/{pool.block_size}", strict=False))
    v, prefix, bkey = pool.version, keys.blocks(pool.version), keys.block(cidr)
    attrs = {"node": node, **(attrs or {})}
    whole = first is not None and prefix in first.prefixes and prefix not in first.partial
    snap = first if first is not None and whole else first_read(store, handle_id, versions=(v,))
    for _ in range(MAX_ATTEMPTS):
        held = _held(snap, handle_id, node, v)
        if held:
            if held[0].address == str(ip):
                return held[0]
            raise AddressUnavailable(f"handle {handle_id} already holds {held[0].address}; it cannot also "
                                     f"have the requested {ip} (DEL it first)")
        kv = next((b for b in snap.prefixes[prefix] if b.key == bkey), None)
        if kv is None:
            _claim_block(store, node, cidr)
            snap = first_read(store, handle_id, versions=(v,))  # ours now, or a racer's: either way, decide again
            continue
        block = Block.decode(kv.value)
        ordinal = block.ordinal(str(ip))
        owner = block.allocations[ordinal]
        if owner is not None:
            raise AddressUnavailable(f"requested address {ip} is taken: handle {owner} holds it "
                                     f"(block {cidr}, node {block.node or 'none'})")
        if block.take(handle_id, ordinal, attrs) != ordinal:  # free, yet not in `unallocated`: a torn block
            raise AddressUnavailable(f"requested address {ip}: block {cidr} lists it neither as held nor as free")
        done = _commit(store, snap, handle_id, node, kv, block, ordinal)
        if done is not None:
            return done
        snap = first_read(store, handle_id, versions=(v,))
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts for {ip}")


def release(store: Datastore, handle_id: str) -> list[str]:
    """Free every address of `handle_id` (both IP versions, IPv4 first) and delete the handle.
    Unknown handle: nothing to do. Empty blocks stay, affine to their node (as IPv4's always did)."""
    for _ in range(MAX_ATTEMPTS):
        found = _handle(store, handle_id)
        if found is None:
            return []
        kv, doc = found
        freed: list[str] = []
        for cidr in _named(doc, None):
            freed += _release_in(store, cidr, handle_id)
        if store.delete(kv.key, kv.mod_revision):
            return freed
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts")


# Calico's attribute types of a node's tunnel address (IPAMBlockAttributeType*).
TUNNEL_TYPES = {4: "ipipTunnelAddress", 6: "vxlanV6TunnelAddress"}


def tunnel_handle(node: str, version: int = 4) -> str:
    """The handle of the node's tunnel address: `ipip-tunnel-addr-<node>` for labnet's one IPv4
    tunnel address (tunl0 and vxlan.calico alike), Calico's `vxlan-v6-tunnel-addr-<node>` for
    vxlan-v6.calico's."""
    if version not in TUNNEL_TYPES:
        raise ValueError(f"IP version {version!r} is neither 4 nor 6")
    return f"ipip-tunnel-addr-{node}" if version == 4 else f"vxlan-v6-tunnel-addr-{node}"


def _cluster(store: Datastore) -> dict[str, Any]:
    kv = store.get(keys.config("cluster"))
    if kv is None:
        raise IpamError(f"no lab settings at etcd key {keys.config('cluster')} (pool cidr unknown)")
    doc = json.loads(kv.value)
    return doc if isinstance(doc, dict) else {}


def _pool_of(settings: dict[str, Any], name: str, version: int) -> Pool | None:
    """The settings' pool `name` ("pool", "pool6") as a Pool, None when it has none; a missing or
    null block_size is the family's default."""
    raw = settings.get(name)
    if not raw:
        return None
    pool = Pool(raw["cidr"], int(raw.get("block_size") or 0))
    if pool.version != version:
        raise IpamError(f"lab settings: {name} {pool.cidr} is not an IPv{version} pool")
    return pool


def cluster_pool(store: Datastore) -> Pool:
    """The cluster's IPv4 pool, from the lab settings in etcd."""
    pool = _pool_of(_cluster(store), "pool", 4)
    if pool is None:
        raise IpamError(f"the lab settings at etcd key {keys.config('cluster')} have no pool")
    return pool


def cluster_pool6(store: Datastore) -> Pool | None:
    """The cluster's IPv6 pool (the settings' `pool6`), None when the cluster is IPv4 only."""
    return _pool_of(_cluster(store), "pool6", 6)


def cluster_pools(store: Datastore) -> list[Pool]:
    """The IPv4 pool, then the IPv6 one when there is one (one read)."""
    d = _cluster(store)
    pools = [_pool_of(d, "pool", 4), _pool_of(d, "pool6", 6)]
    if pools[0] is None:
        raise IpamError(f"the lab settings at etcd key {keys.config('cluster')} have no pool")
    return [p for p in pools if p is not None]


def tunnel_address(store: Datastore, node: str, pool: Pool | None = None, version: int = 4) -> str:
    """The node's tunnel address: the first address of its first block of `pool` (idempotent).
    Without `pool`, the cluster's pool of `version`: 4 for tunl0/vxlan.calico, 6 for
    vxlan-v6.calico (IpamError when the cluster has no IPv6 pool). With `pool`, its family
    decides (and `version` is not used)."""
    if pool is None:
        pool = cluster_pool(store) if version == 4 else cluster_pool6(store)
    if pool is None:
        raise IpamError(f"no IPv6 pool in the lab settings at etcd key {keys.config('cluster')} "
                        f"(node {node} has no IPv6 tunnel address)")
    v = pool.version
    return auto_assign(store, node, tunnel_handle(node, v), pool, {"node": node, "type": TUNNEL_TYPES[v]},
                       prefer_first=True).address


def gc(store: Datastore, network: str, valid_handles: set[str], node: str) -> list[str]:
    """Release the handles of `network` on `node` that are not in `valid_handles` (those of the
    attachments the runtime of that node still has; other nodes' pods are not its to judge).
    Blocks of both IP versions count.

    Also sweeps the node's block entries of the network whose handle record is missing (left by
    a plugin older than the one-transaction write of block and handle).
    """
    prefix = f"{network}."
    snap = store.snapshot([], [keys.HANDLES + prefix, *BLOCK_PREFIXES])
    blocks = [Block.decode(kv.value) for p in BLOCK_PREFIXES for kv in snap.prefixes[p]]

    def owner(hid: str) -> str | None:
        """The node the handle's address was given to (a borrowed one is in another node's block)."""
        for b in blocks:
            if hid in b.allocations:
                return str((b.attributes.get(hid) or {}).get("node") or b.node)
        return None

    released: list[str] = []
    handles = {kv.key[len(keys.HANDLES):] for kv in snap.prefixes[keys.HANDLES + prefix]}
    for hid in sorted(handles):
        if hid not in valid_handles and owner(hid) in (node, None):
            release(store, hid)  # owner None: a handle holding no address, stale wherever it came from
            released.append(hid)
    for b in blocks:
        for hid in sorted({h for h in b.allocations if h and h.startswith(prefix)} - handles):
            if hid not in valid_handles and owner(hid) == node:
                _release_in(store, b.cidr, hid)
                if hid not in released:
                    released.append(hid)
    return released
