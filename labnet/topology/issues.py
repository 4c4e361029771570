"""Topology problems as the loader reports them: `Issue` (a path into the YAML document, a
message, an optional hint), and pydantic's type errors translated into issues with did-you-mean
hints and the document path they belong to. The semantic checks are validate.py's."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

PathT = tuple[str | int, ...]


@dataclass
class Issue:
    path: PathT
    message: str
    hint: str | None = None
    at_key: bool = False  # point at the key of `path` rather than its value
    warning: bool = False  # reported, but the topology is accepted


def path_str(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<document>"


def did_you_mean(word: str, candidates: Iterable[str], what: str = "") -> str | None:
    cands = sorted(set(candidates))
    close = difflib.get_close_matches(word, cands, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if cands and len(cands) <= 8:
        return f"known {what or 'names'}: {', '.join(cands)}"
    return None


# -- pydantic errors -> Issues ------------------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated/Union down to the model, dict or list type inside."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            inner = _unwrap(arg)
            if _is_model(inner) or get_origin(inner) in (dict, list):
                return inner
        return tp
    if origin is not None and getattr(tp, "__metadata__", None) is not None:
        return _unwrap(get_args(tp)[0])
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def allowed_keys(root: type[BaseModel], path: PathT) -> list[str] | None:
    """The keys a mapping at `path` (a path into the document) may have, if it is a model."""
    tp: Any = root
    for part in path:
        tp = _unwrap(tp)
        if _is_model(tp):
            fields = tp.model_fields
            name = next((n for n, f in fields.items() if (f.alias or n) == part), None)
            if name is None:
                return None
            tp = fields[name].annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    if not _is_model(tp):
        return None
    keys = [f.alias or n for n, f in tp.model_fields.items()]
    if tp.__name__ == "EtcdSpec":
        keys.append("node")
    return keys


def doc_path(loc: Sequence[str | int], raw: Any, missing: bool) -> tuple[PathT, bool]:
    """Turn a pydantic loc into a path that exists in the document.

    Drops the parts pydantic adds that the document lacks (union member tags, '[key]');
    keeps a final missing key. Returns (path, at_key)."""
    path: list[str | int] = []
    node = raw
    at_key = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict):
            if part in node:
                path.append(part)
                node = node[part]
                continue
            if part == "[key]":
                at_key = True
            elif missing and last:
                path.append(part)
            continue
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
            continue
        if part == "[key]":
            at_key = True
    return tuple(path), at_key


def pydantic_issues(exc: ValidationError, root: type[BaseModel], raw: Any, prefix: PathT = ()) -> list[Issue]:
    by_path: dict[tuple[PathT, bool], Issue] = {}
    for err in exc.errors():
        typ = err["type"]
        path, at_key = doc_path(err["loc"], raw, typ == "missing")
        if typ == "extra_forbidden":
            at_key = True
        msg, hint = _format(err, root, path)
        issue = Issue(prefix + path, msg, hint, at_key)
        key = (issue.path, at_key)
        if key in by_path:  # several members of a union failed: one line for the field
            prev = by_path[key]
            if msg not in prev.message:
                prev.message += f"; or {msg}"
        else:
            by_path[key] = issue
    issues = list(by_path.values())
    # A misspelt required key shows up twice (unknown 'adress', missing 'address'): keep the first.
    typos = {(i.path[:-1], i.hint) for i in issues if i.message.startswith("unknown key")}
    return [i for i in issues if not (i.message.startswith("required key") and i.path
                                      and (i.path[:-1], f"did you mean {i.path[-1]!r}?") in typos)]


def _format(err: Any, root: type[BaseModel], path: PathT) -> tuple[str, str | None]:
    typ, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    msg: str = err["msg"]
    last = str(path[-1]) if path else ""
    if typ == "extra_forbidden":
        allowed = allowed_keys(root, path[:-1]) or []
        return f"unknown key {last!r}", did_you_mean(last, allowed, "keys")
    if typ == "missing":
        return f"required key {last!r} is missing", None
    if typ == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
        return f"{value!r} is not one of {ctx.get('expected')}", (f"did you mean {close[0]!r}?" if close else None)
    if typ == "string_pattern_mismatch" and path == ("name",):
        return (
            f"lab name {value!r} must be lowercase letters, digits and '-', start with a letter, "
            "at most 20 characters (it prefixes namespace names)",
            None,
        )
    if typ in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_describe(value)}", None
    if typ == "list_type":
        return f"expected a list, got {_describe(value)}", None
    if typ == "string_type":
        return f"expected a string, got {_describe(value)}", "quote it" if isinstance(value, int | float) else None
    if typ in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_describe(value)}", None
    if typ in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_describe(value)}", None
    if typ in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{msg.replace('Input should be', 'must be')}, got {value!r}", None
    if typ == "too_short":
        n = ctx.get("min_length")
        return f"needs at least {n} item{'s' if n != 1 else ''}, got {ctx.get('actual_length')}", None
    hint = ctx.get("hint")
    msg = msg.removeprefix("Value error, ")
    if err["type"] in ("cidr", "cidr_prefix", "cidr_host_bits", "cidr_type", "address", "address_prefix",
                       "address_type", "step_shape", "step_args", "etcd_both", "network_family", "address_family",
                       "network_special", "address_special", "network_empty"):
        return msg, hint
    return f"{msg}, got {_describe(value)}", hint
