"""The one cluster-settings type: topology → settings → JSON (etcd) → settings, every field, and
the same meaning of an unset field for the topology, the agent, the CNI plugin and doctor."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from labnet.cni import settings as cni_settings
from labnet.diagnose.rules import Doctor
from labnet.errors import BadInput
from labnet.etcd import keys
from labnet.etcd.settings import decode_cluster_config
from labnet.etcd.store import KV
from labnet.nsexec import NodeNS
from labnet.settings import BgpSettings, ClusterSettings, PeerSettings, PoolSettings
from labnet.topology import loads
from labnet.topology.model import BgpPeer, BgpSpec, PoolSpec

# Every settings field set to something other than its default.
EVERYTHING = """\
name: s
networks:
  lan: {cidr: 10.20.30.0/24, cidr6: "fd00:20::/64"}
routers:
  gw: {interfaces: [{network: lan, address: 10.20.30.1}], bgp: {asn: 65002, peers: [n2]}}
cluster:
  etcd: {node: n1}
  pools:
    - {cidr: 10.77.0.0/16, block_size: 28, ipip: cross-subnet, vxlan: never, nat_outgoing: false}
    - {cidr: "fd00:77::/64", block_size: 120, vxlan: cross-subnet, nat_outgoing: false}
  mtu: 1400
  bgp:
    asn: 65001
    mesh: none
    route_reflectors: [n1]
    peers: [{address: 10.20.30.1, asn: 65002, node: n2}]
    graceful_restart: false
    restart_time: 33
    hold_time: 27
    keepalive: 7
  nodes:
    n1: {interfaces: [{network: lan, address: 10.20.30.11, address6: "fd00:20::11"}], gateway: 10.20.30.1}
    n2: {interfaces: [{network: lan, address: 10.20.30.12, address6: "fd00:20::12"}], gateway: 10.20.30.1, asn: 65003}
"""

UNSET = """\
name: s
networks:
  lan: {cidr: 10.20.30.0/24}
routers:
  gw: {interfaces: [{network: lan, address: 10.20.30.1}]}
cluster:
  etcd: {node: n1}
  pool: {cidr: 10.100.0.0/16}
  nodes:
    n1: {interfaces: [{network: lan, address: 10.20.30.11}], gateway: 10.20.30.1}
