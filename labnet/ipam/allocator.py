"""Calico's block-affinity IPAM over the Datastore Protocol.

The pool is cut into blocks (/26 by default). A node claims a whole block by creating the
block record with a compare-and-swap on "absent"; it then hands out addresses from its own
blocks: per address, one read of the handle and every block at one revision, then one
transaction writing the block and the handle, each compared on its mod_revision. Every write
that can race is compared so, and redone after re-reading on conflict, so any number of
concurrent CNI processes (on one node or many) never hand out one address twice.

Block record (JSON at keys.block(cidr)), Calico's AllocationBlock reduced to IPv4:
  cidr, affinity ("host:<node>" or null), allocations[ordinal] = handle id or null,
  unallocated = free ordinals in hand-out order (lowest first; a released ordinal is
  appended, so it is reused last), attributes = {handle id: {...}}.
Handle record (keys.handle(id)): {"handleID", "block": {cidr: count}} - one per container.
Affinity record (keys.affinity(node, cidr)): {"state": "confirmed"}; the index the agent
reads to blackhole its own blocks. The block's own `affinity` field is the truth.

Block choice is deterministic: each node walks the pool's blocks from an offset derived
from sha256(node name), so a lab rebuilt from the same topology gets the same addresses.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from labnet.etcd import keys
from labnet.etcd.store import KV, Datastore, Snapshot

MAX_ATTEMPTS = 2000  # cas retries; each failure means another writer made progress


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


@dataclass(frozen=True)
class Pool:
    cidr: str
    block_size: int = 26

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"IP pool {self.cidr!r} is not an IPv4 network: {exc}") from exc
        if not net.prefixlen <= self.block_size <= 32:
            raise ValueError(
                f"IP pool {self.cidr}: block_size /{self.block_size} must be between /{net.prefixlen} and /32"
            )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def n_blocks(self) -> int:
        return 1 << (self.block_size - self.network.prefixlen)

    @property
    def block_len(self) -> int:
        return 1 << (32 - self.block_size)

    def block_at(self, i: int) -> str:
        base = int(self.network.network_address) + i * self.block_len
        return f"{ipaddress.IPv4Address(base)}/{self.block_size}"

    def contains_block(self, cidr: str) -> bool:
        net = ipaddress.IPv4Network(cidr)
        return net.prefixlen == self.block_size and net.subnet_of(self.network)

    def node_order(self, node: str) -> list[str]:
        """The node's deterministic walk over the pool's blocks."""
        return list(_node_order(self, node))

    def rank(self, node: str) -> dict[str, int]:
        """Block cidr -> position in the node's walk (shared and cached: do not modify)."""
        return _rank(self, node)


# Cached: a /16 of /26 blocks is 1024 cidrs, built on every ADD (and every cas retry) otherwise;
# labnet's CNI server keeps these across requests.
@functools.lru_cache(maxsize=64)
def _node_order(pool: Pool, node: str) -> tuple[str, ...]:
    n, base, step = pool.n_blocks, int(pool.network.network_address), pool.block_len
    start = int(hashlib.sha256(node.encode()).hexdigest(), 16) % n
    return tuple(f"{ipaddress.IPv4Address(base + ((start + k) % n) * step)}/{pool.block_size}" for k in range(n))


@functools.lru_cache(maxsize=64)
def _rank(pool: Pool, node: str) -> dict[str, int]:
    return {c: i for i, c in enumerate(_node_order(pool, node))}


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: list[str | None]
    unallocated: list[int]
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def new(cls, cidr: str, node: str | None) -> Block:
        size = ipaddress.IPv4Network(cidr).num_addresses
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

    def address(self, ordinal: int) -> str:
        return str(ipaddress.IPv4Network(self.cidr).network_address + ordinal)

    def ordinal(self, address: str) -> int:
        return int(ipaddress.IPv4Address(address)) - int(ipaddress.IPv4Network(self.cidr).network_address)

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


