"""CNI conformance: the installed binaries driven by env + stdin, every command and version.

Each test builds a node (net + mount + UTS namespaces), a real etcd inside it and installs
the plugins with labnet.cni.install, then execs /opt/cni/bin/labnet inside the node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _cni_node import CniNode, cni_env, make_node, pod_netns, run_bin

from labnet import ipam, nsexec
from labnet.cni.spec import IPAM_INFO_ENV
from labnet.etcd import keys

VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.fixture
def node(netns_factory: Any, tmp_path: Path) -> Any:
    n = make_node(netns_factory, tmp_path)
    try:
        yield n
    finally:
        n.cleanup()


def assert_error(rc: int, doc: dict[str, Any] | None, code: int, *words: str) -> None:
    assert rc != 0, f"expected a CNI error {code}, the plugin exited 0 with {doc}"
    assert isinstance(doc, dict) and doc.get("code") == code, f"expected error code {code}, got {doc}"
    assert "cniVersion" in doc and doc.get("msg"), f"error JSON lacks cniVersion/msg: {doc}"
    for w in words:
        assert w in doc["msg"] + doc.get("details", ""), f"expected {w!r} in the error message, got {doc}"


def test_version_lists_all_supported_versions(node: CniNode) -> None:
    for binary in ("labnet", "labnet-ipam"):
        for version in VERSIONS:  # answered in the version asked for
            rc, doc, _ = run_bin(node, binary, cni_env("VERSION", ifname=""), {"cniVersion": version})
            assert rc == 0 and doc is not None, f"{binary} VERSION {version}: exit {rc}, {doc}"
            assert set(VERSIONS) <= set(doc["supportedVersions"]) and doc["cniVersion"] == version, \
                f"{binary} VERSION {version}: {doc}"
        rc, doc, _ = run_bin(node, binary, cni_env("VERSION", ifname=""), "")
        assert rc == 0 and doc is not None and doc["supportedVersions"]
        # as libcni's skel and the reference plugins: VERSION ignores what stdin holds
        for stdin in ({"cniVersion": "9.9.9"}, "{broken"):
            rc, doc, _ = run_bin(node, binary, cni_env("VERSION", ifname=""), stdin)
            assert rc == 0 and doc is not None and set(VERSIONS) <= set(doc["supportedVersions"]), \
                f"{binary} VERSION with stdin {stdin!r}: expected an answer, got exit {rc}, {doc}"


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(node: CniNode, version: str) -> None:
    cid = f"c{version.replace('.', '')}"
    netns = pod_netns(node, f"p-{cid}")
    conf = node.conf(cniVersion=version)
    rc, res, err = run_bin(node, "labnet", cni_env("ADD", cid, netns, pod=f"pod-{cid}"), conf)
    assert rc == 0, f"ADD {version} failed: {res} {err}"
    assert res is not None and res["cniVersion"] == version
    assert set(res) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}, \
        f"ADD {version}: the result has keys the spec does not define: {sorted(res)}"
    host, cont = res["interfaces"]
    assert host["name"].startswith("cali") and len(host["name"]) == 15 and host["mac"] == "ee:ee:ee:ee:ee:ee"
    assert cont["name"] == "eth0" and cont["sandbox"] == netns
    (ip,) = res["ips"]
    assert ip["interface"] == 1 and ip["address"].endswith("/32") and "gateway" not in ip
    assert ("version" in ip) == (version < "1.0.0"), f"ips[].version presence wrong for {version}: {ip}"
    if version >= "0.4.0":
        rc, doc, _ = run_bin(node, "labnet", cni_env("CHECK", cid, netns, pod=f"pod-{cid}"),
                             {**conf, "prevResult": res})
        assert rc == 0, f"CHECK {version} failed: {doc}"
    else:
        rc, doc, _ = run_bin(node, "labnet", cni_env("CHECK", cid, netns, pod=f"pod-{cid}"),
                             {**conf, "prevResult": res})
        assert_error(rc, doc, 1, "0.4.0")
    for _ in range(2):  # DEL, and DEL again: both succeed
        rc, doc, _ = run_bin(node, "labnet", cni_env("DEL", cid, netns, pod=f"pod-{cid}"),
                             {**conf, "prevResult": res})
        assert rc == 0 and doc is None, f"DEL {version} failed: {doc}"
    assert node.store_call(lambda s: ipam.lookup(s, f"k8s-pod-network.{cid}")) == []


def test_errors_use_spec_codes(node: CniNode) -> None:
    netns = pod_netns(node, "p-err")
    conf = node.conf()
    env = cni_env("ADD", "cerr", netns, pod="perr")
    assert_error(*run_bin(node, "labnet", env, "{not json")[:2], 6, "not valid JSON")
    assert_error(*run_bin(node, "labnet", env, "[1, 2]")[:2], 6)
    no_cid = {k: v for k, v in env.items() if k != "CNI_CONTAINERID"}
    assert_error(*run_bin(node, "labnet", no_cid, conf)[:2], 4, "CNI_CONTAINERID")
    assert_error(*run_bin(node, "labnet", {**env, "CNI_COMMAND": "FROB"}, conf)[:2], 4, "CNI_COMMAND")
    assert_error(*run_bin(node, "labnet", {**env, "CNI_ARGS": "garbage"}, conf)[:2], 4, "CNI_ARGS")
    for bad in ("0.2.0", "9.9.9"):
        assert_error(*run_bin(node, "labnet", env, {**conf, "cniVersion": bad})[:2], 1, bad)
    assert_error(*run_bin(node, "labnet", env, {k: v for k, v in conf.items() if k != "etcd_endpoints"})[:2],
                 7, "etcd_endpoints")
    assert_error(*run_bin(node, "labnet", env, {k: v for k, v in conf.items() if k != "name"})[:2], 7, "name")
    missing = cni_env("ADD", "cerr", "/var/run/netns/does-not-exist", pod="perr")
    assert_error(*run_bin(node, "labnet", missing, conf)[:2], 3, "/var/run/netns/does-not-exist")
    static = {**conf, "args": {"cni": {"ips": ["192.0.2.9"]}}}
    assert_error(*run_bin(node, "labnet", env, static)[:2], 101, "192.0.2.9 is outside IP pool")
    dead = {**conf, "etcd_endpoints": "http://127.0.0.1:2399"}
    assert_error(*run_bin(node, "labnet", env, dead)[:2], 11, "etcd", "127.0.0.1:2399")
    # both binaries: bad stdin and unknown versions, the error rendered in the version asked for
    for binary in ("labnet", "labnet-ipam"):
        assert_error(*run_bin(node, binary, env, "{not json")[:2], 6, "not valid JSON")
        assert_error(*run_bin(node, binary, env, {**conf, "cniVersion": "9.9.9"})[:2], 1, "9.9.9")
        assert_error(*run_bin(node, binary, no_cid, conf)[:2], 4, "CNI_CONTAINERID")
        for version in VERSIONS:
            rc, doc, _ = run_bin(node, binary, no_cid, {**conf, "cniVersion": version})
            assert_error(rc, doc, 4)
            assert doc is not None and doc["cniVersion"] == version, f"{binary}: error for a {version} " \
                f"config must say cniVersion {version}: {doc}"
        for version in ("0.3.1", "0.4.0", "1.0.0"):  # STATUS is new in 1.1.0
            rc, doc, _ = run_bin(node, binary, cni_env("STATUS", ifname=""), {**conf, "cniVersion": version})
            assert_error(rc, doc, 1, "STATUS")
    # nothing was left behind by the failures
    assert "cali" not in nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0


def test_del_succeeds_when_container_netns_and_addresses_are_gone(node: CniNode) -> None:
    conf = node.conf()
    env = cni_env("DEL", "never-seen", "/var/run/netns/never", pod="ghost")
    for _ in range(2):
        rc, doc, _ = run_bin(node, "labnet", env, conf)
        assert rc == 0, f"DEL of an unknown container failed: {doc}"
    netns = pod_netns(node, "p-gone")
    rc, res, _ = run_bin(node, "labnet", cni_env("ADD", "cgone", netns, pod="gone"), conf)
    assert rc == 0
    nsexec.run(node.ns, ["ip", "netns", "del", "p-gone"])
    for _ in range(2):
        rc, doc, _ = run_bin(node, "labnet", cni_env("DEL", "cgone", netns, pod="gone"), conf)
        assert rc == 0, f"DEL with the netns gone failed: {doc}"
    # the address already released (IPAM DEL ran before), the veth still there: DEL cleans the rest
    netns = pod_netns(node, "p-noaddr")
    rc, res, _ = run_bin(node, "labnet", cni_env("ADD", "cnoaddr", netns, pod="noaddr"), conf)
    assert rc == 0 and res is not None
    assert run_bin(node, "labnet-ipam", cni_env("DEL", "cnoaddr", netns, pod="noaddr"), conf)[0] == 0
    assert res["interfaces"][0]["name"] in nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    for _ in range(2):
        rc, doc, _ = run_bin(node, "labnet", cni_env("DEL", "cnoaddr", netns, pod="noaddr"), conf)
        assert rc == 0, f"DEL with the address already released failed: {doc}"
    assert "cali" not in nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0
    assert node.store_call(lambda s: s.range(keys.workload_endpoints())) == []


def test_check_catches_a_deleted_route_and_unknown_container(node: CniNode) -> None:
    conf = node.conf()
    netns = pod_netns(node, "p-chk")
    env = cni_env("ADD", "cchk", netns, pod="chk")
    rc, res, _ = run_bin(node, "labnet", env, conf)
    assert rc == 0 and res is not None
    chk = {**env, "CNI_COMMAND": "CHECK"}
    assert run_bin(node, "labnet", chk, {**conf, "prevResult": res})[0] == 0
    nsexec.run(node.ns.pod("chk", netns), ["ip", "route", "del", "default"])
    rc, doc, _ = run_bin(node, "labnet", chk, {**conf, "prevResult": res})
    assert_error(rc, doc, 103, "default via 169.254.1.1", "node-a")
    host = res["interfaces"][0]["name"]
    nsexec.run(node.ns, ["sh", "-c", f"echo 0 > /proc/sys/net/ipv4/conf/{host}/proxy_arp"])
    rc, doc, _ = run_bin(node, "labnet", chk, {**conf, "prevResult": res})
    assert_error(rc, doc, 103, f"net.ipv4.conf.{host}.proxy_arp: expected 1, found 0")
    rc, doc, _ = run_bin(node, "labnet", {**chk, "CNI_NETNS": "/var/run/netns/nope"}, {**conf, "prevResult": res})
    assert_error(rc, doc, 3)
    assert_error(*run_bin(node, "labnet", chk, conf)[:2], 7, "prevResult")


def test_gc_releases_attachments_the_runtime_no_longer_has(node: CniNode) -> None:
    conf = node.conf(cniVersion="1.1.0")
    results: dict[str, dict[str, Any]] = {}
    for c in ("keep", "drop"):
        netns = pod_netns(node, f"p-{c}")
        rc, res, _ = run_bin(node, "labnet", cni_env("ADD", c, netns, pod=c), conf)
        assert rc == 0 and res is not None
        results[c] = res
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, doc, _ = run_bin(node, "labnet", cni_env("GC", ifname=""), gc_conf)
    assert rc == 0, f"GC failed: {doc}"
    links = nsexec.run(node.ns, ["ip", "-o", "link"]).stdout
    assert results["keep"]["interfaces"][0]["name"] in links
    assert results["drop"]["interfaces"][0]["name"] not in links
    handles = node.store_call(lambda s: ipam.usage(s))["handles"]
    assert handles == ["k8s-pod-network.keep"]
    weps = node.store_call(lambda s: [json.loads(kv.value)["containerID"] for kv in s.range(keys.workload_endpoints())])
    assert weps == ["keep"]
    # GC needs a 1.1.0 config
    assert_error(*run_bin(node, "labnet", cni_env("GC", ifname=""), {**gc_conf, "cniVersion": "1.0.0"})[:2], 1)


def test_status_reports_etcd_reachability(node: CniNode) -> None:
    conf = node.conf(cniVersion="1.1.0")
    rc, doc, _ = run_bin(node, "labnet", cni_env("STATUS", ifname=""), conf)
    assert rc == 0 and doc is None, f"STATUS failed: {doc}"
    dead = {**conf, "etcd_endpoints": "http://127.0.0.1:2399"}
    assert_error(*run_bin(node, "labnet", cni_env("STATUS", ifname=""), dead)[:2], 50, "etcd")


def test_a_requested_address_is_given_or_refused_by_name(node: CniNode) -> None:
    """podman's --ip (CNI_ARGS IP=) and the `ips` capability (runtimeConfig.ips), as libcni sends them."""
    conf = node.conf()
    pool = node.store_call(lambda s: ipam.cluster_pool(s))
    want = str(pool.network.network_address + 4000)
    got = {}
    netns = {cid: pod_netns(node, f"p-{cid}") for cid in ("rq1", "rq2", "rq3")}
    for cid, env_extra, conf_extra in (("rq1", {"CNI_ARGS": f"IgnoreUnknown=1;IP={want}"}, {}),
                                       ("rq2", {}, {"runtimeConfig": {"ips": [f"{pool.network.network_address + 4001}/32"]}})):
        env = {**cni_env("ADD", cid, netns[cid], pod=f"pod-{cid}"), **env_extra}
        rc, res, err = run_bin(node, "labnet", env, {**conf, **conf_extra})
        assert rc == 0 and res is not None, f"ADD {cid} asking for an address: {res} {err}"
        got[cid] = res["ips"][0]["address"]
    assert got == {"rq1": f"{want}/32", "rq2": f"{pool.network.network_address + 4001}/32"}, got
    env = {**cni_env("ADD", "rq3", netns["rq3"], pod="pod-rq3"), "CNI_ARGS": f"IP={want}"}
    assert_error(*run_bin(node, "labnet", env, conf)[:2], 101, f"{want} is taken", "k8s-pod-network.rq1")
    for cid in ("rq1", "rq2", "rq3"):
        rc, doc, _ = run_bin(node, "labnet", cni_env("DEL", cid, netns[cid], pod=f"pod-{cid}"), conf)
        assert rc == 0, f"DEL {cid}: {doc}"
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0, "DEL released every requested address"


