"""Every ready lab in topologies/ comes up and passes its own scenarios; interop with BIRD
(tor-bird), FRR (tor-frr) and GoBGP (rr-gobgp), seen from both sides; and IPv6 unicast with
BIRD and FRR (dual-stack-tor)."""

from __future__ import annotations

import json
import re

import pytest
from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

LABS = ["minimal", "cross-subnet", "vxlan", "route-reflectors", "tor-bird", "two-labs-b", "policy", "tor-frr",
        "rr-gobgp", "dual-stack", "dual-stack-tor"]


@pytest.mark.parametrize("topology", LABS)
def test_ready_lab_passes_its_scenarios(topology: str) -> None:
    name = f"t-{topology}"[:20]
    f = str(TOPOLOGIES / f"{topology}.yaml")
    before = snapshot(name)
    labnet("up", f, "--name", name, "-q")
    try:
        res = labnet("check", f, "-l", name, "--json", check=False)
        results = json.loads(res.stdout)["results"]
        bad = [r for r in results if not r["ok"]]
        assert res.returncode == 0 and not bad, "\n\n".join(r["message"] for r in bad) or res.stderr
        assert results, f"{topology} has no checks"
        interop = {"tor-bird": _bird_interop, "tor-frr": _frr_interop, "rr-gobgp": _gobgp_interop,
                   "dual-stack-tor": _ipv6_interop}.get(topology)
        if interop is not None:
            interop(name)
    finally:
        labnet("down", "--name", name, check=False)
    assert not snapshot(name).leftovers(before)


def _bird_interop(lab: str) -> None:
    """BIRD (Debian's bird2) and labnet's own speaker agree: sessions up, every block in BIRD's table."""
    protocols = lab_exec(lab, "tor", "birdc", "show", "protocols").stdout
    for node in ("node-1", "node-2", "node-3"):
        row = next((ln for ln in protocols.splitlines() if ln.startswith("n_" + node.replace("-", "_"))), "")
        assert "Established" in row, f"BIRD on tor: session with {node}: {row!r}\n{protocols}"
    table = lab_exec(lab, "tor", "birdc", "show", "route").stdout
    for node in ("node-1", "node-2", "node-3"):
        peers = json.loads(labnet("bgp", "status", node, "-l", lab, "--json").stdout)
        assert [p["bgp_state"] for p in peers] == ["Established"], f"labnet on {node}: {peers}"
    blocks = json.loads(labnet("etcd", "-l", lab, "ls", "/labnet/calico/ipam/v2/host/", "--json").stdout)
    cidrs = {kv["key"].rsplit("/", 1)[1].replace("-", "/") for kv in blocks}
    assert cidrs, f"no block affinities in etcd: {blocks}"
    for cidr in cidrs:
        assert cidr in table, f"BIRD's table on tor lacks block {cidr}:\n{table}"


def _blocks(lab: str) -> dict[str, str]:
    """Every node's blocks (cidr -> node), from the block affinities in etcd."""
    rows = json.loads(labnet("etcd", "-l", lab, "ls", "/labnet/calico/ipam/v2/host/", "--json").stdout)
    # keys: .../ipam/v2/host/<node>/ipv4/block/<cidr with - for />
    out = {kv["key"].rsplit("/", 1)[1].replace("-", "/"): kv["key"].split("/host/", 1)[1].split("/")[0] for kv in rows}
    assert out, f"{lab}: no block affinities in etcd: {rows}"
    return out


def _node_addresses(lab: str, key: str = "address") -> dict[str, str]:
    machines = json.loads(labnet("status", "-l", lab, "--json").stdout)[0]["machines"]
    return {m: info["interfaces"][0][key].split("/")[0] for m, info in machines.items() if info["kind"] == "node"}


