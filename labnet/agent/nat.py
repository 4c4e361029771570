"""nat_outgoing: masquerade pod traffic leaving the pool, with one nftables table the agent owns.

  table ip labnet-nat {
    chain postrouting {
      type nat hook postrouting priority srcnat; policy accept;
      ip saddr 10.100.0.0/16 ip daddr != 10.100.0.0/16 oifname != "tunl0" masquerade
    }
  }

Applied as one `nft -f` transaction that also drops any old copy, so re-applying is
idempotent and never leaves a window without the rule.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable

from labnet.errors import CommandFailed

TABLE = "labnet-nat"


def nat_ruleset(pool: str, tunnel_devices: Iterable[str] = ("tunl0",)) -> str:
    """The complete nft script that (re)creates the table for `pool`."""
    net = ipaddress.IPv4Network(pool)
    rule = f"ip saddr {net} ip daddr != {net}"
    for dev in tunnel_devices:
        rule += f' oifname != "{dev}"'
    rule += " masquerade"
    return (
        f"add table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {rule}\n"
        f"  }}\n"
        f"}}\n"
    )


def remove_script() -> str:
    # `add` first so the delete cannot fail when the table is already gone
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def _nft(script: str, where: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CommandFailed(where, ["nft", "-f", "-"], proc.returncode, f"{proc.stderr}\nscript:\n{script}")


def apply_nat(pool: str, tunnel_devices: Iterable[str], where: str = "agent") -> None:
    _nft(nat_ruleset(pool, tunnel_devices), where)


def remove_nat(where: str = "agent") -> None:
    _nft(remove_script(), where)


def nat_present(where: str = "agent") -> bool:
    proc = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0
