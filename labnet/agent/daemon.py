"""labnet-agent: one per node, the seed's calico-node (registration, tunnel, BGP, routes, NAT).

One asyncio loop owns the BGP speaker, the status socket and all decisions. Datastore and
netlink calls block, so they run in worker threads; etcd watches run in their own threads and
only wake the loop. Every pass of `sync()` is a full, idempotent reconciliation from a fresh
view of the datastore and the speaker's Loc-RIB. The datastore view is a cache
(labnet.agent.cache) that watch events update in place; a full read every `resync_interval`
(and after a watch reconnects) is the safety net, so a missed event costs at most one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labnet import ipam
from labnet.agent import kernel, nat
from labnet.agent.cache import KeyCache
from labnet.agent.config import AgentConfig
from labnet.agent.detect import Detected, detect
from labnet.agent.nodes import NodeRecord, name_problems, read_nodename
from labnet.agent.peers import PeerSpec, compute_peers, peer_inputs
from labnet.agent.routes import (
    IPIP_DEVICE,
    VXLAN6_DEVICE,
    DesiredRoute,
    Learned,
    Net,
    Underlay,
    blackholes,
    desired_routes,
    vxlan_plan,
)
from labnet.agent.status import ROUTE_NOT_PROGRAMMED
from labnet.agent.tunnel import Tunnel, Vtep, ensure_vxlan, remove_vxlan, start_ipip, sync_vxlan
from labnet.agent.tunnel.vxlan import IFNAME as VXLAN_DEVICE
from labnet.agent.tunnel.vxlan import PROTO_FELIX, VNI6
from labnet.bgp.codec import prefix_key
from labnet.bgp.rib import Change
from labnet.bgp.speaker import PeerConfig, Speaker
from labnet.errors import LabnetError
from labnet.etcd import keys
from labnet.etcd.settings import CLUSTER_KEY, decode_cluster_config
from labnet.etcd.store import KV, Datastore, DatastoreUnavailable, Event
from labnet.settings import ClusterSettings, PoolSettings

log = logging.getLogger("labnet.agent")

SETTINGS_KEY = CLUSTER_KEY
# Blocks are not watched: every pod's address changes one, which would wake every agent of the
# cluster (nodes x pods passes, and etcd's fan-out of each block to every node). The agent reads
# them in each full read; the node's CNI server kicks one when this node borrows or releases.
WATCHED = (keys.NODES, keys.affinities(), SETTINGS_KEY)
CACHED = (*WATCHED, keys.BLOCKS, keys.BLOCKS6)
BURST_PASSES = 3  # back-to-back passes before a pause: bounds the pass rate under sustained churn
IPV6_SETUP_FOR = 10.0  # seconds an IPv6 address may take to leave DAD before the node goes on IPv4-only
COALESCE = 0.05  # that pause: seconds to gather a burst of RIB changes / watch events
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
RTM_NEWROUTE, RTM_DELROUTE = 24, 25


@dataclass
class Snapshot:
    """What one pass read from the datastore."""

    settings: ClusterSettings
    nodes: list[NodeRecord]
    my_blocks: list[str]
    affine_nodes: set[str]
    blocks_by_node: dict[str, list[str]]
    borrowed: list[Net]


@dataclass
class State:
    started: float = field(default_factory=time.time)
    ready: bool = False
    problems: list[str] = field(default_factory=list)
    route_errors: list[str] = field(default_factory=list)
    gateway_problem: str | None = None
    routes_skipped: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    borrowed: list[str] = field(default_factory=list)
    passes: int = 0
    last_error: str | None = None


class Agent:
    def __init__(self, cfg: AgentConfig, store: Datastore | None = None) -> None:
        self.cfg = cfg
        self._store = store
        self.state = State()
        self.cni_name: str | None = None
        self.name = ""
        self.underlay: Detected | None = None
        self.settings: ClusterSettings | None = None
        self.tunnel: Tunnel | None = None
        self.tunnel_address: str | None = None
        self.vxlan_mac: str | None = None
        self.tunnel_address6: str | None = None  # vxlan-v6.calico's, in VXLAN mode of an IPv6 pool
        self.vxlan_mac6: str | None = None
        self.ipv6_problem: str | None = None  # why this node routes IPv4 only, in a dual-stack cluster
        self.speaker: Speaker | None = None
        self.peers: dict[str, PeerSpec] = {}
        self.peer_configs: dict[str, PeerConfig] = {}
        self.originated: set[Net] = set()
        self.nat_pools: tuple[str, ...] = ()
        self.snapshot: Snapshot | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ds_dirty = True  # full re-read of the datastore wanted
        self._cache = KeyCache(CACHED)
        self._cache_dirty = False  # watch events changed the cache since the last pass
        # decoded once per revision: a pass rebuilds the snapshot from every node and block, and
        # while a 100-node lab comes up that is two passes per node on every node
        self._block_memo: dict[str, tuple[int, ipam.Block | None, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]] = {}
        self._node_memo: dict[str, tuple[int, NodeRecord | None]] = {}
        self._applied: tuple[Any, ...] | None = None  # what the last kernel pass programmed
        self._kernel_due = True
        self._peers_input: tuple[Any, ...] | None = None  # what _sync_peers last worked from
        self._routes_vx: tuple[int | None, str | None] | None = None  # set: state.routes is stale
        self._routes_lock = asyncio.Lock()
        self._watch_threads: list[threading.Thread] = []
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grace_until = 0.0

    # -- datastore ---------------------------------------------------------------------------

    @property
    def store(self) -> Datastore:
        if self._store is None:
            from labnet.etcd.client import EtcdStore

            self._store = EtcdStore(self.cfg.etcd.store_config())
        return self._store

    def _read_settings(self) -> ClusterSettings:
        return decode_cluster_config(self.store.get(SETTINGS_KEY))

    def _read_all(self) -> dict[str, list[KV]]:
        """One full read of everything the agent watches (4 requests)."""
        kv = self.store.get(SETTINGS_KEY)
        out = {SETTINGS_KEY: [kv] if kv is not None else []}
        # IPv6 blocks are read only by a dual-stack node: an IPv4 lab's passes read what they did
        for prefix in (keys.NODES, keys.affinities(), keys.BLOCKS, *((keys.BLOCKS6,) if self._dual else ())):
            out[prefix] = self.store.range(prefix)
        return out

    def _read_snapshot(self) -> Snapshot:
        read = self._read_all()
        settings = read[SETTINGS_KEY]
        return self._build_snapshot(settings[0] if settings else None, read[keys.NODES],
                                    read[keys.affinities()], read[keys.BLOCKS] + read.get(keys.BLOCKS6, []))

    def _cached_snapshot(self) -> Snapshot:
        c = self._cache
        return self._build_snapshot(c.get(SETTINGS_KEY, SETTINGS_KEY), c.values(keys.NODES),
                                    c.values(keys.affinities()), c.values(keys.BLOCKS) + c.values(keys.BLOCKS6))

    def _decode_block(self, kv: KV) -> tuple[ipam.Block | None, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]:
        """The block, and the addresses in it that were given to this node (borrowed)."""
        hit = self._block_memo.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision:
            return hit[1], hit[2]
        try:
            block: ipam.Block | None = ipam.Block.decode(kv.value)
        except (ValueError, KeyError):
            block = None
        given: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
        if block is not None and block.node != self.name:
            given = tuple(ipaddress.ip_address(block.address(i)) for i, h in enumerate(block.allocations)
                          if h is not None and (block.attributes.get(h) or {}).get("node") == self.name)
        self._block_memo[kv.key] = (kv.mod_revision, block, given)
        return block, given

    def _decode_node(self, kv: KV) -> NodeRecord | None:
        hit = self._node_memo.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision:
            return hit[1]
        rec: NodeRecord | None = None
        try:
            rec = NodeRecord.decode(kv.value, kv.key)
        except LabnetError as exc:
            log.warning("%s", exc)
        self._node_memo[kv.key] = (kv.mod_revision, rec)
        return rec

    def _build_snapshot(self, settings_kv: KV | None, node_kvs: list[KV], affinity_kvs: list[KV],
                        block_kvs: list[KV]) -> Snapshot:
        settings = decode_cluster_config(settings_kv)
        nodes = [rec for kv in node_kvs if (rec := self._decode_node(kv)) is not None]
        if len(self._node_memo) > len(node_kvs):
            live = {kv.key for kv in node_kvs}
            for gone in set(self._node_memo) - live:
                del self._node_memo[gone]
        by_node: dict[str, list[str]] = {}
        for kv in affinity_kvs:
            found = keys.parse_affinity(kv.key)  # either family
            if found is not None and (self._dual or ":" not in found[1]):
                by_node.setdefault(found[0], []).append(found[1])
        mine = sorted(by_node.get(self.name, []), key=lambda b: prefix_key(ipaddress.ip_network(b)))
        borrowed: set[Net] = set()
        my_nets = [ipaddress.ip_network(b) for b in mine]
        present: set[str] = set()
        for kv in block_kvs:
            present.add(kv.key)
            block, given = self._decode_block(kv)
            if block is None or block.node == self.name:
                continue
            for addr in given:
                if not any(addr in n for n in my_nets):
                    borrowed.add(ipaddress.ip_network(addr))
        for gone in set(self._block_memo) - present:
            del self._block_memo[gone]
        return Snapshot(settings, nodes, mine, set(by_node), by_node, sorted(borrowed, key=prefix_key))

    def _watch(self, prefix: str) -> None:
        """Feed every change under `prefix` to the loop (runs in its own thread until stopped)."""
        assert self._loop is not None
        while not self._stop.is_set():
            try:
                events = self.store.watch(prefix)  # fixes its start revision now
                # events between our last full read and this watch are not in the cache
                self._loop.call_soon_threadsafe(self.kick, True)
                for ev in events:
                    self._loop.call_soon_threadsafe(self._on_event, prefix, ev)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # etcd gone for now: the periodic resync covers us meanwhile
                log.debug("watch %s: %s", prefix, exc)
            if self._stop.is_set():
                return
            time.sleep(1.0)  # watch reconnect backoff (a daemon timer)

    def _on_event(self, prefix: str, ev: Event) -> None:
        if self._cache.apply(prefix, ev):
            self._cache_dirty = True
            self._wake.set()

    def _watch_kernel(self) -> None:
        """Wake a kernel pass when someone removes a route or changes the default route (the
        seed's missing default route, a block route deleted by hand): no datastore event says
        so, and the full pass only comes with the resync. Runs in its own thread."""
        assert self._loop is not None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_IPV4_ROUTE | (RTMGRP_IPV6_ROUTE if self._dual else 0)))
            sock.settimeout(1.0)
        except OSError as exc:
            log.warning("route monitor: %s (kernel drift is found at the next resync only)", exc)
            return
        with sock:
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:  # ENOBUFS: events were lost; a pass finds what they said
                    data = b""
                if not data or route_event_matters(data):
                    self._loop.call_soon_threadsafe(self._kernel_event)

    def _kernel_event(self) -> None:
        self._kernel_due = True
        self._wake.set()

    def kick_threadsafe(self, datastore: bool = False) -> None:
        """kick() from another thread (the CNI server's, in the node's process)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.kick, datastore)

    def kick(self, datastore: bool = False) -> None:
        """Wake the loop; `datastore`: re-read the datastore fully (and program the kernel)."""
        if datastore:
            self._ds_dirty = True
        self._wake.set()

    # -- startup -----------------------------------------------------------------------------

    async def _retry(self, what: str, fn: Any, *args: Any) -> Any:
        """Call a blocking fn in a thread until it works: etcd may come up after the agent."""
        delay = 0.2
        last = ""
        while not self._stop.is_set():
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception as exc:  # etcd not up yet, IPAM full, a device in the way: say so, retry
                text = f"{exc}" if isinstance(exc, (LabnetError, DatastoreUnavailable)) else f"{type(exc).__name__}: {exc}"
                if text != last:
                    log.warning("%s: %s (retrying)", what, text)
                    last = text
                self.state.last_error = f"{what}: {text}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 5.0)
        raise asyncio.CancelledError()

    def _nodenames(self) -> None:
        try:
            self.cni_name = read_nodename(self.cfg.nodename_file)
        except LabnetError as exc:
            if not self.cfg.nodename:
                raise
            log.warning("%s", exc)
        self.name = self.cfg.nodename or self.cni_name or ""
        if self.cfg.nodename and self.cfg.nodename != self.cni_name:
            log.warning("node name override: registering as %r while the CNI plugin uses %r",
                        self.name, self.cni_name)

    @property
    def _dual(self) -> bool:
        """This node routes IPv6 blocks too (a dual-stack pool and an IPv6 underlay address)."""
        return bool(self.settings and self.settings.pool6 and self.underlay and self.underlay.address6)

    @property
    def _families(self) -> tuple[int, ...]:
        return kernel.DUAL if self._dual else kernel.IPV4

    def _register(self) -> None:
        assert self.underlay is not None and self.settings is not None
        s = self.settings
        asn = s.node_asn.get(self.name)
        a6 = self.underlay.address6
        rec = NodeRecord(
            name=self.name, ipv4_address=str(self.underlay.address), asn=asn,
            ipip_tunnel_addr=self.tunnel_address if s.pool.encap == "ipip" else None,
            vxlan_tunnel_addr=self.tunnel_address if s.pool.encap == "vxlan" else None,
            vxlan_tunnel_mac=self.vxlan_mac, pid=os.getpid(),
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.state.started)),
            interface=self.underlay.ifname, ipv6_address=str(a6) if a6 is not None and s.pool6 else None,
            vxlan_tunnel_addr_v6=self.tunnel_address6, vxlan_tunnel_mac_v6=self.vxlan_mac6,
        )
        self.store.put(keys.node(self.name), rec.encode())

    def _setup_tunnel(self) -> None:
        assert self.underlay is not None and self.settings is not None
        pool = self.settings.pool
        # The node claims its first block now, also without encapsulation: its blackhole and BGP
        # route exist before the first pod (labnet up waits for them). The block's first address
        # is the tunnel address (reserved, unused, when there is no tunnel).
        first = ipam.tunnel_address(self.store, self.name, ipam.Pool(pool.cidr, pool.block_size))
        if pool.encap == "none":
            return
        self.tunnel_address = first
        # cluster `mtu` is the pod MTU, which the tunnel must carry; default: underlay - overhead
        mtu = self.settings.mtu
        if pool.encap == "ipip":
            # persistent TUN (adopted after a restart): tunl0 and its routes outlive a killed agent
            self.tunnel = start_ipip(self.underlay.ip, first, mtu, persist=True)
            log.info("tunl0 up (%s): %s/32", self.tunnel.mode, first)
        else:
            self.vxlan_mac = ensure_vxlan(self.underlay.ip, first, mtu)
            log.info("%s up: %s/32 mac %s", VXLAN_DEVICE, first, self.vxlan_mac)

    async def _setup_ipv6(self) -> None:
        """IPv6 beside IPv4, after it: a node whose IPv6 will not come up (no address on its
        interface, still tentative, the device refused) keeps routing IPv4 and says why."""
        assert self.settings is not None and self.underlay is not None
        pool6 = self.settings.pool6
        if pool6 is None:
            return
        deadline = time.monotonic() + IPV6_SETUP_FOR
        while True:
            try:
                if self.underlay.address6 is None:  # DAD may still hold it: look again
                    self.underlay = await asyncio.to_thread(detect, self.cfg.bgp_address)
                await asyncio.to_thread(self._setup_tunnel6, pool6)
                self.ipv6_problem = None
                return
            except Exception as exc:  # the datastore, the address, the device: said, then IPv4 goes on
                self.ipv6_problem = f"IPv6 not set up (IPv4 goes on): {exc}"
            if time.monotonic() > deadline or self._stop.is_set():
                log.error("%s", self.ipv6_problem)
                self.underlay = replace(self.underlay, address6=None)  # not dual: IPv4 only
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    def _setup_tunnel6(self, pool6: PoolSettings) -> None:
        """The first IPv6 block (its blackhole and BGP route exist before the first pod), and
        vxlan-v6.calico when the IPv6 pool is in VXLAN mode."""
        assert self.underlay is not None and self.settings is not None
        if self.underlay.address6 is None:
            raise LabnetError(f"node {self.name}: the cluster has IPv6 pool {pool6.cidr} but {self.underlay.ifname} "
                              "has no global IPv6 address to route its IPv6 blocks through")
        first = ipam.tunnel_address(self.store, self.name, ipam.Pool(pool6.cidr, pool6.block_size))
        if pool6.encap != "vxlan":
            return
        self.tunnel_address6 = first
        self.vxlan_mac6 = ensure_vxlan(str(self.underlay.address6.ip), first, self.settings.mtu,
                                       ifname=VXLAN6_DEVICE, vni=VNI6)
        log.info("%s up: %s/128 mac %s", VXLAN6_DEVICE, first, self.vxlan_mac6)

    async def _start_speaker(self) -> None:
        assert self.underlay is not None and self.settings is not None
        b = self.settings.bgp
        if not b.enabled:
            return
        # Listen on 0.0.0.0:179 as BIRD does in calico-node (peers may come in on any address).
        sp = Speaker(self.settings.asn_of(self.name), self.underlay.ip, self.underlay.ip,
                     restart_time=b.restart_time, bind="0.0.0.0",
                     next_hop6=self.underlay.ip6 if self._dual else None,
                     net6=str(self.underlay.address6.network) if self._dual and self.underlay.address6 else None,
                     link_local6=self.underlay.link_local6 if self._dual else None)
        sp.on_change(self._on_rib_change)
        await sp.start()
        self.speaker = sp
        if b.graceful_restart:
            self._grace_until = time.monotonic() + b.restart_time

    def _on_rib_change(self, _change: Change) -> None:
        self._wake.set()

    # -- one reconciliation pass ------------------------------------------------------------

    async def _sync_peers(self, snap: Snapshot) -> None:
        if self.speaker is None or self.underlay is None:
            return
        b = snap.settings.bgp
        specs = {p.address: p for p in compute_peers(self.name, self.underlay.ip, snap.nodes, snap.settings,
                                                       self.underlay.ip6 if self._dual else None)}
        want = {
            p.address: PeerConfig(
                address=p.address, asn=p.asn, passive=p.passive, rr_client=p.rr_client,
                next_hop_self=p.next_hop_self, graceful_restart=b.graceful_restart, hold_time=b.hold_time,
                peer_type=p.peer_type, connect_retry=min(5.0, max(1.0, b.hold_time / 3)),
            )
            for p in specs.values()
        }
        for addr, have in list(self.peer_configs.items()):
            if want.get(addr) != have:  # gone, or its session settings changed: re-create it
                log.info("BGP peer %s (%s) removed", addr, have.peer_type)
                await self.speaker.remove_peer(addr)
                del self.peer_configs[addr]
                self.peers.pop(addr, None)
        for addr, pc in want.items():
            if addr in self.peer_configs:
                continue
            self.speaker.add_peer(pc)
            self.peer_configs[addr] = pc
            spec = specs[addr]
            self.peers[addr] = spec
            log.info("BGP peer %s AS %d (%s%s%s)", addr, spec.asn, spec.peer_type,
                     ", passive" if spec.passive else "", ", rr-client" if spec.rr_client else "")

    def _sync_originated(self, snap: Snapshot) -> None:
        if self.speaker is None:
            return
        want = {ipaddress.ip_network(b) for b in snap.my_blocks} | set(snap.borrowed)
        if not self._dual:
            want = {p for p in want if p.version == 4}
        for p in sorted(self.originated - want, key=prefix_key):
            self.speaker.withdraw(p)
        for p in sorted(want - self.originated, key=prefix_key):
            self.speaker.originate(p)
        self.originated = want

    def _learned(self) -> list[Learned]:
        if self.speaker is None:
            return []
        out = []
        for prefix, path in self.speaker.loc_rib().items():
            if path.source is None or path.next_hop is None:
                continue
            out.append(Learned(prefix, path.next_hop, path.source.address))
        return out

    def _vteps(self, snap: Snapshot, version: int = 4) -> list[Vtep]:
        out = []
        for n in snap.nodes:
            vtep: tuple[object, ...]
            try:  # one node's malformed record must not stop the others' routes
                if version == 4:
                    vtep = (n.address, n.vxlan_tunnel_addr, n.vxlan_tunnel_mac)
                else:
                    vtep = (n.address6, n.vxlan_tunnel_addr_v6, n.vxlan_tunnel_mac_v6)
                if n.name == self.name or not all(vtep):
                    continue
                blocks = tuple(b for b in snap.blocks_by_node.get(n.name, ())
                               if ipaddress.ip_network(b).version == version)
                out.append(Vtep(n.name, str(vtep[0]), str(vtep[1]), str(vtep[2]), blocks))
            except (LabnetError, ValueError) as exc:
                log.warning("node %s: bad VTEP: %s", n.name, exc)
        return out

    def _desired(self, snap: Snapshot) -> tuple[dict[Net, DesiredRoute], dict[str, list[Vtep]] | None]:
        """The routes to program, and the VTEPs per VXLAN device (None: no VXLAN device)."""
        assert self.underlay is not None
        learned = self._learned()  # one read of the Loc-RIB for both families
        want, vxlan = self._plan(snap, learned, snap.settings.pool,
                                 Underlay(self.underlay.ifname, self.underlay.address), VXLAN_DEVICE)
        pool6 = snap.settings.pool6
        if pool6 is not None and self.underlay.address6 is not None:
            under6 = Underlay(self.underlay.ifname, self.underlay.address6)
            want6, vxlan6 = self._plan(snap, learned, pool6, under6, VXLAN6_DEVICE)
            want.update(want6)
            if vxlan6 is not None:
                vxlan = {**(vxlan or {}), **vxlan6}
        return want, vxlan

    def _plan(self, snap: Snapshot, all_learned: list[Learned], pool: PoolSettings, under: Underlay,
              vxlan_dev: str) -> tuple[dict[Net, DesiredRoute], dict[str, list[Vtep]] | None]:
        """One family's routes: its pool, its own blocks, what BGP learned of that family."""
        version = pool.version
        mine = [b for b in snap.my_blocks if ipaddress.ip_network(b).version == version]
        learned = [ln for ln in all_learned if ln.prefix.version == version]
        if pool.encap == "vxlan":
            tunnel, direct = vxlan_plan(vteps=self._vteps(snap, version), mode=pool.mode, underlay=under)
            want = {r.dst: r for r in blackholes(mine)}
            for dst, r in direct.items():
                want.setdefault(dst, r)
            # Pool routes come from the datastore here; BGP (if on) only carries what lies outside
            outside = [ln for ln in learned if not ln.prefix.subnet_of(pool.network)]  # type: ignore[arg-type]
            for dst, r in desired_routes(own_blocks=[], learned=outside, pool=pool.network, encap="none",
                                         mode="never", underlay=under).items():
                want.setdefault(dst, r)
            return want, {vxlan_dev: tunnel}
        return desired_routes(
            own_blocks=mine, learned=learned, pool=pool.network, encap=pool.encap,
            mode=pool.mode, underlay=under, originated=self.originated, tunnel_dev=IPIP_DEVICE,
        ), None

    def _apply_kernel(self, want: dict[Net, DesiredRoute], vteps: dict[str, list[Vtep]] | None, keep: bool) -> None:
        failed: list[str] = []
        for dev, tunnel in (vteps or {}).items():
            try:  # one device's trouble must not stop the other family's routes
                res = sync_vxlan(tunnel, ifname=dev)
            except (LabnetError, OSError) as exc:
                failed.append(f"{dev}: {exc}")
                continue
            for x in res.added + res.removed:
                log.info("%s: %s", dev, x)
        # reads by rtnl; pyroute2 only if it writes
        r = kernel.reconcile(want, keep_unicast=keep, families=self._families)
        r.errors += failed
        self._report_kernel(r, vteps)

    def _report_kernel(self, r: kernel.ReconcileResult, vteps: dict[str, list[Vtep]] | None) -> None:
        for x in r.added:
            log.info("route + %s", x)
        for x in r.removed:
            log.info("route - %s", x)
        for x in r.errors:
            if x not in self.state.route_errors:  # once, not on every pass while it lasts
                log.warning("route: %s", x)
        self.state.route_errors = r.errors
        self.state.routes_skipped = r.skipped
        vx = (PROTO_FELIX, ",".join(sorted(vteps))) if vteps is not None else (None, None)
        # state.routes (status only) is read back when a status asks for it: a dump less per pass
        self._routes_vx = vx
        self.state.gateway_problem = kernel.pod_gateway_problem()

    def _nat_want(self, snap: Snapshot) -> tuple[str, ...]:
        """The pools whose traffic leaving them is masqueraded (an IPv6 one: NAT66)."""
        pools = snap.settings.pools if self._dual else (snap.settings.pool,)
        return tuple(p.cidr for p in pools if p.nat_outgoing)

    def _apply_nat(self, snap: Snapshot) -> None:
        want = self._nat_want(snap)
        if want == self.nat_pools:
            return
        devs = [IPIP_DEVICE, VXLAN_DEVICE, VXLAN6_DEVICE] if self._dual else [IPIP_DEVICE, VXLAN_DEVICE]
        fams = {nat.family_of(p): p for p in want}
        for fam in ("ip", "ip6"):  # what is applied is recorded family by family, as each succeeds
            pool = fams.get(fam)
            had = tuple(p for p in self.nat_pools if nat.family_of(p) == fam)
            if pool and had != (pool,):
                nat.apply_nat(pool, devs, where=f"node {self.name}")
                log.info("nat_outgoing: masquerade %s leaving the pool (nft table %s %s)", pool, fam, nat.TABLE)
            elif not pool and had:
                nat.remove_nat(where=f"node {self.name}", family=fam)
            self.nat_pools = tuple(p for p in self.nat_pools if nat.family_of(p) != fam) + ((pool,) if pool else ())

    def _all_established(self) -> bool:
        if self.speaker is None:
            return True
        return all(p.state == "Established" for p in self.speaker.status())

    async def _refresh_snapshot(self) -> bool:
        """Bring self.snapshot up to date: a full read when due, else from the watch cache.
        False when there is no snapshot to work with yet."""
        if self._ds_dirty or self.snapshot is None:
            self._ds_dirty = False
            self._cache_dirty = False
            self._kernel_due = True  # the full pass also repairs the kernel (drift, errors)
            self._peers_input = None
            mark = self._cache.mark()
            try:
                read = await asyncio.to_thread(self._read_all)
                self._cache.load(mark, read)
                self.snapshot = self._cached_snapshot()
            except (DatastoreUnavailable, LabnetError, ValueError) as exc:
                self.state.last_error = f"datastore: {exc}"
                log.warning("datastore read failed: %s", exc)
                return self.snapshot is not None
            return True
        self._cache_dirty = False
        try:
            self.snapshot = self._cached_snapshot()
        except (LabnetError, ValueError) as exc:
            self.state.last_error = f"datastore: {exc}"
            log.warning("datastore read failed: %s", exc)
        return True

    async def sync(self) -> None:
        if self._ds_dirty or self._cache_dirty or self.snapshot is None:
            if not await self._refresh_snapshot():
                return
            snap = self.snapshot
            assert snap is not None
            if not any(n.name == self.name for n in snap.nodes):  # our record went away: put it back
                log.warning("node record %s missing from the datastore; registering again", keys.node(self.name))
                try:
                    await asyncio.to_thread(self._register)
                except (DatastoreUnavailable, LabnetError) as exc:
                    self.state.last_error = f"node registration: {exc}"
            peers_input = (peer_inputs(self.name, snap.nodes, snap.settings), self.underlay)
            if peers_input != self._peers_input:  # most events (block claims) do not touch peers
                await self._sync_peers(snap)
                self._peers_input = peers_input
            self._sync_originated(snap)
            if self._nat_want(snap) != self.nat_pools:
                await asyncio.to_thread(self._apply_nat, snap)
        snap = self.snapshot
        assert snap is not None
        want, vteps = self._desired(snap)
        keep = time.monotonic() < self._grace_until and not self._all_established()
        # netlink dumps cost ~10 ms of CPU per pass: skip them when nothing to program changed
        # since a clean pass (a full pass, every resync_interval, always programs and re-reads)
        applied = (want, vteps, keep)
        if self._kernel_due or applied != self._applied:
            self._kernel_due = False
            self._applied = None
            await asyncio.to_thread(self._apply_kernel, want, vteps, keep)
            if not (self.state.route_errors or self.state.routes_skipped or self.state.gateway_problem):
                self._applied = applied
        registered = {n.name for n in snap.nodes}
        problems = name_problems(self.name, self.cni_name, self.cfg.nodename_file, snap.affine_nodes, registered)
        problems += [f"{ROUTE_NOT_PROGRAMMED}{e}" for e in self.state.route_errors]
        if self.state.gateway_problem:
            problems.append(self.state.gateway_problem)
        if not snap.my_blocks:
            problems.append(f"node {self.name!r} owns no IPAM block yet: nothing to blackhole or advertise")
        self.state.problems = problems
        self.state.blocks = list(snap.my_blocks)
        self.state.borrowed = [str(b) for b in snap.borrowed]
        self.state.passes += 1
        self.state.ready = True
        self.state.last_error = None

    # -- status ------------------------------------------------------------------------------

    def _tunnel_status(self) -> dict[str, Any]:
        """Tunnel part of the status. Uses netlink, so call it off the event loop's thread
        (pyroute2 refuses to start inside a running asyncio loop)."""
        s = self.settings
        tun: dict[str, Any] = {"mode": "none", "encap_mode": s.pool.mode if s else None, "device": None,
                               "address": self.tunnel_address, "mtu": None, "counters": {}}
        if self.tunnel is not None:
            try:
                ts = self.tunnel.status()
            except Exception as exc:  # the status must answer even when the tunnel is broken
                ts = {"error": str(exc)}
            tun.update(mode=ts.get("mode", self.tunnel.mode), device=ts.get("ifname", IPIP_DEVICE),
                       mtu=ts.get("mtu"), counters=ts.get("counters", {}))
            # whether this agent adopted a tunl0 left by the one before it (userspace, persistent TUN)
            tun.update({k: ts[k] for k in ("adopted", "error") if k in ts})
            failed = getattr(self.tunnel, "failed", None)
            if failed is not None:
                tun["error"] = f"userspace {IPIP_DEVICE} datapath thread failed: {failed!r}"
        elif self.vxlan_mac is not None:
            tun.update(mode="vxlan", device=VXLAN_DEVICE, mtu=_link_mtu(VXLAN_DEVICE), mac=self.vxlan_mac)
        return tun

    def _tunnel6_status(self) -> dict[str, Any] | None:
        """The IPv6 pool's tunnel (vxlan-v6.calico), None without one. Netlink: off the loop."""
        if self.vxlan_mac6 is None:
            return None
        return {"mode": "vxlan", "device": VXLAN6_DEVICE, "address": self.tunnel_address6,
                "mtu": _link_mtu(VXLAN6_DEVICE), "mac": self.vxlan_mac6}

    def status(self, tunnel: dict[str, Any] | None = None, tunnel6: dict[str, Any] | None = None) -> dict[str, Any]:
        """The status document (see labnet.agent.status). Call from the event loop's thread,
        with `tunnel` from _tunnel_status() computed in a worker thread."""
        u = self.underlay
        s = self.settings
        peers = []
        if self.speaker is not None:
            for ps in self.speaker.status():
                spec = self.peers.get(ps.address)
                peers.append({
                    "peer_address": ps.address, "peer_type": ps.peer_type,
                    "state": "up" if ps.state == "Established" else "start",
                    "since": time.strftime("%H:%M:%S", time.gmtime(ps.since)), "since_epoch": ps.since,
                    "info": ps.info or ps.state, "bgp_state": ps.state, "unacked": ps.unacked,
                    "stalled": ps.stalled,
                    "asn": spec.asn if spec else None, "name": spec.name if spec else None,
                })
        tun = tunnel if tunnel is not None else self._tunnel_status()
        problems = list(self.state.problems)
        if self.ipv6_problem:
            problems.append(self.ipv6_problem)
        if self.state.last_error:
            problems.append(self.state.last_error)
        return {
            "nodename": self.name, "cni_nodename": self.cni_name, "pid": os.getpid(),
            "supervisor_pid": _supervisor_pid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.state.started)),
            "ready": self.state.ready, "passes": self.state.passes,
            "bgp_address": str(u.address) if u else None, "interface": u.ifname if u else None,
            **({"bgp_address6": str(u.address6)} if u and u.address6 and self._dual else {}),
            "router_id": u.ip if u and self.speaker else None,
            "asn": s.asn_of(self.name) if s else None,
            "tunnel": tun, **({"tunnel6": tunnel6} if tunnel6 else {}), "peers": peers, "blocks": self.state.blocks, "borrowed": self.state.borrowed,
            "routes": self.state.routes, "routes_skipped": self.state.routes_skipped,
            "nat": self._nat_status(),
            "problems": problems,
        }

    def _nat_status(self) -> dict[str, Any]:
        """NAT as the status shows it: the IPv4 pool's table (as ever), and the IPv6 one's."""
        by_fam = {nat.family_of(p): p for p in self.nat_pools}
        out: dict[str, Any] = {"enabled": "ip" in by_fam, "table": f"ip {nat.TABLE}" if "ip" in by_fam else None,
                               "pool": by_fam.get("ip")}
        if "ip6" in by_fam:
            out["ipv6"] = {"table": f"ip6 {nat.TABLE}", "pool": by_fam["ip6"]}
        return out

    async def _refresh_routes(self) -> None:
        """state.routes as the kernel has them since the last kernel step (read once per step)."""
        async with self._routes_lock:  # a concurrent status waits for this read, not the old list
            vx = self._routes_vx
            if vx is None:
                return
            self._routes_vx = None  # a kernel step from now on marks it stale again
            try:
                devs = tuple((vx[1] or "").split(",")) if vx[1] else ()
                self.state.routes = await asyncio.to_thread(
                    kernel.programmed, vx[0], None, None, self._families, devs)
            except Exception as exc:  # the status must answer anyway: keep the last list, retry next time
                log.warning("reading programmed routes: %s", exc)
                if self._routes_vx is None:
                    self._routes_vx = vx

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            text = line.decode(errors="replace").strip()
            try:
                req = json.loads(text) if text.startswith("{") else {"cmd": text or "status"}
                cmd = str(req.get("cmd", "status"))
            except ValueError:
                cmd = "<bad json>"
            if cmd == "status":
                await self._refresh_routes()
                resp: dict[str, Any] = self.status(await asyncio.to_thread(self._tunnel_status),
                                                   await asyncio.to_thread(self._tunnel6_status))
            elif cmd == "ping":
                resp = {"ok": True, "pid": os.getpid()}
            elif cmd == "resync":
                self.kick(True)
                resp = {"ok": True}
            else:
                resp = {"error": f"unknown command {cmd!r}; known: status, ping, resync"}
            writer.write(json.dumps(resp).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("status client: %s", exc)
        finally:
            writer.close()

    async def _start_status_server(self) -> None:
        path = Path(self.cfg.status_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))

    # -- main --------------------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, self.kick, True)  # re-read the datastore now
        await self._start_status_server()  # first: status answers (with problems) while we start
        try:
            await self._retry("node name", self._nodenames)
            self.underlay = await self._retry("BGP address detection", detect, self.cfg.bgp_address)
            assert self.underlay is not None
            log.info("node %s: BGP address %s on %s (method %s)", self.name, self.underlay.address,
                     self.underlay.ifname, self.cfg.bgp_address)
            self.settings = await self._retry("cluster settings", self._read_settings)
            await self._retry("tunnel setup", self._setup_tunnel)
            await self._setup_ipv6()
            await self._retry("node registration", self._register)
            await self._start_speaker()
            for prefix in WATCHED:
                t = threading.Thread(target=self._watch, args=(prefix,), name=f"watch:{prefix}", daemon=True)
                t.start()
                self._watch_threads.append(t)
            threading.Thread(target=self._watch_kernel, name="watch:routes", daemon=True).start()
            await self._main_loop()
        except asyncio.CancelledError:
            pass
        finally:
            await self._shutdown()
        return 0

    async def _main_loop(self) -> None:
        interval = self.cfg.resync_interval
        next_full = time.monotonic()
        burst = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_full:
                self._ds_dirty = True
                next_full = now + interval * random.uniform(0.8, 1.2)  # agents do not resync in step
            self._wake.clear()
            try:
                await self.sync()
            except Exception:
                log.exception("sync pass failed; retrying")
                self.state.last_error = "sync pass failed (see the agent log)"
                self._kernel_due = True
            if self._wake.is_set():  # changes came in during the pass: they form the next one
                burst += 1
                if burst >= BURST_PASSES:  # still churning: gather a little before going on
                    burst = 0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), COALESCE)
                continue
            burst = 0
            stop = asyncio.ensure_future(self._stop.wait())
            wake = asyncio.ensure_future(self._wake.wait())
            timeout = max(0.05, next_full - time.monotonic())
            if self._grace_until > time.monotonic():
                timeout = min(timeout, 1.0)
            await asyncio.wait({stop, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for f in (stop, wake):
                f.cancel()
            # idle until now: run at once. Let the callbacks already queued (the other key of a
            # block claim, the rest of an UPDATE) land first, so they join this pass.
            await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        self._stop.set()
        log.info("shutting down: BGP sessions, routes, tunnel, NAT")
        if self.speaker is not None:
            with contextlib.suppress(Exception):
                await self.speaker.close()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()  # also ends the watch threads
        with contextlib.suppress(Exception):
            await asyncio.to_thread(kernel.remove_all, self._families)
        if self.tunnel is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.tunnel.stop)
        if self.vxlan_mac is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(remove_vxlan)
        if self.vxlan_mac6 is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(lambda: remove_vxlan(ifname=VXLAN6_DEVICE))
        for pool in self.nat_pools:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(nat.remove_nat, f"node {self.name}", nat.family_of(pool))
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(OSError):
            Path(self.cfg.status_socket).unlink()
        log.info("stopped")


def route_event_matters(data: bytes) -> bool:
    """Whether a batch of rtnetlink route messages holds a deletion or a new default route (pure)."""
    off = 0
    while off + 18 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            return True  # malformed: a pass costs less than a missed change
        if kind == RTM_DELROUTE or (kind == RTM_NEWROUTE and data[off + 17] == 0):  # rtm_dst_len 0: default
            return True
        off += (length + 3) & ~3
    return False


def _link_mtu(ifname: str) -> int | None:
    # netlink, not /sys/class/net: a net-only namespace still sees the root namespace's sysfs
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        return int(ipr.get_links(found[0])[0].get("IFLA_MTU")) if found else None


def _supervisor_pid() -> int | None:
    sup = os.environ.get("LABNET_AGENT_SUPERVISOR")
    return int(sup) if sup and sup.isdigit() else None


def run_agent(cfg: AgentConfig) -> int:
    return asyncio.run(Agent(cfg).run())
