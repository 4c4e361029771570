"""labnet-agent's pure parts: config, address detection, peers, desired routes, NAT, status table."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from labnet.agent.config import AgentConfig, EtcdSettings, parse_address_method
from labnet.agent.detect import DetectError, choose
from labnet.agent.nat import nat_ruleset
from labnet.agent.nodes import NodeRecord, name_problems
from labnet.agent.peers import GLOBAL, MESH, NODE_SPECIFIC, compute_peers
from labnet.agent.routes import DesiredRoute, Learned, Underlay, desired_routes, vxlan_plan
from labnet.agent.status import format_bgp_status
from labnet.agent.tunnel.vxlan import Vtep
from labnet.errors import BadInput
from labnet.settings import ClusterSettings

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


# -- fake `ip -j addr` ---------------------------------------------------------------------------


def link(name: str, *addrs: str, up: bool = True, mtu: int = 1500, scope: str = "global") -> dict[str, Any]:
    info = []
    for a in addrs:
        ip, plen = a.split("/")
        info.append({"family": "inet", "local": ip, "prefixlen": int(plen), "scope": scope, "label": name})
    info.append({"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"})
    flags = ["BROADCAST", "MULTICAST"] + (["UP", "LOWER_UP"] if up else [])
    return {"ifname": name, "flags": flags, "mtu": mtu, "operstate": "UP" if up else "DOWN", "addr_info": info}


LINKS = [
    link("lo", "127.0.0.1/8", scope="host"),
    link("docker0", "172.17.0.1/16"),
    link("tunl0", "10.100.163.128/32", mtu=1480),
    link("cali182f84bfeba"),
    link("vxlan.calico", "10.100.163.129/32", mtu=1450),
    link("veth1a2b3c", "172.18.0.1/16"),
    link("ens33", "192.168.1.5/24", up=False),
    link("ens32", "10.20.30.73/24"),
    link("ens34", "192.168.50.73/24", mtu=9000),
]


def test_first_found_skips_lo_cali_tunl_vxlan_veth_docker_and_down_links() -> None:
    d = choose("first-found", LINKS)
    assert (str(d.address), d.ifname, d.mtu) == ("10.20.30.73/24", "ens32", 1500)


@pytest.mark.parametrize("name", ["vxlan.calico", "veth1a2b3c"])
def test_first_found_skips_vxlan_and_veth_even_when_listed_first(name: str) -> None:
    # up, with a global IPv4 address, before the real NIC: only the name prefix rules it out
    skipped = next(x for x in LINKS if x["ifname"] == name)
    d = choose("first-found", [skipped, *LINKS])
    assert d.ifname == "ens32", f"first-found picked {d.ifname} ({d.address}); {name} must be skipped"
    with pytest.raises(DetectError, match=re.escape(f"{name}=")):
        choose("first-found", [skipped])


def test_first_found_with_nothing_usable_names_what_it_saw() -> None:
    usable = [x for x in LINKS if x["ifname"] in ("ens32", "ens34")]
    with pytest.raises(DetectError, match=r"docker0=172\.17\.0\.1/16.*vxlan\.calico=.*veth1a2b3c="):
        choose("first-found", [x for x in LINKS if x not in usable])


def test_interface_regex_must_match_the_whole_name() -> None:
    assert choose("interface=ens3[4]", LINKS).ifname == "ens34"
    assert choose("interface=ens.*", LINKS).ifname == "ens33"  # listing order, like Calico
    with pytest.raises(DetectError, match="interface=ens"):
        choose("interface=ens", LINKS)
    with pytest.raises(BadInput, match="regular expression"):
        choose("interface=(", LINKS)


def test_cidr_and_explicit_address() -> None:
    assert str(choose("cidr=192.168.50.0/24", LINKS).address) == "192.168.50.73/24"
    assert str(choose("10.20.30.73", LINKS).address) == "10.20.30.73/24"
    with pytest.raises(DetectError, match="no such address"):
        choose("10.9.9.9", LINKS)
    with pytest.raises(DetectError, match="cidr=10.99.0.0/16"):
        choose("cidr=10.99.0.0/16", LINKS)


def test_can_reach_uses_the_route_source() -> None:
    routes = {"192.168.50.1": [{"dst": "192.168.50.1", "dev": "ens34", "prefsrc": "192.168.50.73", "flags": []}]}
    assert choose("can-reach=192.168.50.1", LINKS, routes.__getitem__).ifname == "ens34"
    with pytest.raises(DetectError, match="no route"):
        choose("can-reach=8.8.8.8", LINKS, lambda _ip: [])


@pytest.mark.parametrize("bad", ["bogus", "can-reach=x", "cidr=", "cidr=10.0.0.0/33", "interface="])
def test_bad_detection_methods_are_bad_input(bad: str) -> None:
    with pytest.raises(BadInput, match="bgp_address"):
        parse_address_method(bad)


# -- config ---------------------------------------------------------------------------------------


def test_agent_config_round_trips(tmp_path: Path) -> None:
    cfg = AgentConfig(etcd=EtcdSettings(["https://10.20.30.71:2379"], "/ca", "/crt", "/key"),
                      bgp_address="can-reach=10.20.30.1")
    cfg.save(tmp_path / "agent.json")
    assert AgentConfig.load(tmp_path / "agent.json") == cfg
    raw = json.loads((tmp_path / "agent.json").read_text())
    assert raw["nodename_file"] == "/var/lib/labnet/nodename"
    assert raw["status_socket"] == "/var/run/labnet/agent.sock"


def test_agent_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        AgentConfig.load(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text(json.dumps({"etcd": {"endpoints": []}}))
    with pytest.raises(BadInput, match="non-empty 'endpoints'"):
        AgentConfig.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"etcd": {"endpoints": ["http://x:2379"]}, "colour": 1}))
    with pytest.raises(BadInput, match=r"unknown keys \['colour'\]"):
        AgentConfig.load(tmp_path / "b.json")


def settings(**bgp: Any) -> ClusterSettings:
    return ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "ipip": "always"}, "bgp": bgp})


def test_cluster_settings_defaults_and_errors() -> None:
    s = settings()
    assert (s.bgp.asn, s.bgp.mesh, s.pool.block_size, s.pool.encap, s.pool.mode) == (64512, True, 26, "ipip", "always")
    s = ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "ipip": "CrossSubnet"}, "bgp": {"mesh": "none"}})
    assert (s.pool.mode, s.bgp.mesh) == ("cross-subnet", False)
    with pytest.raises(BadInput, match="pool.ipip 'sometimes'"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "ipip": "sometimes"}})
    with pytest.raises(BadInput, match="pick one"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "ipip": "always", "vxlan": "always"}})
    with pytest.raises(BadInput, match="bgp.peers\\[0\\]"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "bgp": {"peers": [{"address": "1.2.3.4"}]}})


# -- peers ----------------------------------------------------------------------------------------


def nodes(*spec: tuple[str, str]) -> list[NodeRecord]:
    return [NodeRecord(name, f"{addr}/24") for name, addr in spec]


SEED = nodes(("ubuntu-1", "10.20.30.71"), ("ubuntu-2", "10.20.30.72"), ("ubuntu-3", "10.20.30.73"),
             ("ubuntu-4", "192.168.50.74"), ("ubuntu-5", "192.168.50.75"))


def test_full_mesh_peers_everyone_else_and_the_higher_address_is_passive() -> None:
    peers = compute_peers("ubuntu-3", "10.20.30.73", SEED, settings())
    assert [(p.address, p.asn, p.peer_type, p.passive) for p in peers] == [
        ("10.20.30.71", 64512, MESH, True),
        ("10.20.30.72", 64512, MESH, True),
        ("192.168.50.74", 64512, MESH, False),
        ("192.168.50.75", 64512, MESH, False),
    ]
    # each pair agrees on exactly one active side
    for a in SEED:
        for p in compute_peers(a.name, str(a.address), SEED, settings()):
            back = next(q for q in compute_peers(p.name or "", p.address, SEED, settings()) if q.name == a.name)
            assert p.passive != back.passive


def test_mesh_off_and_no_peers_means_no_sessions() -> None:
    assert compute_peers("ubuntu-3", "10.20.30.73", SEED, settings(mesh="none")) == []
    assert compute_peers("ubuntu-3", "10.20.30.73", SEED, settings(enabled=False)) == []


def test_route_reflectors_peer_with_all_clients_only_with_rrs() -> None:
    s = settings(mesh="none", route_reflectors=["ubuntu-1", "ubuntu-2"])
    rr = compute_peers("ubuntu-1", "10.20.30.71", SEED, s)
    assert [(p.address, p.rr_client, p.peer_type) for p in rr] == [
        ("10.20.30.72", False, NODE_SPECIFIC),  # RR to RR: plain iBGP
        ("10.20.30.73", True, NODE_SPECIFIC),
        ("192.168.50.74", True, NODE_SPECIFIC),
        ("192.168.50.75", True, NODE_SPECIFIC),
    ]
    client = compute_peers("ubuntu-4", "192.168.50.74", SEED, s)
    assert [(p.address, p.rr_client) for p in client] == [("10.20.30.71", False), ("10.20.30.72", False)]


def test_explicit_peers_global_node_specific_and_ebgp_next_hop_self() -> None:
    s = ClusterSettings.from_dict({
        "pool": {"cidr": "10.100.0.0/16", "ipip": "never"},
        "bgp": {"asn": 64512, "mesh": "none", "peers": [
            {"address": "10.30.0.1", "asn": 65000},
            {"address": "10.30.0.2", "asn": 64512, "node": "node-1"},
        ]},
        "node_asn": {"node-1": 64601, "node-2": 64602},
    })
    n = nodes(("node-1", "10.30.0.11"), ("node-2", "10.30.0.12"))
    p1 = compute_peers("node-1", "10.30.0.11", n, s)
    assert [(p.address, p.asn, p.peer_type, p.passive, p.next_hop_self) for p in p1] == [
        ("10.30.0.1", 65000, GLOBAL, False, True),
        ("10.30.0.2", 64512, NODE_SPECIFIC, False, True),  # node AS 64601: eBGP too
    ]
    assert [p.address for p in compute_peers("node-2", "10.30.0.12", n, s)] == ["10.30.0.1"]
    assert s.asn_of("node-1") == 64601 and s.asn_of("node-9") == 64512


# -- routes ---------------------------------------------------------------------------------------

UNDER = Underlay("ens32", ipaddress.IPv4Interface("10.20.30.73/24"))
POOL = N("10.100.0.0/16")
LEARNED = [
    Learned(N("10.100.5.192/26"), A("192.168.50.74")),
    Learned(N("10.100.138.192/26"), A("192.168.50.75")),
    Learned(N("10.100.243.0/26"), A("10.20.30.72")),
]


def table(mode: str, encap: str = "ipip", learned: list[Learned] = LEARNED, **kw: Any) -> list[str]:
    want = desired_routes(own_blocks=["10.100.163.128/26"], learned=learned, pool=POOL, encap=encap, mode=mode,
                          underlay=UNDER, **kw)
    return [str(r) for r in sorted(want.values())]


def test_ipip_always_reproduces_the_seed_route_table() -> None:
    assert table("always") == [
        "10.100.5.192/26 via 192.168.50.74 dev tunl0 proto bird onlink",
        "10.100.138.192/26 via 192.168.50.75 dev tunl0 proto bird onlink",
        "blackhole 10.100.163.128/26 proto bird",
        "10.100.243.0/26 via 10.20.30.72 dev tunl0 proto bird onlink",
    ]


def test_cross_subnet_same_subnet_via_underlay_others_via_tunl0() -> None:
    assert table("cross-subnet") == [
        "10.100.5.192/26 via 192.168.50.74 dev tunl0 proto bird onlink",
        "10.100.138.192/26 via 192.168.50.75 dev tunl0 proto bird onlink",
        "blackhole 10.100.163.128/26 proto bird",
        "10.100.243.0/26 via 10.20.30.72 dev ens32 proto bird",
    ]


def test_never_routes_via_the_bgp_next_hop() -> None:
    tor = [Learned(N("10.100.5.192/26"), A("10.20.30.1")), Learned(N("10.100.243.0/26"), A("10.20.30.72")),
           Learned(N("10.200.0.0/16"), A("10.9.9.9"))]
    assert table("never", encap="none", learned=tor) == [
        "10.100.5.192/26 via 10.20.30.1 dev ens32 proto bird",
        "blackhole 10.100.163.128/26 proto bird",
        "10.100.243.0/26 via 10.20.30.72 dev ens32 proto bird",
        "10.200.0.0/16 via 10.9.9.9 proto bird",  # not on-link: the kernel resolves it
    ]


def test_borrowed_slash32_routes_ride_the_tunnel_and_beat_the_owners_blackhole() -> None:
    learned = [*LEARNED, Learned(N("10.100.163.190/32"), A("192.168.50.74"))]
    rows = table("always", learned=learned)
    assert "10.100.163.190/32 via 192.168.50.74 dev tunl0 proto bird onlink" in rows
    assert "blackhole 10.100.163.128/26 proto bird" in rows


def test_own_prefixes_reflected_copies_and_default_routes_are_not_installed() -> None:
    learned = [Learned(N("10.100.163.128/26"), A("10.20.30.72")),  # our block, reflected back
               Learned(N("10.100.7.7/32"), A("10.20.30.73")),  # next hop is us
               Learned(N("0.0.0.0/0"), A("10.20.30.1")),
               Learned(N("10.100.9.9/32"), A("10.20.30.72"))]
    rows = table("always", learned=learned, originated=[N("10.100.9.9/32")])
    assert rows == ["blackhole 10.100.163.128/26 proto bird"]


def test_vxlan_plan_cross_subnet_splits_underlay_and_tunnel() -> None:
    vteps = [Vtep("ubuntu-2", "10.20.30.72", "10.100.243.0", "66:00:00:00:00:02", ("10.100.243.0/26",)),
             Vtep("ubuntu-4", "192.168.50.74", "10.100.5.192", "66:00:00:00:00:04", ("10.100.5.192/26",)),
             Vtep("ubuntu-3", "10.20.30.73", "10.100.163.128", "66:00:00:00:00:03", ("10.100.163.128/26",))]
    tunnel, direct = vxlan_plan(vteps=vteps, mode="cross-subnet", underlay=UNDER)
    assert [v.node for v in tunnel] == ["ubuntu-4"]
    assert [str(r) for r in direct.values()] == ["10.100.243.0/26 via 10.20.30.72 dev ens32 proto bird"]
    tunnel, direct = vxlan_plan(vteps=vteps, mode="always", underlay=UNDER)
    assert [v.node for v in tunnel] == ["ubuntu-2", "ubuntu-4"] and direct == {}


def test_desired_route_prints_like_ip_route() -> None:
    assert str(DesiredRoute(N("10.100.0.0/26"), "blackhole")) == "blackhole 10.100.0.0/26 proto bird"


# -- nft ------------------------------------------------------------------------------------------


def test_nat_ruleset_masquerades_pool_traffic_leaving_the_pool_not_the_tunnel() -> None:
    script = nat_ruleset("10.100.0.0/16", ["tunl0", "vxlan.calico"])
    assert script.splitlines()[:3] == ["add table ip labnet-nat", "delete table ip labnet-nat",
                                       "table ip labnet-nat {"]
    assert "type nat hook postrouting priority srcnat; policy accept;" in script
    assert ('ip saddr 10.100.0.0/16 ip daddr != 10.100.0.0/16 oifname != "tunl0" '
            'oifname != "vxlan.calico" masquerade') in script
    with pytest.raises(ValueError):
        nat_ruleset("10.100.0.1/16")


# -- node names and status -------------------------------------------------------------------------


def test_node_record_round_trip() -> None:
    rec = NodeRecord("ubuntu-3", "10.20.30.73/24", 64512, "10.100.163.128", pid=42, started="t", interface="ens32")
    assert NodeRecord.decode(rec.encode()) == rec
    d = json.loads(rec.encode())
    assert d["bgp"] == {"ipv4Address": "10.20.30.73/24", "asNumber": 64512, "ipv4IPIPTunnelAddr": "10.100.163.128"}
    with pytest.raises(BadInput, match="node record"):
        NodeRecord.decode(b"{}", "node record /x")


def test_name_mismatch_is_reported_by_name() -> None:
    probs = name_problems("x", "ubuntu-3", "/var/lib/labnet/nodename", {"x", "ubuntu-3", "ubuntu-4"},
                          {"x", "ubuntu-4"})
    assert probs == ["node name mismatch: agent registered as 'x' but the CNI plugin uses 'ubuntu-3' "
                     "(from /var/lib/labnet/nodename): its blocks get no routes"]
    # seen from another node: the orphaned blocks
    probs = name_problems("ubuntu-4", "ubuntu-4", "/f", {"x", "ubuntu-3", "ubuntu-4"}, {"x", "ubuntu-4"})
    assert len(probs) == 1 and "'ubuntu-3', which no agent registered" in probs[0]
    assert name_problems("a", "a", "/f", {"a"}, {"a"}) == []


def test_format_bgp_status_is_calicoctls_table() -> None:
    st = {"peers": [
        {"peer_address": "10.20.30.72", "peer_type": "node-to-node mesh", "state": "up", "since": "11:07:37",
         "info": "Established"},
        {"peer_address": "192.168.50.74", "peer_type": "node-to-node mesh", "state": "up", "since": "11:07:38",
         "info": "Established"},
        {"peer_address": "192.168.50.75", "peer_type": "global", "state": "start", "since": "11:07:36",
         "info": "Active Socket: Connection refused"},
    ]}
    assert format_bgp_status(st) == "\n".join([
        "IPv4 BGP status",
        "+---------------+-------------------+-------+----------+-----------------------------------+",
        "| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |               INFO                |",
        "+---------------+-------------------+-------+----------+-----------------------------------+",
        "| 10.20.30.72   | node-to-node mesh | up    | 11:07:37 | Established                       |",
        "| 192.168.50.74 | node-to-node mesh | up    | 11:07:38 | Established                       |",
        "| 192.168.50.75 | global            | start | 11:07:36 | Active Socket: Connection refused |",
        "+---------------+-------------------+-------+----------+-----------------------------------+",
        "",
        "IPv6 BGP status",
        "No IPv6 peers found.",
        "",
    ])
    two = format_bgp_status({"peers": st["peers"][:2]}).splitlines()
    assert two[1:4] == [
        "+---------------+-------------------+-------+----------+-------------+",
        "| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |",
        "+---------------+-------------------+-------+----------+-------------+",
    ]
    assert two[4] == "| 10.20.30.72   | node-to-node mesh | up    | 11:07:37 | Established |"
    assert format_bgp_status({"peers": []}).splitlines()[:2] == ["IPv4 BGP status", "No IPv4 peers found."]


@pytest.mark.parametrize("topology", ["seed.yaml", "tor-bird.yaml", "route-reflectors.yaml", "vxlan.yaml"])
def test_reads_the_settings_labnet_up_writes(topology: str) -> None:
    """The lab's phase writes keys.config("cluster") from the topology; the agent must read it."""
    from labnet.topology.loader import load

    topo = load(Path(__file__).resolve().parents[2] / "topologies" / topology)
    assert topo.cluster is not None
    raw = json.loads(json.dumps(topo.cluster_settings().to_dict()))
    s = ClusterSettings.from_dict(raw)
    assert s.pool.cidr == str(topo.cluster.pool.cidr)
    assert s.pool.mode == (topo.cluster.pool.vxlan if topo.cluster.pool.vxlan != "never" else topo.cluster.pool.ipip)
    assert s.bgp.mesh == (topo.cluster.bgp.mesh == "full")
    assert s.bgp.route_reflectors == tuple(topo.cluster.bgp.route_reflectors)
    assert [(p.address, p.asn) for p in s.bgp.peers] == [(str(p.address), p.asn) for p in topo.cluster.bgp.peers]
    for n in topo.cluster.nodes:
        assert s.asn_of(n) == topo.node_asn(n)


