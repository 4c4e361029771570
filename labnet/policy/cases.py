"""Policy cases and their truth tables, as cyclonus and the Kubernetes network-policy e2e tests
generate them, over a fixed set of pods: namespaces a, b, c, each with a web, a db and a client
pod; probes icmp, tcp and udp on ports 80 and 8080.

The oracle is labnet's own policy model (labnet.policy.explain.flow: the source's egress, then
the destination's ingress), so a table that disagrees with the lab is a bug in the enforcement
(or in the model): exactly what a truth table is for. Pure: no lab here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labnet.policy.explain import flow
from labnet.policy.model import PolicySettings
from labnet.policy.nft import PodInfo

NAMESPACES = ("a", "b", "c")
APPS = ("web", "db", "client")
PORTS = (80, 8080)
PROBES: tuple[tuple[str, int | None], ...] = (("icmp", None), ("tcp", 80), ("tcp", 8080), ("udp", 80), ("udp", 8080))
LEGEND = "icmp tcp/80 tcp/8080 udp/80 udp/8080"  # the order of a cell's five verdicts


@dataclass(frozen=True)
class CasePod:
    name: str
    namespace: str
    labels: dict[str, str]


# the fixed pod set: web-a, db-a, client-a, web-b, ...
POD_SET = tuple(CasePod(f"{app}-{ns}", ns, {"app": app}) for ns in NAMESPACES for app in APPS)


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    settings: PolicySettings


def _settings(data: dict[str, object]) -> PolicySettings:
    return PolicySettings.model_validate(data)


CASES: tuple[Case, ...] = (
    Case("default-deny", "nothing gets in anywhere", _settings({"default": "deny"})),
    Case("allow-by-label", "web pods accept anything from client pods, of any namespace", _settings({
        "default": "deny",
        "policies": [{"name": "web-from-clients", "selector": "app == 'web'",
                      "ingress": [{"from": {"selector": "app == 'client'"}}]}]})),
    Case("allow-by-namespace", "pods of namespace a accept anything from namespace b", _settings({
        "default": "deny",
        "policies": [{"name": "a-from-b", "selector": "projectcalico.org/namespace == 'a'",
                      "ingress": [{"from": {"namespace_selector": "projectcalico.org/name == 'b'"}}]}]})),
    Case("port-range", "db pods accept tcp 8000-8090 from anyone, nothing else", _settings({
        "default": "deny",
        "policies": [{"name": "db-tcp-range", "selector": "app == 'db'",
                      "ingress": [{"protocol": "tcp", "ports": ["8000:8090"]}]}]})),
    Case("egress", "client pods may send only tcp/80 to web pods (ingress stays open)", _settings({
        "default": "allow",
        "policies": [{"name": "clients-out", "selector": "app == 'client'",
                      "egress": [{"protocol": "tcp", "ports": [80], "to": {"selector": "app == 'web'"}}]}]})),
    Case("combined", "web: deny namespace c, then allow tcp from any pod; db: udp/80 from clients of "
                     "namespace a only; everything else of theirs dropped; clients may not reach db in b",
         _settings({
             "default": "allow",
             "policies": [
                 {"name": "web-rules", "selector": "app == 'web'",
                  "ingress": [{"action": "deny", "from": {"namespace_selector": "projectcalico.org/name == 'c'"}},
                              {"protocol": "tcp", "from": {"selector": "all()"}}]},
                 {"name": "db-rules", "selector": "app == 'db'",
                  "ingress": [{"protocol": "udp", "ports": [80],
                               "from": {"selector": "app == 'client' && projectcalico.org/namespace == 'a'"}}]},
                 {"name": "clients-not-db-b", "selector": "app == 'client'",
                  "egress": [{"action": "deny", "to": {"selector": "app == 'db' && projectcalico.org/namespace == 'b'"}},
                             {"to": {"cidr": "0.0.0.0/0"}}]},
             ]})),
)


def case_named(name: str) -> Case:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"no policy case {name!r} (have: {', '.join(c.name for c in CASES)})")


Verdicts = tuple[bool, ...]  # one per probe, in PROBES order


def truth_table(settings: PolicySettings, pods: Sequence[PodInfo]) -> dict[tuple[str, str], Verdicts]:
    """What the model says for every ordered pair of pods and every probe."""
    return {(s.name, d.name): tuple(flow(settings, s, d, proto, port, pods).allowed for proto, port in PROBES)
            for s in pods for d in pods if s.name != d.name}


def cell(v: Verdicts) -> str:
    return "".join("1" if x else "0" for x in v)


def judge(expected: Mapping[tuple[str, str], Verdicts],
          actual: Mapping[tuple[str, str], Verdicts]) -> tuple[list[tuple[str, str]], tuple[tuple[str, ...], ...]]:
    """The wrong pairs, and the table: rows sources, columns destinations, each cell its five
    verdicts (1 passes, 0 dropped, in LEGEND order), `✓` when as expected, `✗ want … got …`."""
    srcs = list(dict.fromkeys(s for s, _ in expected))
    dsts = list(dict.fromkeys([*srcs, *(d for _, d in expected)]))  # the same order both ways
    wrong = [k for k in expected if actual.get(k) != expected[k]]
    rows: list[tuple[str, ...]] = [("FROM \\ TO", *dsts)]
    for s in srcs:
        row = [s]
        for d in dsts:
            if (s, d) not in expected:
                row.append("·")
            elif (s, d) in wrong:
                got = actual.get((s, d))
                row.append(f"✗ want {cell(expected[(s, d)])} got {cell(got) if got is not None else '?'}")
            else:
                row.append(f"✓ {cell(expected[(s, d)])}")
        rows.append(tuple(row))
    return wrong, tuple(rows)
