"""The assertion machinery without namespaces: polling, messages, matrix, BGP, sysctl keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from labnet.checks.assertions import (
    Endpoint,
    Observation,
    as_result,
    assert_bgp_established,
    describe_match,
    run_check,
    sysctl_path,
)
from labnet.checks.reach import Seen, format_table, matrix_cells
from labnet.checks.result import CheckFailed
from labnet.checks.routes import normalise_match
from labnet.errors import BadInput, LabnetError
from labnet.nsexec import NodeNS
from labnet.topology.steps import Expectation, parse_expectation


def test_check_failed_is_both_assertion_and_labnet_error() -> None:
    with pytest.raises(CheckFailed) as info:
        run_check("thing", "ubuntu-3", lambda: Observation(False, "up", "down", "a\nb", "the state"), timeout=0)
    exc = info.value
    assert isinstance(exc, AssertionError)
    assert isinstance(exc, LabnetError)
    assert exc.exit_code == 1
    msg = str(exc)
    assert msg.startswith("check failed on ubuntu-3: thing (waited 0.0s, 1 attempt)")
    assert "  expected: up\n  actual:   down\n  last state seen (the state):\n    a\n    b" in msg
    assert not exc.result.ok
    assert exc.result.detail == "expected up; actual down"


def test_pass_after_retry_reports_attempts() -> None:
    seen = iter([False, False, True])

    def probe() -> Observation:
        ok = next(seen)
        return Observation(ok, "x", "yes" if ok else "no")

    res = run_check("thing", "n1", probe, timeout=5)
    assert res.ok and res.attempts == 3 and res.retried
    assert res.detail == "yes"
    assert "after" in res.summary() and "(3 attempts)" in res.summary()


def test_probe_that_raises_is_reported() -> None:
    def probe() -> Observation:
        raise LabnetError("netns gone")

    with pytest.raises(CheckFailed, match="could not observe: LabnetError: netns gone"):
        run_check("thing", "n1", probe, timeout=0)


def test_as_result_turns_failure_into_result() -> None:
    res = as_result(lambda: run_check("t", "n", lambda: Observation(False, "a", "b"), timeout=0))
    assert not res.ok and res.message.startswith("check failed on n")


def test_describe_match() -> None:
    norm = normalise_match({"dst": "10.100.5.192/26", "via": "192.168.50.74", "dev": "tunl0", "proto": 12,
                            "onlink": True})
    assert describe_match(norm) == "10.100.5.192/26 via 192.168.50.74 dev tunl0 proto bird onlink"
    assert describe_match(normalise_match({"type": "blackhole", "dst": "10.100.163.128/26"})) == \
        "blackhole 10.100.163.128/26"
    assert describe_match(normalise_match({"dst": "default", "gateway": None})) == "default (no via)"


@pytest.mark.parametrize(("key", "path"), [
    ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net.ipv4.conf.cali182f84bfeba.proxy_arp", "/proc/sys/net/ipv4/conf/cali182f84bfeba/proxy_arp"),
    ("net.ipv4.conf.vxlan.calico.forwarding", "/proc/sys/net/ipv4/conf/vxlan.calico/forwarding"),
    ("net.ipv4.neigh.cali1.proxy_delay", "/proc/sys/net/ipv4/neigh/cali1/proxy_delay"),
    ("net/ipv4/conf/vxlan.calico/rp_filter", "/proc/sys/net/ipv4/conf/vxlan.calico/rp_filter"),
    ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward"),
])
def test_sysctl_paths(key: str, path: str) -> None:
    assert sysctl_path(key) == path


@pytest.mark.parametrize("key", ["", "net.ipv4.conf.", "net/../../etc/passwd", "a b"])
def test_bad_sysctl_keys(key: str) -> None:
    with pytest.raises(BadInput):
        sysctl_path(key)


def test_matrix_marks_wrong_cells() -> None:
    ends = {n: Endpoint(n, NodeNS(n, f"/run/netns/{n}"), ip) for n, ip in
            (("pod-a", "10.100.0.1"), ("pod-b", "10.100.0.2"), ("ext", "203.0.113.10"))}
    cells = matrix_cells({"pod-a": {"pod-b": "reach", "ext": "snat 10.20.30.71"}, "pod-b": {"pod-a": "no-reach"}},
                         ends.__getitem__)
    seen = {("pod-a", "pod-b"): Seen(True, "reach", ""), ("pod-a", "ext"): Seen(False, "snat 10.100.0.1", ""),
            ("pod-b", "pod-a"): None}
    assert format_table(cells, seen) == "\n".join([
        "FROM \\ TO  pod-b    ext                                           pod-a",
        "pod-a      ✓ reach  ✗ want snat 10.20.30.71, got snat 10.100.0.1  ·",
        "pod-b      ·        ·                                             ? no-reach (not probed)",
    ])


@pytest.mark.parametrize(("text", "want"), [
    ("reach", Expectation("reach")), ("no-reach", Expectation("no-reach")),
    ("snat node-1", Expectation("snat", source="node-1")), ("loss <= 30%", Expectation("loss", max_loss=30.0)),
    ("loss<=2.5%", Expectation("loss", max_loss=2.5)),
])
def test_expectations_parse_and_print_back(text: str, want: Expectation) -> None:
    assert parse_expectation(text) == want
    assert parse_expectation(str(want)) == want


@pytest.mark.parametrize("text", ["", "reachable", "snat", "snat a b", "loss < 3%", "loss <= 101%", "loss 3"])
def test_bad_expectations_name_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="none of: reach | no-reach"):
        parse_expectation(text)


@dataclass
class Peer:
    address: str
    state: str
    info: str = ""


def test_bgp_established_with_objects_and_dicts() -> None:
    res = assert_bgp_established(lambda: [Peer("10.20.30.72", "Established")], "10.20.30.72", node="ubuntu-3")
    assert res.ok and res.target == "ubuntu-3"
    res = assert_bgp_established(lambda: [{"peer": "10.20.30.72", "state": "Established", "name": "ubuntu-2"}],
                                 "ubuntu-2", node="ubuntu-3")
    assert res.ok


def test_bgp_established_after_retry() -> None:
    states: Iterator[str] = iter(["Connect", "OpenSent", "Established"])
    res = assert_bgp_established(lambda: [Peer("10.20.30.72", next(states))], "10.20.30.72", node="u3", timeout=5)
    assert res.ok and res.attempts == 3


def test_bgp_not_established_names_node_peer_and_state() -> None:
    peers = [Peer("10.20.30.72", "Established"), Peer("192.168.50.74", "Active", "Connect: connection refused")]
    with pytest.raises(CheckFailed) as info:
        assert_bgp_established(lambda: peers, "192.168.50.74", node="ubuntu-3", timeout=0)
    msg = str(info.value)
    assert "check failed on ubuntu-3: BGP session with 192.168.50.74 Established" in msg
    assert "expected: BGP session with 192.168.50.74 Established" in msg
    assert "actual:   192.168.50.74: Active Connect: connection refused" in msg
    assert "BGP peers of ubuntu-3" in msg and "10.20.30.72: Established" in msg
    with pytest.raises(CheckFailed, match="no such peer among 2"):
        assert_bgp_established(lambda: peers, "10.9.9.9", node="ubuntu-3", timeout=0)
    with pytest.raises(CheckFailed, match="all BGP sessions"):
        assert_bgp_established(lambda: peers, None, node="ubuntu-3", timeout=0)
    with pytest.raises(CheckFailed, match=r"no such peer among 0"):
        assert_bgp_established(list, None, node="ubuntu-3", timeout=0)
