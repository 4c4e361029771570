"""The lab's zygote forks a daemon inside a machine's namespaces: the same module and
arguments that `nsenter ... python -m MODULE ARGS` would run, without an interpreter start-up."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from labnet.lab.zygote import Zygote
from labnet.nsexec import NodeNS, pid_alive
from labnet.wait import poll


def test_forks_the_daemon_inside_the_namespace_with_its_log_and_name(netns_factory, tmp_path: Path) -> None:
    ns = netns_factory("zygote")
    z = Zygote()
    try:
        log = tmp_path / "sup.log"
        argv = [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", str(tmp_path / "none.json"),
                "--", "sleep", "300"]
        assert z.serves(ns, argv)
        pid = netns_factory.track_pid(z.spawn(ns, argv, log=log))
        child = poll(lambda: [c for c in _children(pid)], lambda cs: len(cs) == 1, timeout=20,
                     what=f"supervisor pid {pid} to start its child")
        for p in (pid, child[0]):
            got, want = os.stat(f"/proc/{p}/ns/net").st_ino, os.stat(ns.netns).st_ino
            assert got == want, f"pid {p}: network namespace inode {got}, expected the machine's {want}"
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "labnet-agent"
        assert os.getsid(pid) == pid, f"pid {pid}: expected its own session"
        poll(lambda: log.read_text() if log.exists() else "", lambda t: "started agent" in t, timeout=20,
             what=f"the supervisor's log {log} to say it started its child")
        # another interpreter (the docker runtime's), or a pod's namespace: spawned by exec instead
        assert not z.serves(NodeNS("c", ns.netns, python="/usr/bin/python3"), argv)
        assert not z.serves(ns, [sys.executable, "-m", "labnet.cni.server"])
        # a module it does not serve, asked anyway: an error answer, and the zygote goes on
        assert z.proc.stdin is not None and z.proc.stdout is not None
        z.proc.stdin.write(b'{"module": "os", "args": []}\n')
        z.proc.stdin.flush()
        assert "not one the zygote serves" in json.loads(z.proc.stdout.readline())["error"]
        assert z.proc.poll() is None
    finally:
        z.close()
    assert z.proc.returncode == 0
    assert pid_alive(pid), "the daemon outlives the zygote (its own session)"


def _children(pid: int) -> list[int]:
    from labnet.nsexec import children

    return children(pid)
