"""The agent's own config file (written by the lab) and the lab-wide settings it reads from etcd.

Agent config (/var/lib/labnet/agent.json inside the node):
  {"nodename_file": "/var/lib/labnet/nodename",
   "etcd": {"endpoints": [...], "ca_file": ..., "cert_file": ..., "key_file": ...},
   "bgp_address": "first-found" | "interface=REGEX" | "can-reach=IP" | "cidr=CIDR" | "<ip>",
   "status_socket": "/var/run/labnet/agent.sock", "log_file": ...,
   "nodename": null}   # override: ONLY to reproduce the seed commenter's wrong-node-name fault

Cluster settings (etcd key keys.config("cluster"), written by `labnet up`):
  {"pool": {"cidr", "block_size", "ipip", "vxlan", "nat_outgoing"}, "mtu": null|int,
   "bgp": {"asn", "mesh", "route_reflectors", "peers": [{"address", "asn", "node"?}],
           "graceful_restart", "hold_time", "keepalive"},
   "node_asn": {node: asn}}
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labnet.errors import BadInput
from labnet.etcd.store import EtcdConfig

DEFAULT_CONFIG = "/var/lib/labnet/agent.json"
DEFAULT_SOCKET = "/var/run/labnet/agent.sock"
DEFAULT_NODENAME_FILE = "/var/lib/labnet/nodename"
DEFAULT_ASN = 64512
ENCAP_MODES = ("always", "cross-subnet", "never")


@dataclass
class EtcdSettings:
    endpoints: list[str]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def store_config(self) -> EtcdConfig:
        return EtcdConfig(tuple(self.endpoints), self.ca_file, self.cert_file, self.key_file)


@dataclass
class AgentConfig:
    etcd: EtcdSettings
    nodename_file: str = DEFAULT_NODENAME_FILE
    bgp_address: str = "first-found"
    status_socket: str = DEFAULT_SOCKET
    log_file: str | None = None
    nodename: str | None = None  # fault injection only: register under another name than the CNI's
    resync_interval: float = 5.0  # full re-read of the datastore, on top of the watches

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "agent config") -> AgentConfig:
        if not isinstance(d, dict):
            raise BadInput(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {"etcd", "nodename_file", "bgp_address", "status_socket", "log_file", "nodename",
                 "resync_interval"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInput(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
        e = d.get("etcd")
        if not isinstance(e, dict) or not e.get("endpoints"):
            raise BadInput(f"{where}: 'etcd' must be an object with a non-empty 'endpoints' list")
        eps = e["endpoints"]
        if isinstance(eps, str) or not all(isinstance(x, str) for x in eps):
            raise BadInput(f"{where}: etcd.endpoints must be a list of URLs, got {eps!r}")
        etcd = EtcdSettings(list(eps), e.get("ca_file"), e.get("cert_file"), e.get("key_file"))
        cfg = cls(etcd=etcd, **{k: v for k, v in d.items() if k != "etcd"})
        parse_address_method(cfg.bgp_address)  # fail early on a bad method
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> AgentConfig:
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise BadInput(f"agent config {p} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise BadInput(f"agent config {p}: not JSON: {exc}") from exc
        return cls.from_dict(raw, where=f"agent config {p}")

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, p)


def parse_address_method(method: str) -> tuple[str, str]:
    """'interface=eth.*' -> ('interface', 'eth.*'); '10.0.0.1' -> ('address', '10.0.0.1')."""
    m = method.strip()
    if m == "first-found":
        return ("first-found", "")
    for kind in ("interface", "can-reach", "cidr"):
        if m.startswith(kind + "="):
            arg = m[len(kind) + 1:]
            if not arg:
                raise BadInput(f"bgp_address {method!r}: '{kind}=' needs a value")
            try:
                if kind == "can-reach":
                    ipaddress.IPv4Address(arg)
                elif kind == "cidr":
                    ipaddress.IPv4Network(arg, strict=False)
            except ValueError as exc:
                raise BadInput(f"bgp_address {method!r}: {exc}") from exc
            return (kind, arg)
    try:
        ipaddress.IPv4Interface(m)
    except ValueError as exc:
        raise BadInput(
            f"bgp_address {method!r}: expected first-found, interface=REGEX, can-reach=IP, cidr=CIDR "
            f"or an IPv4 address"
        ) from exc
    return ("address", m)


# -- cluster settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSettings:
    cidr: str
    block_size: int = 26
    ipip: str = "always"
    vxlan: str = "never"
    nat_outgoing: bool = False

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def encap(self) -> str:
        """'ipip', 'vxlan' or 'none' (what the agent sets up)."""
        if self.vxlan != "never":
            return "vxlan"
        return "ipip" if self.ipip != "never" else "none"

    @property
    def mode(self) -> str:
        """The encapsulation mode: always, cross-subnet or never."""
        return self.vxlan if self.vxlan != "never" else self.ipip


@dataclass(frozen=True)
class PeerSettings:
    address: str
    asn: int
    node: str | None = None  # only this node peers (calicoctl's "node specific"); None = global


@dataclass(frozen=True)
class BgpSettings:
    asn: int = DEFAULT_ASN
    mesh: bool = True
    route_reflectors: tuple[str, ...] = ()
    peers: tuple[PeerSettings, ...] = ()
    graceful_restart: bool = False
    restart_time: int = 120
    hold_time: int = 90
    keepalive: int | None = None
    enabled: bool = True


@dataclass(frozen=True)
class ClusterSettings:
    pool: PoolSettings
    bgp: BgpSettings = field(default_factory=BgpSettings)
    mtu: int | None = None
    node_asn: dict[str, int] = field(default_factory=dict)

    def asn_of(self, node: str) -> int:
        return self.node_asn.get(node, self.bgp.asn)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "cluster settings") -> ClusterSettings:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise BadInput(f"{where}: {msg}")

        need(isinstance(d, dict), f"expected an object, got {type(d).__name__}")
        p = d.get("pool")
        need(isinstance(p, dict) and isinstance(p.get("cidr"), str), "'pool' must be an object with a 'cidr'")
        assert isinstance(p, dict)
        try:
            ipaddress.IPv4Network(p["cidr"])
        except ValueError as exc:
            raise BadInput(f"{where}: pool.cidr {p['cidr']!r}: {exc}") from exc
        ipip = _mode(p.get("ipip", "always"), where, "pool.ipip")
        vxlan = _mode(p.get("vxlan", "never"), where, "pool.vxlan")
        need(ipip == "never" or vxlan == "never", f"pool has both ipip={ipip} and vxlan={vxlan}; pick one")
        pool = PoolSettings(p["cidr"], _int(p, "block_size", 26, where), ipip, vxlan, bool(p.get("nat_outgoing", False)))
        b = d.get("bgp") or {}
        need(isinstance(b, dict), "'bgp' must be an object")
        mesh_raw = b.get("mesh", True)
        mesh = mesh_raw in (True, "full", "on", "yes") if not isinstance(mesh_raw, bool) else mesh_raw
        peers = []
        for i, x in enumerate(b.get("peers") or []):
            need(isinstance(x, dict) and "address" in x and "asn" in x, f"bgp.peers[{i}] needs address and asn")
            try:
                ipaddress.IPv4Address(x["address"])
            except ValueError as exc:
                raise BadInput(f"{where}: bgp.peers[{i}].address: {exc}") from exc
            peers.append(PeerSettings(str(x["address"]), _int(x, "asn", 0, where), x.get("node")))
        bgp = BgpSettings(
            asn=_int(b, "asn", DEFAULT_ASN, where), mesh=bool(mesh),
            route_reflectors=tuple(b.get("route_reflectors") or ()), peers=tuple(peers),
            graceful_restart=bool(b.get("graceful_restart", False)),
            restart_time=_int(b, "restart_time", 120, where),
            hold_time=_int(b, "hold_time", 90, where),
            keepalive=_int(b, "keepalive", 0, where) or None,
            enabled=bool(b.get("enabled", True)),
        )
        need(bgp.hold_time == 0 or 3 <= bgp.hold_time <= 65535, f"bgp.hold_time {bgp.hold_time} must be 0 or 3..65535")
        mtu = d.get("mtu")
        need(mtu is None or (isinstance(mtu, int) and 576 <= mtu <= 65535), f"mtu {mtu!r} must be null or 576..65535")
        node_asn = {str(k): _int({"asn": v}, "asn", 0, f"{where}: node_asn.{k}") for k, v in (d.get("node_asn") or {}).items()}
        return cls(pool, bgp, mtu, node_asn)


def _int(d: dict[str, Any], key: str, default: int, where: str) -> int:
    """d[key] as an int; missing or null gives `default`."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise BadInput(f"{where}: {key} {v!r} is not an integer")
    try:
        return int(v)
    except ValueError as exc:
        raise BadInput(f"{where}: {key} {v!r} is not an integer") from exc


def _mode(value: object, where: str, what: str) -> str:
    if value is True:
        return "always"
    if value in (False, None):
        return "never"
    v = str(value).strip().lower().replace("_", "-")
    v = {"crosssubnet": "cross-subnet"}.get(v, v)
    if v not in ENCAP_MODES:
        raise BadInput(f"{where}: {what} {value!r} must be one of {', '.join(ENCAP_MODES)}")
    return v
