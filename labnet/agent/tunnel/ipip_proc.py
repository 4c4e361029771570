"""The userspace tunl0 as its own process, so it outlives a killed agent (graceful restart).

The TUN device lives only as long as the fd that created it. Held by the agent, a SIGKILL of
the agent removes tunl0 and with it every route through it: cross-node pod traffic stops until
the agent is back. So the agent runs `python -m labnet.agent.tunnel.ipip_user` in its own
session (a SIGKILL of the agent or its process group does not reach it), records its pid in a
pidfile, and a restarted agent ADOPTS it when the pidfile's process is alive, really is the
datapath (/proc/<pid>/cmdline) and runs with the same parameters; otherwise it stops the old one
and starts a new one. Only a clean stop() (the agent's SIGTERM) ends the datapath and tunl0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from labnet.agent.tunnel.ipip_user import TunnelError
from labnet.nsexec import pid_alive
from labnet.wait import WaitTimeout, poll

log = logging.getLogger("labnet.agent.tunnel")

MODULE = "labnet.agent.tunnel.ipip_user"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


class IpipProcess:
    """Tunnel (see labnet.agent.tunnel.Tunnel) backed by a separate ipip_user process."""

    mode = "ipip-userspace"

    def __init__(self, local: str, address: str, mtu: int | None, *, run_dir: Path,
                 log_file: Path | None = None, ifname: str = "tunl0") -> None:
        self.local, self.address, self.mtu, self.ifname = local, address, mtu, ifname
        self.pidfile = run_dir / f"ipip-{ifname}.pid"
        self.status_file = run_dir / f"ipip-{ifname}.status.json"
        self.log_file = log_file or run_dir / f"ipip-{ifname}.log"
        self.pid: int | None = None
        self.adopted = False
        self._proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        """Everything after the interpreter: also what adoption compares with /proc/<pid>/cmdline."""
        a = ["-m", MODULE, "--local", self.local, "--address", self.address]
        if self.mtu is not None:
            a += ["--mtu", str(self.mtu)]
        return a + ["--ifname", self.ifname, "--status-file", str(self.status_file)]

    # -- lifecycle -------------------------------------------------------------------------

    def _recorded(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _is_datapath(self, pid: int) -> bool:
        cmd = _cmdline(pid)
        return cmd is not None and MODULE in cmd and pid_alive(pid)

    def start(self) -> None:
        old = self._recorded()
        if old is not None and self._is_datapath(old):
            cmd = _cmdline(old) or []
            if cmd[1:] == self.args():
                self.pid, self.adopted = old, True
                log.info("%s: adopted the running datapath pid %d", self.ifname, old)
                self.update_routes()  # routes may have changed while nobody watched the pidfile
                return
            log.info("%s: datapath pid %d runs with other parameters (%s); replacing it",
                     self.ifname, old, " ".join(cmd[1:]))
            self._terminate(old)
        self._spawn()

    def _spawn(self) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.status_file.unlink()  # a fresh one says the new process is up
        with open(self.log_file, "ab") as out:
            # own session: a SIGKILL of the agent (or its group) leaves the datapath running
            proc = subprocess.Popen([sys.executable, *self.args()], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self._proc, self.pid, self.adopted = proc, proc.pid, False
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        os.replace(tmp, self.pidfile)

        def up() -> str:
            if proc.poll() is not None:
                return f"exited with status {proc.returncode}"
            return "up" if self.status_file.exists() else "starting"

        try:
            state = poll(up, lambda s: s != "starting", timeout=START_TIMEOUT,
                         what=f"userspace {self.ifname} (pid {proc.pid}) to write {self.status_file}")
        except WaitTimeout:
            self.stop()
            raise
        if state != "up":
            self._forget()
            raise TunnelError(f"userspace {self.ifname} (local {self.local}, address {self.address}): datapath "
                              f"pid {proc.pid} {state}; see {self.log_file}")
        log.info("%s: started the datapath pid %d (log %s)", self.ifname, proc.pid, self.log_file)

    def _terminate(self, pid: int) -> None:
        """SIGTERM (the datapath removes tunl0), then wait; SIGKILL if it does not go."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            if self._proc is not None and self._proc.pid == pid:
                return self._proc.poll() is not None  # our child: reap it
            return not pid_alive(pid)

        try:
            poll(gone, timeout=STOP_TIMEOUT, what=f"datapath pid {pid} of {self.ifname} to exit after SIGTERM")
        except WaitTimeout:
            log.warning("%s: datapath pid %d ignored SIGTERM; SIGKILL", self.ifname, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            poll(gone, timeout=STOP_TIMEOUT, what=f"datapath pid {pid} of {self.ifname} to exit after SIGKILL")

    def _forget(self) -> None:
        for f in (self.pidfile, self.status_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        self.pid, self._proc = None, None

    def stop(self) -> None:
        """End the datapath (it removes tunl0 and its routes)."""
        if self.pid is not None and (self._proc is not None or self._is_datapath(self.pid)):
            self._terminate(self.pid)
        self._forget()

    # -- control and status ----------------------------------------------------------------

    def update_routes(self) -> None:
        """Ask the datapath to re-read the kernel routes now (its monitor follows changes anyway)."""
        if self.pid is None:
            raise TunnelError(f"userspace {self.ifname}: no datapath process")
        try:
            os.kill(self.pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise TunnelError(f"userspace {self.ifname}: datapath pid {self.pid} is gone") from exc

    def status(self) -> dict[str, object]:
        """The datapath's status file (rewritten every second) plus pid and liveness."""
        try:
            st: dict[str, object] = json.loads(self.status_file.read_text())
        except (OSError, ValueError) as exc:
            st = {"error": f"status file {self.status_file}: {exc}"}
        alive = self.pid is not None and pid_alive(self.pid)
        st.update(pid=self.pid, adopted=self.adopted, alive=alive, mode=self.mode)
        if not alive:
            st["error"] = f"datapath pid {self.pid} is not running (log {self.log_file})"
        return st
