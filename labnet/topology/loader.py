"""Load a topology file: YAML with positions -> validated, defaulted `Topology`.

Every problem is reported at once as `FILE:LINE:COL: path.to.field: message (hint)`.
Positions come from walking the composed YAML node graph ourselves, which also lets us reject
duplicate keys (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from labnet.errors import BadInput
from labnet.topology.issues import Issue, PathT, doc_path, path_str, pydantic_issues
from labnet.topology.model import Topology
from labnet.topology.validate import Known, check

try:  # libyaml is much faster when present; the pure-Python loader has the same marks
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when the problem has no position (unreadable file)
    col: int
    path: str  # dotted path into the document, e.g. cluster.nodes.ubuntu-3.gateway
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        tail = f" ({self.hint})" if self.hint else ""
        return f"{where}: {self.path}: {self.message}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "col": self.col, "path": self.path,
                "message": self.message, "hint": self.hint}


class TopologyError(BadInput):
    """The topology file has problems; str() lists them all, one per line, by position."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.line, d.col, d.path, d.message))
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class _Positions:
    def __init__(self) -> None:
        self.values: dict[PathT, tuple[int, int]] = {}
        self.keys: dict[PathT, tuple[int, int]] = {}

    def at(self, path: PathT, at_key: bool = False) -> tuple[int, int]:
        if at_key and path in self.keys:
            return self.keys[path]
        # a missing key or a defaulted field: point at the closest enclosing thing written
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


MAX_NODES = 200_000  # far beyond any real lab; a few chained anchors ("billion laughs") exceed it


