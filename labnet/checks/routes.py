"""The one place that turns `ip -j route` output into typed routes.

`ip -j route` leaves out fields that have their default (type unicast, protocol boot, scope
global, table main, metric 0) unless `-d` is given, and prints protocols, scopes and tables
by name when /etc/iproute2 knows one and by number otherwise. Everything here normalises both
spellings to one canonical form so that `proto bird`, `"protocol": "bird"` and `12` compare
equal (labnet's agent installs its routes with proto bird = 12, as Calico's BIRD does).

One family at a time: the IPv4 table by default, where IPv6 entries (which `show table all`
prints without `-4`) are skipped, not rejected; `family=6` reads `ip -6 -j route` instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from labnet.errors import BadInput
from labnet.nsexec import NodeNS, run

# iproute2's reserved numbers (rt_protos, rt_scopes, rt_tables); canonical names come from
# these so the result does not depend on which files a host happens to have.
PROTOCOLS: dict[int, str] = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
    10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
    18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip",
    192: "eigrp",
}
SCOPES: dict[int, str] = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
TABLES: dict[int, str] = {0: "unspec", 253: "default", 254: "main", 255: "local"}
TYPES = frozenset({
    "unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable",
    "prohibit", "throw", "nat", "xresolve", "unspec",
})
_SCOPE_ALIASES = {"universe": "global"}  # `ip route add ... scope universe` is global
_RT_PROTOS_FILES = (
    Path("/etc/iproute2/rt_protos"), Path("/usr/share/iproute2/rt_protos"),
    Path("/usr/lib/iproute2/rt_protos"),
)
_RT_PROTOS_DIRS = (Path("/etc/iproute2/rt_protos.d"), Path("/usr/share/iproute2/rt_protos.d"))

IPAddr = IPv4Address | IPv6Address


def _read_id_files(files: Iterable[Path]) -> dict[str, int]:
    """name -> number from iproute2 `<number> <name>` files (missing files are fine)."""
    names: dict[str, int] = {}
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                try:
                    num = int(parts[0], 0)
                except ValueError:
                    continue
                names.setdefault(parts[1], num)
    return names


def _local_protocol_names() -> dict[str, int]:
    files = list(_RT_PROTOS_FILES)
    for d in _RT_PROTOS_DIRS:
        if d.is_dir():
            files += sorted(d.glob("*.conf"))
    return _read_id_files(files)


_PROTO_BY_NAME: dict[str, int] = {**_local_protocol_names(), **{v: k for k, v in PROTOCOLS.items()}}
_PROTO_LOCAL_NAMES: dict[int, str] = {num: name for name, num in _PROTO_BY_NAME.items() if num not in PROTOCOLS}


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    return None


def _by_number(value: object, known: Mapping[int, str], what: str, limit: int = 255) -> str:
    num = _as_int(value)
    if num is None:
        raise BadInput(f"route {what} {value!r} is neither a known name nor a number")
    if not 0 <= num <= limit:
        raise BadInput(f"route {what} {value!r} is out of range 0..{limit}")
    return known.get(num, str(num))


def norm_protocol(value: str | int) -> str:
    """`bird`, `12`, `"12"`, `0xc` -> `bird`; unknown numbers stay numbers (`"77"`)."""
    if isinstance(value, str) and _as_int(value) is None:
        name = value.strip().lower()
        if name in _PROTO_BY_NAME:
            known = _PROTO_BY_NAME[name]
            return PROTOCOLS.get(known, _PROTO_LOCAL_NAMES.get(known, name))
        if not name:
            raise BadInput("route protocol is empty")
        return name  # a name `ip` knew from a file we cannot see: keep it as printed
    num = _as_int(value)
    if num is not None and num in _PROTO_LOCAL_NAMES and num not in PROTOCOLS:
        return _PROTO_LOCAL_NAMES[num]
    return _by_number(value, PROTOCOLS, "protocol")


def norm_scope(value: str | int) -> str:
    """`link`, `253` -> `link`; `universe`, `0` -> `global`."""
    if isinstance(value, str) and _as_int(value) is None:
        name = _SCOPE_ALIASES.get(value.strip().lower(), value.strip().lower())
        if name not in SCOPES.values():
            raise BadInput(f"route scope {value!r} is not one of {sorted(SCOPES.values())} or a number 0..255")
        return name
    return _by_number(value, SCOPES, "scope")


def norm_table(value: str | int) -> str:
    """`main`, `254` -> `main`; other tables by number (`"100"`)."""
    if isinstance(value, str) and _as_int(value) is None:
        name = value.strip().lower()
        if name == "all":
            raise BadInput("route table 'all' names every table, not one; use it only to list routes")
        return name
    return _by_number(value, TABLES, "table", limit=2**32 - 1)


def norm_type(value: str) -> str:
    name = str(value).strip().lower()
    if name not in TYPES:
        raise BadInput(f"route type {value!r} is not one of {sorted(TYPES)}")
    return name


IPNet = IPv4Network | IPv6Network


def norm_dst(value: str | IPNet | IPAddr, family: int = 4) -> IPNet:
    """`default` -> 0.0.0.0/0 (::/0 for family 6), a bare address -> /32 (/128). Host bits set
    is an error, not a silent mask."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if isinstance(value, IPv4Address | IPv6Address):
        return ip_network(value)
    text = str(value).strip()
    if text in ("default", "0/0", "any", "all"):
        return IPv4Network("0.0.0.0/0") if family == 4 else IPv6Network("::/0")
    try:
        return ip_network(text)
    except ValueError as exc:
        raise BadInput(f"route destination {value!r} is not an IP network or address: {exc}") from None


