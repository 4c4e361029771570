"""Policy cases against a running lab: for each case (labnet.policy.cases) the policy is applied
to every node, the expected truth table comes from the model, and the actual one from probes
between the fixed pods (icmp, tcp and udp on two ports, each pair both ways, all at once). A
case reports "N wrong, M correct" and, when wrong, the table with those cells marked.

The fixed pods are added through CNI where the lab lacks them (spread over its nodes, each in
its Kubernetes namespace), and removed again at the end, when the lab's own policy is put back.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from labnet.checks import CheckResult
from labnet.checks.probe import Responder, connect_once, need_ping
from labnet.checks.report import render_table
from labnet.errors import BadInput, LabnetError
from labnet.lab import pods as labpods
from labnet.lab.state import load_journal
from labnet.lab.view import LabView
from labnet.policy import remove
from labnet.policy.cases import LEGEND, POD_SET, PORTS, PROBES, Case, Verdicts, judge, truth_table
from labnet.policy.enforce import apply_all, apply_settings, enforced, pod_infos, settings_of
from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo

CONNECT_TIMEOUT = 0.5  # inside one lab a dropped probe is the only slow one
WORKERS = 32
Applier = Callable[[LabView, PolicySettings, Sequence[PodInfo]], None]


def apply_case(view: LabView, settings: PolicySettings, everyone: Sequence[PodInfo]) -> None:
    """The case's policy on every node of the lab, one nft transaction each."""
    apply_settings(settings, view.topo.nodes, view.journal.info.get("pods", {}), view.ns)


def _refresh(view: LabView) -> None:
    journal = load_journal(view.name)
    if journal is not None:
        view.journal = journal


def case_pods(view: LabView, added: list[str]) -> None:
    """Add the fixed pods the lab lacks, each name into `added` as soon as it is (to remove at
    the end, also when a later one fails)."""
    nodes = list(view.topo.nodes)
    if not nodes:
        raise BadInput(f"lab {view.name} has no cluster nodes: no pods, no policy to test")
    have = view.journal.info.get("pods", {})
    for i, cp in enumerate(POD_SET):
        rec = have.get(cp.name)
        if rec is not None:
            if rec.get("labels") != cp.labels or (rec.get("namespace") or "default") != cp.namespace:
                raise BadInput(f"lab {view.name}: pod {cp.name} exists, but not as the policy cases need it "
                               f"(namespace {cp.namespace}, labels {cp.labels}); remove it first")
            continue
        added.append(cp.name)
        labpods.add(view.name, nodes[i % len(nodes)], cp.name, cp.labels, namespace=cp.namespace)
    _refresh(view)


def _actual(view: LabView, pods: Sequence[PodInfo], pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Verdicts]:
    by = {p.name: p for p in pods}
    jobs = [(s, d, i) for s, d in pairs for i in range(len(PROBES))]

    def probe(job: tuple[str, str, int]) -> tuple[tuple[str, str], int, bool]:
        s, d, i = job
        proto, port = PROBES[i]
        out = connect_once(view.pod_ns(s), str(by[d].ip), proto, port or 0, timeout=CONNECT_TIMEOUT)
        return (s, d), i, out.reached

    got: dict[tuple[str, str], list[bool]] = {pair: [False] * len(PROBES) for pair in pairs}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for pair, i, ok in pool.map(probe, jobs):
            got[pair][i] = ok
    return {pair: tuple(v) for pair, v in got.items()}


def judge_case(view: LabView, case: Case, pods: Sequence[PodInfo], everyone: Sequence[PodInfo],
               timeout: float) -> CheckResult:
    """Probe until every pair is as the model says or the deadline passes (an nft table takes a
    moment to reach every node); wrong pairs only are probed again."""
    t0 = time.monotonic()
    expected = truth_table(case.settings, pods)
    actual: dict[tuple[str, str], Verdicts] = {}
    # a pair that passed everything is settled; one expected to drop something is probed in
    # every round (one lost packet must not pass for a drop), and the last round must be right
    settled: set[tuple[str, str]] = set()
    tries = 0
    while True:
        tries += 1
        todo = [k for k in expected if k not in settled]
        actual.update(_actual(view, pods, todo))
        settled |= {k for k in todo if all(expected[k]) and actual[k] == expected[k]}
        if all(actual[k] == expected[k] for k in todo) or time.monotonic() - t0 >= timeout:
            break
    wrong, table = judge(expected, actual)
    probes = len(expected) * len(PROBES)
    bad = sum(a != b for k in wrong for a, b in zip(expected[k], actual.get(k, ()), strict=False))
    detail = f"{bad} wrong, {probes - bad} correct ({len(wrong)} of {len(expected)} pairs wrong)"
    name = f"policy case {case.name}"
    message = ""
    if wrong:
        head, *body = table
        lines = [f"check failed on {view.name}: {name} (waited {time.monotonic() - t0:.1f}s, {tries} tries)",
                 f"  the case: {case.what}",
                 f"  expected (labnet's policy model) against actual (probes), {detail}",
                 f"  each cell: {LEGEND}, 1 passes, 0 is dropped",
                 *(f"  {s} → {d}: want {_bits(expected[(s, d)])} got {_bits(actual.get((s, d)))}" for s, d in wrong[:20]),
                 "  the truth table, the wrong cells marked:",
                 *("    " + line for line in render_table(head, body).splitlines())]
        message = "\n".join(lines)
    return CheckResult(not wrong, name, view.name, detail, time.monotonic() - t0, tries, message, table)


