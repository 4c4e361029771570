"""The seed lab, fully: DESIGN.md's checklist items 1-15 on the real thing.

One lab for the module, built by labnet's own pytest plugin from topologies/seed.yaml
(under a test-only name, so a `make up` lab is never touched).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys

import pytest

from labnet.checks import (
    CheckFailed,
    assert_blackhole_route,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_route,
    assert_tunnel_route,
    read_sysctl,
)
from labnet.cni import invoke
from labnet.nsexec import run
from labnet.wait import poll

pytestmark = pytest.mark.topology("../../topologies/seed.yaml", name="t-seedfull")

NODES = ["ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"]


def _ip(ns, *args: str):  # type: ignore[no-untyped-def]
    return json.loads(run(ns, ["ip", "-j", *args]).stdout)


def test_item1_host_veth_name_mac_and_state(lab, node) -> None:
    rec = lab.view.pod("net-test")
    veth = rec["host_veth"]
    assert re.fullmatch(r"cali[0-9a-f]{11}", veth), f"ubuntu-3 host veth name: {veth!r}"
    (link,) = _ip(node("ubuntu-3"), "link", "show", veth)
    assert link["address"] == "ee:ee:ee:ee:ee:ee", f"ubuntu-3 {veth} MAC: {link['address']}"
    assert "UP" in link["flags"] and link["operstate"] == "UP", f"ubuntu-3 {veth}: {link['flags']}"
    (eth0,) = _ip(lab.pod("net-test"), "link", "show", "eth0")
    assert "UP" in eth0["flags"], f"net-test eth0: {eth0['flags']}"


def test_item2_host_veth_sysctls(lab, node) -> None:
    veth = lab.view.pod("net-test")["host_veth"]
    want = {f"net.ipv4.conf.{veth}.proxy_arp": "1", f"net.ipv4.neigh.{veth}.proxy_delay": "0",
            f"net.ipv4.conf.{veth}.forwarding": "1", f"net.ipv4.conf.{veth}.route_localnet": "1"}
    got = {k: read_sysctl(node("ubuntu-3"), k) for k in want}
    assert got == want


def test_item3_pod_address_and_routes(lab) -> None:
    ip = lab.view.pod("net-test")["ip"]
    (eth0,) = _ip(lab.pod("net-test"), "addr", "show", "eth0")
    v4 = [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"]
    assert v4 == [(ip, 32)], f"net-test eth0 IPv4: {v4}"
    assert_route(lab.pod("net-test"), {"dst": "169.254.1.1", "dev": "eth0", "scope": "link"})
    assert_route(lab.pod("net-test"), {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0"})


def test_exec_into_the_pod_shows_the_seed_routes(lab) -> None:
    out = subprocess.run([sys.executable, "-m", "labnet.cli", "exec", "-l", lab.name, "ubuntu-3/net-test", "--",
                          "ip", "route"],
                         capture_output=True, text=True, check=True).stdout
    assert "default via 169.254.1.1 dev eth0" in out, out
    assert "169.254.1.1 dev eth0 scope link" in out, out


def test_item4_node_route_to_the_pod(lab, node) -> None:
    rec = lab.view.pod("net-test")
    assert_route(node("ubuntu-3"), {"dst": rec["ip"], "dev": rec["host_veth"], "scope": "link"})


def test_item5_cni_result_shape(lab, node) -> None:
    record = invoke.read_record(node("ubuntu-3"), "net-test")
    assert record is not None
    result = record["result"]
    assert result["cniVersion"] == "1.0.0"
    host, cont = result["interfaces"]
    assert host["name"] == lab.view.pod("net-test")["host_veth"] and "sandbox" not in host
    assert cont["name"] == "eth0" and cont["sandbox"] == record["netns"]
    (ipc,) = result["ips"]
    assert ipc["interface"] == 1 and ipc["address"].endswith("/32") and "gateway" not in ipc


def test_item6_add_twice_same_ip_nothing_new(lab, node) -> None:
    n3 = node("ubuntu-3")
    before_links = {x["ifname"] for x in _ip(n3, "link")}
    first = invoke.read_record(n3, "net-test")["result"]  # type: ignore[index]
    again = invoke.add_pod(n3, "net-test", labels={"app": "net-test"}, lab=lab.name)
    assert again["ips"] == first["ips"], f"ADD twice on ubuntu-3: {first['ips']} then {again['ips']}"
    assert {x["ifname"] for x in _ip(n3, "link")} == before_links


def test_items9_tunnel_address_and_mtu(lab, node) -> None:
    for n in NODES:
        (block,) = lab.view.blocks(n)
        (tun,) = _ip(node(n), "addr", "show", "tunl0")
        addrs = [(a["local"], a["prefixlen"]) for a in tun["addr_info"] if a["family"] == "inet"]
        assert addrs == [(str(block.network_address), 32)], f"{n} tunl0: {addrs}, block {block}"
        assert tun["mtu"] == 1480, f"{n} tunl0 MTU: expected 1480 (1500 - 20), got {tun['mtu']}"


def test_items10_11_blackholes_and_tunnel_routes_everywhere(lab, node) -> None:
    blocks = {n: lab.view.blocks(n) for n in NODES}
    for n in NODES:
        for b in blocks[n]:
            assert b.prefixlen == 26 and b.subnet_of(ipaddress.IPv4Network("10.100.0.0/16"))
            assert_blackhole_route(node(n), str(b))
        for other in NODES:
            if other != n:
                for b in blocks[other]:
                    assert_tunnel_route(node(n), str(b), lab.address(other))


def test_item12_full_mesh_router_ids_and_passive_side(lab) -> None:
    for n in NODES:
        st = lab.view.agent_status(n)
        assert st["router_id"] == lab.address(n), f"{n} router id: {st['router_id']}"
        assert st["asn"] == 64512
        peers = {p["peer_address"]: p for p in st["peers"]}
        assert set(peers) == {lab.address(o) for o in NODES if o != n}, f"{n} peers: {sorted(peers)}"
        assert all(p["bgp_state"] == "Established" and p["peer_type"] == "node-to-node mesh"
                   for p in peers.values()), f"{n}: {peers}"


def test_pods_across_the_router_over_ipip(lab, node) -> None:
    dst = lab.address("net-test-2")
    assert_ping(lab.pod("net-test"), dst)
    gw = node("gw")
    cap = subprocess.Popen(gw.argv(["tcpdump", "-n", "-l", "-c", "1", "-i", "eth0", "ip proto 4"]),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        poll(lambda: (run(lab.pod("net-test"), ["ping", "-c1", "-W1", dst], check=False), cap.poll())[1],
             lambda rc: rc is not None, timeout=20, what="an IPIP packet on gw's lan-a interface")
        out = cap.stdout.read() if cap.stdout else ""
    finally:
        cap.kill()
    src_pod = lab.address("net-test")
    assert re.search(rf"IP 10\.20\.30\.73 > 192\.168\.50\.74: IP {re.escape(src_pod)} > {re.escape(dst)}", out), out


def test_item14_egress_is_nated(lab, node) -> None:
    ext = node("ext")
    assert_no_route(ext, "10.100.0.0/16")
    cap = subprocess.Popen(ext.argv(["tcpdump", "-n", "-l", "-c", "1", "-i", "eth0", "icmp[icmptype] = 8"]),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        poll(lambda: (run(lab.pod("net-test"), ["ping", "-c1", "-W1", "203.0.113.10"], check=False), cap.poll())[1],
             lambda rc: rc is not None, timeout=20, what="an echo request at ext")
        out = cap.stdout.read() if cap.stdout else ""
    finally:
        cap.kill()
    assert "IP 10.20.30.73 > 203.0.113.10" in out, f"ext should see ubuntu-3's address (SNAT): {out}"


def test_two_pods_on_one_node_and_pod_to_own_node(lab, node, pod_factory) -> None:
    a = pod_factory("ubuntu-5", "tmp-a")
    b = pod_factory("ubuntu-5", "tmp-b")
    assert a["ip"] != b["ip"]
    assert_ping(lab.pod("tmp-a"), b["ip"])
    assert_ping(lab.pod("tmp-b"), "192.168.50.75")


def test_item15_no_default_route_means_no_proxy_arp(lab, node) -> None:
    n3 = node("ubuntu-3")
    veth = lab.view.pod("net-test")["host_veth"]
    run(n3, ["ip", "route", "del", "default"])
    try:
        with pytest.raises(CheckFailed) as info:
            assert_proxy_arp(n3, lab.pod("net-test"), veth, timeout=2)
        assert "no default route" in str(info.value), str(info.value)
    finally:
        run(n3, ["ip", "route", "add", "default", "via", "10.20.30.1", "dev", "ens32"])
    assert_proxy_arp(n3, lab.pod("net-test"), veth)


def test_testinfra_sees_the_nodes_own_view(lab, labhost) -> None:
    h = labhost("ubuntu-3")
    (block,) = lab.view.blocks("ubuntu-3")
    assert h.interface("tunl0").addresses == [str(block.network_address)]
    veth = lab.view.pod("net-test")["host_veth"]
    assert h.sysctl(f"net.ipv4.conf.{veth}.proxy_arp") == 1
    conflist = h.file("/etc/cni/net.d/10-labnet.conflist")
    assert conflist.exists and conflist.mode == 0o600
    assert json.loads(conflist.content_string)["name"] == "k8s-pod-network"
    assert h.socket("tcp://0.0.0.0:179").is_listening
    p = labhost("ubuntu-3/net-test")
    assert p.interface("eth0").addresses[0] == lab.address("net-test")
