"""The seed underlay with every machine a container, next to the same lab on netns.

The same topology file comes up on both runtimes; the tests that make sense on both are
parametrised by runtime. Containers are looked at through docker too (`docker exec`, labels,
testinfra's own docker:// backend), so they are real containers, not namespaces by another name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _dockertools import build_dirs, containers_of, labnet_dockerd, seed_underlay  # noqa: F401
from _labtools import lab_exec, labnet, snapshot

from labnet import paths
from labnet.runtime import dockerd
from labnet.runtime.docker import container_name

NODES = ("ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5")
MACHINES = {"gw", "ext", *NODES}


@dataclass(frozen=True)
class UpLab:
    name: str
    runtime: str


@pytest.fixture(scope="module")
def underlay_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return seed_underlay(str(tmp_path_factory.mktemp("docker") / "seed-underlay.yaml"))


@pytest.fixture(scope="module", params=["netns", "docker"])
def lab(request: pytest.FixtureRequest, underlay_file: str) -> Iterator[UpLab]:
    runtime = request.param
    if runtime == "docker":
        request.getfixturevalue("labnet_dockerd")
    name = f"t-dk-{runtime}"
    before = snapshot(name)
    labnet("up", underlay_file, "--name", name, "--runtime", runtime, "-q")
    try:
        yield UpLab(name, runtime)
    finally:
        labnet("down", "--name", name, check=False)
    left = snapshot(name).leftovers(before)
    assert not left, f"lab {name} ({runtime}) left things behind after down: {left}"
    assert not containers_of(name), f"lab {name}: containers left after down: {containers_of(name)}"


def test_underlay_reaches_across_the_router(lab: UpLab) -> None:
    out = lab_exec(lab.name, "ubuntu-3", "ping", "-c1", "-W2", "192.168.50.74").stdout
    assert "1 received" in out, f"[{lab.runtime}] ubuntu-3 -> ubuntu-4 (192.168.50.74) via gw: {out}"
    for node in NODES:
        res = lab_exec(lab.name, node, "ping", "-c1", "-W2", "203.0.113.10", check=False)
        assert res.returncode == 0, f"[{lab.runtime}] {node} cannot reach ext 203.0.113.10: {res.stdout}{res.stderr}"


def test_hostname_and_private_cni_dir(lab: UpLab) -> None:
    for m in ("ubuntu-3", "gw"):
        got = lab_exec(lab.name, m, "hostname").stdout.strip()
        assert got == m, f"[{lab.runtime}] {m}: hostname {got!r}"
    lab_exec(lab.name, "ubuntu-3", "sh", "-c", "echo mine > /etc/cni/net.d/99-probe.conf")
    try:
        got = lab_exec(lab.name, "ubuntu-3", "cat", "/etc/cni/net.d/99-probe.conf").stdout.strip()
        assert got == "mine"
        other = lab_exec(lab.name, "ubuntu-4", "ls", "/etc/cni/net.d").stdout
        assert "99-probe.conf" not in other, f"[{lab.runtime}] ubuntu-4 sees ubuntu-3's file: {other!r}"
        assert not os.path.exists("/etc/cni/net.d/99-probe.conf"), "the host sees a node's private file"
        on_host = paths.node_dir(lab.name, "ubuntu-3") / "etc-cni-net.d" / "99-probe.conf"
        assert on_host.read_text().strip() == "mine", f"[{lab.runtime}] host_path of /etc/cni/net.d: {on_host}"
    finally:
        lab_exec(lab.name, "ubuntu-3", "rm", "-f", "/etc/cni/net.d/99-probe.conf", check=False)


def test_exec_sees_the_machine(lab: UpLab) -> None:
    addrs = json.loads(lab_exec(lab.name, "ubuntu-4", "ip", "-j", "addr").stdout)
    by_name = {a["ifname"]: a for a in addrs}
    assert set(by_name) == {"lo", "ens32"}, f"[{lab.runtime}] ubuntu-4 interfaces: {sorted(by_name)}"
    got = [(a["family"], a["local"], a["prefixlen"]) for a in by_name["ens32"]["addr_info"]]
    assert got == [("inet", "192.168.50.74", 24)], f"[{lab.runtime}] ubuntu-4 ens32 addresses: {got}"
    fwd = {m: lab_exec(lab.name, m, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() for m in ("gw", "ext")}
    assert fwd == {"gw": "1", "ext": "0"}, f"[{lab.runtime}] ip_forward: {fwd}"
    # Namespaces processes need inside a node work there (CNI makes pods with `ip netns add`).
    res = lab_exec(lab.name, "ubuntu-3", "sh", "-c", "ip netns add probe && ip netns list && ip netns del probe")
    assert "probe" in res.stdout


@pytest.mark.parametrize("lab", ["docker"], indirect=True)
def test_machines_are_containers(lab: UpLab) -> None:
    client = dockerd.client()
    names = containers_of(lab.name)
    assert names == sorted(container_name(lab.name, m) for m in MACHINES), names
    c = client.containers.get(container_name(lab.name, "ubuntu-3"))
    hc = c.attrs["HostConfig"]
    assert c.status == "running"
    assert c.labels["labnet.lab"] == lab.name and c.labels["labnet.node"] == "ubuntu-3"
    assert hc["NetworkMode"] == "none" and not hc.get("Privileged")
    assert set(hc["CapAdd"]) == {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"}, hc["CapAdd"]
    # docker's own exec lands in the same machine labnet wired: same interface, same address.
    code, out = c.exec_run(["ip", "-j", "addr", "show", "ens32"])
    assert code == 0 and json.loads(out)[0]["addr_info"][0]["local"] == "10.20.30.73", out
    # The container's network namespace is the one labnet bound for the lab.
    pid = c.attrs["State"]["Pid"]
    bound = paths.NETNS_DIR / paths.netns_name(lab.name, "ubuntu-3")
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(bound).st_ino, "container netns != lab netns"


@pytest.mark.parametrize("lab", ["docker"], indirect=True)
def test_testinfra_docker_backend(lab: UpLab, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is missing (testinfra's docker backend runs `docker exec`)")
    import testinfra

    monkeypatch.setenv("DOCKER_HOST", dockerd.base_url())
    host = testinfra.get_host(f"docker://{container_name(lab.name, 'ubuntu-4')}")
    assert host.check_output("hostname") == "ubuntu-4"
    assert "192.168.50.74" in host.interface("ens32").addresses
    assert host.file("/etc/cni/net.d").is_directory
    assert host.run("ping -c1 -W2 203.0.113.10").rc == 0


@pytest.mark.parametrize("lab", ["docker"], indirect=True)
def test_testinfra_labnet_backend_on_containers(lab: UpLab) -> None:
    """labnet's own `labnet://lab/node` backend reaches into the container, as docker exec does."""
    from labnet.testing.testinfra_backend import get_host

    host = get_host(f"labnet://{lab.name}/ubuntu-4")
    assert host.check_output("hostname") == "ubuntu-4", "[docker] labnet://…/ubuntu-4: wrong hostname"
    assert host.interface("ens32").addresses[:1] == ["192.168.50.74"], \
        f"[docker] ubuntu-4 ens32 via labnet://: {host.interface('ens32').addresses}"
    assert host.file("/etc/cni/net.d").is_directory
    assert host.sysctl("net.ipv4.ip_forward") == 0, "[docker] ubuntu-4 (a plain host here) forwards"
    assert host.run("ping -c1 -W2 203.0.113.10").rc == 0, "[docker] ubuntu-4 -> ext 203.0.113.10 via labnet://"
    # the same mount namespace as the container's own processes (not the host's, not another node's)
    c = dockerd.client().containers.get(container_name(lab.name, "ubuntu-4"))
    want = os.readlink(f"/proc/{c.attrs['State']['Pid']}/ns/mnt")
    got = host.check_output("readlink /proc/self/ns/mnt")
    assert got == want, f"[docker] labnet://…/ubuntu-4 runs in mount namespace {got}, container's is {want}"
    # a file written through docker exec is what the backend reads
    code, out = c.exec_run(["sh", "-c", "echo via-docker > /etc/cni/net.d/98-probe"])
    assert code == 0, out
    try:
        assert host.file("/etc/cni/net.d/98-probe").content_string.strip() == "via-docker"
        assert not get_host(f"labnet://{lab.name}/ubuntu-3").file("/etc/cni/net.d/98-probe").exists, \
            "[docker] ubuntu-3 sees ubuntu-4's file through labnet://"
    finally:
        c.exec_run(["rm", "-f", "/etc/cni/net.d/98-probe"])


