"""Shared by the docker lab tests: labnet's dockerd for the session, and what a lab leaves in docker.

`labnet_dockerd` starts labnet's own dockerd (no bridge, no iptables, its own socket) unless one
is running, and stops it at the end of the session only if it started it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import yaml
from _labtools import TOPOLOGIES

from labnet.nsexec import proc_starttime
from labnet.runtime import dockerd
from labnet.runtime.docker import lab_containers
from labnet.runtime.image import images_dir


@pytest.fixture(scope="session")
def labnet_dockerd() -> Iterator[dockerd.DockerdHandle]:
    if os.geteuid() != 0:
        pytest.skip("the docker runtime needs root")
    if shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip("dockerd is missing: `apt-get install docker.io` (make sysdeps does)")
    handle = dockerd.ensure_dockerd()
    try:
        yield handle
    finally:
        if handle.started:  # stop the labnet dockerd running now (a test may have restarted it)
            pid = dockerd.running_pid()
            if pid is not None:
                dockerd.stop_dockerd(dockerd.DockerdHandle(pid, proc_starttime(pid), dockerd.SOCKET, False))


def seed_underlay(path: str) -> str:
    """The seed lab's underlay: cluster nodes as plain hosts (no etcd, agents or pods)."""
    data = yaml.safe_load((TOPOLOGIES / "seed.yaml").read_text())
    cluster = data.pop("cluster")
    data.setdefault("hosts", {}).update(cluster["nodes"])
    data.pop("scenarios", None)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def containers_of(lab: str) -> list[str]:
    if not dockerd.ping():
        return []
    return sorted(c.name for c in lab_containers(dockerd.client(), lab))


def build_dirs() -> list[str]:
    d = images_dir()
    return sorted(p.name for p in d.glob("build-*")) if d.is_dir() else []
