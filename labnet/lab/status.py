"""`labnet status`: each lab's state, machines, pods and recorded processes."""

from __future__ import annotations

import json
from typing import Any

from labnet.lab.processes import ROLES, SUPERVISOR, alive, current, dead_machines
from labnet.lab.state import list_labs, load_journal, namespaces_present
from labnet.nsexec import children

LABELS = {"agent": "agent-supervisor"}  # the table's short name for a role
NODE_PROCESS = "node-process"
ROLE_NODE_PROCESS = "the node's process: agent, CNI server, userspace tunl0 (kill it: its supervisor starts it again)"
ROLE_LAB_SUPERVISED = ("the node's process: agent, CNI server, userspace tunl0 (kill it: the lab's supervisor "
                       "starts it again)")


def _processes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded processes as they are now. A node process the lab's supervisor keeps running
    shows its current pid and restarts; under a node's own supervisor (docker), the process it
    runs now."""
    out = []
    for e in entries:
        up, now = alive(e), current(e)
        row = {**{k: now.get(k) for k in ("pid", "node", "what")}, "role": ROLES.get(e["what"], e["what"]),
               "alive": up}
        if e.get("pidfile"):
            row.update(what=NODE_PROCESS, role=ROLE_LAB_SUPERVISED, restarts=now.get("restarts", 0),
                       held=now.get("held", False))
        out.append(row)
        if e["what"] == "agent" and up and not e.get("pidfile"):
            out += [{"pid": c, "node": e.get("node"), "what": NODE_PROCESS, "role": ROLE_NODE_PROCESS,
                     "alive": True} for c in children(int(e["pid"]))]
    return out


def status(lab: str | None = None) -> list[dict[str, Any]]:
    out = []
    for name in [lab] if lab else list_labs():
        j = load_journal(name)
        if j is None:
            continue
        procs = _processes(j.of_kind("process"))
        state = j.state if j.state != "up" or namespaces_present(j) else "dead"
        out.append({"lab": name, "state": state, "runtime": j.runtime, "topology": j.topology_file,
                    "machines": j.info.get("machines", {}), "pods": j.info.get("pods", {}),
                    "processes": procs, "timings": j.info.get("timings", {}), "left": j.info.get("left", []),
                    "dead_machines": dead_machines(j) if state == "up" else []})
    return out


def shared() -> list[str]:
    """What runtimes keep running for all their labs (labnet's dockerd), and how it stops."""
    from labnet.runtime import RUNTIMES

    return [what for rt in RUNTIMES.values() if (what := rt.shared())]


def format_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no labs"
    lines = []
    for r in rows:
        lines.append(f"lab {r['lab']}  state {r['state']}  runtime {r['runtime']}  ({r['topology']})")
        if r.get("left"):
            lines.append("  left by a failed teardown: " + "; ".join(r["left"]))
        lines += [f"  {m}" for m in r.get("dead_machines") or []]
        lines += [f"  the lab's supervisor: pid {p['pid']}{'' if p['alive'] else ' DEAD (`labnet up` starts it again)'}"
                  for p in r["processes"] if p["what"] == SUPERVISOR]
        table = [("MACHINE", "KIND", "INTERFACES", "PROCESSES")]
        for m, info in r["machines"].items():
            ifs = ", ".join(f"{i['name']} " + " ".join(i[k] for k in ("address", "address6") if i.get(k))
                            + f" [{i['network']}]" for i in info["interfaces"])
            procs = ", ".join(f"{LABELS.get(p['what'], p['what'])}({p['pid']}{_flags(p)})"
                              for p in r["processes"] if p["node"] == m)
            table.append((m, info["kind"], ifs, procs or "-"))
        for pod, p in r["pods"].items():
            six = f" {p['ip6']}" if p.get("ip6") else ""
            table.append((f"{p['node']}/{pod}", "pod", f"eth0 {p.get('ip', '?')}{six}", "-"))
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines)


def _flags(p: dict[str, Any]) -> str:
    said = [] if p["alive"] else ["DEAD"]
    if p.get("held"):
        said.append("held")
    if p.get("restarts"):
        said.append(f"restarted {p['restarts']}x")
    return f" {', '.join(said)}" if said else ""


def status_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)
