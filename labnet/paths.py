"""Where a lab keeps its things on the host, how its objects are named, and which names are
allowed at all.

Everything a lab creates carries its prefix `lnet-<lab>` so that gc and down touch only
what is theirs. A name a user types becomes a path, a namespace name, an etcd key or a CNI
argument: the rules below are the one check of it, shared by the topology validator and every
CLI verb, and every path built here checks its parts again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from labnet.errors import BadInput

LAB_NAME_RE = r"^[a-z][a-z0-9-]{0,19}$"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # machines, pods, networks
MACHINE_NAME_MAX = 30
NETWORK_NAME_MAX = 12  # the fabric bridge is named br-<network>: 15 characters at most


def lab_name_error(name: object) -> str | None:
    if isinstance(name, str) and re.match(LAB_NAME_RE, name):
        return None
    return (f"lab name {str(name)[:80]!r} is not valid: it must match {LAB_NAME_RE} "
            "(a lowercase letter, then lowercase letters, digits and '-', 20 characters at most)")


def name_error(kind: str, name: object, limit: int = MACHINE_NAME_MAX) -> str | None:
    if isinstance(name, str) and NAME_RE.match(name) and len(name) <= limit:
        return None
    return (f"{kind} name {str(name)[:80]!r} is not valid: use lowercase letters, digits and '-' "
            f"(not at either end), {limit} characters at most")


def lab_arg(value: str) -> str:
    """An argparse `type=` for a lab name: a bad one is argparse's exit 2, with the rule."""
    error = lab_name_error(value)
    if error:
        raise argparse.ArgumentTypeError(error)
    return value


def name_arg(kind: str) -> Callable[[str], str]:
    """An argparse `type=` for a machine (`kind` "machine"/"node") or pod name."""

    def check(value: str) -> str:
        error = name_error(kind, value)
        if error:
            raise argparse.ArgumentTypeError(error)
        return value

    check.__name__ = f"{kind} name"  # argparse names the type in its messages
    return check


def target_arg(value: str) -> str:
    """An argparse `type=` for NODE or NODE/POD."""
    node, slash, pod = value.partition("/")
    name_arg("machine")(node)
    if slash:
        name_arg("pod")(pod)
    return value


def check_lab(name: str) -> str:
    """`name` if it is a valid lab name; BadInput (exit 2) otherwise."""
    error = lab_name_error(name)
    if error:
        raise BadInput(error)
    return name


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid machine or pod name (`kind` says which, for the message)."""
    error = name_error(kind, name)
    if error:
        raise BadInput(error)
    return name

NETNS_DIR = Path("/run/netns")  # where `ip netns` looks: lab namespaces show up in `ip netns list`


def state_root() -> Path:
    return Path(os.environ.get("LABNET_STATE_DIR", "/var/lib/labnet"))


def run_root() -> Path:
    """Holds the mount/UTS namespace files; itself a private bind mount (see runtime.netns)."""
    return Path(os.environ.get("LABNET_RUN_DIR", "/run/labnet"))


def lab_prefix(lab: str) -> str:
    return f"lnet-{lab}"


def lab_dir(lab: str) -> Path:
    return state_root() / "labs" / check_lab(lab)


def lock_file(lab: str) -> Path:
    return state_root() / "labs" / f".{check_lab(lab)}.lock"


def node_dir(lab: str, node: str) -> Path:
    return lab_dir(lab) / "nodes" / check_name("machine", node)


def ns_dir(lab: str) -> Path:
    return run_root() / check_lab(lab)


def netns_name(lab: str, node: str) -> str:
    # '.' cannot appear in lab or machine names, so gc can split the lab name back out.
    return f"{lab_prefix(check_lab(lab))}.{check_name('machine', node)}"


def fabric_netns(lab: str) -> str:
    return f"{lab_prefix(check_lab(lab))}._fabric"  # '_' cannot appear in machine names


def lab_of_netns(name: str) -> str | None:
    """'lnet-seed.ubuntu-3' -> 'seed'; None for names that are not a lab's."""
    if not name.startswith("lnet-") or "." not in name:
        return None
    return name[5:].split(".", 1)[0]


def short_ifname(*parts: str, prefix: str = "lx") -> str:
    """A stable 15-char-safe interface name for the fabric side of a link."""
    digest = hashlib.sha1("/".join(parts).encode()).hexdigest()
    return f"{prefix}{digest[: 15 - len(prefix)]}"
