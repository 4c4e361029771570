"""The lab PKI: certificate contents, key protection, reuse."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from labnet.errors import BadInput, LabnetError
from labnet.etcd.pki import Pki, ensure_pki

MEMBERS = [("ubuntu-1", "10.20.30.71"), ("ubuntu-2", "10.20.30.72")]
NODES = ["ubuntu-1", "ubuntu-3", "ubuntu-4"]


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(c: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(i) for i in ext.get_values_for_type(x509.IPAddress)}, set(ext.get_values_for_type(x509.DNSName))


def ekus(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def all_pairs(p: Pki) -> list[tuple[Path, Path]]:
    pairs = [p.server, p.admin, *p.peers.values(), *p.nodes.values()]
    return [(pp.cert, pp.key) for pp in pairs] + [(p.ca_cert, p.ca_key)]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return ensure_pki(tmp_path / "pki", "seed", MEMBERS, NODES)


def test_server_cert_sans_are_members_plus_loopback(pki: Pki) -> None:
    ips, dns = sans(cert(pki.server.cert))
    assert ips == {"10.20.30.71", "10.20.30.72", "127.0.0.1"}
    assert dns == {"ubuntu-1", "ubuntu-2", "localhost"}
    # server + client auth: etcd 3.4's gateway presents this cert to etcd itself
    assert ekus(cert(pki.server.cert)) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ips, _ = sans(cert(pki.peers["ubuntu-2"].cert))
    assert "10.20.30.72" in ips and "10.20.30.71" not in ips


def test_client_certs_for_admin_and_every_node(pki: Pki) -> None:
    assert sorted(pki.nodes) == sorted(NODES)
    assert sorted(pki.peers) == ["ubuntu-1", "ubuntu-2"]
    for name, pair in [("admin", pki.admin), *pki.nodes.items()]:
        c = cert(pair.cert)
        assert c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        assert ekus(c) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.client() == pki.admin and pki.client("ubuntu-3") == pki.nodes["ubuntu-3"]
    with pytest.raises(LabnetError, match="no etcd client certificate for node 'nope'"):
        pki.client("nope")


def test_everything_signed_by_the_lab_ca_with_ec_p256(pki: Pki) -> None:
    ca = cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for c_path, k_path in all_pairs(pki):
        c = cert(c_path)
        c.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(k_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert key.public_key().public_numbers() == c.public_key().public_numbers()  # type: ignore[union-attr]


def test_keys_are_0600_and_dir_0700(pki: Pki) -> None:
    assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700
    for _, k in all_pairs(pki):
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k
    leftovers = [p.name for p in pki.dir.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left: {leftovers}"


def test_second_call_reuses_everything(pki: Pki) -> None:
    before = {p: p.read_bytes() for pair in all_pairs(pki) for p in pair}
    again = ensure_pki(pki.dir, "seed", MEMBERS, NODES)
    assert again == pki
    assert {p: p.read_bytes() for p in before} == before


def test_changes_regenerate_only_what_no_longer_fits(pki: Pki) -> None:
    ca, admin, node1 = pki.ca_cert.read_bytes(), pki.admin.cert.read_bytes(), pki.nodes["ubuntu-1"].cert.read_bytes()
    server = pki.server.cert.read_bytes()
    more = ensure_pki(pki.dir, "seed", [*MEMBERS, ("ubuntu-5", "10.20.30.75")], [*NODES, "ubuntu-5"])
    assert more.ca_cert.read_bytes() == ca and more.admin.cert.read_bytes() == admin
    assert more.nodes["ubuntu-1"].cert.read_bytes() == node1
    assert more.server.cert.read_bytes() != server
    assert "10.20.30.75" in sans(cert(more.server.cert))[0]
    assert "ubuntu-5" in more.nodes and "ubuntu-5" in more.peers


def test_fresh_dir_gets_a_new_ca(pki: Pki, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "rebuilt", "seed", MEMBERS, NODES)
    assert cert(other.ca_cert).public_key() != cert(pki.ca_cert).public_key()
    assert other.ca_cert.read_bytes() != pki.ca_cert.read_bytes()


def test_a_leaf_from_a_replaced_ca_is_reissued(pki: Pki) -> None:
    pki.ca_key.unlink()  # CA lost: a new CA, and every leaf re-signed by it
    new = ensure_pki(pki.dir, "seed", MEMBERS, NODES)
    ca = cert(new.ca_cert)
    for c_path, _ in all_pairs(new):
        cert(c_path).verify_directly_issued_by(ca)


@pytest.mark.parametrize(("members", "nodes", "msg"), [
    ([], ["a"], "at least one etcd member"),
    ([("e", "not-an-ip")], ["a"], "expected an IP address"),
    ([("e", "10.0.0.1")], ["../x"], "not usable as a file name"),
])
def test_bad_input(tmp_path: Path, members: list[tuple[str, str]], nodes: list[str], msg: str) -> None:
    with pytest.raises(BadInput, match=msg):
        ensure_pki(tmp_path, "x", members, nodes)


def test_ipv6_member(tmp_path: Path) -> None:
    p = ensure_pki(tmp_path, "v6", [("e", "fd00::1")], [])
    assert ipaddress.ip_address("fd00::1") in {ipaddress.ip_address(i) for i in sans(cert(p.server.cert))[0]}


def test_moved_keeps_file_names(pki: Pki) -> None:
    inside = pki.moved("/var/lib/labnet/etcd-tls")
    assert inside.server.cert == Path("/var/lib/labnet/etcd-tls/etcd-server.pem")
    assert inside.peers["ubuntu-2"].key == Path("/var/lib/labnet/etcd-tls/etcd-peer-ubuntu-2-key.pem")
    assert inside.nodes["ubuntu-3"].cert.name == pki.nodes["ubuntu-3"].cert.name