class _TooBig(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _Builder:
    """Turns a composed YAML node graph into plain data, recording positions and dup keys."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.pos = _Positions()
        self.issues: list[Issue] = []
        self._stack: set[int] = set()
        self._count = 0

    def build(self, node: yaml.Node, path: PathT) -> Any:
        self._count += 1
        if self._count > MAX_NODES:  # aliases expanding without bound: stop walking at once
            raise _TooBig(node)
        self.pos.values[path] = _mark(node)
        if id(node) in self._stack:
            self.issues.append(Issue(path, "recursive YAML alias"))
            return None
        if isinstance(node, yaml.MappingNode):
            self._stack.add(id(node))
            try:
                return self._mapping(node, path)
            finally:
                self._stack.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._stack.add(id(node))
            try:
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            finally:
                self._stack.discard(id(node))
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: PathT) -> dict[str, Any]:
        first: dict[str, tuple[int, int]] = {}
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = str(key_node.value)
                if key in first:
                    line, col = first[key]
                    self.pos.keys.setdefault(path + (key, "<dup>"), _mark(key_node))
                    self.issues.append(Issue(path + (key, "<dup>"), f"duplicate key {key!r} (first at line {line}, "
                                             f"column {col})", at_key=True))
                else:
                    first[key] = _mark(key_node)
        self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor); explicit keys win
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.pos.values.setdefault(path, _mark(key_node))
                self.issues.append(Issue(path, "mapping keys must be plain names, not lists or mappings"))
                continue
            key = str(key_node.value)  # as written: `on:` stays "on", not True
            self.pos.keys[path + (key,)] = _mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        return out


def _yaml_error(exc: yaml.YAMLError, file: str, text: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    hint = None
    if isinstance(exc, yaml.MarkedYAMLError):
        msg = str(exc.problem or exc.context)
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx is not None:
            msg += f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
    else:
        msg = str(exc)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    lines = text.splitlines()
    if 0 < line <= len(lines) and "\t" in lines[line - 1]:
        hint = "indent YAML with spaces, not tabs"
    return Diagnostic(file, line, col, "<yaml>", f"YAML syntax error: {msg}", hint)


def _prune(data: dict[str, Any], path: PathT, skip: set[str]) -> bool:
    """Remove or replace the part of `data` a type error sits in, so the rest can still be
    validated and checked. Returns False when nothing could be done."""
    if not path:
        return False
    top = path[0]
    if top == "name":
        data["name"] = "lab"
        skip.add("name")
        return True
    if top in ("networks", "routers", "hosts", "scenarios"):
        section = data.get(top)
        if len(path) >= 2 and isinstance(section, dict):
            if path[1] not in section:
                return False  # pruned already for an earlier error
            del section[path[1]]
            return True
        if top == "networks":
            data["networks"] = {"-": {"cidr": "0.0.0.0/32"}}
            skip.add("networks")
        else:
            data[top] = {}
        return True
    if top == "cluster" and len(path) >= 2 and isinstance(data.get("cluster"), dict):
        cl, sub = data["cluster"], path[1]
        if sub in ("nodes", "pods") and len(path) >= 3 and isinstance(cl.get(sub), dict):
            if path[2] not in cl[sub]:
                return False
            del cl[sub][path[2]]
            return True
        if sub == "pods":
            cl["pods"] = {}
            return True
        if sub == "etcd":
            cl["etcd"] = {"nodes": ["-"]}
            skip.add("etcd")
            return True
        if sub == "pool":
            cl["pool"] = {"cidr": "0.0.0.0/32", "block_size": 32}
            skip.add("pool")
            return True
        if sub in cl and sub != "nodes":
            del cl[sub]
            skip.add(str(sub))
            return True
    if top == "cluster":
        data.pop("cluster", None)
        skip.add("cluster")
        return True
    if top in data:
        del data[top]
        return True
    return False


def _validate(raw: dict[str, Any]) -> tuple[Topology | None, list[Issue], set[str]]:
    """Type-validate; on errors prune the broken parts and retry so that the semantic checks can
    still run on the rest. Only the first round's errors are reported: later rounds only see
    consequences of pruning (an emptied section and the like)."""
    data = raw
    skip: set[str] = set()
    first: list[Issue] | None = None
    for _round in range(12):
        try:
            return Topology.model_validate(data), first or [], skip
        except ValidationError as exc:
            if first is None:
                first = pydantic_issues(exc, Topology, raw)
                data = copy.deepcopy(raw)
            paths = [doc_path(err["loc"], data, err["type"] == "missing")[0] for err in exc.errors()]
            changed = False
            for path in paths:
                changed |= _prune(data, path, skip)
            if not changed:
                break
    return None, first or [], skip


# A generated 200-node lab with 2,000 pods is about 0.3 MB; past this, a file is refused before it
# is parsed (parsing tens of MB costs seconds and a gigabyte first).
MAX_BYTES = 4 * 1024 * 1024


def _too_big(size: int, filename: str) -> TopologyError:
    return TopologyError([Diagnostic(filename, 1, 1, "<file>", f"the file is {size / 1e6:.1f} MB; topologies are "
                                     f"refused above {MAX_BYTES // (1024 * 1024)} MiB",
                                     "a lab of hundreds of nodes takes well under 1 MB: is this the right file?")])


MAX_DAEMON_FILE = 1 << 20


def _read_daemon_files(topo: Topology, filename: str) -> list[Issue]:
    """Each daemon file given `from:` is read now (relative to the topology file), so `up` and
    the journal hold its content, and a missing one is an error at its line."""
    issues = []
    here = Path(filename).parent if os.path.isfile(filename) else None
    for kind, machines in (("routers", topo.routers), ("hosts", topo.hosts)):
        for mname, spec in machines.items():
            for dname, d in spec.daemons.items():
                for path, f in d.files.items():
                    if f.from_ is None or f.text is not None:
                        continue
                    at: PathT = (kind, mname, "daemons", dname, "files", path, "from")
                    src = Path(f.from_)
                    if not src.is_absolute():
                        if here is None:
                            issues.append(Issue(at, f"from: {f.from_!r} is relative, and this topology is not a file"))
                            continue
                        src = here / src
                    try:
                        with open(src, "rb") as fh:
                            data = fh.read(MAX_DAEMON_FILE + 1)
                        if len(data) > MAX_DAEMON_FILE:
                            raise ValueError(f"larger than {MAX_DAEMON_FILE} bytes")
                        f.text = data.decode("utf-8")
                    except (OSError, ValueError) as exc:
                        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                        issues.append(Issue(at, f"cannot read {src} for {path}: {why}"))
    return issues


def loads(text: str, filename: str = "<string>") -> Topology:
    """Parse and validate topology YAML. Raises TopologyError listing every problem."""
    if len(text) > MAX_BYTES:
        raise _too_big(len(text.encode("utf-8", "replace")), filename)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise TopologyError([Diagnostic(filename, 1, 1, "<document>", "the file is empty",
                                            "a topology needs at least name and networks")])
        builder = _Builder(loader)
        raw = builder.build(root, ())
    except yaml.YAMLError as exc:
        raise TopologyError([_yaml_error(exc, filename, text)]) from None
    except _TooBig as exc:
        line, col = _mark(exc.node)
        raise TopologyError([Diagnostic(filename, line, col, "<yaml>",
                                        f"YAML aliases expand to more than {MAX_NODES} values",
                                        "anchors referring to anchors multiply; write the values out")]) from None
    finally:
        loader.dispose()
    pos = builder.pos

    def diag(issue: Issue) -> Diagnostic:
        line, col = pos.at(issue.path, issue.at_key)
        shown = issue.path[:-1] if issue.path and issue.path[-1] == "<dup>" else issue.path
        message = f"warning: {issue.message}" if issue.warning else issue.message
        return Diagnostic(filename, line, col, path_str(shown), message, issue.hint)

    if not isinstance(raw, dict):
        line, col = pos.at(())
        kind = "a list" if isinstance(raw, list) else f"{type(raw).__name__} {raw!r}"[:60]
        raise TopologyError([Diagnostic(filename, line, col, "<document>",
                                        f"the top level must be a mapping (name:, networks:, ...), got {kind}")])
    issues = list(builder.issues)
    topo, type_issues, skip = _validate(raw)
    issues += type_issues
    if topo is not None:
        issues += check(topo, raw, Known.from_raw(raw), skip)
        issues += _read_daemon_files(topo, filename)
    errors = [i for i in issues if not i.warning]
    if errors:
        raise TopologyError([diag(i) for i in errors])
    assert topo is not None
    topo.set_warnings([str(diag(i)) for i in issues if i.warning])
    return topo


def load(path: str | Path) -> Topology:
    """Load a topology file. Raises TopologyError (exit status 2) for any problem."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # never the whole of a huge file (or a device)
            if len(data) > MAX_BYTES:
                raise _too_big(max(os.fstat(f.fileno()).st_size, len(data)), name)
    except OSError as exc:
        raise TopologyError([Diagnostic(name, 0, 0, "<file>", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError([Diagnostic(name, 1, 1, "<file>", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return loads(text, name)
