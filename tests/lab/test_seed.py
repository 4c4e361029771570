"""The seed lab, fully: every behaviour of the seed on the real thing (veths, routes, tunnel, BGP, IPAM, NAT, faults).

One lab for the module, built by labnet's own pytest plugin from topologies/seed.yaml
(under a test-only name, so a `make up` lab is never touched).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from _labtools import labnet

from labnet import paths
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
    # "the higher address is passive", seen in the kernel: of each pair's one BGP connection, the
    # :179 end (the one that accepted) is on the higher address; the lower one connected out.
    conns: dict[frozenset[str], list[tuple[str, str, str]]] = {}
    for n in NODES:
        for local, peer in _bgp_connections(lab.node(n)):
            (lip, lport), (pip, pport) = local.rsplit(":", 1), peer.rsplit(":", 1)
            assert "179" in (lport, pport), f"{n}: BGP connection {local} <-> {peer} has no :179 end"
            listener = lip if lport == "179" else pip
            conns.setdefault(frozenset((lip, pip)), []).append((n, f"{local} <-> {peer}", listener))
    addrs = {lab.address(n): n for n in NODES}
    for a, b in itertools.combinations(sorted(addrs, key=ipaddress.IPv4Address), 2):
        seen = conns.get(frozenset((a, b)), [])
        # each connection is seen once from each end; collision detection leaves one per pair
        assert len(seen) == 2, f"{addrs[a]} ({a}) / {addrs[b]} ({b}): expected one established BGP connection " \
                               f"(seen from both ends), got {seen}"
        for n, conn, listener in seen:
            assert listener == b, f"{n}: BGP connection {conn}: expected the higher address {b} ({addrs[b]}) " \
                                  f"on the :179 (passive) end, got {listener}"


def _bgp_connections(ns) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(local, peer) of every established TCP connection to or from port 179, from `ss` in the node."""
    out = run(ns, ["ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )"]).stdout
    return [(f[-2], f[-1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 2]


def test_routes_cli_json_and_table(lab) -> None:
    blocks = {n: lab.view.blocks(n) for n in NODES}
    res = labnet("routes", "ubuntu-3", "-l", lab.name, "--json")
    routes = json.loads(res.stdout)
    by_dst: dict[str, list[dict[str, Any]]] = {}
    for r in routes:
        by_dst.setdefault(r["dst"], []).append(r)
    (own,) = blocks["ubuntu-3"]
    got = by_dst.get(str(own), [])
    assert [(r["type"], r["protocol"]) for r in got] == [("blackhole", "bird")], \
        f"ubuntu-3 routes --json: expected blackhole {own} proto bird, got {got}"
    for other in NODES:
        if other == "ubuntu-3":
            continue
        for b in blocks[other]:
            got = by_dst.get(str(b), [])
            want = {"type": "unicast", "gateway": lab.address(other), "dev": "tunl0", "protocol": "bird",
                    "onlink": True}
            assert len(got) == 1 and {k: got[0].get(k) for k in want} == want, \
                f"ubuntu-3 routes --json: {other}'s block {b}: expected {want}, got {got}"
    kernel = {r["dst"] if "/" in r["dst"] or r["dst"] == "default" else f"{r['dst']}/32"
              for r in _ip(lab.node("ubuntu-3"), "route", "show", "table", "main")}
    cli = {"default" if r["dst"] == "0.0.0.0/0" else r["dst"] for r in routes}
    assert cli == kernel, f"ubuntu-3: routes --json destinations {sorted(cli)} != kernel's {sorted(kernel)}"
    table = labnet("routes", "ubuntu-3", "-l", lab.name).stdout
    for line in [f"blackhole {own}", *(f"{b} via {lab.address(o)} dev tunl0" for o in NODES if o != "ubuntu-3"
                                      for b in blocks[o])]:
        assert line in table, f"ubuntu-3 `labnet routes` table: no line with {line!r}:\n{table}"


def test_bgp_status_cli_prints_calicoctl_table(lab) -> None:
    out = labnet("bgp", "status", "ubuntu-3", "-l", lab.name).stdout
    lines = out.rstrip("\n").splitlines()  # calicoctl ends with a blank line too
    assert lines[0] == "IPv4 BGP status", f"ubuntu-3 bgp status: first line {lines[0]!r}:\n{out}"
    assert lines[-2:] == ["IPv6 BGP status", "No IPv6 peers found."], f"ubuntu-3 bgp status tail:\n{out}"
    table = [x for x in lines if x.startswith(("+", "|"))]
    border = table[0]
    assert re.fullmatch(r"(\+-+)+\+", border) and table[2] == table[-1] == border, f"ubuntu-3 table borders:\n{out}"
    assert all(len(x) == len(border) for x in table), f"ubuntu-3 table: ragged lines:\n{out}"
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in table if x.startswith("|")]
    assert cells[0] == ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], f"ubuntu-3 header: {cells[0]}"
    rows = {c[0]: c[1:] for c in cells[1:]}
    want_peers = {lab.address(o) for o in NODES if o != "ubuntu-3"}
    assert set(rows) == want_peers, f"ubuntu-3 bgp status peers: expected {sorted(want_peers)}, got {sorted(rows)}"
    for peer, (ptype, state, since, info) in rows.items():
        assert (ptype, state, info) == ("node-to-node mesh", "up", "Established"), \
            f"ubuntu-3 peer {peer}: expected node-to-node mesh | up | Established, got {ptype} | {state} | {info}"
        assert re.fullmatch(r"\d\d:\d\d:\d\d", since), f"ubuntu-3 peer {peer}: SINCE {since!r} is not HH:MM:SS"
    peers = json.loads(labnet("bgp", "status", "ubuntu-3", "-l", lab.name, "--json").stdout)
    assert {p["peer_address"] for p in peers} == want_peers, f"ubuntu-3 bgp status --json: {peers}"


