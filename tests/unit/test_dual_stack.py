"""The IPv6 half of the pure pieces: route plans, VTEPs, NAT66, policy rendering, route parsing,
IPv6 autodetection and node records. The IPv4 behaviour of each is pinned by its own tests."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from labnet.agent.detect import choose, ipv6_on
from labnet.agent.nat import family_of, nat_ruleset, remove_script
from labnet.agent.nodes import NodeRecord
from labnet.agent.peers import compute_peers
from labnet.agent.routes import (
    DesiredRoute,
    Learned,
    Underlay,
    borrowed_addresses,
    desired_routes,
    vxlan_plan,
)
from labnet.agent.tunnel.vxlan import Vtep, plan
from labnet.bgp.codec import prefix_key
from labnet.checks.routes import norm_dst, normalise_match, parse_routes
from labnet.errors import BadInput
from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo, counters, render
from labnet.settings import ClusterSettings, PoolSettings

N6 = ipaddress.IPv6Network
A6 = ipaddress.IPv6Address
UNDER6 = Underlay("ens32", ipaddress.IPv6Interface("fd00:20:30::73/64"))
POOL6 = N6("fd00:100::/48")


def test_own_ipv6_blocks_are_blackholed_and_learned_ones_go_via_the_peer() -> None:
    learned = [Learned(N6("fd00:100::40/122"), A6("fd00:20:30::72")),      # same LAN: straight out
               Learned(N6("fd00:100::80/122"), A6("fd00:192:168:50::74")),  # another LAN: via the node's routes
               Learned(N6("fd00:100::c0/122"), A6("fd00:20:30::73"))]       # our own route, reflected back
    got = desired_routes(own_blocks=["fd00:100::/122"], learned=learned, pool=POOL6, encap="none", mode="never",
                         underlay=UNDER6)
    assert [str(r) for r in sorted(got.values(), key=lambda r: prefix_key(r.dst))] == [
        "blackhole fd00:100::/122 proto bird",
        "fd00:100::40/122 via fd00:20:30::72 dev ens32 proto bird",
        "fd00:100::80/122 via fd00:192:168:50::74 proto bird",
    ]


def test_vxlan_v6_plan_and_vteps_keep_to_one_family() -> None:
    mac = "66:77:88:99:aa:bb"
    far = Vtep("n4", "fd00:192:168:50::74", "fd00:100::80", mac, ("fd00:100::80/122",))
    near = Vtep("n2", "fd00:20:30::72", "fd00:100::40", "66:77:88:99:aa:cc", ("fd00:100::40/122",))
    tunnel, direct = vxlan_plan(vteps=[far, near], mode="cross-subnet", underlay=UNDER6)
    assert tunnel == [far]
    assert direct == {N6("fd00:100::40/122"): DesiredRoute(N6("fd00:100::40/122"), gateway=A6("fd00:20:30::72"),
                                                           dev="ens32")}
    fdb, neigh, routes = plan([far, near], "fd00:20:30::73")
    assert fdb[mac] == "fd00:192:168:50::74" and neigh["fd00:100::80"] == mac
    assert routes == {"fd00:100::80/122": "fd00:100::80", "fd00:100::40/122": "fd00:100::40"}
    with pytest.raises(BadInput, match="one IP family"):
        Vtep("n9", "10.0.0.9", "fd00:100::1", mac)
    with pytest.raises(BadInput, match="another IP family"):
        plan([Vtep("n9", "10.0.0.9", "10.100.0.1", mac)], "fd00:20:30::73")


def test_borrowed_ipv6_addresses_are_host_routes() -> None:
    got = borrowed_addresses("n3", ["fd00:100::/122", "10.100.0.0/26"],
                             ["fd00:100::5/128", "fd00:100::99/128", "10.100.0.9/32", "10.100.1.9/32"])
    assert [str(n) for n in got] == ["10.100.1.9/32", "fd00:100::99/128"]


def test_nat66_is_the_same_table_in_the_ip6_family() -> None:
    script = nat_ruleset("fd00:100::/48", ["tunl0", "vxlan.calico", "vxlan-v6.calico"])
    assert family_of("fd00:100::/48") == "ip6" and family_of("10.100.0.0/16") == "ip"
    assert "table ip6 labnet-nat {" in script and "delete table ip6 labnet-nat" in script
    assert ('ip6 saddr fd00:100::/48 ip6 daddr != fd00:100::/48 oifname != "tunl0" oifname != "vxlan.calico" '
            'oifname != "vxlan-v6.calico" masquerade') in script
    assert "ip saddr" not in script
    assert remove_script("ip6") == "add table ip6 labnet-nat\ndelete table ip6 labnet-nat\n"


def _pods(dual: bool) -> list[PodInfo]:
    return [PodInfo("web", ipaddress.IPv4Address("10.100.0.2"), "caliaaaaaaaaaaa", {"app": "web"},
                    ip6=A6("fd00:100::2") if dual else None),
            PodInfo("cli", ipaddress.IPv4Address("10.100.0.3"), "calibbbbbbbbbbb", {"app": "cli"},
                    ip6=A6("fd00:100::3") if dual else None)]


POLICY = PolicySettings.model_validate({"default": "allow", "policies": [
    {"name": "web", "selector": "app == 'web'", "ingress": [
        {"action": "allow", "from": {"selector": "app == 'cli'"}, "protocol": "tcp", "ports": [80]},
        {"action": "allow", "from": {"cidr": "fd00:99::/64"}},
        {"action": "allow", "protocol": "icmp"}]}]})


def test_policy_judges_both_families_of_a_dual_stack_pod_alike() -> None:
    pods = _pods(True)
    text = render(POLICY, pods[:1], pods)
    assert "type ipv6_addr" in text and "elements = { fd00:100::3 }" in text, text
    assert 'ip saddr @src_web_0 tcp dport { 80 } counter accept comment "policy=web rule=0"' in text
    assert 'ip6 saddr @src_web_0_6 tcp dport { 80 } counter accept comment "policy=web rule=0"' in text
    assert 'ip6 saddr fd00:99::/64 counter accept comment "policy=web rule=1"' in text
    assert 'ip saddr fd00:99' not in text  # an IPv6 cidr has no IPv4 line
    assert "meta l4proto icmp counter accept" in text and "meta l4proto ipv6-icmp counter accept" in text
    # an IPv4-only lab renders as before: no IPv6 set, no ip6 twin
    four = render(POLICY, _pods(False)[:1], _pods(False))
    assert "ipv6_addr" not in four and "@src_web_0_6" not in four and "ipv6-icmp" not in four
    # a selector AND an IPv6 cidr: no line that names an IPv6 set no one declared
    both = PolicySettings.model_validate({"policies": [{"name": "p", "selector": "app == 'web'", "ingress": [
        {"action": "allow", "from": {"selector": "app == 'cli'", "cidr": "fd00::/64"}}]}]})
    text = render(both, _pods(False)[:1], _pods(False))
    assert "@src_p_0_6" not in text and "ip6 saddr" not in text, text
    assert "@src_p_0_6" in render(both, _pods(True)[:1], _pods(True))


def test_counters_of_a_rules_two_families_add_up() -> None:
    def rule(packets: int) -> dict[str, Any]:
        return {"rule": {"chain": "to_x", "comment": "policy=web rule=0",
                         "expr": [{"counter": {"packets": packets, "bytes": packets * 100}}]}}

    (c,) = counters([rule(3), rule(4)]).values()
    assert (c.packets, c.bytes) == (7, 700)


def test_ipv6_routes_parse_and_match() -> None:
    routes = parse_routes('[{"dst": "default", "gateway": "fd00:20:30::1", "dev": "ens32", "metric": 1024},'
                          ' {"type": "blackhole", "dst": "fd00:100::/122", "dev": "lo", "protocol": "bird"},'
                          ' {"dst": "fd00:100::81", "dev": "cali8e807cde39b", "metric": 1024}]', family=6)
    assert [str(r.dst) for r in routes] == ["::/0", "fd00:100::/122", "fd00:100::81/128"]
    assert str(routes[2]) == "fd00:100::81 dev cali8e807cde39b metric 1024"
    assert parse_routes('[{"dst": "fd00::/64"}, {"dst": "10.0.0.0/8"}]') == parse_routes('[{"dst": "10.0.0.0/8"}]')
    assert norm_dst("default", 6) == N6("::/0") and norm_dst("fd00::1") == N6("fd00::1/128")
    assert normalise_match({"dst": "default"}, 6) == {"dst": "::/0"}


def test_ipv6_autodetection_takes_the_global_address_of_the_chosen_interface() -> None:
    def link(name: str, *addrs: tuple[str, str, str]) -> dict[str, Any]:
        info = [{"family": fam, "local": a, "prefixlen": 64 if fam == "inet6" else 24, "scope": scope}
                for fam, a, scope in addrs]
        return {"ifname": name, "flags": ["UP"], "mtu": 1500, "addr_info": info}

    links = [link("ens31", ("inet6", "fd00:9::9", "global")),
             link("ens32", ("inet", "10.20.30.73", "global"), ("inet6", "fe80::1", "link"),
                  ("inet6", "fd00:20:30::73", "global"))]
    got = choose("interface=ens32", links)
    assert (got.ip, got.ip6) == ("10.20.30.73", "fd00:20:30::73")
    assert ipv6_on(links[:1] + [link("ens32", ("inet", "10.20.30.73", "global"))], "ens32") is None


def test_a_node_record_keeps_calicos_ipv6_fields() -> None:
    rec = NodeRecord("n3", "10.20.30.73/24", ipv6_address="fd00:20:30::73/64", vxlan_tunnel_addr_v6="fd00:100::80",
                     vxlan_tunnel_mac_v6="66:77:88:99:aa:bb")
    raw = rec.encode()
    assert '"ipv6Address": "fd00:20:30::73/64"' in raw and '"ipv6VXLANTunnelAddr": "fd00:100::80"' in raw
    assert NodeRecord.decode(raw) == rec and rec.address6 == A6("fd00:20:30::73")
    assert "ipv6" not in NodeRecord("n3", "10.20.30.73/24").encode()  # IPv4 nodes write what they did


def test_an_ipv6_bgp_peer_is_a_session_of_its_own() -> None:
    s = ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "pool6": {"cidr": "fd00:100::/48"},
                                   "bgp": {"mesh": False, "peers": [{"address": "fd00:20:30::1", "asn": 65000},
                                                                    {"address": "10.20.30.1", "asn": 65000}]}})
    peers = compute_peers("n3", "10.20.30.73/24", [], s)
    assert [(p.address, p.next_hop_self) for p in peers] == [("10.20.30.1", True), ("fd00:20:30::1", True)]


def test_the_pod_mtu_leaves_room_for_vxlan_over_ipv6() -> None:
    s = ClusterSettings(PoolSettings("10.100.0.0/16"), pool6=PoolSettings("fd00:100::/48", 122, "never", "always"))
    assert s.workload_mtu(1500) == 1450 and s.workload_mtu(1500, underlay6=True) == 1430
    assert ClusterSettings(PoolSettings("10.100.0.0/16")).workload_mtu(1500, underlay6=True) == 1480
    with pytest.raises(BadInput, match="no IPIP"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "pool6": {"cidr": "fd00::/48", "ipip": True}})
    with pytest.raises(BadInput, match="116..128"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "pool6": {"cidr": "fd00::/48", "block_size": 64}})
    with pytest.raises(BadInput, match="not an IPv6 network"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "pool6": {"cidr": "10.9.0.0/16"}})
