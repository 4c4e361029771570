"""The full seed lab (etcd with TLS, CNI, BGP agents, pods) with nodes as containers.

The same file and the same `labnet check` as on netns; the node's daemons are processes inside
the containers (their mount namespace: the image's etcd and python3), stopped by `down`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _dockertools import containers_of, labnet_dockerd  # noqa: F401
from _labtools import TOPOLOGIES, lab_exec, lab_pids, labnet, snapshot

from labnet.lab.view import LabView
from labnet.runtime import dockerd
from labnet.runtime.docker import container_name

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
        _node_container_holds_cni_pods_and_agent(name)
    finally:
        labnet("down", "--name", name, check=False)
    assert not containers_of(name), f"containers left: {containers_of(name)}"
    left = snapshot(name, pids).leftovers(before)
    assert not left, f"docker seed lab left: {left}"


def _node_container_holds_cni_pods_and_agent(name: str) -> None:
    """Seen through docker itself (`docker exec`), not labnet: ubuntu-3's container has the CNI
    plugin and conflist, net-test's network namespace, and the agent runs in its mount namespace."""
    c = dockerd.client().containers.get(container_name(name, "ubuntu-3"))

    def dexec(*cmd: str) -> str:
        code, out = c.exec_run(list(cmd))
        text = out.decode(errors="replace")
        assert code == 0, f"ubuntu-3 container: docker exec {' '.join(cmd)} exited {code}: {text}"
        return text

    for path, test in (("/opt/cni/bin/labnet", "-x"), ("/etc/cni/net.d/10-labnet.conflist", "-s")):
        code, out = c.exec_run(["test", test, path])
        assert code == 0, f"ubuntu-3 container: expected {path} (test {test}), docker exec says exit {code} {out!r}"
    conflist = json.loads(dexec("cat", "/etc/cni/net.d/10-labnet.conflist"))
    assert [p["type"] for p in conflist["plugins"]][:1] == ["labnet"], f"ubuntu-3 conflist plugins: {conflist}"
    view = LabView(name)
    netns = view.pod("net-test")["netns"].rsplit("/", 1)[-1]
    listed = [line.split()[0] for line in dexec("ip", "netns", "list").splitlines() if line.strip()]
    assert netns in listed, f"ubuntu-3 container: `ip netns list` {listed} lacks net-test's netns {netns}"
    pod_addr = json.loads(dexec("ip", "-n", netns, "-j", "addr", "show", "eth0"))[0]["addr_info"]
    assert view.address("net-test") in [a["local"] for a in pod_addr], \
        f"ubuntu-3 container: net-test eth0 in {netns}: {pod_addr}, expected {view.address('net-test')}"
    st = view.agent_status("ubuntu-3")
    mnt = os.readlink(f"/proc/{c.attrs['State']['Pid']}/ns/mnt")
    for what, pid in (("agent", st["pid"]), ("agent supervisor", st["supervisor_pid"])):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode()
        assert "labnet.agent.main" in cmd, f"ubuntu-3: {what} pid {pid} runs {cmd!r}, expected labnet.agent.main"
        got = os.readlink(f"/proc/{pid}/ns/mnt")
        assert got == mnt, f"ubuntu-3: {what} pid {pid} in mount namespace {got}, container's is {mnt}"
    # and the container itself sees it, under its number in the container's own PID namespace
    nspid = next(line.split()[1:] for line in Path(f"/proc/{st['pid']}/status").read_text().splitlines()
                 if line.startswith("NSpid:"))
    assert len(nspid) == 2, f"ubuntu-3: agent pid {st['pid']} NSpid {nspid}: expected the host's and the container's"
    assert "labnet.agent.main" in dexec("cat", f"/proc/{nspid[-1]}/cmdline").replace("\0", " ")
