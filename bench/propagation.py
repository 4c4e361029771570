"""Route propagation: a node claims a new IPAM block → the route is in every other node's kernel.

At 5 nodes (full iBGP mesh) and at 50 nodes (two route reflectors, no mesh); goals
under 100 ms and under 1 s. For each lab:

  1. `labnet up` a generated lab (pods_per_node=0), timed, through the CLI.
  2. One `ip -ts monitor route` per node, started once and kept running; a reader thread per
     node keeps the first time (ip's own receive timestamp) each prefix appeared in that node.
  3. Reference, in the same run: `ip route add <198.51.100.x/32> dev lo` in a node, and the time
     until that node's monitor prints it (spawn → monitor line): the instrument's floor.
  4. Repeat: claim a fresh block for a node from the host, with the IPAM's own block-claim
     (the compare-and-swap on the block and its affinity record, as the CNI IPAM does when a
     node's blocks are full); t0 = right after the affinity write commits. The owner's agent
     sees the affinity through its etcd watch, originates the block over BGP; every other node
     installs `<block> via <owner> dev tunl0 proto bird onlink`. Latency per node = the
     monitor's timestamp of that route − t0. t0 is the ack of the claim's last write (the
     brief's "right after the write commits"); that write's round trip is reported as t0's
     uncertainty, since an agent may act on the commit before our ack arrives.
     Where the time goes, per claim: tcpdump -v (which decodes BGP) on the owner, and on the
     first route reflector, gives when the UPDATE for the block left the owner, reached the RR
     and was reflected; etcd's /metrics gives how many Range requests the claim caused.
  5. `labnet down`, always.

If the 50-node lab does not come up, the failure (phase, error, time) is reported and a
smaller lab (--fallback, 30) is tried. Needs root. Prints JSON, then a markdown table.

    .venv/bin/python bench/propagation.py [--nodes 5 50] [--reps 12] [--fallback 30]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labnet.errors import LabnetError  # noqa: E402
from labnet.etcd import keys  # noqa: E402
from labnet.etcd.admin import admin_store  # noqa: E402
from labnet.etcd.store import Datastore  # noqa: E402
from labnet.ipam.allocator import Block, _blocks, _claim, cluster_pool  # noqa: E402
from labnet.lab.view import LabView  # noqa: E402
from labnet.nsexec import NodeNS, pid_alive, run  # noqa: E402
from labnet.topology.generate import generate  # noqa: E402
from labnet.wait import poll  # noqa: E402

UP_TIMEOUT = 1200.0  # seconds for `labnet up` of the largest lab on 2 cores
ROUTE_TIMEOUT = 30.0  # per repetition: every node must have the route by then
REF_NET = "198.51.100"  # TEST-NET-2: reference routes on each node's lo, removed right after
TS_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]\s+(.*)$")
ROUTE_TYPES = {"unicast", "blackhole", "unreachable", "prohibit", "local", "broadcast", "multicast",
               "anycast", "throw", "nat"}


# -- the instrument: `ip -ts monitor route` per node ---------------------------------------------
@dataclass
class Seen:
    ts: float  # epoch seconds, as ip stamped the netlink message when it read it
    line: str


@dataclass
class Monitor:
    node: str
    proc: subprocess.Popen[str]
    seen: dict[str, Seen] = field(default_factory=dict)  # prefix → its first (non-delete) appearance
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self, prefix: str) -> Seen | None:
        with self.lock:
            return self.seen.get(prefix)

    def forget(self, prefix: str) -> None:
        with self.lock:
            self.seen.pop(prefix, None)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parsed = parse_line(raw)
            if parsed is None:
                continue
            prefix, seen = parsed
            with self.lock:
                self.seen.setdefault(prefix, seen)


def parse_line(raw: str) -> tuple[str, Seen] | None:
    """`[2026-11-24T20:54:08.583211] blackhole 10.1.0.0/26 proto bird` → ("10.1.0.0/26", Seen).
    Deletions are ignored; a /32 printed bare ("192.0.2.5 dev lo") becomes "192.0.2.5/32"."""
    m = TS_LINE.match(raw.rstrip("\n"))
    if m is None:
        return None
    stamp, rest = m.groups()
    words = rest.split()
    if not words or words[0] == "Deleted":
        return None
    if words[0] in ROUTE_TYPES and len(words) > 1:
        words = words[1:]
    try:
        prefix = str(ipaddress.ip_network(words[0], strict=False))
    except ValueError:
        return None  # "default", multicast tables, ...
    ts = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    return prefix, Seen(ts, rest.strip())


def start_monitors(view: LabView, nodes: list[str]) -> dict[str, Monitor]:
    env = {**os.environ, "TZ": "UTC"}  # ip prints local time: make it UTC so we can parse it
    mons: dict[str, Monitor] = {}
    for node in nodes:
        # nsenter execs ip (no --fork), so the pid is ip's own: we stop exactly that process
        proc = subprocess.Popen(view.ns(node).argv(["ip", "-ts", "monitor", "route"]), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                env=env, start_new_session=True)
        mon = Monitor(node, proc)
        mons[node] = mon
        threading.Thread(target=mon.read, name=f"monitor:{node}", daemon=True).start()
    return mons


def stop_monitors(mons: dict[str, Monitor]) -> None:
    for mon in mons.values():
        if mon.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mon.proc.pid, signal.SIGTERM)
    for mon in mons.values():
        try:
            mon.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mon.proc.pid, signal.SIGKILL)
            mon.proc.wait(timeout=5)
        if mon.proc.stdout is not None:
            mon.proc.stdout.close()


def wait_ready(view: LabView, mons: dict[str, Monitor]) -> None:
    """`ip monitor` gives no sign it has subscribed: add a route until each monitor reports it."""
    probe_net = f"{REF_NET}.250/32"

    def probe() -> list[str]:
        missing = [n for n, m in mons.items() if m.first(probe_net) is None]
        for n in missing:
            if mons[n].proc.poll() is not None:
                raise LabnetError(f"node {n}: `ip monitor route` exited with {mons[n].proc.returncode}")
            ns = view.ns(n)
            run(ns, ["ip", "route", "del", probe_net, "dev", "lo"], check=False)
            run(ns, ["ip", "route", "add", probe_net, "dev", "lo"])
        return missing

    poll(probe, lambda missing: not missing, timeout=30, interval=0.1,
         what=f"every node's `ip monitor route` to report the probe route {probe_net}")
    for n, mon in mons.items():
        run(view.ns(n), ["ip", "route", "del", probe_net, "dev", "lo"], check=False)
        mon.forget(probe_net)


# -- measurements ---------------------------------------------------------------------------------
def reference(view: LabView, mons: dict[str, Monitor], samples: int) -> dict[str, Any]:
    """`ip route add` in a node → that node's monitor line; nodes taken in turn."""
    nodes = list(mons)
    lat, cmd = [], []
    for i in range(samples):
        node = nodes[i % len(nodes)]
        ns, mon = view.ns(node), mons[node]
        prefix = f"{REF_NET}.{1 + i % 200}/32"
        mon.forget(prefix)
        t_start = time.time()
        run(ns, ["ip", "route", "add", prefix, "dev", "lo"])
        t_done = time.time()
        seen = poll(lambda m=mon, p=prefix: m.first(p), lambda s: s is not None, timeout=10,  # type: ignore[misc]
                    what=f"node {node}: its monitor to report the reference route {prefix}")
        assert seen is not None
        lat.append(seen.ts - t_start)
        cmd.append(t_done - t_start)
        run(ns, ["ip", "route", "del", prefix, "dev", "lo"])
        mon.forget(prefix)
    return {"samples": samples, "latency_s": summary(lat), "ip_route_add_cmd_s": summary(cmd)}


