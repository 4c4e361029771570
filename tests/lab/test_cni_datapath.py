"""The seed's datapath (host veth, sysctls, pod and node routes, ADD result, idempotence, errors, IPAM) through the installed plugins.

Pods are created as a runtime does (labnet.cni.invoke: pod netns inside the node, loopback,
conflist plugins with the CNI env); every assertion reads kernel state inside the namespaces
with `ip -j` or /proc, and the datastore through the node's etcd.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _cni_node import NODE_IP, CniNode, make_node

from labnet import ipam, nsexec
from labnet.cni import invoke
from labnet.etcd import keys


@pytest.fixture
def node(netns_factory: Any, tmp_path: Path) -> Any:
    n = make_node(netns_factory, tmp_path)
    try:
        yield n
    finally:
        n.cleanup()


def ipj(ns: nsexec.NodeNS, *args: str) -> Any:
    return json.loads(nsexec.run(ns, ["ip", "-j", *args]).stdout or "[]")


def links(node: CniNode) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ipj(node.ns, "link", "show")}


def sysctl(node: CniNode, rel: str) -> str:
    return nsexec.run(node.ns, ["cat", f"/proc/sys/net/{rel}"]).stdout.strip()


def test_seed_datapath_items_1_to_5(node: CniNode) -> None:
    res = invoke.add_pod(node.ns, "net-test", labels={"run": "net-test"}, lab="t")
    rec = invoke.read_record(node.ns, "net-test")
    assert rec is not None
    pod = node.ns.pod("net-test", rec["netns"])
    host_if = "cali" + hashlib.sha1(b"default.net-test").hexdigest()[:11]
    ip = res["ips"][0]["address"].split("/")[0]

    # 1. host veth cali + 11 hex (15 chars), MAC ee:ee:ee:ee:ee:ee, both ends up
    host = links(node)[host_if]
    assert len(host_if) == 15 and host["address"] == "ee:ee:ee:ee:ee:ee"
    assert host["operstate"] == "UP", f"node-a {host_if}: expected UP, found {host['operstate']}"
    eth0 = {link["ifname"]: link for link in ipj(pod, "link", "show")}["eth0"]
    assert eth0["operstate"] == "UP" and eth0["mtu"] == 1480 and host["mtu"] == 1480  # underlay 1500 - IPIP 20
    # 2. sysctls on the host veth
    assert sysctl(node, f"ipv4/conf/{host_if}/proxy_arp") == "1"
    assert sysctl(node, f"ipv4/neigh/{host_if}/proxy_delay") == "0"
    assert sysctl(node, f"ipv4/conf/{host_if}/forwarding") == "1"
    assert sysctl(node, f"ipv4/conf/{host_if}/route_localnet") == "1"
    # 3. pod: <ip>/32 on eth0 and the two routes, exactly as in the seed
    addrs = [(a["local"], a["prefixlen"]) for i in ipj(pod, "addr", "show", "dev", "eth0") for a in i["addr_info"]
             if a["family"] == "inet"]
    assert addrs == [(ip, 32)]
    pod_routes = nsexec.run(pod, ["ip", "route"]).stdout.split("\n")
    assert [" ".join(r.split()) for r in pod_routes if r] == [
        "default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"]
    # 4. node: <ip> dev caliX scope link
    node_routes = [" ".join(r.split()) for r in nsexec.run(node.ns, ["ip", "route"]).stdout.split("\n")]
    assert f"{ip} dev {host_if} scope link" in node_routes
    # 5. result: interfaces [host, container(sandbox)], ips[].interface=1, /32, no gateway
    assert [i["name"] for i in res["interfaces"]] == [host_if, "eth0"]
    assert "sandbox" not in res["interfaces"][0] and res["interfaces"][1]["sandbox"] == rec["netns"]
    assert res["ips"] == [{"address": f"{ip}/32", "interface": 1}]
    # the workload endpoint record
    wep = node.store_call(lambda s: s.get(keys.workload_endpoint("node-a", "net-test", rec["container_id"])))
    assert wep is not None
    doc = json.loads(wep.value)
    assert (doc["node"], doc["interface"], doc["ip"], doc["containerID"]) == ("node-a", host_if, f"{ip}/32",
                                                                              rec["container_id"])
    assert doc["mac"] == eth0["address"] and doc["labels"]["run"] == "net-test"
    assert doc["labels"]["projectcalico.org/namespace"] == "default"
    # proxy-ARP: the pod reaches its node, and 169.254.1.1 resolves to the host veth's MAC
    nsexec.run(pod, ["ping", "-c1", "-W2", NODE_IP])
    neigh = ipj(pod, "neigh", "show", "169.254.1.1")
    assert neigh and neigh[0]["lladdr"] == "ee:ee:ee:ee:ee:ee", f"pod net-test ARP for 169.254.1.1: {neigh}"
    invoke.check_pod(node.ns, "net-test")


def test_item_6_add_twice_is_idempotent_and_del_is_repeatable(node: CniNode) -> None:
    first = invoke.add_pod(node.ns, "p1", lab="t")
    before = links(node)
    again = invoke.add_pod(node.ns, "p1", lab="t")
    assert again["ips"] == first["ips"]
    after = links(node)
    assert {k: v["ifindex"] for k, v in after.items()} == {k: v["ifindex"] for k, v in before.items()}
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 1
    invoke.del_pod(node.ns, "p1", lab="t")
    invoke.del_pod(node.ns, "p1", lab="t")
    invoke.del_pod(node.ns, "never-existed", lab="t")
    assert not [n for n in links(node) if n.startswith("cali")]
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0


def test_item_8_lowest_first_release_last_in_a_26(node: CniNode) -> None:
    ips = [invoke.add_pod(node.ns, f"p{i}", lab="t")["ips"][0]["address"].split("/")[0] for i in range(3)]
    block = ipaddress.IPv4Network(f"{ips[0]}/26", strict=False)
    assert [ipaddress.IPv4Address(i) for i in ips] == [block.network_address + k for k in range(3)]
    assert node.store_call(lambda s: ipam.blocks_of(s, "node-a")) == [str(block)]
    invoke.del_pod(node.ns, "p0", lab="t")
    nxt = invoke.add_pod(node.ns, "p3", lab="t")["ips"][0]["address"].split("/")[0]
    assert ipaddress.IPv4Address(nxt) == block.network_address + 3, "a released address must be reused last"


def test_two_pods_ping_each_other_and_their_node(node: CniNode) -> None:
    a = invoke.add_pod(node.ns, "pod-a", lab="t")["ips"][0]["address"].split("/")[0]
    b = invoke.add_pod(node.ns, "pod-b", lab="t")["ips"][0]["address"].split("/")[0]
    pa, pb = invoke.pod_ns(node.ns, "pod-a"), invoke.pod_ns(node.ns, "pod-b")
    nsexec.run(pa, ["ping", "-c1", "-W2", b])
    nsexec.run(pb, ["ping", "-c1", "-W2", a])
    nsexec.run(pa, ["ping", "-c1", "-W2", NODE_IP])


def test_40_parallel_adds_then_dels(node: CniNode) -> None:
    tunnel = node.store_call(lambda s: ipam.tunnel_address(s, "node-a"))
    names = [f"par-{i}" for i in range(40)]
    with ThreadPoolExecutor(max_workers=40) as ex:
        results = list(ex.map(lambda n: invoke.add_pod(node.ns, n, lab="t"), names))
    ips = [r["ips"][0]["address"] for r in results]
    assert len(set(ips)) == 40 and f"{tunnel}/32" not in ips, f"duplicate addresses: {sorted(ips)}"
    assert len([n for n in links(node) if n.startswith("cali")]) == 40
    assert len(node.store_call(lambda s: ipam.blocks_of(s, "node-a"))) == 1
    with ThreadPoolExecutor(max_workers=40) as ex:
        list(ex.map(lambda n: invoke.del_pod(node.ns, n, lab="t"), names))
    usage = node.store_call(lambda s: ipam.usage(s))
    assert usage["handles"] == [ipam.tunnel_handle("node-a")] and usage["allocated"] == 1, usage
    assert not [n for n in links(node) if n.startswith("cali")]
    assert node.store_call(lambda s: s.range(keys.workload_endpoints())) == []
    assert nsexec.run(node.ns, ["ip", "netns", "list"]).stdout.strip() == ""


def test_small_pool_borrows_then_exhausts_naming_the_pool(netns_factory: Any, tmp_path: Path) -> None:
    node = make_node(netns_factory, tmp_path, pool="10.9.0.0/28", block_size=29)
    try:
        # another node holds one address, so it owns the second of the two /29 blocks
        other = node.store_call(lambda s: ipam.auto_assign(s, "node-b", "k8s-pod-network.other",
                                                           ipam.Pool("10.9.0.0/28", 29)))
        got = [invoke.add_pod(node.ns, f"p{i}", lab="t") for i in range(15)]
        assert not [r for r in got if set(r) - {"cniVersion", "interfaces", "ips", "routes", "dns"}], \
            f"ADD results carry keys the CNI spec does not define: {[sorted(r) for r in got][:2]}"
        # what was borrowed, and from which block, is the endpoint record's to say, not the result's
        weps = node.store_call(lambda s: [json.loads(kv.value) for kv in s.range(keys.workload_endpoints("node-a"))])
        borrowed = [w for w in weps if w["borrowed"]]
        assert len(borrowed) == 7 and all(w["block"] == other.block for w in borrowed), weps
        with pytest.raises(invoke.CniFailed) as err:
            invoke.add_pod(node.ns, "one-too-many", lab="t")
        assert err.value.code == 100 and "10.9.0.0/28" in str(err.value), str(err.value)
        assert invoke.read_record(node.ns, "one-too-many") is None  # the failed ADD was cleaned up
        assert len([n for n in links(node) if n.startswith("cali")]) == 15
    finally:
        node.cleanup()


def test_chained_conflist_passes_prev_result_and_dels_in_reverse(node: CniNode) -> None:
    """labnet followed by Debian's `tuning` plugin: prevResult flows on, CHECK and DEL walk the chain."""
    import shutil

    shutil.copy2("/usr/lib/cni/tuning", node.paths.opt_cni_bin / "tuning")
    path = node.paths.etc_cni_netd / "10-labnet.conflist"
    doc = json.loads(path.read_text())
    doc["plugins"].append({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.log_martians": "1"}})
    path.write_text(json.dumps(doc))
    res = invoke.add_pod(node.ns, "chained", lab="t")
    assert [i["name"] for i in res["interfaces"]][1] == "eth0" and res["ips"][0]["interface"] == 1
    pod = invoke.pod_ns(node.ns, "chained")
    assert nsexec.run(pod, ["cat", "/proc/sys/net/ipv4/conf/eth0/log_martians"]).stdout.strip() == "1"
    invoke.check_pod(node.ns, "chained")
    invoke.del_pod(node.ns, "chained", lab="t")
    assert not [n for n in links(node) if n.startswith("cali")]
    assert node.store_call(lambda s: ipam.usage(s))["allocated"] == 0


def test_pod_mtu_follows_the_encapsulation_or_the_configured_value(node: CniNode) -> None:
    """Underlay 1500: IPIP gives 1480, VXLAN 1450, and a configured MTU wins over both."""
    def cluster(**pool_over: Any) -> None:
        def put(s: Any) -> None:
            doc = json.loads(s.get(keys.config("cluster")).value)
            mtu = pool_over.pop("mtu", None)
            doc["pool"].update(pool_over)
            if mtu:
                doc["mtu"] = mtu
            s.put(keys.config("cluster"), json.dumps(doc))
        node.store_call(put)

    for pod, change, want in (("m-ipip", {}, 1480), ("m-vxlan", {"vxlan": "always", "ipip": "never"}, 1450),
                              ("m-fixed", {"mtu": 1400}, 1400)):
        cluster(**change)
        res = invoke.add_pod(node.ns, pod, lab="t")
        rec = invoke.read_record(node.ns, pod)
        assert rec is not None
        eth0 = ipj(node.ns.pod(pod, rec["netns"]), "link", "show", "eth0")[0]
        host = links(node)[res["interfaces"][0]["name"]]
        assert (eth0["mtu"], host["mtu"]) == (want, want), \
            f"node {node.name} pod {pod}: expected MTU {want} on eth0 and {host['ifname']}, " \
            f"found {eth0['mtu']} and {host['mtu']}"
        lo = ipj(node.ns.pod(pod, rec["netns"]), "link", "show", "lo")[0]
        assert "UP" in lo["flags"], f"pod {pod}: lo expected up, flags {lo['flags']}"


RECORDER = """#!/usr/bin/python3
import json, os, subprocess, sys
conf = json.load(sys.stdin)
cali = sum(1 for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
           if ": cali" in line)
with open("/var/lib/labnet/cni-order.log", "a") as f:
    f.write(f"{os.environ['CNI_COMMAND']} {conf['type']} cali={cali}\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    prev = conf.get("prevResult") or {"interfaces": [], "ips": []}
    print(json.dumps({**prev, "cniVersion": conf["cniVersion"]}))
"""


def test_conflist_plugins_add_in_order_and_del_in_reverse(node: CniNode) -> None:
    """Two recording plugins around labnet: ADD runs first, labnet, last; DEL last, labnet, first
    (each logs how many cali veths the node has when it runs)."""
    for name in ("rec-first", "rec-last"):
        path = node.paths.opt_cni_bin / name
        path.write_text(RECORDER)
        path.chmod(0o755)
    conflist = node.paths.etc_cni_netd / "10-labnet.conflist"
    doc = json.loads(conflist.read_text())
    doc["plugins"] = [{"type": "rec-first"}, *doc["plugins"], {"type": "rec-last"}]
    conflist.write_text(json.dumps(doc))
    invoke.add_pod(node.ns, "ordered", lab="t")
    invoke.del_pod(node.ns, "ordered", lab="t")
    log = (node.paths.var_lib_labnet / "cni-order.log").read_text().splitlines()
    assert log == ["ADD rec-first cali=0", "ADD rec-last cali=1", "DEL rec-last cali=1", "DEL rec-first cali=0"], \
        f"node {node.name}: expected ADD in conflist order and DEL in reverse around labnet, got {log}"
