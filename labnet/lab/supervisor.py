"""The lab's supervisor: one host process per lab that keeps every node's process running.

It is the zygote `up` starts (labnet.lab.zygote): it forks each node's process during `up` and,
once `up` has succeeded, lives on alone, so a node costs its one process and nothing beside it.
When a node process exits, it is forked again after a backoff (0.5 s, doubling to 10 s; back to
0.5 s after 30 s of health), and its pid file gets the new pid: that file is where `status`,
`repair`, the faults and `down` find the node's process (labnet.lab.processes.current).

Its control socket, `<lab dir>/supervisor.sock`, one JSON line each way:
  {"op": "status"}               {"pid", "nodes": {NODE: {"pid", "state", "restarts", "last_exit"}}}
  {"op": "hold", "node": N}      do not start N again (a fault is about to stop it); {"pid"}
  {"op": "start", "node": N}     start N now unless it runs (ends a hold); {"pid"}

On SIGTERM (`down` stops it first) it stops every node process and then itself. Killed, it
leaves them running; started again (`--adopt`: `labnet up` on a lab that is up does it) it
watches those that run and starts the others. It also ends once its lab's journal is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labnet import jsonsock, paths
from labnet.agent.main import BACKOFF_MAX, BACKOFF_START, HEALTHY_AFTER, SUPERVISOR_ENV
from labnet.errors import LabnetError
from labnet.lab import zygote
from labnet.nsexec import proc_starttime, same_process, set_process_name

TICK = 2.0  # how often, with nothing else to do, it looks whether its lab is still there
KILL_WAIT = 5.0  # after SIGKILL, for the kernel to take them


def stop_timeout(nodes: int) -> float:
    """How long node processes get to stop cleanly after SIGTERM: as the node's own supervisor
    gave its one (20 s), and more when hundreds share two cores."""
    return max(20.0, 0.05 * nodes)
log = logging.getLogger("labnet.lab.supervisor")


def socket_path(lab: str) -> Path:
    return paths.lab_dir(lab) / "supervisor.sock"


def log_path(lab: str) -> Path:
    return paths.lab_dir(lab) / "supervisor.log"


def pidfile(lab: str, node: str) -> Path:
    return paths.lab_dir(lab) / "nodes" / f"{paths.check_name('machine', node)}.json"


def read_pidfile(path: str | Path) -> dict[str, Any] | None:
    """What a node's pid file says ({"pid", "start", "restarts", "held"}), None if nothing."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def ask(lab: str, op: str, node: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """One request to the lab's supervisor; LabnetError naming what went wrong."""
    payload: dict[str, Any] = {"op": op} if node is None else {"op": op, "node": node}
    answer = jsonsock.request(str(socket_path(lab)), payload, timeout=timeout, what=f"lab {lab}: supervisor socket",
                              hint="is the lab's supervisor running? `labnet up FILE` starts it again")
    if "error" in answer:
        raise LabnetError(f"lab {lab}: supervisor: {op} {node or ''}: {answer['error']}")
    return answer


@dataclass
class Node:
    name: str
    fork: dict[str, Any]  # the zygote request that makes its process
    pidfile: Path
    pid: int = 0
    start: int | None = None
    pidfd: int = -1
    ours: bool = False  # forked here (its exit status comes to us), not adopted
    since: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_START
    due: float | None = None  # when to start it again
    held: bool = False
    last_exit: str = ""
    wrote: dict[str, Any] = field(default_factory=dict)

    def state(self) -> str:
        return "held" if self.held else "restarting" if self.due is not None else "running" if self.pidfd >= 0 \
            else "stopped"


class Supervisor:
    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.nodes: dict[str, Node] = {}
        self.detached = False
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.listener = _listen(socket_path(lab))
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    # -- node processes ----------------------------------------------------------------------

    def start(self, n: Node) -> int:
        """Fork n's process (OSError: the machine cannot take one) and watch it."""
        n.due = None
        pid = zygote.fork_daemon(n.fork, {SUPERVISOR_ENV: str(os.getpid())})
        try:
            fd = os.pidfd_open(pid)  # our child: it opens, even after it exited (a zombie until reaped)
        except OSError as exc:  # never left running unwatched: a second one would come next
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise OSError(exc.errno, f"cannot watch the process it forked (pid {pid}): {exc.strerror}") from exc
        self._watch(n, pid, proc_starttime(pid), fd, ours=True)
        log.info("%s: started node process pid %d", n.name, pid)
        return pid

    def adopt(self, n: Node, pid: int, start: int | None) -> None:
        """Watch a node process an earlier supervisor started; start it if it is gone."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0 and same_process(pid, start):  # checked after the open: a reused pid is not it
            self._watch(n, pid, start, fd, ours=False)  # this pidfd: it stays this process's
            log.info("%s: watching node process pid %d (adopted)", n.name, pid)
            return
        if fd >= 0:
            os.close(fd)
        if n.held:
            return
        n.due = time.monotonic()

    def _watch(self, n: Node, pid: int, start: int | None, pidfd: int, *, ours: bool) -> None:
        n.pid, n.start, n.ours, n.since, n.pidfd = pid, start, ours, time.monotonic(), pidfd
        self.sel.register(n.pidfd, selectors.EVENT_READ, n)
        self._save(n)

    def _save(self, n: Node) -> None:
        """The node's pid file, as it is now. A failure is logged, not fatal: the process is
        watched all the same."""
        data = {"pid": n.pid, "start": n.start, "restarts": n.restarts, "held": n.held, "supervisor": os.getpid()}
        if data == n.wrote:
            return
        try:
            n.pidfile.parent.mkdir(exist_ok=True)  # not parents: a lab directory that is gone stays gone
            tmp = n.pidfile.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, n.pidfile)
            n.wrote = data
        except OSError as exc:
            log.error("%s: cannot write its pid file %s: %s", n.name, n.pidfile, exc)

    def send_signal(self, n: Node, sig: int) -> None:
        """Through its pidfd: never another process that got the pid after it."""
        if n.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(n.pidfd, sig)

    def exited(self, n: Node) -> None:
        self.sel.unregister(n.pidfd)
        os.close(n.pidfd)
        n.pidfd = -1
        how = "exited (its exit status went to the machine's init: an earlier supervisor started it)"
        if n.ours:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(n.pid, 0)  # it has exited: this does not block
                rc = os.waitstatus_to_exitcode(status)
                how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        ran = time.monotonic() - n.since
        n.last_exit = how
        if n.held or self.stopping:
            log.info("%s: node process pid %d %s after %.1fs; not started again (%s)", n.name, n.pid, how, ran,
                     "held" if n.held else "the supervisor is stopping")
            return
        if ran >= HEALTHY_AFTER:
            n.backoff = BACKOFF_START
        n.restarts += 1
        n.due = time.monotonic() + n.backoff
        self._say(n, f"node process pid {n.pid} {how} after {ran:.1f}s; restart #{n.restarts} in {n.backoff:.1f}s")
        n.backoff = min(n.backoff * 2, BACKOFF_MAX)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for n in self.nodes.values():
            if n.due is not None and n.due <= now and not n.held:
                try:
                    self.start(n)
                except OSError as exc:  # the machine cannot take a process now: try again later
                    n.due = now + n.backoff
                    self._say(n, f"cannot start its node process: {exc}; next try in {n.backoff:.1f}s")
                    n.backoff = min(n.backoff * 2, BACKOFF_MAX)

    def _say(self, n: Node, msg: str) -> None:
        """A warning in the lab's log and in the node's own (where its process writes)."""
        log.warning("%s: %s", n.name, msg)
        with contextlib.suppress(OSError), open(n.fork["log"], "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} labnet-lab[{os.getpid()}] WARNING {msg}\n")

    # -- requests ----------------------------------------------------------------------------

    def handle(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            return {"error": f"expected a JSON object, got {type(req).__name__}"}
        op = req.get("op")
        if op == "status":
            return {"pid": os.getpid(), "nodes": {
                name: {"pid": n.pid, "state": n.state(), "restarts": n.restarts, "last_exit": n.last_exit}
                for name, n in self.nodes.items()}}
        if op not in ("hold", "start"):
            return {"error": f"unknown op {op!r} (have: status, hold, start)"}
        name = req.get("node")
        n = self.nodes.get(name) if isinstance(name, str) else None
        if n is None:
            return {"error": f"no node process named {req.get('node')!r} (have: {', '.join(self.nodes) or 'none'})"}
        if op == "hold":
            n.held, n.due = True, None
            self._save(n)
            log.info("%s: held (pid %d is not started again when it ends)", n.name, n.pid)
            return {"pid": n.pid}
        n.held = False
        if n.pidfd < 0:
            n.backoff = BACKOFF_START
            try:
                self.start(n)
            except OSError as exc:
                return {"error": f"cannot start {n.name}'s node process: {exc}"}
        self._save(n)
        return {"pid": n.pid}

    def take(self, req: Any) -> dict[str, Any]:
        """A node process to make and watch, from `up` (labnet.lab.zygote.Zygote.spawn)."""
        try:
            if not isinstance(req, dict) or not isinstance(req.get("node"), str) \
                    or not isinstance(req.get("pidfile"), str):
                raise ValueError("expected {op: start, node, pidfile, fork}")
            paths.check_name("machine", req["node"])
            zygote.check(req.get("fork"))
        except (ValueError, LabnetError) as exc:
            return {"error": str(exc)}
        n = Node(req["node"], req["fork"], Path(req["pidfile"]))
        self.nodes[n.name] = n
        try:
            return {"pid": self.start(n)}
        except OSError as exc:
            del self.nodes[n.name]
            return {"error": f"cannot fork in {n.name}: {exc}"}

    def _serve_one(self) -> None:
        """One request. Whatever a client sends or does, the supervisor goes on."""
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            log.info("control socket: accept: %s", exc)
            return
        with conn:
            conn.settimeout(2.0)
            buf = b""
            try:
                while not buf.endswith(b"\n") and len(buf) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    answer = self.handle(json.loads(buf))
                except (ValueError, RecursionError):
                    answer = {"error": "the request is not a JSON object"}
                except Exception as exc:  # a bug's answer, not the supervisor's end
                    log.exception("control socket: request %r", buf[:200])
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError as exc:
                log.info("control socket: a client went away: %s", exc)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, inp: int | None, out: int | None) -> None:
        """Until SIGTERM, the lab's end, or (before `detach`) the end of `up`'s pipe."""
        if inp is not None:
            self.sel.register(inp, selectors.EVENT_READ, "up")
        else:
            self.detached = True
        pending = b""
        while not self.stopping:
            due = [n.due for n in self.nodes.values() if n.due is not None]
            wait = min([TICK, *(max(0.0, d - time.monotonic()) for d in due)])
            for key, _ in self.sel.select(wait):
                if key.data == "listen":
                    self._serve_one()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                elif key.data == "up":
                    assert inp is not None and out is not None
                    chunk = os.read(inp, 65536)
                    if not chunk:
                        self.sel.unregister(inp)
                        if not self.detached:
                            log.info("up ended before handing the lab over: stopping its node processes")
                            self.stop_nodes()
                            return
                        continue
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    try:
                        for line in lines:
                            self._from_up(line, out)
                    except OSError as exc:  # up is gone mid-request: as the end of its pipe
                        log.info("up went away (%s) before handing the lab over: stopping its node processes", exc)
                        self.stop_nodes()
                        return
                elif isinstance(key.data, Node):
                    self.exited(key.data)
            if self.detached and not (paths.lab_dir(self.lab) / "journal.json").exists():
                log.info("lab %s is gone: stopping what it left and exiting", self.lab)
                self.stop_nodes()
                return
            self._restart_due()

    def _from_up(self, line: bytes, out: int) -> None:
        try:
            req = json.loads(line)
        except ValueError:
            req = None
        if isinstance(req, dict) and req.get("op") == "detach":
            self.detached = True
            log.info("up handed the lab over: supervising %d node processes", len(self.nodes))
            return
        os.write(out, json.dumps(self.take(req)).encode() + b"\n")

    def stop_nodes(self) -> None:
        """SIGTERM (and SIGCONT, for frozen ones) to every node process, SIGKILL to those left
        after a deadline; each reaped here. A node process outliving us would be an orphan of
        the host's init, not its machine's (orphans go to the init of their parent's PID
        namespace), and its machine's end would wait until that init reaped it."""
        self.stopping = True
        for fileobj in (self.listener, self._wake_r):  # no more requests; their events would spin the wait
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(fileobj)
        running = [n for n in self.nodes.values() if n.pidfd >= 0]
        for sig in (signal.SIGTERM, signal.SIGCONT):
            for n in running:
                self.send_signal(n, sig)
        deadline = time.monotonic() + stop_timeout(len(running))
        for last in (False, True):
            while any(n.pidfd >= 0 for n in running) and time.monotonic() < deadline:
                for key, _ in self.sel.select(max(0.0, deadline - time.monotonic())):
                    if isinstance(key.data, Node):
                        self.exited(key.data)
            if last or not any(n.pidfd >= 0 for n in running):
                break
            for n in running:
                if n.pidfd >= 0:
                    log.warning("%s: node process pid %d did not stop after SIGTERM: SIGKILL", n.name, n.pid)
                    self.send_signal(n, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(socket_path(self.lab))


def _listen(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, bound through its directory's fd (long paths)."""
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dfd)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind(f"/proc/self/fd/{dfd}/{path.name}")
    finally:
        os.close(dfd)
    os.chmod(path, 0o600)
    s.listen(64)
    return s


def _adopt_recorded(sup: Supervisor) -> None:
    """After a restart: every node process the journal records as the lab's to supervise."""
    from labnet.lab.state import load_journal
    from labnet.runtime import get_runtime

    journal = load_journal(sup.lab)
    if journal is None:
        raise LabnetError(f"lab {sup.lab}: no journal: nothing to supervise")
    rt = get_runtime(journal.runtime)(sup.lab, journal)
    for e in journal.of_kind("process"):
        if not e.get("pidfile"):
            continue
        node = str(e["node"])
        fork = zygote.request(rt.ns(node), e["argv"], log=Path(e["log"]), env=e.get("env"),
                              nice=int(e.get("nice") or 0))
        n = Node(node, fork, Path(e["pidfile"]))
        now = read_pidfile(n.pidfile) or {"pid": e["pid"], "start": e.get("start")}
        n.restarts, n.held = int(now.get("restarts") or 0), bool(now.get("held"))
        sup.nodes[node] = n
        sup.adopt(n, int(now["pid"]), now.get("start"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labnet.lab.supervisor",
                                 description="the lab's supervisor (started by `labnet up`)")
    ap.add_argument("lab")
    ap.add_argument("--adopt", action="store_true",
                    help="started again: watch the journal's node processes, start those that are gone")
    args = ap.parse_args(argv)
    lab = paths.check_lab(args.lab)
    set_process_name("labnet-lab")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s labnet-lab[%(process)d] %(levelname)s %(message)s")
    paths.lab_dir(lab).mkdir(parents=True, exist_ok=True)
    lock = os.open(paths.lab_dir(lab) / "supervisor.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("lab %s already has a supervisor: exiting", lab)
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sup = Supervisor(lab)

    def on_term(_signum: int, _frame: object) -> None:
        sup.stopping = True  # the loop ends, and the node processes are stopped

    signal.signal(signal.SIGTERM, on_term)
    try:
        zygote.preload()
        if args.adopt:
            _adopt_recorded(sup)
        sup.run(None if args.adopt else sys.stdin.fileno(), None if args.adopt else sys.stdout.fileno())
        if sup.stopping:
            sup.stop_nodes()
    except BaseException:
        log.exception("the supervisor failed")
        if not sup.detached:  # nobody else knows of what it forked yet
            sup.stop_nodes()
        raise
    finally:
        sup.close()
    log.info("supervisor stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
