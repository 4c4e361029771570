"""labnet doctor's reasoning, on observed facts built by hand (no root, no lab)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from labnet.checks.routes import parse_routes
from labnet.cli import build_parser
from labnet.diagnose import facts, report, rules
from labnet.diagnose.facts import Finding, NodeFacts, StoreFacts
from labnet.diagnose.report import format_findings
from labnet.diagnose.rules import Doctor
from labnet.nsexec import NodeNS
from labnet.topology import load

ROOT = Path(__file__).resolve().parents[2]

BLOCK1, BLOCK2 = "10.100.1.0/26", "10.100.2.0/26"


class FakeJournal:
    def __init__(self, info: dict[str, Any], processes: list[dict[str, Any]] | None = None) -> None:
        self.info = info
        self.processes = processes or []
        self.topology_file = "/labs/minimal.yaml"

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return self.processes if kind == "process" else []


class FakeView:
    def __init__(self) -> None:
        self.name = "unit"
        self.topo = load(str(ROOT / "topologies" / "minimal.yaml"))
        self.journal = FakeJournal({
            "machines": {n: {"interfaces": [{"name": None}]} for n in ("node-1", "node-2")},
            "pods": {"pod-1": {"node": "node-1", "ip": "10.100.1.1", "host_veth": "cali0000000000a", "netns": "/x"},
                     "pod-2": {"node": "node-2", "ip": "10.100.2.1", "host_veth": "cali0000000000b", "netns": "/y"}},
        })

    def ns(self, node: str) -> NodeNS:
        return NodeNS(node, f"/run/netns/lnet-unit.{node}")


def _routes(*lines: dict[str, Any]) -> list[Any]:
    return parse_routes(json.dumps(list(lines)))


def healthy_routes(node: str) -> list[Any]:
    own, other = (BLOCK1, BLOCK2) if node == "node-1" else (BLOCK2, BLOCK1)
    via = "10.20.30.12" if node == "node-1" else "10.20.30.11"
    return _routes({"dst": "default", "gateway": "10.20.30.1", "dev": "eth0", "flags": []},
                   {"type": "blackhole", "dst": own, "protocol": "bird", "flags": []},
                   {"dst": other, "gateway": via, "dev": "tunl0", "protocol": "bird", "flags": ["onlink"]})


def status(node: str, **kw: Any) -> dict[str, Any]:
    addr = "10.20.30.11" if node == "node-1" else "10.20.30.12"
    peer = "10.20.30.12" if node == "node-1" else "10.20.30.11"
    st = {"nodename": node, "cni_nodename": node, "asn": 64512, "bgp_address": f"{addr}/24", "router_id": addr,
          "peers": [{"peer_address": peer, "bgp_state": "Established", "info": "Established", "asn": 64512}],
          "problems": []}
    st.update(kw)
    return st


def make(**per_node: dict[str, Any]) -> Doctor:
    d = Doctor(FakeView())  # type: ignore[arg-type]
    d.store = StoreFacts(affinities={"node-1": [BLOCK1], "node-2": [BLOCK2]},
                         records={"node-1": "10.20.30.11/24", "node-2": "10.20.30.12/24"})
    for n in ("node-1", "node-2"):
        f = NodeFacts(n, d.view.ns(n), status=status(n), routes=healthy_routes(n), routes_text="(routes)",
                      links={"tunl0": {"ifname": "tunl0", "mtu": 1480}},
                      sysctls={"net.ipv4.conf.all.rp_filter": "0"}, rp_drops=0,
                      pod_mtus={f"pod-{n[-1]}": 1480})
        for k, v in per_node.get(n.replace("-", "_"), {}).items():
            setattr(f, k, v)
        d.facts[n] = f
    return d


def checks(d: Doctor) -> list[Finding]:
    for f in d.facts.values():
        d.check_names(f)
        d.check_bgp(f)
        d.check_mtu(f)
        d.check_rp_filter(f)
        d.check_policy(f)
        d.check_agent_problems(f)
    d.check_orphan_names()
    d.check_routes()
    return d.findings


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, str]]:
    """doctor's commands inside nodes: answers by the command's last word (rc, stdout/stderr)."""
    answers: dict[str, tuple[int, str]] = {}

    def run(ns: NodeNS, cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        rc, text = answers.get(cmd[-1], (0, ""))
        return subprocess.CompletedProcess(cmd, rc, text if rc == 0 else "", text if rc else "")

    monkeypatch.setattr(rules, "run", run)
    monkeypatch.setattr(rules, "tcp_probe", lambda ns, a, p: answers.get(f"tcp {a}", (0, "open"))[1])
    return answers


def test_healthy_facts_give_no_findings(fake_run: dict[str, tuple[int, str]]) -> None:
    assert checks(make()) == []
    assert format_findings("unit", [], "2 nodes, 2 pods") == "lab unit: no problems found (2 nodes, 2 pods)"


def test_no_default_route(fake_run: dict[str, tuple[int, str]]) -> None:
    fake_run["169.254.1.1"] = (2, "RTNETLINK answers: Network is unreachable")
    d = make(node_1={"routes": healthy_routes("node-1")[1:]})
    d.check_default_route(d.facts["node-1"])
    d.check_default_route(d.facts["node-2"])
    (f,) = d.findings
    assert f.node == "node-1" and "no default route" in f.problem and "pod-1" in f.explanation
    assert "Network is unreachable" in f.evidence and f.command == "labnet exec -l unit node-1 -- ip route"


def test_node_name_mismatch_and_orphan_blocks(fake_run: dict[str, tuple[int, str]]) -> None:
    d = make(node_2={"status": status("node-2", nodename="node-2.lan")})
    found = checks(d)
    mismatch = [f for f in found if "node name mismatch" in f.problem]
    assert len(mismatch) == 1 and mismatch[0].node == "node-2"
    assert BLOCK2 in mismatch[0].evidence
    # node-1 must not expect a route for node-2's block (no agent routes it): no double report
    assert not any("missing route" in f.problem for f in found), found


def test_orphan_blocks_of_a_name_nobody_runs(fake_run: dict[str, tuple[int, str]]) -> None:
    d = make()
    d.store.affinities["ubuntu-3.lan"] = ["10.100.9.0/26"]
    (f,) = checks(d)
    assert f.node == "etcd" and "'ubuntu-3.lan'" in f.problem and "10.100.9.0/26" in f.evidence


@pytest.mark.parametrize(("info", "answers", "words"), [
    ("Active", {"10.20.30.12": (2, "RTNETLINK answers: No route to host")}, "no route to the peer"),
    ("NOTIFICATION sent 2/2: bad peer AS", {}, "AS number mismatch"),
    ("Connect Socket: connection failed", {"tcp 10.20.30.12": (0, "refused")}, "nothing listens on TCP 179"),
    ("NOTIFICATION sent 4/0: hold timer expired", {}, "hold timer expired"),
    ("NOTIFICATION received 6/2: cease: administrative shutdown", {}, "closed it (Cease)"),
])
def test_bgp_down_reasons(fake_run: dict[str, tuple[int, str]], info: str, answers: dict[str, tuple[int, str]],
                          words: str) -> None:
    fake_run.update(answers)
    peer = {"peer_address": "10.20.30.12", "bgp_state": "Active", "info": info, "asn": 64512}
    d = make(node_1={"status": status("node-1", peers=[peer])})
    d.check_bgp(d.facts["node-1"])
    (f,) = d.findings
    assert f.node == "node-1" and words in f.problem and "10.20.30.12 (node-2)" in f.problem, f
    assert info in f.evidence


def test_as_mismatch_from_configuration(fake_run: dict[str, tuple[int, str]]) -> None:
    peer = {"peer_address": "10.20.30.12", "bgp_state": "OpenSent", "info": "", "asn": 64999}
    d = make(node_1={"status": status("node-1", peers=[peer])})
    d.check_bgp(d.facts["node-1"])
    (f,) = d.findings
    assert "AS number mismatch" in f.problem and "expects AS 64999" in f.evidence and "runs AS 64512" in f.evidence


def test_missing_and_wrong_routes(fake_run: dict[str, tuple[int, str]]) -> None:
    bad = _routes({"dst": "default", "gateway": "10.20.30.1", "dev": "eth0", "flags": []},
                  {"dst": BLOCK2, "gateway": "10.20.30.99", "dev": "eth0", "protocol": "bird", "flags": []})
    found = checks(make(node_1={"routes": bad}))
    problems = sorted(f.problem for f in found)
    assert problems == [f"missing blackhole route for its own block {BLOCK1}",
                        f"wrong route to node-2's block {BLOCK2}: via 10.20.30.99, expected via 10.20.30.12; "
                        "dev eth0, expected dev tunl0"], problems
    found = checks(make(node_2={"routes": healthy_routes("node-2")[:2]}))
    assert [f.problem for f in found] == [f"missing route to node-1's block {BLOCK1}"]


def test_mtu(fake_run: dict[str, tuple[int, str]]) -> None:
    (f,) = checks(make(node_1={"pod_mtus": {"pod-1": 1500}}))
    assert f.problem == "pod pod-1 eth0 MTU 1500 is larger than tunl0 MTU 1480"
    assert "1481 to 1500" in f.explanation and f.command.endswith("node-1/pod-1 -- ip link show eth0")


def test_rp_filter_only_with_drops_or_asymmetry(fake_run: dict[str, tuple[int, str]]) -> None:
    strict = {"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.tunl0.rp_filter": "0"}
    assert checks(make(node_2={"sysctls": strict})) == []  # strict but symmetric and nothing dropped
    (f,) = checks(make(node_2={"sysctls": strict, "rp_drops": 3}))
    assert f.node == "node-2" and "rp_filter=1" in f.problem and "IPReversePathFilter drops: 3" in f.evidence
    asym = [*healthy_routes("node-2"), *_routes({"dst": "10.100.1.1", "gateway": "10.20.30.11", "dev": "eth0",
                                                 "flags": []})]
    (f,) = checks(make(node_2={"sysctls": strict, "routes": asym}))
    assert "asymmetric pool routes: 10.100.1.1 via 10.20.30.11 dev eth0" in f.evidence


def test_policy_drop_counters_name_the_policy(fake_run: dict[str, tuple[int, str]]) -> None:
    def rule(comment: str, verdict: str, packets: int) -> dict[str, Any]:
        return {"rule": {"family": "inet", "table": "labnet-policy", "chain": "to_cali0000000000b", "comment": comment,
                         "expr": [{"counter": {"packets": packets, "bytes": 84 * packets}}, {verdict: None}]}}

    objs = [{"table": {"name": "labnet-policy"}}, rule("labnet=established", "accept", 0),
            rule("policy=web rule=0", "accept", 0), rule("policy=end-of-policies", "drop", 4)]
    (f,) = checks(make(node_2={"policy": objs}))
    assert f.problem == "policy end-of-policies dropped 4 packet(s) to pod pod-2"
    assert "policies web select the pod" in f.explanation and "policy=web rule=0" in f.evidence
    objs[-1] = rule("policy=end-of-policies", "drop", 0)
    assert checks(make(node_2={"policy": objs})) == []


def test_agent_problems_and_etcd_reachability(fake_run: dict[str, tuple[int, str]]) -> None:
    fake_run["10.20.30.11"] = (2, "RTNETLINK answers: Network is unreachable")
    d = make(node_2={"status": status("node-2", problems=["cluster settings: etcd unreachable for get ...",
                                                            "route not programmed: 10.100.1.0/26: File exists"])})
    d.view.journal.info["etcd"] = {"endpoints": ["https://10.20.30.11:2379"]}
    found = checks(d)
    assert [f.problem for f in found] == ["the agent cannot reach etcd: no route to 10.20.30.11",
                                          "the agent reports: route not programmed: 10.100.1.0/26: File exists"]


def test_netstat_parsing() -> None:
    text = ("TcpExt: SyncookiesSent IPReversePathFilter\nTcpExt: 0 7\n"
            "IpExt: InNoRoutes InTruncatedPkts\nIpExt: 1 0\n")
    assert facts.netstat(text) == {"SyncookiesSent": 0, "IPReversePathFilter": 7, "InNoRoutes": 1,
                                     "InTruncatedPkts": 0}


def test_format_findings_text_and_json() -> None:
    f = Finding("node-1", "no default route", "why it matters", "line one\nline two", "labnet exec -- ip route")
    text = format_findings("lab1", [f], "2 nodes")
    assert text.splitlines()[0] == "lab lab1: 1 problem found (2 nodes)"
    assert "node-1: no default route" in text and "  evidence: line one\n    line two" in text
    assert "  see: labnet exec -- ip route" in text
    assert f.to_dict() == {"node": "node-1", "problem": "no default route", "explanation": "why it matters",
                           "evidence": "line one\nline two", "command": "labnet exec -- ip route"}


def test_cli_registration() -> None:
    args = build_parser().parse_args(["doctor", "node-1", "-l", "x", "--json"])
    assert (args.node, args.lab, args.json, args.func) == ("node-1", "x", True, report.cmd_doctor)
    args = build_parser().parse_args(["doctor"])
    assert args.node is None and args.lab is None and not args.json


def test_stopped_and_dead_daemons(monkeypatch: pytest.MonkeyPatch) -> None:
    states = {10: "T", 20: None, 30: "S", 31: "T", 40: "T"}
    monkeypatch.setattr(rules, "proc_state", lambda pid: states.get(pid))
    monkeypatch.setattr(rules, "children", lambda pid: [31] if pid == 30 else [])
    d = make()
    d.view.journal.processes = [  # type: ignore[attr-defined]
        {"pid": 10, "node": "node-1", "what": "etcd"}, {"pid": 20, "node": "node-1", "what": "agent"},
        {"pid": 30, "node": "node-2", "what": "agent"}]
    d.store.error = "no etcd member is running (stopped or gone)"
    d.check_processes()
    got = [(f.node, f.problem) for f in d.findings]
    assert got == [("etcd", "etcd on node-1 is stopped (SIGSTOP)"),
                   ("node-1", "labnet-agent's supervisor is not running"),
                   ("node-2", "labnet-agent is stopped (SIGSTOP)")], got
    assert "CNI server" in d.findings[2].explanation
    assert "code 11" in d.findings[0].explanation and "31" in d.findings[2].evidence


def test_a_dead_lab_supervisor_and_a_dead_supervised_node_process(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    states = {50: "S"}
    monkeypatch.setattr(rules, "proc_state", lambda pid: states.get(pid))
    monkeypatch.setattr(rules, "children", lambda pid: [])
    held = tmp_path / "node-1.json"
    held.write_text(json.dumps({"pid": 61, "start": 1, "restarts": 2, "held": True}))
    d = make()
    d.view.journal.processes = [  # type: ignore[attr-defined]
        {"pid": 5, "what": "supervisor"},
        {"pid": 50, "node": "node-2", "what": "agent", "pidfile": str(tmp_path / "node-2.json")},  # no file: 50
        {"pid": 60, "node": "node-1", "what": "agent", "pidfile": str(held)}]
    d.check_processes()
    got = [(f.node, f.problem) for f in d.findings]
    assert got == [("lab", "the lab's supervisor is not running"),
                   ("node-1", "labnet-agent (the node's process) is not running")], got
    assert "pid 61" in d.findings[1].evidence and "held" in d.findings[1].explanation
    assert d.findings[0].command == "labnet up /labs/minimal.yaml"
