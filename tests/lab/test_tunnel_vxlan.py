"""vxlan.calico between two Calico-style nodes (labnet/testing/tunnel_testbed.py), programmed from a VTEP list."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from labnet.agent.tunnel.vxlan import Vtep, ensure_vxlan, remove_vxlan, sync_vxlan, vtep_mac
from labnet.nsexec import pid_alive, run, spawn
from labnet.testing import tunnel_testbed as tb
from labnet.wait import poll

GHOST = Vtep("ubuntu-5", "192.168.50.75", "10.100.138.192", vtep_mac("ubuntu-5"), ("10.100.138.192/26",))


def vteps(bed: tb.Testbed, macs: dict[str, str]) -> list[Vtep]:
    return [Vtep(n.name, n.underlay_ip, n.tunnel_ip, macs[n.name], (str(n.block),)) for n in bed.nodes]


def jq(ns: Any, *cmd: str) -> list[dict[str, Any]]:
    out = run(ns, list(cmd)).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture
def bed(netns_factory: Any) -> tuple[tb.Testbed, dict[str, str]]:
    bed = tb.build(netns_factory)
    macs = {n.name: ensure_vxlan(n.underlay_ip, n.tunnel_ip, mac=vtep_mac(n.name), netns=n.ns.netns)
            for n in bed.nodes}
    for n in bed.nodes:
        sync_vxlan(vteps(bed, macs), netns=n.ns.netns)  # the whole list: each node skips itself
    return bed, macs


def test_vxlan_device_matches_calico(bed: tuple[tb.Testbed, dict[str, str]]) -> None:
    testbed, macs = bed
    for n in testbed.nodes:
        [link] = jq(n.ns, "ip", "-j", "-d", "addr", "show", "dev", "vxlan.calico")
        info = link["linkinfo"]["info_data"]
        got = (info["id"], info["port"], info["local"], info.get("learning"), link["mtu"], link["address"])
        want = (4096, 4789, n.underlay_ip, False, 1450, macs[n.name])
        assert got == want, f"{n.name}: vxlan.calico (vni, port, local, learning, mtu, mac) expected {want}, got {got}"
        addrs = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
        assert addrs == [(n.tunnel_ip, 32)], f"{n.name}: vxlan.calico addresses {addrs}"
        peer = testbed.peer(n)
        routes = tb.ip(n.ns, "route", "show", str(peer.block))
        want_r = f"{peer.block} via {peer.tunnel_ip} dev vxlan.calico proto 80 onlink"
        assert want_r in routes, f"{n.name}: expected `{want_r}`, got `{routes.strip()}`"


def test_vxlan_pod_to_pod(bed: tuple[tb.Testbed, dict[str, str]], tmp_path: Path, netns_factory: Any) -> None:
    testbed, _ = bed
    a, b = testbed.a, testbed.b
    tb.wait_ping(a.pod, b.pod_ip)
    log = tmp_path / "vxlan.txt"
    pid = netns_factory.track_pid(spawn(a.ns, ["tcpdump", "-n", "-l", "-c", "1", "-i", tb.UNDERLAY_IF,
                                               "udp", "port", "4789"], log=log))
    poll(lambda: log.read_text(), lambda t: "listening on" in t, timeout=10, what=f"{a.name}: tcpdump listening")
    rc, out = tb.ping(a.pod, b.pod_ip)
    assert rc == 0, f"{a.pod.name}: ping {b.pod_ip} over vxlan failed: {out}"
    poll(lambda: not pid_alive(pid), timeout=10, what=f"{a.name}: tcpdump saw a VXLAN packet")
    text = log.read_text()
    assert re.search(rf"IP {a.underlay_ip}\.\d+ > {b.underlay_ip}\.4789: VXLAN.*vni 4096", text), text
    assert f"IP {a.pod_ip} > {b.pod_ip}: ICMP echo request" in text, text


def test_vxlan_sync_is_idempotent_and_removes_stale(bed: tuple[tb.Testbed, dict[str, str]]) -> None:
    testbed, macs = bed
    a = testbed.a
    full = [*vteps(testbed, macs), GHOST]
    first = sync_vxlan(full, netns=a.ns.netns)
    assert len(first.added) == 3 and not first.removed, f"{a.name}: {first}"
    again = sync_vxlan(full, netns=a.ns.netns)
    assert not again.added and not again.removed, f"{a.name}: a repeated sync changed {again}"

    def state() -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str]]]:
        fdb = {(e["mac"], e["dst"]) for e in jq(a.ns, "bridge", "-j", "fdb", "show", "dev", "vxlan.calico")
               if "dst" in e}
        neigh = {(e["dst"], e["lladdr"]) for e in jq(a.ns, "ip", "-j", "neigh", "show", "dev", "vxlan.calico")}
        routes = {(e["dst"], e["gateway"]) for e in jq(a.ns, "ip", "-j", "route", "show", "dev", "vxlan.calico",
                                                       "proto", "80")}
        return fdb, neigh, routes

    fdb, neigh, routes = state()
    assert (GHOST.mac, GHOST.underlay_ip) in fdb and (GHOST.tunnel_ip, GHOST.mac) in neigh
    assert ("10.100.138.192/26", GHOST.tunnel_ip) in routes
    removed = sync_vxlan(vteps(testbed, macs), netns=a.ns.netns)
    assert sorted(removed.removed) == sorted([
        f"fdb {GHOST.mac} dst {GHOST.underlay_ip}", f"neigh {GHOST.tunnel_ip} lladdr {GHOST.mac}",
        f"route 10.100.138.192/26 via {GHOST.tunnel_ip}",
    ]) and not removed.added, f"{a.name}: {removed}"
    b = testbed.b
    want = ({(macs[b.name], b.underlay_ip)}, {(b.tunnel_ip, macs[b.name])}, {(str(b.block), b.tunnel_ip)})
    assert state() == want, f"{a.name}: after removing {GHOST.node} expected {want}, got {state()}"
    tb.wait_ping(a.pod, b.pod_ip)  # the remaining peer still works


def test_ensure_vxlan_again_changes_nothing(bed: tuple[tb.Testbed, dict[str, str]]) -> None:
    testbed, macs = bed
    a, b = testbed.a, testbed.b
    before = tb.ip(a.ns, "neigh", "show", "dev", "vxlan.calico"), tb.ip(a.ns, "route")
    assert ensure_vxlan(a.underlay_ip, a.tunnel_ip, mac=macs[a.name], netns=a.ns.netns) == macs[a.name]
    after = tb.ip(a.ns, "neigh", "show", "dev", "vxlan.calico"), tb.ip(a.ns, "route")
    assert after == before, f"{a.name}: a repeated ensure_vxlan changed neighbours/routes: {before} -> {after}"
    tb.wait_ping(a.pod, b.pod_ip)


def test_vxlan_remove(bed: tuple[tb.Testbed, dict[str, str]]) -> None:
    testbed, _ = bed
    a = testbed.a
    assert remove_vxlan(netns=a.ns.netns) is True
    assert tb.link_json(a.ns, "vxlan.calico") is None and "vxlan.calico" not in tb.ip(a.ns, "route")
    assert remove_vxlan(netns=a.ns.netns) is False