def _up_docker(underlay_file: str, name: str) -> None:
    labnet("up", underlay_file, "--name", name, "--runtime", "docker", "-q")
    assert len(containers_of(name)) == len(MACHINES)


@pytest.mark.usefixtures("labnet_dockerd")
def test_down_without_journal_finds_containers_by_label(underlay_file: str) -> None:
    name = "t-dk-nojournal"
    before = snapshot(name)
    _up_docker(underlay_file, name)
    (paths.lab_dir(name) / "journal.json").unlink()  # the journal is lost
    labnet("down", "--name", name)
    assert not containers_of(name), f"down without a journal left containers: {containers_of(name)}"
    out = labnet("gc").stdout  # what the lost journal would have removed: namespaces, mounts
    shutil.rmtree(paths.lab_dir(name), ignore_errors=True)  # gc does not own state dirs without a journal
    left = snapshot(name).leftovers(before)
    assert not left, f"lab {name}: left after down-by-label and gc ({out}): {left}"


@pytest.mark.usefixtures("labnet_dockerd")
def test_gc_removes_containers_of_a_vanished_lab(underlay_file: str) -> None:
    name = "t-dk-vanished"
    before = snapshot(name)
    _up_docker(underlay_file, name)
    shutil.rmtree(paths.lab_dir(name))  # state dir and journal gone: only labels say whose they are
    out = labnet("gc").stdout
    assert f"orphan container {container_name(name, 'ubuntu-3')}" in out, out
    assert not containers_of(name), f"gc left containers: {containers_of(name)}"
    left = snapshot(name).leftovers(before)
    assert not left, f"lab {name}: gc left {left}"
    assert not build_dirs(), f"image build directories left: {build_dirs()}"


