"""Where a lab keeps its things on the host, and how its objects are named.

Everything a lab creates carries its prefix `lnet-<lab>` so that gc and down touch only
what is theirs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns` looks: lab namespaces show up in `ip netns list`


def state_root() -> Path:
    return Path(os.environ.get("LABNET_STATE_DIR", "/var/lib/labnet"))


def run_root() -> Path:
    """Holds the mount/UTS namespace files; itself a private bind mount (see runtime.netns)."""
    return Path(os.environ.get("LABNET_RUN_DIR", "/run/labnet"))


def lab_prefix(lab: str) -> str:
    return f"lnet-{lab}"


def lab_dir(lab: str) -> Path:
    return state_root() / "labs" / lab


def node_dir(lab: str, node: str) -> Path:
    return lab_dir(lab) / "nodes" / node


def ns_dir(lab: str) -> Path:
    return run_root() / lab


def netns_name(lab: str, node: str) -> str:
    # '.' cannot appear in lab or machine names, so gc can split the lab name back out.
    return f"{lab_prefix(lab)}.{node}"


def fabric_netns(lab: str) -> str:
    return f"{lab_prefix(lab)}._fabric"  # '_' cannot appear in machine names


def lab_of_netns(name: str) -> str | None:
    """'lnet-seed.ubuntu-3' -> 'seed'; None for names that are not a lab's."""
    if not name.startswith("lnet-") or "." not in name:
        return None
    return name[5:].split(".", 1)[0]


def short_ifname(*parts: str, prefix: str = "lx") -> str:
    """A stable 15-char-safe interface name for the fabric side of a link."""
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return f"{prefix}{digest[: 15 - len(prefix)]}"
