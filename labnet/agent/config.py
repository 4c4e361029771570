"""The agent's own config file (written by the lab) and the lab-wide settings it reads from etcd.

Agent config (/var/lib/labnet/agent.json inside the node):
  {"nodename_file": "/var/lib/labnet/nodename",
   "etcd": {"endpoints": [...], "ca_file": ..., "cert_file": ..., "key_file": ...},
   "bgp_address": "first-found" | "interface=REGEX" | "can-reach=IP" | "cidr=CIDR" | "<ip>",
   "status_socket": "/var/run/labnet/agent.sock", "log_file": ...,
   "cni_socket": "/var/run/labnet/cni.sock",   # the CNI server in the same process; null: none
   "nodename": null}   # override: ONLY to reproduce the seed commenter's wrong-node-name fault

The lab-wide cluster settings the agent reads from etcd are labnet.settings.ClusterSettings.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labnet.errors import BadInput
from labnet.etcd.store import EtcdConfig

DEFAULT_CONFIG = "/var/lib/labnet/agent.json"
DEFAULT_SOCKET = "/var/run/labnet/agent.sock"
DEFAULT_NODENAME_FILE = "/var/lib/labnet/nodename"


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
    cni_socket: str | None = None  # serve CNI here, in the node's process (the lab sets it)
    nodename: str | None = None  # fault injection only: register under another name than the CNI's
    # full re-read of the datastore, the safety net under the watches (a broken watch already
    # triggers one when it reconnects); every agent reading every block at 5 s loaded etcd with
    # a core's worth of work at 100 nodes
    resync_interval: float = 30.0

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "agent config") -> AgentConfig:
        if not isinstance(d, dict):
            raise BadInput(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {"etcd", "nodename_file", "bgp_address", "status_socket", "log_file", "nodename",
                 "resync_interval", "cni_socket"}
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
