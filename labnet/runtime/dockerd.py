"""labnet's own Docker engine: a dockerd that never touches the host's network.

Started with no bridge, no iptables/ip6tables rules, no IP forwarding and no masquerading, on
its own socket, pid file, exec root and data root, so it can neither collide with a system
dockerd nor add anything to the root network namespace. Lab containers use `network_mode:
none`; their links are veths that labnet makes.

`ensure_dockerd()` reuses a labnet dockerd that answers /_ping, else starts one; a handle says
whether we started it, so a test session stops only what it started (`stop_dockerd`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labnet.errors import LabnetError
from labnet.nsexec import pid_alive, proc_starttime, terminate
from labnet.wait import poll

SOCKET = Path(os.environ.get("LABNET_DOCKER_SOCKET", "/run/labnet-docker.sock"))
PIDFILE = Path("/run/labnet-docker.pid")
EXEC_ROOT = Path("/run/labnet-docker")
LOCK = Path("/run/labnet-docker.lock")


def data_root() -> Path:
    return Path(os.environ.get("LABNET_DOCKER_ROOT", "/var/lib/labnet/docker"))


def log_file() -> Path:
    return Path(os.environ.get("LABNET_DOCKER_LOG", "/var/log/labnet/dockerd.log"))


def base_url() -> str:
    """What the docker SDK, the docker CLI (DOCKER_HOST) and testinfra use to reach it."""
    return f"unix://{SOCKET}"


@dataclass(frozen=True)
class DockerdHandle:
    pid: int
    start: int | None  # the pid's start time, so a reused pid is never signalled
    socket: Path
    started: bool  # True: this call started it (and whoever holds the handle should stop it)

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"


def dockerd_argv() -> list[str]:
    exe = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin:/sbin")
    if exe is None:
        raise LabnetError("the docker runtime needs dockerd: install it with `apt-get install docker.io`")
    cfg = data_root() / "labnet-daemon.json"  # ours, so /etc/docker/daemon.json cannot re-enable anything
    return [
        exe, f"--host={base_url()}", f"--pidfile={PIDFILE}", f"--exec-root={EXEC_ROOT}",
        f"--data-root={data_root()}", f"--config-file={cfg}",
        # Never the root network namespace: no docker0, no NAT/filter rules, no forwarding sysctl.
        "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
        "--userland-proxy=false",
    ]


def ping(sock: Path = SOCKET, timeout: float = 2.0) -> bool:
    """GET /_ping over the unix socket; True when the engine answers OK."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.startswith(b"HTTP/1.1 200") and data.rstrip().endswith(b"OK")
    except OSError:
        return False
    finally:
        s.close()


def running_pid() -> int | None:
    """The pid of a running labnet dockerd (from its pid file), else None."""
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None
    return pid if exe.startswith("dockerd") else None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One starter at a time (parallel test workers, two `labnet up`s)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _log_tail(n: int = 15) -> str:
    try:
        return "\n".join(log_file().read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def ensure_dockerd(timeout: float = 60.0) -> DockerdHandle:
    with _locked():
        pid = running_pid()
        if pid is not None:
            poll(lambda: ping(), timeout=timeout, what=f"labnet dockerd (pid {pid}) to answer /_ping on {SOCKET}")
            return DockerdHandle(pid, proc_starttime(pid), SOCKET, started=False)
        root = data_root()
        root.mkdir(parents=True, exist_ok=True)
        (root / "labnet-daemon.json").write_text("{}\n")
        log = log_file()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(dockerd_argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)

        # "up" or "exited": a dockerd that dies while starting is reported at once, with its log
        def probe() -> str:
            if proc.poll() is not None:
                return "exited"
            return "up" if ping() else "starting"

        try:
            state = poll(probe, lambda s: s != "starting", timeout=timeout,
                         what=f"the labnet dockerd (pid {proc.pid}) to answer /_ping on {SOCKET}")
        except LabnetError as exc:
            proc.kill()
            proc.wait()
            raise LabnetError(f"{exc}\nlast lines of {log}:\n{_log_tail()}") from exc
        if state == "exited":
            raise LabnetError(f"dockerd exited with status {proc.returncode} while starting; "
                              f"last lines of {log}:\n{_log_tail()}")
        return DockerdHandle(proc.pid, proc_starttime(proc.pid), SOCKET, started=True)


def stop_dockerd(handle: DockerdHandle, timeout: float = 60.0) -> None:
    """Stop the dockerd of `handle` by its recorded pid (SIGTERM, then SIGKILL)."""
    pid = handle.pid
    terminate(pid, handle.start, f"dockerd pid {pid}", timeout, kill_timeout=10)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our child when we started it in this process


def client(timeout: float = 120.0) -> Any:
    """A docker SDK client on labnet's dockerd (imported late: the SDK costs ~0.2 s)."""
    # importlib: for type checkers the repository's docker/ directory (the Dockerfile) shadows the SDK
    try:
        docker = importlib.import_module("docker")
        docker.DockerClient  # noqa: B018  (a namespace package of a docker/ folder has no client)
    except (ImportError, AttributeError):
        raise LabnetError("the docker runtime needs the docker SDK: pip install 'labnet[docker]'") from None
    return docker.DockerClient(base_url=base_url(), timeout=int(timeout))