def test_ipam_plugin_alone(node: CniNode) -> None:
    conf = node.conf()
    env = cni_env("ADD", "ipam1", "/var/run/netns/x", pod="x")
    rc, res, _ = run_bin(node, "labnet-ipam", env, conf)
    assert rc == 0 and res is not None
    again = run_bin(node, "labnet-ipam", env, conf)[1]
    assert again is not None and again["ips"] == res["ips"]
    assert "labnet" not in res, f"labnet-ipam's result to a runtime has a non-spec key: {res}"
    # labnet's own plugin asks for the block and affinity (IPAM_INFO_ENV); a repeated ADD answers the same
    info = run_bin(node, "labnet-ipam", {**env, IPAM_INFO_ENV: "1"}, conf)[1]
    assert info is not None and info["ips"] == res["ips"], info
    assert info["labnet"]["affinity"] == "node-a" and info["labnet"]["borrowed"] is False, info
    assert run_bin(node, "labnet-ipam", {**env, "CNI_COMMAND": "CHECK"}, {**conf, "prevResult": res})[0] == 0
    assert run_bin(node, "labnet-ipam", {**env, "CNI_COMMAND": "DEL"}, conf)[0] == 0
    rc, doc, _ = run_bin(node, "labnet-ipam", {**env, "CNI_COMMAND": "CHECK"}, {**conf, "prevResult": res})
    assert_error(rc, doc, 3, "ipam1")


