"""etcd pieces that need no running etcd: key ranges, settings, the etcd command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labnet.errors import BadInput, LabnetError
from labnet.etcd import keys, server, settings
from labnet.etcd.client import EtcdStore, prefix_end
from labnet.etcd.pki import ensure_pki
from labnet.etcd.server import EtcdMember
from labnet.etcd.store import KV, DatastoreUnavailable, EtcdConfig
from labnet.nsexec import NodeNS
from labnet.settings import ClusterSettings


class DictStore:
    """get/put over a dict: all settings.py needs."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> KV | None:
        return KV(key, self.data[key], 1) if key in self.data else None

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        self.data[key] = value.encode() if isinstance(value, str) else value
        return 1


def test_prefix_end() -> None:
    assert prefix_end("/labnet/") == b"/labnet0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end("") == b"\0"


def test_store_import_stays_light() -> None:
    code = "import sys, labnet.etcd.store, labnet.etcd.keys, labnet.etcd.settings; " \
           "print(sorted(m for m in ('requests', 'etcd3gw', 'urllib3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("endpoint", "msg"), [
    ("ftp://x:1", "bad etcd endpoint"),
    ("https://10.0.0.1:2379", "no ca_file"),
])
def test_bad_config(endpoint: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        EtcdStore(EtcdConfig(endpoints=(endpoint,)))
    with pytest.raises(ValueError, match="etcd cert_file /nonexistent/c.pem does not exist"):
        EtcdStore(EtcdConfig(endpoints=("http://x:1",), cert_file="/nonexistent/c.pem"))
    with pytest.raises(ValueError, match="no endpoints"):
        EtcdStore(EtcdConfig(endpoints=()))


def test_nothing_listening_is_datastore_unavailable() -> None:
    # port 1 on loopback: refused at once, nothing is created anywhere
    st = EtcdStore(EtcdConfig(endpoints=("http://127.0.0.1:1", "http://127.0.0.1:1"), timeout=2))
    with pytest.raises(DatastoreUnavailable, match=r"etcd unreachable for get /k: http://127.0.0.1:1: .*refused"):
        st.get("/k")
    st.close()
    with pytest.raises(DatastoreUnavailable, match="closed"):
        st.get("/k")


def test_cluster_settings_round_trip() -> None:
    store: Any = DictStore()
    want = ClusterSettings.from_dict({"pool": {"cidr": "10.100.0.0/16", "block_size": 26, "ipip": "always",
                                               "vxlan": "never", "nat_outgoing": True},
                                      "mtu": None, "bgp": {"asn": 64512, "mesh": "full", "peers": []},
                                      "node_asn": {"ubuntu-1": 64512}})
    settings.write_cluster_config(store, want)
    assert store.data[keys.config("cluster")].startswith(b'{"bgp": {"asn": 64512')  # sorted JSON
    assert settings.read_cluster_config(store) == want


def test_cluster_settings_errors() -> None:
    store: Any = DictStore()
    with pytest.raises(LabnetError, match="no cluster settings in etcd at /labnet/config/cluster"):
        settings.read_cluster_config(store)
    for raw, error in ((b'{"pool": {"cidr": "10.100.0.0/16", "block_size": "x"}}', "block_size 'x' is not an integer"),
                       (b'{"pool": "10.100.0.0/16"}', "'pool' must be an object"),
                       (b'{"pool": {"cidr": "10.100.0.0/16"}, "mtu": true}', "mtu True must be null or 576..65535")):
        store.data[keys.config("cluster")] = raw
        with pytest.raises(BadInput, match=error):
            settings.read_cluster_config(store)
    store.data[keys.config("cluster")] = b"{nope"
    with pytest.raises(LabnetError, match="not JSON"):
        settings.read_cluster_config(store)


def test_etcd_argv_tls_and_cluster(tmp_path: Path) -> None:
    members = [EtcdMember("a", "10.0.0.1"), EtcdMember("b", "10.0.0.2")]
    pki = ensure_pki(tmp_path / "pki", "x", [(m.name, m.address) for m in members], [])
    argv = server.etcd_argv(members[1], members, pki, tmp_path / "data")
    flags = dict((a.split("=", 1)[0], a.split("=", 1)[-1]) for a in argv[1:])
    assert flags["--listen-client-urls"] == "https://10.0.0.2:2379,https://127.0.0.1:2379"
    assert flags["--advertise-client-urls"] == "https://10.0.0.2:2379"
    assert flags["--initial-cluster"] == "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380"
    assert flags["--peer-cert-file"] == str(pki.peers["b"].cert)
    assert "--client-cert-auth" in flags and "--peer-client-cert-auth" in flags
    assert flags["--trusted-ca-file"] == str(pki.ca_cert)
    plain = server.etcd_argv(members[0], members[:1], None, tmp_path / "d")
    assert not any("cert" in a for a in plain)
    assert "--listen-client-urls=http://10.0.0.1:2379,http://127.0.0.1:2379" in plain
    with pytest.raises(LabnetError, match="not in its cluster"):
        server.etcd_argv(members[1], members[:1], None, tmp_path)


def test_missing_etcd_binary(tmp_path: Path) -> None:
    m = EtcdMember("a", "10.0.0.1")
    with pytest.raises(LabnetError, match="node n1: etcd binary .* not found; install it with `apt-get install etcd-server`"):
        server.start_member(NodeNS("n1", "/nonexistent"), m, [m], None, tmp_path / "d", tmp_path / "log",
                            etcd_bin=str(tmp_path / "etcd"))


def test_client_config_uses_the_node_cert(tmp_path: Path) -> None:
    m = EtcdMember("a", "10.0.0.1")
    pki = ensure_pki(tmp_path, "x", [("a", "10.0.0.1")], ["n1"])
    cfg = server.client_config([m], pki, node="n1")
    assert cfg.endpoints == ("https://10.0.0.1:2379",)
    assert cfg.cert_file == str(pki.nodes["n1"].cert) and cfg.ca_file == str(pki.ca_cert)
    assert server.client_config([m], None).endpoints == ("http://10.0.0.1:2379",)
