"""Policy enforcement on a hand-built Calico-style node: real pings through real nft rules.

The node namespace holds three pods wired as the seed shows (cali veth, ee:ee:ee:ee:ee:ee,
proxy-ARP, /32 + 169.254.1.1 default route, `<ip> dev caliX scope link` on the node) and an
uplink veth that gives it the default route proxy-ARP needs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from labnet.errors import WaitTimeout
from labnet.nsexec import NodeNS, run
from labnet.policy import PodInfo, PolicySettings, apply, explain_drop, node_counters, remove, render, ruleset
from labnet.wait import poll

PODS = {  # name: (ip, host veth, labels)
    "web": ("10.100.7.2", "cali0000000a001", {"app": "web"}),
    "client": ("10.100.7.3", "cali0000000a002", {"app": "client"}),
    "other": ("10.100.7.4", "cali0000000a003", {"app": "other"}),
}


@dataclass
class Node:
    ns: NodeNS
    pods: dict[str, NodeNS]
    infos: list[PodInfo]

    def info(self, name: str) -> PodInfo:
        return next(p for p in self.infos if p.name == name)


def _sh(ns: NodeNS, *cmds: str) -> None:
    for cmd in cmds:
        run(ns, cmd.split())


@pytest.fixture
def node(netns_factory) -> Node:  # type: ignore[no-untyped-def]
    node = netns_factory("pnode")
    up = netns_factory("pup")
    subprocess.run(["ip", "-n", node.name, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
                    "netns", up.name], check=True)
    _sh(up, "ip addr add 192.0.2.2/24 dev eth0", "ip link set eth0 up")
    _sh(node, "ip addr add 192.0.2.1/24 dev uplink", "ip link set uplink up",
        "ip route add default via 192.0.2.2", "sysctl -qw net.ipv4.ip_forward=1")
    pods: dict[str, NodeNS] = {}
    infos: list[PodInfo] = []
    for name, (ip, veth, labels) in PODS.items():
        pod = netns_factory(f"p{name}")
        subprocess.run(["ip", "-n", node.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                        "netns", pod.name], check=True)
        _sh(node, f"ip link set {veth} address ee:ee:ee:ee:ee:ee up", f"sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1",
            f"sysctl -qw net.ipv4.neigh.{veth}.proxy_delay=0", f"ip route add {ip} dev {veth} scope link")
        _sh(pod, f"ip addr add {ip}/32 dev eth0", "ip link set eth0 up",
            "ip route add 169.254.1.1 dev eth0 scope link", "ip route add default via 169.254.1.1 dev eth0")
        pods[name] = pod
        infos.append(PodInfo(name, ip, veth, labels))  # type: ignore[arg-type]
    return Node(node, pods, infos)


def _ping(src: NodeNS, ip: str) -> bool:
    return run(src, ["ping", "-c1", "-W1", "-n", ip], check=False, timeout=10).returncode == 0


def reaches(node: Node, src: str, dst: str) -> None:
    ip = PODS[dst][0]
    try:
        poll(lambda: _ping(node.pods[src], ip), timeout=10, what=f"node {node.ns.name}: ping {src} -> {dst} ({ip})")
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}; expected the ping to pass; table: {ruleset(node.ns)}") from None


def blocked(node: Node, src: str, dst: str) -> None:
    ip = PODS[dst][0]
    poll(lambda: not _ping(node.pods[src], ip), timeout=10,
         what=f"node {node.ns.name}: ping {src} -> {dst} ({ip}) to be dropped (expected blocked, it passes)")


def enforce(node: Node, settings: PolicySettings) -> None:
    apply(node.ns, render(settings, node.infos, node.infos))


DENY_BUT_CLIENT = PolicySettings.model_validate({
    "default": "deny",
    "policies": [{"name": "web-from-client", "selector": "app == 'web'",
                  "ingress": [{"protocol": "icmp", "from": {"selector": "app == 'client'"}}]}],
})


def test_default_deny_and_an_allow_rule(node: Node) -> None:
    # allow-all: everybody pings everybody
    enforce(node, PolicySettings(default="allow"))
    reaches(node, "client", "web")
    reaches(node, "other", "web")
    reaches(node, "web", "other")

    # default-deny: Frederic's "everything is blocked by default"
    enforce(node, PolicySettings(default="deny"))
    blocked(node, "client", "web")
    blocked(node, "other", "web")
    before = node_counters(node.ns)
    blocked(node, "other", "web")
    why = explain_drop(node.ns, PODS["other"][0], PODS["web"][0], "icmp", settings=PolicySettings(default="deny"),
                       pods=node.infos, before=before)
    assert "dropped by default-deny" in why and "policy=default-deny" in why, why
    assert "rules of to_cali0000000a001 whose counters moved: policy=default-deny" in why, why

    # one allow rule: client -> web passes, other -> web still dropped, replies pass (conntrack)
    enforce(node, DENY_BUT_CLIENT)
    reaches(node, "client", "web")
    blocked(node, "other", "web")
    blocked(node, "web", "client")  # the policy allows ingress to web only
    before = node_counters(node.ns)
    reaches(node, "client", "web")
    ok = explain_drop(node.ns, PODS["client"][0], PODS["web"][0], "icmp", settings=DENY_BUT_CLIENT,
                      pods=node.infos, before=before)
    assert "allowed by policy web-from-client (ingress rule 0)" in ok, ok
    assert "whose counters moved: policy=web-from-client rule=0" in ok, ok
    no = explain_drop(node.ns, PODS["other"][0], PODS["web"][0], "icmp", settings=DENY_BUT_CLIENT, pods=node.infos)
    assert "dropped by default-deny" in no and "web-from-client" in no, no

    # the node itself still reaches its pods (host -> workload is not filtered)
    assert _ping(node.ns, PODS["web"][0]), f"node {node.ns.name}: ping node -> web failed under default-deny"

    # remove: back to allow-all
    remove(node.ns)
    assert ruleset(node.ns) is None
    reaches(node, "other", "web")
    reaches(node, "web", "client")
    gone = explain_drop(node.ns, PODS["other"][0], PODS["web"][0], "icmp", settings=DENY_BUT_CLIENT,
                        pods=node.infos)
    assert "is absent" in gone, gone


def test_apply_is_idempotent_and_atomic(node: Node) -> None:
    script = render(DENY_BUT_CLIENT, node.infos, node.infos)
    apply(node.ns, script)
    first = run(node.ns, ["nft", "list", "table", "inet", "labnet-policy"]).stdout
    apply(node.ns, script)
    second = run(node.ns, ["nft", "list", "table", "inet", "labnet-policy"]).stdout
    assert first == second
    tables = run(node.ns, ["nft", "list", "tables"]).stdout.split("\n")
    assert [t for t in tables if t.strip()] == ["table inet labnet-policy"], tables

    # A broken script leaves the applied table untouched (one nft transaction).
    with pytest.raises(Exception, match="labnet-policy"):
        apply(node.ns, script.replace("counter drop", "counter dorp", 1))
    assert run(node.ns, ["nft", "list", "table", "inet", "labnet-policy"]).stdout == second

    remove(node.ns)
    remove(node.ns)  # removing twice is fine
    assert ruleset(node.ns) is None


def test_allow_default_isolates_selected_pods(node: Node) -> None:
    settings = PolicySettings.model_validate({
        "default": "allow",
        "policies": [{"name": "web-from-client", "selector": "app == 'web'",
                      "ingress": [{"protocol": "icmp", "from": {"selector": "app == 'client'"}}]}],
    })
    enforce(node, settings)
    reaches(node, "client", "web")
    blocked(node, "other", "web")
    reaches(node, "other", "client")  # client is selected by no policy: default allow
    why = explain_drop(node.ns, PODS["other"][0], PODS["web"][0], "icmp", settings=settings, pods=node.infos)
    assert "end-of-policies" in why and "web-from-client" in why, why


def test_the_golden_script_loads_into_nft(netns_factory) -> None:  # type: ignore[no-untyped-def]
    # The unit test's golden text is only worth something if the kernel takes it.
    from tests.unit.test_policy_render import ALL, GOLDEN, NODE, SETTINGS

    ns = netns_factory("pgold")
    script = render(SETTINGS, NODE, ALL)
    assert script == GOLDEN
    apply(ns, script)
    objects = ruleset(ns)
    assert objects is not None
    comments = [o["rule"]["comment"] for o in objects if "rule" in o]
    assert comments.count("policy=default-deny") == 3 and "policy=everyone-dns rule=0" in comments, comments
    remove(ns)
