"""Run commands inside a node's namespaces (net, mount, UTS, PID), and start daemons there."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from labnet.errors import CommandFailed, WaitTimeout
from labnet.wait import poll

T = TypeVar("T")

@dataclass(frozen=True)
class NodeNS:
    """The namespaces of one lab node (or router, host, pod). Paths are nsfs bind mounts."""

    name: str
    netns: str
    mntns: str | None = None
    utsns: str | None = None
    # The machine's PID namespace (its /proc is that namespace's, so whatever enters the mount
    # namespace enters this one too, or /proc/self would not resolve).
    pidns: str | None = None
    # A pod's netns lives in its node's private /var/run/netns, as with containerd: that path
    # only resolves inside the node's mount namespace, so we enter the node first, then the pod.
    inner_netns: str | None = None
    # The interpreter that runs labnet's own code inside this machine (agents, CNI plugin
    # shebangs, probes); None: this process's (the netns runtime shares the host's files).
    python: str | None = None

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` run inside these namespaces. With a PID namespace, labnet-nsinit enters them and
        waits for `cmd`, which dies with it (a caller's timeout kills both); else nsenter execs it."""
        if self.pidns:
            pre = [str(nsinit()), "run", self.netns, self.utsns or "-", self.mntns or "-", self.pidns]
        else:
            pre = ["nsenter", f"--net={self.netns}"]
            if self.mntns:
                pre.append(f"--mount={self.mntns}")
            if self.utsns:
                pre.append(f"--uts={self.utsns}")
            pre.append("--")
        if self.inner_netns:
            pre += ["nsenter", f"--net={self.inner_netns}", "--"]
        return [*pre, *cmd]

    def pod(self, pod: str, netns_path: str) -> NodeNS:
        """The namespaces of a pod on this node (netns_path as seen inside the node)."""
        return NodeNS(f"{self.name}/{pod}", self.netns, self.mntns, self.utsns, self.pidns,
                      inner_netns=netns_path, python=self.python)


CLONE_FS, CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID, CLONE_NEWNET = 0x200, 0x20000, 0x04000000, 0x20000000, 0x40000000
_inside = threading.local()  # .machine: (netns, mntns) of the machine this thread has entered


def is_inside(ns: NodeNS) -> bool:
    """Whether the calling thread is inside `ns`'s machine (by `entered`)."""
    return getattr(_inside, "machine", None) == (ns.netns, ns.mntns)


