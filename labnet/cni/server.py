"""labnet's per-node CNI server: the fast path behind the C shim (/opt/cni/bin/labnet).

    python -m labnet.cni.server --socket /var/run/labnet/cni.sock

As cilium-agent serves Cilium's CNI binary: the runtime still execs /opt/cni/bin/labnet with
the CNI_* environment and the config on stdin; the shim forwards both here (labnet.cni.framing)
and this process runs the very same `handle()` the exec'd Python plugins run, in-process:
the interpreter, the etcd client (one warm EtcdStore per etcd config) and pyroute2 are loaded
once, and `labnet-ipam` is called in-process instead of exec'd (other IPAM types still are,
from CNI_PATH). One thread per request; setns(2) for pod-side work moves only that thread.
A bad request gets an error answer and a log line; it never ends the server.

Runs inside the node (net + mount + UTS namespaces), like the exec'd plugin would.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labnet import jsonsock
from labnet.cni import datapath, framing, ipam_plugin, plugin, settings
from labnet.cni.spec import NETNS_GIVEN_ENV, CniError
from labnet.etcd.client import EtcdStore

DEFAULT_SOCKET = "/var/run/labnet/cni.sock"
REQUEST_TIMEOUT = 30.0  # the shim sends its request at once; a client stuck mid-request is dropped
MAX_STORES = 16

log = logging.getLogger("labnet.cni.server")


OnDone = Callable[[str, int, "bool | None"], None]  # command, exit status, borrowed (see Dispatcher)
_WARM = (datapath,)  # the plugin imports it lazily; the server pays once, at start


class StorePool:
    """One open EtcdStore per etcd config, shared by all requests (EtcdStore is thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[Any, ...], EtcdStore] = {}

    def get(self, conf: dict[str, Any]) -> EtcdStore:
        cfg = settings.etcd_config(conf)
        key = (cfg.endpoints, cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.timeout)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                if len(self._stores) >= MAX_STORES:  # forget the oldest; requests using it finish with it
                    self._stores.pop(next(iter(self._stores)))
                try:
                    store = EtcdStore(cfg)
                except ValueError as exc:
                    raise CniError(7, f"etcd_endpoints {conf.get('etcd_endpoints')!r}: {exc}") from exc
                self._stores[key] = store
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: the kind of namespace (linux/nsfs.h)
CLONE_NEWNET = 0x40000000


def _is_netns(fd: int) -> bool:
    """The fd the shim sent is a network namespace (not a FIFO, a device, a file...)."""
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


class Dispatcher:
    """Requests to the plugins' handle(), with the warm services."""

    def __init__(self) -> None:
        self.stores = StorePool()

    def ipam(self, environ: Mapping[str, str], stdin: bytes,
             memo: settings.RequestMemo | None = None) -> tuple[int, bytes, str]:
        return ipam_plugin.handle(environ, stdin, store_pool=self.stores, memo=memo)

    def __call__(self, req: framing.Request) -> tuple[int, bytes, str, bool | None]:
        """(exit status, stdout, stderr, whether an ADD borrowed its address: None if unknown)."""
        if req.netns_fd is not None:  # the runtime's netns, opened where its path means something
            if not _is_netns(req.netns_fd):
                bad = CniError(4, f"CNI_NETNS {req.env.get('CNI_NETNS', '')!r} is not a network namespace")
                return 1, (json.dumps(bad.to_json("1.0.0")) + "\n").encode(), "", None
            req = dataclasses.replace(req, env={**req.env, "CNI_NETNS": f"/proc/self/fd/{req.netns_fd}",
                                                NETNS_GIVEN_ENV: req.env.get("CNI_NETNS", "")})
        if req.plugin == "labnet":
            # One memo per request: the plugin and its in-process IPAM share the cluster settings read.
            memo = settings.RequestMemo()
            code, out, err = plugin.handle(req.env, req.stdin, store_pool=self.stores,
                                           ipam=functools.partial(self.ipam, memo=memo), memo=memo)
            return code, out, err, memo.borrowed
        if req.plugin == "labnet-ipam":
            return (*self.ipam(req.env, req.stdin), None)
        bad = CniError(4, f"labnet CNI server: unknown plugin {req.plugin!r}; expected labnet or labnet-ipam")
        return 1, (json.dumps(bad.to_json("1.0.0")) + "\n").encode(), "", None


