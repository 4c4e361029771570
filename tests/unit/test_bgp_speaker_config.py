"""Speaker configuration errors, the status table and the CLI's bad-input exits (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labnet.bgp.cli import main
from labnet.bgp.speaker import PeerConfig, PeerStatus, Speaker, format_status


@pytest.mark.parametrize("cfg,match", [
    (PeerConfig("10.0.0.300", 64512), "not an IPv4 address"),
    (PeerConfig("fe80::1", 64512), "not an IPv4 address"),
    (PeerConfig("10.0.0.2", 0), "AS 0 out of range"),
    (PeerConfig("10.0.0.2", 64512, hold_time=2), "hold time 2"),
    (PeerConfig("10.0.0.2", 64512, peer_type="mesh"), "peer type 'mesh'"),
    (PeerConfig("10.0.0.2", 64512, local_address="nope"), "local address 'nope'"),
])
def test_bad_peer_config_is_named(cfg: PeerConfig, match: str) -> None:
    sp = Speaker(64512, "10.0.0.1", "10.0.0.1")
    with pytest.raises(ValueError, match=match) as ei:
        sp.add_peer(cfg)
    assert cfg.address in str(ei.value) or "address" in str(ei.value)


def test_duplicate_peer_and_bad_prefix() -> None:
    sp = Speaker(64512, "10.0.0.1", "10.0.0.1")
    sp.add_peer(PeerConfig("10.0.0.2", 64512))
    with pytest.raises(ValueError, match="already configured"):
        sp.add_peer(PeerConfig("10.0.0.2", 64512))
    with pytest.raises(ValueError, match="'10.1.2.3/8'"):
        sp.originate("10.1.2.3/8")
    with pytest.raises(ValueError, match="'2001:db8::1/32'"):
        sp.originate("2001:db8::1/32")


def test_local_as_out_of_range() -> None:
    with pytest.raises(ValueError, match="local AS 0"):
        Speaker(0, "10.0.0.1", "10.0.0.1")


def test_originate_without_peers_updates_loc_rib() -> None:
    sp = Speaker(64512, "10.0.0.1", "10.0.0.1")
    sp.originate("10.100.5.192/26")
    assert [str(p) for p in sp.loc_rib()] == ["10.100.5.192/26"]
    sp.withdraw("10.100.5.192/26")
    assert sp.loc_rib() == {}


def test_status_table_looks_like_calicoctl() -> None:
    rows = [
        PeerStatus("10.20.30.72", "node-to-node mesh", "Established", 0.0, ""),
        PeerStatus("192.168.50.74", "node-to-node mesh", "Active", 3600.0, "Connect Socket: Connection refused"),
    ]
    table = format_status(rows).splitlines()
    assert table[1].split("|")[1:-1] == [" PEER ADDRESS  ", " PEER TYPE         ", " STATE ", " SINCE    ",
                                         " INFO                               "]
    assert "| 10.20.30.72   | node-to-node mesh | up    | 00:00:00 | Established" in table[3]
    assert "| start | 01:00:00 | Connect Socket: Connection refused |" in table[4]


def test_cli_rejects_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"asn": 64512, "router_id": "10.0.0.1", "local_address": "10.0.0.1",
                               "peers": [{"address": "10.0.0.2", "asn": 64512, "colour": "red"}]}))
    assert main([str(bad)]) == 2
    assert "colour" in capsys.readouterr().err


def test_unacked_counts_what_the_peer_has_not_taken_yet() -> None:
    # a real TCP connection on loopback: the peer does not read, so what we write stays in our
    # transport's buffer and socket's send queue; once it reads everything, nothing is pending
    import asyncio

    from labnet.bgp.speaker import _stalled, _unacked
    from labnet.wait import poll

    async def main() -> tuple[int, int, int]:
        got: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got.set_result(r)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        idle = _unacked(writer)
        assert not _stalled(writer), "a fresh connection is not retransmitting"
        size = 8 << 20
        writer.write(b"x" * size)
        reader = await got
        stuck = _unacked(writer)
        await reader.readexactly(size)
        await writer.drain()
        # the last ACK may trail the read by a moment (the kernel sends it, not this loop)
        done = poll(lambda: _unacked(writer), lambda n: n == 0, timeout=5, what="the peer's last ACK")
        writer.close()
        server.close()
        return idle, stuck, done

    idle, stuck, done = asyncio.run(main())
    assert (idle, done) == (0, 0) and stuck > 0, (idle, stuck, done)
    assert _unacked(None) == 0 and _stalled(None) is False
