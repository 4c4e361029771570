"""labnet's pytest plugin (entry point `pytest11`: installing labnet is enough).

Fixtures: `lab` (built once per session per topology, or attached with --labnet-attach),
`node`, `pod`, `pod_factory` (throw-away pods), `labhost` (testinfra hosts of nodes and pods).
`lab`, `node`, `pod` and `labhost` are session-scoped when the command line picks the lab
(--labnet-topology, --labnet-attach) and module-scoped when modules pick it with
`pytestmark = pytest.mark.topology("file.yaml")`, so fixtures of those scopes can use them.
testinfra's own `host` fixture knows labnet's hosts: `pytest --hosts=labnet://<lab>/<node>[/<pod>]`.
Topology files given to pytest are collected: each scenario is one test item, so
`pytest topologies/seed.yaml -k egress-nat` runs exactly that scenario.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from labnet.nsexec import NodeNS
from labnet.wait import DEFAULT_TIMEOUT

LAB_MARK = "lab"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("labnet")
    g.addoption("--labnet-topology", metavar="FILE", help="topology the `lab` fixture builds")
    g.addoption("--labnet-attach", metavar="NAME", help="use this running lab; never build or remove it")
    g.addoption("--labnet-keep-on-failure", action="store_true",
                help="keep labs when a test failed, and print how to inspect them")
    g.addoption("--labnet-runtime", choices=["netns", "docker"], help="override the topologies' runtime")
    g.addoption("--labnet-timeout", type=float, default=DEFAULT_TIMEOUT,
                help=f"seconds each check may poll (default {DEFAULT_TIMEOUT:g})")
    g.addoption("--labnet-repeat", type=int, default=1, metavar="N",
                help="run each topology scenario N times on its lab; a scenario fails unless all N pass, and "
                     "the summary gives each one's pass rate and slowest step (flakes)")
    g.addoption("--labnet-shell-on-failure", action="store_true",
                help="when a test fails, open a shell in its lab (on the machine it failed on) before the lab "
                     "is torn down; without a terminal, print the command instead and go on")
    g.addoption("--labnet-html", metavar="FILE",
                help="write one HTML page per lab of the topology scenarios run (FILE, or FILE with the lab's "
                     "name when several labs ran): the lab's picture, steps, matrices, folded diagnostics")
    g.addoption("--labnet-gates", action="store_true",
                help="fail a test using the `lab` fixture when, during it, a node's process restarted, a daemon "
                     "logged at ERROR or a traceback, or a route labnet owns flapped (allow with "
                     "@pytest.mark.labnet_tolerate('restart', 'errors', 'route-flaps')); scenarios always are")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root; builds real namespaces")
    config.addinivalue_line("markers", "topology(path, name=None): the topology file the lab fixture builds "
                            "(optionally under another lab name)")
    config.addinivalue_line("markers", "labnet_tolerate(*gates): what --labnet-gates allows this test to do "
                            "(restart, errors, route-flaps)")
    config.stash[_MANAGER] = LabManager(config)
    _register_testinfra()


def _register_testinfra() -> None:
    """Make `labnet://<lab>/<node>[/<pod>]` a testinfra backend for the whole session, so
    `pytest --hosts=labnet://seed/ubuntu-3` works with testinfra's own `host` fixture."""
    try:
        from labnet.testing.testinfra_backend import register
    except ImportError:  # testinfra is not installed: the labhost fixture says so when used
        return
    register()


