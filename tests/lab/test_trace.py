"""`labnet trace` names where a packet stops and why: a default-deny drop, a route missing
because a peer's agent froze past the hold time, a node without a default route (the seed
commenter's proxy-ARP problem); and shows the IPIP outer addresses of a cross-subnet ping."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet.checks import assert_no_route
from labnet.lab.view import LabView
from labnet.scenario.gates import node_process


@contextlib.contextmanager
def running(path: Path, lab: str) -> Iterator[None]:
    """The lab up for the block; down after it, and nothing of it left."""
    before = snapshot(lab)
    labnet("up", str(path), "--name", lab, "-q")
    try:
        yield
    finally:
        labnet("down", "--name", lab)
    assert not snapshot(lab).leftovers(before)


def test_cross_subnet_ipip_and_a_node_without_a_default_route() -> None:
    lab = "t-trace-seed"
    with running(TOPOLOGIES / "seed.yaml", lab):
        ok = labnet("trace", "-l", lab, "net-test", "net-test-2")
        out = ok.stdout
        assert "IPIP (protocol 4): outer 10.20.30.73 → 192.168.50.74" in out, out
        assert "tunl0 from 10.20.30.73 unwrapped" in out and out.rstrip().endswith(
            "delivered to net-test-2 (" + LabView(lab).address("net-test-2") + ")"), out
        hops = [h["machine"] for h in json.loads(labnet("trace", "-l", lab, "net-test", "net-test-2", "--json").stdout)
                ["hops"]]
        assert hops == ["net-test", "ubuntu-3", "gw", "ubuntu-4", "net-test-2"], hops
        egress = labnet("trace", "-l", lab, "net-test", "ext", "--proto", "tcp", "--port", "80").stdout
        assert "masquerade (nat_outgoing, table ip labnet-nat): source" in egress and "becomes 10.20.30.73" in egress

        lab_exec(lab, "ubuntu-3", "ip", "route", "del", "default")
        try:
            bad = labnet("trace", "-l", lab, "net-test", "ext", check=False)
            assert bad.returncode == 1, bad
            assert "DROPPED at net-test: its ARP for 169.254.1.1 gets no answer: node ubuntu-3 has no default route" \
                in bad.stdout, bad.stdout
        finally:
            lab_exec(lab, "ubuntu-3", "ip", "route", "add", "default", "via", "10.20.30.1")


def test_a_default_deny_drop_names_the_rule() -> None:
    lab = "t-trace-pol"
    with running(TOPOLOGIES / "policy.yaml", lab):
        bad = labnet("trace", "-l", lab, "other", "web", check=False)
        assert bad.returncode == 1, bad
        last = bad.stdout.rstrip().splitlines()[-1]
        assert last.startswith("DROPPED at node-2: policy: dropped by default-deny") and \
            'nft rule "policy=default-deny"' in last, bad.stdout
        # what the kernel ran for one real packet (nft monitor trace), not only what the model says
        assert 'nft trace of one packet: chain to_' in last and 'rule "policy=default-deny", verdict drop' in last, last
        assert "disagrees" not in last, last
        ok = labnet("trace", "-l", lab, "client", "web")
        assert "policy: allowed by policy web-from-client (ingress rule 0)" in ok.stdout, ok.stdout
        assert 'rule "policy=web-from-client rule=0", verdict accept' in ok.stdout, ok.stdout


def test_a_route_missing_after_a_frozen_agent_is_the_drop_point() -> None:
    lab = "t-trace-hold"
    frozen = None
    with running(TOPOLOGIES / "faults.yaml", lab), contextlib.ExitStack() as thaw:
        view = LabView(lab)
        entry = next(e for e in view.journal.of_kind("process") if e.get("node") == "node-2" and e["what"] == "agent")
        frozen = node_process(entry)
        assert frozen is not None
        block = str(view.blocks("node-2")[0])  # asked before: a frozen agent answers nothing
        os.kill(frozen, signal.SIGSTOP)
        thaw.callback(os.kill, frozen, signal.SIGCONT)
        assert_no_route(view.ns("node-1"), block, timeout=40)  # hold time 9 s
        bad = labnet("trace", "-l", lab, "pod-1", "pod-2", check=False)
        assert bad.returncode == 1, bad
        out = bad.stdout
        assert "is in node-2's block, but node-1 sends it to gw (10.20.30.1), not through a tunnel" in out, out
        assert out.rstrip().splitlines()[-1].startswith("DROPPED at gw: no route to " + view.address("pod-2")), out


def test_an_egress_drop_is_named_at_the_source_node(tmp_path) -> None:
    import yaml

    lab = "t-trace-egr"
    doc = yaml.safe_load((TOPOLOGIES / "policy.yaml").read_text())
    doc["cluster"]["policy"]["policies"].append({"name": "client-out", "selector": "app == 'client'",
        "egress": [{"protocol": "tcp", "ports": [80], "to": {"selector": "app == 'web'"}}]})
    doc["scenarios"] = {}
    path = tmp_path / "egress.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with running(path, lab):
        bad = labnet("trace", "-l", lab, "client", "web", check=False)
        assert bad.returncode == 1 and bad.stdout.rstrip().splitlines()[-1].startswith(
            "DROPPED at node-1: policy: egress of client: dropped at end-of-egress"), bad.stdout
        tcp = labnet("trace", "-l", lab, "client", "web", "--proto", "tcp", "--port", "80", check=False).stdout
        assert 'egress of client: allowed by policy client-out (egress rule 0)' in tcp, tcp
        assert tcp.rstrip().splitlines()[-1].startswith("DROPPED at node-2: policy: dropped by default-deny"), tcp