@contextlib.contextmanager
def entered(ns: NodeNS) -> Iterator[bool]:
    """Move the calling thread into machine `ns` (network, UTS, mount namespaces, and the PID
    namespace of the processes it starts) for the block, and back after it. Inside, `run(ns,
    ...)` execs each command directly: one process, not labnet-nsinit's chain of forks. Yields
    whether it entered: only machines that share the host's files (ns.python None) are entered,
    and not from a pod. In the block, paths are the machine's: /var/run, /var/lib/labnet and
    the other node directories are its own, so nothing in it may read or write the lab's
    state on the host (the journal), and it may start no thread (the kernel refuses one whose
    PID namespace for children is not its own). Other threads are not affected. One machine at
    a time: entering another from inside one is refused."""
    if is_inside(ns) and ns.inner_netns is None:
        yield True
        return
    if ns.python is not None or ns.inner_netns is not None or not ns.mntns:
        yield False
        return
    if getattr(_inside, "machine", None) is not None:
        raise ValueError(f"{ns.name}: this thread is inside another machine already")
    # setns into a mount namespace wants a cwd and root of our own; a thread started since the
    # last time shares them again, so every time (a no-op when they are ours alone)
    _unshare(CLONE_FS)
    kinds = [(k, flag, path) for k, flag, path in (
        ("net", CLONE_NEWNET, ns.netns), ("uts", CLONE_NEWUTS, ns.utsns),
        ("pid_for_children", CLONE_NEWPID, ns.pidns), ("mnt", CLONE_NEWNS, ns.mntns)) if path]  # mount last
    home: list[tuple[int, int]] = []
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    moved: list[tuple[int, int]] = []
    try:
        for k, flag, _ in kinds:
            home.append((os.open(f"/proc/thread-self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC), flag))
        for (_, flag, path), back in zip(kinds, home, strict=True):
            setns(path, flag)
            moved.append(back)
        os.chdir("/")
        _inside.machine = (ns.netns, ns.mntns)
        yield True
    finally:
        _go_back(moved, cwd, ns.name)
        for fd, _ in home:
            os.close(fd)
        os.close(cwd)


def _go_back(moved: list[tuple[int, int]], cwd: int, name: str) -> None:
    """Every namespace back, the mount namespace first (where host paths are), signals held off
    meanwhile. A thread that cannot get back would write the lab's state into a machine: end."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    failed = []
    try:
        for fd, flag in reversed(moved):
            try:
                setns_fd(fd, flag, "back to this process's namespace")
            except OSError as exc:
                failed.append(str(exc))
        try:
            os.fchdir(cwd)
        except OSError as exc:
            failed.append(f"chdir back: {exc}")
        _inside.machine = None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if failed:
        os.write(2, f"labnet: leaving {name}'s namespaces failed ({'; '.join(failed)}): aborting\n".encode())
        os.abort()


def _argv(ns: NodeNS | None, cmd: Sequence[str]) -> list[str]:
    if ns is None:
        return list(cmd)
    if is_inside(ns):
        return ["nsenter", f"--net={ns.inner_netns}", "--", *cmd] if ns.inner_netns else list(cmd)
    return ns.argv(cmd)


def run(
    ns: NodeNS | None,
    cmd: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in `ns` (or here when ns is None), capturing text output."""
    argv = _argv(ns, cmd)
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        argv, input=data, capture_output=True, text=True, timeout=timeout,
        env=dict(env) if env is not None else None,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(ns.name if ns else "host", list(cmd), proc.returncode, proc.stderr or proc.stdout)
    return proc


def spawn(
    ns: NodeNS | None,
    cmd: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a daemon in `ns`, detached in its own session; return its pid as this host numbers
    it, which is what the journal records and what `down` signals.

    Into a machine with a PID namespace, labnet-nsinit starts it (nsinit.c): nothing of ours
    stays beside it, and the machine's init is its parent. Otherwise nsenter execs it (no
    fork), so nsenter's pid is the daemon's.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    envd = dict(env) if env is not None else None
    if ns is None or not ns.pidns:
        argv = ns.argv(cmd) if ns else list(cmd)
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=envd, close_fds=True).pid
    if ns.inner_netns:
        raise ValueError(f"{ns.name}: daemons start in machines, not in pods")
    with open(log, "ab") as out:
        proc = subprocess.run([str(nsinit()), "spawn", ns.netns, ns.utsns or "-", ns.mntns or "-", ns.pidns, *cmd],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, start_new_session=True,
                              env=envd, text=True, timeout=30)
    pid = proc.stdout.strip()
    if proc.returncode != 0 or not pid.isdigit():
        try:
            said = log.read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            said = ""
        raise CommandFailed(ns.name, list(cmd), proc.returncode, f"not started: {said} (log {log})")
    return int(pid)


@functools.cache
def nsinit() -> Path:
    """labnet-nsinit (nsinit.c), built on first use."""
    from labnet.nsexec.build import compile_once

    return compile_once(Path(__file__).with_name("nsinit.c"), "labnet-nsinit")


def in_netns(ns: NodeNS, make: Callable[[], T]) -> T:
    """`make()` called in `ns`'s network namespace (a pod's: entered through its node's mount
    namespace, where its netns file is), by a short-lived thread, so no thread of ours changes
    namespace. What it makes there stays there: a socket it opens lives in that namespace,
    whichever thread uses it later."""
    box: list[T] = []
    err: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            if ns.inner_netns:
                if not ns.mntns:
                    raise ValueError(f"{ns.name}: a pod's namespace is reached through its node's mount namespace")
                _unshare(CLONE_FS)  # this thread only: setns into a mount namespace wants its own
                setns(ns.mntns, CLONE_NEWNS)
                setns(ns.inner_netns, CLONE_NEWNET)
            else:
                setns(ns.netns, CLONE_NEWNET)
            box.append(make())
        except BaseException as exc:  # raised again in the caller
            err.append(exc)

    t = threading.Thread(target=enter_and_make, name=f"in-{ns.name}", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def setns(path: str, nstype: int = 0) -> None:
    """Move the calling thread into the namespace at `path` (an nsfs file); nstype 0: any kind.
    (os.setns exists only from Python 3.12.)"""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd, nstype, f"into {path}")
    finally:
        os.close(fd)


@functools.cache
def _libc() -> object:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def setns_fd(fd: int, nstype: int, what: str) -> None:
    import ctypes

    if _libc().setns(fd, nstype) != 0:  # type: ignore[attr-defined]
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    import ctypes

    if _libc().unshare(flags) != 0:  # type: ignore[attr-defined]
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def set_process_name(name: str) -> None:
    """The name in /proc/self/comm (15 bytes), which `ps -o comm` and top show: a forked daemon
    keeps its parent's command line, so this is where it says what it is."""
    import ctypes

    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME


def children(pid: int) -> list[int]:
    """The direct children of `pid` (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _stat(pid: int, field: int) -> int | None:
    """Field `field` of /proc/<pid>/stat, counted after the command name (0: the state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[field])
    except (OSError, IndexError, ValueError):
        return None


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` as this process's PID namespace numbers it; None when it is gone."""
    return _stat(pid, 1)


def proc_starttime(pid: int) -> int | None:
    """Start time in clock ticks; recorded with a pid so a reused pid is never signalled."""
    return _stat(pid, 19)


def same_process(pid: int, start: int | None) -> bool:
    """`pid` is alive and is still the process recorded with start time `start` (None: any),
    not a later one that reused the pid. The one liveness test for recorded processes."""
    return pid_alive(pid) and (start is None or proc_starttime(pid) == start)


def terminate(pid: int, start: int | None, what: str, timeout: float = 5.0, kill_timeout: float = 5.0) -> None:
    """Stop the recorded process `pid` (started at `start`): SIGTERM, and SIGKILL if it is still
    there after `timeout`. A pid that is gone, or now someone else's, is left alone."""
    if not same_process(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        poll(lambda: pid_alive(pid), lambda up: not up, timeout=timeout, what=f"{what} to exit")
    except WaitTimeout:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        poll(lambda: pid_alive(pid), lambda up: not up, timeout=kill_timeout, what=f"{what} to die after SIGKILL")


def processes_in(netns_files: list[str]) -> list[int]:
    """Pids (other than ours) whose network namespace is one of these nsfs files."""
    inodes = set()
    for f in netns_files:
        try:
            inodes.add(os.stat(f).st_ino)
        except OSError:
            pass
    found = []
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid_s}/ns/net").st_ino in inodes:
                found.append(int(pid_s))
        except OSError:
            continue
    return found
