"""Issue 6: every assertion, passing on the seed lab and failing on purpose, read through pytester.

The lab is built once here and the user test file attaches to it (--labnet-attach), as in the
edit-and-rerun loop.
"""

from __future__ import annotations

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
    res = pytester.runpytest_subprocess("test_user.py", "--labnet-attach", seed_lab, "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=9)
    out = res.stdout.str()
    expected = {
        "test_fail_route": ["ubuntu-3", "10.20.30.254", "10.20.30.1"],
        "test_fail_blackhole": ["ubuntu-3", "blackhole 10.100.255.192/26"],
        "test_fail_tunnel": ["ubuntu-3", "192.168.50.75", "192.168.50.74"],
        "test_fail_no_route": ["ubuntu-3", "10.20.30.0/24"],
        "test_fail_sysctl": ["ubuntu-3", "net.ipv4.ip_forward", "1"],
        "test_fail_ping": ["net-test", "no reply"],
        "test_fail_matrix": ["✗ expected reach, got no", "10.100.255.1", "✓ reach"],
        "test_fail_bgp": ["10.20.30.99", "no such peer", "192.168.50.74"],
        "test_fail_proxy_arp": ["proxy_arp=0", "169.254.1.1"],
    }
    for test, needles in expected.items():
        section = out.split(f"_ {test} _", 1)
        assert len(section) == 2, f"no failure section for {test}"
        text = section[1].split("\n_____", 1)[0]
        for needle in needles:
            assert needle in text, f"{test}: {needle!r} not in its failure:\n{text[-3000:]}"
        assert "timed out" in text or "waited" in text or "after" in text, f"{test}: no waiting time:\n{text[-2000:]}"
    assert "labnet diagnostics (t-asserts)" in out, "failed tests carry no diagnostics bundle"
