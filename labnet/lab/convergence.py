"""Is the lab converged? One answer (`lacking`) for `up` and for the fault steps' recovery.

Converged: every agent answers under its own node name with its blocks, its BGP sessions
are all Established (and it has some, where the settings give it peers), and every other
node's blocks are among its routes, compared as address sets, not as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labnet.runtime.base import Runtime

ROUTE_TYPES = {"blackhole", "unreachable", "prohibit", "throw", "local", "broadcast", "unicast"}


def agent_status(runtime: Runtime, node: str, timeout: float = 10.0) -> dict[str, Any]:
    """The node's agent status, asked on its status socket through the node's directories on
    this host: no process is started in the node."""
    from labnet.agent.config import DEFAULT_SOCKET
    from labnet.agent.status import request

    return request(str(runtime.host_path(node, DEFAULT_SOCKET)), "status", timeout=timeout)


def brief(runtime: Runtime, node: str, timeout: float = 5.0) -> dict[str, Any]:
    """What convergence needs of one agent's status; {"error": ...} while it does not answer."""
    try:
        st = agent_status(runtime, node, timeout)
    except Exception as exc:  # not up yet: the poll shows why
        return {"error": str(exc)[:200]}
    return {"pid": st.get("pid"), "nodename": st.get("nodename"), "blocks": st.get("blocks") or [],
            "tunnel": (st.get("tunnel") or {}).get("address"),
            "peers": {p["peer_address"]: p.get("bgp_state") for p in st.get("peers", [])},
            "stalled": {p["peer_address"]: p.get("unacked", 0) for p in st.get("peers", []) if p.get("stalled")},
            "routes": st.get("routes") or [], "problems": list(st.get("problems") or [])[:2]}


QUERIES = 16  # agents asked at once: a 100-node lab's poll round stays short


def briefs(runtime: Runtime, nodes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every node's brief, asked concurrently (each is a socket round trip to its agent)."""
    names = list(nodes)
    if len(names) <= 1:
        return {n: brief(runtime, n) for n in names}
    with ThreadPoolExecutor(max_workers=min(QUERIES, len(names))) as pool:
        return dict(zip(names, pool.map(lambda n: brief(runtime, n), names), strict=True))


def route_dsts(routes: Iterable[str]) -> set[str]:
    """The destinations of the agent's routes ("blackhole 10.100.1.0/26 proto bird" ->
    10.100.1.0/26), normalised."""
    out = set()
    for r in routes:
        words = str(r).split()
        if words and words[0] in ROUTE_TYPES:
            words = words[1:]
        if words:
            try:
                out.add(str(ip_network(words[0], strict=False)))
            except ValueError:
                continue
    return out


def lacking(states: Mapping[str, Mapping[str, Any]], *, expect_peers: bool,
            unwaited: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Per node, what it still lacks (empty dict: converged). Sessions with `unwaited` peers
    (speakers the user brings: `wait: false`) may be down."""
    blocks = {n: {str(ip_network(b)) for b in s.get("blocks") or []} for n, s in states.items() if "error" not in s}
    every_block = set().union(*blocks.values())
    out: dict[str, list[str]] = {}
    for n, s in states.items():
        why: list[str] = []
        if "error" in s:
            out[n] = [f"agent not answering: {s['error']}"]
            continue
        if s.get("nodename") not in (None, n):
            why.append(f"agent registered as {s['nodename']!r}, not {n!r}")
        if not s.get("blocks"):
            why.append("no block claimed")
        peers = s.get("peers") or {}
        if expect_peers and not peers:
            why.append("no BGP peers")
        down = sorted(f"{a} {st}" for a, st in peers.items() if st != "Established" and a not in unwaited)
        if down:
            why.append("BGP not Established: " + ", ".join(down))
        # TCP retransmitting on a session (after a loss its timer backs off): it may still die
        # of the peer's hold timer, so it is not converged yet
        stalled = sorted(f"{a} ({b} B unacknowledged)" for a, b in (s.get("stalled") or {}).items()
                         if a not in unwaited and peers.get(a) == "Established")
        if stalled:
            why.append("BGP data being retransmitted to " + ", ".join(stalled))
        missing = sorted(every_block - blocks[n] - route_dsts(s.get("routes") or []))
        if missing:
            why.append("no route to " + ", ".join(missing))
        if why:
            out[n] = why
    return out


def agents_lacking(states: Mapping[str, Mapping[str, Any]], *, needs_tunnel: bool) -> dict[str, list[str]]:
    """Per node, what its agent still lacks before pods can come (empty dict: all ready)."""
    out: dict[str, list[str]] = {}
    for n, s in states.items():
        if "error" in s:
            out[n] = [f"agent not answering: {s['error']}"]
            continue
        why = ([] if s.get("blocks") else ["no block claimed"]) + (
            ["no tunnel address"] if needs_tunnel and not s.get("tunnel") else [])
        if why:
            out[n] = why + [f"the agent says: {p}" for p in s.get("problems") or []]
    return out


class NotReady(dict[str, list[str]]):
    """What the nodes that are not ready lack; shown short in a wait's timeout message: a few
    reasons per node, a bounded number of nodes, and how many more."""

    NODES = 12
    REASONS = 3

    def __str__(self) -> str:
        if not self:
            return "every node ready"
        lines = []
        for n in sorted(self)[:self.NODES]:
            why = [w if len(w) <= 160 else w[:157] + "..." for w in self[n][:self.REASONS]]
            more = len(self[n]) - self.REASONS
            lines.append(f"{n}: " + "; ".join(why) + (f"; and {more} more" if more > 0 else ""))
        if len(self) > self.NODES:
            lines.append(f"and {len(self) - self.NODES} more nodes")
        return f"{len(self)} of the nodes not ready:\n  " + "\n  ".join(lines)

    __repr__ = __str__
