"""The package layout: one folder per concern, imports pointing one way, no cycles.

Imports are read with ast (every import, at module level or inside a function; those under
`if TYPE_CHECKING:` are left out: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "labnet"

# Lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"labnet", "labnet.errors", "labnet.paths", "labnet.wait", "labnet.nsexec", "labnet.jsonsock", "labnet.settings"},
    # the policy model and its selectors are the schema of the topology's `policy:` section
    {"labnet.topology", "labnet.runtime", "labnet.policy.model", "labnet.policy.selector"},
    {"labnet.agent", "labnet.bgp", "labnet.cni", "labnet.ipam", "labnet.etcd", "labnet.policy", "labnet.checks"},
    {"labnet.lab"},
    {"labnet.scenario", "labnet.diagnose", "labnet.fuzz"},
    {"labnet.cli", "labnet.testing"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import; labnet imports by full name"
            base = node.module or ""
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    out = set()
    for m in found:
        while m and m not in mods:
            m = m.rpartition(".")[0]
        if m.startswith("labnet") and m != name and not m.startswith(name + "."):
            out.add(m)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, f, mods) for m, f in mods.items()}


def _layer(module: str) -> int:
    """The layer of the longest entry that names the module or a package above it."""
    best: tuple[int, int] | None = None
    for i, layer in enumerate(LAYERS):
        for top in layer:
            named = module == top or (top != "labnet" and module.startswith(top + "."))
            if named and (best is None or len(top) > best[0]):
                best = (len(top), i)
    assert best is not None, f"{module} is in no layer of tests/unit/test_layout.py: give it a home"
    return best[1]


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_layers() -> None:
    up = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m))
    assert not up, "imports pointing up:\n  " + "\n  ".join(up)


def test_at_most_eight_modules_directly_in_the_package() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 8, f"labnet/ holds {len(top)} modules directly: {top}; give each concern a folder"
