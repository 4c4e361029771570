"""A node process the lab's supervisor keeps running is found through its pid file: `current`
gives the pid it has now, status shows it with its restarts and the supervisor above the table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from labnet.lab import processes, status
from labnet.nsexec import proc_starttime


def test_current_reads_the_pid_file_and_falls_back_to_the_entry(tmp_path: Path) -> None:
    plain = {"pid": 7, "start": 1, "what": "etcd", "node": "n1"}
    assert processes.current(plain) is plain
    pidfile = tmp_path / "n1.json"
    entry = {"pid": 7, "start": 1, "what": "agent", "node": "n1", "pidfile": str(pidfile)}
    assert processes.current(entry) is entry  # not written yet
    pidfile.write_text("{not json")
    assert processes.current(entry) is entry
    pidfile.write_text(json.dumps({"pid": 42, "start": 9, "restarts": 3, "held": True}))
    now = processes.current(entry)
    assert (now["pid"], now["start"], now["restarts"], now["held"]) == (42, 9, 3, True)
    assert entry["pid"] == 7, "the journal's entry itself is left as it is"
    assert processes.describe(entry) == "agent pid 42 on n1"
    assert processes.describe({"pid": 5, "what": "supervisor"}) == "supervisor pid 5"


def test_status_shows_the_supervisor_and_each_node_process_as_it_is_now(tmp_path: Path) -> None:
    me = os.getpid()
    pidfile = tmp_path / "n1.json"
    pidfile.write_text(json.dumps({"pid": me, "start": proc_starttime(me), "restarts": 2, "held": False}))
    entries = [{"pid": me, "start": proc_starttime(me), "what": "supervisor", "argv": ["x"], "log": "/l"},
               {"pid": 1, "start": 0, "what": "agent", "node": "n1", "pidfile": str(pidfile)},
               {"pid": 2 ** 22 + 1, "start": 0, "what": "etcd", "node": "n1"}]
    rows = status._processes(entries)
    assert [(r["what"], r["pid"], r["alive"]) for r in rows] == [
        ("supervisor", me, True), ("node-process", me, True), ("etcd", 2 ** 22 + 1, False)], rows
    assert rows[1]["restarts"] == 2 and "the lab's supervisor starts it again" in rows[1]["role"]
    text = status.format_status([{"lab": "l", "state": "up", "runtime": "netns", "topology": "t.yaml",
                                  "machines": {"n1": {"kind": "node", "interfaces": []}}, "pods": {},
                                  "processes": rows}])
    assert f"the lab's supervisor: pid {me}\n" in text, text
    assert f"node-process({me}, restarted 2x)" not in text and f"node-process({me} restarted 2x)" in text, text
    assert f"etcd({2 ** 22 + 1} DEAD)" in text, text
