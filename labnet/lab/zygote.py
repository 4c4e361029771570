"""The lab's zygote: one pre-imported interpreter that forks each node's daemon in its namespaces.

Started as `python -m labnet.lab.zygote` when `up` begins, it imports the node's software
(agent, CNI server, datapath) while the underlay and etcd come up. Each request on its stdin
(one JSON line: argv, namespaces, log, env) gets one fork: the child enters the node's PID
namespace (setns there moves only the children, so it forks once more and that grandchild is
the daemon), then the node's network, UTS and mount namespaces, starts its own session, sends
its output to the log and runs
the module's `main(args)`, exactly what `nsenter ... python -m MODULE ARGS` would run, without
an interpreter start-up or imports per node, and with the imported pages shared copy-on-write.
The reply (one JSON line) is the daemon's pid as this host sees it. The zygote ends when its stdin closes (the end
of `up`); its children, in their own sessions, go on. Only the modules in MODULES are served:
anything else (another interpreter: the docker runtime) is spawned by nsenter as before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from labnet.agent.main import exit_status
from labnet.errors import LabnetError
from labnet.nsexec import NodeNS, set_process_name, setns

CLONE_NEWPID = 0x20000000
MODULES = ("labnet.agent.main",)  # what the zygote imports up front and can run
REPLY_TIMEOUT = 60.0  # the first reply waits for the imports


class Zygote:
    """The `up` side: start the zygote, ask it for daemons, close it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=None, close_fds=True)

    def serves(self, ns: NodeNS | None, argv: Sequence[str]) -> bool:
        """Whether this request is one the zygote can fork (else: spawn by exec)."""
        return (ns is not None and ns.python is None and ns.inner_netns is None and self.proc.poll() is None
                and len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2] in MODULES)

    def spawn(self, ns: NodeNS, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
              nice: int = 0) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        log.parent.mkdir(parents=True, exist_ok=True)
        req = {"module": argv[2], "args": list(argv[3:]), "netns": ns.netns, "mntns": ns.mntns,
               "utsns": ns.utsns, "pidns": ns.pidns, "log": str(log), "env": dict(env) if env is not None else None,
               "nice": nice}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise LabnetError(f"zygote pid {self.proc.pid}: no answer to the request for {ns.name} within "
                              f"{REPLY_TIMEOUT:.0f}s (exit status {self.proc.poll()})")
        reply = json.loads(line)
        if "pid" not in reply:
            raise LabnetError(f"zygote: cannot start {argv[2]} in {ns.name}: {reply.get('error')}")
        return int(reply["pid"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- the zygote process -------------------------------------------------------------------

def _child(req: dict[str, Any]) -> None:
    """In the forked child: become the daemon. Never returns."""
    rc = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGINT):  # the zygote ignores them; the daemon has its own
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if req.get("nice"):
            with contextlib.suppress(PermissionError):  # as coreutils' nice: a warning's worth, not fatal
                os.setpriority(os.PRIO_PROCESS, 0, int(req["nice"]))  # before any thread: they inherit it
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # a host path: before setns
        null = os.open(os.devnull, os.O_RDONLY)
        for ns in ("netns", "utsns", "mntns"):  # mount last: the others' paths are host paths
            if req.get(ns):
                setns(req[ns])
        os.chdir("/")
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's pipes too
        if req.get("env") is not None:
            os.environ.clear()
            os.environ.update(req["env"])
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = [req["module"], *req["args"]]
        set_process_name("labnet-" + req["module"].rsplit(".", 2)[-2])  # what `ps -o comm` and top show
        result = sys.modules[req["module"]].main(req["args"])
        rc = int(result or 0)
    except SystemExit as exc:
        rc = exit_status(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(rc)


def _check(req: object) -> None:
    """A request the zygote can fork for, or ValueError saying why not (answered, not fatal)."""
    if not isinstance(req, dict):
        raise ValueError(f"expected a JSON object, got {type(req).__name__}")
    if req.get("module") not in MODULES:
        raise ValueError(f"module {req.get('module')!r} is not one the zygote serves: {MODULES}")
    if not isinstance(req.get("args"), list) or not all(isinstance(a, str) for a in req["args"]):
        raise ValueError("args must be a list of strings")
    if not isinstance(req.get("log"), str) or not req["log"].startswith("/"):
        raise ValueError("log must be an absolute path")
    for ns in ("netns", "mntns", "utsns", "pidns"):
        if req.get(ns) is not None and not isinstance(req[ns], str):
            raise ValueError(f"{ns} must be a path or null")
    if not isinstance(req.get("nice", 0), int) or not -20 <= req.get("nice", 0) <= 19:
        raise ValueError("nice must be an integer -20..19")
    if req.get("env") is not None and not (isinstance(req["env"], dict)
                                           and all(isinstance(v, str) for v in req["env"].values())):
        raise ValueError("env must be an object of strings or null")


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    for module in MODULES:
        importlib.import_module(module)
    import labnet.agent.node  # noqa: F401  (what the agent's supervisor forks: warm in every child)

    gc.collect()
    gc.freeze()  # the collector leaves the imported objects alone: their pages stay shared after fork
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of `up` is up's to handle; we end with stdin
    for line in inp:
        try:
            req = json.loads(line)
            _check(req)
        except ValueError as exc:
            out.write((json.dumps({"error": str(exc)}) + "\n").encode())
            out.flush()
            continue
        out.write((json.dumps(_fork(req)) + "\n").encode())
        out.flush()


def _fork(req: dict[str, Any]) -> dict[str, Any]:
    """Fork the daemon for `req`; the reply: its pid as this host sees it, or an error."""
    if not req.get("pidns"):
        pid = os.fork()
        if pid == 0:
            _child(req)
        return {"pid": pid}
    # setns into a PID namespace moves only the caller's later children, and an orphan goes to
    # the init of its dead parent's namespace. So: a child enters (host side), its child (the
    # namespace's side) forks the daemon and exits, and the daemon's parent becomes the node's
    # init, which reaps it at once. The daemon's first message carries its pid, translated by
    # the kernel into ours (SCM_CREDENTIALS).
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    here.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if os.fork() == 0:
        here.close()
        try:
            setns(req["pidns"], CLONE_NEWPID)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            inside = os.fork()
            if inside == 0:
                if os.fork() == 0:
                    there.send(b"started")
                    there.close()
                    _child(req)
                os._exit(0)
            os.waitpid(inside, 0)
            os._exit(0)
        except BaseException as exc:
            there.send(json.dumps({"error": f"entering {req['pidns']}: {exc}"}).encode())
            os._exit(1)
    there.close()
    with here:
        msg, anc, _, _ = here.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    if msg != b"started":
        return json.loads(msg) if msg else {"error": "the daemon's fork ended before it started"}
    creds = [data for level, kind, data in anc if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    return {"pid": struct.unpack("3i", creds[0])[0]} if creds else {"error": "no credentials came with the start"}


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
