"""The assertions `labnet check`, `labnet doctor` and the pytest plugin share.

Each one polls with a deadline (labnet.wait.poll) until it holds. It returns a CheckResult
(with how long it took and how many attempts, so a pass after a retry is visible) or raises
CheckFailed, whose message names the node, the object, expected vs actual, the last state
seen (the whole route table, the neighbour table, ...) and the time waited.

Inputs are validated before polling starts, so bad input fails at once with BadInput instead
of timing out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

from labnet.checks.compare import matches, subset_diff
from labnet.checks.probe import RECEIVED, need_ping
from labnet.checks.result import CheckFailed, CheckResult
from labnet.checks.routes import Route, format_table, get_routes, norm_dst, normalise_match
from labnet.errors import BadInput, WaitTimeout
from labnet.nsexec import NodeNS, run
from labnet.wait import DEFAULT_TIMEOUT, poll

CALICO_GATEWAY = "169.254.1.1"  # the pod's default gateway that nobody owns (seed)


@dataclass(frozen=True)
class Observation:
    """One probe's view: did it hold, and what was seen."""

    ok: bool
    expected: str
    actual: str
    state: str = ""  # the last state seen, multi-line (route table, neighbour table, ...)
    state_label: str = ""  # what `state` is, e.g. "ip route (table main) on ubuntu-3"
    diagnosis: str = ""  # why it fails, when we can tell (e.g. the seed's proxy-ARP requirements)
    table: tuple[tuple[str, ...], ...] = ()  # a matrix judged, header first (CheckResult.table)


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + line for line in text.splitlines()) if text else pad + "(nothing)"


def failure_message(name: str, target: str, obs: Observation | str, waited: float, attempts: int) -> str:
    head = f"check failed on {target}: {name} (waited {waited:.1f}s, {attempts} attempt{'s' if attempts != 1 else ''})"
    if isinstance(obs, str):  # the probe itself raised every time
        return f"{head}\n  could not observe: {obs}"
    lines = [head, f"  expected: {obs.expected}", f"  actual:   {obs.actual}"]
    if obs.diagnosis:
        lines.append(f"  why:      {obs.diagnosis}")
    if obs.state or obs.state_label:
        lines.append(f"  last state seen ({obs.state_label or 'state'}):")
        lines.append(_indent(obs.state))
    return "\n".join(lines)


def run_check(name: str, target: str, probe: Callable[[], Observation], timeout: float) -> CheckResult:
    """Poll `probe` until it holds; CheckResult on success, CheckFailed when the deadline passes."""
    __tracebackhide__ = True  # pytest shows the CheckFailed message, not these frames
    attempts = 0

    def counted() -> Observation:
        nonlocal attempts
        attempts += 1
        return probe()

    start = time.monotonic()
    try:
        obs = poll(counted, lambda o: o.ok, timeout=timeout, what=f"{name} on {target}")
    except WaitTimeout as exc:
        last = exc.last if isinstance(exc.last, Observation) else str(exc.last)
        detail = (f"expected {last.expected}; actual {last.actual}" if isinstance(last, Observation)
                  else f"could not observe: {last}")
        message = failure_message(name, target, last, exc.waited, attempts)
        table = last.table if isinstance(last, Observation) else ()
        raise CheckFailed(CheckResult(False, name, target, detail, exc.waited, attempts, message, table)) from None
    return CheckResult(True, name, target, obs.actual, time.monotonic() - start, attempts, table=obs.table)


def as_result(call: Callable[[], CheckResult]) -> CheckResult:
    """Run an assert_* call and return its CheckResult whether it passed or failed (for reports)."""
    try:
        return call()
    except CheckFailed as exc:
        return exc.result


# ---------------------------------------------------------------- routes

_MATCH_ORDER = ("dst", "gateway", "dev", "table", "protocol", "scope", "prefsrc", "metric")
_MATCH_WORDS = {"gateway": "via", "protocol": "proto", "prefsrc": "src"}


