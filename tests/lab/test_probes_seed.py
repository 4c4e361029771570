"""Probes on the seed lab: the source address the outside host sees (the node's, as Calico's
natOutgoing makes it), a 30% loss fault measured as about 30%, the path MTU over IPIP, TCP and
UDP responders in pods and machines, and a reachability matrix."""

from __future__ import annotations

import re
from typing import Any

import pytest

from labnet.checks import CheckFailed
from labnet.checks.probe import measure_loss
from labnet.scenario.run import run_steps
from labnet.topology.model import Step

pytestmark = pytest.mark.topology("../../topologies/seed.yaml", name="t-probes")


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_the_outside_host_sees_the_node_address(lab: Any, proto: str) -> None:
    r = lab.connect("net-test", "ext", "snat ubuntu-3", proto=proto, port=9000)
    assert r.ok and "snat 10.20.30.73" in r.detail, r.detail
    with pytest.raises(CheckFailed) as err:
        lab.connect("net-test", "ext", "snat 10.20.30.99", proto=proto, port=9000, timeout=1)
    msg = str(err.value)
    assert "✗ want snat 10.20.30.99, got snat 10.20.30.73" in msg, msg


def test_tcp_and_udp_between_pods_and_machines(lab: Any) -> None:
    for proto in ("tcp", "udp"):
        r = lab.connect("net-test", "net-test-2", proto=proto, port=7000)
        ip = lab.address("net-test")
        assert f"source seen {ip}" in r.detail, r.detail  # pod to pod: no NAT inside the pool
        assert lab.connect("ubuntu-1", "net-test-2", proto=proto, port=7001).ok
    # nothing answers on a port of an address: no responder there
    r = lab.connect("net-test", "10.20.30.1", "no-reach", proto="tcp", port=7002)
    assert "connection refused" in r.detail, r.detail


def test_a_loss_fault_of_30_percent_is_measured_as_about_30(lab: Any) -> None:
    steps = [Step.model_validate(s) for s in (
        {"packet_loss": {"machine": "ext", "interface": "eth0", "percent": 30, "direction": "in"}},
        {"connect": {"from": "net-test", "to": "ext", "expect": "loss <= 45%", "duration": 2.0, "interval": 0.005}},
    )]
    results = run_steps(lab.view, steps, timeout=60)
    m = re.search(r"loss (\d+(?:\.\d+)?)% \((\d+)/(\d+) answered\)", results[-1].detail)
    assert m and m.group(3) == "400", results[-1].detail  # 2 s at 5 ms: 400 probes
    # binomial(400, 0.3): sd 2.3 points, so 18-42% is over 5 sd either side
    assert 18.0 <= float(m.group(1)) <= 42.0, results[-1].detail
    # undone: no loss now
    after = measure_loss(lab.pod("net-test"), "203.0.113.10", "icmp", count=100, interval=0.005)
    assert after.received == after.sent, f"after the fault's undo: {after.received}/{after.sent} answered"


def test_a_loss_expectation_that_does_not_hold_says_what_was_lost(lab: Any) -> None:
    steps = [Step.model_validate(s) for s in (
        {"packet_loss": {"machine": "ext", "interface": "eth0", "percent": 50, "direction": "in"}},
        {"connect": {"from": "net-test", "to": "ext", "expect": "loss <= 5%", "count": 100, "interval": 0.005}},
    )]
    with pytest.raises(CheckFailed) as err:
        run_steps(lab.view, steps, timeout=2)
    msg = str(err.value)
    assert re.search(r"✗ want loss <= 5%, got loss \d+\.\d%", msg), msg
    assert "answered" in msg, msg


def test_the_path_mtu_over_ipip_is_1480(lab: Any) -> None:
    r = lab.connect("net-test", "net-test-2", mtu=1480)
    assert r.ok and "largest passing 1480" in r.detail, r.detail
    with pytest.raises(CheckFailed) as err:
        lab.connect("net-test", "net-test-2", mtu=1500, timeout=1)
    assert "largest passing 1480, refused with mtu 1480" in str(err.value), str(err.value)


def test_a_matrix_of_pods_and_machines(lab: Any) -> None:
    r = lab.reachability({"net-test": {"net-test-2": "reach", "ext": "snat ubuntu-3", "ubuntu-1": "reach"},
                          "net-test-2": {"net-test": "reach", "ext": "snat ubuntu-4"}}, proto="tcp", port=7100)
    assert r.ok and r.detail == "5/5 cells as expected", r.detail
