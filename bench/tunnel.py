"""Benchmark: iperf3 pod-to-pod over the userspace IPIP tunl0 vs the kernel's vxlan.calico.

    sudo .venv/bin/python bench/tunnel.py [--time 5] [--json]

One run, one testbed (labnet.testing.tunnel_testbed: two nodes behind a router, a pod on each):
first the underlay alone (node to node, no tunnel) as the reference, then pod to pod over the
userspace IPIP datapath, then, with tunl0 gone, pod to pod over kernel VXLAN. Pod MTUs follow the
tunnel as Calico sets them (1480 for IPIP, 1450 for VXLAN). Prints throughputs and ratios.
Needs root; everything lives in lnet-test-bench-* namespaces, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labnet.agent.tunnel.vxlan import Vtep, ensure_vxlan, sync_vxlan, vtep_mac  # noqa: E402
from labnet.nsexec import NodeNS, pid_alive, run, spawn  # noqa: E402
from labnet.testing import tunnel_testbed as tb  # noqa: E402
from labnet.testing.scratch import ScratchNamespaces  # noqa: E402
from labnet.wait import poll  # noqa: E402


def iperf3(nss: ScratchNamespaces, client: NodeNS, server: NodeNS, dst: str, seconds: float, logdir: Path) -> float:
    """Mbit/s received, client -> server, one TCP stream."""
    nss.track_pid(spawn(server, ["iperf3", "-s", "-1"], log=logdir / f"iperf3-{server.name}.log"))
    poll(lambda: run(server, ["ss", "-Hltn", "sport", "= :5201"]).stdout, timeout=10,
         what=f"{server.name}: iperf3 listening")
    proc = run(client, ["iperf3", "-J", "-t", str(seconds), "-c", dst], timeout=seconds + 30)
    return float(json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


def set_pod_mtu(node: tb.Node, mtu: int) -> None:
    tb.ip(node.ns, "link", "set", node.cali_if, "mtu", str(mtu))
    tb.ip(node.pod, "link", "set", "eth0", "mtu", str(mtu))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=5.0, help="seconds per iperf3 run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/tunnel.py needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    nss = ScratchNamespaces("lnet-test-bench")
    res: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="labnet-bench-") as tmp:
            logdir = Path(tmp)
            bed = tb.build(nss)
            a, b = bed.a, bed.b
            res["underlay"] = iperf3(nss, a.ns, b.ns, b.underlay_ip, args.time, logdir)

            for n in bed.nodes:
                set_pod_mtu(n, 1480)
                tb.start_ipip(n, logdir, nss.track_pid)
            tb.add_tunnel_routes(bed)
            tb.wait_ping(a.pod, b.pod_ip)
            res["ipip_userspace"] = iperf3(nss, a.pod, b.pod, b.pod_ip, args.time, logdir)
            for n in bed.nodes:
                pid = n.pids[0]
                os.kill(pid, signal.SIGTERM)
                poll(lambda: not pid_alive(pid), timeout=10, what=f"{n.name}: ipip datapath exits")  # noqa: B023

            macs = {n.name: ensure_vxlan(n.underlay_ip, n.tunnel_ip, mac=vtep_mac(n.name), netns=n.ns.netns)
                    for n in bed.nodes}
            vteps = [Vtep(n.name, n.underlay_ip, n.tunnel_ip, macs[n.name], (str(n.block),)) for n in bed.nodes]
            for n in bed.nodes:
                set_pod_mtu(n, 1450)
                sync_vxlan(vteps, netns=n.ns.netns)
            tb.wait_ping(a.pod, b.pod_ip)
            res["vxlan_kernel"] = iperf3(nss, a.pod, b.pod, b.pod_ip, args.time, logdir)
    finally:
        nss.cleanup()
    ratio = res["ipip_userspace"] / res["vxlan_kernel"]
    if args.json:
        print(json.dumps({"mbit_per_s": res, "ipip_userspace_over_vxlan_kernel": ratio}))
    else:
        print(f"iperf3 TCP, one stream, {args.time:g} s each, {os.cpu_count()} CPUs")
        for k, v in res.items():
            print(f"  {k:16s} {v:9.0f} Mbit/s   ({v / res['underlay']:.2f} of underlay)")
        print(f"  ratio userspace IPIP / kernel VXLAN = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
