"""The CNI fast path: the C shim + labnet's CNI server, and the same tests without the server.

Every test runs in both modes: "server" (the shim forwards to labnet.cni.server inside the
node) and "exec" (no server: the shim execs the Python plugin). The runtime side is the same
in both: /opt/cni/bin/labnet exec'd inside the node with CNI_* env and the config on stdin.
"""

from __future__ import annotations

import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _cni_node import CniNode, cni_env, make_node, pod_netns, run_bin, start_cni_server
from test_cni_conformance import VERSIONS, assert_error

from labnet import ipam, nsexec
from labnet.cni.server import ping
from labnet.nsexec import pid_alive
from labnet.wait import poll


@pytest.fixture(params=["server", "exec"])
def node(request: Any, netns_factory: Any, tmp_path: Path) -> Any:
    n = make_node(netns_factory, tmp_path)
    try:
        n.server_pid = start_cni_server(netns_factory, n) if request.param == "server" else None  # type: ignore[attr-defined]
        yield n
    finally:
        n.cleanup()


def served(node: CniNode) -> list[str]:
    """The server's request log lines ([] in exec mode)."""
    log = node.base / "cni-server.log"
    return [ln for ln in log.read_text().splitlines() if "-> exit" in ln] if log.exists() else []


def test_shim_is_installed_with_python_fallbacks(node: CniNode) -> None:
    for name in ("labnet", "labnet-ipam"):
        assert (node.paths.opt_cni_bin / name).read_bytes()[:4] == b"\x7fELF", f"{name} is not the compiled shim"
        assert (node.paths.opt_cni_bin / f".{name}-py").read_text().startswith("#!")


def test_add_check_del_every_version(node: CniNode) -> None:
    for version in VERSIONS:
        cid = f"f{version.replace('.', '')}"
        netns = pod_netns(node, f"p-{cid}")
        conf = node.conf(cniVersion=version)
        env = cni_env("ADD", cid, netns, pod=f"pod-{cid}")
        rc, res, err = run_bin(node, "labnet", env, conf)
        assert rc == 0 and res is not None, f"ADD {version} failed: {res} {err}"
        assert res["cniVersion"] == version and res["ips"][0]["address"].endswith("/32")
        assert res["interfaces"][1]["sandbox"] == netns
        again = run_bin(node, "labnet", env, conf)[1]
        assert again is not None and again["ips"] == res["ips"], f"repeated ADD {version}: {again} vs {res}"
        rc, doc, _ = run_bin(node, "labnet", {**env, "CNI_COMMAND": "CHECK"}, {**conf, "prevResult": res})
        if version >= "0.4.0":
            assert rc == 0, f"CHECK {version} failed: {doc}"
        else:
            assert_error(rc, doc, 1, "0.4.0")
        for _ in range(2):
            rc, doc, _ = run_bin(node, "labnet", {**env, "CNI_COMMAND": "DEL"}, {**conf, "prevResult": res})
            assert rc == 0 and doc is None, f"DEL {version} failed: {doc}"
        handle = f"k8s-pod-network.{cid}"
        assert node.store_call(lambda s: ipam.lookup(s, handle)) == [], f"{handle} still holds addresses"  # noqa: B023
    rc, doc, _ = run_bin(node, "labnet", cni_env("DEL", "never-seen", "/var/run/netns/never", pod="ghost"), node.conf())
    assert rc == 0, f"DEL of an unknown container failed: {doc}"
    if getattr(node, "server_pid", None):
        lines = served(node)
        assert any("labnet ADD" in ln for ln in lines), f"the server handled no ADD: {lines}"
        # labnet-ipam ran in-process: the shim never exec'd it, nor did the server
        assert not any("labnet-ipam" in ln for ln in lines), lines


def test_errors_use_spec_codes(node: CniNode) -> None:
    netns = pod_netns(node, "p-err")
    conf = node.conf()
    env = cni_env("ADD", "cerr", netns, pod="perr")
    assert_error(*run_bin(node, "labnet", env, "{not json")[:2], 6, "not valid JSON")
    no_cid = {k: v for k, v in env.items() if k != "CNI_CONTAINERID"}
    assert_error(*run_bin(node, "labnet", no_cid, conf)[:2], 4, "CNI_CONTAINERID")
    assert_error(*run_bin(node, "labnet", {**env, "CNI_COMMAND": "FROB"}, conf)[:2], 4, "CNI_COMMAND")
    assert_error(*run_bin(node, "labnet", env, {k: v for k, v in conf.items() if k != "etcd_endpoints"})[:2],
                 7, "etcd_endpoints")
    assert_error(*run_bin(node, "labnet", env, {**conf, "cniVersion": "9.9.9"})[:2], 1, "9.9.9")
    dead = {**conf, "etcd_endpoints": "http://127.0.0.1:2399"}
    assert_error(*run_bin(node, "labnet", env, dead)[:2], 11, "etcd", "127.0.0.1:2399")
    assert_error(*run_bin(node, "labnet-ipam", {**env, "CNI_COMMAND": "CHECK"}, conf)[:2], 3, "cerr")
    assert "cali" not in nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0


