"""The agent's status: the unix-socket protocol, the client side, and calicoctl's table.

Protocol: connect to the socket (default /var/run/labnet/agent.sock inside the node), send one
line of JSON `{"cmd": "status"}` (or the bare word `status`), read one line of JSON back; the
agent closes the connection after answering. Commands: `status` (the full document below),
`ping` ({"ok": true, "pid": ...}), `resync` (re-read the datastore now; {"ok": true}).
Unknown commands get {"error": "..."}.

The status document:
  {"nodename", "pid", "supervisor_pid", "started", "ready", "bgp_address": "10.20.30.73/24",
   "interface", "router_id", "asn",
   "tunnel": {"mode": "ipip-userspace"|"ipip-kernel"|"vxlan"|"none", "encap_mode": "always"|...,
              "device", "address", "mtu", "counters": {...}},
   "peers": [{"peer_address", "peer_type", "state": "up"|"start", "since": "HH:MM:SS",
              "since_epoch", "info", "bgp_state", "asn", "name",
              "unacked", "stalled"}],   # bytes not yet acknowledged; TCP retransmitting them
   "blocks": [...], "borrowed": [...], "routes": ["blackhole 10.100.163.128/26 proto bird", ...],
   "routes_skipped": [...],   # learned prefixes another protocol's route already holds (not a fault)
   "nat": {"enabled", "table", "pool"}, "problems": [...],  # problems: one sentence each, by name
   "cni_nodename", "passes"}
Signals to the agent: SIGTERM/SIGINT stop it cleanly (Cease to peers; routes, tunnel and NAT
table removed), SIGHUP re-reads the datastore now.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from labnet import jsonsock
from labnet.agent.config import DEFAULT_SOCKET
from labnet.nsexec import NodeNS, parent_pid, run

HEADERS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")
ROUTE_NOT_PROGRAMMED = "route not programmed: "  # the problem a route the kernel step could not install gives


StatusUnavailable = jsonsock.SocketUnavailable  # the agent's status socket did not answer


def _pad_center(s: str, width: int) -> str:
    # tablewriter's Pad: floor(gap/2) on the left, the rest on the right
    gap = width - len(s)
    if gap <= 0:
        return s
    left = gap // 2
    return " " * left + s + " " * (gap - left)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """calicoctl's (tablewriter's) layout: centred headers, left-aligned cells, +---+ borders."""
    widths = [len(h) for h in HEADERS]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [sep, "|" + "|".join(f" {_pad_center(h, w)} " for h, w in zip(HEADERS, widths, strict=True)) + "|", sep]
    for row in rows:
        lines.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True)) + "|")
    lines.append(sep)
    return "\n".join(lines)


def peer_row(p: Mapping[str, Any]) -> list[str]:
    return [str(p.get("peer_address", "")), str(p.get("peer_type", "")), str(p.get("state", "")),
            str(p.get("since", "")), str(p.get("info", ""))]


def format_bgp_status(status: Mapping[str, Any]) -> str:
    """The BGP part of `calicoctl node status`, from the agent's status document."""
    peers = list(status.get("peers") or [])
    out = ["IPv4 BGP status"]
    if peers:
        out.append(format_table([peer_row(p) for p in peers]))
    else:
        out.append("No IPv4 peers found.")
    out += ["", "IPv6 BGP status", "No IPv6 peers found.", ""]
    return "\n".join(out)


def format_status(status: Mapping[str, Any]) -> str:
    """Human summary for `labnet-agent status`: process, BGP table, tunnel, blocks, routes, problems."""
    lines = [f"labnet-agent is running on node {status.get('nodename')!r} (pid {status.get('pid')}).", ""]
    lines.append(format_bgp_status(status))
    t = status.get("tunnel") or {}
    lines.append(f"Tunnel: {t.get('mode')} ({t.get('encap_mode')}) device {t.get('device')} "
                 f"address {t.get('address')} mtu {t.get('mtu')}")
    lines.append(f"BGP address: {status.get('bgp_address')} on {status.get('interface')}, "
                 f"router id {status.get('router_id')}, AS {status.get('asn')}")
    lines.append("Blocks: " + (", ".join(status.get("blocks") or []) or "none"))
    if status.get("borrowed"):
        lines.append("Borrowed /32s: " + ", ".join(status["borrowed"]))
    lines.append("Routes (proto bird, and the VXLAN routes it owns):")
    lines += [f"  {r}" for r in status.get("routes") or []] or ["  none"]
    problems = status.get("problems") or []
    lines.append("Problems:" if problems else "Problems: none")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines) + "\n"


# -- client ------------------------------------------------------------------------------------


def request(path: str = DEFAULT_SOCKET, cmd: str = "status", timeout: float = 10.0) -> dict[str, Any]:
    """Ask the agent listening on `path` (a path as seen from here) one command.

    The pids in the answer are the agent's and its supervisor's as the asker's PID namespace
    numbers them: the agent says its own (the node's) numbers, and a node has a PID namespace
    of its own, so asked from the host they are replaced by what the socket's peer credentials
    and /proc say here."""
    answer, peer = jsonsock.exchange(path, {"cmd": cmd}, timeout=timeout, what="agent status socket",
                                     hint="is labnet-agent running in this node?")
    if peer and "pid" in answer:
        answer["pid"] = peer
        if answer.get("supervisor_pid"):  # None: the agent runs without one
            answer["supervisor_pid"] = parent_pid(peer)
    return answer


def query_status(ns: NodeNS, socket_path: str = DEFAULT_SOCKET, timeout: float = 15.0) -> dict[str, Any]:
    """The agent's status document, asked inside the node's namespaces (the socket path is the node's)."""
    proc = run(ns, [sys.executable, "-m", "labnet.agent.main", "status", "--json", "--socket", socket_path],
               check=False, timeout=timeout)
    if proc.returncode != 0:
        raise StatusUnavailable(f"node {ns.name}: labnet-agent status failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise StatusUnavailable(f"node {ns.name}: labnet-agent status printed no JSON: {proc.stdout[:300]!r}") from exc
    if not isinstance(data, dict):
        raise StatusUnavailable(f"node {ns.name}: labnet-agent status: expected an object, got {data!r}")
    return data