def describe_match(match: Mapping[str, Any]) -> str:
    """A normalised match dict written like an `ip route` line: `blackhole 10.0.0.0/26 proto bird`."""
    parts: list[str] = []
    if match.get("type") and match["type"] != "unicast":  # `ip route` does not print unicast either
        parts.append(str(match["type"]))
    for key in _MATCH_ORDER:
        if key not in match:
            continue
        value = match[key]
        word = _MATCH_WORDS.get(key, key)
        if key == "dst":
            parts.append("default" if value == "0.0.0.0/0" else str(value))
        elif value is None:
            parts.append(f"(no {word})")
        else:
            parts += [word, str(value)]
    if "onlink" in match:
        parts.append("onlink" if match["onlink"] else "(not onlink)")
    if "flags" in match:
        parts.append(f"flags {match['flags']}")
    return " ".join(parts) if parts else "any route"


def _route_table_obs(ns: NodeNS, table: str, family: int = 4) -> tuple[list[Route], str, str]:
    routes = get_routes(ns, table, family)
    return routes, format_table(routes), f"ip -{family} route show table {table} on {ns.name}"


def family_of_match(match: Mapping[str, Any], family: int | None = None) -> int:
    """Which route table a match is about: the one its dst or gateway is of, else `family` (4)."""
    for key in ("dst", "gateway", "via"):
        value = match.get(key)
        if value is not None and str(value) not in ("default", "any", "all", "0/0"):
            return 6 if ":" in str(value) else 4
    return family or 4


def _table_of(norm: Mapping[str, Any], table: str | int) -> str:
    return str(norm.get("table", table))


def assert_route(ns: NodeNS, match: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT,
                 table: str | int = "main", name: str | None = None, family: int | None = None) -> CheckResult:
    """A route matching `match` (any subset of `ip -j route` fields, names or numbers) exists, in
    the IPv4 table or the IPv6 one (as its dst says, else `family`)."""
    __tracebackhide__ = True
    fam = family_of_match(match, family)
    norm = normalise_match(match, fam)
    tbl = _table_of(norm, table)
    want = describe_match(norm)

    def probe() -> Observation:
        routes, state, label = _route_table_obs(ns, tbl, fam)
        hits = [r for r in routes if matches(norm, r.as_dict())]
        if hits:
            return Observation(True, want, f"present: {hits[0]}")
        if "dst" in norm:
            same = [r for r in routes if str(r.dst) == norm["dst"]]
            if same:
                why = "; ".join(subset_diff(norm, same[0].as_dict()))
                actual = f"route to {norm['dst']} is `{same[0]}` ({why})"
            else:
                actual = f"no route to {norm['dst']} in table {tbl}"
        else:
            actual = f"none of the {len(routes)} routes in table {tbl} matches"
        return Observation(False, want, actual, state, label)

    return run_check(name or f"route {want}", ns.name, probe, timeout)


def assert_no_route(ns: NodeNS, dst: str | IPv4Network | IPv4Address | None = None, *,
                    match: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                    table: str | int = "main", family: int | None = None) -> CheckResult:
    """No route for exactly `dst` (an address means its /32), or none matching `match`.

    This is about the route table's entries, not reachability: a default route does not count
    as a route to `dst`.
    """
    __tracebackhide__ = True
    if dst is None and not match:
        raise BadInput("assert_no_route needs dst or match")
    full = dict(match or {}, **({"dst": str(dst)} if dst is not None else {}))
    fam = family_of_match(full, family)
    if dst is not None:
        full["dst"] = str(norm_dst(dst, fam))
    norm = normalise_match(full, fam)
    tbl = _table_of(norm, table)
    want = f"no route {describe_match(norm)}"

    def probe() -> Observation:
        routes, state, label = _route_table_obs(ns, tbl, fam)
        hits = [r for r in routes if matches(norm, r.as_dict())]
        if not hits:
            return Observation(True, want, f"absent from table {tbl} ({len(routes)} routes)")
        return Observation(False, want, "present: " + "; ".join(f"`{r}`" for r in hits), state, label)

    return run_check(want, ns.name, probe, timeout)