class _Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        t0 = time.monotonic()
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            if not sock.recv(1, socket.MSG_PEEK):
                return  # closed before a byte: close_server's wake-up, or a liveness probe
            req = framing.read_request(sock)
        except (framing.FrameError, OSError) as exc:
            log.warning("dropped a bad request: %s", exc)
            return
        what = f"{req.plugin} {req.env.get('CNI_COMMAND', '?')} container={req.env.get('CNI_CONTAINERID', '-')}"
        try:
            code, out, err, borrowed = self.server.dispatch(req)
        except BaseException as exc:  # handle() turns errors into CNI errors; this is the last guard
            log.exception("%s: internal error", what)
            body = CniError(999, f"labnet CNI server internal error: {type(exc).__name__}: {exc}").to_json("1.0.0")
            code, out, err, borrowed = 1, (json.dumps(body) + "\n").encode(), "", None
        finally:
            if req.netns_fd is not None:
                os.close(req.netns_fd)
        try:
            sock.sendall(framing.encode_response(code, out, err.encode(errors="replace")))
        except OSError as exc:
            log.warning("%s: could not answer: %s", what, exc)
            return
        if self.server.on_done is not None:
            with contextlib.suppress(Exception):  # a hook's trouble is not the request's
                self.server.on_done(req.env.get("CNI_COMMAND", ""), code, borrowed)
        line = out.decode(errors="replace").strip() if code else ""
        log.info("%s -> exit %d in %.1f ms%s", what, code, (time.monotonic() - t0) * 1e3,
                 f": {line[:300]}" if line else "")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, path: str, dispatch: Dispatcher, on_done: OnDone | None = None) -> None:
        self.dispatch = dispatch
        self.path = path
        self.on_done = on_done
        super().__init__(path, _Handler)


def ping(path: str | Path, timeout: float = 5.0) -> bool:
    """True if a server answers a VERSION request on `path` (a host path may be long: the
    socket is reached through its directory's fd, so the 108-byte sun_path limit does not bite)."""
    try:
        with jsonsock.connect(path, timeout) as s:
            req = framing.Request("labnet", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
            s.sendall(framing.encode_request(req))
            code, out, _ = framing.read_response(s)
            return code == 0 and b"supportedVersions" in out
    except (OSError, framing.FrameError):
        return False


def _bind_path(path: str) -> None:
    """Make the socket's directory; refuse to start over a live server, clear a stale socket."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path):
        if ping(path, timeout=2):
            raise SystemExit(f"labnet CNI server: another server already answers on {path}")
        os.unlink(path)


def open_server(path: str, on_done: OnDone | None = None) -> Server:
    """Bind the socket (root's alone: it can create pods) and start serving in a thread.
    on_done(command, exit status, borrowed) runs after each answer (the node's agent listens)."""
    _bind_path(path)
    old = os.umask(0o077)
    try:
        server = Server(path, Dispatcher(), on_done)
    finally:
        os.umask(old)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="cni-server",
                     daemon=True).start()
    log.info("CNI server listening on %s (pid %d, python %s)", path, os.getpid(), sys.executable)
    return server


def close_server(server: Server) -> None:
    # shutdown() waits for the serving loop to see its flag, which it looks at between selects
    # of poll_interval (0.5 s of every node's stop): a connection wakes the select at once.
    stopper = threading.Thread(target=server.shutdown, name="cni-server-stop", daemon=True)
    stopper.start()
    while stopper.is_alive():
        with contextlib.suppress(OSError), jsonsock.connect(server.path, 0.1):
            pass
        stopper.join(0.02)
    server.server_close()
    server.dispatch.stores.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(server.path)
    log.info("CNI server stopped")


def serve(path: str) -> None:
    """Serve until SIGTERM/SIGINT (the server on its own; the node process runs it beside the agent)."""
    server = open_server(path)
    done = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not done.wait(0.5):
        pass
    close_server(server)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="labnet.cni.server", description=__doc__.split("\n")[0])
    ap.add_argument("--socket", default=DEFAULT_SOCKET, help=f"unix socket path (default {DEFAULT_SOCKET})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s cni-server: %(message)s")
    serve(args.socket)


if __name__ == "__main__":
    main()
