"""The lab's zygote: one pre-imported interpreter that forks each node's process in its namespaces.

`up` starts it (`Zygote`) as the lab's supervisor process (labnet.lab.supervisor). It imports
the node's software (agent, CNI server, datapath) while the underlay and etcd come up. Each
request (one JSON line: module, args, namespaces, log, env, nice) gets one fork (`fork_daemon`):
the child is made inside the node's PID namespace (the zygote points its own pid_for_children
there for the fork, so the node process is its child and its exit status comes back to it),
enters the node's network, UTS and mount namespaces, starts its own session, sends its output
to the log and runs the module's `main(args)`, exactly what `nsenter ... python -m MODULE ARGS`
would run, without an interpreter start-up or imports per node, and with the imported pages
shared copy-on-write. Only the modules in MODULES are served: anything else (another
interpreter: the docker runtime) is spawned by exec as before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labnet.agent.main import exit_status
from labnet.errors import LabnetError
from labnet.nsexec import NodeNS, setns, setns_fd

CLONE_NEWPID = 0x20000000
MODULES = ("labnet.agent.main",)  # what the zygote imports up front and can run
REPLY_TIMEOUT = 60.0  # the first reply waits for the imports
SUPERVISOR_MODULE = "labnet.lab.supervisor"
# Supervisors handed their lab, still our children while this process lives (the pytest plugin
# brings many labs up in one): reaped when a later one starts, so none stays a zombie for long.
_DETACHED: list[subprocess.Popen[bytes]] = []


def request(ns: NodeNS, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
            nice: int = 0) -> dict[str, Any]:
    """The fork request for `argv` (python -m MODULE ARGS) in `ns`: what the zygote and a
    restarted supervisor both fork from."""
    return {"module": argv[2], "args": list(argv[3:]), "netns": ns.netns, "mntns": ns.mntns,
            "utsns": ns.utsns, "pidns": ns.pidns, "log": str(log), "env": dict(env) if env is not None else None,
            "nice": nice}


def serves(ns: NodeNS | None, argv: Sequence[str]) -> bool:
    """Whether the zygote can fork this daemon (else: spawn by exec): this interpreter's module,
    in a machine that shares the host's files."""
    return (ns is not None and ns.python is None and ns.inner_netns is None
            and len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2] in MODULES)


class Zygote:
    """The `up` side: start the lab's supervisor, ask it for node processes, then hand the lab
    over to it (`detach`) or, when `up` fails, let it end (`close`)."""

    def __init__(self, lab: str, log: Path) -> None:
        _DETACHED[:] = [p for p in _DETACHED if p.poll() is None]
        log.parent.mkdir(parents=True, exist_ok=True)
        self.argv = [sys.executable, "-m", SUPERVISOR_MODULE, lab]
        self.log = log
        with open(log, "ab") as err:
            # its own session: a Ctrl-C of `up` is up's to handle, and it outlives `up`
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         close_fds=True, start_new_session=True)
        self.detached = False

    def serves(self, ns: NodeNS | None, argv: Sequence[str]) -> bool:
        """Whether this daemon is the supervisor's to fork (one that died says so in `spawn`:
        the lab's node processes are not left half to it and half to supervisors of their own)."""
        return not self.detached and serves(ns, argv)

    def _gone(self, doing: str) -> LabnetError:
        rc = self.proc.poll()
        state = f"exited with status {rc}" if rc is not None else "does not answer"
        return LabnetError(f"the lab's supervisor (pid {self.proc.pid}) {state} while {doing}; its log: {self.log}")

    def spawn(self, node: str, ns: NodeNS, argv: Sequence[str], *, log: Path, pidfile: Path,
              env: Mapping[str, str] | None = None, nice: int = 0) -> int:
        """Fork `argv` as `node`'s supervised process; its pid as this host sees it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        log.parent.mkdir(parents=True, exist_ok=True)
        req = {"op": "start", "node": node, "pidfile": str(pidfile),
               "fork": request(ns, argv, log=log, env=env, nice=nice)}
        doing = f"asked to start {node}'s process"
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise self._gone(doing) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise self._gone(doing + (f" (no answer within {REPLY_TIMEOUT:.0f}s)" if not ready else ""))
        try:
            reply = json.loads(line)
        except ValueError:
            raise LabnetError(f"the lab's supervisor answered {line[:200]!r} when {doing}; its log: {self.log}") from None
        if not isinstance(reply, dict) or "pid" not in reply:
            said = reply.get("error") if isinstance(reply, dict) else reply
            raise LabnetError(f"the lab's supervisor: cannot start {argv[2]} in {node}: {said}")
        return int(reply["pid"])

    def detach(self) -> None:
        """`up` succeeded: the zygote goes on as the lab's supervisor, alone."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is not None:
            raise self._gone("up handed the lab over")
        try:
            self.proc.stdin.write(b'{"op": "detach"}\n')
            self.proc.stdin.close()
        except OSError:
            raise self._gone("up handed the lab over") from None
        self.proc.stdout.close()
        self.detached = True
        _DETACHED.append(self.proc)

    def close(self) -> None:
        """`up` failed (or is done with it unused): stdin's end makes the zygote exit."""
        if self.detached:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- in the zygote process ----------------------------------------------------------------

def preload() -> None:
    """Import what every fork runs, once, and keep it out of the collector's way (its pages
    stay shared after fork)."""
    for module in MODULES:
        importlib.import_module(module)
    import labnet.agent.node  # noqa: F401  (the node's process: warm in every child)

    gc.collect()
    gc.freeze()


def check(req: object) -> None:
    """A fork request the zygote can serve, or ValueError saying why not (answered, not fatal)."""
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


def fork_daemon(req: dict[str, Any], env: Mapping[str, str] | None = None) -> int:
    """Fork the daemon `req` asks for, as a child of this process; its pid as this host sees it.
    `env` is added to its environment. OSError when the machine cannot take a process (its PID
    namespace's init is gone)."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if req.get("pidns") else -1
    # held off until the child has its own handlers: a SIGTERM in between would be ours, not its
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    pid = -1
    try:
        if req.get("pidns"):
            # setns into a PID namespace moves only our later children: the fork below is made
            # there, and we stay where we are (and go back to making children here after)
            setns(req["pidns"], CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _child(req, env or {})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if own >= 0:
            try:
                setns_fd(own, CLONE_NEWPID, "back into the supervisor's own PID namespace")
            except OSError as exc:  # every later fork would land in this machine: nothing may go on
                if pid > 0:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                raise RuntimeError(f"cannot go back to the supervisor's PID namespace: {exc}") from exc
            finally:
                os.close(own)
    return pid


def _child(req: dict[str, Any], extra_env: Mapping[str, str]) -> None:
    """In the forked child: become the daemon. Never returns."""
    rc = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers are not the daemon's
        signal.set_wakeup_fd(-1)  # nor its wake-up pipe
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # what came meanwhile is the daemon's now
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
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the supervisor's pipes, sockets and pidfds too
        if req.get("env") is not None:
            os.environ.clear()
            os.environ.update(req["env"])
        os.environ.update(extra_env)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = [req["module"], *req["args"]]
        result = sys.modules[req["module"]].main(req["args"])
        rc = int(result or 0)
    except SystemExit as exc:
        rc = exit_status(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(rc)
