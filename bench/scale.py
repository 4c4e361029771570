"""What a node costs: `labnet up`/`down` of generated labs from 5 to 200 nodes (netns runtime).

For each size: wall time of `up` (until every agent is ready, BGP Established and every block
routed on every node, then every pod wired) and of `down`, the time of each phase, peak memory
(the sum of the PSS of the lab's processes, sampled while `up` runs and once it is up, and the
machine's used memory, MemTotal - MemAvailable, above what it was before), the PSS per idle
node, and whether routes converged everywhere (`up` waits for it; its exit status says so).

Reference in the same run: the iproute2 floor of the same underlay (bench/up.py's ip script:
namespaces, bridges, veths, addresses, routes), so time figures are ratios as well as seconds.
Memory has no reference (no other tool here runs these daemons).

Run as root: `python bench/scale.py [--sizes 5,50,100,200] [--pods 1,10] [--plot]`.
Route reflectors: 2 from 50 nodes on (Calico's advice for large clusters); a full mesh below.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from up import ip_script, sh  # noqa: E402

from labnet.topology.generate import generate  # noqa: E402

RESULTS = REPO / "bench" / "results"


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _used_kb() -> int:
    info = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())}
    return info["MemTotal"] - info["MemAvailable"]


def lab_pids(lab: str) -> list[int]:
    """Processes in the lab's namespaces (its daemons: etcd, node processes), and the lab's
    supervisor, which runs on the host (its journal says which pid)."""
    from labnet.errors import LabnetError
    from labnet.lab.processes import alive, supervisor_entry
    from labnet.lab.state import load_journal
    from labnet.nsexec import processes_in
    from labnet.paths import NETNS_DIR

    files = [str(p) for p in NETNS_DIR.glob(f"lnet-{lab}.*")]
    pids = processes_in(files) if files else []
    try:
        journal = load_journal(lab)
    except LabnetError:  # read while `up` writes it
        journal = None
    sup = supervisor_entry(journal) if journal is not None else None
    if sup is not None and alive(sup):
        pids.append(int(sup["pid"]))
    return pids


class Sampler:
    """Peak PSS of the lab's processes and peak used memory, sampled every `every` seconds."""

    def __init__(self, lab: str, every: float = 1.0) -> None:
        self.lab, self.every = lab, every
        self.base = _used_kb()
        self.peak_pss = self.peak_used = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> int:
        pss = sum(_pss_kb(p) for p in lab_pids(self.lab))
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_used = max(self.peak_used, _used_kb() - self.base)
        return pss

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_labnet(*args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", *args], capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, proc


def measure(nodes: int, pods_per_node: int) -> dict[str, object]:
    rrs = 2 if nodes >= 50 else 0
    name = f"bench-scale{nodes}x{pods_per_node}"
    text = generate(nodes, name, pods_per_node=pods_per_node, route_reflectors=rrs)
    row: dict[str, object] = {"nodes": nodes, "pods": nodes * pods_per_node, "route_reflectors": rrs}
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "lab.yaml"
        f.write_text(text)
        with Sampler(name) as s:
            wall, proc = run_labnet("up", str(f), "-q", "--timings")
            idle_pss = s.sample()
        row["up_ok"] = proc.returncode == 0
        if proc.returncode != 0:
            row["up_error"] = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        else:
            row["phases_s"] = {k: round(v, 2) for k, v in json.loads(proc.stdout)["phases"].items()}
        row["up_s"] = round(wall, 2)
        row["peak_lab_pss_mb"] = round(s.peak_pss / 1024, 1)
        row["idle_lab_pss_mb"] = round(idle_pss / 1024, 1)
        row["pss_per_node_mb"] = round(idle_pss / 1024 / nodes, 1)
        row["peak_machine_used_mb"] = round(s.peak_used / 1024, 1)
        down, dproc = run_labnet("down", "--name", name)
        row["down_s"] = round(down, 2)
        if dproc.returncode != 0:
            row["down_error"] = dproc.stderr.strip().splitlines()[-3:]
        ref_up, ref_down = ip_script(text, f"s{nodes}")
        row["ref_ip_script_up_s"] = round(sh(ref_up), 2)
        sh(ref_down)
        row["up_ratio_vs_ip_script"] = round(wall / float(row["ref_ip_script_up_s"]), 1)  # type: ignore[arg-type]
    return row


def plot(rows: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ppn in sorted({int(r["pods"]) // int(r["nodes"]) for r in rows}):  # type: ignore[call-overload]
        sel = [r for r in rows if int(r["pods"]) == int(r["nodes"]) * ppn and r["up_ok"]]  # type: ignore[call-overload]
        xs = [r["nodes"] for r in sel]
        a.plot(xs, [r["up_s"] for r in sel], "o-", label=f"labnet up, {ppn} pod/node")
        b.plot(xs, [r["peak_lab_pss_mb"] for r in sel], "o-", label=f"lab PSS peak, {ppn} pod/node")
        b.plot(xs, [r["peak_machine_used_mb"] for r in sel], "x--", label=f"machine used peak, {ppn} pod/node")
    floor = sorted({(r["nodes"], r["ref_ip_script_up_s"]) for r in rows})  # type: ignore[type-var]
    a.plot([x for x, _ in floor], [y for _, y in floor], "k:", label="iproute2 floor (underlay only)")
    a.set(xlabel="nodes", ylabel="seconds", title="labnet up (netns runtime)")
    b.set(xlabel="nodes", ylabel="MB", title="memory")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,50,100,200")
    ap.add_argument("--pods", default="1,10", help="pods per node")
    ap.add_argument("--plot", action="store_true", help="write bench/results/scale.png (needs matplotlib)")
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/scale.py: run as root (it builds labs)")
    rows = []
    for ppn in (int(x) for x in a.pods.split(",")):
        for n in (int(x) for x in a.sizes.split(",")):
            row = measure(n, ppn)
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    if a.plot:
        plot(rows, RESULTS / "scale.png")


if __name__ == "__main__":
    main()
