"""labnet.cni.nlbatch against the kernel: a batch's requests run in order, each gets its own
answer (errors with the kernel's extended-ack text), and the ADD's datapath built through it
matches what `ip` shows. Also: an ADD failing half-way leaves no veth behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from typing import Any

import pytest

from labnet.cni import datapath, nlbatch
from labnet.etcd.netns import call_in_netns

HOST_IF = datapath.host_veth_name("c1", "default", "nlbatch")


def ip_json(ns: str, *args: str) -> Any:
    proc = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"`ip -n {ns} -j {' '.join(args)}` exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout or "[]")


def make_pair(node: Any, pod: Any) -> tuple[nlbatch.Answer, nlbatch.Answer]:
    def go() -> tuple[nlbatch.Answer, nlbatch.Answer]:
        sock = nlbatch.Socket()
        fd = os.open(pod.netns, os.O_RDONLY)
        try:
            made, found = sock.batch([nlbatch.veth_add(HOST_IF, datapath.HOST_MAC, "eth0", fd),
                                      nlbatch.link_get(HOST_IF)])
        finally:
            os.close(fd)
            sock.close()
        return made, found
    return call_in_netns(node.netns, go)


def test_batch_answers_each_request_in_order(netns_factory: Any) -> None:
    node, pod = netns_factory("nbnode"), netns_factory("nbpod")
    made, found = make_pair(node, pod)
    made.ok()
    index, mac = nlbatch.index_and_mac(found)
    host = ip_json(node.name, "link", "show", HOST_IF)[0]
    assert (index, mac) == (host["ifindex"], datapath.HOST_MAC), f"node {node.name}: {HOST_IF} is {host}"
    assert ip_json(pod.name, "link", "show", "eth0"), f"pod {pod.name}: eth0 expected, not found"
    again, _ = make_pair(node, pod)
    assert again.error == errno.EEXIST, f"second create of {HOST_IF}: expected EEXIST, got {again.error}"

    def bad_then_good() -> list[nlbatch.Answer]:
        sock = nlbatch.Socket()
        try:
            return sock.batch([nlbatch.addr_add(index, "10.1.2.3", 40, HOST_IF),   # invalid prefix
                               nlbatch.route("10.9.9.9", 32, 999999, datapath.RT_SCOPE_LINK, 3),  # no such dev
                               nlbatch.link_up(index, 1400, HOST_IF)])
        finally:
            sock.close()
    bad, nodev, up = call_in_netns(node.netns, bad_then_good)
    assert bad.error == errno.EINVAL and "prefix" in bad.message.lower(), (bad.error, bad.message)
    with pytest.raises(nlbatch.NetlinkFailed) as err:
        bad.ok()
    assert f"add 10.1.2.3/40 to {HOST_IF}" in str(err.value) and "Invalid argument" in str(err.value), str(err.value)
    assert nodev.error == errno.ENODEV, f"route via ifindex 999999: expected ENODEV, got {nodev.error}"
    assert up.error == 0, f"a failed request must not stop the next one: link up answered {up.error}"
    host = ip_json(node.name, "link", "show", HOST_IF)[0]
    assert host["mtu"] == 1400 and "UP" in host["flags"], f"node {node.name}: {HOST_IF} after link_up: {host}"


def test_failure_in_finish_removes_the_pair_this_add_made(netns_factory: Any) -> None:
    node, pod = netns_factory("nbnode"), netns_factory("nbpod")
    pair = call_in_netns(node.netns, datapath.prepare, HOST_IF, pod.netns, "eth0")
    assert pair.created and pair.pod_mac, pair
    with pytest.raises(nlbatch.NetlinkFailed):
        call_in_netns(node.netns, datapath.finish, pair, "10.1.2.3", 70000)  # an MTU veth refuses
    assert not ip_json(node.name, "link", "show", "type", "veth"), f"node {node.name}: veth left behind"
    assert not [link for link in ip_json(pod.name, "link", "show") if link["ifname"] == "eth0"], \
        f"pod {pod.name}: eth0 left behind"


def test_discard_keeps_a_pair_it_did_not_make(netns_factory: Any) -> None:
    node, pod = netns_factory("nbnode"), netns_factory("nbpod")
    first = call_in_netns(node.netns, datapath.setup, HOST_IF, pod.netns, "eth0", "10.1.2.3", 1400)
    assert first.created
    pair = call_in_netns(node.netns, datapath.prepare, HOST_IF, pod.netns, "eth0")
    assert not pair.created, "the names were taken: prepare must not claim the pair"
    call_in_netns(node.netns, datapath.discard, pair)  # e.g. this repeated ADD's IPAM failed
    assert ip_json(node.name, "link", "show", HOST_IF), f"node {node.name}: {HOST_IF} of the first ADD was removed"
    assert call_in_netns(node.netns, datapath.check, HOST_IF, pod.netns, "eth0", "10.1.2.3") == []