@dataclass(frozen=True)
class Assignment:
    address: str
    block: str
    ordinal: int
    handle: str
    affinity: str | None  # the node owning the block
    borrowed: bool  # True when the block belongs to another node (the agent routes a /32)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address, "block": self.block, "ordinal": self.ordinal, "handle": self.handle,
            "affinity": self.affinity, "borrowed": self.borrowed,
        }


# -- reading ------------------------------------------------------------------------------


def _blocks(store: Datastore, pool: Pool | None = None) -> dict[str, tuple[KV, Block]]:
    out: dict[str, tuple[KV, Block]] = {}
    for kv in store.range(keys.BLOCKS):
        block = Block.decode(kv.value)
        if pool is None or pool.contains_block(block.cidr):
            out[block.cidr] = (kv, block)
    return out


def _handle(store: Datastore, handle_id: str) -> tuple[KV, dict[str, Any]] | None:
    kv = store.get(keys.handle(handle_id))
    return (kv, json.loads(kv.value)) if kv else None


def lookup(store: Datastore, handle_id: str, node: str | None = None) -> list[Assignment]:
    """The addresses a handle holds now (empty when it holds none)."""
    found = _handle(store, handle_id)
    if found is None:
        return []
    out = []
    for cidr in found[1].get("block", {}):
        kv = store.get(keys.block(cidr))
        if kv is None:
            continue
        block = Block.decode(kv.value)
        for i, h in enumerate(block.allocations):
            if h == handle_id:
                out.append(Assignment(block.address(i), cidr, i, handle_id, block.node,
                                      node is not None and block.node != node))
    return out


def blocks_of(store: Datastore, node: str) -> list[str]:
    """CIDRs of the blocks affine to `node` (from its affinity records), sorted."""
    prefix = keys.affinities(node)
    cidrs = [keys.cidr_from_key(kv.key[len(prefix):]) for kv in store.range(prefix)]
    return sorted(cidrs, key=lambda c: ipaddress.IPv4Network(c))


def usage(store: Datastore) -> dict[str, Any]:
    """Every block with its owner and allocations, and every handle: for checks and doctor."""
    blocks = []
    total = 0
    for cidr, (_, b) in sorted(_blocks(store).items(), key=lambda x: ipaddress.IPv4Network(x[0])):
        used = {b.address(i): h for i, h in enumerate(b.allocations) if h is not None}
        total += len(used)
        blocks.append({"cidr": cidr, "node": b.node, "allocated": used, "free": len(b.unallocated)})
    handles = sorted(kv.key[len(keys.HANDLES):] for kv in store.range(keys.HANDLES))
    return {"blocks": blocks, "handles": handles, "allocated": total}


# -- writing ------------------------------------------------------------------------------