def lab_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("LABNET_REQUIRE_LAB") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(LAB_MARK) is not None and os.geteuid() != 0:
        pytest.skip("lab test: needs root to create network namespaces (run as root, or under CI)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.skipped and item.get_closest_marker(LAB_MARK) is not None and lab_required():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"lab test skipped, which is a failure when CI=true or LABNET_REQUIRE_LAB=1: {reason}"
    manager: LabManager = item.config.stash[_MANAGER]
    if rep.failed:
        manager.failed = True
        if call.when == "call":
            view = _view_of(item)
            if view is not None and item.config.getoption("--labnet-shell-on-failure"):
                try:
                    said = _shell_on_failure(item, view, call.excinfo.value if call.excinfo else None)
                except Exception as exc:  # the report matters more than the shell
                    said = f"could not open a shell: {exc}"
                rep.sections.append(("labnet shell", said))
            if view is not None:
                from labnet.diagnose.bundle import lab_bundle

                try:
                    rep.sections.append((f"labnet diagnostics ({view.name})", lab_bundle(view)))
                except Exception as exc:
                    rep.sections.append(("labnet diagnostics", f"could not collect: {exc}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """--labnet-gates: what the test did to its lab that it did not declare fails it."""
    view = _view_of(item) if item.config.getoption("labnet_gates") and not isinstance(item, ScenarioItem) else None
    watch = None
    handle: LabHandle | None = getattr(item, "funcargs", {}).get("lab")
    if view is not None and handle is not None:
        from labnet.scenario.gates import Gates

        watch = Gates(view)
        handle.tolerated = set()
    outcome = yield
    if watch is None or handle is None:
        return
    try:
        if outcome.excinfo is None:  # type: ignore[attr-defined]
            from labnet.checks import CheckFailed
            from labnet.scenario.run import gate_result

            mark = item.get_closest_marker("labnet_tolerate")
            seen = watch.violations({*(mark.args if mark is not None else ()), *handle.tolerated})
            if seen:
                outcome.force_exception(CheckFailed(gate_result(view.name, seen)))  # type: ignore[attr-defined,union-attr]
    finally:
        watch.close()


def _view_of(item: pytest.Item) -> Any:
    if isinstance(item, ScenarioItem):
        return item.handle.view if item.handle is not None else None
    handle = getattr(item, "funcargs", {}).get("lab")
    return handle.view if isinstance(handle, LabHandle) else None


def _write_html(config: pytest.Config) -> list[str]:
    target = config.getoption("--labnet-html")
    done = config.stash[_MANAGER].scenario_results
    if not target or not done:
        return []
    from labnet.scenario import html

    written = []
    for lab, (topo, scenarios) in done.items():
        path = Path(target) if len(done) == 1 else Path(target).with_name(f"{Path(target).stem}-{lab}.html")
        written.append(str(html.write(path, lab, topo, scenarios, [t for t in config.stash[_MANAGER].tallies
                                                                       if t.scenario in scenarios])))
    return written


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for path in _write_html(config):
        terminalreporter.write_line(f"labnet: report {path}")
    tallies = config.stash[_MANAGER].tallies
    if tallies:
        from labnet.scenario.repeat import format_tallies

        terminalreporter.section(f"labnet: scenarios x{config.getoption('--labnet-repeat')}")
        terminalreporter.write_line(format_tallies(tallies))


def _shell_on_failure(item: pytest.Item, view: Any, exc: BaseException | None) -> str:
    """Open a shell into the failing lab, on the machine the failure names (or its first node),
    when there is a terminal to type into; otherwise say how to open one. Never waits on a pipe."""
    import subprocess
    import sys

    target = getattr(getattr(exc, "result", None), "target", "") or ""
    machines = list(view.journal.info.get("machines", {}))
    pods = view.journal.info.get("pods", {})
    where = next((t for t in target.replace(",", " ").split() if t in machines or t in pods),
                 next(iter(view.topo.nodes), machines[0] if machines else ""))
    if where in pods:
        where = f"{pods[where]['node']}/{where}"
    argv = [sys.executable, "-m", "labnet.cli", "exec", "-l", view.name, where, "--", "sh"]
    command = f"labnet exec -l {view.name} {where} -- sh"
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:  # pytest's capture holds fd 0 too: whether it is a terminal shows once let go
        capman.suspend_global_capture(in_=True)
    try:
        if not os.isatty(0):  # a pipe, a file, CI: nobody would type into it
            return f"no terminal: to open a shell in the failing lab yourself: {command}"
        sys.stdout.write(f"\nlabnet: {item.nodeid} failed; a shell in lab {view.name} on {where} (exit to go on)\n")
        sys.stdout.flush()
        subprocess.call(argv, env={**os.environ, "PS1": f"[{view.name} {where}]# "})
    finally:
        if capman is not None:
            capman.resume_global_capture()
    return f"a shell was opened in lab {view.name} on {where} ({command})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Runs on normal ends, failures and Ctrl-C alike.
    session.config.stash[_MANAGER].finish()


# -- labs -----------------------------------------------------------------------------
class LabHandle:
    """A lab the session uses: its view plus helpers for nodes, pods and testinfra hosts."""

    def __init__(self, name: str, built: bool) -> None:
        from labnet.lab.view import LabView

        self.name = name
        self.built = built
        self.view = LabView(name)
        self.tolerated: set[str] = set()  # gates the current test's scenarios declared (--labnet-gates)

    def node(self, name: str) -> NodeNS:
        return self.view.ns(name)

    def pod(self, name: str) -> NodeNS:
        return self.view.pod_ns(name)

    def address(self, name: str) -> str:
        return self.view.address(name)

    def host(self, target: str) -> Any:
        from labnet.testing.testinfra_backend import get_host

        return get_host(f"labnet://{self.name}/{target}")

    def connect(self, src: str, dst: str, expect: str = "reach", *, proto: str = "icmp", port: int = 8080,
                count: int = 100, interval: float = 0.02, duration: float | None = None, mtu: int | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The `connect` step: one probe from src to dst (pods, machines, an address), e.g.
        `lab.connect("pod-1", "ext", "snat node-1", proto="tcp")`, `expect="loss <= 30%"`, or
        `mtu=1480`. Returns its CheckResult; raises CheckFailed (an AssertionError)."""
        from labnet.scenario.run import run_step

        args = {"from": src, "to": dst, "expect": expect, "proto": proto, "port": port, "count": count,
                "interval": interval, "duration": duration, "mtu": mtu}
        return run_step(self.view, "connect", args, timeout)[0]

    def reachability(self, expect: dict[str, dict[str, str]], *, proto: str = "icmp", port: int = 8080,
                     timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The `reachability` step: {from: {to: expectation}}, all probed at once; on failure the
        whole table with the wrong cells marked."""
        from labnet.scenario.run import run_step

        return run_step(self.view, "reachability", {"expect": expect, "proto": proto, "port": port}, timeout)[0]

    def run_scenario(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        from labnet.scenario.run import run_steps, tolerated

        steps = self.view.topo.scenarios[name]
        self.tolerated |= tolerated(steps)  # what its faults declare holds for the test's gates too
        return run_steps(self.view, steps, timeout)


class LabManager:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.labs: dict[str, LabHandle] = {}
        self.failed = False
        self.tallies: list[Any] = []  # --labnet-repeat: each scenario's runs
        self.scenario_results: dict[str, tuple[Any, dict[str, list[Any]]]] = {}  # lab -> (topology, results)

    def worker_suffix(self) -> str:
        wid = getattr(self.config, "workerinput", {}).get("workerid")
        return f"-{wid}" if wid else ""

    def get(self, topology: str | None, name: str | None = None) -> LabHandle:
        attach = self.config.getoption("--labnet-attach")
        if attach:
            if attach not in self.labs:
                self.labs[attach] = LabHandle(attach, built=False)
            return self.labs[attach]
        if topology is None:
            raise pytest.UsageError("the `lab` fixture needs a topology: --labnet-topology FILE, "
                                    "@pytest.mark.topology('file.yaml') or --labnet-attach NAME")
        key = f"{Path(topology).resolve()}#{name or ''}"
        if key not in self.labs:
            self.labs[key] = self._build(str(Path(topology).resolve()), name)
        return self.labs[key]

    def _build(self, path: str, name: str | None) -> LabHandle:
        from labnet.lab import lifecycle, progress
        from labnet.topology import load

        topo = load(path)
        name = name or topo.name
        suffix = self.worker_suffix()
        if suffix:
            name = name[: 20 - len(suffix)] + suffix
        topo = topo.model_copy(update={"name": name})
        _journal, _timings, changed = lifecycle.up(topo, path, runtime=self.config.getoption("--labnet-runtime"),
                                             progress=progress.Progress(topo.name, quiet=True))
        # A lab that was already running (say, from `make up`) is used, never removed.
        return LabHandle(topo.name, built=changed)

    def finish(self) -> None:
        from labnet.lab import lifecycle
        keep = self.failed and self.config.getoption("--labnet-keep-on-failure")
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        for handle in self.labs.values():
            if not handle.built:
                continue
            if keep:
                if tr is not None:
                    tr.write_line(f"labnet: kept lab {handle.name} after a failure. Inspect it with:\n"
                                  f"  labnet status -l {handle.name}\n"
                                  f"  labnet exec -l {handle.name} <node> -- ip route\n"
                                  f"  labnet down --name {handle.name}")
                continue
            lifecycle.down(handle.name)
        self.labs.clear()


_MANAGER = pytest.StashKey[LabManager]()


def _marker_topology(node: pytest.Item | pytest.Collector, config: pytest.Config) -> tuple[str, str | None] | None:
    """(path, lab name) from the closest @pytest.mark.topology("file.yaml"[, name="lab-name"])."""
    marker = node.get_closest_marker("topology")
    if marker is None:
        return None
    path = Path(marker.args[0])
    if not path.is_absolute():
        path = Path(node.path).parent / path
        if not path.exists():
            path = Path(config.rootpath) / marker.args[0]
    return str(path.resolve()), marker.kwargs.get("name")


def _session_wide_lab(config: pytest.Config) -> bool:
    return bool(config.getoption("--labnet-attach") or config.getoption("--labnet-topology"))


def _lab_scope(fixture_name: str, config: pytest.Config) -> Literal["session", "module"]:
    """`lab` (and node, pod, labhost) are session-scoped when the command line picks the lab
    (--labnet-attach, --labnet-topology), so a user's session fixture can use them; otherwise
    module-scoped, as each module may pick its own with `pytestmark = pytest.mark.topology(...)`.
    Either way the LabManager builds a topology's lab once per session."""
    return "session" if _session_wide_lab(config) else "module"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A topology marker the lab fixture's scope cannot honour is an error, not a silent wrong lab."""
    if config.getoption("--labnet-attach"):
        return  # an attached lab serves every test, whatever its marker says (documented)
    opt = config.getoption("--labnet-topology")
    for item in items:
        if "lab" not in getattr(item, "fixturenames", ()):
            continue
        mine = _marker_topology(item, config)
        if mine is None:
            continue
        module = item.getparent(pytest.Module)
        if opt and mine[0] != str(Path(opt).resolve()):
            raise pytest.UsageError(
                f"{item.nodeid}: marked topology({mine[0]}) but --labnet-topology {opt} makes the `lab` "
                "fixture one lab for the whole session; drop one of them")
        if not opt and module is not None and _marker_topology(module, config) != mine:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.topology on a class or function; the `lab` fixture is "
                "module-scoped, so mark the module (pytestmark = pytest.mark.topology(...))")


@pytest.fixture(scope=_lab_scope)
def lab(request: pytest.FixtureRequest) -> LabHandle:
    """The lab for this module's topology (or the session's); built once per session, removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("the lab fixture needs root to create namespaces")
    picked = _marker_topology(request.node, request.config) if request.scope != "session" else None
    path, name = picked or (request.config.getoption("--labnet-topology"), None)
    return request.config.stash[_MANAGER].get(path, name)


@pytest.fixture(scope=_lab_scope)
def node(lab: LabHandle) -> Callable[[str], NodeNS]:
    """node('ubuntu-3') -> NodeNS to run commands in that node."""
    return lab.node


@pytest.fixture(scope=_lab_scope)
def pod(lab: LabHandle) -> Callable[[str], NodeNS]:
    """pod('net-test') -> NodeNS to run commands in that pod."""
    return lab.pod


@pytest.fixture(scope=_lab_scope)
def labhost(lab: LabHandle) -> Callable[[str], Any]:
    """labhost('ubuntu-3') or labhost('ubuntu-3/net-test') -> a testinfra Host with that view."""
    return lab.host


@pytest.fixture
def pod_factory(lab: LabHandle) -> Iterator[Callable[..., dict[str, Any]]]:
    """pod_factory('ubuntu-3', 'tmp-1') adds a throw-away pod (through CNI); removed after the test."""
    from labnet.lab import pods

    made: list[tuple[str, str]] = []

    def make(node_name: str, pod_name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        rec = pods.add(lab.name, node_name, pod_name, labels=labels)
        made.append((node_name, pod_name))
        lab.view.journal = type(lab.view.journal).load(lab.view.journal.path)
        return rec

    yield make
    for node_name, pod_name in reversed(made):
        pods.remove(lab.name, node_name, pod_name)
    lab.view.journal = type(lab.view.journal).load(lab.view.journal.path)


# -- YAML scenarios -----------------------------------------------------------------------
_TOPOLOGY_HINT = re.compile(r"^(networks|scenarios):", re.M)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and not file_path.name.startswith("."):
        try:
            text = file_path.read_text()
        except OSError:
            return None
        if len(_TOPOLOGY_HINT.findall(text)) >= 2:
            return TopologyFile.from_parent(parent, path=file_path)
    return None


class TopologyFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from labnet.topology import load

        topo = load(str(self.path))
        for name in topo.scenarios:
            item = ScenarioItem.from_parent(self, name=name, topo_name=topo.name)
            item.add_marker(pytest.mark.lab)
            item.extra_keyword_matches.add(topo.name)
            yield item


class ScenarioItem(pytest.Item):
    def __init__(self, *, topo_name: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.topo_name = topo_name
        self.handle: LabHandle | None = None

    def runtest(self) -> None:
        from labnet.checks import format_results
        from labnet.scenario.run import run_steps

        manager: LabManager = self.config.stash[_MANAGER]
        self.handle = manager.get(str(self.path))
        timeout = self.config.getoption("--labnet-timeout")
        view, steps = self.handle.view, self.handle.view.topo.scenarios[self.name]
        runs = max(1, int(self.config.getoption("--labnet-repeat")))
        if runs == 1:
            results = run_steps(view, steps, timeout, collect=bool(self.config.getoption("--labnet-html")))
            manager.scenario_results.setdefault(view.name, (view.topo, {}))[1][self.name] = results
            # What each step saw (convergence times included): shown with -rP, or on failure.
            self.add_report_section("call", "labnet", format_results(results))
            failed = [r for r in results if not r.ok]
            if failed:  # collected for the page: the first failure fails the test, as without it
                from labnet.checks import CheckFailed

                raise CheckFailed(failed[0])
            return
        from labnet.checks import CheckFailed, CheckResult
        from labnet.scenario.repeat import format_tallies, repeat

        last: list[CheckResult] = []

        def run_one(_n: str) -> list[CheckResult]:
            last[:] = run_steps(view, steps, timeout, collect=True)
            return list(last)

        (tally,), _ = repeat([self.name], runs, run_one)
        manager.tallies.append(tally)
        manager.scenario_results.setdefault(view.name, (view.topo, {}))[1][self.name] = list(last)
        self.add_report_section("call", "labnet", format_tallies([tally]))
        if tally.passed < tally.runs:
            text = format_tallies([tally])
            raise CheckFailed(CheckResult(False, f"scenario {self.name} x{runs}", view.name,
                                          f"passed {tally.passed}/{tally.runs} runs", 0.0, message=text))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from labnet.errors import LabnetError

        if isinstance(excinfo.value, LabnetError | AssertionError):
            return f"scenario {self.name} of lab {self.topo_name}:\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario: {self.name} ({self.topo_name})"
