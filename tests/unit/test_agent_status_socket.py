"""The status socket protocol, against an agent that has not started its datapath (no root needed)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from labnet.agent.config import AgentConfig, EtcdSettings
from labnet.agent.daemon import Agent
from labnet.agent.status import StatusUnavailable, request
from labnet.ipam.memstore import MemStore


def ask_raw(path: str, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(line)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return dict(json.loads(data))


def test_status_ping_resync_and_unknown_commands(tmp_path: Path) -> None:
    sock = str(tmp_path / "run" / "agent.sock")
    agent = Agent(AgentConfig(etcd=EtcdSettings(["http://127.0.0.1:1"]), status_socket=sock), store=MemStore())
    agent.name = "ubuntu-3"
    agent.state.problems = ["node name mismatch: example"]

    async def scenario() -> list[dict[str, Any]]:
        await agent._start_status_server()
        try:
            return [
                await asyncio.to_thread(request, sock, "status"),
                await asyncio.to_thread(request, sock, "ping"),
                await asyncio.to_thread(request, sock, "resync"),
                await asyncio.to_thread(request, sock, "frobnicate"),
                await asyncio.to_thread(ask_raw, sock, b"status\n"),  # the bare word works too
            ]
        finally:
            assert agent._server is not None
            agent._server.close()

    st, ping, resync, bad, bare = asyncio.run(scenario())
    assert st["nodename"] == "ubuntu-3" and st["pid"] == os.getpid()
    assert st["problems"] == ["node name mismatch: example"]
    assert st["peers"] == [] and st["tunnel"]["mode"] == "none" and st["ready"] is False
    assert set(st) >= {"bgp_address", "router_id", "tunnel", "peers", "blocks", "routes", "problems", "nat"}
    assert ping == {"ok": True, "pid": os.getpid()}
    assert resync == {"ok": True} and agent._ds_dirty
    assert "unknown command 'frobnicate'" in bad["error"]
    assert bare["nodename"] == "ubuntu-3"


def test_request_to_a_missing_socket_says_so(tmp_path: Path) -> None:
    with pytest.raises(StatusUnavailable, match="is labnet-agent running"):
        request(str(tmp_path / "none.sock"))
