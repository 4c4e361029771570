"""Where the plugins take their settings from: conf, nodename file, etcd cluster config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labnet.cni import settings
from labnet.cni.spec import CniError
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore


def store_with(doc: dict[str, object] | None) -> MemStore:
    s = MemStore()
    if doc is not None:
        s.put(keys.config("cluster"), json.dumps(doc))
    return s


def test_cluster_settings_and_overrides() -> None:
    s = store_with({"pool": {"cidr": "10.100.0.0/16", "block_size": 26, "ipip": "always"}, "asn": 64512})
    c = settings.cluster({"name": "n"}, s)
    assert (c.pool.cidr, c.pool.block_size, c.pool.encap, c.mtu) == ("10.100.0.0/16", 26, "ipip", None)
    c = settings.cluster({"name": "n", "mtu": 1400, "ipam": {"pool": "10.7.0.0/24", "block_size": 28}}, s)
    assert (c.pool.cidr, c.pool.block_size, c.mtu) == ("10.7.0.0/24", 28, 1400)
    vx = settings.cluster({"name": "n"}, store_with({"pool": {"cidr": "10.1.0.0/16", "vxlan": "always",
                                                              "ipip": "never"}, "mtu": 1450}))
    assert (vx.pool.encap, vx.mtu) == ("vxlan", 1450)
    plain = settings.cluster({"name": "n"}, store_with({"pool": {"cidr": "10.1.0.0/16", "ipip": "never"}}))
    assert plain.pool.encap == "none"
    never = settings.cluster({"name": "n"}, store_with({"pool": {"cidr": "10.1.0.0/16", "ipip": "NEVER"}}))
    assert never.pool.encap == "none"  # spelled as Calico's manifests do, it still means never


def test_missing_pool_is_an_invalid_config_naming_the_key() -> None:
    with pytest.raises(CniError) as e:
        settings.cluster({"name": "n"}, store_with(None))
    assert e.value.code == 7 and keys.config("cluster") in e.value.msg


def test_nodename_precedence(tmp_path: Path) -> None:
    f = tmp_path / "nodename"
    f.write_text("ubuntu-3\n")
    assert settings.nodename({"nodename": "ubuntu-4", "nodename_file": str(f)}) == "ubuntu-4"
    assert settings.nodename({"nodename_file": str(f)}) == "ubuntu-3"
    assert settings.nodename({"nodename_file": str(tmp_path / "absent")})  # falls back to the hostname


def test_etcd_config_from_the_conf(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    ca.write_text("x")
    cfg = settings.etcd_config({"etcd_endpoints": "https://a:2379, https://b:2379", "etcd_ca_cert_file": str(ca)})
    assert cfg.endpoints == ("https://a:2379", "https://b:2379") and cfg.ca_file == str(ca)
    with pytest.raises(CniError) as e:
        settings.etcd_config({"name": "n", "etcd_endpoints": "https://a:2379"})
    assert e.value.code == 7 and "etcd_ca_cert_file" in e.value.msg
    with pytest.raises(CniError) as e:
        settings.etcd_config({"name": "n"})
    assert e.value.code == 7 and "etcd_endpoints" in e.value.msg
