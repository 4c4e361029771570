"""CNI ADD/DEL latency: labnet's plugins vs Debian's reference Go plugins (ptp + host-local).

All run in the same node (net + mount + UTS namespaces, real etcd for labnet), invoked the
same way a runtime does (exec inside the node, env + config on stdin), interleaved pod by
pod so all see the same machine load. Needs root. Prints p50/p99 and labnet/reference ratios.

  labnet fast   /opt/cni/bin/labnet (the C shim) answered by labnet's CNI server in the node
  labnet exec   the same shim with no server to reach: it execs the Python plugin (which
                execs labnet-ipam), the fallback path
  reference     /usr/lib/cni/ptp + host-local

    .venv/bin/python bench/cni.py --pods 200
    .venv/bin/python bench/cni.py --pods 200 --dual   # one address per family, both sides
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from _cni_node import cni_env, make_node, start_cni_server  # noqa: E402

from labnet import nsexec  # noqa: E402
from labnet.nsexec import NodeNS  # noqa: E402
from labnet.testing.scratch import ScratchNamespaces  # noqa: E402

REFERENCE = {"cniVersion": "1.0.0", "name": "ref", "type": "ptp", "ipMasq": False, "mtu": 1480,
             "ipam": {"type": "host-local", "subnet": "10.200.0.0/16", "dataDir": "/var/lib/labnet/host-local",
                      "routes": [{"dst": "0.0.0.0/0"}]}}


# host-local's dual-stack form: one range set per family, as for a dual-stack pod network
REFERENCE_DUAL = {**REFERENCE, "ipam": {**REFERENCE["ipam"], "subnet": None, "ranges": [  # type: ignore[dict-item]
    [{"subnet": "10.200.0.0/16"}], [{"subnet": "fd00:200::/64"}]], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}
del REFERENCE_DUAL["ipam"]["subnet"]


def timed(node: NodeNS, binary: str, env: dict[str, str], conf: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    proc = nsexec.run(node, [binary], input=json.dumps(conf), env=env, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {env['CNI_COMMAND']} failed: {proc.stdout} {proc.stderr}")
    return dt


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


KINDS = ("labnet fast", "labnet exec", "reference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--dual", action="store_true", help="dual-stack pods: an IPv6 pool beside the IPv4 one "
                    "(labnet) and two host-local ranges (the reference)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (it builds namespaces)")
    factory = ScratchNamespaces("lnet-test-bench")
    tmp = Path(tempfile.mkdtemp(prefix="labnet-bench-cni-"))
    node = None
    try:
        node = make_node(factory, tmp, name="bench", pool6="fd00:100::/48" if args.dual else None)
        start_cni_server(factory, node)
        ours = node.conf()
        # ptp waits until its IPv6 addresses leave duplicate address detection (a second or two);
        # labnet adds them without DAD. Off for every pod and the node, so both are timed alike.
        no_dad = ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        if args.dual:
            nsexec.run(node.ns, no_dad)
        no_server = {"LABNET_CNI_SOCKET": "/var/run/labnet/no-server-here.sock"}  # the shim falls back
        runs = {
            "labnet fast": ("/opt/cni/bin/labnet", ours, "/opt/cni/bin", {}),
            "labnet exec": ("/opt/cni/bin/labnet", ours, "/opt/cni/bin", no_server),
            "reference": ("/usr/lib/cni/ptp", REFERENCE_DUAL if args.dual else REFERENCE, "/usr/lib/cni", {}),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"ADD": [], "DEL": []} for k in KINDS}
        ver: dict[str, list[float]] = {k: [] for k in KINDS}
        load = [os.getloadavg()[0]]
        for i in range(args.pods):
            for kind, (binary, conf, path, extra) in runs.items():
                tag = kind.replace(" ", "-")
                nsname = f"b-{tag}-{i}"
                nsexec.run(node.ns, ["ip", "netns", "add", nsname])
                netns = f"/var/run/netns/{nsname}"
                if args.dual:
                    nsexec.run(node.ns, ["ip", "netns", "exec", nsname, *no_dad])
                env = {**cni_env("ADD", f"{tag}-{i}", netns, pod=f"{tag}-{i}"), "CNI_PATH": path, **extra}
                times[kind]["ADD"].append(timed(node.ns, binary, env, conf))
                times[kind]["DEL"].append(timed(node.ns, binary, {**env, "CNI_COMMAND": "DEL"}, conf))
                nsexec.run(node.ns, ["ip", "netns", "del", nsname])
                if i < 20:
                    ver[kind].append(timed(node.ns, binary, {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION", **extra},
                                           {"cniVersion": "1.0.0"}))
            if i % 50 == 49:
                load.append(os.getloadavg()[0])
        load.append(os.getloadavg()[0])
        print(f"{'dual-stack ' if args.dual else ''}CNI latency over {args.pods} pods on one node (ms; exec inside the node incl. nsenter); "
              f"1-min load average during the run: {min(load):.1f}..{max(load):.1f} on {os.cpu_count()} CPUs")
        print(f"{'':8} {'':12} {'p50':>8} {'p99':>8} {'÷ref p50':>9} {'÷ref p99':>9}")
        for cmd in ("ADD", "DEL"):
            r = times["reference"][cmd]
            for kind in KINDS:
                a = times[kind][cmd]
                print(f"{cmd:8} {kind:12} {pct(a, 50) * 1e3:8.1f} {pct(a, 99) * 1e3:8.1f} "
                      f"{pct(a, 50) / pct(r, 50):9.2f} {pct(a, 99) / pct(r, 99):9.2f}")
        v_r = statistics.median(ver["reference"])
        for kind in KINDS:
            v = statistics.median(ver[kind])
            print(f"{'VERSION':8} {kind:12} {v * 1e3:8.1f} {'':8} {v / v_r:9.2f}   (process start only, median of 20)")
    finally:
        if node is not None:
            node.cleanup()
        factory.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
