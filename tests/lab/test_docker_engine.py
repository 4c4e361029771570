"""labnet's dockerd went away under a running docker lab.

A module of its own: it stops the engine, which would take down any other lab's containers
(the module-scoped labs of test_docker_lab.py are gone by the time this runs).
"""

from __future__ import annotations

import pytest
from _dockertools import containers_of, labnet_dockerd, seed_underlay  # noqa: F401
from _labtools import labnet, snapshot

from labnet.nsexec import proc_starttime
from labnet.runtime import dockerd


def _up_docker(underlay_file: str, name: str) -> None:
    labnet("up", underlay_file, "--name", name, "--runtime", "docker", "-q")
    assert len(containers_of(name)) == 7, containers_of(name)


@pytest.mark.usefixtures("labnet_dockerd")
def test_down_after_dockerd_died(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The engine went away under a running lab: `down` starts it to remove the containers, then stops it."""
    name = "t-dk-nodockerd"
    underlay_file = seed_underlay(str(tmp_path / "seed-underlay.yaml"))
    before = snapshot(name)
    others = [c for c in containers_of("") if not c.startswith(f"lnet-{name}.")] if dockerd.ping() else []
    if others:
        pytest.fail(f"other labnet containers are running ({others}); this test stops the engine under them")
    _up_docker(underlay_file, name)
    try:
        pid = dockerd.running_pid()
        assert pid is not None
        dockerd.stop_dockerd(dockerd.DockerdHandle(pid, proc_starttime(pid), dockerd.SOCKET, False))
        labnet("down", "--name", name)
        assert dockerd.running_pid() is None, "a dockerd started only for `down` must be stopped again"
        stopped = [p.name for p in (dockerd.data_root() / "containers").iterdir()]
        left = snapshot(name).leftovers(before)
        assert not left, f"lab {name}: left after down without a running dockerd: {left}"
        dockerd.ensure_dockerd()  # back to the session's engine for the tests after this one
        assert not containers_of(name), f"containers kept in dockerd's data root: {stopped}"
    finally:
        dockerd.ensure_dockerd()
        labnet("down", "--name", name, check=False)


@pytest.mark.usefixtures("labnet_dockerd")
def test_the_last_docker_labs_down_stops_labnet_dockerd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """labnet's own dockerd runs while a docker lab needs it: status says so, and the last docker
    lab's `down` stops it (a netns lab's `down` leaves it alone while a docker lab is up)."""
    name, other = "t-dk-last", "t-dk-netns"
    underlay_file = seed_underlay(str(tmp_path / "seed-underlay.yaml"))
    others = [c for c in containers_of("") if not c.startswith(f"lnet-{name}.")] if dockerd.ping() else []
    if others:
        pytest.fail(f"other labnet containers are running ({others}); this test stops the engine under them")
    _up_docker(underlay_file, name)
    try:
        status = labnet("status").stdout
        assert "labnet's dockerd: running (pid" in status, status
        labnet("up", underlay_file, "--name", other, "-q")
        labnet("down", "--name", other)
        assert dockerd.running_pid() is not None, "a netns lab's down stopped the dockerd a docker lab uses"
        labnet("down", "--name", name)
        assert dockerd.running_pid() is None, "labnet's dockerd still runs after the last docker lab went"
        assert "labnet's dockerd" not in labnet("status").stdout
    finally:
        labnet("down", "--name", other, check=False)
        labnet("down", "--name", name, check=False)
        dockerd.ensure_dockerd()  # back to the session's engine for the tests after this one