def test_null_numbers_take_defaults_and_bad_ones_are_named() -> None:
    s = ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "block_size": None},
                                   "bgp": {"hold_time": None, "keepalive": None}})
    assert (s.pool.block_size, s.bgp.hold_time, s.bgp.keepalive) == (26, 90, None)
    with pytest.raises(BadInput, match="hold_time 'soon' is not an integer"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "bgp": {"hold_time": "soon"}})
    with pytest.raises(BadInput, match="hold_time 2 must be 0 or 3..65535"):
        ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16"}, "bgp": {"hold_time": 2}})


def test_a_next_hop_off_link_resolves_through_the_nodes_own_routes() -> None:
    """BIRD's `gateway recursive`: the longest of the node's own routes towards the next hop."""
    from ipaddress import IPv4Address as A
    from ipaddress import IPv4Network as N

    from labnet.agent.routes import OwnRoute, resolve_next_hop

    own = [OwnRoute(N("0.0.0.0/0"), A("10.20.30.1"), 2), OwnRoute(N("10.20.30.0/24"), None, 2),
           OwnRoute(N("192.168.50.0/24"), A("10.20.30.254"), 2), OwnRoute(N("10.99.0.0/16"), None, None)]
    assert resolve_next_hop(A("192.168.50.74"), own) == own[2], "a static route beats the default"
    assert resolve_next_hop(A("198.51.100.1"), own) == own[0], "else the default route"
    assert resolve_next_hop(A("10.20.30.9"), own) == own[1], "on a connected subnet: straight out"
    assert resolve_next_hop(A("10.99.1.1"), own[3:]) is None, "a route without a device leads nowhere"
    assert resolve_next_hop(A("198.51.100.1"), own[1:]) is None, "no default route: unreachable"
