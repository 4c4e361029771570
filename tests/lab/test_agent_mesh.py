"""labnet-agent end to end: three nodes in a full iBGP mesh with IPIP always and nat_outgoing.

Sessions, blackholes, tunnel routes, tunl0 address and MTU, the NAT table, a ping through the
userspace tunnel, and withdrawal when an agent dies (graceful restart off).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from _agent_cluster import (
    HOLD,
    POOL,
    AgentNode,
    agents_running,
    borrow,
    established,
    exited,
    ip,
    route_to,
    setup_cluster,
    start_agent,
    status,
)

from labnet.checks.routes import Route, get_routes
from labnet.nsexec import pid_alive, run
from labnet.wait import poll


def tunnel_ping(src: AgentNode, dst: AgentNode) -> int:
    """Tunnel address to tunnel address: exercises the route and the tunnel both ways."""
    return run(src.ns, ["ping", "-c1", "-W1", "-I", src.tunnel_ip, dst.tunnel_ip], check=False).returncode


@pytest.fixture
def cluster(netns_factory: Any, tmp_path: Path) -> Any:
    nodes, url = setup_cluster(netns_factory, tmp_path)
    for node in nodes:
        start_agent(netns_factory, node, tmp_path)
    yield nodes
    for node in nodes:  # a clean stop: the agent removes its routes, tunl0 and NAT table
        if pid_alive(node.pid):
            os.kill(node.pid, signal.SIGTERM)
    for node in nodes:
        poll(partial(exited, node.pid), timeout=20, what=f"{node.name}: agent exited on SIGTERM")


def test_agent_mesh_routes_tunnel_nat_and_withdraw(cluster: list[AgentNode]) -> None:
    nodes = cluster
    with agents_running(nodes, stop=False):
        for node in nodes:
            # the sessions may come up a pass before the one that reports the node's block
            st = poll(partial(established, node, 2), lambda v: isinstance(v, dict) and bool(v["blocks"]), timeout=40,
                      what=f"{node.name}: 2 BGP sessions Established and its block in the status")
            assert st["nodename"] == node.name
            assert st["pid"] == node.pid, f"{node.name}: status pid {st['pid']}, spawned {node.pid}"
            assert st["bgp_address"] == f"{node.address}/24"
            assert {p["peer_type"] for p in st["peers"]} == {"node-to-node mesh"}
            assert st["blocks"] == [node.block]

        n1, n2, n3 = nodes
        for node in nodes:
            # own block: blackhole proto bird
            bh = poll(partial(route_to, node, node.block), lambda r: r is not None, timeout=20,
                      what=f"{node.name}: blackhole {node.block} proto bird")
            assert bh is not None and bh.type == "blackhole", f"{node.name}: expected blackhole, got {bh}"
            # every other node's block: via that node, dev tunl0, onlink
            for other in nodes:
                if other is node:
                    continue

                def tunnel_route(node: AgentNode = node, other: AgentNode = other) -> Route | None:
                    return route_to(node, other.block)

                r = poll(tunnel_route, lambda r: r is not None, timeout=20,
                         what=f"{node.name}: {other.block} via {other.address} dev tunl0 proto bird onlink")
                assert r is not None
                assert (str(r.gateway), r.dev, "onlink" in r.flags) == (other.address, "tunl0", True), \
                    f"{node.name}: expected {other.block} via {other.address} dev tunl0 onlink, got {r}"
            # tunl0: first address of the block as /32, MTU underlay - 20
            link = json.loads(ip(node.ns, "-j", "addr", "show", "dev", "tunl0"))[0]
            addrs = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
            first = str(ipaddress.IPv4Network(node.block).network_address)
            assert addrs == [(first, 32)], f"{node.name}: tunl0 addresses {addrs}, expected [({first}, 32)]"
            assert node.tunnel_ip == first
            assert link["mtu"] == 1480, f"{node.name}: tunl0 mtu {link['mtu']}, expected 1480"
            # nat_outgoing: the masquerade table
            nft = run(node.ns, ["nft", "list", "table", "ip", "labnet-nat"]).stdout
            assert f"ip saddr {POOL} ip daddr != {POOL}" in nft and "masquerade" in nft, nft

        # the datapath works: tunnel address to tunnel address through the userspace IPIP
        poll(partial(tunnel_ping, n1, n2), lambda rc: rc == 0, timeout=15,
             what=f"ping {n2.tunnel_ip} from {n1.name} over tunl0")

        # the agent owns exactly the proto-bird routes: a stray one goes, a deleted one comes back
        ip(n1.ns, "route", "add", "10.99.0.0/24", "via", n2.address, "dev", "eth0", "proto", "bird")
        ip(n1.ns, "route", "del", "blackhole", n1.block)
        poll(lambda: (route_to(n1, "10.99.0.0/24"), route_to(n1, n1.block)), lambda v: v[0] is None and v[1] is not None,
             timeout=15, what=f"{n1.name}: stray proto-bird route removed and own blackhole restored")

        # a pod of node-1 holds an address borrowed from node-2's block: node-1 originates the /32
        addr = borrow(n2, n1, 5)
        for node in (n2, n3):
            r = poll(partial(route_to, node, f"{addr}/32"), lambda r: r is not None, timeout=20,
                     what=f"{node.name}: {addr}/32 via {n1.address} dev tunl0 proto bird onlink (borrowed)")
            assert r is not None and (str(r.gateway), r.dev) == (n1.address, "tunl0"), f"{node.name}: got {r}"
        assert route_to(n2, n2.block) is not None  # the owner's blackhole stays; the /32 is more specific
        assert f"{addr}/32" in status(n1)["borrowed"]

        # kill node-3's agent (no graceful restart): the others withdraw its block within the hold time
        os.kill(n3.pid, signal.SIGKILL)
        for node in (n1, n2):
            poll(partial(route_to, node, n3.block), lambda r: r is None, timeout=HOLD * 4,
                 what=f"{node.name}: route to {n3.block} withdrawn after node-3's agent died")
            st = status(node)
            peer3 = next(p for p in st["peers"] if p["peer_address"] == n3.address)
            assert peer3["state"] == "start", f"{node.name}: peer {n3.address} still {peer3}"
            assert route_to(node, n1.block if node is n2 else n2.block) is not None


def test_agent_status_cli_prints_calicoctl_table(cluster: list[AgentNode]) -> None:
    n1 = cluster[0]
    poll(lambda: established(n1, 2), lambda v: isinstance(v, dict), timeout=40,
         what=f"{n1.name}: 2 BGP sessions Established")
    out = run(n1.ns, [sys.executable, "-m", "labnet.agent.main", "status", "--config", str(n1.config)]).stdout
    assert "IPv4 BGP status" in out
    assert "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |" in out
    assert "| 10.20.30.12  | node-to-node mesh | up    |" in out
    assert f"blackhole {n1.block} proto bird" in out


def test_vxlan_mode_programs_vteps_from_the_datastore(netns_factory: Any, tmp_path: Path) -> None:
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2, pool={"ipip": "never", "vxlan": "always"}, mesh="none")
    n1, n2 = nodes
    with agents_running(nodes):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        for node, other in ((n1, n2), (n2, n1)):
            st = poll(partial(status, node), lambda s: s["passes"] > 0 and s["tunnel"]["mode"] == "vxlan",
                      timeout=30, what=f"{node.name}: agent synced in vxlan mode")
            assert st["peers"] == [] and st["tunnel"]["device"] == "vxlan.calico"
            assert st["tunnel"]["mtu"] == 1450, st["tunnel"]
            poll(partial(route_to, node, node.block), lambda r: r is not None and r.type == "blackhole",
                 timeout=20, what=f"{node.name}: blackhole {node.block} proto bird")

            def vx(node: AgentNode = node, other: AgentNode = other) -> Any:
                want = ipaddress.IPv4Network(other.block)
                return next((r for r in get_routes(node.ns) if r.dst == want), None)

            r = poll(vx, lambda r: r is not None, timeout=20,
                     what=f"{node.name}: {other.block} via {other.tunnel_ip} dev vxlan.calico onlink")
            assert (str(r.gateway), r.dev, "onlink" in r.flags) == (other.tunnel_ip, "vxlan.calico", True), \
                f"{node.name}: expected {other.block} via {other.tunnel_ip} dev vxlan.calico onlink, got {r}"
        poll(partial(tunnel_ping, n1, n2), lambda rc: rc == 0, timeout=15,
             what=f"ping {n2.tunnel_ip} from {n1.name} over vxlan.calico")
    for node in nodes:  # agents_running sent SIGTERM: each agent removes its vxlan.calico
        poll(partial(exited, node.pid), timeout=20, what=f"{node.name}: agent exited")
    for node in nodes:
        assert run(node.ns, ["ip", "link", "show", "vxlan.calico"], check=False).returncode != 0, \
            f"{node.name}: vxlan.calico left behind after SIGTERM"


def test_route_reflector_replaces_the_mesh(netns_factory: Any, tmp_path: Path) -> None:
    nodes, _ = setup_cluster(netns_factory, tmp_path, 3, mesh="none", route_reflectors=["node-1"])
    rr, c2, c3 = nodes
    with agents_running(nodes):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        st = poll(lambda: established(rr, 2), lambda v: isinstance(v, dict), timeout=40,
                  what=f"{rr.name} (route reflector): sessions with both clients Established")
        assert {p["peer_type"] for p in st["peers"]} == {"node specific"}
        for client, other in ((c2, c3), (c3, c2)):
            cst = poll(partial(established, client, 1), lambda v: isinstance(v, dict), timeout=40,
                       what=f"{client.name}: session with the route reflector Established")
            assert [p["peer_address"] for p in cst["peers"]] == [rr.address], cst["peers"]
            # the reflected route keeps the originator's next hop
            r = poll(partial(route_to, client, other.block), lambda r: r is not None,
                     timeout=20, what=f"{client.name}: reflected route to {other.block} via {other.address}")
            assert r is not None and (str(r.gateway), r.dev) == (other.address, "tunl0"), f"{client.name}: {r}"


def test_missing_default_route_is_diagnosed(cluster: list[AgentNode]) -> None:
    """The seed's proxy-ARP requirement 2: without a route to 169.254.1.1 pods get no ARP answer."""
    n1 = cluster[0]

    def gateway_problems() -> list[str]:
        return [p for p in status(n1)["problems"] if "169.254.1.1" in p]

    got = poll(gateway_problems, timeout=20, what=f"{n1.name}: missing default route reported")
    assert "the node has no default route" in got[0], got
    ip(n1.ns, "route", "add", "default", "via", "10.20.30.1", "dev", "eth0")
    poll(gateway_problems, lambda p: p == [], timeout=20,
         what=f"{n1.name}: the problem clears once the node has a default route")


