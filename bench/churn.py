"""Pod churn: N add/delete cycles over the seed lab through the real CNI path, then leak counts.

Each cycle ADDs a pod on one node (round robin over the nodes) through the node's conflist, as
a runtime does (labnet.cni.invoke), then DELs it. Afterwards, what must be left is exactly what
the lab had before the churn:
  - IPAM in etcd: handles and allocations only of the pods that exist (plus each node's tunnel
    address); workload endpoints only of those pods;
  - per node: cali* veths, <ip>/32 routes to cali* devices and pod netns only of existing pods.
Prints ADD/DEL latency p50/p99 and the leak counts (non-zero exit when anything leaked). Needs root.

    .venv/bin/python bench/churn.py --cycles 500            # builds and removes its own lab
    .venv/bin/python bench/churn.py --cycles 50 --lab NAME  # against a running seed-like lab
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "topologies" / "seed.yaml"
sys.path.insert(0, str(ROOT))

from labnet import ipam  # noqa: E402
from labnet.cni import invoke  # noqa: E402
from labnet.etcd import keys  # noqa: E402
from labnet.etcd.admin import admin_store  # noqa: E402
from labnet.lab.view import LabView  # noqa: E402
from labnet.nsexec import NodeNS, run  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))] if s else float("nan")


def labnet_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "labnet.cli", *args], check=True, stdout=subprocess.DEVNULL)


def node_state(ns: NodeNS) -> dict[str, set[str]]:
    """cali* veths, /32 routes, and pod netns inside one node."""
    links = json.loads(run(ns, ["ip", "-j", "link"]).stdout or "[]")
    routes = json.loads(run(ns, ["ip", "-j", "route"]).stdout or "[]")
    netns = run(ns, ["ip", "netns", "list"], check=False).stdout.split()
    return {
        "veths": {x["ifname"] for x in links if x["ifname"].startswith("cali")},
        # every host route (`ip -j` prints a /32 without its length): pod routes and borrowed /32s
        "routes": {f"{r['dst']} dev {r.get('dev')}" for r in routes if "/" not in r["dst"] or r["dst"].endswith("/32")},
        "netns": {n for n in netns if n.startswith("cni-")},
    }


def store_state(view: LabView) -> dict[str, set[str]]:
    store = admin_store(view.journal.info)
    try:
        u = ipam.usage(store)
        wep = {kv.key for kv in store.range(keys.workload_endpoints())}
    finally:
        store.close()
    allocs = {f"{ip}={h}" for b in u["blocks"] for ip, h in b["allocated"].items()}
    return {"handles": set(u["handles"]), "allocations": allocs, "endpoints": wep}


def snapshot(view: LabView, nodes: Iterable[str]) -> dict[str, Any]:
    return {"store": store_state(view), "nodes": {n: node_state(view.ns(n)) for n in nodes}}


def leaks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in after["store"].items():
        extra = sorted(v - before["store"][k])
        if extra:
            out[f"etcd {k}"] = extra
    for node, st in after["nodes"].items():
        for k, v in st.items():
            extra = sorted(v - before["nodes"][node][k])
            if extra:
                out[f"{node} {k}"] = extra
    return out


def churn(view: LabView, cycles: int, parallel: int) -> tuple[list[float], list[float], list[str]]:
    nodes = list(view.topo.cluster.nodes) if view.topo.cluster else []
    adds: list[float] = []
    dels: list[float] = []
    errors: list[str] = []

    def one(i: int) -> None:
        node = nodes[i % len(nodes)]
        ns = view.ns(node)
        pod = f"churn-{i}"
        t0 = time.perf_counter()
        try:
            invoke.add_pod(ns, pod, lab=view.name)
            adds.append(time.perf_counter() - t0)
        except Exception as exc:
            errors.append(f"ADD {node}/{pod}: {exc}")
        t1 = time.perf_counter()
        try:
            invoke.del_pod(ns, pod, lab=view.name)
            dels.append(time.perf_counter() - t1)
        except Exception as exc:
            errors.append(f"DEL {node}/{pod}: {exc}")
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{cycles} cycles", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as ex:
        list(ex.map(one, range(cycles)))
    return adds, dels, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=1, help="concurrent add/del cycles (default 1)")
    ap.add_argument("--lab", help="use this running lab (default: build the seed lab as b-churn)")
    args = ap.parse_args()
    name = args.lab or "b-churn"
    if not args.lab:
        labnet_cli("up", str(SEED), "--name", name, "-q")
    try:
        view = LabView(name)
        nodes = list(view.topo.cluster.nodes) if view.topo.cluster else []
        before = snapshot(view, nodes)
        t0 = time.perf_counter()
        adds, dels, errors = churn(view, args.cycles, args.parallel)
        wall = time.perf_counter() - t0
        after = snapshot(view, nodes)
        found = leaks(before, after)
        gone = {k: sorted(v - after["store"][k]) for k, v in before["store"].items() if v - after["store"][k]}
        ms = 1000.0
        result = {
            "lab": name, "cycles": args.cycles, "parallel": args.parallel, "wall_s": round(wall, 1),
            "add_ms": {"p50": round(pct(adds, 50) * ms, 1), "p99": round(pct(adds, 99) * ms, 1),
                       "mean": round(statistics.fmean(adds) * ms, 1) if adds else None, "n": len(adds)},
            "del_ms": {"p50": round(pct(dels, 50) * ms, 1), "p99": round(pct(dels, 99) * ms, 1),
                       "mean": round(statistics.fmean(dels) * ms, 1) if dels else None, "n": len(dels)},
            "errors": len(errors),
            "leaks": {k: len(v) for k, v in found.items()},
            "lost": {k: len(v) for k, v in gone.items()},  # the lab's own objects that vanished
        }
        print(json.dumps(result, indent=2))
        for e in errors[:10]:
            print("error:", e, file=sys.stderr)
        for k, v in found.items():
            print(f"leak: {k}: {', '.join(v[:10])}{' ...' if len(v) > 10 else ''}", file=sys.stderr)
        leaked = sum(len(v) for v in found.values())
        print(f"churn: {args.cycles} cycles in {wall:.1f}s; ADD p50 {result['add_ms']['p50']} ms "
              f"p99 {result['add_ms']['p99']} ms; DEL p50 {result['del_ms']['p50']} ms p99 {result['del_ms']['p99']} ms; "
              f"errors {len(errors)}; leaked objects {leaked}")
        return 1 if leaked or errors or gone else 0
    finally:
        if not args.lab:
            labnet_cli("down", "--name", name)


if __name__ == "__main__":
    sys.exit(main())
