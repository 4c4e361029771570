"""The wire format between the C shim (/opt/cni/bin/labnet) and labnet's CNI server.

Kept to the standard library and in step with shim.c. All integers are u32 big-endian.

request:  b"LNC1" | nfields | nfields x (len | bytes)
          field 0 = plugin name (labnet | labnet-ipam), field 1 = stdin bytes,
          fields 2.. = environment entries b"KEY=VALUE" (CNI_* and PATH)
response: b"LNR1" | exit status | len | stdout bytes | len | stderr bytes

The shim sends the request's first bytes with the pod's netns as an open fd (SCM_RIGHTS) when
it could open CNI_NETNS: it opens the path in the runtime's mount namespace, which need not be
the server's.

Every length is bounded, so a confused peer costs an error, never unbounded memory.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

REQ_MAGIC = b"LNC1"
RESP_MAGIC = b"LNR1"
MAX_FIELDS = 2 + 256  # plugin, stdin, environment entries
MAX_STDIN = 16 << 20
MAX_ENV_ITEM = 64 << 10
MAX_STDOUT = 16 << 20
MAX_STDERR = 1 << 20
_U32 = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol (or a too large one)."""


@dataclass(frozen=True)
class Request:
    plugin: str
    env: dict[str, str]
    stdin: bytes
    netns_fd: int | None = None  # the pod's netns, opened by the shim; the receiver closes it


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What the shim forwards: the CNI_* variables and PATH (for delegated plugins)."""
    return {k: v for k, v in environ.items() if k.startswith("CNI_") or k == "PATH"}


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode_request(req: Request) -> bytes:
    items = [f"{k}={v}".encode() for k, v in req.env.items()]
    if len(items) + 2 > MAX_FIELDS:
        raise FrameError(f"{len(items)} environment entries; at most {MAX_FIELDS - 2}")
    fields = [req.plugin.encode(), req.stdin, *items]
    return REQ_MAGIC + _U32.pack(len(fields)) + b"".join(_field(f) for f in fields)


def encode_response(code: int, stdout: bytes, stderr: bytes) -> bytes:
    return RESP_MAGIC + _U32.pack(code & 0xFFFFFFFF) + _field(stdout[:MAX_STDOUT]) + _field(stderr[-MAX_STDERR:])


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes, or FrameError on EOF before them (socket timeouts propagate as TimeoutError)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise FrameError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _u32(sock: socket.socket) -> int:
    value: int = _U32.unpack(recv_exact(sock, 4))[0]
    return value


def _recv_with_fd(sock: socket.socket, n: int) -> tuple[bytes, int | None]:
    """The first n bytes and the one fd that may come with them (SCM_RIGHTS)."""
    fds: list[int] = []
    buf = b""
    try:
        while len(buf) < n:
            data, anc, _flags, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
            if not data:
                raise FrameError(f"connection closed after {len(buf)} of {n} bytes")
            buf += data
        if len(fds) > 1:
            raise FrameError(f"request came with {len(fds)} file descriptors; at most one (the pod's netns)")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return buf, (fds[0] if fds else None)


def read_request(sock: socket.socket) -> Request:
    """One request; its netns fd, if any, is the caller's to close (also when this raises later)."""
    magic, fd = _recv_with_fd(sock, 4)
    try:
        return _read_rest(sock, magic, fd)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise


def _read_rest(sock: socket.socket, magic: bytes, fd: int | None) -> Request:
    if magic != REQ_MAGIC:
        raise FrameError(f"bad request magic {magic!r}, expected {REQ_MAGIC!r}")
    n = _u32(sock)
    if not 2 <= n <= MAX_FIELDS:
        raise FrameError(f"request has {n} fields; expected 2..{MAX_FIELDS}")
    fields: list[bytes] = []
    for i in range(n):
        size = _u32(sock)
        limit = MAX_STDIN if i == 1 else MAX_ENV_ITEM
        if size > limit:
            raise FrameError(f"request field {i} is {size} bytes; at most {limit}")
        fields.append(recv_exact(sock, size))
    env: dict[str, str] = {}
    for item in fields[2:]:
        key, eq, value = item.decode("utf-8", "surrogateescape").partition("=")
        if not eq or not key:
            raise FrameError(f"environment entry {item[:60]!r} is not KEY=VALUE")
        env[key] = value
    return Request(fields[0].decode("utf-8", "replace"), env, fields[1], fd)


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    magic = recv_exact(sock, 4)
    if magic != RESP_MAGIC:
        raise FrameError(f"bad response magic {magic!r}, expected {RESP_MAGIC!r}")
    code = _u32(sock)
    out_len = _u32(sock)
    if out_len > MAX_STDOUT:
        raise FrameError(f"response stdout is {out_len} bytes; at most {MAX_STDOUT}")
    out = recv_exact(sock, out_len)
    err_len = _u32(sock)
    if err_len > MAX_STDERR:
        raise FrameError(f"response stderr is {err_len} bytes; at most {MAX_STDERR}")
    return code, out, recv_exact(sock, err_len)
