"""`labnet-agent`: run | supervise | status.

  labnet-agent run --config /var/lib/labnet/agent.json
  labnet-agent supervise [--config PATH] [-- ARGV...]   runs the node's process (agent, CNI
                                                        server, datapath) and restarts it
  labnet-agent status [--json] [--socket PATH | --config PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from labnet.agent.config import DEFAULT_CONFIG, AgentConfig
from labnet.errors import LabnetError
from labnet.nsexec import set_process_name

SUPERVISOR_ENV = "LABNET_AGENT_SUPERVISOR"  # the supervisor's pid, reported in the agent's status
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # a child that ran this long resets the backoff
STOP_TIMEOUT = 20  # seconds a stopping child gets before SIGKILL


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_file)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from labnet.agent.node import run_node

    cfg = AgentConfig.load(args.config)
    set_process_name("labnet-node")  # what `ps -o comm` shows, as for the node process a supervisor forks
    _setup_logging(cfg.log_file)
    logging.getLogger("labnet.agent").info("labnet-agent starting (pid %d, config %s)", os.getpid(), args.config)
    return run_node(cfg)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL, so no agent is orphaned
    (the lab records and signals only the supervisor's pid)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _fork_node(config: str) -> int:
    """Fork this (pre-imported) supervisor into the node's process: agent, CNI server and
    datapath (labnet.agent.node). A restart costs a fork, not an interpreter start-up."""
    from labnet.agent.node import run_node

    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    rc = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != supervisor:  # it died before prctl took effect
            os._exit(1)
        os.environ[SUPERVISOR_ENV] = str(supervisor)
        set_process_name("labnet-node")
        cfg = AgentConfig.load(config)
        _setup_logging(cfg.log_file)
        logging.getLogger("labnet.agent").info("labnet-agent starting (pid %d, config %s)", os.getpid(), config)
        rc = run_node(cfg)
    except SystemExit as exc:
        rc = exit_status(exc)
    except BaseException:
        logging.getLogger("labnet.agent").exception("node process failed")
    finally:
        logging.shutdown()
        os._exit(rc)


def exit_status(exc: SystemExit) -> int:
    """What a process exiting with `exc` returns, as the interpreter would (a message: 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _popen(argv: Sequence[str]) -> int:
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    return subprocess.Popen(list(argv), env=env, preexec_fn=_die_with_parent).pid


def _wait(pid: int) -> int:
    """The child's exit status (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)  # retried after a signal handler ran (PEP 475)
    return os.waitstatus_to_exitcode(status)


def supervise(config: str, argv: Sequence[str] = (), log_file: str | None = None) -> int:
    """Run the node's process (or argv); restart it with backoff whenever it exits, until
    SIGTERM/SIGINT (forwarded to it)."""
    _setup_logging(log_file)
    set_process_name("labnet-agent")  # as the zygote names it; started by exec, it would say python3
    log = logging.getLogger("labnet.agent.supervisor")
    if not argv:
        import gc

        import labnet.agent.node  # noqa: F401  (imported once here: every fork starts warm)

        gc.freeze()  # imported objects stay out of the collector's way: their pages stay shared
    stopping = False
    child = 0

    def forward(signum: int) -> None:
        for sig in (signum, signal.SIGCONT):  # SIGCONT: a stopped (faulted) child must hear it too
            with contextlib.suppress(ProcessLookupError):
                if child:
                    os.kill(child, sig)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        forward(signum)
        signal.alarm(STOP_TIMEOUT)  # a child that does not stop in time is killed (on_alarm)

    def on_alarm(_signum: int, _frame: object) -> None:
        forward(signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    what = " ".join(argv) if argv else f"node process (agent, CNI server, datapath) --config {config}"
    backoff = BACKOFF_START
    restarts = 0
    rc = 0
    while not stopping:
        started = time.monotonic()
        child = _popen(argv) if argv else _fork_node(config)
        log.info("supervisor %d: started agent pid %d: %s", os.getpid(), child, what)
        if stopping:  # the signal came while the child was being made: it has not heard it
            forward(signal.SIGTERM)
        rc = _wait(child)
        if stopping:
            break
        dead, child = child, 0
        ran = time.monotonic() - started
        if ran >= HEALTHY_AFTER:
            backoff = BACKOFF_START
        restarts += 1
        how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        log.warning("supervisor %d: agent pid %d %s after %.1fs; restart #%d in %.1fs",
                    os.getpid(), dead, how, ran, restarts, backoff)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))  # restart backoff (daemon timer)
        backoff = min(backoff * 2, BACKOFF_MAX)
    log.info("supervisor %d: stopped (agent exit %s)", os.getpid(), rc)
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    log_file = None
    try:
        log_file = AgentConfig.load(args.config).log_file
    except LabnetError:
        pass
    return supervise(args.config, argv, log_file)


def cmd_status(args: argparse.Namespace) -> int:
    from labnet.agent.status import format_status, request

    path = args.socket
    if path is None:
        path = AgentConfig.load(args.config).status_socket if Path(args.config).exists() else None
    from labnet.agent.config import DEFAULT_SOCKET

    data = request(path or DEFAULT_SOCKET, "status")
    if args.json:
        print(json.dumps(data, indent=1, sort_keys=True))
    else:
        sys.stdout.write(format_status(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="labnet-agent", description="labnet's node agent (the seed's calico-node)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the node's process (agent, CNI server, datapath) in this node's namespaces")
    r.add_argument("--config", default=DEFAULT_CONFIG)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("supervise", help="run the agent and restart it when it dies")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("argv", nargs=argparse.REMAINDER, help="-- command to supervise (default: run --config)")
    s.set_defaults(func=cmd_supervise)
    st = sub.add_parser("status", help="print the agent's status (peers like calicoctl node status)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--socket", default=None, help="status socket (default: from --config, else the default)")
    st.add_argument("--config", default=DEFAULT_CONFIG)
    st.set_defaults(func=cmd_status)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LabnetError as exc:
        print(f"labnet-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
