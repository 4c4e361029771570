"""etcd goes away (SIGSTOP, then SIGKILL) under a running lab.

While it is away: pods that exist keep talking (the datapath does not need the datastore), a
new pod's ADD fails with CNI code 11 (try again later) and a message naming etcd, and doctor
says etcd is down. Once it is back (SIGCONT, or restarted with its recorded argv), ADD works.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from _labtools import TOPOLOGIES, labnet

from labnet.checks import assert_ping
from labnet.etcd.server import etcd_env
from labnet.lab.view import LabView
from labnet.nsexec import pid_alive, spawn
from labnet.wait import poll

LAB = "t-etcdout"


@pytest.fixture(scope="module")
def view() -> Iterator[LabView]:
    if os.geteuid() != 0:
        pytest.skip("needs root to build a lab")
    labnet("up", str(TOPOLOGIES / "minimal.yaml"), "--name", LAB, "-q")
    try:
        yield LabView(LAB)
    finally:
        labnet("down", "--name", LAB, check=False)


def _etcd_pid(view: LabView) -> int:
    (entry,) = [e for e in view.journal.of_kind("process") if e["what"] == "etcd"]
    return int(entry["pid"])


def _pods_still_talk(view: LabView) -> None:
    assert_ping(view.pod_ns("pod-1"), view.pod("pod-2")["ip"], count=3, timeout=10)
    assert_ping(view.pod_ns("pod-2"), view.pod("pod-1")["ip"], count=3, timeout=10)


def _node_pod_state() -> str:
    """What of its pods node-1 holds: netns files and pod records."""
    return labnet("exec", "-l", LAB, "node-1", "--", "sh", "-c",
                  "ls /var/run/netns /var/lib/labnet/pods 2>/dev/null | sort").stdout


def _add_fails_with_try_again(pod: str) -> None:
    before = _node_pod_state()
    proc = labnet("pod", "add", "node-1", pod, "-l", LAB, check=False, timeout=180)
    assert proc.returncode != 0, f"pod add {pod} with etcd away succeeded: {proc.stdout}"
    assert "code 11" in proc.stderr and "etcd" in proc.stderr, \
        f"pod add {pod} with etcd away: expected CNI code 11 naming etcd, got: {proc.stderr}"
    # a failed add removes everything it made: the pod's netns and record on the node, its journal entry
    assert _node_pod_state() == before, f"pod add {pod} failed but left on node-1:\n{_node_pod_state()}\nbefore:\n{before}"
    pods = json.loads(labnet("status", "-l", LAB, "--json").stdout)[0]["pods"]
    assert pod not in pods, f"pod add {pod} failed but the lab still records it: {pods}"
    # the runtime's part after a failed ADD: DEL (which must succeed, etcd or not, once it is back)


def _doctor_says_etcd(words: str) -> None:
    proc = labnet("doctor", "-l", LAB, "--json", check=False, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = [f for f in json.loads(proc.stdout)["findings"] if f["node"] == "etcd"]
    assert any(words in f["problem"] for f in found), found


def _add_works(pod: str) -> str:
    labnet("pod", "del", "node-1", pod, "-l", LAB, timeout=180)
    out = poll(lambda: labnet("pod", "add", "node-1", pod, "-l", LAB, timeout=180), lambda p: p.returncode == 0,
               timeout=60, what=f"pod add node-1 {pod} to work again with etcd back").stdout
    ip = LabView(LAB).pod(pod)["ip"]
    assert ip and ip in out, out
    assert_ping(LabView(LAB).pod_ns(pod), LabView(LAB).pod("pod-2")["ip"], timeout=15)
    return str(ip)


def test_etcd_stopped(view: LabView) -> None:
    pid = _etcd_pid(view)
    _pods_still_talk(view)
    os.kill(pid, signal.SIGSTOP)
    try:
        _pods_still_talk(view)
        _add_fails_with_try_again("pod-3")
        _doctor_says_etcd("is stopped")
        _pods_still_talk(view)
    finally:
        os.kill(pid, signal.SIGCONT)
    _add_works("pod-3")


def test_etcd_killed_and_restarted(view: LabView, netns_factory) -> None:  # type: ignore[no-untyped-def]
    pid = _etcd_pid(view)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGKILL)
    poll(lambda: pid_alive(pid), lambda alive: not alive, timeout=10, what=f"etcd pid {pid} to die")
    new = None
    try:
        _pods_still_talk(view)
        _add_fails_with_try_again("pod-4")
        _doctor_says_etcd("is not running")
        _pods_still_talk(view)
        # back with the same argv (same data dir and certificates), in the same node
        log = view.runtime.host_path("node-1", "/var/log/labnet/etcd-restarted.log")
        new = netns_factory.track_pid(spawn(view.ns("node-1"), [a.decode() for a in argv], log=log, env=etcd_env()))
        _add_works("pod-4")
        _pods_still_talk(view)
    finally:
        if new is not None and pid_alive(new):
            os.kill(new, signal.SIGTERM)
            poll(lambda: pid_alive(new), lambda alive: not alive, timeout=15, what=f"restarted etcd {new} to exit")
