"""Tunnel throughput inside a real lab: the seed's net-test (ubuntu-3) to net-test-2 (ubuntu-4),
across the router and the userspace tunl0 that the node's own process runs, with iperf3.

Reference in the same run: the underlay, ubuntu-3 to ubuntu-4 node to node (no tunnel).
bench/tunnel.py measures the datapath alone on a testbed; this one measures it where it runs
in a lab, beside the agent and the CNI server, so a change of process model shows here.

    sudo .venv/bin/python bench/lab_tunnel.py [--runs 3] [--time 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

LAB = "bench-labtun"
SEED = Path(__file__).resolve().parents[1] / "topologies" / "seed.yaml"


def labnet(*args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"labnet {' '.join(args)}: {proc.stderr or proc.stdout}")
    return proc.stdout


def iperf(server: str, client: str, dst: str, seconds: int) -> float:
    """Mbit/s received, one TCP stream, client -> server (both `labnet exec` targets)."""
    srv = subprocess.Popen([sys.executable, "-m", "labnet.cli", "exec", "-l", LAB, server, "--", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # the server listens within a moment; the client retries the connect
            proc = subprocess.run([sys.executable, "-m", "labnet.cli", "exec", "-l", LAB, client, "--",
                                   "iperf3", "-J", "-t", str(seconds), "-c", dst], capture_output=True, text=True,
                                  timeout=seconds + 60)
            try:
                got = json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"]
            except (ValueError, KeyError):
                continue  # not listening yet: iperf3 says so in its JSON
            return float(got) / 1e6
        raise SystemExit(f"iperf3 {client} -> {server} {dst}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    finally:
        srv.kill()
        srv.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=5)
    a = ap.parse_args()
    text = SEED.read_text().replace("name: seed", f"name: {LAB}", 1)
    topo = Path(f"/tmp/{LAB}.yaml")
    topo.write_text(text)
    labnet("up", str(topo), "-q")
    try:
        st = json.loads(labnet("status", "-l", LAB, "--json"))[0]
        pod2 = st["pods"]["net-test-2"]["ip"]
        node4 = st["machines"]["ubuntu-4"]["interfaces"][0]["address"].split("/")[0]
        under, tun = [], []
        for _ in range(a.runs):
            under.append(iperf("ubuntu-4", "ubuntu-3", node4, a.time))
            tun.append(iperf("ubuntu-4/net-test-2", "ubuntu-3/net-test", pod2, a.time))
    finally:
        labnet("down", "--name", LAB)
    med = statistics.median
    print(json.dumps({"runs": a.runs, "underlay_mbit_s": [round(x) for x in under],
                      "pod_to_pod_ipip_mbit_s": [round(x) for x in tun],
                      "ipip_over_underlay_median": round(med(tun) / med(under), 3)}))


if __name__ == "__main__":
    main()
