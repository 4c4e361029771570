"""The selector language: parsing, canonical spelling, evaluation, and errors with their column."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labnet.errors import BadInput
from labnet.policy.selector import MAX_DEPTH, SelectorError, parse

LABELS = {"app": "web", "role": "a", "example.com/tier": "front"}


@pytest.mark.parametrize(
    ("text", "canonical", "matches"),
    [
        ("all()", "all()", True),
        ("app == 'web'", "app == 'web'", True),
        ('app == "db"', "app == 'db'", False),
        ("app != 'db'", "app != 'db'", True),
        ("missing != 'x'", "missing != 'x'", True),  # Calico: != holds when the label is absent
        ("role in {'a','b'}", "role in {'a', 'b'}", True),
        ("role not in {'a', 'b'}", "role not in {'a', 'b'}", False),
        ("missing in {'a'}", "missing in {'a'}", False),
        ("role in {}", "role in {}", False),
        ("has(app)", "has(app)", True),
        ("!has(app)", "!has(app)", False),
        ("has(example.com/tier)", "has(example.com/tier)", True),
        ("app == 'web' && role == 'b'", "app == 'web' && role == 'b'", False),
        ("app == 'x' || role == 'a'", "app == 'x' || role == 'a'", True),
        ("!(app == 'web' && has(role))", "!(app == 'web' && has(role))", False),
        ("(app == 'x' || has(role)) && all()", "(app == 'x' || has(role)) && all()", True),
        ("a == 'x' || b == 'y' && c == 'z'", "a == 'x' || b == 'y' && c == 'z'", False),  # && binds tighter
        ("  app=='web'  ", "app == 'web'", True),
        ("v == \"it's\"", "v == \"it's\"", False),
    ],
)
def test_good_selectors(text: str, canonical: str, matches: bool) -> None:
    sel = parse(text)
    assert str(sel) == canonical
    assert sel.matches(LABELS) is matches
    assert str(parse(str(sel))) == canonical  # the canonical spelling parses to itself


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "the selector is empty; write all() to select every pod"),
        ("app = 'web'", 5, "'=' is not an operator; use '==' to compare a label"),
        ("app == web", 8, "expected a quoted value after == (quote it: 'web'), got 'web'"),
        ("app == 'web", 8, "string starting with ' is not closed"),
        ("app == 'web' & role == 'a'", 14, "'&' is not an operator; use '&&'"),
        ("app == 'web' role == 'a'", 14, "expected '&&', '||' or the end of the selector, got 'role'"),
        ("has(", 5, "expected a label name inside has(...), got the end of the selector"),
        ("has(app", 8, "expected ')' to close has(, got the end of the selector"),
        ("all(x)", 5, "expected ')': all() takes no argument, got 'x'"),
        ("app", 4, "expected '==', '!=', 'in' or 'not in' after label 'app', got the end of the selector"),
        ("role in 'a'", 9, "expected '{' to start a set of quoted values, got \"'a'\""),
        ("role in {'a' 'b'}", 14, "expected ',' or '}' in the set, got \"'b'\""),
        ("role not {'a'}", 10, "expected 'in' after 'not', got '{'"),
        ("((app == 'x')", 14, "expected ')' to close the '(' at column 1, got the end of the selector"),
        ("app == 'x' &&", 14, "expected a label name, has(...), all(), '!' or '(', got the end of the selector"),
        ("app == 'x' $", 12, "unexpected character '$'"),
        (")", 1, "expected a label name, has(...), all(), '!' or '(', got ')'"),
    ],
)
def test_bad_selectors_name_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, BadInput)  # the CLI exits 2 on it
    assert (err.column, err.message) == (column, message)
    # the caret sits under the column
    lines = str(err).split("\n")
    assert lines[1] == f"  {text}" and lines[2] == "  " + " " * (column - 1) + "^"


def test_deep_nesting_is_an_error_not_a_recursion_crash() -> None:
    with pytest.raises(SelectorError, match=f"nested deeper than {MAX_DEPTH}"):
        parse("(" * 5000 + "all()" + ")" * 5000)
    with pytest.raises(SelectorError, match="nested deeper"):
        parse("!" * 5000 + "all()")
    assert parse("(" * 10 + "all()" + ")" * 10).matches({})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab(){}!=&|,'\" inothsl", max_size=40))
def test_parse_either_parses_or_raises_selector_error(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError:
        return
    assert str(parse(str(sel))) == str(sel)
