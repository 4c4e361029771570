"""The lab's supervisor (the zygote of `up`): it forks a node's process inside the machine's
namespaces, without an interpreter start-up, starts it again when it dies (new pid in its pid
file, a line in the node's log), leaves a held one stopped, answers on its control socket,
outlives `up` once handed the lab, and on SIGTERM stops what it runs before it exits."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from labnet import paths
from labnet.errors import LabnetError
from labnet.lab import supervisor
from labnet.lab.zygote import Zygote
from labnet.nsexec import NodeNS, children, pid_alive
from labnet.wait import poll

LAB = "t-sup"


def test_forks_restarts_holds_and_stops_node_processes(netns_factory, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABNET_STATE_DIR", str(tmp_path / "state"))  # the supervisor inherits it
    paths.lab_dir(LAB).mkdir(parents=True)
    (paths.lab_dir(LAB) / "journal.json").write_text("{}")  # once handed over, it lives as long as this
    ns = netns_factory("sup")
    z = Zygote(LAB, supervisor.log_path(LAB))
    netns_factory.track_pid(z.proc.pid)
    log, pidfile = tmp_path / "node.log", supervisor.pidfile(LAB, "n1")
    # a process that lives: the agent's own supervise verb running `sleep` (no etcd needed)
    argv = [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", str(tmp_path / "none.json"),
            "--", "sleep", "300"]
    try:
        assert z.serves(ns, argv)
        pid = z.spawn("n1", ns, argv, log=log, pidfile=pidfile)
        assert json.loads(pidfile.read_text())["pid"] == pid
        assert Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0] == str(z.proc.pid), \
            "the node process is the supervisor's own child (its exit status comes back to it)"
        sleeper = poll(lambda: children(pid), lambda cs: len(cs) == 1, timeout=20,
                       what=f"pid {pid} to start its child")[0]
        for p in (pid, sleeper):
            got, want = os.stat(f"/proc/{p}/ns/net").st_ino, os.stat(ns.netns).st_ino
            assert got == want, f"pid {p}: network namespace inode {got}, expected the machine's {want}"
        assert os.getsid(pid) == pid, f"pid {pid}: expected its own session"
        # another interpreter (the docker runtime's), or a module it does not serve: exec instead
        assert not z.serves(NodeNS("c", ns.netns, python="/usr/bin/python3"), argv)
        assert not z.serves(ns, [sys.executable, "-m", "labnet.cni.server"])
        # a bad request is answered with an error, and the supervisor goes on
        assert z.proc.stdin is not None and z.proc.stdout is not None
        z.proc.stdin.write(b'{"op": "start", "node": "n2", "pidfile": "/x", "fork": {"module": "os", "args": []}}\n')
        z.proc.stdin.flush()
        assert "not one the zygote serves" in json.loads(z.proc.stdout.readline())["error"]

        z.detach()  # `up` is done: it goes on alone
        assert z.proc.poll() is None
        os.kill(pid, signal.SIGKILL)
        again = poll(lambda: supervisor.read_pidfile(pidfile) or {}, lambda d: d.get("pid") not in (None, pid),
                     timeout=20, what="the supervisor to start n1 again under a new pid")
        assert again["restarts"] == 1 and pid_alive(again["pid"])
        said = log.read_text()
        assert f"node process pid {pid} killed by signal 9" in said and "restart #1" in said, said[-2000:]
        st = supervisor.ask(LAB, "status")
        assert st["pid"] == z.proc.pid and st["nodes"]["n1"]["state"] == "running", st
        assert st["nodes"]["n1"]["last_exit"] == "killed by signal 9", st

        # held: stopped by a fault, not started again until asked
        assert supervisor.ask(LAB, "hold", "n1")["pid"] == again["pid"]
        os.kill(again["pid"], signal.SIGTERM)
        poll(lambda: pid_alive(again["pid"]), lambda up: not up, timeout=20, what="the held node process to exit")
        assert supervisor.ask(LAB, "status")["nodes"]["n1"]["state"] == "held"
        assert supervisor.read_pidfile(pidfile)["held"] is True  # type: ignore[index]
        started = supervisor.ask(LAB, "start", "n1")["pid"]
        assert started != again["pid"] and pid_alive(started)
        with pytest.raises(LabnetError, match="no node process named 'n9'"):
            supervisor.ask(LAB, "start", "n9")
        with pytest.raises(LabnetError, match="unknown op"):
            supervisor.ask(LAB, "reboot")
        # what a client sends, however malformed, gets an answer, and the supervisor goes on
        from labnet import jsonsock

        for bad in ({"op": "hold", "node": [1]}, {"op": "start", "node": {"a": 1}}, [1, 2]):
            assert "error" in jsonsock.request(str(supervisor.socket_path(LAB)), bad)  # type: ignore[arg-type]
        raw = jsonsock.connect(supervisor.socket_path(LAB), 5)
        with raw:
            raw.sendall(b"[" * 60000 + b"\n")
            assert b"not a JSON object" in raw.recv(4096)
        assert supervisor.ask(LAB, "status")["nodes"]["n1"]["state"] == "running"

        # SIGTERM: it stops its node process, reaps it, and exits
        os.kill(z.proc.pid, signal.SIGTERM)
        poll(lambda: [p for p in (z.proc.pid, started) if pid_alive(p)], lambda left: not left, timeout=30,
             what="the supervisor and its node process to exit after SIGTERM")
        assert not supervisor.socket_path(LAB).exists()
    finally:
        z.close()


def test_up_ending_without_handing_over_stops_what_it_started(netns_factory, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABNET_STATE_DIR", str(tmp_path / "state"))
    paths.lab_dir(LAB).mkdir(parents=True)
    ns = netns_factory("sup-eof")
    z = Zygote(LAB, supervisor.log_path(LAB))
    netns_factory.track_pid(z.proc.pid)
    argv = [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", str(tmp_path / "none.json"),
            "--", "sleep", "300"]
    pid = z.spawn("n1", ns, argv, log=tmp_path / "node.log", pidfile=supervisor.pidfile(LAB, "n1"))
    z.close()  # stdin ends without "detach": up died or rolled back
    assert z.proc.returncode == 0
    poll(lambda: pid_alive(pid), lambda up: not up, timeout=20, what=f"node process {pid} to be stopped")


def test_a_supervisor_whose_lab_is_gone_exits(netns_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABNET_STATE_DIR", str(tmp_path / "state"))
    paths.lab_dir(LAB).mkdir(parents=True)
    journal = paths.lab_dir(LAB) / "journal.json"
    journal.write_text("{}")
    z = Zygote(LAB, supervisor.log_path(LAB))
    netns_factory.track_pid(z.proc.pid)
    z.detach()
    st = poll(lambda: supervisor.ask(LAB, "status"), lambda _: True, timeout=20, what="the supervisor's socket")
    assert st["nodes"] == {}, st
    journal.unlink()  # the lab was removed without it (its journal deleted by hand)
    poll(lambda: pid_alive(z.proc.pid), lambda up: not up, timeout=20,
         what=f"supervisor pid {z.proc.pid} to exit once its lab's journal is gone")
