"""An IPv6-only LAN (a network with cidr6 alone): its machines have address6 and no IPv4
address; cluster nodes and BGP routers still need IPv4 (their identity)."""

from __future__ import annotations

import pytest

from labnet.errors import BadInput
from labnet.topology import loads
from labnet.topology.graph import to_dot

BASE = """\
name: v6only
networks:
  lan: {cidr: 10.20.30.0/24, cidr6: "fd00:20::/64"}
  wan6: {cidr6: "2001:db8:64::/64"}
routers:
  gw: {interfaces: [{network: lan, address: 10.20.30.1, address6: "fd00:20::1"}, {network: wan6, address6: "2001:db8:64::1"}]}
hosts:
  ext6: {interfaces: [{network: wan6, address6: "2001:db8:64::10"}], gateway6: "2001:db8:64::1"}
cluster:
  etcd: {node: n1}
  pools: [{cidr: 10.100.0.0/16}, {cidr: "fd00:100::/48"}]
  nodes:
    n1: {interfaces: [{network: lan, address: 10.20.30.11, address6: "fd00:20::11"}], gateway: 10.20.30.1}
"""


def test_an_ipv6_only_lan_with_its_machines() -> None:
    topo = loads(BASE, "t.yaml")
    ext6 = topo.hosts["ext6"].interfaces[0]
    assert ext6.address is None and topo.interface_cidr(ext6) is None
    assert str(topo.interface_cidr6(ext6)) == "2001:db8:64::10/64"
    assert str(topo.address_of("gw")) == "10.20.30.1"  # the first IPv4 address, wherever it is
    with pytest.raises(KeyError, match="no IPv4 address"):
        topo.address_of("ext6")
    assert '"ext6" -- "net:wan6" [label="eth0 ::10"]' in to_dot(topo)


@pytest.mark.parametrize("change,says", [
    ('{network: wan6, address6: "2001:db8:64::10"}', None),
    ('{network: wan6, address: 10.9.9.9, address6: "2001:db8:64::10"}', "is IPv6-only (it has no cidr)"),
    ('{network: wan6}', "has no address6 (the network is IPv6-only)"),
])
def test_an_ipv6_only_lan_takes_address6_only(change: str, says: str | None) -> None:
    text = BASE.replace('{network: wan6, address6: "2001:db8:64::10"}', change)
    if says is None:
        loads(text, "t.yaml")
        return
    with pytest.raises(BadInput) as err:
        loads(text, "t.yaml")
    assert says in str(err.value), str(err.value)


def test_nodes_and_bgp_routers_need_ipv4() -> None:
    text = BASE.replace('n1: {interfaces: [{network: lan, address: 10.20.30.11, address6: "fd00:20::11"}]',
                        'n1: {interfaces: [{network: wan6, address6: "2001:db8:64::11"}]')
    with pytest.raises(BadInput, match="no IPv4 address on its first interface"):
        loads(text, "t.yaml")
    bgp = BASE.replace("routers:\n", "routers:\n  r6: {interfaces: [{network: wan6, address6: \"2001:db8:64::2\"}], "
                       "bgp: {asn: 65000}}\n", 1)
    with pytest.raises(BadInput, match="no IPv4 address for its router id"):
        loads(bgp, "t.yaml")


def test_a_network_needs_some_prefix() -> None:
    with pytest.raises(BadInput, match="a network needs a cidr, a cidr6 or both"):
        loads(BASE.replace('wan6: {cidr6: "2001:db8:64::/64"}', "wan6: {mtu: 1500}"), "t.yaml")
