"""`labnet-agent`: run | supervise | status.

  labnet-agent run --config /var/lib/labnet/agent.json
  labnet-agent supervise [--config PATH] [-- ARGV...]   restarts the agent when it dies
  labnet-agent status [--json] [--socket PATH | --config PATH]
"""

from __future__ import annotations

import argparse
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

SUPERVISOR_ENV = "LABNET_AGENT_SUPERVISOR"  # the supervisor's pid, reported in the agent's status
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # a child that ran this long resets the backoff


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_file)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from labnet.agent.daemon import run_agent

    cfg = AgentConfig.load(args.config)
    _setup_logging(cfg.log_file)
    logging.getLogger("labnet.agent").info("labnet-agent starting (pid %d, config %s)", os.getpid(), args.config)
    return run_agent(cfg)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL, so no agent is orphaned
    (the lab records and signals only the supervisor's pid)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def supervise(argv: Sequence[str], log_file: str | None = None) -> int:
    """Run argv; restart it with backoff whenever it exits, until SIGTERM/SIGINT (forwarded to it)."""
    _setup_logging(log_file)
    log = logging.getLogger("labnet.agent.supervisor")
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    backoff = BACKOFF_START
    restarts = 0
    rc = 0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(list(argv), env=env, preexec_fn=_die_with_parent)
        log.info("supervisor %d: started agent pid %d: %s", os.getpid(), child.pid, " ".join(argv))
        rc = child.wait()
        if stopping:
            break
        ran = time.monotonic() - started
        if ran >= HEALTHY_AFTER:
            backoff = BACKOFF_START
        restarts += 1
        how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        log.warning("supervisor %d: agent pid %d %s after %.1fs; restart #%d in %.1fs",
                    os.getpid(), child.pid, how, ran, restarts, backoff)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))  # restart backoff (daemon timer)
        backoff = min(backoff * 2, BACKOFF_MAX)
    if child is not None and child.poll() is None:
        try:
            rc = child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            rc = child.wait()
    log.info("supervisor %d: stopped (agent exit %s)", os.getpid(), rc)
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        argv = [sys.executable, "-m", "labnet.agent.main", "run", "--config", args.config]
    log_file = None
    try:
        log_file = AgentConfig.load(args.config).log_file
    except LabnetError:
        pass
    return supervise(argv, log_file)


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
    r = sub.add_parser("run", help="run the agent in this node's namespaces")
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
