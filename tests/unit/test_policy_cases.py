"""The policy truth tables' oracle (labnet's policy model, pure): each generated case gives the
table a reader of its policy expects; deny rules and egress follow Calico's order and types."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from labnet.policy.cases import CASES, POD_SET, PROBES, case_named, cell, judge, truth_table
from labnet.policy.explain import evaluate_egress, flow
from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo, render

PODS = [PodInfo(cp.name, IPv4Address(f"10.100.0.{i + 1}"), f"cali{i:011d}", cp.labels, cp.namespace)
        for i, cp in enumerate(POD_SET)]


def table(name: str) -> dict[tuple[str, str], str]:
    return {k: cell(v) for k, v in truth_table(case_named(name).settings, PODS).items()}


def test_the_pod_set_and_the_probes() -> None:
    assert [p.name for p in PODS] == ["web-a", "db-a", "client-a", "web-b", "db-b", "client-b", "web-c", "db-c",
                                      "client-c"]
    assert PODS[4].selector_labels() == {"app": "db", "projectcalico.org/namespace": "b"}
    assert len(PROBES) == 5 and len(truth_table(CASES[0].settings, PODS)) == 72


def test_default_deny_and_allow_by_label() -> None:
    assert set(table("default-deny").values()) == {"00000"}
    t = table("allow-by-label")
    assert t[("client-c", "web-a")] == "11111" and t[("client-a", "web-a")] == "11111"
    assert t[("db-a", "web-a")] == "00000" and t[("client-a", "db-a")] == "00000"


def test_allow_by_namespace() -> None:
    t = table("allow-by-namespace")
    assert t[("web-b", "db-a")] == t[("client-b", "web-a")] == "11111"
    assert t[("web-c", "db-a")] == t[("web-a", "db-a")] == t[("web-b", "db-b")] == "00000"


def test_port_range() -> None:
    t = table("port-range")
    assert t[("web-a", "db-b")] == "00100"  # tcp/8080 is in 8000-8090; tcp/80 and udp are not
    assert t[("db-a", "web-a")] == "00000"


def test_egress_isolates_only_the_pods_it_selects() -> None:
    t = table("egress")
    assert t[("client-a", "web-b")] == "01000"  # tcp/80 to web only
    assert t[("client-a", "db-a")] == t[("client-a", "client-b")] == "00000"
    assert t[("web-a", "client-a")] == "11111", "an egress-only policy leaves the client's ingress open"
    assert t[("web-a", "db-a")] == "11111"


def test_combined_deny_before_allow_in_order() -> None:
    t = table("combined")
    assert t[("client-c", "web-a")] == "00000", "deny from namespace c comes before allow tcp from all"
    assert t[("db-a", "web-b")] == t[("client-a", "web-c")] == "01100"
    assert t[("client-a", "db-a")] == "00010" and t[("client-b", "db-a")] == "00000"
    assert t[("client-a", "db-b")] == "00000", "the clients' egress denies db of b before it allows the rest"
    assert t[("web-a", "client-b")] == "11111"


def test_egress_verdicts_name_their_rule() -> None:
    s = case_named("combined").settings
    v = evaluate_egress(s, PODS[2], PODS[4].ip, "udp", 80, PODS)
    assert (v.allowed, v.policy, v.rule, v.comment) == (False, "clients-not-db-b", 0, "policy=clients-not-db-b egress=0")
    v = flow(s, PODS[8], PODS[0], "tcp", 80, PODS)
    assert (v.allowed, v.comment) == (False, "policy=web-rules rule=0") and "denied by policy web-rules" in v.reason


def test_judge_marks_the_wrong_cells() -> None:
    expected = truth_table(case_named("allow-by-label").settings, PODS)
    actual = dict(expected)
    actual[("db-a", "web-a")] = (True, False, False, False, False)
    wrong, rows = judge(expected, actual)
    assert wrong == [("db-a", "web-a")]
    assert rows[0][:3] == ("FROM \\ TO", "web-a", "db-a")
    by = {r[0]: dict(zip(rows[0][1:], r[1:], strict=True)) for r in rows[1:]}
    assert by["db-a"]["web-a"] == "✗ want 00000 got 10000" and by["client-a"]["web-a"] == "✓ 11111"
    assert by["web-a"]["web-a"] == "·"


def test_render_deny_egress_and_namespace_sets() -> None:
    s = case_named("combined").settings
    text = render(s, PODS[:3], PODS)
    assert "\tset src_web-rules_0 {" in text and "10.100.0.7, 10.100.0.8, 10.100.0.9" in text  # namespace c
    assert 'ip saddr @src_web-rules_0 counter drop comment "policy=web-rules rule=0"' in text
    assert 'iifname "cali00000000002" counter jump from_cali00000000002' in text
    assert 'ip daddr @dst_clients-not-db-b_e0 counter drop comment "policy=clients-not-db-b egress=0"' in text
    assert 'ip daddr 0.0.0.0/0 counter return comment "policy=clients-not-db-b egress=1"' in text
    assert text.index("iifname") < text.index("oifname"), "egress is judged before ingress"


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_every_case_is_valid_and_renders(case: str) -> None:
    s = case_named(case).settings
    assert PolicySettings.model_validate(s.model_dump(by_alias=True)) == s
    assert render(s, PODS, PODS).startswith("table inet labnet-policy {")


def test_an_unknown_case_names_the_cases() -> None:
    with pytest.raises(KeyError, match="no policy case 'nope' \\(have: default-deny, allow-by-label"):
        case_named("nope")