def _bits(v: Verdicts | None) -> str:
    if v is None:
        return "?"
    return " ".join(f"{proto}{'/' + str(port) if port else ''}={'1' if x else '0'}"
                    for (proto, port), x in zip(PROBES, v, strict=True))


def run_cases(view: LabView, cases: Sequence[Case], *, timeout: float = 10.0,
              applier: Applier = apply_case) -> list[CheckResult]:
    """Every case in turn; the lab's own policy and pods are as they were afterwards."""
    if not cases:
        raise BadInput("no policy case to run")
    need_ping()
    added: list[str] = []
    names = {cp.name for cp in POD_SET}
    try:
        case_pods(view, added)
        everyone = pod_infos(view.journal.info.get("pods", {}))
        pods = [p for p in everyone if p.name in names]
        results = []
        with contextlib.ExitStack() as stack:
            for p in pods:  # the targets answer tcp and udp on both ports for every case
                for proto in ("tcp", "udp"):
                    for port in PORTS:
                        stack.enter_context(Responder(view.pod_ns(p.name), proto, port))
            for case in cases:
                applier(view, case.settings, everyone)
                results.append(judge_case(view, case, pods, everyone, timeout))
        return results
    finally:
        _restore(view, added)


def _restore(view: LabView, added: list[str]) -> None:
    """The pods this run added gone, and the lab's own policy back (or no table, when it has
    none). Each part is tried whatever the one before it did; what failed is raised after."""
    failed: list[str] = []
    _refresh(view)
    for name in added:
        rec = view.journal.info.get("pods", {}).get(name)
        try:
            if rec is not None:
                labpods.remove(view.name, rec["node"], name)
        except (LabnetError, KeyError) as exc:
            failed.append(f"pod {name}: {exc}")
    _refresh(view)
    try:
        if enforced(settings_of(view.journal.info.get("topology", {}))):
            apply_all(view.journal.info, view.ns)
        else:  # the lab has no policy of its own: no table either
            for node in view.topo.nodes:
                remove(view.ns(node))
    except LabnetError as exc:
        failed.append(f"the lab's own policy: {exc}")
    if failed:
        raise LabnetError(f"lab {view.name}: the policy cases could not put everything back: " + "; ".join(failed))


def total(results: Sequence[CheckResult]) -> str:
    wrong = correct = 0
    for r in results:
        w, _, rest = r.detail.partition(" wrong, ")
        wrong += int(w)
        correct += int(rest.split(" ", 1)[0])
    bad = [r.name.removeprefix("policy case ") for r in results if not r.ok]
    return (f"{len(results)} policy cases: {wrong} wrong, {correct} correct"
            + (f"; wrong in: {', '.join(bad)}" if bad else ""))


# -- the CLI verb -----------------------------------------------------------------------------

def cmd_policy_cases(args: argparse.Namespace) -> int:
    import json
    import os

    from labnet.checks import format_results, write_junit
    from labnet.lab import state
    from labnet.policy.cases import CASES, case_named

    if args.list:
        for c in CASES:
            print(f"{c.name:20} {c.what}")
        return 0
    if os.geteuid() != 0:
        raise BadInput("labnet policy-cases needs root to work inside the lab's namespaces (run it with sudo)")
    try:
        cases = [case_named(n) for n in args.cases] or list(CASES)
    except KeyError as exc:
        raise BadInput(str(exc.args[0])) from None
    view = LabView(state.pick_lab(args.lab))
    results = run_cases(view, cases, timeout=args.within)
    if args.junit:
        write_junit(results, args.junit, suite=f"labnet.{view.name}.policy-cases")
    if args.json:
        print(json.dumps({"lab": view.name, "summary": total(results), "cases": [r.to_dict() for r in results]},
                         indent=2))
    else:
        print(format_results(results))
        for r in results:
            if not r.ok:
                print("\n" + r.message)
        print(total(results))
    return 0 if all(r.ok for r in results) else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.paths import lab_arg

    s = sub.add_parser(
        "policy-cases", help="generated network-policy cases: the lab's truth tables against labnet's model",
        description="For each case, apply its policy to the running lab, compute the truth table from labnet's "
                    "policy model, probe the actual one between fixed pods (namespaces a, b, c × web, db, client; "
                    "icmp, tcp and udp on ports 80 and 8080), and report it. The fixed pods are added for the run "
                    "and removed after it, and the lab's own policy is put back. Exit 1 when a table is wrong.")
    s.add_argument("cases", nargs="*", metavar="CASE", help="default: all (see --list)")
    s.add_argument("-l", "--lab", type=lab_arg, help="the lab (default: the only running one)")
    s.add_argument("--list", action="store_true", help="list the cases and exit")
    s.add_argument("--within", type=float, default=10.0, help="seconds each case may take to hold")
    s.add_argument("--json", action="store_true")
    s.add_argument("--junit", metavar="FILE", help="also write JUnit XML (one test case per policy case)")
    s.set_defaults(func=cmd_policy_cases)
