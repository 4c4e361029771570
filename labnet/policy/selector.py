"""Calico-style label selectors: a tokenizer, a recursive-descent parser and an evaluator.

Grammar (a subset of Calico's selector language, same spelling):

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | primary
    primary := "(" expr ")" | "all()" | "has(" KEY ")"
             | KEY ( "==" | "!=" ) STRING
             | KEY ( "in" | "not in" ) "{" [ STRING ( "," STRING )* ] "}"

KEY is a Kubernetes label key (`app`, `example.com/tier`); STRING is single- or double-quoted.
Errors name the 1-based column and draw a caret under it, because a selector usually sits
inside a YAML file where a bare "syntax error" is useless.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from labnet.errors import BadInput

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*")
_WS = re.compile(r"\s+")
MAX_DEPTH = 32
_SYMBOLS = ("==", "!=", "&&", "||", "!", "(", ")", "{", "}", ",")


class SelectorError(BadInput):
    """A selector that does not parse. `column` is 1-based, pointing at the offending token."""

    def __init__(self, selector: str, column: int, message: str) -> None:
        self.selector, self.column, self.message = selector, column, message
        caret = " " * (column - 1) + "^"
        super().__init__(f"selector {selector!r}, column {column}: {message}\n  {selector}\n  {caret}")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "key", "str", "sym", "end"
    text: str
    pos: int  # 0-based offset


def _tokens(src: str) -> list[_Tok]:
    out: list[_Tok] = []
    i = 0
    while i < len(src):
        ws = _WS.match(src, i)
        if ws:
            i = ws.end()
            continue
        ch = src[i]
        if ch in "'\"":
            end = src.find(ch, i + 1)
            if end < 0:
                raise SelectorError(src, i + 1, f"string starting with {ch} is not closed")
            out.append(_Tok("str", src[i + 1:end], i))
            i = end + 1
            continue
        sym = next((s for s in _SYMBOLS if src.startswith(s, i)), None)
        if sym:
            out.append(_Tok("sym", sym, i))
            i += len(sym)
            continue
        key = _KEY.match(src, i)
        if key:
            out.append(_Tok("key", key.group(), i))
            i = key.end()
            continue
        if ch == "=":
            raise SelectorError(src, i + 1, "'=' is not an operator; use '==' to compare a label")
        if ch in "&|":
            raise SelectorError(src, i + 1, f"'{ch}' is not an operator; use '{ch * 2}'")
        raise SelectorError(src, i + 1, f"unexpected character {ch!r}")
    out.append(_Tok("end", "", len(src)))
    return out


# --- AST ----------------------------------------------------------------------------------------


class Selector:
    """A parsed selector. `matches(labels)` evaluates it; str() gives the canonical spelling."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


@dataclass(frozen=True)
class Compare(Selector):
    key: str
    op: str  # "==" or "!="
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Calico: `a != 'x'` also holds when the label is absent.
        return (labels.get(self.key) == self.value) == (self.op == "==")

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True)
class In(Selector):
    key: str
    values: frozenset[str]
    negated: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (labels.get(self.key) in self.values) != self.negated

    def __str__(self) -> str:
        vals = ", ".join(_quote(v) for v in sorted(self.values))
        return f"{self.key} {'not in' if self.negated else 'in'} {{{vals}}}"


@dataclass(frozen=True)
class Not(Selector):
    inner: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.inner.matches(labels)

    def __str__(self) -> str:
        inner = str(self.inner)
        return f"!{inner}" if isinstance(self.inner, (All, Has, Not)) else f"!({inner})"


@dataclass(frozen=True)
class And(Selector):
    parts: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(p.matches(labels) for p in self.parts)

    def __str__(self) -> str:
        return " && ".join(f"({p})" if isinstance(p, Or) else str(p) for p in self.parts)


