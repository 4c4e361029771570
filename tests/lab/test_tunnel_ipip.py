"""The userspace IPIP tunl0 between two Calico-style nodes behind a router (see labnet/testing/tunnel_testbed.py).

Each node runs `python -m labnet.agent.tunnel.ipip_user` in its namespace; the block routes are
installed the way BIRD does (`via <node> dev tunl0 proto bird onlink`) after the datapath is up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labnet.agent.tunnel.detect import ipip_mode, kernel_has_ipip
from labnet.nsexec import NodeNS, pid_alive, run, spawn
from labnet.testing import tunnel_testbed as tb
from labnet.wait import poll


@pytest.fixture
def bed(netns_factory: Any, tmp_path: Path) -> tb.Testbed:
    bed = tb.build(netns_factory)
    for node in bed.nodes:
        tb.start_ipip(node, tmp_path, netns_factory.track_pid)
    tb.add_tunnel_routes(bed)
    return bed


def status(tmp_path: Path, node: tb.Node) -> dict[str, Any]:
    return json.loads((tmp_path / f"{node.name}-ipip.json").read_text())


def wait_status(tmp_path: Path, node: tb.Node, ok: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    # the datapath rewrites its status file every second; SIGUSR1 asks for it now
    def probe() -> dict[str, Any]:
        os.kill(node.pids[0], signal.SIGUSR1)
        return status(tmp_path, node)

    return poll(probe, ok, timeout=10, what=f"{node.name}: {what}")


def start_capture(ns: NodeNS, log: Path, count: int, track_pid: Callable[[int], int], flt: list[str]) -> int:
    pid = track_pid(spawn(ns, ["tcpdump", "-n", "-l", "-c", str(count), "-i", tb.UNDERLAY_IF, *flt], log=log))
    poll(lambda: log.read_text(), lambda t: "listening on" in t, timeout=10, what=f"{ns.name}: tcpdump listening")
    return pid


def test_tunl0_matches_the_seed(bed: tb.Testbed, tmp_path: Path) -> None:
    """Checklist 9 and 11: tunl0 has the block's first address /32 and MTU underlay - 20."""
    for node in bed.nodes:
        link = tb.link_json(node.ns, "tunl0")
        assert link is not None, f"{node.name}: no tunl0"
        assert link["mtu"] == 1480, f"{node.name}: tunl0 mtu expected 1480 (1500 - 20), got {link['mtu']}"
        addrs = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
        assert addrs == [(node.tunnel_ip, 32)], f"{node.name}: tunl0 addresses expected {node.tunnel_ip}/32, got {addrs}"
        peer = bed.peer(node)
        routes = tb.ip(node.ns, "route", "show", str(peer.block))
        want = f"{peer.block} via {peer.underlay_ip} dev tunl0 proto bird onlink"
        assert want in routes, f"{node.name}: expected route `{want}`, got `{routes.strip()}`"
        block = str(peer.block)
        st = wait_status(tmp_path, node, lambda s: block in s["routes"], "route mirrored")  # noqa: B023
        assert st["routes"] == {str(peer.block): peer.underlay_ip}, f"{node.name}: mirrored routes {st['routes']}"


def test_pod_to_pod_ping_is_real_ipip_on_the_wire(bed: tb.Testbed, tmp_path: Path, netns_factory: Any) -> None:
    a, b = bed.a, bed.b
    tb.wait_ping(a.pod, b.pod_ip)  # first contact: proxy-ARP for 169.254.1.1 etc.
    cap = tmp_path / "underlay.txt"
    pid = start_capture(a.ns, cap, 2, netns_factory.track_pid, ["ip", "proto", "4"])
    rc, out = tb.ping(a.pod, b.pod_ip)
    assert rc == 0, f"{a.pod.name}: ping {b.pod_ip} failed: {out}"
    poll(lambda: not pid_alive(pid), timeout=10, what=f"{a.name}: tcpdump got 2 IPIP packets; log: {cap}")
    text = cap.read_text()
    # the seed's picture: outer node addresses, inner pod addresses
    assert re.search(rf"IP {a.underlay_ip} > {b.underlay_ip}: IP {a.pod_ip} > {b.pod_ip}: ICMP echo request", text), text
    assert re.search(rf"IP {b.underlay_ip} > {a.underlay_ip}: IP {b.pod_ip} > {a.pod_ip}: ICMP echo reply", text), text
    c = wait_status(tmp_path, a, lambda s: s["counters"]["rx_packets"] >= 2, "counters")["counters"]
    assert c["tx_packets"] >= 2 and c["tx_bytes"] >= 2 * 84, f"{a.name}: counters {c}"
    assert c["rx_dropped_bad"] == c["tx_dropped_bad"] == c["tx_errors"] == 0, f"{a.name}: counters {c}"