def test_plugin_talks_to_etcd_with_tls_client_certs_as_in_the_seed(netns_factory: Any, tmp_path: Path) -> None:
    from labnet.cni import invoke
    from labnet.cni.install import TlsFiles, install
    from labnet.etcd import server
    from labnet.etcd.client import EtcdStore
    from labnet.etcd.netns import call_in_netns
    from labnet.etcd.pki import ensure_pki

    node = make_node(netns_factory, tmp_path, etcd=False)
    try:
        member = server.EtcdMember("node-a", "10.99.0.2")
        pki = ensure_pki(tmp_path / "pki", "t", [("node-a", "10.99.0.2")], ["node-a"])
        pid = netns_factory.track_pid(server.start_member(node.net, member, [member], pki, tmp_path / "etcd-data",
                                                          tmp_path / "etcd.log"))
        cfg = server.client_config([member], pki, "node-a")
        server.wait_healthy(cfg, 30, netns=node.ns.netns, pids={pid: tmp_path / "etcd.log"})
        cluster = json.dumps({"pool": {"cidr": "10.100.0.0/16", "block_size": 26, "ipip": "always"}})

        def put() -> None:
            with EtcdStore(cfg) as s:
                s.put(keys.config("cluster"), cluster)
        call_in_netns(node.ns.netns, put)
        client = pki.client("node-a")
        install(node.paths, "node-a", "https://10.99.0.2:2379", TlsFiles(pki.ca_cert, client.cert, client.key))
        res = invoke.add_pod(node.ns, "net-test", lab="t")
        assert res["ips"][0]["address"].startswith("10.100.")
        conf = node.conf()
        assert conf["etcd_key_file"] == "/etc/cni/net.d/labnet-tls/etcd-key"
        # without its client certificate the plugin cannot get in: "try again later", naming etcd
        no_cert = {k: v for k, v in conf.items() if k not in ("etcd_cert_file", "etcd_key_file")}
        netns = pod_netns(node, "p-nocert")
        assert_error(*run_bin(node, "labnet", cni_env("ADD", "nocert", netns, pod="nocert"), no_cert)[:2],
                     11, "etcd", "https://10.99.0.2:2379")
        invoke.del_pod(node.ns, "net-test", lab="t")
    finally:
        node.cleanup()