def test_cross_subnet_tunnels_only_between_subnets(netns_factory: Any, tmp_path: Path) -> None:
    # the seed's layout: two nodes on 10.20.30.0/24, one behind the router on 192.168.50.0/24
    nodes, _ = setup_cluster(netns_factory, tmp_path, 3, pool={"ipip": "cross-subnet"},
                             addresses=["10.20.30.73", "10.20.30.72", "192.168.50.74"])
    n3, n2, n4 = nodes
    with agents_running(nodes):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        want = [  # (node, peer, device of the route to the peer's block)
            (n3, n2, "eth0"), (n2, n3, "eth0"),
            (n3, n4, "tunl0"), (n4, n3, "tunl0"), (n2, n4, "tunl0"), (n4, n2, "tunl0"),
        ]
        for node, peer, dev in want:
            r = poll(partial(route_to, node, peer.block), lambda r: r is not None, timeout=40,
                     what=f"{node.name}: route to {peer.name}'s block {peer.block}")
            assert r is not None
            got = (str(r.gateway), r.dev, "onlink" in r.flags)
            assert got == (peer.address, dev, dev == "tunl0"), \
                f"{node.name}: {peer.block} expected via {peer.address} dev {dev}, got {r}"
        # both kinds of path carry traffic: tunnel address to tunnel address
        for src, dst in ((n3, n2), (n3, n4)):
            poll(partial(tunnel_ping, src, dst), lambda rc: rc == 0, timeout=15,
                 what=f"ping {dst.name} {dst.tunnel_ip} from {src.name}")
        assert not [p for p in status(n3)["problems"] if "169.254.1.1" in p]  # it has a default route
