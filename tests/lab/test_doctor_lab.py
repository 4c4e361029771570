"""`labnet doctor` on a real lab: break one thing at a time, doctor names it, fix it, doctor is clean.

One lab for the module: topologies/minimal.yaml with a 3 s BGP hold time (so a stopped agent's
sessions expire quickly) and no graceful restart. Tests run in file order; each leaves the lab
healthy (doctor exit 0) for the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _labtools import TOPOLOGIES, lab_exec, labnet

from labnet import ipam
from labnet.checks.assertions import ping_once
from labnet.etcd import keys
from labnet.etcd.admin import admin_store
from labnet.lab.view import LabView
from labnet.nsexec import NodeNS
from labnet.wait import poll

LAB = "t-doctor"
Finding = dict[str, str]


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabView]:
    if os.geteuid() != 0:
        pytest.skip("needs root to build a lab")
    topo = yaml.safe_load((TOPOLOGIES / "minimal.yaml").read_text())
    topo["cluster"]["bgp"] = {"hold_time": 3, "keepalive": 1, "graceful_restart": False}
    path = tmp_path_factory.mktemp("doctor") / "doctor.yaml"
    path.write_text(yaml.safe_dump(topo))
    labnet("up", str(path), "--name", LAB, "-q")
    try:
        yield LabView(LAB)
    finally:
        labnet("down", "--name", LAB, check=False)


def doctor(*args: str) -> tuple[int, list[Finding]]:
    proc = labnet("doctor", "-l", LAB, "--json", *args, check=False, timeout=120)
    assert proc.returncode in (0, 1), f"labnet doctor exited {proc.returncode}: {proc.stderr}"
    doc = json.loads(proc.stdout)
    assert doc["ok"] == (proc.returncode == 0), doc
    return proc.returncode, doc["findings"]


def wait_finding(node: str, words: str, timeout: float = 30) -> Finding:
    """Poll doctor until a finding on `node` whose problem contains `words`; exit status must be 1."""

    def probe() -> tuple[int, list[Finding]]:
        return doctor()

    def has(res: tuple[int, list[Finding]]) -> bool:
        return res[0] == 1 and any(f["node"] == node and words in f["problem"] for f in res[1])

    rc, found = poll(probe, has, timeout=timeout, what=f"doctor to report {words!r} on {node}")
    f = next(f for f in found if f["node"] == node and words in f["problem"])
    for key in ("node", "problem", "explanation", "evidence", "command"):
        assert f.get(key), f"finding without {key}: {f}"
    return f


def wait_clean(timeout: float = 60) -> None:
    poll(doctor, lambda res: res[0] == 0 and not res[1], timeout=timeout, what="doctor to find no problem")


def ns(view: LabView, target: str) -> NodeNS:
    return view.pod_ns(target.split("/")[1]) if "/" in target else view.ns(target)


def agent_pids(node: str) -> tuple[int, int]:
    """(the lab's supervisor, the node's process) pids, from `labnet status --json`."""
    rows = json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["processes"]
    sup = next(p["pid"] for p in rows if p["what"] == "supervisor")
    agent = poll(lambda: [p["pid"] for p in json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["processes"]
                          if p["node"] == node and p["what"] == "node-process" and p["alive"]],
                 bool, timeout=30, what=f"{node}'s node process to run")
    return sup, agent[0]


def test_healthy_lab_has_no_problems(view: LabView) -> None:
    proc = labnet("doctor", "-l", LAB, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems found" in proc.stdout


def test_no_default_route(view: LabView) -> None:
    lab_exec(LAB, "node-1", "ip", "route", "del", "default")
    try:
        f = wait_finding("node-1", "no default route")
        assert "169.254.1.1" in f["problem"] and "proxy-ARP" in f["explanation"]
        assert f["command"] == f"labnet exec -l {LAB} node-1 -- ip route"
        # the one-node form shows it too, and says nothing about node-2
        rc, only = doctor("node-1")
        assert rc == 1 and all(x["node"] in ("node-1", "etcd") for x in only), only
    finally:
        lab_exec(LAB, "node-1", "ip", "route", "replace", "default", "via", "10.20.30.1")
    wait_clean()


def test_pod_mtu_larger_than_tunnel(view: LabView) -> None:
    lab_exec(LAB, "node-1/pod-1", "ip", "link", "set", "eth0", "mtu", "1500")
    try:
        f = wait_finding("node-1", "pod pod-1 eth0 MTU 1500 is larger than tunl0 MTU 1480")
        assert "node-1/pod-1" in f["command"]
    finally:
        lab_exec(LAB, "node-1/pod-1", "ip", "link", "set", "eth0", "mtu", "1480")
    wait_clean()


def _set_asn(view: LabView, node: str, asn: int | None) -> bytes:
    store = admin_store(view.journal.info)
    try:
        kv = store.get(keys.config("cluster"))
        assert kv is not None
        doc = json.loads(kv.value)
        if asn is not None:
            doc["node_asn"][node] = asn
        store.put(keys.config("cluster"), json.dumps(doc))
        return kv.value
    finally:
        store.close()


def test_bgp_as_mismatch(view: LabView) -> None:
    old = _set_asn(view, "node-2", 64999)  # node-1 now expects AS 64999 from node-2, which runs 64512
    try:
        f = wait_finding("node-1", "AS number mismatch")
        assert "64999" in f["evidence"] and "64512" in f["evidence"], f
    finally:
        store = admin_store(view.journal.info)
        try:
            store.put(keys.config("cluster"), old)
        finally:
            store.close()
    wait_clean()


def test_bgp_no_route_to_peer(view: LabView) -> None:
    lab_exec(LAB, "node-1", "ip", "route", "add", "unreachable", "10.20.30.12/32")
    try:
        f = wait_finding("node-1", "no route to the peer")
        assert "10.20.30.12" in f["problem"] and "ip route get 10.20.30.12" in f["command"]
    finally:
        lab_exec(LAB, "node-1", "ip", "route", "del", "unreachable", "10.20.30.12/32")
    wait_clean()


def test_stopped_agent_hold_timer_refused_and_missing_routes(view: LabView) -> None:
    """Stop node-2's agent: node-1's session expires (hold timer); with it stopped, delete node-2's
    blackhole and tunnel routes (nothing repairs them); then kill it: nothing listens on 179."""
    sup, agent = agent_pids("node-2")
    blocks = {n: view.blocks(n) for n in ("node-1", "node-2")}
    os.kill(sup, signal.SIGSTOP)
    os.kill(agent, signal.SIGSTOP)
    try:
        wait_finding("node-2", "labnet-agent is stopped")
        wait_finding("node-1", "hold timer expired")
        own, remote = str(blocks["node-2"][0]), str(blocks["node-1"][0])
        lab_exec(LAB, "node-2", "ip", "route", "del", "blackhole", own)
        lab_exec(LAB, "node-2", "ip", "route", "del", remote)
        f = wait_finding("node-2", f"missing blackhole route for its own block {own}")
        assert "blackhole" in f["command"]
        wait_finding("node-2", f"missing route to node-1's block {remote}")
        os.kill(agent, signal.SIGKILL)  # its sockets close now; the stopped supervisor does not start it again
        f = wait_finding("node-1", "nothing listens on TCP 179")
        assert "10.20.30.12" in f["problem"]
    finally:
        os.kill(sup, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):  # the supervisor may reap it first
            os.kill(agent, signal.SIGCONT)
    wait_clean()


def _forget_node(view: LabView, name: str) -> None:
    """`calicoctl delete node NAME`: its record, its tunnel address, its empty blocks and affinities."""
    store = admin_store(view.journal.info)
    try:
        ipam.release(store, ipam.tunnel_handle(name))
        for kv in store.range(keys.affinities(name)):
            cidr = keys.cidr_from_key(kv.key[len(keys.affinities(name)):])
            block = store.get(keys.block(cidr))
            if block is not None and ipam.Block.decode(block.value).used() == 0:
                store.delete(keys.block(cidr))
            store.delete(kv.key)
        store.delete(keys.node(name))
    finally:
        store.close()


def _agent_config(view: LabView, node: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = Path(view.runtime.host_path(node, "/var/lib/labnet/agent.json"))
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    _sup, agent = agent_pids(node)
    os.kill(agent, signal.SIGTERM)  # the supervisor restarts it with the new config
    poll(lambda: agent_pids(node)[1], lambda pid: pid != agent, timeout=30, what=f"{node}'s agent to restart")


def test_node_name_mismatch_and_orphan_blocks(view: LabView) -> None:
    """Frederic LOUI's problem: the agent registers under another name than the CNI plugin uses."""
    blocks = view.blocks("node-2")
    _agent_config(view, "node-2", lambda d: d.update(nodename="node-2.lan"))
    try:
        f = wait_finding("node-2", "node name mismatch")
        assert "'node-2.lan'" in f["problem"] and "'node-2'" in f["problem"], f
        assert keys.affinities() in f["command"]
        # the blocks the CNI plugin (as node-2) claimed, which no agent routes now, are named
        assert f"node-2: {[str(b) for b in blocks]}" in f["evidence"], f
    finally:
        _agent_config(view, "node-2", lambda d: d.update(nodename=None))
    # back under its own name, node-2.lan's leftovers (record, tunnel block) are orphans now
    wait_finding("etcd", "IPAM blocks are affine to node 'node-2.lan'")
    _forget_node(view, "node-2.lan")
    wait_clean()