@dataclass(frozen=True)
class Or(Selector):
    parts: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(p.matches(labels) for p in self.parts)

    def __str__(self) -> str:
        return " || ".join(str(p) for p in self.parts)


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokens(src)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, expected: str, tok: _Tok | None = None) -> SelectorError:
        tok = tok or self.tok
        got = "the end of the selector" if tok.kind == "end" else repr(tok.text if tok.kind != "str" else
                                                                      _quote(tok.text))
        return SelectorError(self.src, tok.pos + 1, f"expected {expected}, got {got}")

    def take_sym(self, sym: str, expected: str | None = None) -> _Tok:
        if self.tok.kind == "sym" and self.tok.text == sym:
            tok = self.tok
            self.i += 1
            return tok
        raise self.fail(expected or f"'{sym}'")

    def at_sym(self, sym: str) -> bool:
        return self.tok.kind == "sym" and self.tok.text == sym

    def parse(self) -> Selector:
        if self.tok.kind == "end":
            raise SelectorError(self.src, 1, "the selector is empty; write all() to select every pod")
        expr = self.expr()
        if self.tok.kind != "end":
            raise self.fail("'&&', '||' or the end of the selector")
        return expr

    def expr(self) -> Selector:
        parts = [self.and_()]
        while self.at_sym("||"):
            self.i += 1
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self) -> Selector:
        parts = [self.unary()]
        while self.at_sym("&&"):
            self.i += 1
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def nest(self) -> None:
        # Bounded recursion: a hostile "((((((..." must be a SelectorError, not a RecursionError.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SelectorError(self.src, self.tok.pos + 1, f"nested deeper than {MAX_DEPTH} levels")

    def unary(self) -> Selector:
        if self.at_sym("!"):
            self.i += 1
            self.nest()
            inner = self.unary()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Selector:
        tok = self.tok
        if self.at_sym("("):
            self.i += 1
            self.nest()
            inner = self.expr()
            self.take_sym(")", "')' to close the '(' at column " + str(tok.pos + 1))
            self.depth -= 1
            return inner
        if tok.kind != "key":
            raise self.fail("a label name, has(...), all(), '!' or '('")
        self.i += 1
        if tok.text in ("all", "has") and self.at_sym("("):
            self.i += 1
            if tok.text == "all":
                self.take_sym(")", "')': all() takes no argument")
                return All()
            key = self.tok
            if key.kind != "key":
                raise self.fail("a label name inside has(...)")
            self.i += 1
            self.take_sym(")", "')' to close has(")
            return Has(key.text)
        op = self.tok
        if op.kind == "sym" and op.text in ("==", "!="):
            self.i += 1
            return Compare(tok.text, op.text, self.string(f"a quoted value after {op.text}"))
        if op.kind == "key" and op.text == "in":
            self.i += 1
            return In(tok.text, self.string_set())
        if op.kind == "key" and op.text == "not":
            self.i += 1
            if not (self.tok.kind == "key" and self.tok.text == "in"):
                raise self.fail("'in' after 'not'")
            self.i += 1
            return In(tok.text, self.string_set(), negated=True)
        raise self.fail(f"'==', '!=', 'in' or 'not in' after label {tok.text!r}")

    def string(self, expected: str) -> str:
        tok = self.tok
        if tok.kind != "str":
            hint = f" (quote it: '{tok.text}')" if tok.kind == "key" else ""
            raise self.fail(expected + hint)
        self.i += 1
        return tok.text

    def string_set(self) -> frozenset[str]:
        self.take_sym("{", "'{' to start a set of quoted values")
        values: set[str] = set()
        if self.at_sym("}"):
            self.i += 1
            return frozenset()
        while True:
            values.add(self.string("a quoted value in the set"))
            if self.at_sym("}"):
                self.i += 1
                return frozenset(values)
            self.take_sym(",", "',' or '}' in the set")


def parse(src: str) -> Selector:
    """Parse a selector; raise SelectorError (a BadInput) with the column of the problem."""
    return _Parser(src).parse()