"""


def _non_defaults(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The dotted names of the fields of a settings object that differ from their defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_non_defaults(value, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value != default:
            out[prefix + f.name] = value
    return out


def test_every_field_survives_topology_settings_json_settings() -> None:
    s = loads(EVERYTHING, "s.yaml").cluster_settings()
    back = ClusterSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    changed = set(_non_defaults(s))
    every = {f"{p}.{f.name}" for f in dataclasses.fields(PoolSettings) for p in ("pool", "pool6")} | {
        f"bgp.{f.name}" for f in dataclasses.fields(BgpSettings)} | {"mtu", "node_asn"}
    # every field is set away from its default by the topology, so one the topology stops passing on fails here
    # (the IPv6 pool is compared with None as a whole: its fields stand for all of it)
    changed |= {f"pool6.{k}" for k in _non_defaults(s.pool6)} if s.pool6 else set()
    assert every - changed == {"pool.cidr", "pool.vxlan", "bgp.enabled", "pool6.cidr", "pool6.ipip"} - changed, \
        sorted(every - changed)
    assert s.pool6 == PoolSettings("fd00:77::/64", 120, "never", "cross-subnet", False)
    assert s.bgp.peers == (PeerSettings("10.20.30.1", 65002, "n2"),)
    assert s.node_asn == {"n1": 65001, "n2": 65003}


def test_the_topology_and_the_settings_describe_the_same_fields() -> None:
    names = {f.name for f in dataclasses.fields(PoolSettings)}
    assert set(PoolSpec.model_fields) == names
    # `enabled` is the agent's (a node that runs no BGP); the topology has no switch for it
    assert set(BgpSpec.model_fields) == {f.name for f in dataclasses.fields(BgpSettings)} - {"enabled"}
    assert set(BgpPeer.model_fields) == {f.name for f in dataclasses.fields(PeerSettings)}
    # a pool's block size and IPIP default per family: the topology leaves them unset and both
    # sides fill them from the same table
    parsed = ClusterSettings.from_dict({"pool": {"cidr": "10.1.0.0/16"}, "pool6": {"cidr": "fd00:1::/64"}})
    assert PoolSpec(cidr="10.1.0.0/16").settings() == parsed.pool == PoolSettings("10.1.0.0/16")
    assert PoolSpec(cidr="fd00:1::/64").settings() == parsed.pool6 == PoolSettings("fd00:1::/64", 122, "never",
                                                                                    "never", False)
    for model, settings in ((PoolSpec, PoolSettings), (BgpSpec, BgpSettings)):
        for f in dataclasses.fields(settings):
            if model is PoolSpec and f.name in ("block_size", "ipip", "nat_outgoing"):
                continue
            if f.name in model.model_fields and f.default is not dataclasses.MISSING and f.name != "mesh":
                default = model.model_fields[f.name].default
                assert (tuple(default) if isinstance(default, list) else default) == f.default, f"{model.__name__}.{f.name}"


def test_unset_fields_mean_the_same_to_topology_agent_cni_and_doctor() -> None:
    topo = loads(UNSET, "s.yaml")
    from_topology = topo.cluster_settings()
    # what the agent reads: the JSON with the unset fields left out altogether
    minimal = {"pool": {"cidr": "10.100.0.0/16"}, "node_asn": {"n1": 64512}}
    kv = KV(keys.config("cluster"), json.dumps(minimal).encode(), 1)
    agent = decode_cluster_config(kv)
    cni = cni_settings.cluster_from({"name": "net"}, kv)

    class View:
        name = "s"

        def __init__(self) -> None:
            self.topo = topo

        def ns(self, node: str) -> NodeNS:
            return NodeNS(node, f"/nonexistent/{node}")

    doctor = Doctor(View())  # type: ignore[arg-type]
    for reader in (agent, cni, doctor.settings):
        assert reader.pool.nat_outgoing is from_topology.pool.nat_outgoing is True
        assert reader.bgp.graceful_restart is from_topology.bgp.graceful_restart is True
        assert reader.bgp.restart_time == from_topology.bgp.restart_time == 120
        assert reader.bgp.keepalive is from_topology.bgp.keepalive is None
        assert reader.pool.encap == from_topology.pool.encap == "ipip"
        assert reader.workload_mtu(1500) == 1480
    assert (doctor.encap, doctor.mode) == ("ipip", "always")


@pytest.mark.parametrize("spelling", ["never", "NEVER", "Never", False])
def test_never_means_never_everywhere(spelling: object) -> None:
    doc = {"pool": {"cidr": "10.100.0.0/16", "ipip": spelling}}
    kv = KV(keys.config("cluster"), json.dumps(doc).encode(), 1)
    assert decode_cluster_config(kv).pool.encap == "none"
    assert cni_settings.cluster_from({"name": "net"}, kv).pool.encap == "none"


def test_rules_derived_from_the_settings() -> None:
    cross = ClusterSettings(PoolSettings("10.1.0.0/16", ipip="cross-subnet"))
    assert (cross.pool.encap_towards(same_subnet=True), cross.pool.encap_towards(same_subnet=False)) == ("none", "ipip")
    vx = ClusterSettings(PoolSettings("10.1.0.0/16", ipip="never", vxlan="always"))
    assert (vx.pool.overhead, vx.workload_mtu(1500), vx.pool.encap_towards(same_subnet=True)) == (50, 1450, "vxlan")
    assert ClusterSettings(PoolSettings("10.1.0.0/16"), mtu=1300).workload_mtu(1500) == 1300
    lone = ClusterSettings(PoolSettings("10.1.0.0/16"))
    assert not lone.expects_peers(["a"]) and lone.expects_peers(["a", "b"])
    nomesh = ClusterSettings(PoolSettings("10.1.0.0/16"), BgpSettings(mesh=False))
    assert not nomesh.expects_peers(["a", "b"])  # a VXLAN lab with mesh: none waits for no session
    assert ClusterSettings(PoolSettings("10.1.0.0/16"), BgpSettings(mesh=False, route_reflectors=("a",))
                           ).expects_peers(["a", "b"])


def test_bad_values_are_named() -> None:
    for doc, error in (({"pool": {"cidr": "10.1.0.0/16", "nat_outgoing": "yes"}}, "nat_outgoing 'yes' is not true or false"),
                       ({"pool": {"cidr": "10.1.0.0/16"}, "bgp": {"restart_time": 5000}}, "restart_time 5000 must be"),
                       ({"pool": {"cidr": "10.1.0.0/16"}, "bgp": {"route_reflectors": "a"}}, "route_reflectors must be"),
                       ({"pool": {"cidr": "10.1.0.0/16"}, "node_asn": [1]}, "node_asn must be an object")):
        with pytest.raises(BadInput, match=error):
            ClusterSettings.from_dict(doc)
