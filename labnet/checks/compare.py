"""Subset matching of JSON-like data, after FRR topotests' `json_cmp`.

`expected` names only what matters: every key in an expected dict must be in the actual dict
with a matching value; extra actual keys are fine. An expected value of `None` means "this key
must be absent". An expected list matches when each of its items matches a distinct actual item,
in any order (`exact=True`: same length, same order, and dicts with the same keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _is_list(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str | bytes)


def _show(x: object) -> str:
    return repr(x)


def subset_diff(expected: Any, actual: Any, path: str = "$", *, exact: bool = False) -> list[str]:
    """Where `actual` fails to contain `expected`, as `path: expected X, actual Y` lines; [] if it does."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: expected an object {_show(dict(expected))}, actual {_show(actual)}"]
        diffs: list[str] = []
        for key, exp in expected.items():
            sub = f"{path}.{key}"
            if exp is None:
                if key in actual and actual[key] is not None:
                    diffs.append(f"{sub}: expected absent, actual {_show(actual[key])}")
                continue
            if key not in actual:
                diffs.append(f"{sub}: expected {_show(exp)}, actual absent")
                continue
            diffs += subset_diff(exp, actual[key], sub, exact=exact)
        if exact:
            diffs += [f"{path}.{k}: expected absent, actual {_show(actual[k])}" for k in actual if k not in expected]
        return diffs
    if _is_list(expected):
        if not _is_list(actual):
            return [f"{path}: expected a list {_show(list(expected))}, actual {_show(actual)}"]
        if exact:
            if len(expected) != len(actual):
                return [f"{path}: expected {len(expected)} items, actual {len(actual)}: {_show(list(actual))}"]
            out: list[str] = []
            for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
                out += subset_diff(e, a, f"{path}[{i}]", exact=True)
            return out
        return _unordered_subset(list(expected), list(actual), path)
    if expected != actual:
        return [f"{path}: expected {_show(expected)}, actual {_show(actual)}"]
    return []


def _unordered_subset(expected: list[Any], actual: list[Any], path: str) -> list[str]:
    # Greedy matching with the first free actual item: enough for route/neigh/peer lists, where
    # expected items rarely match more than one actual item.
    used: set[int] = set()
    diffs: list[str] = []
    for i, exp in enumerate(expected):
        hit = next((j for j, act in enumerate(actual) if j not in used and not subset_diff(exp, act)), None)
        if hit is None:
            diffs.append(f"{path}[{i}]: expected an item matching {_show(exp)}, none of {len(actual)} actual items does")
        else:
            used.add(hit)
    return diffs


def matches(expected: Any, actual: Any, *, exact: bool = False) -> bool:
    return not subset_diff(expected, actual, exact=exact)
