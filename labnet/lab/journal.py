"""The lab's journal: every object a lab creates, recorded before it is created.

Recording first means a `labnet up` killed at any point leaves a journal that names all it
may have made; teardown walks it backwards and treats "already gone" as success.

On disk: `journal.json`, the whole journal, and beside it `journal.json.tail`, the changes made
since it was written, one JSON line each (fsynced): a new entry, an entry's update, one info
key set or removed. Rewriting the whole file for each of a 100-node lab's thousand records made
`up` quadratic; a line costs the same at any size. `save()` writes the whole file and drops the
tail; `load()` replays the tail over the file (replaying twice changes nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labnet.nsexec import proc_starttime, same_process


@dataclass
class Journal:
    path: Path
    lab: str
    state: str = "building"  # building | up | tearing-down | broken (a teardown left things; info["left"])
    owner_pid: int = 0
    owner_start: int | None = None
    topology_file: str = ""
    topology_hash: str = ""
    runtime: str = "netns"
    created: float = field(default_factory=time.time)
    entries: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # facts for status (addresses, etcd endpoints...)
    generation: int = 0  # counts whole writes; tail lines carry the one they follow
    # Held while the journal changes and while it is written: phases add pods from several threads.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _tail_lines: int = field(default=0, repr=False, compare=False)

    TAIL_MAX = 4000  # lines before the tail is folded into the file

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(path.read_text())
        j = cls(path=path, **data)
        try:
            raw = tail_path(path).read_bytes()
        except FileNotFoundError:
            raw = b""
        for line in raw.split(b"\n"):
            try:
                op = json.loads(line)
            except ValueError:
                continue  # empty, or cut short by a crash: that write never finished
            # lines of another generation were folded into a file already (a crash between the
            # file's replace and the tail's removal): replaying them over a newer file is wrong
            if isinstance(op, dict) and op.get("g") == j.generation:
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    j._replay(op)
        return j

    def _replay(self, op: dict[str, Any]) -> None:
        if op["op"] == "entry":
            if op["i"] == len(self.entries):
                self.entries.append(op["entry"])
        elif op["op"] == "update":
            self.entries[op["i"]].update(op["attrs"])
        elif op["op"] == "info":
            _set_in(self.info, op["keys"], op.get("value"), op.get("remove", False))

    def _append(self, op: dict[str, Any], sync: bool = True) -> None:
        """One change, already made in memory, as one line of the tail, on disk before this
        returns (`sync`: through a host crash too); a long tail is folded into the file."""
        line = json.dumps({**op, "g": self.generation}).encode() + b"\n"
        fd = os.open(tail_path(self.path), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line cut short by a crash stays a line of its own
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._tail_lines += 1
        if self._tail_lines >= self.TAIL_MAX:
            self.save()

    def set_info(self, keys: tuple[str, ...], value: Any = None, *, remove: bool = False) -> None:
        """info[k1][k2]... = value (or removed), recorded as one line, not a rewrite. Not fsynced:
        info says what the lab looks like (pods, addresses), entries say what to undo, and what
        a host crash would leave of a pod (its netns, its veth) goes with the node's namespaces.
        A thousand pods made two thousand fsyncs, each behind the lab's other disk writes."""
        with self.lock:
            _set_in(self.info, list(keys), value, remove)
            self._append({"op": "info", "keys": list(keys), "value": value, "remove": remove}, sync=False)

    def save(self) -> None:
        """Write the whole journal as a new generation, then drop the tail it now contains."""
        with self.lock:
            self.generation += 1
            data = {k: v for k, v in self.__dict__.items() if k not in ("path", "lock", "_tail_lines")}
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            with contextlib.suppress(FileNotFoundError):
                tail_path(self.path).unlink()
            self._tail_lines = 0

    def record(self, kind: str, **attrs: Any) -> dict[str, Any]:
        entry = {"kind": kind, **attrs}
        with self.lock:
            self.entries.append(entry)  # first: a fold of the tail must include it
            try:
                if not self.path.exists():
                    self.save()
                else:
                    self._append({"op": "entry", "i": len(self.entries) - 1, "entry": entry})
            except BaseException:
                self.entries.pop()
                raise
        return entry

    def update(self, entry: dict[str, Any], **attrs: Any) -> None:
        with self.lock:
            entry.update(attrs)
            i = next((k for k, e in enumerate(self.entries) if e is entry), None)
            if i is None or not self.path.exists():
                self.save()
            else:
                self._append({"op": "update", "i": i, "attrs": attrs})

    def claim(self) -> None:
        self.owner_pid = os.getpid()
        self.owner_start = proc_starttime(self.owner_pid)
        self.save()

    def owner_alive(self) -> bool:
        return bool(self.owner_pid) and same_process(self.owner_pid, self.owner_start)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == kind]


def tail_path(path: Path) -> Path:
    return path.with_name(path.name + ".tail")


def _set_in(d: dict[str, Any], keys: list[str], value: Any, remove: bool) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if remove:
        d.pop(keys[-1], None)
    else:
        d[keys[-1]] = value
