"""What to look at when a lab check fails: one bundle per node, as text.

Shared by the pytest plugin (attached to failed tests) and `labnet doctor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labnet.nsexec import NodeNS, run

if TYPE_CHECKING:
    from labnet.lab.view import LabView

NODE_COMMANDS: list[tuple[str, list[str]]] = [
    ("links", ["ip", "-d", "link"]),
    ("addresses", ["ip", "-br", "addr"]),
    ("routes (all tables)", ["ip", "route", "show", "table", "all"]),
    ("neighbours", ["ip", "neigh"]),
    ("cali* sysctls", ["sh", "-c", "for i in /proc/sys/net/ipv4/conf/cali*; do [ -d \"$i\" ] || continue; "
                       "n=${i##*/}; printf '%s proxy_arp=%s forwarding=%s route_localnet=%s rp_filter=%s\\n' "
                       "\"$n\" $(cat $i/proxy_arp $i/forwarding $i/route_localnet $i/rp_filter); done"]),
    ("firewall (nft)", ["sh", "-c", "nft list ruleset 2>&1 || iptables-save 2>&1"]),
    ("agent log (tail)", ["sh", "-c", "tail -n 30 /var/log/labnet/agent.log 2>/dev/null || echo '(no agent log)'"]),
]


def node_bundle(ns: NodeNS, extra: dict[str, str] | None = None) -> str:
    out = [f"===== {ns.name} ====="]
    for title, cmd in NODE_COMMANDS:
        try:
            proc = run(ns, cmd, check=False, timeout=15)
            text = (proc.stdout + proc.stderr).rstrip() or "(empty)"
        except Exception as exc:  # a bundle must never hide the original failure
            text = f"(could not run: {exc})"
        out.append(f"--- {title}: {' '.join(cmd) if cmd[0] != 'sh' else cmd[-1][:60]}\n{text}")
    for title, text in (extra or {}).items():
        out.append(f"--- {title}\n{text}")
    return "\n".join(out)


def lab_bundle(view: LabView, nodes: list[str] | None = None) -> str:
    names = nodes or list(view.topo.nodes) or [m for m, _k, _s in view.topo.machines()]
    parts = []
    for n in names:
        extra: dict[str, str] = {}
        try:
            from labnet.agent.status import format_bgp_status

            extra["BGP status"] = format_bgp_status(view.agent_status(n))
        except Exception as exc:
            extra["BGP status"] = f"(agent status unavailable: {exc})"
        parts.append(node_bundle(view.ns(n), extra))
    try:
        from labnet.etcd.admin import etcd_ls_text

        parts.append("===== etcd keys =====\n" + etcd_ls_text(view))
    except Exception as exc:
        parts.append(f"===== etcd keys =====\n(unavailable: {exc})")
    return "\n\n".join(parts)
