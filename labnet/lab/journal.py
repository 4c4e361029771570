"""The lab's journal: every object a lab creates, recorded before it is created.

Recording first means a `labnet up` killed at any point leaves a journal that names all it
may have made; teardown walks it backwards and treats "already gone" as success.
"""

from __future__ import annotations

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
    # Held while the journal changes and while it is written: phases add pods from several threads.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(path.read_text())
        return cls(path=path, **data)

    def save(self) -> None:
        with self.lock:
            data = {k: v for k, v in self.__dict__.items() if k not in ("path", "lock")}
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def record(self, kind: str, **attrs: Any) -> dict[str, Any]:
        entry = {"kind": kind, **attrs}
        with self.lock:
            self.entries.append(entry)
            self.save()
        return entry

    def update(self, entry: dict[str, Any], **attrs: Any) -> None:
        with self.lock:
            entry.update(attrs)
            self.save()

    def claim(self) -> None:
        self.owner_pid = os.getpid()
        self.owner_start = proc_starttime(self.owner_pid)
        self.save()

    def owner_alive(self) -> bool:
        return bool(self.owner_pid) and same_process(self.owner_pid, self.owner_start)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == kind]
