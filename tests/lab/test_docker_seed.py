"""Issue 7: the full seed lab (etcd with TLS, CNI, BGP agents, pods) with nodes as containers.

The same file and the same `labnet check` as on netns; the node's daemons are processes inside
the containers (their mount namespace: the image's etcd and python3), stopped by `down`.
"""

from __future__ import annotations

import json

import pytest
from _dockertools import containers_of, labnet_dockerd  # noqa: F401
from _labtools import TOPOLOGIES, lab_exec, lab_pids, labnet, snapshot

SEED = str(TOPOLOGIES / "seed.yaml")


@pytest.mark.usefixtures("labnet_dockerd")
def test_full_seed_on_docker_passes_its_checks() -> None:
    name = "t-dk-seed"
    before = snapshot(name)
    labnet("up", SEED, "--name", name, "--runtime", "docker", "-q", timeout=600)
    pids = lab_pids(name)
    try:
        assert pids, "no daemons recorded for the docker seed lab"
        out = labnet("check", SEED, "-l", name, check=False)
        assert out.returncode == 0, f"labnet check on the docker seed lab:\n{out.stdout}{out.stderr}"
        # etcd runs from the image (its mount namespace), not from the host's /usr/bin.
        rows = json.loads(labnet("status", "-l", name, "--json").stdout)
        etcd = [p for p in rows[0]["processes"] if p["what"] == "etcd"]
        assert etcd and etcd[0]["node"] == "ubuntu-1", rows[0]["processes"]
        with open(f"/proc/{etcd[0]['pid']}/mounts") as f:
            root = f.readline().split()
        assert root[1:3] == ["/", "overlay"], f"etcd's root is not the container's overlay rootfs: {root}"
        route = lab_exec(name, "ubuntu-3", "ip", "route").stdout
        assert "dev tunl0 proto bird onlink" in route, f"ubuntu-3 routes: {route}"
    finally:
        labnet("down", "--name", name, check=False)
    assert not containers_of(name), f"containers left: {containers_of(name)}"
    left = snapshot(name, pids).leftovers(before)
    assert not left, f"docker seed lab left: {left}"
