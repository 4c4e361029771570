"""The seed underlay comes up, behaves, and goes away without a trace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest
from _labtools import TOPOLOGIES, lab_exec, lab_pids, labnet, snapshot

from labnet import paths
from labnet.lab.journal import Journal
from labnet.wait import poll

SEED = str(TOPOLOGIES / "seed.yaml")


def root_netns_state() -> dict[str, list[tuple[str, ...]]]:
    """The root network namespace as `ip -j` shows it: links, addresses, IPv4 and IPv6 routes of all tables."""
    def ip(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
        return json.loads(out) if out.strip() else []

    keys = ("dst", "dev", "gateway", "table", "protocol", "type", "scope", "prefsrc")
    return {
        "links": sorted((str(x["ifindex"]), x["ifname"]) for x in ip("link")),
        "addresses": sorted((x["ifname"], a["family"], a["local"], str(a["prefixlen"]))
                            for x in ip("addr") for a in x.get("addr_info", [])),
        "routes": sorted(tuple(str(r.get(k, "")) for k in keys)
                         for fam in ("-4", "-6") for r in ip(fam, "route", "show", "table", "all")),
    }


# What `up --timings` printed, and the root namespace before `up`, per lab: the tests read them.
UP: dict[str, dict[str, Any]] = {}


@pytest.fixture
def seed_lab():
    """The seed lab under a test-only name, removed afterwards whatever happens."""
    name = "t-seed"
    before = snapshot(name)
    root = root_netns_state()
    res = labnet("up", SEED, "--name", name, "-q", "--timings")
    UP[name] = {"timings": res.stdout, "root": root}
    pids = lab_pids(name)
    try:
        yield name
    finally:
        labnet("down", "--name", name, check=False)
    left = snapshot(name, pids).leftovers(before)
    assert not left, f"lab {name} left things behind after down: {left}"


def test_seed_underlay_reaches_across_the_router(seed_lab: str) -> None:
    lab = seed_lab
    out = lab_exec(lab, "ubuntu-3", "ping", "-c1", "-W2", "192.168.50.74").stdout
    assert "1 received" in out, f"ubuntu-3 -> ubuntu-4 (192.168.50.74) via gw: {out}"
    route = lab_exec(lab, "ubuntu-3", "ip", "route", "show", "default").stdout
    assert "default via 10.20.30.1 dev ens32" in route, f"ubuntu-3 default route: {route!r}"
    for node in ("ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"):
        res = lab_exec(lab, node, "ping", "-c1", "-W2", "203.0.113.10", check=False)
        assert res.returncode == 0, f"{node} cannot reach ext 203.0.113.10: {res.stdout}{res.stderr}"


def test_nodes_have_their_own_hostname_and_dirs(seed_lab: str) -> None:
    lab = seed_lab
    assert lab_exec(lab, "ubuntu-3", "hostname").stdout.strip() == "ubuntu-3"
    assert lab_exec(lab, "gw", "hostname").stdout.strip() == "gw"
    # A file written to ubuntu-3's /etc/cni/net.d is seen there and nowhere else.
    lab_exec(lab, "ubuntu-3", "sh", "-c", "echo mine > /etc/cni/net.d/99-probe.conf")
    assert lab_exec(lab, "ubuntu-3", "sh", "-c", "cat /etc/cni/net.d/99-probe.conf").stdout.strip() == "mine"
    other = lab_exec(lab, "ubuntu-4", "ls", "/etc/cni/net.d").stdout
    assert "99-probe.conf" not in other, f"ubuntu-4 sees ubuntu-3's file: {other!r}"
    assert not os.path.exists("/etc/cni/net.d/99-probe.conf"), "the host sees a node's private file"
    for d in ("/opt/cni/bin", "/var/lib/labnet", "/var/log/labnet", "/var/run"):
        mounts = lab_exec(lab, "ubuntu-3", "findmnt", "-n", "-o", "SOURCE", d).stdout
        assert f"labs/{lab}/nodes/ubuntu-3" in mounts, f"ubuntu-3 {d} is not private: {mounts!r}"


def test_underlay_details(seed_lab: str) -> None:
    lab = seed_lab
    links = json.loads(lab_exec(lab, "ubuntu-3", "ip", "-j", "addr").stdout)
    by_name = {x["ifname"]: x for x in links}
    assert set(by_name) >= {"lo", "ens32"}, f"ubuntu-3 interfaces: {sorted(by_name)}"
    assert by_name["lo"]["operstate"] in ("UNKNOWN", "UP")
    addrs = [a for a in by_name["ens32"]["addr_info"]]
    assert [(a["family"], a["local"], a["prefixlen"]) for a in addrs] == [("inet", "10.20.30.73", 24)], \
        f"ubuntu-3 ens32 addresses (IPv6 must be off): {addrs}"
    fwd = lab_exec(lab, "gw", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    assert fwd == "1", f"router gw ip_forward: expected 1, got {fwd}"
    fwd = lab_exec(lab, "ext", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    assert fwd == "0", f"host ext ip_forward: expected 0, got {fwd}"
    # IPv6 is off unless the topology asks (`ipv6: true`: tests/lab/test_lab_cli.py).
    for m in ("ubuntu-3", "gw", "ext"):
        off = lab_exec(lab, m, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").stdout.strip()
        assert off == "1", f"{m}: net.ipv6.conf.all.disable_ipv6 expected 1 (no ipv6: in seed.yaml), got {off}"
    # Nothing of the lab is in the root namespace while the whole seed lab runs (underlay, etcd, CNI,
    # agents, pods): its links, addresses and routes are exactly what they were before `up`.
    before, now = UP[seed_lab]["root"], root_netns_state()
    for what in before:
        assert now[what] == before[what], (
            f"root netns {what} changed while lab {seed_lab} is up: "
            f"added {sorted(set(now[what]) - set(before[what]))}, removed {sorted(set(before[what]) - set(now[what]))}")
    # and the lab's pods really are up somewhere else
    rows = json.loads(labnet("status", "-l", seed_lab, "--json").stdout)
    assert set(rows[0]["pods"]) == {"net-test", "net-test-2"}, f"lab {seed_lab} pods: {rows[0]['pods']}"


def test_second_up_changes_nothing(seed_lab: str) -> None:
    from labnet.lab.phases import PHASES

    # The fixture's `up --timings`: JSON with every phase, in order.
    first = json.loads(UP[seed_lab]["timings"])
    want = [n for n, _ in PHASES]
    assert first["lab"] == seed_lab and first["changed"] is True, f"up --timings: {first}"
    assert list(first["phases"]) == want, f"up --timings phases: expected {want} in order, got {list(first['phases'])}"
    assert all(isinstance(t, float | int) and t >= 0 for t in first["phases"].values()), first["phases"]
    assert abs(first["total"] - sum(first["phases"].values())) < 0.01, f"total {first['total']} != sum {first['phases']}"
    again = json.loads(labnet("up", SEED, "--name", seed_lab, "--timings").stdout)
    assert again == {"lab": seed_lab, "changed": False, "phases": {}, "total": 0}, f"second up --timings: {again}"

    before = json.loads(labnet("status", "-l", seed_lab, "--json").stdout)
    out = labnet("up", SEED, "--name", seed_lab).stdout
    assert "already up; nothing changed" in out
    after = json.loads(labnet("status", "-l", seed_lab, "--json").stdout)
    assert before == after


def test_status_lists_machines(seed_lab: str) -> None:
    rows = json.loads(labnet("status", "-l", seed_lab, "--json").stdout)
    assert rows[0]["state"] == "up"
    machines = rows[0]["machines"]
    assert machines["ubuntu-4"]["interfaces"][0]["address"] == "192.168.50.74/24"
    assert set(machines) == {"gw", "ext", "ubuntu-1", "ubuntu-2", "ubuntu-3", "ubuntu-4", "ubuntu-5"}
    table = labnet("status", "-l", seed_lab).stdout
    assert "ubuntu-3" in table and "10.20.30.73/24" in table


def test_two_labs_side_by_side() -> None:
    names = ("t-two-a", "t-two-b")
    befores = {n: snapshot(n) for n in names}
    try:
        labnet("up", SEED, "--name", names[0], "-q")
        labnet("up", str(TOPOLOGIES / "two-labs-b.yaml"), "--name", names[1], "-q")
        for n in names:
            rows = json.loads(labnet("status", "-l", n, "--json").stdout)
            assert rows[0]["state"] == "up", f"lab {n}: {rows}"
        out = lab_exec(names[0], "ubuntu-3", "ping", "-c1", "-W2", "192.168.50.74").stdout
        assert "1 received" in out
        # Same addresses may exist in both labs: they never see each other.
        assert lab_exec(names[0], "ubuntu-3", "hostname").stdout.strip() == "ubuntu-3"
    finally:
        for n in names:
            labnet("down", "--name", n, check=False)
    for n in names:
        left = snapshot(n).leftovers(befores[n])
        assert not left, f"lab {n} left: {left}"


def test_down_works_after_the_file_moved(tmp_path) -> None:
    name = "t-moved"
    before = snapshot(name)
    copy = tmp_path / "lab.yaml"
    shutil.copy(SEED, copy)
    labnet("up", str(copy), "--name", name, "-q")
    copy.unlink()
    labnet("down", "--name", name)
    assert not snapshot(name).leftovers(before)


def _start_up(name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "labnet.cli", "up", SEED, "--name", name, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal_entries(name: str) -> int:
    p = paths.lab_dir(name) / "journal.json"
    try:  # the file and its tail (labnet.lab.journal)
        return len(Journal.load(p).entries)
    except (OSError, ValueError):
        return 0


def test_kill9_midway_then_gc_leaves_nothing() -> None:
    name = "t-kill9"
    before = snapshot(name)
    proc = _start_up(name)
    poll(lambda: _journal_entries(name), lambda n: n >= 8, timeout=30,
         what=f"lab {name}'s journal to reach 8 entries (mid-build)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(name).netns, "the kill came too late or too early: nothing was built"
    out = labnet("gc").stdout
    assert f"lab {name}" in out, f"gc did not collect {name}: {out}"
    left = snapshot(name).leftovers(before)
    assert not left, f"after kill -9 and gc, lab {name} left: {left}"


def test_ctrl_c_during_up_rolls_back() -> None:
    name = "t-sigint"
    before = snapshot(name)
    proc = _start_up(name)
    poll(lambda: _journal_entries(name), lambda n: n >= 8, timeout=30, what=f"lab {name} mid-build")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"labnet up after Ctrl-C: exit {proc.returncode}, stderr {err}"
    assert "rolled back" in err
    left = snapshot(name).leftovers(before)
    assert not left, f"after Ctrl-C, lab {name} left: {left}"
