"""Fuzz targets: plain functions of one `bytes` argument, for atheris, hypothesis and bench/fuzz.py.

A target returns when the input was handled: either accepted or refused with the component's
own typed error (whose message is rendered too: the CLI and the wire both print it). Any other
exception escaping a target is a crash, i.e. a bug in the component under test.
"""

from __future__ import annotations

from collections.abc import Callable


def bgp_decode(data: bytes) -> None:
    """labnet.bgp.codec: one message with both AS-number widths, then the same bytes as a stream.

    A decoded UPDATE must answer what the RIB asks of it (both families), and one decoded
    without errors must encode back to the same UPDATE (IPv6 MP attributes included)."""
    from labnet.bgp.codec import BgpError, Framer, Update, decode, encode

    for four_octet in (True, False):
        try:
            msg = decode(data, four_octet)
        except BgpError as exc:
            str(exc)
            continue
        if isinstance(msg, Update):
            msg.announced(), msg.unreachable(), msg.next_hop(), msg.next_hop6(), msg.end_of_rib_family()
            if four_octet and not msg.errors and decode(encode(msg)) != msg:
                raise AssertionError(f"bgp_decode: {msg!r} does not survive encode/decode")
    framer = Framer()
    try:
        # Two feeds, split inside the data, so the framer's buffering is exercised too.
        cut = data[0] % (len(data) + 1) if data else 0
        frames = framer.feed(data[:cut]) + framer.feed(data[cut:])
    except BgpError as exc:
        str(exc)
        return
    for frame in frames:
        try:
            decode(frame)
        except BgpError as exc:
            str(exc)


def topology_load(data: bytes) -> None:
    """labnet.topology.loads: a Topology or a TopologyError, nothing else."""
    from labnet.topology import Topology, TopologyError, loads

    # load() refuses non-UTF-8 files before loads() sees them; replacement keeps the shape.
    text = data.decode("utf-8", "replace")
    try:
        topo = loads(text, "fuzz.yaml")
    except TopologyError as exc:
        str(exc)
        return
    if not isinstance(topo, Topology):
        raise TypeError(f"loads returned {type(topo).__name__}, not a Topology")


def split_cni_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """Fuzz input -> (environment, stdin): `KEY=VALUE` lines, an empty line, then stdin.

    Environment text is decoded as os.environ does (UTF-8, surrogateescape); NUL cannot be in
    a real environment, so lines holding one are dropped.
    """
    head, sep, stdin = data.partition(b"\n\n")
    if not sep:
        head, stdin = b"", data
    env: dict[str, str] = {}
    for line in head.split(b"\n"):
        key, eq, value = line.partition(b"=")
        if eq and key and b"\x00" not in line:
            env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env, stdin


def cni_request(data: bytes) -> None:
    """The CNI plugin's request parsing: env (parse_env), stdin config (parse_conf), and the config
    fields the plugin reads before doing anything (etcd settings, pod labels from `args`).
    Everything must end as a parsed request or a CniError with a spec code."""
    from labnet.cni import plugin, settings
    from labnet.cni.spec import CniError, parse_conf, parse_env

    environ, stdin = split_cni_request(data)
    try:
        env = parse_env(environ)
        conf = parse_conf(stdin, env.command)
        if env.command != "VERSION":
            settings.etcd_config(conf)
            plugin._labels(env, conf)
    except CniError as exc:
        if not (isinstance(exc.code, int) and exc.code > 0):
            raise AssertionError(f"CniError without a spec code: {exc.code!r}") from exc
        exc.to_json("1.1.0")


def route_dump(data: bytes) -> None:
    """labnet.agent.rtnl.parse: the routes of a buffer of rtnetlink messages, or a DumpError;
    and parse_events of the same buffer, which takes what fits and never raises."""
    from labnet.agent.rtnl import DumpError, parse

    try:
        routes, _ = parse(data)
    except DumpError as exc:
        str(exc)
        return
    for r in routes:
        if not (isinstance(r.dst, str) and 0 <= r.dst_len <= 255):
            raise AssertionError(f"route_dump: a malformed route came out: {r}")
    # the same bytes as route events (the gates' reader): never raises
    from labnet.agent.rtnl import parse_events

    for _kind, r in parse_events(data):
        if not (isinstance(r.dst, str) and 0 <= r.dst_len <= 255):
            raise AssertionError(f"route_dump: a malformed route event came out: {r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bgp_decode": bgp_decode,
    "topology_load": topology_load,
    "cni_request": cni_request,
    "route_dump": route_dump,
}


def crash_key(exc: BaseException) -> str:
    """`Type@file:function` of the innermost labnet frame outside labnet.fuzz: one bug, one key,
    whatever the input, and stable while the owners edit other lines of the file."""
    import traceback
    from pathlib import Path

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/labnet/" in f.filename and "/labnet/fuzz/" not in f.filename] or frames
    # A comprehension or lambda is its own frame (<dictcomp>); name the function around it.
    named = [f for f in ours if not f.name.startswith("<")] or ours
    where = f"{Path(named[-1].filename).name}:{named[-1].name}" if named else "?"
    return f"{type(exc).__name__}@{where}"


def run_target(target: str, data: bytes) -> str | None:
    """Run one input; the crash key when something other than the typed error escaped."""
    try:
        TARGETS[target](data)
    except Exception as exc:  # anything escaping a target is a crash, by definition
        return crash_key(exc)
    return None
