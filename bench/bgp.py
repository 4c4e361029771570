"""Benchmark: prefixes/s received by labnet's BGP speaker vs a BIRD 2 receiver, from one BIRD injector.

    sudo .venv/bin/python bench/bgp.py [--prefixes 20000] [--runs 3] [--json]

One injector BIRD holds N static /24s and has an eBGP session (disabled at start) to each
receiver: labnet's speaker (python -m labnet.bgp.cli) in one namespace, BIRD in another. Each run
enables one session at a time and measures from Established until the receiver's table holds all
N prefixes (receiver-reported Established time to first poll that sees the full table; labnet: Loc-RIB size over its control socket; BIRD: `show route count`). Prints rates
and the labnet/BIRD ratio. Needs root; everything lives in lnet-test-bench-* namespaces. Not run
in CI; tests never assert timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from _bgp_bird import Bird, LabnetSpeaker, link, start_bird, start_labnet  # noqa: E402

from labnet.bgp.cli import control  # noqa: E402
from labnet.testing.scratch import ScratchNamespaces  # noqa: E402
from labnet.wait import poll  # noqa: E402


def injector_config(n: int) -> str:
    routes = "\n".join(f"  route {11 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24 blackhole;" for i in range(n))
    return f"""
router id 10.1.0.2;
protocol device {{ }}
protocol static bulk {{ ipv4;
{routes}
}}
template bgp injector_out {{ hold time 30; connect delay time 0; connect retry time 1; disabled;
  ipv4 {{ import none; export where proto = "bulk"; }}; }}
protocol bgp to_labnet from injector_out {{ local 10.1.0.2 as 65000; neighbor 10.1.0.1 as 64512; }}
protocol bgp to_bird from injector_out {{ local 10.2.0.2 as 65000; neighbor 10.2.0.1 as 64512; }}
"""


RECEIVER_BIRD = """
router id 10.2.0.1;
protocol device { }
protocol bgp from_injector { local 10.2.0.1 as 64512; neighbor 10.2.0.2 as 65000; hold time 30; passive on;
  ipv4 { import all; export none; }; }
"""


def bird_count(bird: Bird) -> int:
    m = re.search(r"(\d+) of \d+ routes", bird.cmd("show", "route", "count"))
    return int(m.group(1)) if m else 0


def labnet_count(sp: LabnetSpeaker) -> int:
    return int(control(sp.control, "summary")["loc_rib"])


def bird_since(bird: Bird, protocol: str) -> float:
    """Epoch time of the protocol's last state change (BIRD prints local time of day, ms)."""
    for line in bird.cmd("show", "protocols", protocol).splitlines():
        parts = line.split()
        if parts and parts[0] == protocol:
            tod = datetime.datetime.strptime(parts[4], "%H:%M:%S.%f").time()
            return datetime.datetime.combine(datetime.date.today(), tod).timestamp()
    raise RuntimeError(f"BIRD has no protocol {protocol}")


def measure(injector: Bird, session: str, established_at: Callable[[], float | None],
            count: Callable[[], int], n: int) -> float:
    """Seconds from the receiver's Established to all n prefixes in its table."""
    enabled = time.time()
    injector.cmd("enable", session)
    seen: list[tuple[float, int]] = []

    def probe() -> tuple[int, float]:
        c = count()
        if not seen or seen[-1][1] != c:
            seen.append((time.time(), c))
        return c, time.time()

    done = poll(probe, lambda r: r[0] >= n, timeout=600,
                what=f"{session}: {n} prefixes received", interval=0.002, max_interval=0.01)[1]
    start = established_at()
    assert start is not None, f"{session}: receiver reports no Established time"
    injector.cmd("disable", session)
    poll(count, lambda c: c == 0, timeout=120, what=f"{session}: receiver table empty again")
    if os.environ.get("LABNET_BENCH_DEBUG"):
        print(f"{session}: enabled {enabled:.3f} established {start:.3f} complete {done:.3f} {seen}", file=sys.stderr)
    return done - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefixes", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/bgp.py needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    nss = ScratchNamespaces("lnet-test-bench")
    tmp = Path(tempfile.mkdtemp(prefix="labnet-bench-bgp-"))
    try:
        inj, rx_l, rx_b = nss("inject"), nss("rx-labnet"), nss("rx-bird")
        link(rx_l, "eth0", ["10.1.0.1/24"], inj, "eth1", ["10.1.0.2/24"])
        link(rx_b, "eth0", ["10.2.0.1/24"], inj, "eth2", ["10.2.0.2/24"])
        sp = start_labnet(rx_l, tmp / "labnet", {
            "asn": 64512, "router_id": "10.1.0.1", "local_address": "10.1.0.1",
            "peers": [{"address": "10.1.0.2", "asn": 65000, "hold_time": 30, "passive": True}],
        }, nss.track_pid)
        rx_bird = start_bird(rx_b, tmp / "rx-bird", RECEIVER_BIRD, nss.track_pid)
        injector = start_bird(inj, tmp / "inject", injector_config(args.prefixes), nss.track_pid)
        n = args.prefixes
        lab_times, bird_times = [], []
        for _ in range(args.runs):
            lab_times.append(measure(injector, "to_labnet", lambda: float(sp.status()["10.1.0.2"]["since"]),
                                     lambda: labnet_count(sp), n))
            bird_times.append(measure(injector, "to_bird", lambda: bird_since(rx_bird, "from_injector"),
                                      lambda: bird_count(rx_bird), n))
        lab_s, bird_s = statistics.median(lab_times), statistics.median(bird_times)
        result = {
            "prefixes": n, "runs": args.runs,
            "labnet_s": round(lab_s, 3), "bird_s": round(bird_s, 3),
            "labnet_prefixes_per_s": round(n / lab_s), "bird_prefixes_per_s": round(n / bird_s),
            "labnet_vs_bird": round((n / lab_s) / (n / bird_s), 3),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{n} prefixes, median of {args.runs}: labnet {result['labnet_prefixes_per_s']}/s "
                  f"({lab_s:.2f} s), BIRD {result['bird_prefixes_per_s']}/s ({bird_s:.2f} s), "
                  f"ratio labnet/BIRD {result['labnet_vs_bird']}")
        return 0
    finally:
        nss.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
