"""Every assertion, passing on the seed lab and failing on purpose, read through pytester.

The lab is built once here and the user test file attaches to it (--labnet-attach), as in the
edit-and-rerun loop.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from _labtools import TOPOLOGIES, labnet, snapshot

NAME = "t-asserts"


@pytest.fixture(scope="module")
def seed_lab():
    before = snapshot(NAME)
    labnet("up", str(TOPOLOGIES / "seed.yaml"), "--name", NAME, "-q")
    try:
        yield NAME
    finally:
        labnet("down", "--name", NAME, check=False)
    assert not snapshot(NAME).leftovers(before)


USER_TESTS = '''
import pytest
from labnet.checks import *

def peers(lab, node):
    return [{"peer": p["peer_address"], "state": p["bgp_state"]} for p in lab.view.agent_status(node)["peers"]]

def test_pass_all(lab, node, pod):
    b3 = str(lab.view.blocks("ubuntu-3")[0]); b4 = str(lab.view.blocks("ubuntu-4")[0])
    veth = lab.view.pod("net-test")["host_veth"]
    assert_route(node("ubuntu-3"), {"dst": "default", "gateway": "10.20.30.1", "dev": "ens32"})
    assert_blackhole_route(node("ubuntu-3"), b3)
    assert_tunnel_route(node("ubuntu-3"), b4, "192.168.50.74")
    assert_no_route(node("ubuntu-3"), "198.51.100.0/24")
    assert_sysctl(node("ubuntu-3"), f"net.ipv4.conf.{veth}.proxy_arp", 1)
    assert_ping(pod("net-test"), lab.address("net-test-2"))
    assert_connectivity({"net-test": {"net-test-2": True}, "net-test-2": {"net-test": True}}, lab.view.endpoint)
    assert_proxy_arp(node("ubuntu-3"), pod("net-test"), veth)
    assert_bgp_established(lambda: peers(lab, "ubuntu-3"), "192.168.50.74", node="ubuntu-3")

def test_fail_route(lab, node):
    assert_route(node("ubuntu-3"), {"dst": "default", "gateway": "10.20.30.254"}, timeout=0.5)

def test_fail_blackhole(lab, node):
    assert_blackhole_route(node("ubuntu-3"), "10.100.255.192/26", timeout=0.5)

def test_fail_tunnel(lab, node):
    assert_tunnel_route(node("ubuntu-3"), str(lab.view.blocks("ubuntu-4")[0]), "192.168.50.75", timeout=0.5)

def test_fail_no_route(lab, node):
    assert_no_route(node("ubuntu-3"), "10.20.30.0/24", timeout=0.5)

def test_fail_sysctl(lab, node):
    assert_sysctl(node("ubuntu-3"), "net.ipv4.ip_forward", 0, timeout=0.5)

def test_fail_ping(lab, pod):
    assert_ping(pod("net-test"), lab.address("net-test-2"), expect=False, timeout=0.5)

def test_fail_matrix(lab):
    assert_connectivity({"net-test": {"net-test-2": True, "10.100.255.1": True}}, lab.view.endpoint, timeout=0.5)

def test_fail_bgp(lab):
    assert_bgp_established(lambda: peers(lab, "ubuntu-3"), "10.20.30.99", node="ubuntu-3", timeout=0.5)

def test_fail_proxy_arp(lab, node, pod):
    veth = lab.view.pod("net-test")["host_veth"]
    from labnet.nsexec import run
    run(node("ubuntu-3"), ["sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=0"])
    try:
        assert_proxy_arp(node("ubuntu-3"), pod("net-test"), veth, timeout=0.5)
    finally:
        run(node("ubuntu-3"), ["sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=1"])
'''


def test_every_assertion_passes_and_fails_readably(pytester: pytest.Pytester, seed_lab: str) -> None:
    pytester.makepyfile(test_user=textwrap.dedent(USER_TESTS))
    res = pytester.runpytest_subprocess("test_user.py", "--labnet-attach", seed_lab, "-p", "no:cacheprovider",
                                        "--strict-markers")
    res.assert_outcomes(passed=1, failed=9)
    out = res.stdout.str()
    expected = {
        "test_fail_route": ["ubuntu-3", "10.20.30.254", "10.20.30.1"],
        "test_fail_blackhole": ["ubuntu-3", "blackhole 10.100.255.192/26"],
        "test_fail_tunnel": ["ubuntu-3", "192.168.50.75", "192.168.50.74"],
        "test_fail_no_route": ["ubuntu-3", "10.20.30.0/24"],
        "test_fail_sysctl": ["ubuntu-3", "net.ipv4.ip_forward", "1"],
        "test_fail_ping": ["net-test", "no reply"],
        "test_fail_matrix": ["✗ want reach, got no-reach", "10.100.255.1", "✓ reach"],
        "test_fail_bgp": ["10.20.30.99", "no such peer", "192.168.50.74"],
        "test_fail_proxy_arp": ["proxy_arp=0", "169.254.1.1"],
    }
    for test, needles in expected.items():
        section = out.split(f"_ {test} _", 1)
        assert len(section) == 2, f"no failure section for {test}"
        text = section[1].split("\n_____", 1)[0]
        for needle in needles:
            assert needle in text, f"{test}: {needle!r} not in its failure:\n{text[-3000:]}"
        # how long it polled, and the last state it saw
        assert re.search(r"check failed on .+ \(waited \d+\.\ds, \d+ attempts?\)", text), \
            f"{test}: no waiting time:\n{text[-2000:]}"
        assert "expected: " in text and "actual:   " in text, f"{test}: no expected/actual:\n{text[-2000:]}"
        if test in ("test_fail_route", "test_fail_blackhole", "test_fail_tunnel", "test_fail_no_route"):
            assert "last state seen (ip -4 route show table main on " in text and "dev tunl0 proto bird onlink" in text, \
                f"{test}: the route table it saw is not shown:\n{text[-3000:]}"
    assert "labnet diagnostics (t-asserts)" in out, "failed tests carry no diagnostics bundle"
    _check_diagnostics_bundle(out.split("_ test_fail_route _", 1)[1].split("\n_____", 1)[0], seed_lab)


NODES = ["ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"]


def _check_diagnostics_bundle(report: str, lab: str) -> None:
    """Every section of the bundle, for every node of the cluster, with what the seed lab has in it."""
    from labnet.diagnose.bundle import NODE_COMMANDS
    from labnet.lab.view import LabView

    head = f"labnet diagnostics ({lab})"
    assert head in report, f"test_fail_route: no {head!r} section in its report:\n{report[-2000:]}"
    bundle = report.split(head, 1)[1]
    view = LabView(lab)
    chunks = dict(c.split(" =====\n", 1) for c in bundle.split("===== ")[1:] if " =====\n" in c)
    assert sorted(chunks) == sorted([*NODES, "etcd keys"]), f"bundle parts: {sorted(chunks)}"
    for node in NODES:
        sections = dict(_sections(chunks[node]))
        want = [t for t, _cmd in NODE_COMMANDS] + ["BGP status"]
        assert list(sections) == want, f"{node}: bundle sections {list(sections)}, expected {want}"
        for title, body in sections.items():
            assert body.strip() and "could not run" not in body and "unavailable" not in body, \
                f"{node}: section {title!r} is empty or failed:\n{body}"
        (block,) = view.blocks(node) or [None]
        me = view.address(node)
        assert block is not None, f"{node} owns no block (its tunl0 address comes from one)"
        expect = {
            "links": ["tunl0:", "ens32@"],
            "addresses": [f"{me}/", f"{block.network_address}/32"],
            "routes (all tables)": [f"blackhole {block} proto bird", f"local {me} dev ens32 table local"],
            "firewall (nft)": ["table ip labnet-nat", "masquerade"],  # the seed pool has nat_outgoing
            "agent log (tail)": ["labnet.agent["],
            "BGP status": ["IPv4 BGP status", *[view.address(n) for n in NODES if n != node]],
        }
        for title, needles in expect.items():
            for needle in needles:
                assert needle in sections[title], f"{node}: {title!r} lacks {needle!r}:\n{sections[title]}"
        assert sections["BGP status"].count("Established") == len(NODES) - 1, \
            f"{node}: BGP status should show {len(NODES) - 1} Established peers:\n{sections['BGP status']}"
    u3 = dict(_sections(chunks["ubuntu-3"]))
    veth = view.pod("net-test")["host_veth"]
    assert f"{veth} proxy_arp=1 forwarding=1 route_localnet=1" in u3["cali* sysctls"], \
        f"ubuntu-3: cali* sysctls:\n{u3['cali* sysctls']}"
    assert "10.20.30.1 dev ens32 lladdr" in u3["neighbours"], f"ubuntu-3: neighbours:\n{u3['neighbours']}"
    keys = chunks["etcd keys"]
    assert keys.startswith("/labnet/\n") and re.search(r"\(\d+ keys\)", keys), f"etcd keys:\n{keys[:2000]}"
    for node in NODES:
        for block in view.blocks(node):
            cidr = str(block).replace("/", "-")
            for needle in (f"{node}/ipv4/block/{cidr}", f'"affinity": "host:{node}"'):
                assert needle in keys, f"etcd keys lack {needle!r} ({node}'s block {block}):\n{keys[:3000]}"


def _sections(chunk: str) -> list[tuple[str, str]]:
    out = []
    for part in ("\n" + chunk).split("\n--- ")[1:]:
        title, _, body = part.partition("\n")
        out.append((title.split(":", 1)[0], body))
    return out


TESTINFRA_TESTS = '''
import json
from labnet.lab.view import LabView


def test_node_and_pod_view(host):
    view = LabView(host.backend.lab)
    if host.backend.pod is None:
        assert host.check_output("hostname") == "ubuntu-3"
        (block,) = view.blocks("ubuntu-3")
        assert host.interface("tunl0").addresses == [str(block.network_address)]
        veth = view.pod("net-test")["host_veth"]
        assert host.sysctl(f"net.ipv4.conf.{veth}.proxy_arp") == 1
        conflist = host.file("/etc/cni/net.d/10-labnet.conflist")
        assert conflist.exists and json.loads(conflist.content_string)["name"] == "k8s-pod-network"
        assert host.socket("tcp://0.0.0.0:179").is_listening
    else:
        assert host.interface("eth0").addresses[0] == view.pod("net-test")["ip"]  # then its fe80:: address
        assert host.check_output("ip route show default").strip() == "default via 169.254.1.1 dev eth0"
        assert not host.socket("tcp://0.0.0.0:179").is_listening
'''


def test_testinfra_hosts_option_with_testinfras_own_host_fixture(pytester: pytest.Pytester, seed_lab: str) -> None:
    """`pytest --hosts=labnet://<lab>/<node>[/<pod>]`: testinfra's `host` fixture sees the node's and pod's view."""
    pytester.makepyfile(test_infra=TESTINFRA_TESTS)
    hosts = f"labnet://{seed_lab}/ubuntu-3,labnet://{seed_lab}/ubuntu-3/net-test"
    res = pytester.runpytest_subprocess("test_infra.py", f"--hosts={hosts}", "-v", "-p", "no:cacheprovider",
                                        "--strict-markers")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines([f"*test_node_and_pod_view?labnet://{seed_lab}/ubuntu-3? PASSED*",
                              f"*test_node_and_pod_view?labnet://{seed_lab}/ubuntu-3/net-test? PASSED*"])


