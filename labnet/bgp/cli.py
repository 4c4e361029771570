"""Run a standalone speaker: `python -m labnet.bgp.cli CONFIG.json`.

Used by lab tests and for debugging. CONFIG holds asn, router_id, local_address, optional bind,
next_hop6 (the node's IPv6 address: enables IPv6 unicast), bind6, port, restart_time, peers
(PeerConfig fields) and originate (IPv4 and IPv6 prefixes). A JSON-lines control
socket (`control` in the config) answers {"cmd": "status" | "status_table" | "rib" | "summary" |
"originate" | "withdraw"}, one JSON object per line each way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from labnet import jsonsock
from labnet.bgp.codec import prefix_key
from labnet.bgp.speaker import PeerConfig, Speaker, format_status
from labnet.errors import LabnetError


def rib_json(sp: Speaker) -> list[dict[str, Any]]:
    out = []
    rib = sp.loc_rib()
    for prefix in sorted(rib, key=prefix_key):
        path = rib[prefix]
        a = path.attrs
        out.append({
            "prefix": str(prefix),
            "next_hop": str(path.next_hop) if path.next_hop else None,
            "link_local": str(path.link_local) if path.link_local else None,
            "as_path": list(a.as_path_asns()),
            "local_pref": a.local_pref,
            "origin": a.origin.name if a.origin is not None else None,
            "from": str(path.source.address) if path.source else "local",
            "stale": path.stale,
        })
    return out


async def _serve_control(sp: Speaker, path: str) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    cmd = req.get("cmd")
                    result: object
                    if cmd == "status":
                        result = [s.as_dict() for s in sp.status()]
                    elif cmd == "status_table":
                        result = format_status(sp.status())
                    elif cmd == "rib":
                        result = rib_json(sp)
                    elif cmd == "summary":  # cheap enough to poll while a big table arrives
                        result = {"loc_rib": len(sp.rib.loc),
                                  "adj_rib_in": {str(a): len(t) for a, t in sp.rib.adj_in.items()},
                                  "peers": {s.address: s.state for s in sp.status()}}
                    elif cmd == "originate":
                        sp.originate(req["prefix"], req.get("next_hop"))
                        result = "ok"
                    elif cmd == "withdraw":
                        sp.withdraw(req["prefix"])
                        result = "ok"
                    else:
                        raise ValueError(f"unknown command {cmd!r}")
                    reply: dict[str, object] = {"ok": True, "result": result}
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(handle, path)


def control(path: str | Path, cmd: str, **args: object) -> Any:
    """Client side of the control socket (blocking); returns `result` or raises BgpControlError."""
    reply = jsonsock.request(str(path), {"cmd": cmd, **args}, what="BGP control socket")
    if not reply.get("ok"):
        raise BgpControlError(f"bgp control {cmd}: {reply.get('error')}")
    return reply["result"]


class BgpControlError(LabnetError):
    """The speaker answered, and refused the command."""


async def amain(cfg: dict[str, Any]) -> None:
    sp = Speaker(int(cfg["asn"]), cfg["router_id"], cfg["local_address"], bind=cfg.get("bind"),
                 port=int(cfg.get("port", 179)), restart_time=int(cfg.get("restart_time", 120)),
                 cluster_id=cfg.get("cluster_id"), next_hop6=cfg.get("next_hop6"), bind6=cfg.get("bind6"))
    for p in cfg.get("peers", []):
        sp.add_peer(PeerConfig(**p))
    for prefix in cfg.get("originate", []):
        sp.originate(prefix)
    await sp.start()
    server = await _serve_control(sp, cfg["control"]) if cfg.get("control") else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if server is not None:
        server.close()
    await sp.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labnet.bgp.cli", description=__doc__)
    ap.add_argument("config", help="JSON configuration file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as exc:
        print(f"labnet-bgp: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(amain(cfg))
    except (KeyError, TypeError, ValueError) as exc:
        print(f"labnet-bgp: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
