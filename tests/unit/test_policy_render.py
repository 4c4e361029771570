"""The policy model's validation, the nft script it renders (golden), and the verdict logic."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from pydantic import ValidationError

from labnet.errors import BadInput
from labnet.nsexec import NodeNS
from labnet.policy import PodInfo, PolicySettings, Rule, evaluate, explain_drop, render
from labnet.policy import explain as explain_mod

WEB = PodInfo("web", IPv4Address("10.100.7.2"), "cali0000000a001", {"app": "web", "tier": "front"})
CLIENT = PodInfo("client", IPv4Address("10.100.7.3"), "cali0000000a002", {"app": "client"})
OTHER = PodInfo("other", IPv4Address("10.100.7.4"), "cali0000000a003", {"app": "other"})
REMOTE = PodInfo("remote", IPv4Address("10.100.9.66"), "cali0000000b001", {"app": "client", "site": "b"})
ALL = [WEB, CLIENT, OTHER, REMOTE]
NODE = [WEB, CLIENT, OTHER]

SETTINGS = PolicySettings.model_validate({
    "default": "deny",
    "policies": [
        {"name": "web-from-client", "selector": "app == 'web'",
         "ingress": [{"protocol": "icmp", "from": {"selector": "app == 'client'"}},
                     {"protocol": "tcp", "ports": [80, "8000:8080"], "from": {"cidr": "10.20.30.0/24"}}]},
        {"name": "everyone-dns", "selector": "all()",
         "ingress": [{"protocol": "udp", "ports": [53], "from": {"selector": "has(site)", "cidr": "10.100.9.0/24"}},
                     {"action": "allow"}]},
    ],
})

GOLDEN = """\
table inet labnet-policy {
	comment "labnet policy, default deny"
	set src_web-from-client_0 {
		type ipv4_addr
		comment "policy=web-from-client rule=0"
		elements = { 10.100.7.3, 10.100.9.66 }
	}
	set src_everyone-dns_0 {
		type ipv4_addr
		comment "policy=everyone-dns rule=0"
		elements = { 10.100.9.66 }
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname "cali0000000a001" counter jump to_cali0000000a001 comment "pod=web"
		oifname "cali0000000a002" counter jump to_cali0000000a002 comment "pod=client"
		oifname "cali0000000a003" counter jump to_cali0000000a003 comment "pod=other"
	}
	chain to_cali0000000a001 {
		ct state established,related counter accept comment "labnet=established"
		ip saddr @src_web-from-client_0 meta l4proto icmp counter accept comment "policy=web-from-client rule=0"
		ip saddr 10.20.30.0/24 tcp dport { 80, 8000-8080 } counter accept comment "policy=web-from-client rule=1"
		ip saddr @src_everyone-dns_0 ip saddr 10.100.9.0/24 udp dport { 53 } counter accept comment "policy=everyone-dns rule=0"
		counter accept comment "policy=everyone-dns rule=1"
		counter drop comment "policy=default-deny"
	}
	chain to_cali0000000a002 {
		ct state established,related counter accept comment "labnet=established"
		ip saddr @src_everyone-dns_0 ip saddr 10.100.9.0/24 udp dport { 53 } counter accept comment "policy=everyone-dns rule=0"
		counter accept comment "policy=everyone-dns rule=1"
		counter drop comment "policy=default-deny"
	}
	chain to_cali0000000a003 {
		ct state established,related counter accept comment "labnet=established"
		ip saddr @src_everyone-dns_0 ip saddr 10.100.9.0/24 udp dport { 53 } counter accept comment "policy=everyone-dns rule=0"
		counter accept comment "policy=everyone-dns rule=1"
		counter drop comment "policy=default-deny"
	}
}
"""


def test_render_golden() -> None:
    assert render(SETTINGS, NODE, ALL) == GOLDEN
    assert render(SETTINGS, list(reversed(NODE)), list(reversed(ALL))) == GOLDEN  # order-independent


def test_render_defaults() -> None:
    allow = render(PolicySettings(), [WEB], ALL)
    assert 'counter accept comment "policy=default-allow"' in allow and "drop" not in allow
    deny = render(PolicySettings(default="deny"), [WEB], ALL)
    assert 'counter drop comment "policy=default-deny"' in deny and "set " not in deny
    isolated = PolicySettings.model_validate({"policies": [{"name": "p", "selector": "app == 'web'", "ingress": []}]})
    text = render(isolated, [WEB, CLIENT], ALL)
    web_chain = text.split("chain to_cali0000000a001")[1].split("}")[0]
    client_chain = text.split("chain to_cali0000000a002")[1].split("}")[0]
    assert 'counter drop comment "policy=end-of-policies"' in web_chain
    assert 'counter accept comment "policy=default-allow"' in client_chain


def test_empty_selection_renders_an_empty_set() -> None:
    s = PolicySettings.model_validate({"default": "deny", "policies": [
        {"name": "p", "ingress": [{"from": {"selector": "app == 'nobody'"}}]}]})
    text = render(s, [WEB], ALL)
    assert "\tset src_p_0 {\n\t\ttype ipv4_addr\n\t\tcomment \"policy=p rule=0\"\n\t}\n" in text


def _errors(data: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as info:
        PolicySettings.model_validate(data)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        ({"default": "drop"}, ("default",), "'allow' or 'deny'"),
        ({"policies": [{"name": "Bad_Name"}]}, ("policies", 0, "name"), "should match pattern"),
        ({"policies": [{"name": "default-deny"}]}, ("policies", 0, "name"), "is reserved"),
        ({"policies": [{"name": "a"}, {"name": "a"}]}, (), "policy name 'a' is used twice"),
        ({"policies": [{"name": "a", "selector": "app = 'x'"}]}, ("policies", 0, "selector"), "column 5"),
        ({"policies": [{"name": "a", "ingress": [{"from": {"selector": "has("}}]}]},
         ("policies", 0, "ingress", 0, "from", "selector"), "column 5"),
        ({"policies": [{"name": "a", "ingress": [{"from": {}}]}]},
         ("policies", 0, "ingress", 0, "from"), "needs a selector, a namespace_selector or a cidr"),
        ({"policies": [{"name": "a", "ingress": [{"from": {"cidr": "10.0.0.1/8"}}]}]},
         ("policies", 0, "ingress", 0, "from", "cidr"), "has host bits set"),
        ({"policies": [{"name": "a", "ingress": [{"ports": [80]}]}]},
         ("policies", 0, "ingress", 0), "ports need protocol tcp or udp"),
        ({"policies": [{"name": "a", "ingress": [{"protocol": "icmp", "ports": [1]}]}]},
         ("policies", 0, "ingress", 0), "ports need protocol tcp or udp (protocol is icmp)"),
        ({"policies": [{"name": "a", "ingress": [{"protocol": "tcp", "ports": [0]}]}]},
         ("policies", 0, "ingress", 0, "ports", 0), "outside 1..65535"),
        ({"policies": [{"name": "a", "ingress": [{"protocol": "tcp", "ports": ["90:80"]}]}]},
         ("policies", 0, "ingress", 0, "ports", 0), "runs backwards"),
        ({"policies": [{"name": "a", "ingress": [{"protocol": "tcp", "ports": ["http"]}]}]},
         ("policies", 0, "ingress", 0, "ports", 0), "neither a number nor a range"),
        ({"policies": [{"name": "a", "ingress": [{"protocol": "sctp"}]}]},
         ("policies", 0, "ingress", 0, "protocol"), "'tcp', 'udp' or 'icmp'"),
        ({"policies": [{"name": "a", "ingress": [{"action": "reject"}]}]},
         ("policies", 0, "ingress", 0, "action"), "'allow' or 'deny'"),
        ({"policies": [{"name": "a", "egress": [{"from": {"cidr": "10.0.0.0/8"}}]}]}, ("policies", 0),
         "an egress rule has 'from'; egress rules say 'to'"),
        ({"policies": [{"name": "a", "ingress": [{"to": {"cidr": "10.0.0.0/8"}}]}]}, ("policies", 0),
         "an ingress rule has 'to'; ingress rules say 'from'"),
        ({"policies": [{"name": "a", "ingress": [{"from": {"namespace_selector": "a =="}}]}]},
         ("policies", 0, "ingress", 0, "from", "namespace_selector"), "column"),
    ],
)
def test_model_errors(data: dict[str, Any], loc: tuple[int | str, ...], fragment: str) -> None:
    errors = _errors(data)
    assert any(e_loc == loc and fragment in msg for e_loc, msg in errors), errors


def test_model_schema_and_alias() -> None:
    rule = Rule.model_validate({"protocol": "tcp", "ports": ["8000:8080", 22], "from": {"cidr": "10.0.0.0/8"}})
    assert rule.port_ranges() == [(8000, 8080), (22, 22)]
    assert rule.model_dump(by_alias=True, exclude_none=True)["from"] == {"cidr": rule.from_.cidr}  # type: ignore[union-attr]
    schema = PolicySettings.model_json_schema()
    assert "from" in schema["$defs"]["Rule"]["properties"]


def test_render_rejects_clashing_pods() -> None:
    twin = PodInfo("twin", IPv4Address("10.100.7.99"), WEB.host_veth, {})
    with pytest.raises(BadInput, match="pods web and twin have the same host veth cali0000000a001"):
        render(SETTINGS, [WEB, twin], [WEB, twin])
    clone = PodInfo("clone", WEB.ip, "cali0000000a009", {})
    with pytest.raises(BadInput, match="pods web and clone have the same IP 10.100.7.2"):
        render(SETTINGS, [WEB], [WEB, clone])


def test_pod_info_rejects_bad_names() -> None:
    with pytest.raises(BadInput, match="host veth"):
        PodInfo("x", IPv4Address("10.0.0.1"), 'cali"; drop', {})
    with pytest.raises(BadInput, match="quote"):
        PodInfo('a"b', IPv4Address("10.0.0.1"), "cali1", {})


@pytest.mark.parametrize(
    ("dst", "src", "proto", "port", "allowed", "policy", "rule"),
    [
        (WEB, CLIENT.ip, "icmp", None, True, "web-from-client", 0),
        (WEB, REMOTE.ip, "icmp", None, True, "web-from-client", 0),  # pods on other nodes count too
        (WEB, "10.20.30.9", "tcp", 8080, True, "web-from-client", 1),
        (WEB, "10.20.30.9", "tcp", 79, True, "everyone-dns", 1),  # the allow-anything rule
        (CLIENT, REMOTE.ip, "udp", 53, True, "everyone-dns", 0),
        (CLIENT, OTHER.ip, "udp", 53, True, "everyone-dns", 1),
    ],
)
def test_evaluate(dst: PodInfo, src: Any, proto: str, port: int | None, allowed: bool, policy: str,
                  rule: int | None) -> None:
    v = evaluate(SETTINGS, dst, src, proto, port, ALL)
    assert (v.allowed, v.policy, v.rule) == (allowed, policy, rule), v


WEB_ONLY = PolicySettings.model_validate({"default": "deny", "policies": [
    {"name": "web-from-client", "selector": "app == 'web'",
     "ingress": [{"protocol": "icmp", "from": {"selector": "app == 'client'"}},
                 {"protocol": "tcp", "ports": [80, "8000:8080"], "from": {"cidr": "10.20.30.0/24"}}]}]})


@pytest.mark.parametrize(
    ("settings", "dst", "src", "proto", "port", "verdict"),
    [
        (WEB_ONLY, WEB, OTHER.ip, "icmp", None, "default-deny"),
        (WEB_ONLY, WEB, CLIENT.ip, "tcp", 80, "default-deny"),  # icmp only from client pods
        (WEB_ONLY, WEB, "10.20.30.9", "tcp", 9000, "default-deny"),
        (WEB_ONLY, WEB, "10.20.31.9", "tcp", 80, "default-deny"),
        (WEB_ONLY, CLIENT, WEB.ip, "icmp", None, "default-deny"),
        (PolicySettings(), WEB, OTHER.ip, "tcp", 1, "default-allow"),
        (WEB_ONLY.model_copy(update={"default": "allow"}), WEB, OTHER.ip, "icmp", None, "end-of-policies"),
        (WEB_ONLY.model_copy(update={"default": "allow"}), CLIENT, OTHER.ip, "icmp", None, "default-allow"),
    ],
)
def test_evaluate_defaults(settings: PolicySettings, dst: PodInfo, src: Any, proto: str, port: int | None,
                           verdict: str) -> None:
    v = evaluate(settings, dst, src, proto, port, ALL)
    assert (v.policy, v.rule, v.allowed) == (verdict, None, verdict == "default-allow"), v


def test_evaluate_rejects_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="protocol 'sctp'"):
        evaluate(SETTINGS, WEB, CLIENT.ip, "sctp", None, ALL)


def _rule(chain: str, comment: str, packets: int) -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": "labnet-policy", "chain": chain, "handle": 1, "comment": comment,
                     "expr": [{"counter": {"packets": packets, "bytes": packets * 84}}, {"drop": None}]}}


def _table(drops: int, allows: int) -> list[dict[str, Any]]:
    chain = "to_cali0000000a001"
    return [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "inet", "name": "labnet-policy", "handle": 1}},
        {"chain": {"family": "inet", "table": "labnet-policy", "name": "forward", "handle": 2}},
        {"chain": {"family": "inet", "table": "labnet-policy", "name": chain, "handle": 3}},
        _rule(chain, "labnet=established", 0),
        _rule(chain, "policy=web-from-client rule=0", allows),
        _rule(chain, "policy=default-deny", drops),
    ]


NODE_NS = NodeNS("ubuntu-3", "/nonexistent")


def test_explain_drop_names_default_deny_and_the_moved_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    from labnet.policy.nft import counters

    before = counters(_table(drops=2, allows=5))
    monkeypatch.setattr(explain_mod, "ruleset", lambda ns: _table(drops=3, allows=5))
    text = explain_drop(NODE_NS, OTHER.ip, WEB.ip, "icmp", settings=WEB_ONLY, pods=ALL, before=before)
    assert text == (
        "node ubuntu-3: icmp 10.100.7.4 -> 10.100.7.2 (to pod web): dropped by default-deny: no rule allows it "
        "(policies selecting pod web: web-from-client); nft rule \"policy=default-deny\" in chain "
        "to_cali0000000a001 counted 3 packet(s), 1 since the snapshot; "
        "rules of to_cali0000000a001 whose counters moved: policy=default-deny"
    )


def test_explain_drop_says_allowed_by_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explain_mod, "ruleset", lambda ns: _table(drops=0, allows=7))
    text = explain_drop(NODE_NS, CLIENT.ip, WEB.ip, "icmp", settings=WEB_ONLY, pods=ALL)
    assert "allowed by policy web-from-client (ingress rule 0)" in text
    assert "counted 7 packet(s)" in text


def test_explain_drop_flags_counters_that_disagree_with_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from labnet.policy.nft import counters

    before = counters(_table(drops=0, allows=0))
    monkeypatch.setattr(explain_mod, "ruleset", lambda ns: _table(drops=0, allows=1))
    text = explain_drop(NODE_NS, OTHER.ip, WEB.ip, "icmp", settings=WEB_ONLY, pods=ALL, before=before)
    assert "they disagree with the model, which expects \"policy=default-deny\"" in text


def test_explain_drop_without_table_or_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explain_mod, "ruleset", lambda ns: None)
    assert "table inet labnet-policy is absent" in explain_drop(NODE_NS, OTHER.ip, WEB.ip, "icmp",
                                                                settings=WEB_ONLY, pods=ALL)
    assert "10.9.9.9 is not a pod labnet knows" in explain_drop(NODE_NS, OTHER.ip, "10.9.9.9", "icmp",
                                                                settings=WEB_ONLY, pods=ALL)
    monkeypatch.setattr(explain_mod, "ruleset", lambda ns: _table(0, 0))
    assert "is not enforced on this node (no chain to_cali0000000b001)" in explain_drop(
        NODE_NS, OTHER.ip, REMOTE.ip, "icmp", settings=WEB_ONLY, pods=ALL)