# exec mode: tests/lab/test_cni_datapath.py::test_40_parallel_adds_then_dels (no server there)
@pytest.mark.parametrize("node", ["server"], indirect=True)
def test_forty_parallel_adds_get_distinct_addresses(node: CniNode) -> None:
    conf = node.conf()
    n = 40
    envs = [cni_env("ADD", f"par{i}", pod_netns(node, f"p-par{i}"), pod=f"par{i}") for i in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda e: run_bin(node, "labnet", e, conf), envs))
    failed = [(e["CNI_CONTAINERID"], r[1]) for e, r in zip(envs, results, strict=True) if r[0] != 0]
    assert not failed, f"node {node.name}: parallel ADDs failed: {failed[:3]}"
    addrs = [r[1]["ips"][0]["address"] for r in results if r[1]]
    assert len(set(addrs)) == n, f"node {node.name}: {n} ADDs gave {len(set(addrs))} distinct addresses: {sorted(addrs)}"
    links = nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    assert sum(1 for ln in links.splitlines() if ": cali" in ln) == n
    with ThreadPoolExecutor(max_workers=n) as pool:
        dels = list(pool.map(lambda e: run_bin(node, "labnet", {**e, "CNI_COMMAND": "DEL"}, conf), envs))
    assert all(r[0] == 0 for r in dels), [r[1] for r in dels if r[0]]
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0
    assert "cali" not in nsexec.run(node.ns, ["ip", "-o", "link"]).stdout


@pytest.mark.parametrize("node", ["server"], indirect=True)
def test_server_survives_bad_requests_and_the_shim_outlives_the_server(node: CniNode) -> None:
    sock = node.base / "run" / "labnet" / "cni.sock"
    dfd = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for junk in (b"GET / HTTP/1.0\r\n\r\n", b"LNC1\xff\xff\xff\xff", b"LNC1\x00\x00\x00\x02\x7f\xff\xff\xff", b""):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(f"/proc/self/fd/{dfd}/{sock.name}")
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                try:
                    answer = s.recv(100)
                except ConnectionResetError:  # closed with our junk unread
                    answer = b""
                assert answer == b"", f"the server answered junk {junk!r}: {answer!r}"
    finally:
        os.close(dfd)
    assert ping(sock), f"node {node.name}: the CNI server stopped answering after bad requests"
    netns = pod_netns(node, "p-outlive")
    env = cni_env("ADD", "outlive", netns, pod="outlive")
    rc, res, _ = run_bin(node, "labnet", env, node.conf())
    assert rc == 0 and res is not None
    pid = node.server_pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=30, what=f"CNI server pid {pid} to exit")
    assert sock.exists(), "a killed server leaves its socket: the shim must cope with a refused connection"
    again = run_bin(node, "labnet", env, node.conf())[1]  # the Python plugin now
    assert again is not None and again["ips"] == res["ips"], f"ADD without the server: {again} vs {res}"
    rc, doc, _ = run_bin(node, "labnet", {**env, "CNI_COMMAND": "DEL"}, node.conf())
    assert rc == 0, doc
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0


def test_version_through_both_binaries(node: CniNode) -> None:
    for binary in ("labnet", "labnet-ipam"):
        rc, doc, _ = run_bin(node, binary, cni_env("VERSION", ifname=""), {"cniVersion": "0.4.0"})
        assert rc == 0 and doc is not None and doc["cniVersion"] == "0.4.0", doc
        assert set(VERSIONS) <= set(doc["supportedVersions"])
    log = node.base / "cni-server.log"
    if getattr(node, "server_pid", None):  # the server logs a request after answering it: poll
        poll(lambda: log.read_text(), lambda text: "labnet-ipam VERSION" in text, timeout=10,
             what="the CNI server's log line for labnet-ipam VERSION")


def test_a_runtime_in_a_mount_namespace_of_its_own(node: CniNode) -> None:
    """CNI_NETNS names a file only the runtime's mount namespace has (a tmpfs of its own): the
    shim opens it there and hands the server its fd, so the server need not see the path."""
    import json

    script = """set -e
mount -t tmpfs runtime-only /mnt
touch /mnt/pod-ns
unshare --net=/mnt/pod-ns true
printf '%s' "$CONF" | /opt/cni/bin/labnet > /mnt/add.json || { cat /mnt/add.json; exit 3; }
nsenter --net=/mnt/pod-ns ip -o -4 addr show eth0
echo '--'
cat /mnt/add.json
echo '--'
printf '%s' "$CONF" | CNI_COMMAND=DEL /opt/cni/bin/labnet
echo "del $?"
"""
    env = {**cni_env("ADD", "cmntns", "/mnt/pod-ns", pod="mntns"), "CONF": json.dumps(node.conf())}
    proc = nsexec.run(node.ns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                      env=env, check=False)
    assert proc.returncode == 0, f"ADD/DEL from a private mount namespace: exit {proc.returncode}: " \
                                 f"{proc.stdout}{proc.stderr}"
    inside, result, deleted = proc.stdout.split("--\n")
    res = json.loads(result)
    assert res["interfaces"][1]["sandbox"] == "/mnt/pod-ns", res
    address = res["ips"][0]["address"]
    assert f"inet {address}" in inside, f"the pod's eth0 in /mnt/pod-ns: {inside!r}, expected {address}"
    assert deleted.strip() == "del 0", deleted
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0
