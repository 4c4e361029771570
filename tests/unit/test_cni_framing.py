"""The shim <-> CNI server wire format (Python side), and the plugins' pure handle()."""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path

import pytest

from labnet.cni import framing, ipam_plugin, plugin
from labnet.cni.server import Dispatcher, Server, ping


def _pair_send(data: bytes) -> socket.socket:
    a, b = socket.socketpair()
    a.sendall(data)
    a.close()
    return b


def test_request_round_trip_keeps_bytes_and_env() -> None:
    stdin = bytes(range(256)) * 1000  # not text, and larger than one recv
    req = framing.Request("labnet-ipam", {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b=c;X=", "PATH": "/bin"}, stdin)
    a, b = socket.socketpair()
    sender = threading.Thread(target=a.sendall, args=(framing.encode_request(req),))
    sender.start()
    got = framing.read_request(b)
    sender.join()
    assert got == req


def test_response_round_trip() -> None:
    s = _pair_send(framing.encode_response(7, b'{"code": 7}\n', b"warning"))
    assert framing.read_response(s) == (7, b'{"code": 7}\n', b"warning")


def test_forwarded_env_is_cni_and_path_only() -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_PATH": "/opt/cni/bin", "PATH": "/bin", "HOME": "/root", "XCNI_": "no"}
    assert framing.forwarded_env(env) == {"CNI_COMMAND": "DEL", "CNI_PATH": "/opt/cni/bin", "PATH": "/bin"}


@pytest.mark.parametrize("data, words", [
    (b"GET / HTTP/1.0\r\n", "magic"),
    (b"LNC1" + struct.pack(">I", 1), "fields"),
    (b"LNC1" + struct.pack(">I", framing.MAX_FIELDS + 1), "fields"),
    (b"LNC1" + struct.pack(">II", 2, framing.MAX_ENV_ITEM + 1), "field 0"),
    (b"LNC1" + struct.pack(">II", 2, 0) + struct.pack(">I", framing.MAX_STDIN + 1), "field 1"),
    (b"LNC1" + struct.pack(">II", 3, 0) + struct.pack(">I", 0) + struct.pack(">I", 5) + b"NOEQ!", "KEY=VALUE"),
    (b"LNC1" + struct.pack(">II", 2, 10) + b"abc", "closed after 3 of 10"),
])
def test_bad_requests_are_frame_errors(data: bytes, words: str) -> None:
    with pytest.raises(framing.FrameError, match=words):
        framing.read_request(_pair_send(data))


def test_oversized_response_is_refused() -> None:
    data = b"LNR1" + struct.pack(">II", 0, framing.MAX_STDOUT + 1)
    with pytest.raises(framing.FrameError, match="stdout"):
        framing.read_response(_pair_send(data))


def test_handle_is_pure_and_returns_cni_errors() -> None:
    code, out, err = plugin.handle({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert code == 0 and json.loads(out)["cniVersion"] == "0.4.0" and err == ""
    code, out, _ = plugin.handle({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0"}')
    doc = json.loads(out)
    assert code == 1 and doc["code"] == 4 and "CNI_CONTAINERID" in doc["msg"] and doc["cniVersion"] == "1.0.0"
    code, out, _ = ipam_plugin.handle({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0",
                                       "CNI_PATH": "/x"}, b"{nope")
    assert code == 1 and json.loads(out)["code"] == 6


def test_server_answers_in_process_and_survives_junk(tmp_path: Path) -> None:
    path = str(tmp_path / "cni.sock")
    server = Server(path, Dispatcher())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"junk that is not a frame")
            s.shutdown(socket.SHUT_WR)
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        assert ping(path)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(framing.encode_request(framing.Request("frobnicate", {"CNI_COMMAND": "VERSION"}, b"")))
            code, out, _ = framing.read_response(s)
        assert code == 1 and json.loads(out)["code"] == 4 and "frobnicate" in json.loads(out)["msg"]
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


def _send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data[:4]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    sock.sendall(data[4:])


def test_the_pods_netns_fd_comes_with_the_request_and_too_many_fds_are_refused(tmp_path: Path) -> None:
    import os

    req = framing.Request("labnet", {"CNI_COMMAND": "ADD", "CNI_NETNS": "/mnt/pod-ns"}, b"{}")
    f = tmp_path / "ns"
    f.write_text("stands for a netns")
    fd = os.open(f, os.O_RDONLY)
    try:
        a, b = socket.socketpair()
        _send_with_fds(a, framing.encode_request(req), [fd])
        got = framing.read_request(b)
        assert got.netns_fd is not None and got.netns_fd != fd
        assert os.path.samefile(f"/proc/self/fd/{got.netns_fd}", f), "the fd received is the file sent"
        assert (got.plugin, got.env, got.stdin) == (req.plugin, req.env, req.stdin)
        os.close(got.netns_fd)
        # two fds: refused, and neither is left open here
        before = set(os.listdir("/proc/self/fd"))
        a, b = socket.socketpair()
        _send_with_fds(a, framing.encode_request(req), [fd, fd])
        with pytest.raises(framing.FrameError, match="2 file descriptors"):
            framing.read_request(b)
        assert set(os.listdir("/proc/self/fd")) <= before | {str(a.fileno()), str(b.fileno())}
    finally:
        os.close(fd)


def test_a_netns_fd_that_is_not_a_netns_is_refused(tmp_path: Path) -> None:
    import os

    f = tmp_path / "not-a-netns"
    f.write_text("x")
    fd = os.open(f, os.O_RDONLY)
    req = framing.Request("labnet", {"CNI_COMMAND": "ADD", "CNI_NETNS": str(f), "CNI_CONTAINERID": "c1",
                                     "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}, b"{}", fd)
    try:
        code, out, _err, _borrowed = Dispatcher()(req)
    finally:
        os.close(fd)
    doc = json.loads(out)
    assert code == 1 and doc["code"] == 4 and "is not a network namespace" in doc["msg"], doc