def test_mtu_df_and_unreachable(bed: tb.Testbed, tmp_path: Path) -> None:
    a, b = bed.a, bed.b
    tb.wait_ping(a.pod, b.pod_ip)
    # 1472 + 28 = 1500 > tunl0 MTU 1480: the node answers with fragmentation needed, mtu 1480
    rc, out = tb.ping(a.pod, b.pod_ip, "-M", "do", "-s", "1472")
    assert rc != 0 and re.search(r"Frag needed.*mtu = 1480", out), f"{a.pod.name}: expected Frag needed mtu 1480: {out}"
    rc, out = tb.ping(a.pod, b.pod_ip, "-M", "do", "-s", "1452")
    assert rc == 0, f"{a.pod.name}: a 1480-byte DF packet must pass: {out}"
    # With tunl0's MTU raised past what the underlay carries, the datapath itself holds the line.
    tb.ip(a.ns, "link", "set", "tunl0", "mtu", "1500")
    tb.ip(a.pod, "route", "flush", "cache")  # forget the PMTU 1480 the pod just learned
    rc, out = tb.ping(a.pod, b.pod_ip, "-M", "do", "-s", "1472")
    assert re.search(rf"From {a.tunnel_ip} .*Frag needed.*mtu = 1480", out), f"{a.pod.name}: {out}"
    # Packets routed into tunl0 with no route in the main table: dropped, counted, net unreachable.
    tb.ip(a.ns, "route", "add", "10.100.99.0/24", "dev", "tunl0", "table", "100")
    tb.ip(a.ns, "rule", "add", "to", "10.100.99.0/24", "table", "100")
    rc, out = tb.ping(a.pod, "10.100.99.1")
    assert rc != 0 and "Destination Net Unreachable" in out, f"{a.pod.name}: {out}"
    c = wait_status(tmp_path, a, lambda s: s["counters"]["tx_dropped_no_route"] >= 1, "no-route drop counted")
    assert c["counters"]["tx_dropped_too_big"] >= 1, f"{a.name}: counters {c['counters']}"


def test_route_monitor_follows_hand_edits(bed: tb.Testbed, tmp_path: Path) -> None:
    a = bed.a
    tb.ip(a.ns, "route", "add", "10.100.243.0/26", "via", "10.20.30.72", "dev", "tunl0", "proto", "bird", "onlink")
    wait_status(tmp_path, a, lambda s: s["routes"].get("10.100.243.0/26") == "10.20.30.72", "hand-added route")
    tb.ip(a.ns, "route", "del", str(bed.b.block))
    st = wait_status(tmp_path, a, lambda s: str(bed.b.block) not in s["routes"], "deleted route gone")
    assert st["routes"] == {"10.100.243.0/26": "10.20.30.72"}, f"{a.name}: {st['routes']}"


def test_iperf3_over_the_tunnel(bed: tb.Testbed, tmp_path: Path, netns_factory: Any) -> None:
    a, b = bed.a, bed.b
    tb.wait_ping(a.pod, b.pod_ip)
    netns_factory.track_pid(spawn(b.pod, ["iperf3", "-s", "-1"], log=tmp_path / "iperf3-server.log"))
    poll(lambda: run(b.pod, ["ss", "-Hltn", "sport", "= :5201"]).stdout, timeout=10,
         what=f"{b.pod.name}: iperf3 listening on 5201")
    proc = run(a.pod, ["iperf3", "-J", "-t", "1", "-c", b.pod_ip], check=False, timeout=30)
    assert proc.returncode == 0, f"{a.pod.name}: iperf3 -c {b.pod_ip} failed: {proc.stdout[-2000:]} {proc.stderr}"
    bps = json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"]
    print(f"iperf3 pod-to-pod over userspace IPIP: {bps / 1e6:.0f} Mbit/s")
    assert bps > 0, f"{a.pod.name}: iperf3 moved no data"