def _ipv6_interop(lab: str) -> None:
    """IPv6 unicast (RFC 4760) with BIRD 2 and FRR, both eBGP: BIRD over one IPv6 session per
    node, FRR over the IPv4 one; each has every node's IPv6 blocks with that node's IPv6 address
    as next hop, and the nodes route the other rack's blocks via the ToR."""
    addr6 = _node_addresses(lab, "address6")
    asn = {"a-1": 64601, "a-2": 64602, "b-1": 64603, "b-2": 64604}
    blocks6 = {c: n for c, n in _blocks(lab).items() if ":" in c}
    assert sorted(set(blocks6.values())) == sorted(addr6), f"IPv6 blocks per node: {blocks6}"
    protocols = lab_exec(lab, "tor", "birdc", "show", "protocols").stdout
    for node in addr6:
        for suffix in ("", "_6"):
            row = next((ln for ln in protocols.splitlines() if ln.split()[:1] == ["n_" + node.replace("-", "_") + suffix]),
                       "")
            assert "Established" in row, f"BIRD on tor: session n_{node}{suffix}: {row!r}\n{protocols}"
    for cidr, node in blocks6.items():
        shown = lab_exec(lab, "tor", "birdc", "show", "route", "table", "master6", "for", cidr, "all").stdout
        assert cidr in shown and f"via {addr6[node]} on" in shown, \
            f"BIRD's master6 on tor: {cidr} (block of {node}) expected via {addr6[node]}:\n{shown}"
        # on-link: the global next hop and the node's link-local one beside it (RFC 2545 3)
        assert re.search(rf"BGP.next_hop: {re.escape(addr6[node])} fe80:", shown), \
            f"BIRD on tor: {cidr} should carry {node}'s link-local next hop too:\n{shown}"
    vtysh = ["vtysh", "--vty_socket", "/var/run/frr", "-c"]
    summary = json.loads(lab_exec(lab, "frr", *vtysh, "show bgp ipv6 unicast summary json").stdout)["peers"]
    table = json.loads(lab_exec(lab, "frr", *vtysh, "show bgp ipv6 unicast json").stdout)["routes"]
    for node, v4 in _node_addresses(lab).items():
        assert summary.get(v4, {}).get("state") == "Established", f"FRR: IPv6 unicast with {node} ({v4}): {summary.get(v4)}"
    for cidr, node in blocks6.items():
        own = [p for p in table.get(cidr, []) if p.get("path") == str(asn[node])]
        hops = [h["ip"] for p in own for h in p.get("nexthops", []) if h.get("scope", "global") == "global"]
        assert hops == [addr6[node]], f"FRR's IPv6 table: {cidr} (block of {node}) next hops {hops}, expected " \
                                      f"[{addr6[node]}]; paths {table.get(cidr)}"


def _frr_interop(lab: str) -> None:
    """FRR (Debian's frr, AS 4200000001) and labnet: sessions Established on both sides, every
    node's blocks in bgpd's table with that node as next hop, and in the ToR's kernel via zebra."""
    vtysh = ["vtysh", "--vty_socket", "/var/run/frr", "-c"]
    summary = json.loads(lab_exec(lab, "tor", *vtysh, "show bgp ipv4 unicast summary json").stdout)
    peers = summary["peers"]
    addrs = _node_addresses(lab)
    for node, addr in addrs.items():
        assert peers.get(addr, {}).get("state") == "Established", f"FRR on tor: session with {node}: {peers.get(addr)}"
        mine = json.loads(labnet("bgp", "status", node, "-l", lab, "--json").stdout)
        assert [(p["bgp_state"], p["asn"]) for p in mine] == [("Established", 4200000001)], f"labnet on {node}: {mine}"
    table = json.loads(lab_exec(lab, "tor", *vtysh, "show bgp ipv4 unicast json").stdout)["routes"]
    kernel = lab_exec(lab, "tor", "ip", "route").stdout
    for cidr, node in _blocks(lab).items():
        hops = [h["ip"] for path in table.get(cidr, []) for h in path.get("nexthops", [])]
        assert hops == [addrs[node]], f"FRR's table on tor: {cidr} (block of {node}) next hops {hops}, " \
                                      f"expected [{addrs[node]}]"
        assert f"{cidr} nhid" in kernel or f"{cidr} via {addrs[node]}" in kernel, f"tor's kernel lacks {cidr}:\n{kernel}"


def _gobgp_interop(lab: str) -> None:
    """GoBGP (Debian's gobgpd) as route reflector: every client Established on both sides, and every
    node's blocks in its RIB with that node's address kept as next hop (iBGP reflection)."""
    neighbors = json.loads(lab_exec(lab, "rr", "gobgp", "neighbor", "-j").stdout)
    state = {n["state"]["neighbor_address"]: n["state"]["session_state"] for n in neighbors}
    addrs = _node_addresses(lab)
    for node, addr in addrs.items():
        assert state.get(addr) == 6, f"GoBGP on rr: session with {node} {addr}: state {state.get(addr)} (6: established)"
        mine = json.loads(labnet("bgp", "status", node, "-l", lab, "--json").stdout)
        assert [p["bgp_state"] for p in mine] == ["Established"], f"labnet on {node}: {mine}"
    rib = json.loads(lab_exec(lab, "rr", "gobgp", "global", "rib", "-j").stdout)
    for cidr, node in _blocks(lab).items():
        hops = [a.get("nexthop") for p in rib.get(cidr, []) for a in p.get("attrs", []) if a.get("nexthop")]
        assert hops == [addrs[node]], f"GoBGP's RIB on rr: {cidr} (block of {node}) next hops {hops}, " \
                                      f"expected [{addrs[node]}]; RIB: {sorted(rib)}"
