"""nat_outgoing: masquerade pod traffic leaving the pool, with one nftables table the agent owns.

  table ip labnet-nat {
    chain postrouting {
      type nat hook postrouting priority srcnat; policy accept;
      ip saddr 10.100.0.0/16 ip daddr != 10.100.0.0/16 oifname != "tunl0" masquerade
    }
  }

Applied as one `nft -f` transaction that also drops any old copy, so re-applying is
idempotent and never leaves a window without the rule. An IPv6 pool with nat_outgoing gets
the same table in the ip6 family (NAT66: `ip6 saddr <pool6> ... masquerade`).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable

from labnet.errors import CommandFailed

TABLE = "labnet-nat"


def family_of(pool: str) -> str:
    """The nftables family of a pool's table: ip, or ip6 for an IPv6 pool."""
    return "ip6" if ipaddress.ip_network(pool).version == 6 else "ip"


def nat_ruleset(pool: str, tunnel_devices: Iterable[str] = ("tunl0",)) -> str:
    """The complete nft script that (re)creates the table for `pool` (of its family)."""
    net = ipaddress.ip_network(pool)
    fam = family_of(pool)
    rule = f"{fam} saddr {net} {fam} daddr != {net}"
    for dev in tunnel_devices:
        rule += f' oifname != "{dev}"'
    rule += " masquerade"
    return (
        f"add table {fam} {TABLE}\n"
        f"delete table {fam} {TABLE}\n"
        f"table {fam} {TABLE} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {rule}\n"
        f"  }}\n"
        f"}}\n"
    )


def remove_script(family: str = "ip") -> str:
    # `add` first so the delete cannot fail when the table is already gone
    return f"add table {family} {TABLE}\ndelete table {family} {TABLE}\n"


def _nft(script: str, where: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CommandFailed(where, ["nft", "-f", "-"], proc.returncode, f"{proc.stderr}\nscript:\n{script}")


def apply_nat(pool: str, tunnel_devices: Iterable[str], where: str = "agent") -> None:
    _nft(nat_ruleset(pool, tunnel_devices), where)


def remove_nat(where: str = "agent", family: str = "ip") -> None:
    _nft(remove_script(family), where)


def nat_present(where: str = "agent", family: str = "ip") -> bool:
    proc = subprocess.run(["nft", "list", "table", family, TABLE], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0