def test_sigterm_removes_tunl0(bed: tb.Testbed, tmp_path: Path) -> None:
    a = bed.a
    pid = a.pids[0]
    os.kill(pid, signal.SIGTERM)
    poll(lambda: not pid_alive(pid), timeout=10, what=f"{a.name}: ipip datapath pid {pid} exits on SIGTERM")
    assert tb.link_json(a.ns, "tunl0") is None, f"{a.name}: tunl0 still present after SIGTERM"
    routes = tb.ip(a.ns, "route")
    assert "tunl0" not in routes and "blackhole" in routes, f"{a.name}: routes after SIGTERM: {routes}"
    assert "tunl0 removed" in (tmp_path / f"{a.name}-ipip.log").read_text()


def test_bad_local_address_is_a_clear_error(netns_factory: Any) -> None:
    ns = netns_factory("badlocal")
    proc = run(ns, [sys.executable, "-m", "labnet.agent.tunnel.ipip_user", "--local", "10.9.9.9",
                    "--address", "10.100.0.0"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "10.9.9.9 is not assigned to any interface" in proc.stderr
    assert tb.link_json(ns, "tunl0") is None, "no tunl0 left behind after a failed start"


def test_detect_leaves_nothing_behind(netns_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = netns_factory("detect")
    has = kernel_has_ipip(netns=ns.netns)
    assert isinstance(has, bool)
    assert "lnet-ipipprobe" not in tb.ip(ns, "link")
    monkeypatch.setenv("LABNET_IPIP", "userspace")
    assert ipip_mode(netns=ns.netns) == "userspace"
    monkeypatch.delenv("LABNET_IPIP")
    assert ipip_mode(netns=ns.netns) == ("kernel" if has else "userspace")


def test_in_process_api(netns_factory: Any) -> None:
    """start_ipip() as the agent calls it, inside the node namespace: threads, status, stop."""
    ns = netns_factory("inproc")
    tb.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    tb.ip(ns, "addr", "add", "10.20.30.73/24", "dev", "eth0")
    tb.ip(ns, "link", "set", "eth0", "up")
    code = (
        "import json\n"
        "from labnet.agent.tunnel import start_ipip\n"
        "from labnet.nsexec import run\n"
        "t = start_ipip('10.20.30.73', '10.100.163.128', mode='userspace')\n"
        "run(None, ['ip', 'route', 'add', '10.100.5.192/26', 'via', '192.168.50.74', 'dev', 'tunl0', 'onlink'])\n"
        "t.update_routes()\n"
        "s = t.status()\n"
        "try:\n"
        "    start_ipip('10.20.30.73', '10.100.163.128', mode='userspace')\n"
        "except Exception as exc:\n"
        "    s['second'] = str(exc)\n"
        "s['up_after_second'] = 'tunl0' in run(None, ['ip', 'link']).stdout\n"
        "t.stop()\n"
        "s['after'] = run(None, ['ip', 'link']).stdout\n"
        "print(json.dumps(s))\n"
    )
    s = json.loads(run(ns, [sys.executable, "-c", code]).stdout)
    assert (s["mode"], s["mtu"], s["address"]) == ("ipip-userspace", 1480, "10.100.163.128"), s
    assert s["routes"] == {"10.100.5.192/26": "192.168.50.74"}, s["routes"]
    assert "tunl0" not in s["after"], f"tunl0 left after stop(): {s['after']}"
    assert "already exists in this network namespace" in s.get("second", ""), f"second start_ipip: {s}"
    assert s["up_after_second"], "a failed second start must not remove the running tunl0"


def test_kernel_ipip_where_the_kernel_has_it(netns_factory: Any) -> None:
    """Kernel tunl0 where the module exists; elsewhere (this lab machine) a clear error."""
    from labnet.agent.tunnel.ipip_kernel import KernelIpip, KernelTunnelError

    ns = netns_factory("kipip")
    tb.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    tb.ip(ns, "addr", "add", "10.20.30.73/24", "dev", "eth0")
    k = KernelIpip("10.20.30.73", "10.100.163.128", netns=ns.netns)
    if not kernel_has_ipip(netns=ns.netns):
        with pytest.raises(KernelTunnelError, match="tunl0: cannot create the ipip device"):
            k.start()
        return
    k.start()
    link = tb.link_json(ns, "tunl0")
    assert link is not None and link["linkinfo"]["info_kind"] == "ipip", link
    assert link["mtu"] == 1480, link
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.100.163.128"], link
    k.stop()
