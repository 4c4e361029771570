"""`labnet doctor`: the findings as text or JSON, and the CLI verb.

Each finding: node, problem (one line), explanation (why it breaks traffic), evidence (what
was observed), command (what shows it). No finding: "no problems found", exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable

from labnet import paths
from labnet.diagnose.facts import Finding
from labnet.diagnose.rules import diagnose
from labnet.errors import BadInput


def format_findings(lab: str, findings: Iterable[Finding], scope: str) -> str:
    items = list(findings)
    if not items:
        return f"lab {lab}: no problems found ({scope})"
    out = [f"lab {lab}: {len(items)} problem{'s' if len(items) != 1 else ''} found ({scope})", ""]
    for x in items:
        out.append(f"{x.node}: {x.problem}")
        out.append(f"  why: {x.explanation}")
        ev = x.evidence.splitlines() or [""]
        out.append(f"  evidence: {ev[0]}")
        out += [f"    {line}" for line in ev[1:]]
        out.append(f"  see: {x.command}")
        out.append("")
    out.append(f"to follow a packet hop by hop, and see where and why it stops: labnet trace -l {lab} FROM TO "
               "[--proto tcp --port N]")
    return "\n".join(out).rstrip()


def cmd_doctor(args: argparse.Namespace) -> int:
    from labnet.lab import state
    from labnet.lab.view import LabView

    if os.geteuid() != 0:
        raise BadInput("labnet doctor needs root to look inside the lab's namespaces (run it with sudo)")
    view = LabView(state.pick_lab(args.lab))
    findings = diagnose(view, args.node)
    nodes = [args.node] if args.node else list(view.topo.cluster.nodes) if view.topo.cluster else []
    scope = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {len(view.journal.info.get('pods', {}))} pods"
    if args.json:
        print(json.dumps({"lab": view.name, "ok": not findings, "findings": [x.to_dict() for x in findings]},
                         indent=2))
    else:
        print(format_findings(view.name, findings, scope))
    return 1 if findings else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("doctor", help="diagnose a running lab: what is wrong, why, and how to see it",
                       description="Check every node of a running lab (routes, BGP, node names, MTU, "
                                   "rp_filter, policy, daemons) against the datastore; exit 1 when "
                                   "anything is wrong.")
    s.add_argument("node", nargs="?", metavar="NODE", type=paths.name_arg("node"), help="only this node's findings (default: all nodes)")
    s.add_argument("-l", "--lab", type=paths.lab_arg, help="the lab (default: the only running one)")
    s.add_argument("--json", action="store_true", help="machine output: {lab, ok, findings: [...]}")
    s.set_defaults(func=cmd_doctor)

