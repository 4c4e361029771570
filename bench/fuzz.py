"""Fuzz campaign over labnet's parsers: BGP codec, topology loader, CNI request parsing.

    python bench/fuzz.py                       # 10^6 executions per target, shards over all cores
    python bench/fuzz.py --runs 20000 --target bgp_decode
    python bench/fuzz.py --seed-corpus         # (re)write fixtures/fuzz/<target>/seed-* from fixtures/
    python bench/fuzz.py --engine mutate       # no atheris: random byte mutations of the corpus

Engine `atheris` (coverage-guided libFuzzer, the default when atheris imports) or `mutate`
(no coverage: byte flips, inserts, deletes, splices of corpus inputs, plus structure-aware
inputs from labnet.fuzz.gen). Each worker process runs one shard of one target; the corpus is
fixtures/fuzz/<target>/ (read-only) plus a scratch directory that libFuzzer grows. An exception
other than the component's typed error is a crash: the worker records it once per key
(exception type + raising labnet function), keeps fuzzing, and the campaign shrinks each one.
Crashes listed in labnet/fuzz/known.py are reported as known (their reviewed reproducer is in
fixtures/fuzz/crashes/); new ones are written to fixtures/fuzz/crashes/<target>-new-<n>.bin:
list them in known.py with the bug, and tests/unit/test_fuzz_regressions.py picks them up.
Not run in CI (tests/unit/test_fuzz_targets.py is the CI-sized run). Exit status 1 when any
crash was seen. Prints executions, exec/s and crashes per target.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labnet.fuzz import gen  # noqa: E402
from labnet.fuzz.gen import mutate, random_bgp_message, random_cni_request, random_topology  # noqa: E402
from labnet.fuzz.known import KNOWN  # noqa: E402
from labnet.fuzz.targets import crash_key  # noqa: E402

FUZZ_DIR = REPO / "fixtures" / "fuzz"
CRASH_DIR = FUZZ_DIR / "crashes"
MAX_LEN = {"bgp_decode": 4096, "topology_load": 4096, "cni_request": 2048}
INSTRUMENT = {
    "bgp_decode": ["labnet.bgp.codec"],
    "topology_load": ["labnet.topology", "labnet.topology.loader", "labnet.topology.model", "yaml"],
    "cni_request": ["labnet.cni.spec", "labnet.cni.settings", "labnet.cni.plugin"],
}
TARGET_NAMES = ("bgp_decode", "topology_load", "cni_request", "route_dump")


# --- seed corpus -----------------------------------------------------------------------------------


def _hex(path: Path) -> bytes:
    text = "".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return bytes.fromhex("".join(text.split()))


def _cni_seed(doc: dict[str, object]) -> bytes:
    env = doc.get("env") or {}
    assert isinstance(env, dict)
    stdin = doc.get("stdin", "")
    raw = stdin if isinstance(stdin, str) else json.dumps(stdin)
    return "".join(f"{k}={v}\n" for k, v in env.items()).encode() + b"\n" + raw.encode()


def seed_inputs() -> dict[str, list[bytes]]:
    """Real inputs from the repository: captured BGP vectors, topologies, CNI requests."""
    from labnet.bgp import codec

    bgp = [_hex(p) for p in sorted((REPO / "fixtures" / "bgp").glob("*.hex"))]
    bgp.append(b"".join(bgp))  # a stream of every message back to back
    bgp.append(codec.encode(codec.Keepalive()) * 3)
    bgp += gen.bgp_ipv6_seeds()  # MP_REACH / MP_UNREACH for IPv6 unicast, End-of-RIB of both families
    topo = [p.read_bytes() for d in ("topologies", "fixtures/topologies/good", "fixtures/topologies/bad")
            for p in sorted((REPO / d).glob("*.yaml"))]
    cni = [_cni_seed(json.loads(p.read_text())) for p in sorted((REPO / "fixtures" / "cni").glob("*.json"))]
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=net-test"}
    conf = {"name": "k8s-pod-network", "cniVersion": "1.0.0", "type": "labnet", "etcd_endpoints": "http://10.0.0.1:2379",
            "etcd_timeout": 2, "mtu": 1480, "ipam": {"type": "labnet-ipam", "pool": "10.100.0.0/16", "block_size": 26},
            "args": {"labels": {"app": "web"}, "cni": {"labels": [{"key": "role", "value": "db"}]}}}
    for cmd in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        c = dict(conf, cniVersion="1.1.0") if cmd in ("GC", "STATUS") else conf
        cni.append(_cni_seed({"env": dict(base, CNI_COMMAND=cmd), "stdin": c}))
    return {"bgp_decode": bgp, "topology_load": topo, "cni_request": cni, "route_dump": route_dump_seeds()}


def route_dump_seeds() -> list[bytes]:
    """Route dumps as the kernel sends them, encoded by pyroute2 (a different codec than ours)."""
    from labnet.fuzz.gen import rtnl_route

    blackhole = rtnl_route("10.100.5.0", 26, proto=12, rtype=6)
    tunnel = rtnl_route("10.100.7.0", 26, gateway="10.0.2.12", oif=9, proto=12, flags=4)
    default = rtnl_route(None, 0, gateway="10.0.1.1", oif=2, proto=3)
    connected = rtnl_route("10.0.1.0", 24, oif=2, proto=2, priority=0)
    local_table = rtnl_route("10.0.1.11", 32, oif=2, proto=2, table=255, rtype=2)
    v6 = rtnl_route("fd00::", 64, oif=2, proto=2, family=10)
    done = rtnl_route(None, 0, kind=3)
    error = rtnl_route(None, 0, kind=2, error=-22)
    seeds = [blackhole, tunnel, default, connected, local_table, v6, done, error,
             blackhole + tunnel + default + connected + done, tunnel * 20 + done, connected + error]
    return seeds


def write_seed_corpus() -> None:
    for target, inputs in seed_inputs().items():
        d = FUZZ_DIR / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for data in inputs:
            (d / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
        print(f"{target}: {len(inputs)} seed inputs in {d.relative_to(REPO)}")


def corpus(target: str) -> list[bytes]:
    d = FUZZ_DIR / target
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


# --- crash bookkeeping ---------------------------------------------------------------------------


def run_one(fn: Callable[[bytes], None], data: bytes) -> str | None:
    try:
        fn(data)
    except Exception as exc:  # noqa: BLE001 - that is the point: anything escaping is a crash
        return crash_key(exc)
    return None


def shrink(fn: Callable[[bytes], None], data: bytes, key: str, budget: float = 20.0) -> bytes:
    """Delta-debugging by chunk deletion, keeping the same crash key; bounded in time."""
    deadline = time.monotonic() + budget
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, shrunk = 0, False
        while i < len(data) and time.monotonic() < deadline:
            cand = data[:i] + data[i + chunk:]
            if run_one(fn, cand) == key:
                data, shrunk = cand, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return data


class Recorder:
    """Counts executions and unique crashes of one worker; state goes to a JSON file."""

    def __init__(self, target: str, fn: Callable[[bytes], None], stats: Path, shard: int, limit: int) -> None:
        self.target, self.fn, self.stats, self.shard, self.limit = target, fn, stats, shard, limit
        self.execs = 0
        self.start = time.monotonic()
        self.crashes: dict[str, dict[str, object]] = {}

    def __call__(self, data: bytes) -> None:
        self.execs += 1
        try:
            self.fn(data)
        except Exception as exc:  # noqa: BLE001
            key = crash_key(exc)
            if key not in self.crashes:
                self.crashes[key] = {"key": key, "message": f"{type(exc).__name__}: {exc}"[:300],
                                     "input": data.hex(), "first_at": self.execs}
                self.dump()
            else:
                self.crashes[key]["count"] = int(str(self.crashes[key].get("count", 1))) + 1
        # libFuzzer ends the process with C exit() after -runs: no finally, no atexit; dump
        # often, and exactly at the last run.
        if self.execs % 2000 == 0 or self.execs == self.limit:
            self.dump()

    def dump(self) -> None:
        elapsed = time.monotonic() - self.start
        doc = {"target": self.target, "shard": self.shard, "execs": self.execs, "seconds": elapsed,
               "crashes": list(self.crashes.values())}
        tmp = self.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.stats)


GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "bgp_decode": random_bgp_message,
    "topology_load": random_topology,
    "cni_request": random_cni_request,
}


def worker(target: str, runs: int, engine: str, stats: Path, shard: int, workdir: Path,
           merge: list[Path] | None = None, inner: list[str] | None = None) -> None:
    from labnet.fuzz.targets import TARGETS

    seeds = corpus(target)
    if engine == "atheris":
        import atheris  # type: ignore[import-not-found]

        # Coverage only where the bugs would be: the component and, for topologies, the YAML
        # parser (instrumenting pydantic's Python side costs start-up time for nothing).
        with atheris.instrument_imports(include=INSTRUMENT[target]):
            for module in INSTRUMENT[target]:
                importlib.import_module(module)
        rec = Recorder(target, TARGETS[target], stats, shard, runs)
        if inner:
            # libFuzzer re-running us as a merge child: its flags were passed through.
            args = [sys.argv[0], *inner]
        elif not merge:
            work = workdir / f"{target}-{shard}"
            work.mkdir(parents=True, exist_ok=True)
            args = [sys.argv[0], f"-runs={runs}", f"-max_len={MAX_LEN[target]}", f"-seed={1 + shard}",
                    "-print_final_stats=1", "-rss_limit_mb=4096", "-timeout=30", str(work), str(FUZZ_DIR / target)]
        else:
            # libFuzzer's corpus minimisation: copy into the committed corpus only the inputs of a
            # campaign's scratch directories that add coverage. libFuzzer runs the merge in a
            # child started through the shell as `argv[0] flags...`: argv[0] is our command line.
            me = f"{sys.executable} {Path(__file__).resolve()} --worker {target} --engine atheris --stats {stats}"
            args = [me, "-merge=1", f"-max_len={MAX_LEN[target]}", "-rss_limit_mb=4096",
                    str(FUZZ_DIR / target), *map(str, merge)]
        atheris.Setup(args, rec)
        try:
            atheris.Fuzz()
        finally:
            rec.dump()
        return
    rec = Recorder(target, TARGETS[target], stats, shard, runs)
    rng = random.Random(shard)
    pool = seeds or [b""]
    for data in pool:
        rec(data)
    while rec.execs < runs:
        # No coverage feedback: mostly mutations of the corpus, some structure-aware inputs
        # (JSON/YAML trees, BGP headers) that byte mutations rarely reach.
        if rng.random() < 0.3:
            data = GENERATORS[target](rng)
        else:
            data = mutate(rng, rng.choice(pool), pool, MAX_LEN[target])
        before = len(rec.crashes)
        rec(data)
        if len(rec.crashes) == before and rng.random() < 0.001 and len(pool) < 5000:
            pool.append(data)  # keep some variety
    rec.dump()


@dataclass
class Totals:
    execs: int = 0
    seconds: float = 0.0
    crashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    rcs: list[int] = field(default_factory=list)


# --- the campaign --------------------------------------------------------------------------------


def campaign(targets: list[str], runs: int, engine: str, jobs: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="labnet-fuzz-"))
    shards = [(t, s) for t in targets for s in range(jobs)]
    per_shard = -(-runs // jobs)
    procs = []
    t0 = time.monotonic()
    # All shards at once: `jobs` shards per target, each target's shards on their own cores.
    for target, shard in shards:
        stats = workdir / f"{target}-{shard}.json"
        log = open(workdir / f"{target}-{shard}.log", "wb")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target, "--shard", str(shard),
               "--runs", str(per_shard), "--engine", engine, "--stats", str(stats), "--workdir", str(workdir)]
        procs.append((target, shard, stats, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    results: dict[str, Totals] = {}
    for target, _shard, stats, log, proc in procs:
        proc.wait()
        log.close()
        doc: dict[str, Any] = json.loads(stats.read_text()) if stats.exists() else {"execs": 0, "seconds": 0.0, "crashes": []}
        r = results.setdefault(target, Totals())
        r.execs += int(doc["execs"])
        r.seconds = max(r.seconds, float(doc["seconds"]))  # shards run side by side
        for c in doc["crashes"]:
            r.crashes.setdefault(c["key"], c)
        r.rcs.append(proc.returncode)
    wall = time.monotonic() - t0
    print(f"engine {engine}, {jobs} shard(s) per target, wall time {wall:.0f}s, logs in {workdir}")
    print(f"{'target':<15}{'executions':>12}{'exec/s':>10}{'crashes':>9}")
    total_crashes = 0
    from labnet.fuzz.targets import TARGETS

    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    for target in targets:
        r = results[target]
        rate = r.execs / r.seconds if r.seconds else 0
        print(f"{target:<15}{r.execs:>12}{rate:>10.0f}{len(r.crashes):>9}   worker exit codes {r.rcs}")
        for n, (key, c) in enumerate(sorted(r.crashes.items()), 1):
            data = shrink(TARGETS[target], bytes.fromhex(c["input"]), key)
            known = KNOWN.get(key)
            # Known bugs already have a reviewed reproducer; new ones get a numbered file.
            path = CRASH_DIR / (known[0] if known else f"{target}-new-{n}.bin")
            if not known:
                path.write_bytes(data)
            status = f"known, see {known[0]}" if known else "NEW"
            print(f"  crash {n} ({status}): {key}: {c['message'][:160]}\n    shrunk to {len(data)} bytes"
                  f"{'' if known else ' in ' + str(path.relative_to(REPO))}: {data[:100]!r}")
        total_crashes += len(r.crashes)
    return 1 if total_crashes else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", choices=TARGET_NAMES, help="default: all")
    ap.add_argument("--runs", type=int, default=1_000_000, help="executions per target (default 10^6)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes per target")
    ap.add_argument("--engine", choices=("atheris", "mutate"), default=None)
    ap.add_argument("--seed-corpus", action="store_true", help="write the seed corpus from fixtures/ and exit")
    ap.add_argument("--merge", type=Path, metavar="WORKDIR",
                    help="add the coverage-increasing inputs of a finished campaign (its log directory) "
                         "to fixtures/fuzz/<target>/ and exit (atheris only)")
    ap.add_argument("--worker", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    if extra and not args.worker:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.seed_corpus:
        write_seed_corpus()
        return
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "mutate"
    if args.worker:
        worker(args.worker, args.runs, engine, args.stats, args.shard, args.workdir,
               sorted(args.merge.glob(f"{args.worker}-*[0-9]")) if args.merge else None, extra)
        return
    if args.merge:
        for target in args.target or TARGET_NAMES:
            before = len(corpus(target))
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", target, "--engine", "atheris",
                            "--merge", str(args.merge), "--stats", str(args.merge / f"merge-{target}.json")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            print(f"{target}: corpus {before} -> {len(corpus(target))} inputs")
        return
    sys.exit(campaign(args.target or list(TARGET_NAMES), args.runs, engine, args.jobs))


if __name__ == "__main__":
    main()
