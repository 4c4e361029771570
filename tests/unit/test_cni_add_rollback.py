"""The ADD path's order and its undo: the veth pair is made while IPAM runs, finished once the
address is known, and the workload endpoint is written meanwhile. Whatever step fails, the
ADD gives back what it took (address, endpoint, veth) and answers with the CNI error."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from labnet import ipam
from labnet.cni import datapath, ipam_plugin, plugin, settings
from labnet.etcd import keys
from labnet.ipam.memstore import MemStore


class Pool:
    def __init__(self, store: MemStore) -> None:
        self.store = store

    def get(self, conf: dict[str, Any]) -> MemStore:
        return self.store


class FakePair:
    created = True
    pod_mac = "0a:58:0a:00:00:01"
    host_if = ifname = netns = ""


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A MemStore with the cluster settings, a fake datapath that records calls."""
    store = MemStore()
    store.put(keys.config("cluster"), json.dumps({"pool": {"cidr": "10.100.0.0/16", "ipip": "always"}}))
    calls: list[str] = []
    w: dict[str, Any] = {"store": store, "calls": calls, "finish_error": None, "netns": tmp_path / "ns"}
    w["netns"].touch()

    def prepare(host_if: str, netns: str, ifname: str) -> FakePair:
        calls.append("prepare")
        return FakePair()

    def finish(pair: FakePair, address: str, mtu: int, address6: str | None = None) -> datapath.Endpoint:
        calls.append(f"finish {address} mtu={mtu}")
        if w["finish_error"]:
            raise w["finish_error"]
        return datapath.Endpoint("caliX", datapath.HOST_MAC, "eth0", pair.pod_mac, address, True)

    monkeypatch.setattr(datapath, "prepare", prepare)
    monkeypatch.setattr(datapath, "finish", finish)
    monkeypatch.setattr(datapath, "discard", lambda pair: calls.append("discard"))
    monkeypatch.setattr(datapath, "teardown", lambda *a: calls.append("teardown") or True)
    monkeypatch.setattr(datapath, "underlay_mtu", lambda: 1500)
    return w


def add(w: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    env: Mapping[str, str] = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(w["netns"]),
                              "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
                              "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "labnet", "nodename": "n1",
            "etcd_endpoints": "http://127.0.0.1:2379", "ipam": {"type": "labnet-ipam"}}
    pool, memo = Pool(w["store"]), settings.RequestMemo()

    def run_ipam(environ: Mapping[str, str], stdin: bytes) -> tuple[int, bytes, str]:
        return ipam_plugin.handle(environ, stdin, store_pool=pool, memo=memo)

    code, out, _ = plugin.handle(env, json.dumps(conf).encode(), store_pool=pool, ipam=run_ipam, memo=memo)
    return code, json.loads(out)


def held(w: dict[str, Any]) -> list[str]:
    return [a.address for a in ipam.lookup(w["store"], "k8s-pod-network.c1")]


def weps(w: dict[str, Any]) -> list[str]:
    return [kv.key for kv in w["store"].range(keys.workload_endpoints("n1"))]


def test_add_prepares_then_finishes_and_records_the_endpoint(world: dict[str, Any]) -> None:
    code, out = add(world)
    assert code == 0, out
    address = out["ips"][0]["address"].split("/")[0]
    assert world["calls"] == ["prepare", f"finish {address} mtu=1480"], world["calls"]  # IPIP: 1500 - 20
    assert held(world) == [address]
    doc = json.loads(world["store"].get(weps(world)[0]).value)
    assert (doc["ip"], doc["mac"], doc["mtu"]) == (f"{address}/32", FakePair.pod_mac, 1480), doc


def test_finish_failing_gives_back_the_address_and_the_endpoint(world: dict[str, Any]) -> None:
    world["finish_error"] = OSError(22, "Invalid argument")
    code, out = add(world)
    assert code == 1 and out["code"] == plugin.DATAPATH_FAILED, out
    assert "node n1" in out["msg"] and "Invalid argument" in out["msg"], out["msg"]
    assert held(world) == [], f"address still held after a failed ADD: {held(world)}"
    assert weps(world) == [], f"workload endpoint left after a failed ADD: {weps(world)}"


def test_ipam_failing_discards_the_prepared_pair(world: dict[str, Any]) -> None:
    world["store"].put(keys.config("cluster"), json.dumps({"pool": {"cidr": "10.100.0.0/32", "block_size": 32}}))
    world["store"].put(keys.block("10.100.0.0/32"), ipam.Block("10.100.0.0/32", "host:other", ["x"], []).encode())
    code, out = add(world)
    assert code == 1 and out["code"] == 100 and "10.100.0.0/32" in out["msg"], out
    assert world["calls"] == ["prepare", "discard"], world["calls"]
    assert weps(world) == []


def test_endpoint_write_failing_tears_down_and_gives_back(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    store = world["store"]

    def put(key: str, value: bytes | str, lease: int | None = None) -> int:
        if key.startswith(keys.workload_endpoints("n1")):
            raise settings.DatastoreUnavailable("etcd went away")
        return MemStore.put(store, key, value, lease)

    monkeypatch.setattr(store, "put", put)
    code, out = add(world)
    assert code == 1 and out["code"] == 11 and "unreachable" in out["msg"], out
    assert "teardown" in world["calls"], world["calls"]
    assert held(world) == [], f"address still held after a failed ADD: {held(world)}"
