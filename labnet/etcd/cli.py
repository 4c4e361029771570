"""`labnet etcd ls|get|health`: look into a lab's etcd.

The lead's CLI calls `register(subparsers, get_store)`; each subcommand sets
`args.func(args) -> int` (the exit status). get_store knows which lab and which admin
certificate; this module only formats. The etcd client stack is imported on use only.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from labnet.errors import LabnetError
from labnet.etcd import keys
from labnet.etcd.store import KV, Datastore, DatastoreUnavailable

WIDTH = 110  # a JSON value longer than this on one line is pretty-printed below its key


def _decoded(value: bytes) -> Any:
    """The value as data for --json: parsed JSON, else text, else {"base64": ...}."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}
    try:
        return json.loads(text)
    except ValueError:
        return text


def show_value(value: bytes, width: int = WIDTH) -> list[str]:
    """Readable lines for one value: JSON compact (keys sorted) or pretty when long."""
    if not value:
        return ['""']
    try:
        text = value.decode()
    except UnicodeDecodeError:
        head = value[:32].hex()
        return [f"<{len(value)} bytes: {head}{'…' if len(value) > 32 else ''}>"]
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    else:
        if isinstance(data, dict | list):
            compact = json.dumps(data, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)
            if len(compact) <= width:
                return [compact]
            return pretty(data, 0, width)
    if text.isprintable():
        return [text]
    return [json.dumps(text, ensure_ascii=False)]


def _compact(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)


def pretty(v: Any, indent: int = 0, width: int = WIDTH) -> list[str]:
    """Pretty JSON that keeps what fits on one line together (a /26 block's 64-slot
    allocation list becomes a few filled lines, not 64). Lines after the first carry
    their absolute indentation."""
    compact = _compact(v)
    if indent + len(compact) <= width or not isinstance(v, dict | list) or not v:
        return [compact]
    pad = " " * (indent + 2)
    lines: list[str]
    if isinstance(v, dict):
        lines = ["{"]
        items = sorted(v.items())
        for i, (k, x) in enumerate(items):
            head = f"{pad}{json.dumps(k, ensure_ascii=False)}: "
            sub = pretty(x, indent + 2, width)
            lines.append(head + sub[0])
            lines.extend(sub[1:])
            if i < len(items) - 1:
                lines[-1] += ","
        lines.append(" " * indent + "}")
        return lines
    lines = ["["]
    if all(not isinstance(x, dict | list) for x in v):  # scalars: fill lines up to the width
        row = ""
        for i, x in enumerate(v):
            item = _compact(x) + ("," if i < len(v) - 1 else "")
            if row and len(pad) + len(row) + 1 + len(item) > width:
                lines.append(pad + row)
                row = item
            else:
                row = f"{row} {item}" if row else item
        lines.append(pad + row)
    else:
        for i, x in enumerate(v):
            sub = pretty(x, indent + 2, width)
            lines.append(pad + sub[0])
            lines.extend(sub[1:])
            if i < len(v) - 1:
                lines[-1] += ","
    lines.append(" " * indent + "]")
    return lines


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    kv: KV | None = None


def _tree(kvs: Iterable[KV]) -> _Node:
    root = _Node()
    for kv in kvs:
        node = root
        for part in kv.key.split("/"):
            node = node.children.setdefault(part, _Node())
        node.kv = kv
    return root


def _label(name: str, node: _Node) -> tuple[str, _Node]:
    """Fold chains of single-child directories into one label: 'ipam/v2/assignment/'."""
    label = name
    while node.kv is None and len(node.children) == 1:
        (child_name, child), = node.children.items()
        label, node = f"{label}/{child_name}", child
    if node.children:
        label += "/"
    return label, node


def _render(node: _Node, prefix: str, out: list[str], top: bool) -> None:
    items = sorted(node.children.items())
    for i, (name, child) in enumerate(items):
        last = i == len(items) - 1
        label, child = _label(name, child)
        if top:
            head, cont = "", ""
        else:
            head, cont = ("└── ", "    ") if last else ("├── ", "│   ")
        sub = prefix + cont
        value_indent = sub + ("│   " if child.children else "    ")
        lines = show_value(child.kv.value, max(40, WIDTH - len(value_indent))) if child.kv is not None else []
        if lines and len(lines) == 1 and len(label) + len(lines[0]) <= WIDTH + 20:
            out.append(f"{prefix}{head}{label}  {lines[0]}")
        else:
            out.append(f"{prefix}{head}{label}")
            out.extend(f"{value_indent}{line}" for line in lines)
        _render(child, sub, out, top=False)


def format_ls(kvs: Sequence[KV], as_json: bool) -> str:
    """All keys and values, sorted: a tree of key paths (or a JSON list with --json)."""
    ordered = sorted(kvs, key=lambda kv: kv.key)
    if as_json:
        return json.dumps([{"key": kv.key, "value": _decoded(kv.value), "mod_revision": kv.mod_revision,
                            "create_revision": kv.create_revision, "version": kv.version}
                           for kv in ordered], indent=2, ensure_ascii=False)
    if not ordered:
        return ""
    out: list[str] = []
    _render(_tree(ordered), "", out, top=True)
    out.append(f"({len(ordered)} key{'s' if len(ordered) != 1 else ''})")
    return "\n".join(out)


