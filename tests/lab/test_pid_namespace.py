"""Each machine has a PID namespace of its own, on both runtimes: a node sees only its own
processes (its /proc is its own), so it cannot reach the host's files through another
process's /proc/<pid>/root (the lab's CA key was readable that way). The pids labnet shows and
signals are still the host's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from _dockertools import labnet_dockerd  # noqa: F401  (the session fixture)
from _labtools import TOPOLOGIES, lab_exec, labnet, snapshot

from labnet import nsexec, paths
from labnet.errors import CommandFailed
from labnet.lab.view import LabView
from labnet.nsexec import pid_alive, proc_starttime, same_process
from labnet.wait import poll

MINIMAL = str(TOPOLOGIES / "minimal.yaml")


def _pidns(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def _host_pids_in(pidns: int) -> set[int]:
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if _pidns(p) == pidns:
                    out.add(int(p))
            except OSError:
                continue
    return out


def _inner_pid(pid: int) -> int:
    """The pid in the innermost namespace (the last NSpid field) of host pid `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"pid {pid}: no NSpid line")


def _a_timed_out_command_goes_with_its_caller(lab: str, node_ns: int) -> None:
    """A command run inside the node whose caller gives up (a timeout SIGKILLs what it started)
    dies too: it would otherwise hold the caller's pipes, and the caller would wait forever."""
    ns = LabView(lab).ns("node-1")
    with pytest.raises(subprocess.TimeoutExpired):
        nsexec.run(ns, ["sh", "-c", "echo started; exec sleep 300"], timeout=1)
    poll(lambda: [p for p in _host_pids_in(node_ns) if Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x00300\x00"],
         lambda left: not left, timeout=10, what=f"{lab} node-1: the timed-out sleep to die with its caller")
    # and a signal to the caller reaches the command
    proc = subprocess.Popen(ns.argv(["sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"]),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(timeout=10) == 42, "SIGTERM to the caller reaches the command inside the node"
    proc.stdout.close()


@pytest.mark.parametrize("runtime", ["netns", "docker"])
def test_a_node_sees_only_its_own_processes(runtime: str, request: pytest.FixtureRequest) -> None:
    if runtime == "docker":
        request.getfixturevalue("labnet_dockerd")
    lab = f"t-pidns-{runtime[:2]}"
    before = snapshot(lab)
    labnet("up", MINIMAL, "--name", lab, "--runtime", runtime, "-q", timeout=900)
    try:
        nsfile = paths.ns_dir(lab) / "node-1.pid"
        node_ns = os.stat(nsfile).st_ino
        assert node_ns != _pidns("self"), f"{lab} node-1: PID namespace {node_ns} is the host's"
        # What node-1 lists in its /proc is exactly what lives in its PID namespace, not the host's
        seen = lab_exec(lab, "node-1", "sh", "-c", "ls -d /proc/[0-9]* | wc -l").stdout.strip()
        host_side = _host_pids_in(node_ns)
        assert 2 <= int(seen) <= len(host_side) + 3, \
            f"{lab} node-1 sees {seen} processes; its PID namespace holds {len(host_side)}: {sorted(host_side)}"
        assert os.getpid() not in host_side
        # The lab's CA key, which the host keeps in the lab's state directory: no process of the
        # node reaches it through any /proc/<pid>/root
        keys = list(paths.lab_dir(lab).rglob("ca-key.pem"))
        assert keys, f"{lab}: no CA key under {paths.lab_dir(lab)}"
        probe = "; ".join(f"cat /proc/[0-9]*/root{k} 2>/dev/null" for k in keys) + "; true"
        leaked = lab_exec(lab, "node-1", "sh", "-c", probe).stdout
        assert "PRIVATE KEY" not in leaked, f"{lab} node-1 read the lab's CA key {keys} through /proc"
        # status shows host pids: the node process is alive here, in the node's PID namespace,
        # with another number inside; killing it there restarts it (the lab's supervisor)
        rows = json.loads(labnet("status", "-l", lab, "--json").stdout)[0]["processes"]
        mine = {p["what"]: int(p["pid"]) for p in rows if p["node"] == "node-1"}
        assert {"etcd", "node-process"} <= set(mine), rows
        for what, pid in mine.items():
            assert _pidns(pid) == node_ns, f"{lab} node-1: {what} pid {pid} is not in the node's PID namespace"
        inner = _inner_pid(mine["node-process"])
        comm = lab_exec(lab, "node-1", "cat", f"/proc/{inner}/comm").stdout.strip()
        assert comm == "labnet-node", f"{lab} node-1: inside, pid {inner} is {comm!r}, expected labnet-node"
        os.kill(mine["node-process"], signal.SIGKILL)
        again = poll(lambda: {p["what"]: p for p in json.loads(labnet("status", "-l", lab, "--json").stdout)[0][
                     "processes"] if p["node"] == "node-1"}.get("node-process"),
                     lambda p: p is not None and int(p["pid"]) != mine["node-process"], timeout=30,
                     what=f"{lab} node-1: a new node process after SIGKILL of pid {mine['node-process']}")
        assert again is not None and _pidns(int(again["pid"])) == node_ns
        _a_timed_out_command_goes_with_its_caller(lab, node_ns)
        members = {p: proc_starttime(p) for p in _host_pids_in(node_ns)}
    finally:
        labnet("down", "--name", lab, check=False)
    left = snapshot(lab).leftovers(before)
    assert not left, f"lab {lab} left: {left}"
    assert not pid_alive(mine["etcd"]), f"{lab}: etcd pid {mine['etcd']} outlived down"
    left_running = [p for p, start in members.items() if same_process(p, start)]
    assert not left_running, f"{lab}: processes of node-1's PID namespace still run after down: {left_running}"


def test_a_daemon_that_cannot_start_and_a_machine_whose_init_died_are_said_so() -> None:
    lab = "t-pidns-dead"
    before = snapshot(lab)
    labnet("up", MINIMAL, "--name", lab, "--runtime", "netns", "-q")
    try:
        view = LabView(lab)
        log = paths.lab_dir(lab) / "spawn-test.log"
        with pytest.raises(CommandFailed) as err:
            nsexec.spawn(view.ns("node-2"), ["/no/such/daemon", "--flag"], log=log)
        said = str(err.value)  # the last line of its log: the daemon's own or nsinit's, whichever came last
        assert "/no/such/daemon" in said and "exec" in said and "No such file or directory" in said, said
        init = next(e for e in view.journal.of_kind("nsinit") if e["node"] == "node-2")
        os.kill(int(init["pid"]), signal.SIGKILL)  # pid 1 of node-2: every process of node-2 goes with it
        poll(lambda: pid_alive(int(init["pid"])), lambda up: not up, timeout=10, what="node-2's init to die")
        status = labnet("status", "-l", lab).stdout
        assert f"machine node-2: its PID namespace init (pid {init['pid']}) is gone" in status, status
        again = labnet("up", MINIMAL, "--name", lab, check=False)
        assert again.returncode == 1 and "cannot repair: machine node-2" in again.stderr, again.stderr
        ran = lab_exec(lab, "node-2", "true", check=False)
        assert ran.returncode != 0 and "its init (pid 1) has exited" in ran.stderr, ran.stderr
    finally:
        labnet("down", "--name", lab, check=False)
    left = snapshot(lab).leftovers(before)
    assert not left, f"lab {lab} left: {left}"
