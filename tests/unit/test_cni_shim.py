"""The C shim (labnet/cni/shim.c) against fake servers on a unix socket in a tmp dir.

No namespaces: the shim is pointed at the fake with LABNET_CNI_SOCKET, and its Python
fallback (.labnet-py next to it) is a small script that reports what it got.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labnet.cni import framing, install
from labnet.cni.server import Dispatcher, Server

FALLBACK = f"""#!{sys.executable}
import json, os, sys
print(json.dumps({{"fallback": True, "argv1": sys.argv[1:], "stdin": sys.stdin.read(),
                  "cmd": os.environ.get("CNI_COMMAND")}}))
sys.exit(3)
"""
CONF = '{"cniVersion": "0.4.0", "name": "n", "type": "labnet"}'


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = install.build_shim(tmp_path_factory.mktemp("shim-cache"))
    if built is None:
        pytest.skip("no C compiler: the plugins run as Python scripts (covered elsewhere)")
    return built


@pytest.fixture
def bindir(shim: Path, tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("labnet", "labnet-ipam"):
        (d / name).write_bytes(shim.read_bytes())
        (d / install.fallback_name(name)).write_text(FALLBACK)
        for f in (d / name, d / install.fallback_name(name)):
            f.chmod(0o755)
    return d


def run_shim(bindir: Path, sock: Path, stdin: bytes | str = CONF, binary: str = "labnet",
             **env: str) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    full = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "HOME": "/nowhere",
            "LABNET_CNI_SOCKET": str(sock), **env}
    return subprocess.run([str(bindir / binary), "extra-arg"], input=data, capture_output=True, env=full,
                          timeout=60)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], Path]]:
    """fake(behaviour) -> socket path; behaviour(conn) runs for every connection."""
    listeners: list[socket.socket] = []
    release = threading.Event()

    def start(behaviour: Callable[[socket.socket], None]) -> Path:
        path = tmp_path / f"s{len(listeners)}.sock"
        lst = socket.socket(socket.AF_UNIX)
        lst.bind(str(path))
        lst.listen(8)
        listeners.append(lst)

        def loop() -> None:
            while True:
                try:
                    conn, _ = lst.accept()
                except OSError:
                    return
                with conn:
                    try:
                        behaviour(conn)
                    except OSError:
                        pass
        threading.Thread(target=loop, daemon=True).start()
        return path

    start.release = release  # type: ignore[attr-defined]
    yield start
    release.set()
    for lst in listeners:
        lst.close()


def test_without_a_server_the_shim_execs_the_python_plugin_with_stdin_untouched(bindir: Path, tmp_path: Path) -> None:
    proc = run_shim(bindir, tmp_path / "nothing-here.sock")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc == {"fallback": True, "argv1": ["extra-arg"], "stdin": CONF, "cmd": "ADD"}


def test_the_shim_forwards_env_and_stdin_and_returns_the_answer(bindir: Path, fake: Callable[..., Path]) -> None:
    seen: list[framing.Request] = []

    def echo(conn: socket.socket) -> None:
        req = framing.read_request(conn)
        seen.append(req)
        conn.sendall(framing.encode_response(5, json.dumps({"plugin": req.plugin}).encode(), b"a warning\n"))

    sock = fake(echo)
    big = json.dumps({"cniVersion": "1.0.0", "blob": "x" * 300_000})  # several partial reads and writes
    for binary in ("labnet", "labnet-ipam"):
        proc = run_shim(bindir, sock, big, binary=binary, CNI_PATH="/opt/cni/bin")
        assert proc.returncode == 5 and json.loads(proc.stdout) == {"plugin": binary}, proc
        assert proc.stderr == b"a warning\n"
    req = seen[-1]
    assert req.stdin == big.encode()
    assert req.env == {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                       "CNI_PATH": "/opt/cni/bin"}, "forwards CNI_* and PATH only"


def test_a_stuck_server_gives_error_11_after_the_timeout(bindir: Path, fake: Callable[..., Path]) -> None:
    def stuck(conn: socket.socket) -> None:
        framing.read_request(conn)
        fake.release.wait(60)  # type: ignore[attr-defined]

    proc = run_shim(bindir, fake(stuck), LABNET_CNI_TIMEOUT="1")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["code"] == 11 and doc["msg"] == "labnet CNI server did not answer", doc
    assert doc["cniVersion"] == "0.4.0" and "within 1 s" in doc["details"]


def test_a_server_that_hangs_up_before_answering_gets_the_python_plugin(bindir: Path, fake: Callable[..., Path]) -> None:
    def hang_up(conn: socket.socket) -> None:
        framing.read_request(conn)

    proc = run_shim(bindir, fake(hang_up))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 3 and doc["fallback"] and doc["stdin"] == CONF, "stdin replayed to the fallback"


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\n\r\n", b"LNR1\x00\x00\x00\x00\xff\xff\xff\xff",
                                    b"LNR1\x00\x00\x00\x00\x00\x00\x00\x10{\"trunc"])
def test_a_malformed_or_cut_answer_is_error_11(bindir: Path, fake: Callable[..., Path], answer: bytes) -> None:
    def bad(conn: socket.socket) -> None:
        framing.read_request(conn)
        conn.sendall(answer)

    proc = run_shim(bindir, fake(bad))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["code"] == 11 and doc["cniVersion"] == "0.4.0", doc


def test_the_shim_against_the_real_server_in_process(bindir: Path, tmp_path: Path) -> None:
    path = tmp_path / "cni.sock"
    server = Server(str(path), Dispatcher())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        proc = run_shim(bindir, path, '{"cniVersion": "1.1.0"}', CNI_COMMAND="VERSION")
        assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0", proc
        # VERSION answers whatever stdin holds, as libcni's skel does
        proc = run_shim(bindir, path, "{broken", binary="labnet-ipam", CNI_COMMAND="VERSION")
        assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0", proc
        proc = run_shim(bindir, path, '{"cniVersion": "9.9.9"}', CNI_COMMAND="VERSION")
        assert proc.returncode == 0 and "1.0.0" in json.loads(proc.stdout)["supportedVersions"], proc
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)
    assert not os.path.exists(path) or path.is_socket()


def test_a_server_that_accepts_nothing_gives_error_11(bindir: Path, tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX) as lst:
        lst.bind(str(path))
        lst.listen(0)
        waiting: list[socket.socket] = []
        try:
            while len(waiting) < 64:  # fill the backlog: a stopped server never accepts
                c = socket.socket(socket.AF_UNIX)
                c.setblocking(False)
                waiting.append(c)
                try:
                    c.connect(str(path))
                except BlockingIOError:
                    break
            proc = run_shim(bindir, path, LABNET_CNI_TIMEOUT="1")
        finally:
            for c in waiting:
                c.close()
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["code"] == 11 and "accepts no connection" in doc["details"], doc
