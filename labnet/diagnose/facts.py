"""What doctor observes in a running lab: per node (the agent's status, routes, links,
sysctls, rp_filter drops, policy, pod MTUs) and in the datastore (affinities, node records).
Pure reads; the rules that judge them are labnet.diagnose.rules."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from labnet.agent.tunnel.vxlan import IFNAME6
from labnet.checks.routes import Route, get_routes
from labnet.errors import LabnetError
from labnet.lab.processes import current
from labnet.nsexec import NodeNS, children, run

if TYPE_CHECKING:
    from labnet.lab.view import LabView

POD_GATEWAY = "169.254.1.1"
IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = "vxlan.calico"
VXLAN6_DEVICE = IFNAME6
ETCD_HOST_PREFIX = "/labnet/calico/ipam/v2/host/"


@dataclass(frozen=True)
class Finding:
    node: str
    problem: str
    explanation: str
    evidence: str
    command: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class NodeFacts:
    """What doctor observed in one node (each part None when it could not be read, with why)."""

    name: str
    ns: NodeNS
    status: dict[str, Any] | None = None
    status_error: str = ""
    routes: list[Route] | None = None
    routes_text: str = ""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    rp_drops: int | None = None
    policy: list[dict[str, Any]] | None = None  # nft -j objects of table inet labnet-policy
    pod_mtus: dict[str, int | None] = field(default_factory=dict)


@dataclass
class StoreFacts:
    affinities: dict[str, list[str]] = field(default_factory=dict)  # node name -> blocks
    records: dict[str, str | None] = field(default_factory=dict)  # node name -> BGP address
    error: str = ""




def proc_state(pid: int) -> str | None:
    """The process's state letter (R, S, T stopped, Z zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def sh(ns: NodeNS, cmd: list[str]) -> str:
    proc = run(ns, cmd, check=False, timeout=15)
    return proc.stdout if proc.returncode == 0 else ""


def stopped_pids(pids: Iterable[int]) -> list[int]:
    return [p for p in pids if proc_state(p) == "T"]


def observe_node(view: LabView, node: str, tunnel_dev: str | None) -> NodeFacts:
    ns = view.ns(node)
    facts = NodeFacts(node, ns)
    sups = [current(p)["pid"] for p in view.journal.of_kind("process")
            if p.get("node") == node and p.get("what") == "agent"]
    stopped = stopped_pids(sups + [c for s in sups for c in children(s)])
    if stopped:  # a stopped agent would leave the status query hanging until its timeout
        facts.status_error = f"agent process(es) {', '.join(map(str, stopped))} are stopped (state T)"
    else:
        try:
            facts.status = view.agent_status(node)  # on its socket, pids as this host numbers them
        except (LabnetError, subprocess.SubprocessError) as exc:
            facts.status_error = str(exc)
    try:
        facts.routes = get_routes(ns)
        facts.routes_text = sh(ns, ["ip", "route"]).strip()
        if view.topo.cluster is not None and view.topo.cluster.pool6 is not None:  # dual-stack: both tables
            facts.routes += get_routes(ns, family=6)
            facts.routes_text += "\n" + sh(ns, ["ip", "-6", "route"]).strip()
    except LabnetError as exc:
        facts.routes_text = f"(ip route failed: {exc})"
    with contextlib.suppress(ValueError):
        facts.links = {x["ifname"]: x for x in json.loads(sh(ns, ["ip", "-j", "link"]) or "[]")}
    underlay = underlay_dev(view, node)
    for dev in ("all", tunnel_dev, underlay):
        # /proc/sys/net shows the namespace of the process that opens it: cat runs inside the node
        value = sh(ns, ["cat", f"/proc/sys/net/ipv4/conf/{dev}/rp_filter"]).strip() if dev else ""
        if value:
            facts.sysctls[f"net.ipv4.conf.{dev}.rp_filter"] = value
    facts.rp_drops = netstat(sh(ns, ["cat", "/proc/net/netstat"])).get("IPReversePathFilter")
    proc = run(ns, ["nft", "-j", "list", "table", "inet", "labnet-policy"], check=False, timeout=15)
    if proc.returncode == 0:
        with contextlib.suppress(ValueError, KeyError):
            facts.policy = json.loads(proc.stdout)["nftables"]
    for pod, rec in view.journal.info.get("pods", {}).items():
        if rec.get("node") != node or not rec.get("netns"):
            continue
        try:
            out = sh(ns.pod(pod, rec["netns"]), ["ip", "-j", "link", "show", "eth0"])
            facts.pod_mtus[pod] = int(json.loads(out)[0]["mtu"]) if out else None
        except (ValueError, KeyError, IndexError, LabnetError):
            facts.pod_mtus[pod] = None
    return facts


_TCP_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print("error", exc)
"""


def tcp_probe(ns: NodeNS, address: str, port: int) -> str:
    """Connect to address:port from inside the node: open | refused | timeout | error ..."""
    try:
        proc = run(ns, [getattr(ns, "python", None) or sys.executable, "-c", _TCP_PROBE, address, str(port)], check=False, timeout=10)
    except subprocess.SubprocessError as exc:
        return f"error {exc}"
    return proc.stdout.strip() or f"error {proc.stderr.strip()[-200:]}"


def netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat: pairs of header/value lines ("TcpExt: A B ...", "TcpExt: 1 2 ...")."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
            with contextlib.suppress(ValueError):
                out[k] = int(v)
    return out


def underlay_dev(view: LabView, node: str) -> str | None:
    ifs = view.journal.info.get("machines", {}).get(node, {}).get("interfaces", [])
    return str(ifs[0]["name"]) if ifs and ifs[0].get("name") else "eth0"


def observe_store(view: LabView) -> StoreFacts:
    from labnet.etcd import keys
    from labnet.etcd.admin import admin_store

    facts = StoreFacts()
    etcd = [p["pid"] for p in view.journal.of_kind("process") if p.get("what") == "etcd"]
    if etcd and not any(proc_state(p) in ("R", "S", "D") for p in etcd):
        facts.error = "no etcd member is running (stopped or gone)"  # asking would only time out
        return facts
    try:
        store = admin_store(view.journal.info)
    except LabnetError as exc:
        facts.error = str(exc)
        return facts
    try:
        for kv in store.range(keys.affinities()):
            found = keys.parse_affinity(kv.key)  # either family
            if found is not None:
                facts.affinities.setdefault(found[0], []).append(found[1])
        for kv in store.range(keys.NODES):
            try:
                d = json.loads(kv.value)
                facts.records[str(d["name"])] = (d.get("bgp") or {}).get("ipv4Address")
            except (ValueError, KeyError, TypeError):
                continue
    except Exception as exc:  # etcd down or stopped: that is itself the finding
        facts.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            store.close()
    return facts


