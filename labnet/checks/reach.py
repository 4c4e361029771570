"""Reachability: a matrix of probes (labnet.checks.probe), all at once, retried until every cell
shows what it should or the deadline passes; on failure the whole table, the wrong cells
marked, each with what its probe saw, and the tries and time it took.

One probe is a one-cell matrix (`assert_connect`); the path MTU has its own assertion
(`assert_mtu`). Calico's FV checker (ExpectSome, ExpectNone, ExpectSNAT, ExpectLoss, client
MTU) is the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labnet.checks.assertions import Endpoint, Observation, run_check
from labnet.checks.probe import Responder, connect_once, measure_loss, need_ping, path_mtu
from labnet.checks.report import render_table
from labnet.checks.result import CheckResult
from labnet.errors import BadInput
from labnet.topology.steps import DEFAULT_PORT, PROTOS, Expectation, parse_expectation
from labnet.wait import DEFAULT_TIMEOUT

WORKERS = 16  # probes in flight at once


@dataclass(frozen=True)
class Cell:
    src: Endpoint
    dst: Endpoint
    expect: Expectation
    snat_ip: str | None = None  # snat: the address the target must see


@dataclass(frozen=True)
class Seen:
    ok: bool  # as expected
    got: str  # short, for the table: "reach", "no-reach", "snat 10.0.0.1", "loss 3%"
    detail: str  # what the probe said


def _probe(cell: Cell, proto: str, port: int, count: int, interval: float) -> Seen:
    assert cell.src.ns is not None  # checked when the cells were made
    exp = cell.expect
    if exp.kind == "loss":
        loss = measure_loss(cell.src.ns, cell.dst.ip, proto, port, count=count, interval=interval)
        got = f"loss {loss.percent:.1f}%"
        return Seen(loss.percent <= (exp.max_loss or 0.0), got,
                    f"{loss.received}/{loss.sent} answered")
    out = connect_once(cell.src.ns, cell.dst.ip, proto, port)
    if exp.kind == "snat":
        got = f"snat {out.source}" if out.reached else "no-reach"
        return Seen(out.reached and out.source == cell.snat_ip, got, out.detail)
    got = "reach" if out.reached else "no-reach"
    return Seen(got == exp.kind, got, out.detail)


def _mark(cell: Cell, seen: Seen | None) -> str:
    if seen is None:
        return f"? {cell.expect} (not probed)"
    if seen.ok:
        return f"✓ {seen.got}"
    return f"✗ want {cell.expect}, got {seen.got}"


def table_rows(cells: list[Cell], seen: Mapping[tuple[str, str], Seen | None]) -> tuple[tuple[str, ...], ...]:
    """The matrix, header first: rows are sources, columns destinations; a cell not asked
    about is `·`."""
    rows: list[str] = []
    cols: list[str] = []
    for c in cells:
        rows += [c.src.name] if c.src.name not in rows else []
        cols += [c.dst.name] if c.dst.name not in cols else []
    by = {(c.src.name, c.dst.name): c for c in cells}
    body = [(r, *(_mark(by[(r, d)], seen.get((r, d))) if (r, d) in by else "·" for d in cols)) for r in rows]
    return (("FROM \\ TO", *cols), *body)


def format_table(cells: list[Cell], seen: Mapping[tuple[str, str], Seen | None]) -> str:
    head, *body = table_rows(cells, seen)
    return render_table(head, body)


def assert_reachability(cells: list[Cell], *, proto: str = "icmp", port: int = DEFAULT_PORT, count: int = 100,
                        interval: float = 0.02, timeout: float = DEFAULT_TIMEOUT,
                        name: str | None = None) -> CheckResult:
    """Every cell holds. All are probed at once (at most WORKERS in flight), again and again
    until the deadline: a cell that reached as it should is settled, a no-reach cell is probed
    every round, and the last round must have every cell it probed right. tcp and udp targets
    that are pods or machines get a responder on `port` for the run."""
    __tracebackhide__ = True
    if proto not in PROTOS:
        raise BadInput(f"proto {proto!r} is none of {', '.join(PROTOS)}")
    if not cells:
        raise BadInput("a reachability matrix needs at least one cell")
    for c in cells:
        if c.src.ns is None:
            raise BadInput(f"{c.src.name} is an address: it cannot send probes")
        if c.expect.kind == "snat" and proto == "icmp":
            raise BadInput("an snat expectation needs proto tcp or udp (the target reports the source it saw)")
    if proto == "icmp":
        need_ping()
    key = [(c.src.name, c.dst.name) for c in cells]
    seen: dict[tuple[str, str], Seen | None] = dict.fromkeys(key)
    settled: set[tuple[str, str]] = set()
    by_key = dict(zip(key, cells, strict=True))

    def probe_one(cell: Cell) -> tuple[tuple[str, str], Seen]:
        return (cell.src.name, cell.dst.name), _probe(cell, proto, port, count, interval)

    def probe() -> Observation:
        # a cell that reached as it should is settled; a no-reach cell is probed in every round
        # (one lost packet must not pass for a drop), and the last round must have them all right
        todo = [c for c, k in zip(cells, key, strict=True) if k not in settled]
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(todo))) as pool:
            for k, s in pool.map(probe_one, todo):
                seen[k] = s
                if s.ok and by_key[k].expect.kind != "no-reach":
                    settled.add(k)
        wrong = [c for c, k in zip(cells, key, strict=True) if not (seen[k] and seen[k].ok)]  # type: ignore[union-attr]
        want = f"all {len(cells)} cells as expected ({proto}{'' if proto == 'icmp' else f' port {port}'})"
        table = table_rows(cells, seen) if len(cells) > 1 else ()
        if not wrong:
            only = seen[key[0]] if len(cells) == 1 else None
            return Observation(True, want, f"{only.got} ({only.detail})" if only is not None
                               else f"{len(cells)}/{len(cells)} cells as expected", table=table)
        lines = [f"{c.src.name} → {c.dst.name} ({c.dst.ip}): want {c.expect}, got "
                 f"{seen[(c.src.name, c.dst.name)].got}: {seen[(c.src.name, c.dst.name)].detail}"  # type: ignore[union-attr]
                 for c in wrong]
        return Observation(False, want, f"{len(wrong)} of {len(cells)} cells wrong: " + "; ".join(lines),
                           format_table(cells, seen), "reachability, the wrong cells marked", table=table)

    targets = {(c.dst.name, c.dst.ns) for c in cells if c.dst.ns is not None} if proto != "icmp" else set()
    with contextlib.ExitStack() as stack:
        for _name, ns in sorted(targets, key=lambda t: t[0]):
            stack.enter_context(Responder(ns, proto, port))  # type: ignore[arg-type]
        return run_check(name or f"reachability ({proto})", ", ".join(dict.fromkeys(k[0] for k in key)),
                         probe, timeout)


def matrix_cells(expect: Mapping[str, Mapping[str, str | Expectation]], resolve: Callable[[str], Endpoint],
                 address: Callable[[str], str] | None = None) -> list[Cell]:
    """Cells from `{from: {to: expectation}}`, names resolved to endpoints (and an snat
    expectation's name to the address it stands for, by `address`)."""
    ends: dict[str, Endpoint] = {}

    def end(name: str) -> Endpoint:
        if name not in ends:
            ends[name] = resolve(name)
        return ends[name]

    cells = []
    for src, row in expect.items():
        for dst, text in row.items():
            exp = text if isinstance(text, Expectation) else parse_expectation(text)
            snat = None
            if exp.kind == "snat" and exp.source is not None:
                snat = address(exp.source) if address is not None else exp.source
            cells.append(Cell(end(src), end(dst), exp, snat))
    return cells


def assert_connect(src: Endpoint, dst: Endpoint, expect: str | Expectation = "reach", *, proto: str = "icmp",
                   port: int = DEFAULT_PORT, count: int = 100, interval: float = 0.02,
                   snat_ip: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """One probe from src to dst (a one-cell matrix)."""
    __tracebackhide__ = True
    exp = expect if isinstance(expect, Expectation) else parse_expectation(expect)
    if exp.kind == "snat" and snat_ip is None:
        snat_ip = exp.source
    where = "" if proto == "icmp" else f" port {port}"
    return assert_reachability([Cell(src, dst, exp, snat_ip)], proto=proto, port=port, count=count,
                               interval=interval, timeout=timeout,
                               name=f"{proto}{where} {src.name} → {dst.name}: {exp}")


def assert_mtu(src: Endpoint, dst: Endpoint, mtu: int, *, timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """The largest DF packet from src to dst is `mtu` bytes, and one byte more is refused with
    the MTU said back (ICMP fragmentation needed, or the source's own kernel for its first hop)."""
    __tracebackhide__ = True
    if src.ns is None:
        raise BadInput(f"{src.name} is an address: it cannot send probes")
    need_ping()
    ns = src.ns

    def probe() -> Observation:
        out = path_mtu(ns, dst.ip, high=max(1500, mtu + 1))
        ok = out.largest == mtu and out.said == mtu
        return Observation(ok, f"{mtu} bytes pass with DF set, {mtu + 1} refused with mtu {mtu}",
                           f"largest passing {out.largest}, refused with mtu {out.said}: {out.detail}")

    return run_check(f"path MTU {src.name} → {dst.name} ({dst.ip})", src.name, probe, timeout)


def assert_connectivity(matrix: Mapping[str, Mapping[str, bool]], resolver: Callable[[str], Endpoint], *,
                        timeout: float = DEFAULT_TIMEOUT, name: str = "connectivity") -> CheckResult:
    """Every cell holds: matrix[src][dst] True = src reaches dst (ping), False = it must not.
    A reachability matrix of reach / no-reach cells."""
    __tracebackhide__ = True
    if not matrix or not any(matrix.values()):
        raise BadInput("connectivity matrix is empty")
    cells = matrix_cells({s: {d: "reach" if want else "no-reach" for d, want in row.items()}
                          for s, row in matrix.items()}, resolver)
    return assert_reachability(cells, proto="icmp", timeout=timeout, name=name)
