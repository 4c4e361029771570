"""Policy enforcement on a hand-built Calico-style node: real pings through real nft rules.

The node namespace holds three pods wired as the seed shows (cali veth, ee:ee:ee:ee:ee:ee,
proxy-ARP, /32 + 169.254.1.1 default route, `<ip> dev caliX scope link` on the node) and an
uplink veth that gives it the default route proxy-ARP needs.

The last tests use the `lab` fixture: topologies/policy.yaml brought up once for the module
(default-deny, one allow rule), where `labnet doctor` must name the policy that drops a ping.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from _labtools import labnet

from labnet.errors import WaitTimeout
from labnet.nsexec import NodeNS, run, spawn
from labnet.policy import PodInfo, PolicySettings, apply, explain_drop, node_counters, remove, render, ruleset
from labnet.wait import poll

# only tests that ask for the `lab` fixture bring this lab up
pytestmark = pytest.mark.topology("../../topologies/policy.yaml", name="t-policy-enf")

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


_LISTEN = """\
import select, socket
socks = []
for port in (80, 81):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    socks.append(s)
print("listening", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
"""

_CONNECT = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print(type(exc).__name__)
"""


def _tcp(node: Node, src: str, dst: str, port: int, wait: float = 1.0) -> str:
    """connected, timeout (SYN dropped) or the error (ConnectionRefusedError: nobody listens)."""
    return run(node.pods[src], [sys.executable, "-c", _CONNECT, PODS[dst][0], str(port), str(wait)],
               timeout=wait + 20).stdout.strip()


def test_tcp_port_rule_allows_80_and_drops_81(node: Node, netns_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    netns_factory.track_pid(spawn(node.pods["web"], [sys.executable, "-c", _LISTEN], log=tmp_path / "web.log"))
    enforce(node, PolicySettings(default="allow"))
    for port in (80, 81):  # both listen: what changes below is the policy's doing alone
        poll(lambda p=port: _tcp(node, "client", "web", p), lambda r: r == "connected", timeout=10,  # type: ignore[misc]
             what=f"node {node.ns.name}: web listening on tcp/{port} (client connects, allow-all)")
    http_only = PolicySettings.model_validate({
        "default": "deny",
        "policies": [{"name": "web-http", "selector": "app == 'web'",
                      "ingress": [{"protocol": "tcp", "ports": [80], "from": {"selector": "app == 'client'"}}]}],
    })
    enforce(node, http_only)
    got = {port: _tcp(node, "client", "web", port) for port in (80, 81)}
    assert got == {80: "connected", 81: "timeout"}, (
        f"node {node.ns.name}: client → web with only tcp/80 allowed: expected 80 connected and 81 dropped "
        f"(timeout), got {got}; table: {ruleset(node.ns)}")
    assert _tcp(node, "other", "web", 80) == "timeout", (
        f"node {node.ns.name}: other → web tcp/80: expected dropped (the rule allows client only)")
    why = explain_drop(node.ns, PODS["client"][0], PODS["web"][0], "tcp", 81, settings=http_only, pods=node.infos)
    assert "dropped by default-deny" in why and "web-http" in why, why
    ok = explain_drop(node.ns, PODS["client"][0], PODS["web"][0], "tcp", 80, settings=http_only, pods=node.infos)
    assert "allowed by policy web-http (ingress rule 0)" in ok, ok
    remove(node.ns)
    assert _tcp(node, "client", "web", 81) == "connected", f"node {node.ns.name}: tcp/81 after remove"


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


# -- on the policy.yaml lab: a blocked ping, and doctor naming the policy ------------------------


def _doctor(lab: Any) -> tuple[int, list[dict[str, str]]]:
    proc = labnet("doctor", "-l", lab.name, "--json", check=False, timeout=120)
    assert proc.returncode in (0, 1), f"lab {lab.name}: labnet doctor exited {proc.returncode}: {proc.stderr}"
    doc = json.loads(proc.stdout)
    return proc.returncode, doc["findings"]


def _blocked_ping(lab: Any, src: str, dst: str) -> None:
    proc = run(lab.pod(src), ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", lab.address(dst)],
               check=False, timeout=20)
    assert " 0 received" in proc.stdout, (
        f"lab {lab.name}: ping {src} → {dst}: expected every echo dropped by policy, got {proc.stdout}")


def _policy_finding(lab: Any, node: str, pod: str) -> dict[str, str]:
    def has(res: tuple[int, list[dict[str, str]]]) -> bool:
        return res[0] == 1 and any(f["node"] == node and f"to pod {pod}" in f["problem"] for f in res[1])

    _rc, found = poll(lambda: _doctor(lab), has, timeout=30,
                      what=f"lab {lab.name}: doctor to report a policy drop to pod {pod} on {node}")
    return next(f for f in found if f["node"] == node and f"to pod {pod}" in f["problem"])


def test_doctor_names_the_policy_that_drops_a_ping(lab) -> None:
    # other → web: web is selected by web-from-client, whose only rule allows client
    _blocked_ping(lab, "other", "web")
    f = _policy_finding(lab, "node-2", "web")
    assert f["problem"].startswith("policy default-deny dropped"), f"node-2, pod web: problem {f['problem']!r}"
    assert "web-from-client" in f["explanation"], (
        f"node-2, pod web: expected the explanation to name web-from-client (the policy selecting web), "
        f"got {f['explanation']!r}")
    assert "policy=web-from-client rule=0" in f["evidence"] and "labnet-policy" in f["command"], f
    # web → client: client is selected by no policy, so the lab's default-deny alone drops it
    _blocked_ping(lab, "web", "client")
    g = _policy_finding(lab, "node-1", "client")
    assert g["problem"].startswith("policy default-deny dropped"), f"node-1, pod client: problem {g['problem']!r}"
    assert "no policy selects" in g["explanation"], f"node-1, pod client: explanation {g['explanation']!r}"
    # the allowed direction still works: the drop is the policy's doing, not the lab's
    assert run(lab.pod("client"), ["ping", "-n", "-c", "1", "-W", "2", lab.address("web")], check=False,
               timeout=10).returncode == 0, f"lab {lab.name}: ping client → web: expected a reply (allowed)"
