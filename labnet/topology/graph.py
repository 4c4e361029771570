"""`labnet graph`: the topology as a Graphviz drawing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labnet.errors import BadInput, LabnetError

if TYPE_CHECKING:
    from labnet.topology.model import Topology

SHAPES = {"router": "doubleoctagon", "host": "box", "node": "box3d"}


def _q(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def _host_part(iface: Any) -> str:
    """`.71` of 10.20.30.71 (`::71` of fd00:20:30::71 on an IPv6-only LAN)."""
    if iface.address is not None:
        return "." + str(iface.address).rsplit(".", 1)[1]
    return "::" + str(iface.address6).rsplit(":", 1)[1]


def to_dot(topo: Topology) -> str:
    out = [f"graph {_q(topo.name)} {{", "  graph [rankdir=TB, fontname=Helvetica];",
           "  node [fontname=Helvetica, fontsize=10]; edge [fontname=Helvetica, fontsize=9];"]
    for name, net in topo.networks.items():
        prefixes = " ".join(str(c) for c in (net.cidr, net.cidr6) if c)
        out.append(f"  {_q('net:' + name)} [label={_q(name + chr(10) + prefixes)}, shape=ellipse, "
                   "style=filled, fillcolor=lightblue];")
    for name, kind, spec in topo.machines():
        label = name + ("\\n(etcd)" if topo.cluster and name in topo.cluster.etcd.nodes else "")
        out.append(f"  {_q(name)} [label=\"{label}\", shape={SHAPES[kind]}];")
        for iface in spec.interfaces:
            out.append(f"  {_q(name)} -- {_q('net:' + iface.network)} [label={_q(f'{iface.name} {_host_part(iface)}')}];")
    if topo.cluster:
        for pod, p in topo.cluster.pods.items():
            out.append(f"  {_q('pod:' + pod)} [label={_q(pod)}, shape=component, style=filled, fillcolor=lightyellow];")
            out.append(f"  {_q(p.node)} -- {_q('pod:' + pod)} [style=dashed, label=\"cali\"];")
    out.append("}")
    return "\n".join(out) + "\n"


def render(topo: Topology, output: Path) -> None:
    dot = to_dot(topo)
    fmt = output.suffix.lstrip(".")
    if fmt == "dot":
        output.write_text(dot)
        return
    if fmt not in ("svg", "png", "pdf"):
        raise BadInput(f"{output}: unknown format {fmt!r} (use .svg, .png, .pdf or .dot)")
    if shutil.which("dot") is None:
        raise LabnetError("Graphviz `dot` is not installed: apt-get install graphviz")
    proc = subprocess.run(["dot", f"-T{fmt}", "-o", str(output)], input=dot, text=True, capture_output=True)
    if proc.returncode != 0:
        raise LabnetError(f"dot failed: {proc.stderr.strip()}")