def test_add_with_a_prev_result_appends_to_it(node: CniNode) -> None:
    netns = pod_netns(node, "p-prev")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "bridge0", "mac": "02:00:00:00:00:01"}],
            "ips": [{"address": "192.0.2.10/24", "interface": 0}], "routes": [{"dst": "192.0.2.0/24"}]}
    conf = {**node.conf(), "prevResult": prev}
    rc, res, _ = run_bin(node, "labnet", cni_env("ADD", "cprev", netns, pod="prev"), conf)
    assert rc == 0 and res is not None, res
    assert [i["name"] for i in res["interfaces"]][0] == "bridge0" and len(res["interfaces"]) == 3
    assert res["ips"][0] == prev["ips"][0] and res["ips"][1]["interface"] == 2
    assert res["routes"] == prev["routes"]
    rc, doc, _ = run_bin(node, "labnet", cni_env("CHECK", "cprev", netns, pod="prev"), {**node.conf(), "prevResult": res})
    assert rc == 0, doc


def links(node: CniNode) -> list[str]:
    return [x["ifname"] for x in json.loads(nsexec.run(node.ns, ["ip", "-j", "link", "show"]).stdout)]


def test_attachments_of_one_container_are_independent(node: CniNode) -> None:
    """A second interface (eth1) and a second network (eth2 on `other-net`) on one container, as
    Multus and podman's multi-network make them: each its own veth, address and record; DEL of
    one leaves the others working; the pod's routes stay with eth0."""
    netns = pod_netns(node, "p-multi")
    base = node.conf()
    atts = {"eth0": base, "eth1": base, "eth2": {**base, "name": "other-net"}}

    def env(command: str, ifname: str) -> dict[str, str]:
        return cni_env(command, "cmulti", netns, ifname=ifname, pod="multi")

    addr: dict[str, str] = {}
    for ifname, conf in atts.items():
        rc, res, err = run_bin(node, "labnet", env("ADD", ifname), conf)
        assert rc == 0 and res is not None, f"ADD {ifname} ({conf['name']}): {res} {err}"
        addr[ifname] = res["ips"][0]["address"].split("/")[0]
        assert res["interfaces"][1]["name"] == ifname, res
    assert len(set(addr.values())) == 3, f"attachments share an address: {addr}"
    veths = [n for n in links(node) if n.startswith("cali")]
    assert len(veths) == 3, f"expected one host veth per attachment, found {veths}"
    weps = node.store_call(lambda s: [json.loads(kv.value) for kv in s.range(keys.workload_endpoints("node-a"))])
    assert sorted((w["ifname"], w["network"], w["ip"]) for w in weps) == sorted(
        (i, atts[i]["name"], f"{addr[i]}/32") for i in atts), weps
    pod_routes = nsexec.run(node.ns, ["ip", "-n", "p-multi", "route"]).stdout
    assert "default via 169.254.1.1 dev eth0" in pod_routes and "eth1" not in pod_routes, pod_routes
    for ifname, ip in addr.items():
        ping = nsexec.run(node.ns, ["ping", "-c1", "-W2", ip], check=False)
        assert ping.returncode == 0, f"node -> {ifname} {ip}: {ping.stdout}{ping.stderr}"

    def check(ifname: str) -> tuple[int, dict[str, Any] | None, str]:
        prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "x"}, {"name": ifname, "sandbox": netns}],
                "ips": [{"address": f"{addr[ifname]}/32", "interface": 1}]}
        return run_bin(node, "labnet", env("CHECK", ifname), {**atts[ifname], "prevResult": prev})

    assert all(check(i)[0] == 0 for i in atts), [check(i) for i in atts]
    rc, doc, _ = run_bin(node, "labnet", env("DEL", "eth1"), atts["eth1"])
    assert rc == 0, f"DEL eth1: {doc}"
    for ifname in ("eth0", "eth2"):
        rc, doc, _ = check(ifname)
        assert rc == 0, f"CHECK {ifname} after DEL of eth1: {doc}"
        assert nsexec.run(node.ns, ["ping", "-c1", "-W2", addr[ifname]], check=False).returncode == 0
    held = node.store_call(lambda s: ipam.usage(s))
    assert held["allocated"] == 2 and sorted(held["handles"]) == ["k8s-pod-network.cmulti", "other-net.cmulti/eth2"], held
    again = run_bin(node, "labnet", env("ADD", "eth0"), atts["eth0"])[1]
    assert again is not None and again["ips"][0]["address"] == f"{addr['eth0']}/32", "a repeated ADD answers the same"
    for ifname in ("eth0", "eth2"):
        assert run_bin(node, "labnet", env("DEL", ifname), atts[ifname])[0] == 0
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0
    assert not [n for n in links(node) if n.startswith("cali")]
    assert node.store_call(lambda s: s.range(keys.workload_endpoints("node-a"))) == []


