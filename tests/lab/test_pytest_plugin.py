"""The pytest plugin, exercised through pytester in real pytest subprocesses."""

from __future__ import annotations

import json
import re
import signal
import textwrap
import xml.etree.ElementTree as ET

import pytest
from _labtools import labnet, snapshot

from labnet.wait import poll

UNDERLAY = """\
name: {name}
networks:
  lan-a: {{cidr: 10.61.0.0/24}}
  wan: {{cidr: 203.0.113.0/24}}
routers:
  gw: {{interfaces: [{{network: lan-a, address: 10.61.0.1}}, {{network: wan, address: 203.0.113.1}}]}}
hosts:
  ext: {{interfaces: [{{network: wan, address: 203.0.113.10}}], gateway: 203.0.113.1}}
  h1: {{interfaces: [{{name: ens32, network: lan-a, address: 10.61.0.11}}], gateway: 10.61.0.1}}
  h2: {{interfaces: [{{name: ens32, network: lan-a, address: 10.61.0.12}}], gateway: 10.61.0.1}}
scenarios:
  reach-ext: [{{ping: {{from: h1, to: 203.0.113.10, count: 1}}}}]
  reach-peer: [{{ping: {{from: h1, to: h2, count: 1}}}}]
  must-not-reach: [{{ping: {{from: h1, to: h2, count: 1, expect: fail}}}}]
"""


# Every run uses --strict-markers: pytester's directory has no pyproject, so `lab` and `topology`
# must be registered by the plugin itself.
STRICT = "--strict-markers"


def _write(pytester: pytest.Pytester, name: str) -> str:
    path = pytester.path / f"{name}.yaml"
    path.write_text(UNDERLAY.format(name=name))
    return str(path)


def test_k_selects_one_scenario(pytester: pytest.Pytester) -> None:
    name = "t-plug-k"
    before = snapshot(name)
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(STRICT, f, "-k", "reach-ext", "-v")
    res.assert_outcomes(passed=1, deselected=2)
    res.stdout.fnmatch_lines(["*reach-ext PASSED*"])
    assert not snapshot(name).leftovers(before), "the session's lab was not removed"


def test_topology_name_is_a_keyword(pytester: pytest.Pytester) -> None:
    name = "t-plug-kw"
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(STRICT, f, "-k", f"{name} and reach-", "--collect-only", "-q")
    res.stdout.fnmatch_lines(["*reach-ext*", "*reach-peer*"])
    assert "must-not-reach" not in res.stdout.str()


def test_failing_scenario_reads_well_and_carries_diagnostics(pytester: pytest.Pytester) -> None:
    name = "t-plug-fail"
    before = snapshot(name)
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(STRICT, f, "-k", "must-not-reach", "--labnet-timeout", "1")
    res.assert_outcomes(failed=1)
    out = res.stdout.str()
    assert "scenario must-not-reach of lab t-plug-fail" in out
    assert "no reply from h2 (10.61.0.12)" in out, out  # expected
    assert "reply" in out and "h1" in out  # the node and the actual outcome
    assert "labnet diagnostics (t-plug-fail)" in out, "no diagnostics bundle in the report"
    assert "routes (all tables)" in out
    assert not snapshot(name).leftovers(before)


def test_fixtures_and_testinfra_in_a_user_test_file(pytester: pytest.Pytester) -> None:
    name = "t-plug-fix"
    before = snapshot(name)
    _write(pytester, name)
    pytester.makepyfile(test_user=textwrap.dedent(f"""
        import pytest
        from labnet.checks import assert_ping, assert_route

        pytestmark = pytest.mark.topology("{name}.yaml")

        @pytest.fixture(scope="module")
        def h1_default_route(lab, node):
            # a user's module-scoped fixture on top of the plugin's (ScopeMismatch if `lab` were per test)
            return assert_route(node("h1"), {{"dst": "default", "gateway": "10.61.0.1"}})

        def test_module_scoped_user_fixture(h1_default_route, lab):
            assert h1_default_route.ok and h1_default_route.target == lab.node("h1").name

        def test_ping(lab, node):
            assert_ping(node("h1"), lab.address("h2"))

        def test_default_route(node):
            assert_route(node("h1"), {{"dst": "default", "gateway": "10.61.0.1", "dev": "ens32"}})

        def test_testinfra_view(labhost):
            h = labhost("h1")
            assert h.check_output("hostname") == "h1"
            assert "10.61.0.11" in h.interface("ens32").addresses
            assert h.sysctl("net.ipv4.ip_forward") == 0
            assert labhost("gw").sysctl("net.ipv4.ip_forward") == 1
    """))
    res = pytester.runpytest_subprocess(STRICT, "test_user.py", "-v")
    res.assert_outcomes(passed=4)
    assert not snapshot(name).leftovers(before)


def test_attach_reuses_a_running_lab_and_leaves_it(pytester: pytest.Pytester) -> None:
    name = "t-plug-att"
    before = snapshot(name)
    f = _write(pytester, name)
    labnet("up", f, "-q")
    try:
        res = pytester.runpytest_subprocess(STRICT, f, "--labnet-attach", name, "-k", "reach-peer")
        res.assert_outcomes(passed=1, deselected=2)
        rows = json.loads(labnet("status", "-l", name, "--json").stdout)
        assert rows and rows[0]["state"] == "up", "an attached lab must be left running"
        _session_fixture_with_labnet_topology(pytester, f, name)
        _labnet_check_of_a_failing_scenario(pytester, f, name)
    finally:
        labnet("down", "--name", name)
    assert not snapshot(name).leftovers(before)


