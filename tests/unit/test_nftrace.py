"""Reading `nft monitor trace`: the rules of labnet's policy table a packet met, and the one
that decided."""

from __future__ import annotations

from labnet.diagnose.nftrace import Step, decided, flow_match, parse

LINES = [
    'trace id 5d3e1c9b inet labnet-trace pre packet: iif "tunl0" ip saddr 10.100.95.66 ip daddr 10.100.73.1 ',
    "trace id 5d3e1c9b inet labnet-trace pre rule ip saddr 10.100.95.66 ip daddr 10.100.73.1 meta l4proto icmp "
    "meta nftrace set 1 (verdict continue)",
    'trace id 5d3e1c9b inet labnet-policy forward rule oifname "cali68caf03a5f4" counter packets 3 bytes 252 '
    'jump to_cali68caf03a5f4 comment "pod=web" (verdict jump to_cali68caf03a5f4)',
    'trace id 5d3e1c9b inet labnet-policy to_cali68caf03a5f4 rule counter packets 3 bytes 252 drop '
    'comment "policy=default-deny" (verdict drop)',
]


def test_the_rules_met_and_the_one_that_decided() -> None:
    steps = parse(LINES)
    assert steps == [Step("forward", "pod=web", "jump to_cali68caf03a5f4"),
                     Step("to_cali68caf03a5f4", "policy=default-deny", "drop")]
    assert decided(steps) == steps[-1]
    assert decided(steps[:1]) is None and parse(["garbage", ""]) == []


def test_the_flow_it_marks() -> None:
    assert flow_match("10.0.0.1", "10.0.0.2", "icmp", None) == "ip saddr 10.0.0.1 ip daddr 10.0.0.2 meta l4proto icmp"
    assert flow_match("10.0.0.1", "10.0.0.2", "tcp", 80) == "ip saddr 10.0.0.1 ip daddr 10.0.0.2 tcp dport 80"
    assert flow_match("10.0.0.1", "10.0.0.2", "udp", None).endswith("meta l4proto udp")
