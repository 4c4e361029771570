"""One flow traced through a node's nftables (`nft monitor trace`): which rules of labnet's
policy table the kernel ran for a real packet, and the verdict of each.

A table of the trace's own (`labnet-trace`, inside the node) marks the flow's packets with
`meta nftrace set 1` before anything else sees them; `nft monitor trace` in the node reports
every rule they meet. Both are gone afterwards.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from labnet.nsexec import NodeNS, run
from labnet.policy.nft import TABLE

TRACE_TABLE = "labnet-trace"  # and a suffix of the run's
_RULE = re.compile(rf"^trace id \S+ inet {re.escape(TABLE)} (\S+) rule (.*) \(verdict ([^)]+)\)\s*$")
_COMMENT = re.compile(r'comment "([^"]*)"')


@dataclass(frozen=True)
class Step:
    chain: str
    comment: str  # the rule's comment ("policy=web-rules rule=0"), or its text when it has none
    verdict: str  # accept, drop, return, continue, jump to_caliX...


def flow_match(src_ip: str, dst_ip: str, proto: str, port: int | None) -> str:
    ip = "ip6" if ":" in dst_ip else "ip"
    match = f"{ip} saddr {src_ip} {ip} daddr {dst_ip}"
    if proto == "icmp":
        return match + (" meta l4proto ipv6-icmp" if ip == "ip6" else " meta l4proto icmp")
    return match + f" {proto} dport {port}" if port else match + f" meta l4proto {proto}"


def parse(lines: list[str]) -> list[Step]:
    out = []
    for line in lines:
        m = _RULE.match(line.strip())
        if m:
            c = _COMMENT.search(m.group(2))
            out.append(Step(m.group(1), c.group(1) if c else m.group(2), m.group(3)))
    return out


def decided(steps: list[Step]) -> Step | None:
    """The rule that ended the packet's walk through labnet's table (accept or drop)."""
    final = [s for s in steps if s.verdict in ("accept", "drop")]
    return final[-1] if final else None


def trace_flow(ns: NodeNS, match: str, send: Callable[[], None], timeout: float = 5.0) -> list[Step]:
    """Send (again and again, until a verdict shows or `timeout`) and report the policy table's
    rules the flow met in `ns`. Empty when nothing was traced (the monitor did not see it)."""
    table = f"{TRACE_TABLE}-{uuid.uuid4().hex[:8]}"  # two traces on one node keep to their own
    proc: subprocess.Popen[str] | None = None
    try:
        run(ns, ["nft", "-f", "-"], input=f"table inet {table} {{\n chain pre {{\n  type filter hook prerouting "
                                           f"priority -350; policy accept;\n  {match} meta nftrace set 1\n }}\n}}\n")
        proc = subprocess.Popen(ns.argv(["nft", "monitor", "trace"]), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        return _watch(proc, send, timeout)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        run(ns, ["nft", "delete", "table", "inet", table], check=False)


def _watch(proc: subprocess.Popen[str], send: Callable[[], None], timeout: float) -> list[Step]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()  # the monitor subscribes a moment after it starts: a packet before then is not seen
        until = min(deadline, time.monotonic() + 1.0)
        while (left := until - time.monotonic()) > 0:
            try:
                seen.append(lines.get(timeout=left))
            except queue.Empty:
                break
            if decided(parse(seen)) is not None:
                return parse(seen)
    return parse(seen)