def _claim(store: Datastore, node: str, pool: Pool, taken: set[str]) -> str | None:
    """Claim the node's first unclaimed block; its cidr, or None if the pool has none left.

    A lost race (a sibling process claimed the same block) still returns that cidr: the
    caller re-reads and finds it affine, or moves on.
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
    doc = json.loads(hkv.value) if hkv else {"handleID": handle_id}
    doc["block"] = {block.cidr: 1}  # new, or stale (its addresses were swept): take it over
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


def first_read(store: Datastore, handle_id: str, *extra: str, node: str | None = None) -> Snapshot:
    """What auto_assign starts from, in one round trip: the handle, the blocks, and `extra` keys
    the caller wants at the same revision (the CNI IPAM plugin adds the cluster settings).

    With `node`: only that node's own blocks, which its affinity keys name, instead of every
    block of the pool (an ADD at 200 nodes read and decoded 200 blocks, and etcd served them).
    The snapshot says so (`partial`); auto_assign reads them all when it has to look further.
    A process that assigns again (the CNI server) names the blocks it saw last time in the same
    read; a new one costs a second round trip."""
    if node is None:
        return store.snapshot([keys.handle(handle_id), *extra], [keys.BLOCKS])
    hint = _affine_seen.get(node, ())
    own = keys.affinities(node)
    snap = store.snapshot([keys.handle(handle_id), *extra, *(keys.block(c) for c in hint)], [own])
    cidrs = tuple(sorted(keys.cidr_from_key(kv.key[len(own):]) for kv in snap.prefixes[own]))
    found = dict(snap.keys)
    missing = [keys.block(c) for c in cidrs if keys.block(c) not in found]
    if missing:
        found.update(store.snapshot(missing, []).keys)  # each block's revision is compared at commit
    if len(_affine_seen) >= 256:
        _affine_seen.clear()
    _affine_seen[node] = cidrs
    blocks = sorted((kv for c in cidrs if (kv := found.get(keys.block(c))) is not None), key=lambda kv: kv.key)
    return Snapshot({k: found[k] for k in (keys.handle(handle_id), *extra)}, {keys.BLOCKS: blocks},
                    partial=frozenset({keys.BLOCKS}))


_affine_seen: dict[str, tuple[str, ...]] = {}  # node -> the blocks its last first_read found


def _held(snap: Snapshot, handle_id: str, node: str) -> list[Assignment]:
    """The addresses the handle holds in `snap` (its record names the blocks to look in)."""
    hkv = snap.keys.get(keys.handle(handle_id))
    if hkv is None:
        return []
    by_key = {kv.key: kv for kv in snap.prefixes[keys.BLOCKS]}
    out = []
    for cidr in json.loads(hkv.value).get("block", {}):
        kv = by_key.get(keys.block(cidr))
        if kv is None:
            continue
        block = Block.decode(kv.value)
        out += [Assignment(block.address(i), cidr, i, handle_id, block.node, block.node != node)
                for i, h in enumerate(block.allocations) if h == handle_id]
    return out


def auto_assign(
    store: Datastore, node: str, handle_id: str, pool: Pool,
    attrs: dict[str, Any] | None = None, prefer_first: bool = False, first: Snapshot | None = None,
) -> Assignment:
    """One address for `handle_id`; the same one again if the handle already holds one.

    Order: the node's own blocks (in its walk order, lowest free ordinal first), then a newly
    claimed block, then an address borrowed from another node's block. Raises PoolExhausted.
    `first`: a `first_read` the caller already made. In the usual case that read and one
    transaction (the block and the handle, each compared on its revision) are all it takes;
    a lost race re-reads and decides again, so two ADDs never share an address and two ADDs
    of one container end with one address.
    """
    attrs = {"node": node, **(attrs or {})}  # whose address it is, also when borrowed (gc reads it)
    snap = first if first is not None else first_read(store, handle_id, node=node)
    for _ in range(MAX_ATTEMPTS):
        partial = keys.BLOCKS in snap.partial
        if partial and snap.keys.get(keys.handle(handle_id)) is not None:
            snap = first_read(store, handle_id)  # a repeated ADD: its address may be borrowed, elsewhere
            continue
        held = _held(snap, handle_id, node)
        if held:
            return held[0]
        blocks: dict[str, tuple[KV, Block]] = {}
        for kv in snap.prefixes[keys.BLOCKS]:
            b = Block.decode(kv.value)
            if pool.contains_block(b.cidr):
                blocks[b.cidr] = (kv, b)
        rank = pool.rank(node)
        mine = sorted((c for c, (_, b) in blocks.items() if b.node == node), key=rank.__getitem__)
        cidr = next((c for c in mine if blocks[c][1].unallocated), None)
        prefer = 0 if prefer_first else None
        if cidr is None and partial:  # our blocks are full: claiming or borrowing needs them all
            snap = first_read(store, handle_id)
            continue
        if cidr is None:
            if _claim(store, node, pool, set(blocks)) is not None:
                snap = first_read(store, handle_id, node=node)
                continue  # allocate from the claimed block on the next pass
            others = sorted((c for c in blocks if c not in mine), key=rank.__getitem__)
            cidr = next((c for c in others if blocks[c][1].unallocated), None)
            prefer = None
            if cidr is None:  # every block of the pool exists and is full, all at one revision
                raise PoolExhausted(
                    f"IP pool {pool.cidr} is exhausted: all {pool.network.num_addresses} addresses in its "
                    f"{pool.n_blocks} /{pool.block_size} blocks are assigned (node {node}, handle {handle_id})"
                )
        kv, block = blocks[cidr]
        ordinal = block.take(handle_id, prefer, attrs)
        assert ordinal is not None, f"block {cidr} has free ordinals"
        done = _commit(store, snap, handle_id, node, kv, block, ordinal)
        if done is not None:
            return done
        snap = first_read(store, handle_id, node=node)  # a block or the handle moved: decide again
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts")


def assign_ip(
    store: Datastore, node: str, handle_id: str, pool: Pool, address: str,
    attrs: dict[str, Any] | None = None, first: Snapshot | None = None,
) -> Assignment:
    """Exactly `address` for `handle_id` (Calico's AssignIP: podman's --ip, a pod's `ip:`), the
    same again if the handle holds it already. Its block is claimed for `node` if nobody has
    it yet, else the address is borrowed from the block's node. AddressUnavailable when it is
    outside the pool, another container holds it, or the handle holds another address."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise AddressUnavailable(f"requested address {address!r} is not an IPv4 address") from None
    if ip not in pool.network:
        raise AddressUnavailable(f"requested address {ip} is outside IP pool {pool.cidr}")
    cidr = str(ipaddress.IPv4Network(f"{ip}/{pool.block_size}", strict=False))
    bkey = keys.block(cidr)
    attrs = {"node": node, **(attrs or {})}
    snap = first if first is not None and keys.BLOCKS not in first.partial else first_read(store, handle_id)
    for _ in range(MAX_ATTEMPTS):
        held = _held(snap, handle_id, node)
        if held:
            if held[0].address == str(ip):
                return held[0]
            raise AddressUnavailable(f"handle {handle_id} already holds {held[0].address}; it cannot also "
                                     f"have the requested {ip} (DEL it first)")
        kv = next((b for b in snap.prefixes[keys.BLOCKS] if b.key == bkey), None)
        if kv is None:
            _claim_block(store, node, cidr)
            snap = first_read(store, handle_id)  # ours now, or a racer's: either way, decide again
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
        snap = first_read(store, handle_id)
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts for {ip}")


def release(store: Datastore, handle_id: str) -> list[str]:
    """Free every address of `handle_id` and delete the handle. Unknown handle: nothing to do."""
    for _ in range(MAX_ATTEMPTS):
        found = _handle(store, handle_id)
        if found is None:
            return []
        kv, doc = found
        freed: list[str] = []
        for cidr in doc.get("block", {}):
            freed += _release_in(store, cidr, handle_id)
        if store.delete(kv.key, kv.mod_revision):
            return freed
    raise IpamConflict(f"handle {handle_id}: gave up after {MAX_ATTEMPTS} attempts")


def tunnel_handle(node: str) -> str:
    return f"ipip-tunnel-addr-{node}"


def cluster_pool(store: Datastore) -> Pool:
    kv = store.get(keys.config("cluster"))
    if kv is None:
        raise IpamError(f"no lab settings at etcd key {keys.config('cluster')} (pool cidr unknown)")
    pool = json.loads(kv.value).get("pool") or {}
    return Pool(pool["cidr"], int(pool.get("block_size", 26)))


def tunnel_address(store: Datastore, node: str, pool: Pool | None = None) -> str:
    """The tunl0 address of `node`: the first address of its first block (idempotent)."""
    pool = pool or cluster_pool(store)
    return auto_assign(store, node, tunnel_handle(node), pool, {"node": node, "type": "ipipTunnelAddress"},
                       prefer_first=True).address


def gc(store: Datastore, network: str, valid_handles: set[str], node: str) -> list[str]:
    """Release the handles of `network` on `node` that are not in `valid_handles` (those of the
    attachments the runtime of that node still has; other nodes' pods are not its to judge).

    Also sweeps the node's block entries of the network whose handle record is missing (left by
    a plugin older than the one-transaction write of block and handle).
    """
    prefix = f"{network}."
    snap = store.snapshot([], [keys.HANDLES + prefix, keys.BLOCKS])
    blocks = [Block.decode(kv.value) for kv in snap.prefixes[keys.BLOCKS]]

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