def format_get(kv: KV, as_json: bool) -> str:
    if as_json:
        return json.dumps({"key": kv.key, "value": _decoded(kv.value), "mod_revision": kv.mod_revision,
                           "create_revision": kv.create_revision, "version": kv.version},
                          indent=2, ensure_ascii=False)
    try:
        data = json.loads(kv.value)
    except ValueError:
        return "\n".join(show_value(kv.value))
    return "\n".join(pretty(data))


def format_health(health: dict[str, tuple[bool, str]], as_json: bool) -> str:
    if as_json:
        return json.dumps({ep: {"healthy": ok, "detail": detail} for ep, (ok, detail) in health.items()},
                          indent=2)
    width = max([len("ENDPOINT"), *(len(ep) for ep in health)])
    rows = [f"{'ENDPOINT':<{width}}  {'HEALTHY':<7}  DETAIL"]
    rows += [f"{ep:<{width}}  {'yes' if ok else 'NO':<7}  {detail}" for ep, (ok, detail) in health.items()]
    return "\n".join(rows)


def _guard(what: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except DatastoreUnavailable as exc:
        raise LabnetError(f"etcd {what}: {exc}") from exc


def cmd_ls(store: Datastore, prefix: str, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    def go() -> int:
        kvs = store.range(prefix)
        if not kvs and not as_json:
            print(f"(no keys under {prefix})", file=out)
            return 0
        print(format_ls(kvs, as_json), file=out)
        return 0

    return _guard(f"ls {prefix}", go)


def cmd_get(store: Datastore, key: str, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    def go() -> int:
        kv = store.get(key)
        if kv is None:
            print(f"key {key} not found in etcd (list with `labnet etcd ls {key.rsplit('/', 1)[0]}/`)",
                  file=sys.stderr)
            return 1
        print(format_get(kv, as_json), file=out)
        return 0

    return _guard(f"get {key}", go)


def cmd_health(store: Datastore, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    health = getattr(store, "health", None)
    if health is None:
        raise LabnetError(f"etcd health: the datastore {type(store).__name__} cannot report health")
    result: dict[str, tuple[bool, str]] = health()
    print(format_health(result, as_json), file=out)
    return 0 if result and all(ok for ok, _ in result.values()) else 1


def key_arg(value: str) -> str:
    """An argparse `type=` for an etcd key or prefix: absolute, printable, no spaces, not huge."""
    if not value.startswith("/") or len(value) > 1024 or not value.isprintable() or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(
            f"etcd key {value[:80]!r} is not valid: it starts with '/', has no spaces or control "
            "characters, and is at most 1024 characters")
    return value


def register(subparsers: Any, get_store: Callable[[argparse.Namespace], Datastore]) -> argparse.ArgumentParser:
    """Add `etcd ls|get|health` to the CLI's subparsers. Each sets args.func(args) -> exit status."""
    p = subparsers.add_parser("etcd", help="look into the lab's etcd (keys, values, health)",
                              description="Read the lab's etcd with the lab's admin client certificate.")
    sub = p.add_subparsers(dest="etcd_command", required=True, metavar="{ls,get,health}")

    def with_store(fn: Callable[[Datastore, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            store = get_store(args)
            try:
                return fn(store, args)
            finally:
                store.close()

        return run

    ls = sub.add_parser("ls", help="list keys and values under PREFIX, recursively, as a tree",
                        description="Recursively list keys under PREFIX (default: everything labnet "
                                    "keeps, under /labnet/). JSON values are shown compact, or "
                                    "pretty-printed when long.")
    ls.add_argument("prefix", nargs="?", default=keys.PREFIX + "/", metavar="PREFIX", type=key_arg)
    ls.add_argument("--json", action="store_true", help="machine output: a sorted JSON list")
    ls.set_defaults(func=with_store(lambda st, a: cmd_ls(st, a.prefix, a.json)))

    get = sub.add_parser("get", help="print one key's value", description="Print one key's value "
                         "(JSON pretty-printed). Exit 1 if the key does not exist.")
    get.add_argument("key", metavar="KEY", type=key_arg)
    get.add_argument("--json", action="store_true", help="machine output with revisions")
    get.set_defaults(func=with_store(lambda st, a: cmd_get(st, a.key, a.json)))

    health = sub.add_parser("health", help="ask every etcd member's /health",
                            description="Ask every etcd endpoint's /health with the admin client "
                                        "certificate. Exit 1 if any member is unhealthy.")
    health.add_argument("--json", action="store_true", help="machine output")
    health.set_defaults(func=with_store(lambda st, a: cmd_health(st, a.json)))
    return p