class TimedStore:
    """The admin store, with the send and ack time of every compare-and-swap (so t0 can be the
    ack of the claim's last write, whatever order the IPAM writes in)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.writes: list[tuple[str, float, float, bool]] = []  # key, sent, acked, won

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        sent = time.time()
        won = bool(self._store.cas(key, value, mod_revision, lease))
        self.writes.append((key, sent, time.time(), won))
        return won

    def cas_many(self, writes: Any) -> bool:  # the claim: block and affinity in one transaction
        sent = time.time()
        won = bool(self._store.cas_many(writes))
        self.writes.append((",".join(k for k, _, _ in writes), sent, time.time(), won))
        return won

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class Claim:
    cidr: str
    start: float  # the first write sent
    t0: float  # the last write acknowledged (committed)
    last_write_s: float  # that write's round trip: how early the commit may have been before t0


def claim_block(view: LabView, owner: str) -> Claim:
    """Claim a fresh block for `owner` with the IPAM's own claim (block record and affinity, one txn)."""
    store = admin_store(view.journal.info)
    try:
        pool = cluster_pool(store)
        taken = {b.cidr for b in _blocks(store)}
        timed = TimedStore(store)
        cidr = _claim(cast(Datastore, timed), owner, pool, taken)
        if cidr is None:
            raise LabnetError(f"pool {pool.cidr}: no free block left for node {owner}")
        kv = store.get(keys.block(cidr))
        got = Block.decode(kv.value).node if kv else None
        won = [w for w in timed.writes if w[3]]
        if got != owner or store.get(keys.affinity(owner, cidr)) is None or not won:
            raise LabnetError(f"block {cidr}: expected affinity host:{owner} with its affinity record, "
                              f"found owner {got!r} (another writer raced us?)")
        last = won[-1]
        return Claim(cidr, timed.writes[0][1], last[2], last[2] - last[1])
    finally:
        store.close()