GATED_TESTS = '''
import os, signal, pytest

from labnet.scenario.gates import node_process

def _kill(lab, node):
    entry = next(e for e in lab.view.journal.of_kind("process") if e.get("node") == node and e["what"] == "agent")
    os.kill(node_process(entry), signal.SIGKILL)
    lab.connect("ubuntu-1", "ubuntu-2", "loss <= 100%", count=50)   # the test goes on a moment

def test_kills_an_agent(lab):
    _kill(lab, "ubuntu-5")

@pytest.mark.labnet_tolerate("restart", "route-flaps", "errors")
def test_kills_an_agent_and_says_so(lab):
    _kill(lab, "ubuntu-5")

def test_quiet(lab):
    lab.connect("net-test", "net-test-2")
'''


def test_labnet_gates_fail_a_test_that_restarted_an_agent_undeclared(pytester: pytest.Pytester,
                                                                     seed_lab: str) -> None:
    pytester.makepyfile(test_gated=textwrap.dedent(GATED_TESTS))
    res = pytester.runpytest_subprocess("test_gated.py", "--labnet-attach", seed_lab, "--labnet-gates",
                                        "-p", "no:cacheprovider", "--strict-markers")
    res.assert_outcomes(passed=2, failed=1)
    out = res.stdout.str()
    assert "test_kills_an_agent FAILED" in out or "FAILED test_gated.py::test_kills_an_agent" in out, out[-3000:]
    assert "restart: node ubuntu-5: its process (agent, CNI server) was pid" in out, out[-3000:]
