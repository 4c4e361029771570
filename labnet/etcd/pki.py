"""A lab's PKI: one CA, etcd's server and peer certificates, client certificates.

As in the seed's Calico, etcd wants a client certificate from everyone: an admin one for
the CLI, and one per node for its agent and CNI plugin. Keys are EC P-256 (RSA keygen is
slow enough to matter at lab start) and are written 0600. Certificates found in the
directory are reused when they still fit (same CA, same SANs, not about to expire), so
`up` on an existing lab changes nothing; a fresh directory (a rebuilt lab) gets a new CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labnet.errors import BadInput, LabnetError

CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=1)  # reuse a leaf only if it is valid for at least this long


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths (on the host) of one lab's TLS material."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server: CertPair  # etcd's serving cert; SANs = every member's address and name
    admin: CertPair  # the CLI's client cert
    peers: dict[str, CertPair] = field(default_factory=dict)  # etcd member name -> peer cert
    nodes: dict[str, CertPair] = field(default_factory=dict)  # node name -> client cert

    def moved(self, new_dir: Path | str) -> Pki:
        """The same files as seen under `new_dir` (e.g. copied into a node's own filesystem)."""
        d = Path(new_dir)

        def pair(p: CertPair) -> CertPair:
            return CertPair(cert=d / p.cert.name, key=d / p.key.name)

        return Pki(dir=d, ca_cert=d / self.ca_cert.name, ca_key=d / self.ca_key.name, server=pair(self.server),
                   admin=pair(self.admin), peers={n: pair(p) for n, p in self.peers.items()},
                   nodes={n: pair(p) for n, p in self.nodes.items()})

    def client(self, node: str | None = None) -> CertPair:
        """The client cert of `node`, or the admin cert."""
        if node is None:
            return self.admin
        try:
            return self.nodes[node]
        except KeyError:
            raise LabnetError(f"no etcd client certificate for node {node!r} in {self.dir}; "
                              f"known nodes: {sorted(self.nodes)}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with `mode` from the start (a key is never world-readable, even briefly)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, lab: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"labnet {lab}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # ordered, unique
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _sans_of(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | set(ext.get_values_for_type(x509.DNSName))


def _make_ca(lab: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = _name(f"labnet-{lab}-ca", lab)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, lab: str, cn: str,
    sans: Sequence[str], usages: Sequence[x509.ObjectIdentifier],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = _now()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, lab)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                     key_cert_sign=False, crl_sign=False, content_commitment=False,
                                     data_encipherment=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _fits(pair: CertPair, ca_cert: x509.Certificate, sans: Sequence[str]) -> bool:
    """An existing leaf is reused if its CA, SANs and validity still hold and its key is there."""
    cert = _load_cert(pair.cert)
    if cert is None or not pair.key.is_file():
        return False
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        return False
    return _sans_of(cert) == set(sans)


def _safe_name(kind: str, name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise BadInput(f"cannot make a {kind} certificate for {name!r}: not usable as a file name")
    return name


def ensure_pki(
    dir: Path, lab: str, etcd_members: Sequence[tuple[str, str]], nodes: Sequence[str],
) -> Pki:
    """Create (or reuse) the lab's CA and certificates under `dir`.

    etcd_members: (name, address) of every etcd member; the server certificate's SANs are
    all of them plus 127.0.0.1 and localhost, and each member gets a peer certificate.
    nodes: every node that talks to etcd (agent + CNI plugin) gets a client certificate.
    """
    if not etcd_members:
        raise BadInput(f"lab {lab}: ensure_pki needs at least one etcd member")
    normal: list[tuple[str, str]] = []
    for name, addr in etcd_members:
        _safe_name("peer", name)
        try:
            normal.append((name, str(ipaddress.ip_address(addr))))  # canonical, so reuse compares equal
        except ValueError:
            raise BadInput(f"lab {lab}: etcd member {name} has address {addr!r}, expected an IP address") from None
    etcd_members = normal
    for n in nodes:
        _safe_name("node client", n)

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dir, 0o700)
    ca_cert_p, ca_key_p = dir / "ca.pem", dir / "ca-key.pem"

    ca_cert = _load_cert(ca_cert_p)
    ca_key: ec.EllipticCurvePrivateKey | None = None
    if ca_cert is not None and ca_key_p.is_file():
        loaded = serialization.load_pem_private_key(ca_key_p.read_bytes(), password=None)
        if isinstance(loaded, ec.EllipticCurvePrivateKey) and ca_cert.not_valid_after_utc - _now() > RENEW_BEFORE:
            ca_key = loaded
    if ca_cert is None or ca_key is None:
        ca_key, ca_cert = _make_ca(lab)
        _write(ca_key_p, _key_pem(ca_key), 0o600)
        _write(ca_cert_p, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def leaf(stem: str, cn: str, sans: Sequence[str], usages: Sequence[x509.ObjectIdentifier]) -> CertPair:
        assert ca_key is not None and ca_cert is not None
        pair = CertPair(cert=dir / f"{stem}.pem", key=dir / f"{stem}-key.pem")
        if not _fits(pair, ca_cert, sans):
            key, cert = _make_leaf(ca_key, ca_cert, lab, cn, sans, usages)
            _write(pair.key, _key_pem(key), 0o600)
            _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        elif pair.key.stat().st_mode & 0o077:
            os.chmod(pair.key, 0o600)
        return pair

    server_sans = [a for _, a in etcd_members] + [n for n, _ in etcd_members] + ["127.0.0.1", "localhost"]
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    client_only = [ExtendedKeyUsageOID.CLIENT_AUTH]
    # clientAuth on the server cert too: etcd 3.4's JSON gateway dials etcd's own gRPC port
    # presenting this certificate, and --client-cert-auth checks it.
    server = leaf("etcd-server", f"etcd-{lab}", server_sans, both)
    peers = {n: leaf(f"etcd-peer-{n}", n, [a, n, "127.0.0.1", "localhost"], both) for n, a in etcd_members}
    admin = leaf("admin", "admin", [], client_only)
    node_pairs = {n: leaf(f"node-{n}", n, [], client_only) for n in nodes}
    return Pki(dir=dir, ca_cert=ca_cert_p, ca_key=ca_key_p, server=server, admin=admin,
               peers=peers, nodes=node_pairs)