def etcd_requests(view: LabView) -> dict[str, float]:
    """etcd's own count of served requests by method (its /metrics), to count the reads each
    claim causes across the cluster. Fetched with curl inside the etcd node's network namespace."""
    e = view.journal.info["etcd"]
    argv = ["curl", "-sS", "--max-time", "10", f"{e['endpoints'][0]}/metrics"]
    if e.get("tls"):
        argv[1:1] = ["--cacert", e["ca"], "--cert", e["cert"], "--key", e["key"]]
    text = run(NodeNS("etcd-metrics", e["netns"]), argv, timeout=15).stdout  # host paths: net ns only
    out: dict[str, float] = {}
    for m in re.finditer(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$', text, re.M):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


class Capture:
    """tcpdump -v of a node's BGP traffic; tcpdump decodes BGP, so UPDATEs show their NLRI."""

    def __init__(self, view: LabView, node: str) -> None:
        cluster = view.topo.cluster
        iface = (cluster.nodes[node].interfaces[0].name if cluster else None) or "eth0"
        self.node = node
        self.address = str(view.topo.address_of(node))
        self.proc = subprocess.Popen(
            view.ns(node).argv(["tcpdump", "-i", iface, "-n", "-tt", "-v", "-l", "tcp port 179"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1,
            start_new_session=True)
        self.lines: list[str] = []
        self.listening = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        poll(lambda: self.listening.is_set() or self.proc.poll() is not None, timeout=10,
             what=f"node {node}: tcpdump on {iface} to start listening")
        if self.proc.poll() is not None:
            raise LabnetError(f"node {node}: tcpdump on {iface} exited with {self.proc.returncode}")

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening on" in line:
                self.listening.set()

    def updates(self, cidr: str, t0: float, sent: bool) -> list[float]:
        """Capture times of the segments this node sent (or received) after t0 whose BGP UPDATE
        announces `cidr`."""
        packets: list[list[Any]] = []  # [timestamp, text]
        for line in list(self.lines):
            m = re.match(r"^(\d+\.\d+) IP ", line)
            if m:
                packets.append([float(m[1]), line])
            elif packets:
                packets[-1][1] += line
        out = []
        for ts, text in packets:
            src = re.search(r"(\d+\.\d+\.\d+\.\d+)\.\d+ > ", text)
            if ts < t0 or src is None or (src[1] == self.address) != sent:
                continue
            if "Update Message" in text and f" {cidr}" in text.split("Updated routes:", 1)[-1]:
                out.append(ts)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


def propagate_once(view: LabView, mons: dict[str, Monitor], owner: str, rr: str | None) -> dict[str, Any]:
    caps = {"owner": Capture(view, owner)}
    try:
        if rr:
            caps["rr"] = Capture(view, rr)
        before = etcd_requests(view)
        claim = claim_block(view, owner)
        cidr, t0 = claim.cidr, claim.t0
        row = _propagated(mons, owner, claim)
        after = etcd_requests(view)
        # includes the bench's own claim (4 Range, 2 Txn); the /metrics reads are not gRPC
        row["etcd_requests"] = {k: int(after[k] - before.get(k, 0.0)) for k in ("Range", "Txn", "Watch")
                                if k in after}
        last = t0 + row["all_nodes_s"] + 1.0  # the capture keeps running a little: enough
        sent = caps["owner"].updates(cidr, claim.start, sent=True)
        row["owner_update_sent_s"] = round(sent[0] - t0, 6) if sent else None
        row["owner_updates_sent"] = len(sent)
        if "rr" in caps:
            got = caps["rr"].updates(cidr, claim.start, sent=False)
            out = [t for t in caps["rr"].updates(cidr, claim.start, sent=True) if t <= last]
            row["rr"] = rr
            row["rr_update_in_s"] = round(got[0] - t0, 6) if got else None
            row["rr_first_out_s"] = round(out[0] - t0, 6) if out else None
            row["rr_last_out_s"] = round(out[-1] - t0, 6) if out else None
            row["rr_updates_out"] = len(out)
        return row
    finally:
        for cap in caps.values():
            cap.stop()


def _propagated(mons: dict[str, Monitor], owner: str, claim: Claim) -> dict[str, Any]:
    cidr, t0 = claim.cidr, claim.t0
    others = [n for n in mons if n != owner]

    def missing() -> list[str]:
        return [n for n in [*others, owner] if mons[n].first(cidr) is None]

    poll(missing, lambda m: not m, timeout=ROUTE_TIMEOUT,
         what=f"block {cidr} of node {owner}: its route on every other node and its blackhole on {owner}")
    per_node = {}
    for n in others:
        seen = mons[n].first(cidr)
        assert seen is not None
        if "blackhole" in seen.line or ("tunl0" not in seen.line and "vxlan" not in seen.line):
            raise LabnetError(f"node {n}: expected `{cidr} via <{owner}> dev tunl0 proto bird onlink`, "
                              f"first saw `{seen.line}`")
        per_node[n] = seen.ts - t0
    own = mons[owner].first(cidr)
    assert own is not None
    return {"owner": owner, "block": cidr, "claim_s": round(t0 - claim.start, 6),
            "last_write_rtt_s": round(claim.last_write_s, 6),
            "owner_blackhole_s": round(own.ts - t0, 6),
            "per_node_s": {n: round(v, 6) for n, v in per_node.items()},
            "all_nodes_s": round(max(per_node.values()), 6)}


def summary(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]

    return {"n": len(s), "p50": round(statistics.median(s), 6), "p95": round(pct(0.95), 6),
            "max": round(s[-1], 6), "min": round(s[0], 6)}


# -- labs -----------------------------------------------------------------------------------------
def lab_yaml(n: int, name: str, rr: list[str]) -> str:
    text = generate(n, name, pods_per_node=0, mesh="none" if rr else "full")
    if not rr:
        return text
    data = yaml.safe_load(text)
    data["cluster"]["bgp"]["route_reflectors"] = rr
    return yaml.safe_dump(data, sort_keys=False)


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def failed_phase(stderr: str) -> str | None:
    """The last phase `labnet up` started (its progress lines: `labnet: LAB: PHASE ...`)."""
    started = re.findall(r"^labnet: [^:]+: (\S+) \.\.\.$", stderr, re.M)
    return started[-1] if started else None


def up_failure(stderr: str, seconds: float, logs: Path, name: str, **extra: Any) -> dict[str, Any]:
    """What failed: the phase, the error's first lines, and the full stderr kept in a file."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}-up.stderr"
    log.write_text(stderr)
    errors = [ln for ln in stderr.splitlines() if not ln.startswith("labnet: ")]
    return {"phase": failed_phase(stderr), "seconds": round(seconds, 1), **extra,
            "error_head": "\n".join(errors)[:1500], "stderr_file": str(log)}


def measure_lab(n: int, reps: int, rr: list[str], name: str, logs: Path) -> dict[str, Any]:
    text = lab_yaml(n, name, rr)
    row: dict[str, Any] = {"lab": name, "nodes": n, "bgp": f"route reflectors {', '.join(rr)}" if rr else "full mesh",
                           "goal_s": 0.1 if n <= 5 else 1.0,
                           # other work on the machine skews these figures: keep its load with them
                           "loadavg_at_start": [round(x, 1) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"{name}.yaml"
        f.write_text(text)
        t = time.perf_counter()
        try:
            proc = cli("up", str(f), "--timings", timeout=UP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            row["up_error"] = up_failure(err, time.perf_counter() - t, logs, name,
                                         error=f"timed out after {UP_TIMEOUT:.0f}s")
            cli("down", "--name", name, timeout=300)
            return row
        up_wall = time.perf_counter() - t
        if proc.returncode != 0:
            row["up_error"] = up_failure(proc.stderr, up_wall, logs, name, exit=proc.returncode)
            cli("down", "--name", name, timeout=300)  # normally rolled back already; harmless if so
            return row
        timings = json.loads(proc.stdout.strip().splitlines()[-1])
        row["up_wall_s"] = round(up_wall, 2)
        row["up_phases_s"] = timings["phases"]
        mons: dict[str, Monitor] = {}
        try:
            view = LabView(name)
            nodes = list(view.topo.cluster.nodes) if view.topo.cluster else []
            mons = start_monitors(view, nodes)
            wait_ready(view, mons)
            row["reference"] = reference(view, mons, max(reps, len(nodes)))
            claimers = [x for x in nodes if x not in rr]
            runs = [propagate_once(view, mons, claimers[i % len(claimers)], rr[0] if rr else None)
                    for i in range(reps)]
            row["reps"] = reps
            row["per_node_s"] = summary([v for r in runs for v in r["per_node_s"].values()])
            row["all_nodes_s"] = summary([r["all_nodes_s"] for r in runs])
            row["owner_blackhole_s"] = summary([r["owner_blackhole_s"] for r in runs])
            row["claim_write_s"] = summary([r["claim_s"] for r in runs])
            row["t0_uncertainty_s"] = summary([r["last_write_rtt_s"] for r in runs])
            row["etcd_ranges_per_claim_p50"] = statistics.median(r["etcd_requests"].get("Range", 0) for r in runs)
            for key in ("owner_update_sent_s", "rr_update_in_s", "rr_first_out_s", "rr_last_out_s"):
                xs = [r[key] for r in runs if r.get(key) is not None]
                if xs:
                    row[key] = summary(xs)
            after = [r["all_nodes_s"] - r["owner_update_sent_s"] for r in runs if r["owner_update_sent_s"] is not None]
            if after:
                row["last_node_after_update_s"] = summary(after)
            ref50 = row["reference"]["latency_s"]["p50"]
            row["ratio_per_node_p50_vs_ref"] = round(row["per_node_s"]["p50"] / ref50, 1)
            row["ratio_all_nodes_p50_vs_ref"] = round(row["all_nodes_s"]["p50"] / ref50, 1)
            row["goal_met_p50"] = row["all_nodes_s"]["p50"] < row["goal_s"]
            row["goal_met_max"] = row["all_nodes_s"]["max"] < row["goal_s"]
            row["runs"] = runs
            row["loadavg_at_end"] = [round(x, 1) for x in os.getloadavg()]
        except Exception as exc:
            row["measure_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop_monitors(mons)
            t = time.perf_counter()
            down = cli("down", "--name", name, timeout=600)
            row["down_s"] = round(time.perf_counter() - t, 2)
            if down.returncode != 0:
                row["down_error"] = down.stderr[-2000:]
            leftover = [p for p in (m.proc.pid for m in mons.values()) if pid_alive(p)]
            if leftover:
                row["leftover_pids"] = leftover
    return row


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def opt(row: dict[str, Any], key: str) -> str:
    return ms(row[key]["p50"]) if key in row else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| lab | nodes | BGP | up (wall) | per-node p50 / p95 / max (ms) | all nodes p50 / p95 / max (ms) "
           "| ref `ip route add` p50 / p95 (ms) | ratio p50 (node / all) | goal | met (p50 / max) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "per_node_s" not in r:
            why = r.get("up_error") or r.get("measure_error")
            out.append(f"| {r['lab']} | {r['nodes']} | {r['bgp']} | failed | {json.dumps(why)[:300]} | | | | | |")
            continue
        p, a, ref = r["per_node_s"], r["all_nodes_s"], r["reference"]["latency_s"]
        out.append(
            f"| {r['lab']} | {r['nodes']} | {r['bgp']} | {r['up_wall_s']} s "
            f"| {ms(p['p50'])} / {ms(p['p95'])} / {ms(p['max'])} | {ms(a['p50'])} / {ms(a['p95'])} / {ms(a['max'])} "
            f"| {ms(ref['p50'])} / {ms(ref['p95'])} "
            f"| {r['ratio_per_node_p50_vs_ref']}× / {r['ratio_all_nodes_p50_vs_ref']}× | < {ms(r['goal_s'])} ms "
            f"| {'yes' if r['goal_met_p50'] else 'no'} / {'yes' if r['goal_met_max'] else 'no'} |")
    out += ["", "Where the time goes (p50 ms after t0, the ack of the claim's last etcd write):", "",
            "| lab | owner blackhole | owner UPDATE sent | RR UPDATE in | RR first / last reflected | last node "
            "| last node after UPDATE | t0 uncertainty (write RTT) | etcd Range requests per claim | load avg (start → end) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "per_node_s" not in r:
            continue
        out.append(
            f"| {r['lab']} | {opt(r, 'owner_blackhole_s')} | {opt(r, 'owner_update_sent_s')} "
            f"| {opt(r, 'rr_update_in_s')} | {opt(r, 'rr_first_out_s')} / {opt(r, 'rr_last_out_s')} "
            f"| {opt(r, 'all_nodes_s')} | {opt(r, 'last_node_after_update_s')} | {opt(r, 't0_uncertainty_s')} "
            f"| {r.get('etcd_ranges_per_claim_p50', '-')} "
            f"| {r['loadavg_at_start'][0]} → {r.get('loadavg_at_end', ['?'])[0]} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[5, 50])
    ap.add_argument("--reps", type=int, default=12, help="block claims per lab (at least 10 for the issue)")
    ap.add_argument("--rr-from", type=int, default=10, help="labs of at least this many nodes use route reflectors")
    ap.add_argument("--fallback", type=int, default=30, help="try this size when a larger lab does not come up")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "labnet-propagation",
                    help="where the stderr of a failed `labnet up` is kept")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/propagation.py builds labs: run it as root")
    rows: list[dict[str, Any]] = []
    for n in a.nodes:
        rr = ["node-2", "node-3"] if n >= a.rr_from else []
        row = measure_lab(n, a.reps, rr, f"prop{n}", a.logs)
        rows.append(row)
        if "up_error" in row and a.fallback and n > a.fallback:
            rows.append(measure_lab(a.fallback, a.reps, rr, f"prop{a.fallback}", a.logs))
    text = json.dumps(rows, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