# -- dual-stack: one address per family ---------------------------------------------------------

GATEWAY6 = "fe80::ecee:eeff:feee:eeee"


@pytest.fixture
def dual(netns_factory: Any, tmp_path: Path) -> Any:
    n = make_node(netns_factory, tmp_path, pool6="fd00:100::/48")
    try:
        yield n
    finally:
        n.cleanup()


@pytest.mark.parametrize("version", VERSIONS)
def test_dual_stack_add_check_del_in_every_version(dual: CniNode, version: str) -> None:
    cid = f"d{version.replace('.', '')}"
    netns = pod_netns(dual, f"p-{cid}")
    conf = dual.conf(cniVersion=version)
    env = cni_env("ADD", cid, netns, pod=f"pod-{cid}")
    rc, res, err = run_bin(dual, "labnet", env, conf)
    assert rc == 0 and res is not None, f"ADD {version} failed: {res} {err}"
    four, six = res["ips"]
    assert four["address"].endswith("/32") and six["address"].endswith("/128"), res["ips"]
    assert four["interface"] == six["interface"] == 1 and six["address"].startswith("fd00:100:"), res["ips"]
    if version < "1.0.0":
        assert (four["version"], six["version"]) == ("4", "6"), res["ips"]
    addr6 = six["address"].split("/")[0]
    pod, host = dual.ns.pod(f"pod-{cid}", netns), res["interfaces"][0]["name"]
    routes6 = nsexec.run(pod, ["ip", "-6", "route"]).stdout
    assert f"default via {GATEWAY6} dev eth0" in routes6, routes6
    assert f"{addr6}/128" in nsexec.run(pod, ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
    assert f"{addr6} dev {host}" in nsexec.run(dual.ns, ["ip", "-6", "route"]).stdout
    # the host veth answers the pod's neighbour solicitation for its gateway: its own link-local
    ping = nsexec.run(pod, ["ping", "-6", "-c", "1", "-W", "2", f"{GATEWAY6}%eth0"], check=False)
    assert ping.returncode == 0, f"the pod's IPv6 gateway does not answer:\n{ping.stdout}{ping.stderr}"
    wep = dual.store_call(lambda s: [json.loads(kv.value) for kv in s.range(keys.workload_endpoints())])
    assert [(w["ip6"], w["containerID"]) for w in wep] == [(six["address"], cid)], wep
    held = dual.store_call(lambda s: ipam.lookup(s, f"k8s-pod-network.{cid}"))
    assert sorted(a.address for a in held) == sorted([four["address"].split("/")[0], addr6]), held
    if version >= "0.4.0":
        chk = {**env, "CNI_COMMAND": "CHECK"}
        rc, doc, _ = run_bin(dual, "labnet", chk, {**conf, "prevResult": res})
        assert rc == 0, f"CHECK {version} failed: {doc}"
        nsexec.run(pod, ["ip", "-6", "route", "del", "default"])
        rc, doc, _ = run_bin(dual, "labnet", chk, {**conf, "prevResult": res})
        assert_error(rc, doc, 103, f"default via {GATEWAY6}", "node-a")
    for _ in range(2):
        rc, doc, _ = run_bin(dual, "labnet", {**env, "CNI_COMMAND": "DEL"}, {**conf, "prevResult": res})
        assert rc == 0 and doc is None, f"DEL {version} failed: {doc}"
    assert dual.store_call(lambda s: ipam.lookup(s, f"k8s-pod-network.{cid}")) == []
    assert addr6 not in nsexec.run(dual.ns, ["ip", "-6", "route"]).stdout


def test_dual_stack_requested_addresses_gc_and_ipv4_only_network(dual: CniNode) -> None:
    conf = dual.conf(cniVersion="1.1.0")
    netns = pod_netns(dual, "p-ask")
    env = cni_env("ADD", "cask", netns, pod="ask")
    env["CNI_ARGS"] += ";IP=10.100.7.7,fd00:100::77"  # Calico's convention: one per family
    rc, res, err = run_bin(dual, "labnet", env, conf)
    assert rc == 0 and res is not None, f"{res} {err}"
    assert [ip["address"] for ip in res["ips"]] == ["10.100.7.7/32", "fd00:100::77/128"], res["ips"]
    # calico-ipam's assign_ipv6 "false": this network takes IPv4 only, though the cluster has IPv6
    only4 = {**conf, "ipam": {**conf["ipam"], "assign_ipv6": "false"}}
    rc, res4, err = run_bin(dual, "labnet", cni_env("ADD", "cv4", pod_netns(dual, "p-v4"), pod="v4"), only4)
    assert rc == 0 and res4 is not None and [ip["address"][-3:] for ip in res4["ips"]] == ["/32"], f"{res4} {err}"
    bad = {**conf, "ipam": {**conf["ipam"], "assign_ipv6": "maybe"}}
    assert_error(*run_bin(dual, "labnet", cni_env("ADD", "cbad", pod_netns(dual, "p-bad"), pod="bad"), bad)[:2],
                 7, "assign_ipv6")
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "cv4", "ifname": "eth0"}]}
    rc, doc, _ = run_bin(dual, "labnet", cni_env("GC", ifname=""), gc_conf)
    assert rc == 0, f"GC failed: {doc}"
    assert dual.store_call(lambda s: ipam.lookup(s, "k8s-pod-network.cask")) == []  # both families released
    assert "fd00:100::77" not in nsexec.run(dual.ns, ["ip", "-6", "route"]).stdout
