"""podman (Debian's 4.3, its CNI backend) drives labnet's plugin inside a node, as a real runtime
does: a container from a tiny image made here (busybox-static, no registry) gets a pool address
and pings a pod on another node; a container on two networks gets both, each reachable;
`podman rm` releases everything (addresses, host veths)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet import paths

LAB = "t-podman"
CONF = """[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin"]
network_config_dir = "/etc/cni/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""
STORAGE = """[storage]
driver = "vfs"
runroot = "/var/run/podman/storage"
graphroot = "/var/lib/labnet/podman/storage"
"""
ENV = ("env", "CONTAINERS_CONF=/var/lib/labnet/podman/containers.conf",
       "CONTAINERS_STORAGE_CONF=/var/lib/labnet/podman/storage.conf")


def _podman(*args: str, check: bool = True) -> str:
    return lab_exec(LAB, "node-1", *ENV, "podman", *args, check=check).stdout


def _handles() -> list[str]:
    rows = json.loads(labnet("etcd", "-l", LAB, "ls", "/labnet/calico/ipam/v2/handle/", "--json").stdout)
    return sorted(kv["key"].rsplit("/", 1)[1] for kv in rows)


def _cali() -> list[str]:
    return [x["ifname"] for x in json.loads(lab_exec(LAB, "node-1", "ip", "-j", "link").stdout)
            if x["ifname"].startswith("cali")]


def _node_files(tmp: Path) -> None:
    """podman's config, storage and the image, in node-1's own /var/lib/labnet; a second network."""
    base = paths.node_dir(LAB, "node-1")
    pm = base / "var-lib-labnet" / "podman"
    pm.mkdir(parents=True)
    (pm / "containers.conf").write_text(CONF)
    (pm / "storage.conf").write_text(STORAGE)
    root = tmp / "rootfs" / "bin"
    root.mkdir(parents=True)
    shutil.copy2("/usr/bin/busybox", root / "busybox")  # busybox-static: the whole userland in one file
    for cmd in ("sh", "ping", "ip", "sleep"):
        (root / cmd).symlink_to("busybox")
    # a dynamic busybox (the host's `busybox` package, not busybox-static) brings its libraries along
    ldd = subprocess.run(["ldd", "/usr/bin/busybox"], capture_output=True, text=True)
    for lib in {w for line in ldd.stdout.splitlines() for w in line.split() if w.startswith("/")}:
        dest = tmp / "rootfs" / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)
    subprocess.run(["tar", "-C", str(tmp / "rootfs"), "-cf", str(pm / "bb.tar"), "."], check=True)
    netd = base / "etc-cni-net.d"
    second = json.loads((netd / "10-labnet.conflist").read_text())
    second["name"] = "labnet-b"
    (netd / "20-labnet-b.conflist").write_text(json.dumps(second))


def test_podman_containers_get_pool_addresses_and_rm_releases_them(tmp_path: Path) -> None:
    for tool in ("podman", "busybox", "runc"):
        if shutil.which(tool, path="/usr/bin:/usr/sbin:/bin:/sbin") is None:
            pytest.fail(f"{tool} is missing: `make sysdeps` installs podman and busybox-static")
    before = snapshot(LAB)
    labnet("up", str(TOPOLOGIES / "minimal.yaml"), "--name", LAB, "-q")
    try:
        pods = json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["pods"]
        start_handles, start_cali = _handles(), _cali()
        _node_files(tmp_path)
        _podman("import", "/var/lib/labnet/podman/bb.tar", "localhost/labnet-bb:1")
        assert "k8s-pod-network" in _podman("network", "ls"), "podman should list labnet's network"
        _podman("run", "-d", "--name", "c1", "--network", "k8s-pod-network", "localhost/labnet-bb:1", "sleep", "600")
        addr = _podman("exec", "c1", "ip", "-4", "-o", "addr", "show", "eth0")
        assert " inet 10.100." in addr, f"c1's eth0: {addr!r}, expected an address from pool 10.100.0.0/16"
        ping = _podman("exec", "c1", "ping", "-c1", "-W3", str(pods["pod-2"]["ip"]), check=False)
        assert "1 packets received" in ping, f"c1 -> pod-2 on node-2 ({pods['pod-2']['ip']}): {ping}"
        _podman("run", "-d", "--name", "c2", "--network", "k8s-pod-network,labnet-b", "localhost/labnet-bb:1",
                "sleep", "600")
        ips = {}
        for line in _podman("exec", "c2", "ip", "-4", "-o", "addr").splitlines():
            words = line.split()
            if words[1] != "lo":
                ips[words[1]] = words[3].split("/")[0]
        assert sorted(ips) == ["eth0", "eth1"] and len(set(ips.values())) == 2, f"c2's addresses: {ips}"
        for ifname, ip in ips.items():
            out = lab_exec(LAB, "node-2/pod-2", "ping", "-c1", "-W3", ip, check=False).stdout
            assert " 0% packet loss" in out, f"pod-2 -> c2's {ifname} {ip}: {out}"
        assert len(_handles()) == len(start_handles) + 3, _handles()
        _podman("rm", "-f", "-t", "0", "c1", "c2")
        assert _handles() == start_handles, "podman rm should release both containers' addresses"
        assert _cali() == start_cali, f"host veths left after podman rm: {sorted(set(_cali()) - set(start_cali))}"
    finally:
        lab_exec(LAB, "node-1", *ENV, "podman", "rm", "-a", "-f", "-t", "0", check=False)
        labnet("down", "--name", LAB, check=False)
    left = snapshot(LAB).leftovers(before)
    assert not left, f"lab {LAB} left: {left}"
