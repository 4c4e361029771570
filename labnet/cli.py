"""The `labnet` command. Exit status: 0 ok, 1 a check failed or an error, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labnet import __version__, paths
from labnet.errors import BadInput, LabnetError
from labnet.wait import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from labnet import nsexec

Handler = Callable[[argparse.Namespace], int]

_LABEL_PART = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"


def _label(value: str) -> str:
    """K=V as Kubernetes labels are: they reach the datastore and the policy's nft comments."""
    import re

    key, eq, val = value.partition("=")
    if not eq or not re.fullmatch(rf"({_LABEL_PART}/)?{_LABEL_PART}", key) or not re.fullmatch(rf"({_LABEL_PART})?", val):
        raise argparse.ArgumentTypeError(
            f"label {value[:80]!r} is not valid: KEY=VALUE, each letters, digits, '-', '_' and '.' "
            "(alphanumeric at both ends, 63 characters at most)")
    return value


def _load(path: str):  # type: ignore[no-untyped-def]
    """The topology, its warnings said on stderr (errors raise: exit 2)."""
    from labnet.topology import load

    topo = load(path)
    for w in topo.warnings:
        print(w, file=sys.stderr)
    return topo


def cmd_validate(args: argparse.Namespace) -> int:
    topo = _load(args.file)
    n = len(list(topo.machines()))
    print(f"{args.file}: ok (lab {topo.name}: {len(topo.networks)} networks, {n} machines, "
          f"{len(topo.cluster.pods) if topo.cluster else 0} pods, {len(topo.scenarios)} scenarios)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from labnet.topology.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _need_root() -> None:
    if os.geteuid() != 0:
        raise BadInput("labnet needs root to create namespaces (run it with sudo)")


def cmd_up(args: argparse.Namespace) -> int:
    from labnet.lab import lifecycle
    from labnet.lab import status as labstatus
    from labnet.lab.progress import Progress
    topo = _renamed(_load(args.file), args.name)
    _need_root()
    progress = Progress(topo.name, quiet=args.quiet)
    journal, timings, changed = lifecycle.up(topo, args.file, runtime=args.runtime, progress=progress)
    if args.timings:
        print(json.dumps({"lab": topo.name, "changed": changed, "phases": timings,
                          "total": round(sum(timings.values()), 4)}))
        return 0
    if not changed:
        repaired = journal.info.get("repaired") or []
        print(f"lab {topo.name} is already up; " + ("started again what had died:\n  " + "\n  ".join(repaired)
                                                     if repaired else "nothing changed"))
    print(labstatus.format_status(labstatus.status(topo.name)))
    return 0


def _renamed(topo, name: str | None):  # type: ignore[no-untyped-def]
    """`up --name` runs one file as several labs side by side (the name was checked by argparse)."""
    return topo if name is None else topo.model_copy(update={"name": name})


def cmd_down(args: argparse.Namespace) -> int:
    from labnet.lab import lifecycle, state
    _need_root()
    if args.all:
        names = state.list_labs()
    elif args.name:
        names = [args.name]
    elif args.file:
        names = [_lab_of_file(args.file)]
    else:
        raise BadInput("say which lab: labnet down FILE | --name NAME | --all")
    rc = 0
    for name in names:
        problems = lifecycle.down(name)
        if problems:
            rc = 1
            print(f"lab {name}: NOT removed completely; what is left:\n  " + "\n  ".join(problems), file=sys.stderr)
        else:
            print(f"lab {name}: removed")
    return rc


def _lab_of_file(path: str) -> str:
    """The lab `labnet up FILE` made. The file's `name:` when a lab of that name exists; else (the file
    was edited: broken YAML, no or another name) the one lab whose journal records this file."""
    from labnet.lab import state

    try:
        name: str | None = _lab_name_of(path)
        problem: BadInput | None = None
    except BadInput as exc:
        name, problem = None, exc
    if name is not None and state.load_journal(name) is not None:
        return name
    resolved = str(Path(path).resolve())
    recorded = []
    for other in state.list_labs():
        try:
            journal = state.load_journal(other)
        except LabnetError:
            continue
        if journal is not None and journal.topology_file == resolved:
            recorded.append(other)
    if len(recorded) == 1:
        return recorded[0]
    if len(recorded) > 1:
        raise BadInput(f"{path}: labs {', '.join(recorded)} were brought up from this file; choose one with --name")
    if problem is not None:
        raise problem
    assert name is not None
    return name  # down says there is no such lab (or removes a docker lab found by its label)


def _lab_name_of(path: str) -> str:
    """The lab's name from its file, even when the file no longer validates (down must work)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
        name = data.get("name") if isinstance(data, dict) else None
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: cannot read the lab name ({exc}); use --name") from exc
    if not isinstance(name, str):
        raise BadInput(f"{path}: no `name:`; use --name")
    return name


def cmd_gc(args: argparse.Namespace) -> int:
    from labnet.lab import gc as labgc

    _need_root()
    removed, failed = labgc.gc()
    for r in removed:
        print(f"removed {r}")
    for f in failed:
        print(f"labnet: gc could not remove {f}", file=sys.stderr)
    if not removed and not failed:
        print("nothing to collect")
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from labnet.lab import status as labstatus
    rows = labstatus.status(args.lab)
    print(labstatus.status_json(rows) if args.json else labstatus.format_status(rows))
    if not args.json:
        for line in labstatus.shared():
            print(line)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from labnet.lab import state
    _need_root()
    name = state.pick_lab(args.lab)
    cmd = args.cmd or [os.environ.get("SHELL", "/bin/sh")]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    argv = _target_ns(name, args.target).argv(cmd)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _target_ns(lab_name: str, target: str) -> nsexec.NodeNS:
    """NODE or NODE/POD of a running lab."""
    from labnet.lab import state
    if "/" in target:
        from labnet.lab.pods import pod_ns

        node, pod = target.split("/", 1)
        return pod_ns(lab_name, node, pod)
    return state.node_ns(lab_name, target)


def cmd_capture(args: argparse.Namespace) -> int:
    """tcpdump on one interface of a node or pod; -w FILE writes a pcap on this host (the
    capture streams out of the node, so it works the same on both runtimes)."""
    import difflib
    import subprocess

    from labnet import nsexec
    from labnet.lab import state
    _need_root()
    name = state.pick_lab(args.lab)
    ns = _target_ns(name, args.target)
    links = [link["ifname"] for link in json.loads(nsexec.run(ns, ["ip", "-j", "link", "show"]).stdout or "[]")]
    if args.iface != "any" and args.iface not in links:
        close = difflib.get_close_matches(args.iface, links, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BadInput(f"{args.target} (lab {name}) has no interface {args.iface!r}{hint}; "
                       f"it has: {', '.join(links)}")
    cmd = ["tcpdump", "-n", "-i", args.iface]
    if args.count:
        cmd += ["-c", str(args.count)]
    cmd += ["-U", "-w", "-"] if args.write else ["-l"]
    cmd += args.filter
    if args.timeout:  # SIGINT: tcpdump flushes and prints its counts, as on Ctrl-C
        cmd = ["timeout", "--preserve-status", "-s", "INT", str(args.timeout), *cmd]
    argv = ns.argv(cmd)
    if not args.write:
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    with open(args.write, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the terminal's SIGINT reached tcpdump too: let it finish the file
            rc = proc.wait()
    print(f"wrote {args.write}", file=sys.stderr)
    return rc


def cmd_graph(args: argparse.Namespace) -> int:
    from labnet.topology.graph import render

    render(_load(args.file), Path(args.output))
    print(f"wrote {args.output}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from labnet.checks import format_results, results_json, write_junit
    from labnet.lab.view import LabView
    from labnet.scenario.run import run_steps

    topo = _load(args.file)
    view = LabView(args.lab or topo.name)
    names = args.scenarios or list(topo.scenarios)
    unknown = [n for n in names if n not in topo.scenarios]
    if unknown:
        raise BadInput(f"{args.file}: no scenario {', '.join(map(repr, unknown))} (have: {', '.join(topo.scenarios)})")
    # The file's own steps, typed once when the file was loaded, run against the running lab.
    if args.repeat > 1:
        return _check_repeated(args, view, topo, names)
    by = {name: run_steps(view, topo.scenarios[name], timeout=args.timeout, collect=True) for name in names}
    flat = [r for rs in by.values() for r in rs]
    if args.html:
        from labnet.scenario import html

        html.write(args.html, view.name, topo, by)
    if not flat:
        what = f"scenario {', '.join(names)} has no steps" if names else "the file has no scenarios"
        print(f"{args.file}: no check ran ({what}); nothing was verified", file=sys.stderr)
        return 1
    if args.junit:
        write_junit(flat, args.junit, suite=f"labnet.{view.name}")
    if args.json:
        print(results_json(flat))
    else:
        print(format_results(flat))
    return 0 if all(r.ok for r in flat) else 1


def _check_repeated(args: argparse.Namespace, view: Any, topo: Any, names: list[str]) -> int:
    """`labnet check FILE --repeat N`: pass rates per scenario, the slowest step and convergence."""
    from labnet.checks import write_junit
    from labnet.scenario.repeat import format_tallies, repeat
    from labnet.scenario.run import run_steps

    last: dict[str, list[Any]] = {}

    def run_one(n: str) -> list[Any]:
        last[n] = run_steps(view, topo.scenarios[n], timeout=args.timeout, collect=True)
        return last[n]

    tallies, every = repeat(names, args.repeat, run_one)
    if args.html:
        from labnet.scenario import html

        html.write(args.html, view.name, topo, last, tallies)  # the last run's steps, every run's rates
    if args.junit:
        write_junit(every, args.junit, suite=f"labnet.{view.name}")
    if args.json:
        print(json.dumps({"lab": view.name, "repeat": args.repeat, "scenarios": [t.to_dict() for t in tallies]},
                         indent=2))
    else:
        print(format_tallies(tallies))
    return 0 if all(t.passed == t.runs for t in tallies) else 1


def _etcd_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from labnet.etcd.admin import admin_store
    from labnet.lab import state

    _need_root()
    return admin_store(state.running_journal(state.pick_lab(args.lab)).info)


def _register_etcd(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.etcd.cli import register

    p = register(sub, _etcd_store)
    p.add_argument("-l", "--lab", type=paths.lab_arg, help="the lab (default: the only running one): labnet etcd -l NAME ls")


def _ipv4(value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IPv4 address") from None


def _ipv6(value: str) -> IPv6Address:
    try:
        addr = IPv6Address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IPv6 address") from None
    if addr.scope_id or addr.is_link_local or addr.is_multicast:
        raise argparse.ArgumentTypeError(f"{value!r} is not a pool address (scoped, link-local or multicast)")
    return addr


def cmd_pod(args: argparse.Namespace) -> int:
    from labnet.lab import pods, state
    _need_root()
    name = state.pick_lab(args.lab)
    if args.pod_command == "add":
        labels = dict(kv.split("=", 1) for kv in args.label or [])  # each checked by _label
        rec = pods.add(name, args.node, args.pod, labels=labels or None, ip=args.ip, ip6=args.ip6)
        six = f" {rec['ip6']}" if rec.get("ip6") else ""
        print(f"pod {args.pod} on {args.node}: {rec['ip']}{six} (host veth {rec['host_veth']})")
    else:
        pods.remove(name, args.node, args.pod)
        print(f"pod {args.pod} on {args.node}: removed")
    return 0


def cmd_bgp_status(args: argparse.Namespace) -> int:
    from labnet.agent.status import format_bgp_status
    from labnet.lab import state
    from labnet.lab.view import LabView

    _need_root()
    view = LabView(state.pick_lab(args.lab))
    status = view.agent_status(args.node)
    print(json.dumps(status.get("peers", []), indent=2) if args.json else format_bgp_status(status))
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from labnet.checks.routes import format_table, get_routes
    from labnet.lab import state

    _need_root()
    lab = state.pick_lab(args.lab)
    ns = state.node_ns(lab, args.node)
    routes = get_routes(ns, table=args.table, family=6 if args.ipv6 else 4)
    if args.json:
        print(json.dumps([r.as_dict() for r in routes], indent=2, default=str))
        return 0
    print(format_table(routes))
    for why in _routes_not_installed(lab, args.node):  # what the agent wants and cannot install, and why
        print(f"not installed: {why}")
    return 0


def _routes_not_installed(lab: str, node: str) -> list[str]:
    from labnet.lab.view import LabView

    try:
        problems = LabView(lab).agent_status(node).get("problems") or []
    except LabnetError:
        return []  # a router, a host, or an agent that does not answer: nothing to add
    from labnet.agent.status import ROUTE_NOT_PROGRAMMED as mark

    return [p[len(mark):] for p in problems if isinstance(p, str) and p.startswith(mark)]


def _register_doctor(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.diagnose.report import register

    register(sub)


def _register_trace(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.diagnose.trace import register

    register(sub)


def _register_policy_cases(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.scenario.policy_cases import register

    register(sub)


def _register_image(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from labnet.runtime.image import register

    register(sub)


EXTRA: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    _register_etcd, _register_doctor, _register_trace, _register_policy_cases, _register_image,
]


def _runs(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of runs (1-10000)")
    return int(value)


# Every name a user types is checked as argparse reads it (`type=`), by the rules the topology
# validator uses (labnet.paths): a bad one is exit 2 before anything is looked up or touched.
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labnet", description="Container-networking test labs from one YAML file.")
    p.add_argument("--version", action="version", version=f"labnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("up", help="build a lab from a topology file and wait until it is ready")
    s.add_argument("file")
    s.add_argument("--runtime", choices=["netns", "docker"], help="override the file's runtime")
    s.add_argument("--name", type=paths.lab_arg, help="run the file under another lab name (side by side with the original)")
    s.add_argument("--timings", action="store_true", help="print JSON timings per phase instead of the table")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="remove a lab and everything it made")
    s.add_argument("file", nargs="?")
    s.add_argument("--name", type=paths.lab_arg, help="the lab's name (works when the file moved or changed)")
    s.add_argument("--all", action="store_true", help="every lab")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("gc", help="remove leftovers of labs whose owner is gone")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("status", help="list labs, machines, addresses and processes")
    s.add_argument("-l", "--lab", type=paths.lab_arg)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("exec", help="run a command inside a node or pod: labnet exec NODE[/POD] -- CMD")
    s.add_argument("-l", "--lab", type=paths.lab_arg, help="the lab (default: the only running one)")
    s.add_argument("target", metavar="NODE[/POD]", type=paths.target_arg)
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)

    s = sub.add_parser("capture", help="tcpdump on a node's or pod's interface: labnet capture NODE[/POD] IFACE "
                       "[-w out.pcap] [FILTER]")
    s.add_argument("-l", "--lab", type=paths.lab_arg, help="the lab (default: the only running one)")
    s.add_argument("target", metavar="NODE[/POD]", type=paths.target_arg)
    s.add_argument("iface", metavar="IFACE", help="interface name as seen inside, or 'any'")
    s.add_argument("-w", "--write", metavar="FILE", help="write a pcap file here (on this host) instead of text")
    s.add_argument("-c", "--count", type=int, help="stop after this many packets")
    s.add_argument("-t", "--timeout", type=float, help="stop after this many seconds")
    s.add_argument("filter", nargs="*", help="a tcpdump (pcap-filter) expression")
    s.set_defaults(func=cmd_capture)

    s = sub.add_parser("validate", help="check a topology file; every error as FILE:LINE:COL")
    s.add_argument("file")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the topology JSON schema (for editors)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("graph", help="draw the topology with Graphviz")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True, help="out.svg, out.png or out.dot")
    s.set_defaults(func=cmd_graph)

    s = sub.add_parser("check", help="run a topology's scenarios against its running lab")
    s.add_argument("file")
    s.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    s.add_argument("-l", "--lab", type=paths.lab_arg, help="the running lab (default: the file's name)")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds each check may poll (default {DEFAULT_TIMEOUT:g})")
    s.add_argument("--json", action="store_true")
    s.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    s.add_argument("--html", metavar="FILE", help="also write one HTML page: the lab's picture, each scenario's "
                   "steps, matrices as coloured tables, failed steps' diagnostics folded")
    s.add_argument("--repeat", type=_runs, default=1, metavar="N",
                   help="run the scenarios N times on the lab; report each one's pass rate, its failures by "
                        "run, the slowest step and the slowest convergence (flakes)")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("pod", help="add or delete a pod through the node's CNI config")
    psub = s.add_subparsers(dest="pod_command", required=True, metavar="{add,del}")
    for verb in ("add", "del"):
        ps = psub.add_parser(verb, help=f"{verb} POD on NODE (CNI {verb.upper()}, as a container runtime)")
        ps.add_argument("node", type=paths.name_arg("machine"))
        ps.add_argument("pod", type=paths.name_arg("pod"))
        ps.add_argument("-l", "--lab", type=paths.lab_arg, help="the lab (default: the only running one)")
        if verb == "add":
            ps.add_argument("--label", action="append", metavar="K=V", type=_label, help="pod label (repeatable)")
            ps.add_argument("--ip", type=_ipv4, help="the pod's address, from the pool (default: the next free one)")
            ps.add_argument("--ip6", type=_ipv6, help="its IPv6 address, from the IPv6 pool of a dual-stack cluster")
        ps.set_defaults(func=cmd_pod)

    s = sub.add_parser("bgp", help="BGP state of a node's agent")
    bsub = s.add_subparsers(dest="bgp_command", required=True, metavar="{status}")
    bs = bsub.add_parser("status", help="peers as `calicoctl node status` prints them")
    bs.add_argument("node", type=paths.name_arg("machine"))
    bs.add_argument("-l", "--lab", type=paths.lab_arg)
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=cmd_bgp_status)

    s = sub.add_parser("routes", help="a node's routes, parsed from `ip -j route`")
    s.add_argument("node", type=paths.name_arg("machine"))
    s.add_argument("-l", "--lab", type=paths.lab_arg)
    s.add_argument("--table", default="main", help="main (default), all, or a number")
    s.add_argument("-6", "--ipv6", action="store_true", help="the IPv6 table (ip -6 route)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_routes)

    for register in EXTRA:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # capture's filter may come after its options, as tcpdump's does
        if getattr(args, "func", None) is not cmd_capture or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.filter = [*args.filter, *extra]
    try:
        return int(args.func(args) or 0)
    except BadInput as exc:
        # Topology diagnostics stay FILE:LINE:COL: ... at the start of each line, for editors.
        print(str(exc) if hasattr(exc, "diagnostics") else f"labnet: {exc}", file=sys.stderr)
        return 2
    except LabnetError as exc:
        print(f"labnet: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"labnet: interrupted ({exc}); rolled back", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
