"""JSON lines over a Unix socket: the one client of labnet's daemon control sockets (the
agent's status socket, a standalone BGP speaker's control socket). One request line, one
answer line; every failure is a SocketUnavailable naming the socket and what went wrong."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from labnet.errors import LabnetError


class SocketUnavailable(LabnetError):
    """Nothing answered on the socket, or the answer was not a JSON object."""


def connect(path: str | Path, timeout: float) -> socket.socket:
    """A connected Unix socket to `path`, reached through its directory's fd, so a long host
    path to a socket inside a node's directories does not hit the 108-byte limit of a socket
    address. OSError as the kernel says it."""
    p = Path(path)
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(f"/proc/self/fd/{dfd}/{p.name}")
    except BaseException:
        s.close()
        raise
    finally:
        os.close(dfd)
    return s


def request(path: str, payload: dict[str, Any], *, timeout: float = 10.0, what: str = "control socket",
            hint: str = "") -> dict[str, Any]:
    """Send `payload` as one JSON line to the socket at `path`; return the JSON object answered."""
    return exchange(path, payload, timeout=timeout, what=what, hint=hint)[0]


def exchange(path: str, payload: dict[str, Any], *, timeout: float = 10.0, what: str = "control socket",
             hint: str = "") -> tuple[dict[str, Any], int]:
    """`request`, and the pid of the process listening on the socket as this process's PID
    namespace numbers it (SO_PEERCRED; the kernel translates it), 0 if the kernel cannot say."""
    where = f"{what} {path}"
    try:
        s = connect(path, timeout)
    except OSError as exc:
        raise SocketUnavailable(f"{where}: {exc.strerror or exc}{f' ({hint})' if hint else ''}") from exc
    try:
        peer = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError as exc:
        raise SocketUnavailable(f"{where}: no answer within {timeout:.0f}s") from exc
    except OSError as exc:
        raise SocketUnavailable(f"{where}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    try:
        data = json.loads(buf)
    except ValueError as exc:
        raise SocketUnavailable(f"{where}: answer is not JSON: {buf[:200]!r}") from exc
    if not isinstance(data, dict):
        raise SocketUnavailable(f"{where}: expected a JSON object, got {data!r}"[:300])
    return data, peer
