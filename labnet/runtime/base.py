"""The Runtime interface: what a lab asks of netns or docker.

A runtime makes machines (routers, hosts, cluster nodes) with a private network, mount and
UTS namespace each, LANs as bridges in the lab's fabric namespace, and veth links between
them. Everything it creates is recorded in the lab's journal first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any, Protocol

from labnet.nsexec import NodeNS

# Private directories of every machine, bind-mounted from the lab's state directory.
# Order matters: the host's lab state lives under /var/lib/labnet, so that one is mounted last
# (after it, the bind sources under it are hidden inside the node).
# /var/tmp, /var/lib/cni (libcni's result cache) and /var/lib/containers are a machine's own
# too: what the user runs there (FRR's crash logs, podman) writes them, and must not reach the host.
NODE_DIRS = {
    "etc-cni-net.d": "/etc/cni/net.d",
    "opt-cni-bin": "/opt/cni/bin",
    "run": "/var/run",
    "var-tmp": "/var/tmp",
    "var-lib-cni": "/var/lib/cni",
    "var-lib-containers": "/var/lib/containers",
    "var-log-labnet": "/var/log/labnet",
    "var-lib-labnet": "/var/lib/labnet",
}


@dataclass(frozen=True)
class MachineSpec:
    name: str
    kind: str  # router | host | node
    forward: bool
    ipv6: bool


@dataclass(frozen=True)
class LinkSpec:
    machine: str
    ifname: str
    network: str
    address: IPv4Interface | None  # None on an IPv6-only LAN
    mtu: int
    address6: IPv6Interface | None = None


class Recorder(Protocol):
    """What a runtime needs of the lab's journal (labnet.lab.journal.Journal is one)."""

    lab: str
    entries: list[dict[str, Any]]
    info: dict[str, Any]

    def record(self, kind: str, **attrs: Any) -> dict[str, Any]: ...
    def update(self, entry: dict[str, Any], **attrs: Any) -> None: ...
    def of_kind(self, kind: str) -> list[dict[str, Any]]: ...
    def save(self) -> None: ...


class Runtime(ABC):
    name = "base"
    # Its machines see this host's files and interpreter, so the lab's zygote can fork their
    # daemons (labnet.lab.zygote); otherwise each daemon starts by exec inside the machine.
    shares_host_python = False

    def __init__(self, lab: str, journal: Recorder) -> None:
        self.lab = lab
        self.journal = journal

    @abstractmethod
    def prepare(self) -> None:
        """Per-lab scaffolding: state dirs, the fabric namespace."""

    @abstractmethod
    def add_network(self, name: str, mtu: int) -> None:
        """A LAN: a bridge in the fabric namespace."""

    @abstractmethod
    def add_machines(self, machines: list[MachineSpec]) -> None:
        """Namespaces for each machine, hostname set, private dirs mounted, lo up."""

    @abstractmethod
    def add_links(self, links: list[LinkSpec], gateways: dict[str, IPv4Address],
                  gateways6: dict[str, IPv6Address] | None = None) -> None:
        """veth pairs from each machine to its LAN's bridge, addresses and default routes."""

    @abstractmethod
    def ns(self, machine: str) -> NodeNS:
        """How to run commands inside a machine."""

    @abstractmethod
    def host_path(self, machine: str, path: str) -> Path:
        """Where a machine's private path (e.g. /etc/cni/net.d) is on the host."""

    @abstractmethod
    def teardown(self) -> list[str]:
        """Undo the journal, newest first; return problems that were left (empty: clean)."""

    # -- labs without a journal (down of a lab whose state dir is gone; gc) -------------------
    @classmethod
    def remove_unjournaled(cls, lab: str) -> bool:
        """Remove what this runtime can find of `lab` without its journal; True if it found any."""
        return False

    @classmethod
    def sweep_orphans(cls, is_orphan: Callable[[str], bool]) -> list[str]:
        """Remove what this runtime made for labs `is_orphan` says have no journal and no owner;
        describe each thing removed. Things that vanish meanwhile count as removed."""
        return []

    @classmethod
    def release(cls) -> str | None:
        """Stop what this runtime keeps running for all its labs (docker: labnet's dockerd); the
        lab layer calls it once no lab of this runtime is left. Says what it stopped, if anything."""
        return None

    @classmethod
    def shared(cls) -> str | None:
        """What this runtime keeps running for all its labs right now, for `labnet status`."""
        return None