def test_agent_logs_to_the_nodes_var_log(lab) -> None:
    for n in NODES:
        log = paths.node_dir(lab.name, n) / "var-log-labnet" / "agent.log"
        assert log.is_file() and log.stat().st_size > 0, \
            f"{n}: agent log {log} (the node's /var/log/labnet/agent.log): expected a non-empty file, " \
            f"exists={log.exists()}"
        text = log.read_text()
        want = f"node {n}: BGP address {lab.address(n)}"
        assert want in text, f"{n}: agent log {log} has no {want!r}; last lines: {text.splitlines()[-5:]}"
        inside = run(lab.node(n), ["wc", "-c", "/var/log/labnet/agent.log"]).stdout.split()[0]
        assert int(inside) > 0, f"{n}: /var/log/labnet/agent.log inside the node is empty"


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


def test_capture_writes_a_pcap_of_the_ipip_traffic(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`labnet capture NODE IFACE -w FILE FILTER`: the pcap lands on this host and holds the
    encapsulated packet as the seed's ubuntu-3 sends it (outer 10.20.30.73 -> 192.168.50.74)."""
    import struct

    out = tmp_path / "u3.pcap"
    cap = subprocess.Popen([sys.executable, "-m", "labnet.cli", "capture", "-l", lab.name, "ubuntu-3", "ens32",
                            "-w", str(out), "-c", "1", "-t", "30", "ip proto 4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dst = lab.address("net-test-2")
        poll(lambda: (run(lab.pod("net-test"), ["ping", "-c1", "-W1", dst], check=False), cap.poll())[1],
             lambda rc: rc is not None, timeout=30, what="labnet capture to see one IPIP packet on ubuntu-3 ens32")
    finally:
        cap.kill()
    _, err = cap.communicate()
    assert cap.returncode == 0 and f"wrote {out}" in err, f"labnet capture exited {cap.returncode}: {err}"
    data = out.read_bytes()
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), f"{out}: not a pcap file: {data[:24]!r}"
    caplen = struct.unpack_from("<I", data, 24 + 8)[0]
    frame = data[24 + 16:24 + 16 + caplen]
    ip = frame[14:]  # Ethernet
    outer = (ip[9], ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20])))
    inner = ip[(ip[0] & 0xF) * 4:]
    assert outer == (4, "10.20.30.73", "192.168.50.74"), f"ubuntu-3 ens32: expected IPIP 10.20.30.73 > " \
        f"192.168.50.74, captured proto/src/dst {outer}"
    assert ".".join(map(str, inner[16:20])) == dst, f"inner destination: expected {dst}, got {inner[16:20]!r}"
    bad = labnet("capture", "-l", lab.name, "ubuntu-3", "ens33", "-c", "1", check=False)
    assert bad.returncode == 2 and "no interface 'ens33'" in bad.stderr and "did you mean 'ens32'" in bad.stderr, \
        f"labnet capture on a missing interface: exit {bad.returncode}, {bad.stderr}"


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
