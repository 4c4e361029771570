"""Time `labnet up`/`down` of the seed lab and a generated 50-node lab (underlay and full).

Reference in the same run: the same underlay built by a plain `ip netns`/`ip link` shell
script (what people write by hand), so the figure is a ratio, not a machine-dependent time.
Run as root: `python bench/up.py [--runs 3] [--nodes 50]`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labnet.topology import loads  # noqa: E402
from labnet.topology.generate import generate  # noqa: E402


def labnet(*args: str) -> tuple[float, str]:
    """Wall time of one `labnet` command (interpreter start-up included), and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"labnet {' '.join(args)} failed: {proc.stderr}")
    return time.perf_counter() - t0, proc.stdout


def ip_script(text: str, name: str) -> tuple[str, str]:
    """An equivalent underlay as `ip` commands: namespaces, bridges, veths, addresses, routes."""
    topo = loads(text)
    up = ["set -e", f"ip netns add ref-{name}-fab"]
    down = [f"ip netns del ref-{name}-fab"]
    for net in topo.networks:
        up += [f"ip -n ref-{name}-fab link add {net} type bridge", f"ip -n ref-{name}-fab link set {net} up"]
    for i, (m, _kind, spec) in enumerate(topo.machines()):
        ns = f"ref-{name}-{m}"
        up += [f"ip netns add {ns}", f"ip -n {ns} link set lo up"]
        down.append(f"ip netns del {ns}")
        for j, iface in enumerate(spec.interfaces):
            outer = f"r{i}x{j}"
            up += [f"ip -n ref-{name}-fab link add {outer} type veth peer name {iface.name} netns {ns}",
                   f"ip -n ref-{name}-fab link set {outer} master {iface.network} up",
                   f"ip -n {ns} addr add {topo.interface_cidr(iface)} dev {iface.name}",
                   f"ip -n {ns} link set {iface.name} up"]
        if spec.gateway:
            up.append(f"ip -n {ns} route add default via {spec.gateway}")
    return "\n".join(up), "\n".join(down)


def sh(script: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, capture_output=True)
    return time.perf_counter() - t0


def measure(label: str, text: str, runs: int, underlay_only: bool, runtime: str = "netns") -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "lab.yaml"
        if underlay_only:  # the underlay alone: cluster nodes become plain hosts
            import yaml

            data = yaml.safe_load(text)
            cluster = data.pop("cluster", None) or {}
            data.setdefault("hosts", {}).update(cluster.get("nodes", {}))
            for spec in data["hosts"].values():
                spec.pop("bgp_address", None)
            data.pop("scenarios", None)
            text = yaml.safe_dump(data)
        text = re.sub(r"^name: *(\S+)", r"name: bench-\1", text, count=1, flags=re.M)  # never another's lab
        f.write_text(text)
        name = loads(text).name
        ups, inner, downs, refs_up, refs_down = [], [], [], [], []
        ref_up, ref_down = ip_script(text, "b")
        for _ in range(runs):
            wall, out = labnet("up", str(f), "-q", "--timings", "--runtime", runtime)
            ups.append(wall)
            inner.append(json.loads(out)["total"])
            downs.append(labnet("down", "--name", name)[0])
            refs_up.append(sh(ref_up))
            refs_down.append(sh(ref_down))
    med = statistics.median
    return {"lab": label, "runs": runs, "machines": len(loads(text).machines()),
            "up_s": round(med(ups), 3), "up_phases_s": round(med(inner), 3), "down_s": round(med(downs), 3),
            "ref_ip_script_up_s": round(med(refs_up), 3), "ref_ip_script_down_s": round(med(refs_down), 3),
            "up_ratio_vs_ip_script": round(med(ups) / med(refs_up), 2)}


def docker_rows(seed: str, runs: int, full: bool) -> list[dict[str, object]]:
    """The seed lab on the docker runtime, in the same run as netns (the image is ready first)."""
    from labnet.runtime.dockerd import client, ensure_dockerd, stop_dockerd
    from labnet.runtime.image import ensure_image

    engine = ensure_dockerd()
    try:
        ref = ensure_image(client(timeout=900))
        rows = [measure("seed underlay (docker)", seed, runs, True, runtime="docker")]
        if full:
            rows.append(measure("seed full (docker)", seed, runs, False, runtime="docker"))
    finally:
        if engine.started:  # leave the machine as we found it
            stop_dockerd(engine)
    for r in rows:
        r["image"] = f"{ref.tag} ({'built' if ref.built else 'reused'} in {ref.seconds:.1f}s, not timed)"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--full", action="store_true", help="also time the full lab (etcd, agents, pods)")
    ap.add_argument("--docker", action="store_true",
                    help="also time the seed lab with the docker runtime (node image built first, not timed)")
    a = ap.parse_args()
    seed = (REPO / "topologies" / "seed.yaml").read_text()
    rows = [measure("seed underlay", seed, a.runs, True),
            measure(f"{a.nodes}-node underlay", generate(a.nodes), a.runs, True)]
    if a.full:
        rows.append(measure("seed full", seed, a.runs, False))
    if a.docker:
        rows += docker_rows(seed, a.runs, a.full)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
