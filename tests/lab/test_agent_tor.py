"""labnet-agent peering eBGP with a top-of-rack BIRD 2 (Calico's "AS per compute server", IPIP never).

The ToR (10.20.30.1, AS 65000) sits in the LAN's namespace; each node has its own AS and no
node-to-node mesh, so every pod route reaches the other node through the ToR, next hop the ToR.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from _agent_cluster import (
    agents_running,
    established,
    ip,
    route_to,
    setup_cluster,
    start_agent,
    status,
)

from labnet.nsexec import NodeNS, run, spawn
from labnet.wait import poll

TOR = "10.20.30.1"
BIRD_CONFIG = f"""
log stderr all;
router id {TOR};
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; interface "br0"; }}   # the ToR also advertises the rack LAN itself
template bgp node {{
  local {TOR} as 65000;
  hold time 6; keepalive time 2; connect delay time 1; connect retry time 1; error wait time 1, 3;
  ipv4 {{ import all; export all; next hop self; }};
}}
protocol bgp node1 from node {{ neighbor 10.20.30.11 as 64601; }}
protocol bgp node2 from node {{ neighbor 10.20.30.12 as 64602; }}
"""


def start_tor(netns_factory: Any, lan: NodeNS, tmp: Path) -> Path:
    ip(lan, "addr", "add", f"{TOR}/24", "dev", "br0")
    conf, sock = tmp / "bird.conf", tmp / "bird.ctl"
    conf.write_text(BIRD_CONFIG)
    run(None, ["/usr/sbin/bird", "-p", "-c", str(conf)])
    netns_factory.track_pid(spawn(lan, ["/usr/sbin/bird", "-f", "-c", str(conf), "-s", str(sock),
                                        "-P", str(tmp / "bird.pid")], log=tmp / "bird.log"))
    poll(lambda: run(None, ["birdc", "-s", str(sock), "show", "status"], check=False).stdout,
         lambda out: "Daemon is up" in out, timeout=10, what=f"BIRD (ToR) answering on {sock}")
    return sock


def test_agents_peer_ebgp_with_a_bird_tor_and_route_via_it(netns_factory: Any, tmp_path: Path) -> None:
    nodes, _ = setup_cluster(netns_factory, tmp_path, 2, pool={"ipip": "never", "nat_outgoing": False},
                             mesh="none", peers=[{"address": TOR, "asn": 65000}],
                             node_asn={"node-1": 64601, "node-2": 64602})
    n1, n2 = nodes
    lan = next(NodeNS(name, f"/run/netns/{name}") for name in netns_factory.made if name.endswith("-lan"))
    sock = start_tor(netns_factory, lan, tmp_path)
    with agents_running(nodes, tmp_path / "bird.log"):
        for node in nodes:
            start_agent(netns_factory, node, tmp_path)
        for node, other, asn in ((n1, n2, 64601), (n2, n1, 64602)):
            st = poll(partial(established, node, 1), lambda v: isinstance(v, dict), timeout=40,
                      what=f"{node.name}: eBGP session with the ToR {TOR} Established")
            assert st["asn"] == asn
            assert [(p["peer_address"], p["peer_type"]) for p in st["peers"]] == [(TOR, "global")]
            r = poll(partial(route_to, node, other.block), lambda r: r is not None,
                     timeout=20, what=f"{node.name}: {other.block} via {TOR} dev eth0 proto bird (from the ToR)")
            assert r is not None and (str(r.gateway), r.dev, "onlink" in r.flags) == (TOR, "eth0", False), \
                f"{node.name}: expected {other.block} via {TOR} dev eth0 proto bird, got {r}"
            assert run(node.ns, ["ip", "link", "show", "tunl0"], check=False).returncode != 0, "tunl0 in ipip never"
            # the LAN's own prefix, learned from the ToR, stays with the connected route: no fault
            st = poll(partial(status, node), lambda s: s["routes_skipped"], timeout=20,
                      what=f"{node.name}: ToR's 10.20.30.0/24 seen and left to the connected route")
            assert "10.20.30.0/24 via 10.20.30.1 dev eth0 proto bird" in st["routes_skipped"][0], st["routes_skipped"]
            assert [p for p in st["problems"] if "10.20.30.0/24" in p] == [], st["problems"]
        shown = run(None, ["birdc", "-s", str(sock), "show", "route"]).stdout
        assert n1.block in shown and n2.block in shown, f"BIRD's table lacks a node block:\n{shown}"
