"""Issue 6: the pytest plugin, exercised through pytester in real pytest subprocesses."""

from __future__ import annotations

import json
import signal
import textwrap

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


def _write(pytester: pytest.Pytester, name: str) -> str:
    path = pytester.path / f"{name}.yaml"
    path.write_text(UNDERLAY.format(name=name))
    return str(path)


def test_k_selects_one_scenario(pytester: pytest.Pytester) -> None:
    name = "t-plug-k"
    before = snapshot(name)
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(f, "-k", "reach-ext", "-v")
    res.assert_outcomes(passed=1, deselected=2)
    res.stdout.fnmatch_lines(["*reach-ext PASSED*"])
    assert not snapshot(name).leftovers(before), "the session's lab was not removed"


def test_topology_name_is_a_keyword(pytester: pytest.Pytester) -> None:
    name = "t-plug-kw"
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(f, "-k", f"{name} and reach-", "--collect-only", "-q")
    res.stdout.fnmatch_lines(["*reach-ext*", "*reach-peer*"])
    assert "must-not-reach" not in res.stdout.str()


def test_failing_scenario_reads_well_and_carries_diagnostics(pytester: pytest.Pytester) -> None:
    name = "t-plug-fail"
    before = snapshot(name)
    f = _write(pytester, name)
    res = pytester.runpytest_subprocess(f, "-k", "must-not-reach", "--labnet-timeout", "1")
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
    res = pytester.runpytest_subprocess("test_user.py", "-v")
    res.assert_outcomes(passed=3)
    assert not snapshot(name).leftovers(before)


def test_attach_reuses_a_running_lab_and_leaves_it(pytester: pytest.Pytester) -> None:
    name = "t-plug-att"
    before = snapshot(name)
    f = _write(pytester, name)
    labnet("up", f, "-q")
    try:
        res = pytester.runpytest_subprocess(f, "--labnet-attach", name, "-k", "reach-peer")
        res.assert_outcomes(passed=1, deselected=2)
        rows = json.loads(labnet("status", "-l", name, "--json").stdout)
        assert rows and rows[0]["state"] == "up", "an attached lab must be left running"
    finally:
        labnet("down", "--name", name)
    assert not snapshot(name).leftovers(before)


def test_keep_on_failure_keeps_the_lab_and_says_how_to_inspect(pytester: pytest.Pytester) -> None:
    name = "t-plug-keep"
    before = snapshot(name)
    f = _write(pytester, name)
    try:
        res = pytester.runpytest_subprocess(f, "-k", "must-not-reach", "--labnet-timeout", "1",
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
    proc = pytester.popen([*pytester._getpytestargs(), "test_slow.py"], stdin=None)
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
    res = pytester.runpytest_subprocess("test_two.py", "-n", "2", "-p", "xdist")
    res.assert_outcomes(passed=2)
    used = {(pytester.path / f"used-{n}").read_text() for n in (1, 2)}
    assert used == {f"{name}-gw0", f"{name}-gw1"}, f"labs used by the workers: {used}"
    for w, before in befores.items():
        assert not snapshot(f"{name}-gw{w}").leftovers(before)