@pytest.mark.usefixtures("labnet_dockerd")
def test_docker_lab_journal_records_containers_first(underlay_file: str) -> None:
    """Every container is in the journal before docker creates it, and down removes exactly those."""
    name = "t-dk-journal"
    before = snapshot(name)
    _up_docker(underlay_file, name)
    try:
        journal = json.loads((paths.lab_dir(name) / "journal.json").read_text())
        entries = journal["entries"]
        recorded = sorted(e["name"] for e in entries if e["kind"] == "container")
        assert recorded == containers_of(name)
        for i, e in enumerate(entries):
            if e["kind"] == "container":  # recorded before its namespaces are bound (and before create)
                ns = paths.netns_name(name, e["node"])
                later = [x for x in entries[i + 1:] if x["kind"] == "netns" and x["name"] == ns]
                assert later, f"container {e['name']}: its netns {ns} is not journaled after it"
        assert all(e.get("id") for e in journal["entries"] if e["kind"] == "container"), "container ids recorded"
        assert journal["info"]["docker"]["image"].startswith("labnet-node:")
    finally:
        labnet("down", "--name", name)
    assert not containers_of(name)
    assert not snapshot(name).leftovers(before)
    assert Path("/run/labnet-docker.sock").exists(), "down must not stop the shared dockerd"