def _session_fixture_with_labnet_topology(pytester: pytest.Pytester, f: str, name: str) -> None:
    """--labnet-topology makes `lab` session-wide: a user's session fixture can use it; the lab
    was running already (labnet up), so the session uses it and leaves it."""
    pytester.makepyfile(test_session=textwrap.dedent("""
        import pathlib, pytest
        from labnet.checks import assert_ping

        @pytest.fixture(scope="session")
        def h1(node):
            return node("h1")

        @pytest.mark.lab
        def test_session_scoped_user_fixture(h1, lab):
            assert_ping(h1, lab.address("h2"))
            pathlib.Path("used").write_text(f"{lab.name} built={lab.built}")
    """))
    res = pytester.runpytest_subprocess(STRICT, "test_session.py", "--labnet-topology", f)
    res.assert_outcomes(passed=1)
    used = (pytester.path / "used").read_text()
    assert used == f"{name} built=False", f"lab used by the --labnet-topology session: {used!r}"
    rows = json.loads(labnet("status", "-l", name, "--json").stdout)
    assert rows and rows[0]["state"] == "up", f"lab {name} was running before the session and must stay: {rows}"


def _labnet_check_of_a_failing_scenario(pytester: pytest.Pytester, f: str, name: str) -> None:
    """`labnet check FILE SCENARIO --junit X --json` on a scenario that fails: exit 1, both reports say why."""
    junit = pytester.path / "out" / "check.xml"
    res = labnet("check", f, "must-not-reach", "-l", name, "--json", "--junit", str(junit), "--timeout", "1",
                 check=False)
    assert res.returncode == 1, f"labnet check of a failing scenario exited {res.returncode}\n{res.stdout}{res.stderr}"
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["failed"] == 1 and doc["passed"] == 0, doc
    (r,) = doc["results"]
    assert r["ok"] is False and r["target"] == "h1", r
    assert r["name"] == "no ping h2 (10.61.0.12)", r
    assert r["detail"] == "expected no reply from h2 (10.61.0.12); actual 1/1 replies from h2 (10.61.0.12)", r
    assert re.search(r"\(waited \d+\.\ds, \d+ attempts?\)", r["message"]), r["message"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.attrib["failures"] == "1" and suite.attrib["tests"] == "1", \
        ET.tostring(ET.parse(junit).getroot(), encoding="unicode")
    (case,) = suite.findall("testcase")
    assert case.attrib["classname"] == f"labnet.{name}.h1" and case.attrib["name"] == r["name"], case.attrib
    fail = case.find("failure")
    assert fail is not None and fail.text is not None, f"no <failure> in {junit}"
    assert fail.attrib["message"] == r["detail"], fail.attrib
    for needle in ("check failed on h1", "expected: no reply from h2 (10.61.0.12)",
                   "actual:   1/1 replies from h2 (10.61.0.12)", "waited"):
        assert needle in fail.text, f"JUnit <failure> lacks {needle!r}:\n{fail.text}"


def test_keep_on_failure_keeps_the_lab_and_says_how_to_inspect(pytester: pytest.Pytester) -> None:
    name = "t-plug-keep"
    before = snapshot(name)
    f = _write(pytester, name)
    try:
        res = pytester.runpytest_subprocess(STRICT, f, "-k", "must-not-reach", "--labnet-timeout", "1",
                                            "--labnet-keep-on-failure")
        res.assert_outcomes(failed=1)
        res.stdout.fnmatch_lines([f"*kept lab {name}*", f"*labnet down --name {name}*"])
        assert snapshot(name).netns, "the lab should have been kept"
    finally:
        labnet("down", "--name", name, check=False)
    assert not snapshot(name).leftovers(before)


def test_ctrl_c_during_a_session_leaves_nothing(pytester: pytest.Pytester) -> None:
    name = "t-plug-int"
    before = snapshot(name)
    _write(pytester, name)
    pytester.makepyfile(test_slow=textwrap.dedent(f"""
        import pytest, pathlib, time
        pytestmark = pytest.mark.topology("{name}.yaml")

        def test_wait_for_interrupt(lab):
            pathlib.Path("lab-is-up").write_text(lab.name)
            while True:
                time.sleep(0.1)  # noqa: sleep (waits for the test's SIGINT)
    """))
    proc = pytester.popen([*pytester._getpytestargs(), STRICT, "test_slow.py"], stdin=None)
    try:
        poll(lambda: (pytester.path / "lab-is-up").exists(), timeout=120, what="the lab in the pytest session")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not snapshot(name).leftovers(before), "Ctrl-C left the lab behind"


def test_xdist_workers_build_their_own_labs(pytester: pytest.Pytester) -> None:
    name = "t-plug-xd"
    befores = {w: snapshot(f"{name}-gw{w}") for w in (0, 1)}
    _write(pytester, name)
    pytester.makepyfile(test_two=textwrap.dedent(f"""
        import pathlib, pytest
        from labnet.checks import assert_ping
        pytestmark = pytest.mark.topology("{name}.yaml")

        @pytest.mark.parametrize("n", [1, 2])
        def test_lab_per_worker(lab, node, n):
            assert_ping(node("h1"), lab.address("h2"))
            pathlib.Path(f"used-{{n}}").write_text(lab.name)
    """))
    res = pytester.runpytest_subprocess(STRICT, "test_two.py", "-n", "2", "-p", "xdist")
    res.assert_outcomes(passed=2)
    used = {(pytester.path / f"used-{n}").read_text() for n in (1, 2)}
    assert used == {f"{name}-gw0", f"{name}-gw1"}, f"labs used by the workers: {used}"
    for w, before in befores.items():
        assert not snapshot(f"{name}-gw{w}").leftovers(before)