def norm_address(value: str | IPAddr, what: str = "gateway") -> IPAddr:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    try:
        return ip_address(str(value).strip())
    except ValueError:
        raise BadInput(f"route {what} {value!r} is not an IP address") from None


@dataclass(frozen=True)
class Nexthop:
    gateway: IPAddr | None
    dev: str | None
    weight: int = 1
    onlink: bool = False
    flags: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = ["nexthop"]
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        if self.dev:
            parts += ["dev", self.dev]
        parts += ["weight", str(self.weight), *self.flags]
        return " ".join(parts)


@dataclass(frozen=True)
class Route:
    dst: IPNet
    type: str = "unicast"
    gateway: IPAddr | None = None
    dev: str | None = None
    protocol: str = "boot"
    scope: str = "global"
    onlink: bool = False
    prefsrc: IPAddr | None = None
    metric: int = 0
    table: str = "main"
    flags: tuple[str, ...] = ()  # every flag as printed (onlink, linkdown, dead, ...)
    nexthops: tuple[Nexthop, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The route in `ip -j -d route` shape with canonical values; what `match` dicts are held against."""
        d: dict[str, Any] = {
            "dst": str(self.dst), "type": self.type, "protocol": self.protocol, "scope": self.scope,
            "table": self.table, "metric": self.metric, "onlink": self.onlink, "flags": list(self.flags),
        }
        if self.gateway is not None:
            d["gateway"] = str(self.gateway)
        if self.dev is not None:
            d["dev"] = self.dev
        if self.prefsrc is not None:
            d["prefsrc"] = str(self.prefsrc)
        if self.nexthops:
            d["nexthops"] = [
                {**({"gateway": str(n.gateway)} if n.gateway is not None else {}),
                 **({"dev": n.dev} if n.dev is not None else {}),
                 "weight": n.weight, "onlink": n.onlink, "flags": list(n.flags)}
                for n in self.nexthops
            ]
        return d

    def __str__(self) -> str:
        """As `ip route` prints it (defaults left out), for failure messages."""
        parts = [] if self.type == "unicast" else [self.type]
        parts.append("default" if self.dst.prefixlen == 0 else
                     str(self.dst.network_address) if self.dst.prefixlen == self.dst.max_prefixlen else str(self.dst))
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        if self.dev:
            parts += ["dev", self.dev]
        if self.table != "main":
            parts += ["table", self.table]
        if self.protocol != "boot":
            parts += ["proto", self.protocol]
        if self.scope != "global":
            parts += ["scope", self.scope]
        if self.prefsrc is not None:
            parts += ["src", str(self.prefsrc)]
        if self.metric:
            parts += ["metric", str(self.metric)]
        parts += list(self.flags)
        text = " ".join(parts)
        for n in self.nexthops:
            text += f"\n\t{n}"
        return text


# Keys of `ip -j route` entries we understand; anything else (cache, uid, pref, expires,
# encap, ...) is ignored rather than rejected, since newer iproute2 versions add keys.
def route_from_json(entry: Mapping[str, Any], default_table: str = "main", family: int = 4) -> Route | None:
    """One `ip -j route` entry -> Route; None for an entry of the other family (an IPv6 one
    when reading IPv4). Bad entries raise BadInput."""
    if not isinstance(entry, Mapping):
        raise BadInput(f"route entry is not a JSON object: {entry!r}")
    if "dst" not in entry:
        raise BadInput(f"route entry has no 'dst': {dict(entry)!r}")
    raw_dst = str(entry["dst"])
    if family == 4 and (":" in raw_dst or entry.get("family") == "inet6"):
        return None
    flags = tuple(str(f) for f in entry.get("flags", []) or [])
    gateway: IPAddr | None = None
    if "gateway" in entry:
        gateway = norm_address(entry["gateway"])
    elif isinstance(entry.get("via"), Mapping) and "host" in entry["via"]:  # IPv4 route via an IPv6 gateway
        gateway = norm_address(entry["via"]["host"])
    prefsrc = norm_address(entry["prefsrc"], "prefsrc") if "prefsrc" in entry else None
    if prefsrc is not None and prefsrc.version != family:
        raise BadInput(f"route prefsrc {entry['prefsrc']!r} is not IPv{family}")
    nexthops = tuple(
        Nexthop(
            gateway=norm_address(nh["gateway"]) if "gateway" in nh else None,
            dev=nh.get("dev"),
            weight=int(nh.get("weight", 1)),
            onlink="onlink" in (nh.get("flags") or []),
            flags=tuple(str(f) for f in nh.get("flags", []) or []),
        )
        for nh in entry.get("nexthops", []) or []
    )
    metric = _as_int(entry.get("metric", 0))
    if metric is None:
        raise BadInput(f"route metric {entry.get('metric')!r} is not a number")
    return Route(
        dst=norm_dst(raw_dst, family),
        type=norm_type(entry.get("type", "unicast")),
        gateway=gateway,
        dev=entry.get("dev"),
        protocol=norm_protocol(entry.get("protocol", "boot")),
        scope=norm_scope(entry.get("scope", "global")),
        onlink="onlink" in flags,
        prefsrc=prefsrc,
        metric=metric,
        table=norm_table(entry.get("table", default_table)),
        flags=flags,
        nexthops=nexthops,
    )


def parse_routes(json_text: str, default_table: str = "main", family: int = 4) -> list[Route]:
    """Parse `ip -j route [show table T]` or `ip -j -d route show table all` output.

    `default_table` is the table to assume for entries that do not name one (plain `ip -j route`
    leaves out `table` for the table that was asked for when it is main).
    """
    text = json_text.strip()
    if not text:
        return []  # `ip -j route` prints nothing at all for an empty table
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"`ip -j route` output is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(data, list):
        raise BadInput(f"`ip -j route` output is not a JSON list: {text[:200]!r}")
    table = norm_table(default_table)
    return [r for r in (route_from_json(e, table, family) for e in data) if r is not None]


def get_routes(ns: NodeNS | None, table: str | int = "main", family: int = 4) -> list[Route]:
    """The routes of one family of one table (or every table with table="all") inside `ns`."""
    t = "all" if str(table).strip().lower() == "all" else norm_table(table)
    proc = run(ns, ["ip", f"-{family}", "-j", "-d", "route", "show", "table", t], timeout=20)
    return parse_routes(proc.stdout, default_table="main" if t == "all" else t, family=family)


def normalise_match(match: Mapping[str, Any], family: int = 4) -> dict[str, Any]:
    """A user's `match` dict (any subset of `ip -j route` fields, names or numbers) in Route.as_dict form.

    Unknown keys raise BadInput, so a typo like `gatway` fails loudly instead of matching nothing.
    """
    out: dict[str, Any] = {}
    for key, value in match.items():
        if key == "dst":
            out[key] = str(norm_dst(value, family))
        elif key == "type":
            out[key] = norm_type(value)
        elif key in ("protocol", "proto"):
            out["protocol"] = norm_protocol(value)
        elif key == "scope":
            out[key] = norm_scope(value)
        elif key == "table":
            out[key] = norm_table(value)
        elif key in ("gateway", "via"):
            out["gateway"] = None if value is None else str(norm_address(value))
        elif key in ("prefsrc", "src"):
            out["prefsrc"] = None if value is None else str(norm_address(value, "prefsrc"))
        elif key == "metric":
            num = _as_int(value)
            if num is None:
                raise BadInput(f"route metric {value!r} is not a number")
            out[key] = num
        elif key == "onlink":
            if not isinstance(value, bool):
                raise BadInput(f"route onlink must be true or false, not {value!r}")
            out[key] = value
        elif key == "dev":
            out[key] = None if value is None else str(value)
        elif key == "flags":
            if not isinstance(value, list | tuple):
                raise BadInput(f"route flags must be a list, not {value!r}")
            out[key] = [str(f) for f in value]
        elif key == "nexthops":
            out[key] = value
        else:
            raise BadInput(
                f"unknown route field {key!r} in match; known: dst type protocol scope table gateway "
                "dev prefsrc metric onlink flags nexthops"
            )
    return out


def format_table(routes: Iterable[Route]) -> str:
    lines = [str(r) for r in routes]
    return "\n".join(lines) if lines else "(no routes)"