def test_rp_filter_drops_asymmetric_pod_traffic(view: LabView) -> None:
    pod2 = view.pod("pod-2")["ip"]
    # node-1 sends pod-1 -> pod-2 unencapsulated over the LAN; node-2 routes pod-1's block back
    # through tunl0, so its strict reverse-path check drops what arrives on eth0.
    lab_exec(LAB, "node-1", "ip", "route", "add", f"{pod2}/32", "via", "10.20.30.12", "dev", "eth0")
    lab_exec(LAB, "node-2", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    try:
        assert not ping_once(ns(view, "node-1/pod-1"), pod2).reached
        f = wait_finding("node-2", "rp_filter=1 (strict) drops pod traffic")
        assert "net.ipv4.conf.all.rp_filter=1" in f["evidence"] and "IPReversePathFilter drops: 0" not in f["evidence"]
    finally:
        lab_exec(LAB, "node-2", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        lab_exec(LAB, "node-1", "ip", "route", "del", f"{pod2}/32")
    wait_clean()


def test_default_deny_policy(view: LabView) -> None:
    from labnet.policy import PodInfo, PolicySettings, apply, remove, render

    infos = [PodInfo(p, view.pod(p)["ip"], view.pod(p)["host_veth"]) for p in ("pod-1", "pod-2")]
    node2 = view.ns("node-2")
    apply(node2, render(PolicySettings(default="deny"), [infos[1]], infos))
    try:
        assert not ping_once(ns(view, "node-1/pod-1"), str(infos[1].ip)).reached
        f = wait_finding("node-2", "policy default-deny dropped")
        assert "pod pod-2" in f["problem"] and "labnet-policy" in f["command"], f
    finally:
        remove(node2)
    wait_clean()
    assert ping_once(ns(view, "node-1/pod-1"), str(infos[1].ip)).reached


def test_stopped_node_process_names_the_cni_server_too(view: LabView) -> None:
    # the agent and the CNI server are one process: stopping it hangs both
    pid = view.agent_status("node-1")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        f = wait_finding("node-1", "labnet-agent is stopped")
        assert str(pid) in f["evidence"] and "CNI server" in f["explanation"], f
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_clean()
