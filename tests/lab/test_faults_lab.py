"""Every fault on a real lab: applied, its effect observed, undone, and the lab back afterwards.

One lab for the module (topologies/faults.yaml under a test-only name). Each test applies a
fault through the same runner scenarios use, inside `fault(...)`, which runs the scenario's
Undo at the end and fails the test when anything could not be undone.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from _labtools import REPO, labnet

from labnet.checks import (
    CheckFailed,
    CheckResult,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_route,
    assert_tunnel_route,
)
from labnet.nsexec import pid_alive, run
from labnet.scenario import faults, waits
from labnet.scenario.run import FAULTS, Undo, run_step
from labnet.topology.steps import STEP_KINDS
from labnet.wait import poll

pytestmark = pytest.mark.topology("../../topologies/faults.yaml", name="t-faults")
TOPOLOGY = str(REPO / "topologies" / "faults.yaml")


def _step(lab: Any, kind: str, undo: Undo | None = None, timeout: float = 15.0, **args: Any) -> list[CheckResult]:
    # defaults filled as the topology loader fills them
    filled = STEP_KINDS[kind].args.model_validate(args).model_dump(by_alias=True)
    return run_step(lab.view, kind, filled, timeout, undo)


@contextlib.contextmanager
def fault(lab: Any, kind: str, **args: Any) -> Iterator[list[CheckResult]]:
    undo = Undo()
    try:
        yield _step(lab, kind, undo, **args)
    finally:
        problems = undo.run()
    assert problems == [], problems


def _ping_fails(lab: Any, src: str, dst: str) -> None:
    assert_ping(lab.pod(src), lab.address(dst), expect=False, timeout=10, dst_name=dst)


def _etcd_entry(lab: Any) -> dict[str, Any]:
    from labnet.lab import state as labmod

    journal = labmod.load_journal(lab.name)
    assert journal is not None
    (entry,) = [e for e in journal.of_kind("process") if e["what"] == "etcd"]
    return entry


def test_link_down_at_the_fabric_cuts_the_node_off_and_undo_restores(lab) -> None:
    with fault(lab, "link_down", machine="node-3", interface="ens32") as (r,):
        assert (r.ok, r.name, r.target) == (True, "fault: link_down node-3 ens32", "node-3")
        _ping_fails(lab, "pod-1", "pod-3")
        link = json.loads(run(lab.node("node-3"), ["ip", "-j", "link", "show", "ens32"]).stdout)[0]
        assert "NO-CARRIER" in link["flags"], f"node-3 ens32 flags: {link['flags']}"
        # the cable is pulled, not the interface: node-3 keeps its routes
        assert_route(lab.node("node-3"), {"dst": "default", "gateway": "192.168.50.1"}, timeout=2)
    assert_ping(lab.pod("pod-1"), lab.address("pod-3"), timeout=30)


def test_link_down_on_the_machine_side_gives_back_the_routes_the_kernel_dropped(lab) -> None:
    n2 = lab.node("node-2")
    with fault(lab, "link_down", machine="node-2", interface="ens32", side="machine"):
        assert_no_route(n2, match={"dst": "default"}, timeout=5)
        (up,) = _step(lab, "link_up", Undo(), machine="node-2", interface="ens32", side="machine")
        assert up.ok and "node-2's own ens32 up" in up.detail, up.detail
        assert_route(n2, {"dst": "default", "gateway": "10.20.30.1", "dev": "ens32"}, timeout=5)
    assert_route(n2, {"dst": "default", "gateway": "10.20.30.1", "dev": "ens32"}, timeout=5)
    assert_ping(lab.pod("pod-2"), lab.address("pod-3"), timeout=30)


def _nft_tables(ns: Any) -> list[str]:
    return run(ns, ["nft", "list", "tables"]).stdout.split()


def test_packet_loss_drops_with_nftables_and_undo_removes_the_table(lab) -> None:
    n2 = lab.node("node-2")
    with fault(lab, "packet_loss", machine="node-2", interface="ens32", percent=0):
        assert "labnet-loss-ens32" in _nft_tables(n2)
        assert_ping(lab.pod("pod-1"), lab.address("pod-2"), timeout=10)  # 0% drops nothing
    with fault(lab, "packet_loss", machine="node-2", interface="ens32", percent=100) as (r,):
        assert "100%" in r.name
        _ping_fails(lab, "pod-1", "pod-2")
        ruleset = run(n2, ["nft", "list", "table", "inet", "labnet-loss-ens32"]).stdout
        assert 'iifname "ens32"' in ruleset and 'oifname "ens32"' in ruleset, ruleset
    assert "labnet-loss-ens32" not in _nft_tables(n2)
    assert_ping(lab.pod("pod-1"), lab.address("pod-2"), timeout=30)


def _ping_loss(lab: Any, src: str, dst: str, count: int = 200) -> tuple[int, int, str]:
    """`count` pings 10 ms apart from src to dst, inside the lab: (sent, received, ping's summary)."""
    proc = run(lab.pod(src), ["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1",
                              lab.address(dst)], check=False, timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    assert m, f"{src} → {dst}: expected ping's summary line, got exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    return int(m.group(1)), int(m.group(2)), m.group(0)


def test_fifty_percent_loss_drops_about_half_and_undo_drops_nothing(lab) -> None:
    # only the way in: each echo request crosses node-2's ens32 inbound once (IPIP from node-1),
    # so the loss seen by ping is the rule's own 50% (both ways would compound to 75%)
    with fault(lab, "packet_loss", machine="node-2", interface="ens32", percent=50, direction="in") as (r,):
        assert "50%" in r.name, r.name
        sent, got, line = _ping_loss(lab, "pod-1", "pod-2")
        lost = 100 * (sent - got) / sent
        # binomial(200, 0.5): sd 3.5 points, so 20-80% is over 8 sd either side
        assert sent == 200 and 20 <= lost <= 80, (
            f"node-2 ens32 with 50% inbound loss, pod-1 → pod-2: expected 20-80% of 200 pings lost, "
            f"got {lost:.1f}% ({line})")
        counters = run(lab.node("node-2"), ["nft", "list", "table", "inet", "labnet-loss-ens32"]).stdout
        dropped = [int(x) for x in re.findall(r"counter packets (\d+)", counters)]
        assert dropped and dropped[0] >= sent - got, (
            f"node-2 table labnet-loss-ens32: expected its drop counter ≥ {sent - got}, got {counters}")
    sent, got, line = _ping_loss(lab, "pod-1", "pod-2")
    assert (sent, got) == (200, 200), (
        f"node-2 ens32 after the loss was undone, pod-1 → pod-2: expected 0% of 200 pings lost, got {line}")


def test_kill_agent_the_supervisor_starts_a_new_one_and_routes_come_back(lab) -> None:
    before = lab.view.agent_status("node-2")
    with fault(lab, "kill_agent", node="node-2") as (r,):
        assert str(before["pid"]) in r.detail
        assert not pid_alive(before["pid"])
        after = poll(lambda: lab.view.agent_status("node-2"), lambda st: st["pid"] != before["pid"],
                     timeout=60, what="a new agent on node-2")
        assert after["supervisor_pid"] == before["supervisor_pid"]
    for block in lab.view.blocks("node-2"):
        assert_tunnel_route(lab.node("node-1"), str(block), lab.address("node-2"))


def test_stop_and_start_agent_record_the_new_node_process(lab) -> None:
    from labnet.lab import processes
    from labnet.lab import state as labmod

    def entry() -> dict[str, Any]:
        j = labmod.load_journal(lab.name)
        assert j is not None
        e = next(e for e in j.of_kind("process") if e["what"] == "agent" and e["node"] == "node-3")
        return processes.current(e)  # the pid the lab's supervisor keeps for it

    old = entry()["pid"]
    with fault(lab, "stop_agent", node="node-3"):
        assert not pid_alive(old)
        with pytest.raises(Exception, match="status"):
            lab.view.agent_status("node-3")
        assert entry()["held"], "the lab's supervisor must not start a stopped agent again by itself"
        assert entry()["argv"][-2:] == ["--config", "/var/lib/labnet/agent.json"]
        (started,) = _step(lab, "start_agent", Undo(), node="node-3")
        assert started.ok and started.name == "fault: start_agent node-3"
    new = entry()["pid"]
    assert new != old and pid_alive(new) and not entry()["held"]
    assert lab.view.agent_status("node-3")["pid"] == new


def test_kill_etcd_health_fails_then_the_same_argv_comes_back(lab) -> None:
    before = _etcd_entry(lab)
    with fault(lab, "kill_etcd", node="node-1") as (r,):
        assert f"pid {before['pid']}" in r.detail
        (unhealthy,) = _step(lab, "etcd_health", expect="unhealthy")
        assert "Connection refused" in unhealthy.detail or "unhealthy" in unhealthy.detail
        with pytest.raises(CheckFailed, match="etcd healthy"):
            _step(lab, "etcd_health", timeout=1)
    after = _etcd_entry(lab)
    assert after["pid"] != before["pid"] and pid_alive(after["pid"])
    with open(f"/proc/{after['pid']}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    assert [a.decode() for a in cmdline if a] == after["argv"]
    _step(lab, "etcd_health")
    assert waits.etcd_health_now(lab.view)


def test_remove_default_route_proxy_arp_fails_with_the_seed_diagnosis(lab) -> None:
    veth = lab.view.pod("pod-3")["host_veth"]
    n3 = lab.node("node-3")
    with fault(lab, "remove_default_route", node="node-3") as (r,):
        assert "default via 192.168.50.1 dev ens32" in r.detail
        with pytest.raises(CheckFailed) as info:
            assert_proxy_arp(n3, lab.pod("pod-3"), veth, timeout=2)
        assert "no default route" in str(info.value), str(info.value)
        _step(lab, "agent_problem", node="node-3", match="no default route")
    assert_route(n3, {"dst": "default", "gateway": "192.168.50.1"}, timeout=2)
    assert_proxy_arp(n3, lab.pod("pod-3"), veth)


def test_rename_agent_reports_the_mismatch_and_peers_lose_the_route(lab) -> None:
    from labnet.etcd import keys
    from labnet.etcd.admin import admin_store

    blocks = [str(b) for b in lab.view.blocks("node-3")]
    with fault(lab, "rename_agent", node="node-3", name="node-3-typo"):
        st = lab.view.agent_status("node-3")
        assert st["nodename"] == "node-3-typo" and st["cni_nodename"] == "node-3"
        assert any("node name mismatch" in p for p in st["problems"]), st["problems"]
        for b in blocks:  # the pods' block is affine to node-3, whom no agent speaks for
            assert_no_route(lab.node("node-1"), b, timeout=20)
        _ping_fails(lab, "pod-1", "pod-3")
    assert lab.view.agent_status("node-3")["nodename"] == "node-3"
    store = admin_store(lab.view.journal.info)
    try:
        assert store.get(keys.node("node-3-typo")) is None
        assert not store.range(keys.affinities("node-3-typo"))
    finally:
        store.close()
    for b in blocks:
        assert_tunnel_route(lab.node("node-1"), b, lab.address("node-3"))


def _states(pids: list[int]) -> set[str]:
    out = set()
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            out.add(f.read().rsplit(")", 1)[1].split()[0])
    return out


def test_stop_node_freezes_and_cuts_it_off_start_node_resumes(lab) -> None:
    pids = faults._netns_pids(lab.node("node-3").netns)
    assert pids, "node-3 runs no process?"
    with fault(lab, "stop_node", node="node-3") as (r,):
        assert _states(pids) == {"T"}, _states(pids)
        assert "SIGSTOP" in r.detail
        _ping_fails(lab, "pod-1", "pod-3")
    assert "T" not in _states(pids)
    assert_ping(lab.pod("pod-1"), lab.address("pod-3"), timeout=30)


def _scenario_steps() -> dict[str, list[str]]:
    from labnet.topology import load

    return {name: [s.kind for s in steps] for name, steps in load(TOPOLOGY).scenarios.items()}


SCENARIOS = _scenario_steps()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_labnet_check_runs_every_fault_scenario_and_the_lab_comes_back(lab, scenario: str) -> None:
    """Every scenario of faults.yaml, one after the other on the one lab: each breaks something,
    sees the effect, and undoes it at the end, so the next one starts from a converged lab."""
    proc = labnet("check", "-l", lab.name, TOPOLOGY, scenario, "--json", check=False)
    doc = json.loads(proc.stdout or "{}")
    rows = doc.get("results", [])
    failed = [f"[{r['target']}] {r['name']}: {r['detail']}\n{r.get('message') or ''}" for r in rows if not r["ok"]]
    assert proc.returncode == 0 and doc.get("failed") == 0, (
        f"lab {lab.name}, scenario {scenario}: expected 0 failed, exit 0; got {doc.get('failed')} failed, "
        f"exit {proc.returncode}\n" + "\n".join(failed) + f"\nstderr:\n{proc.stderr}")
    kinds = SCENARIOS[scenario]
    faults_run = [r["name"] for r in rows if r["name"].startswith("fault: ")]
    want_faults = [k for k in kinds if k in FAULTS]
    assert len(faults_run) == len(want_faults), (
        f"lab {lab.name}, scenario {scenario}: expected a result for each fault step {want_faults}, got {faults_run}")
    converged = [r for r in rows if r["name"].startswith("converge ")]
    assert len(converged) == kinds.count("converge"), (
        f"lab {lab.name}, scenario {scenario}: expected {kinds.count('converge')} converge results, "
        f"got {[r['name'] for r in converged]}")
    for r in converged:
        assert re.fullmatch(r"reached after \d+\.\d\d s \(\d+ pings\)", r["detail"]), (
            f"[{r['target']}] {r['name']}: expected 'reached after X.XX s (N pings)', got {r['detail']!r}")
        assert r["elapsed"] > 0, f"[{r['target']}] {r['name']}: expected a convergence time > 0, got {r['elapsed']}"
    # back where it started: every agent answers, BGP up, every block routed everywhere
    waits.wait_converged(lab.view, 10)


def test_labnet_check_prints_the_convergence_time(lab) -> None:
    out = labnet("check", "-l", lab.name, TOPOLOGY, "agent-crash").stdout
    assert "fault: kill_agent node-2" in out and "reached after" in out, out
    assert "0 failed" in out, out


def test_pytest_runs_a_yaml_fault_scenario_with_the_convergence_time_in_the_log(lab) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", TOPOLOGY, "-k", "agent-crash", "--labnet-attach", lab.name,
         "--log-cli-level=INFO", "-p", "no:cacheprovider", "-q"],
        capture_output=True, text=True, timeout=240, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout
    assert "converge pod-2 → pod-3" in proc.stdout and "reached after" in proc.stdout, proc.stdout