def assert_blackhole_route(ns: NodeNS, block: str | IPv4Network, *, protocol: str | int | None = "bird",
                           timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """`blackhole <block> proto bird`: the node drops traffic to addresses of its block no pod holds."""
    __tracebackhide__ = True
    match: dict[str, Any] = {"dst": str(block), "type": "blackhole"}
    if protocol is not None:
        match["protocol"] = protocol
    norm = normalise_match(match)
    return assert_route(ns, norm, timeout=timeout, name=f"blackhole {describe_match({k: v for k, v in norm.items() if k != 'type'})}")


def assert_tunnel_route(ns: NodeNS, block: str | IPv4Network, via: str | IPv4Address, *, dev: str = "tunl0",
                        onlink: bool = True, protocol: str | int | None = "bird",
                        timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """`<block> via <peer> dev tunl0 proto bird onlink`: another node's block over the tunnel."""
    __tracebackhide__ = True
    match: dict[str, Any] = {"dst": str(block), "type": "unicast", "gateway": str(via), "dev": dev, "onlink": onlink}
    if protocol is not None:
        match["protocol"] = protocol
    norm = normalise_match(match)
    return assert_route(ns, norm, timeout=timeout, name=f"tunnel route {describe_match(norm)}")


# ---------------------------------------------------------------- sysctl

_PER_IFACE = ("net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh.")


def sysctl_path(key: str) -> str:
    """`net.ipv4.conf.vxlan.calico.forwarding` -> /proc/sys/net/ipv4/conf/vxlan.calico/forwarding.

    Interface names may hold dots, so in the per-interface trees everything between the fourth
    component and the last one is the interface name. Slash form and /proc/sys paths pass through.
    """
    key = key.strip()
    if not key or any(c.isspace() for c in key) or ".." in key.split("/"):
        raise BadInput(f"bad sysctl key {key!r}")
    if key.startswith("/proc/sys/"):
        return key
    if "/" in key:
        return "/proc/sys/" + key.strip("/")
    for prefix in _PER_IFACE:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            iface, sep, leaf = rest.rpartition(".")
            if not sep or not iface or not leaf:
                raise BadInput(f"sysctl key {key!r} needs an interface and a setting after {prefix!r}")
            return "/proc/sys/" + prefix.rstrip(".").replace(".", "/") + f"/{iface}/{leaf}"
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(ns: NodeNS, key: str) -> str:
    # /proc/sys/net shows the network namespace of the process that opens it: cat runs inside ns.
    return " ".join(run(ns, ["cat", sysctl_path(key)], timeout=10).stdout.split())


def assert_sysctl(ns: NodeNS, key: str, value: int | str, *, timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    __tracebackhide__ = True
    path = sysctl_path(key)
    want = " ".join(str(value).split())

    def probe() -> Observation:
        got = read_sysctl(ns, path)
        return Observation(got == want, f"{key} = {want}", f"{key} = {got}")

    return run_check(f"sysctl {key} = {want}", ns.name, probe, timeout)


# ---------------------------------------------------------------- ping and connectivity



def _check_ip(ip: str | IPv4Address, what: str) -> str:
    try:
        return str(ip_address(str(ip).strip()))
    except ValueError:
        raise BadInput(f"{what} {ip!r} is not an IP address") from None


@dataclass(frozen=True)
class PingOutcome:
    reached: bool
    text: str  # "1/1 replies" or the reason there were none


def ping_once(src: NodeNS | None, dst_ip: str, count: int = 1) -> PingOutcome:
    argv = ["ping", "-n", "-c", str(count), "-W", "1"]
    if count > 1:
        argv += ["-i", "0.2"]
    proc = run(src, [*argv, dst_ip], check=False, timeout=10 + 2 * count)
    m = RECEIVED.search(proc.stdout)
    if m:
        sent, got = int(m.group(1)), int(m.group(2))
        return PingOutcome(got > 0, f"{got}/{sent} replies")
    err = (proc.stderr or proc.stdout).strip().splitlines()
    return PingOutcome(False, f"ping exited {proc.returncode}: {err[-1] if err else 'no output'}")


def assert_ping(src_ns: NodeNS, dst_ip: str | IPv4Address, count: int = 1, expect: bool = True, *,
                timeout: float = DEFAULT_TIMEOUT, dst_name: str | None = None) -> CheckResult:
    """`ping -c<count> -W1` from src_ns reaches dst_ip (expect=True) or gets no reply (expect=False)."""
    __tracebackhide__ = True
    need_ping()
    if count < 1:
        raise BadInput(f"ping count must be at least 1, not {count}")
    dst = _check_ip(dst_ip, "ping destination")
    label = f"{dst_name} ({dst})" if dst_name else dst
    want = f"{'replies' if expect else 'no reply'} from {label}"

    def probe() -> Observation:
        out = ping_once(src_ns, dst, count)
        return Observation(out.reached == expect, want, f"{out.text} from {label}")

    return run_check(f"ping {label}" if expect else f"no ping {label}", src_ns.name, probe, timeout)


@dataclass(frozen=True)
class Endpoint:
    """What a name in a connectivity matrix stands for: where to ping from, and its address."""

    name: str
    ns: NodeNS | None  # None for a destination one cannot ping from (a literal address)
    ip: str


# ---------------------------------------------------------------- proxy ARP

_BAD_NEIGH = {"FAILED", "INCOMPLETE", "NONE"}


def _link_mac(ns: NodeNS, dev: str) -> str | None:
    proc = run(ns, ["ip", "-j", "link", "show", "dev", dev], check=False, timeout=10)
    if proc.returncode != 0:
        return None
    links = json.loads(proc.stdout or "[]")
    return str(links[0].get("address", "")).lower() if links else None


def _neigh(ns: NodeNS, ip: str, dev: str) -> list[dict[str, Any]]:
    proc = run(ns, ["ip", "-j", "neigh", "show", ip, "dev", dev], timeout=10)
    data = json.loads(proc.stdout or "[]")
    # `ip neigh show X dev D` leaves out dst and dev, the filter's own values
    return [{"dst": ip, "dev": dev, **e} for e in data if isinstance(e, dict)]


def _neigh_text(entries: Iterable[Mapping[str, Any]]) -> str:
    out = []
    for e in entries:
        state = ",".join(e.get("state", []) or [])
        out.append(f"{e.get('dst')} dev {e.get('dev')} lladdr {e.get('lladdr', '(none)')} {state}".strip())
    return "\n".join(out) if out else "(no entry)"


def proxy_arp_diagnosis(node_ns: NodeNS, host_veth: str, gateway: str, proxy_arp: str, forwarding: str) -> str:
    """Which of the seed's three proxy-ARP requirements (plus Linux's forwarding rule) is broken."""
    if proxy_arp != "1":
        return (f"proxy_arp is {proxy_arp} on {host_veth} in {node_ns.name}: the node does not answer ARP on "
                f"the pod's behalf (seed requirement 1: proxy-ARP enabled on the interface)")
    if forwarding != "1":
        return (f"forwarding is {forwarding} on {host_veth} in {node_ns.name}: Linux answers proxy ARP only "
                f"on interfaces that forward")
    routes = get_routes(node_ns)
    has_default = any(r.dst.prefixlen == 0 for r in routes)
    proc = run(node_ns, ["ip", "-j", "route", "get", gateway], check=False, timeout=10)
    if proc.returncode != 0:
        if not has_default:
            return (f"node {node_ns.name} has no default route, so it has no route to {gateway} and "
                    f"proxy-ARP on {host_veth} cannot answer (seed requirement 2: the host must know how "
                    f"to reach the destination)")
        return f"node {node_ns.name} has no route to {gateway}: {proc.stderr.strip()} (seed requirement 2)"
    got = json.loads(proc.stdout or "[]")
    dev = got[0].get("dev") if got else None
    if dev == host_veth:
        return (f"node {node_ns.name} routes {gateway} out of {host_veth} itself, the interface the ARP "
                f"request came in on, so proxy-ARP stays silent (seed requirement 3)")
    return ""


def assert_proxy_arp(node_ns: NodeNS, pod_ns: NodeNS, host_veth: str, *, gateway: str = CALICO_GATEWAY,
                     pod_dev: str = "eth0", timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """The host veth answers the pod's ARP for 169.254.1.1 with its own MAC (seed, proxy-ARP walk-through).

    Holds when proxy_arp=1 on the host veth AND, after the pod sends traffic to the gateway, the
    pod's neighbour entry for it carries the host veth's MAC. The pod's entry for the gateway is
    forgotten once first, so the answer seen is a fresh one and not a leftover.
    """
    __tracebackhide__ = True
    need_ping()
    gw = _check_ip(gateway, "gateway")
    want = f"proxy_arp=1 on {host_veth} and {pod_ns.name}'s ARP entry for {gw} dev {pod_dev} = {host_veth}'s MAC"
    run(pod_ns, ["ip", "neigh", "del", gw, "dev", pod_dev], check=False, timeout=10)

    def probe() -> Observation:
        proxy_arp = read_sysctl(node_ns, f"net.ipv4.conf.{host_veth}.proxy_arp")
        forwarding = read_sysctl(node_ns, f"net.ipv4.conf.{host_veth}.forwarding")
        mac = _link_mac(node_ns, host_veth)
        if mac is None:
            return Observation(False, want, f"{node_ns.name} has no interface {host_veth}")
        ping_once(pod_ns, gw)  # its reply does not matter; the ARP exchange before it does
        entries = _neigh(pod_ns, gw, pod_dev)
        good = [e for e in entries if str(e.get("lladdr", "")).lower() == mac
                and not _BAD_NEIGH & set(e.get("state", []) or [])]
        state = (f"{pod_ns.name}: ip neigh show {gw} dev {pod_dev}\n{_neigh_text(entries)}\n"
                 f"{node_ns.name}: {host_veth} MAC {mac}, proxy_arp={proxy_arp}, forwarding={forwarding}\n"
                 f"{node_ns.name}: ip route\n{_indent(format_table(get_routes(node_ns)), '  ')}")
        if proxy_arp == "1" and good:
            return Observation(True, want, f"proxy_arp=1, {gw} is-at {mac} ({','.join(good[0].get('state', []))})")
        if entries and entries[0].get("lladdr") and str(entries[0]["lladdr"]).lower() != mac:
            neigh = f"{gw} is-at {entries[0]['lladdr']}, not {host_veth}'s MAC {mac}"
        elif entries:
            neigh = f"no ARP reply for {gw}: neighbour entry {','.join(entries[0].get('state', []) or ['?'])}"
        else:
            neigh = f"no neighbour entry for {gw}"
        diagnosis = proxy_arp_diagnosis(node_ns, host_veth, gw, proxy_arp, forwarding)
        return Observation(False, want, f"proxy_arp={proxy_arp} on {host_veth}; {neigh}", state,
                           "neighbour table, host veth and node routes", diagnosis)

    return run_check(f"proxy-ARP for {gw} on {host_veth}", f"{node_ns.name} ↔ {pod_ns.name}", probe, timeout)


# ---------------------------------------------------------------- BGP

_ADDR_KEYS = ("peer", "address", "peer_address", "PEER ADDRESS", "neighbor")
_STATE_KEYS = ("state", "STATE", "bgp_state")


def _field(status: object, keys: Iterable[str]) -> Any:
    for k in keys:
        if isinstance(status, Mapping):
            if k in status:
                return status[k]
        elif hasattr(status, k):
            return getattr(status, k)
    return None


def _peer_line(s: object) -> str:
    info = _field(s, ("info", "INFO"))
    name = _field(s, ("name",))
    who = f"{_field(s, _ADDR_KEYS)}" + (f" ({name})" if name else "")
    return f"{who}: {_field(s, _STATE_KEYS)}" + (f" {info}" if info else "")


def assert_bgp_established(status_fn: Callable[[], Iterable[object]], peer: str | None = None, *,
                           node: str = "?", timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """The session with `peer` (address or name; None: every peer, at least one) is Established.

    `status_fn` returns the node's peer statuses, each a mapping or object with a peer address
    (`peer`/`address`/`peer_address`), a `state`, and optionally `name` and `info` (as in
    `calicoctl node status`).
    """
    __tracebackhide__ = True
    label = f"BGP session with {peer}" if peer else "all BGP sessions"

    def probe() -> Observation:
        statuses = list(status_fn())
        table = "\n".join(_peer_line(s) for s in statuses) or "(no peers)"
        picked = statuses if peer is None else [
            s for s in statuses if peer in (str(_field(s, _ADDR_KEYS)), str(_field(s, ("name",))))]
        if not picked:
            return Observation(False, f"{label} Established", f"no such peer among {len(statuses)}",
                               table, f"BGP peers of {node}")
        bad = [s for s in picked if str(_field(s, _STATE_KEYS)).lower() != "established"]
        actual = "; ".join(_peer_line(s) for s in (bad or picked))
        return Observation(not bad, f"{label} Established", actual, table, f"BGP peers of {node}")

    return run_check(label + " Established", node, probe, timeout)
