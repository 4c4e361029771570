"""Seeded input generators shared by bench/fuzz.py (mutate engine) and the CI hypothesis run.

Hypothesis draws one integer and these build the input from it: drawing a whole JSON tree
through hypothesis costs ~40 ms an example, this costs ~50 µs, and 1500 examples a target
must fit in CI's budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labnet.bgp.codec import Message, Update

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x3A, 0x22, 0x7B, 0x5B, 0x2D, 0x20)


def mutate(rng: random.Random, data: bytes, pool: Sequence[bytes], max_len: int = 4096) -> bytes:
    """1-8 random edits: bit flips, interesting bytes, inserts, deletes, duplications, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(INTERESTING)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 3 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 4 and buf:
            j = rng.randrange(len(buf))
            buf[pos:pos] = buf[j:j + rng.randint(1, 32)]
        elif pool:
            other = rng.choice(pool)
            buf[pos:] = other[rng.randrange(len(other) + 1):]
    return bytes(buf[:max_len])


def random_tree(rng: random.Random, keys: Sequence[str], scalars: Sequence[Any], depth: int = 3) -> Any:
    """A JSON/YAML-able value whose mapping keys mostly come from `keys`."""
    roll = rng.random()
    if depth <= 0 or roll < 0.45:
        return rng.choice([*scalars, None, True, 0, -1, 65536, 1.5, "", "x" * rng.randint(1, 20)])
    if roll < 0.6:
        return [random_tree(rng, keys, scalars, depth - 1) for _ in range(rng.randint(0, 3))]
    return {(rng.choice(keys) if rng.random() < 0.85 else rng.choice(["", "0", "é", "a b"])):
            random_tree(rng, keys, scalars, depth - 1) for _ in range(rng.randint(0, 5))}


TOPO_KEYS = ("name", "networks", "routers", "hosts", "cluster", "scenarios", "cidr", "interfaces", "network",
             "address", "gateway", "etcd", "pool", "bgp", "nodes", "pods", "node", "labels", "block_size", "ipip",
             "vxlan", "mtu", "tls", "asn", "mesh", "peers", "ping", "from", "to", "runtime", "lan-a", "ubuntu-1")
TOPO_SCALARS = ("10.0.0.0/24", "10.0.0.1", "10.100.0.0/16", "lan-a", "ubuntu-1", "always", "full", 26, 64512, 1500)


def random_topology(rng: random.Random) -> bytes:
    import yaml

    doc = random_tree(rng, TOPO_KEYS, TOPO_SCALARS, depth=rng.randint(1, 5))
    return yaml.safe_dump(doc, sort_keys=False).encode()


CNI_KEYS = ("name", "type", "cniVersion", "etcd_endpoints", "etcd_key_file", "etcd_cert_file", "etcd_ca_cert_file",
            "etcd_timeout", "args", "cni", "labels", "key", "value", "ipam", "mtu", "prevResult", "runtimeConfig",
            "pool", "block_size", "ips", "nodename")
CNI_SCALARS = ("1.0.0", "0.3.1", "1.1.0", "0.4.0", "labnet", "http://10.0.0.1:2379", "https://e:2379", "/nonexistent")
CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS")
CNI_ENV_VALUES = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "add", "c0ffee", "-x", "a/b", "K=V;X", "=x",
                  "K8S_POD_NAME=p;;", "/var/run/netns/x", "eth0", "/opt/cni/bin", "")


def random_cni_request(rng: random.Random) -> bytes:
    env = {k: rng.choice(CNI_ENV_VALUES) for k in rng.sample(CNI_ENV, rng.randint(0, len(CNI_ENV)))}
    if rng.random() < 0.7:
        env["CNI_COMMAND"] = rng.choice(("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"))
    conf = random_tree(rng, CNI_KEYS, CNI_SCALARS, depth=rng.randint(1, 4))
    if rng.random() < 0.7 and isinstance(conf, dict):  # mostly past the name/type/version checks
        conf = {"name": "net", "type": "labnet", "cniVersion": rng.choice(("1.0.0", "1.1.0", "0.4.0")),
                "etcd_endpoints": rng.choice(CNI_SCALARS[5:7]), **conf}
    head = "".join(f"{k}={v}\n" for k, v in env.items())
    return head.encode() + b"\n" + json.dumps(conf).encode()


def random_bgp_message(rng: random.Random) -> bytes:
    if rng.random() < 0.25:  # past the framing, into the MP attribute decoder: IPv6 unicast
        from labnet.bgp.codec import encode

        raw = encode(random_ipv6_update(rng))
        return raw if rng.random() < 0.3 else mutate(rng, raw, ())
    body = rng.randbytes(rng.randint(0, 80))
    mtype = rng.choice((1, 2, 3, 4, 5, rng.randrange(256)))
    length = 19 + len(body) if rng.random() < 0.8 else rng.randrange(0x10000)
    return b"\xff" * 16 + length.to_bytes(2, "big") + bytes([mtype]) + body


def _ipv6(rng: random.Random, top: int) -> int:
    """An address under 2000::/3 (`top` 0x2000) or fe80::/10 (0xFE80), so never one the decoder refuses."""
    return (top << 112) | rng.getrandbits(110 if top == 0xFE80 else 115)


def random_ipv6_update(rng: random.Random) -> Update:
    """A well-formed UPDATE carrying IPv6 unicast: MP_REACH_NLRI (a 16- or 32-byte next hop, RFC 2545)
    and/or MP_UNREACH_NLRI, sometimes beside IPv4 NLRI; decode(encode(u)) == u must hold."""
    from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

    from labnet.bgp.codec import AsSegment, MpUnreach, Origin, PathAttributes, SegType, Update, mp_reach6

    def nets(n: int) -> tuple[IPv6Network, ...]:
        return tuple(IPv6Network((rng.getrandbits(128), rng.choice((0, 1, 32, 48, 56, 64, 127, 128,
                                                                     rng.randint(0, 128)))), strict=False)
                     for _ in range(n))

    reach = unreach = None
    if rng.random() < 0.8:
        link_local = IPv6Address(_ipv6(rng, 0xFE80)) if rng.random() < 0.5 else None
        reach = mp_reach6(IPv6Address(_ipv6(rng, 0x2000)), nets(rng.randint(1, 6)), link_local)
    if reach is None or rng.random() < 0.3:
        unreach = MpUnreach(2, 1, nets(rng.randint(0, 6)))
    v4 = tuple(IPv4Network((rng.getrandbits(32), rng.randint(0, 32)), strict=False)
               for _ in range(rng.randint(0, 2) if reach else 0))
    path = tuple(AsSegment(SegType.AS_SEQUENCE, tuple(rng.randint(1, 2**32 - 1) for _ in range(rng.randint(1, 4))))
                 for _ in range(rng.randint(0, 2)))
    attrs = PathAttributes(mp_unreach=unreach)
    if reach is not None:
        attrs = PathAttributes(origin=rng.choice(list(Origin)), as_path=path, mp_reach=reach, mp_unreach=unreach,
                               next_hop=IPv4Address(rng.randint(1, 0xDFFFFFFF)) if v4 else None,
                               med=rng.choice((None, 0, 50)), local_pref=rng.choice((None, 100, 200)),
                               communities=tuple(rng.getrandbits(32) for _ in range(rng.randint(0, 2))))
    return Update(attrs=attrs, nlri=v4)


def bgp_ipv6_seeds() -> list[bytes]:
    """Seed inputs for bgp_decode with IPv6 unicast: MP_REACH_NLRI with both next hop lengths,
    MP_UNREACH_NLRI, IPv6 End-of-RIB, an OPEN offering (2, 1), and a broken next hop length."""
    from ipaddress import IPv4Address, IPv6Address, IPv6Network

    from labnet.bgp.codec import (
        IPV4_UNICAST,
        IPV6_UNICAST,
        Capabilities,
        GracefulRestart,
        MpUnreach,
        Open,
        Origin,
        PathAttributes,
        Update,
        encode,
        end_of_rib,
        mp_reach6,
    )

    nets = (IPv6Network("2001:db8:1::/48"), IPv6Network("2001:db8:2:3::/64"), IPv6Network("::/0"))
    gw, ll = IPv6Address("2001:db8::1"), IPv6Address("fe80::1")
    msgs: list[Message] = [
        Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), mp_reach=mp_reach6(gw, nets))),
        Update(attrs=PathAttributes(origin=Origin.IGP, as_path=(), mp_reach=mp_reach6(gw, nets[:1], ll),
                                    mp_unreach=MpUnreach(2, 1, nets[1:]))),
        Update(attrs=PathAttributes(mp_unreach=MpUnreach(2, 1, nets))),
        end_of_rib(IPV6_UNICAST),
        Open(64512, 90, IPv4Address("10.0.0.1"), Capabilities(
            four_octet_as=64512, multiprotocol=(IPV4_UNICAST, IPV6_UNICAST), route_refresh=True,
            graceful_restart=GracefulRestart(120, False, False, ((1, 1, True), (2, 1, True))))),
    ]
    # a next hop of 24 bytes is neither RFC 2545 form: the session resets (3/9)
    mp = bytes.fromhex("0002 01 18") + bytes(range(24)) + bytes.fromhex("00 30 20010db80001")
    attrs = bytes.fromhex("40010100 400200 800e") + bytes([len(mp)]) + mp
    body = len(attrs).to_bytes(4, "big") + attrs  # no withdrawn routes, then the attribute length
    bad = b"\xff" * 16 + (19 + len(body)).to_bytes(2, "big") + b"\x02" + body
    return [encode(m) for m in msgs] + [bad]


def rtnl_route(dst: str | None, dst_len: int, *, gateway: str | None = None, oif: int | None = None,
               proto: int = 12, rtype: int = 1, flags: int = 0, table: int = 254, priority: int | None = None,
               family: int = 2, kind: int = 24, error: int = 0) -> bytes:
    """One rtnetlink message as the kernel would send it, encoded by pyroute2's rtmsg (kind 24:
    RTM_NEWROUTE; 25: RTM_DELROUTE; 3: NLMSG_DONE; 2: NLMSG_ERROR carrying `error`)."""
    import struct

    if kind not in (24, 25):
        body = struct.pack("=i", error) + struct.pack("=IHHII", 16, 26, 0, 1, 0) if kind == 2 else struct.pack("=i", 0)
        return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    msg = rtmsg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = 2
    msg["header"]["sequence_number"] = 1
    msg.update(family=family, dst_len=dst_len, table=min(table, 255), proto=proto, type=rtype, flags=flags, scope=0)
    attrs: list[list[Any]] = [["RTA_TABLE", table]]
    if dst is not None:
        attrs.append(["RTA_DST", dst])
    if gateway is not None:
        attrs.append(["RTA_GATEWAY", gateway])
    if oif is not None:
        attrs.append(["RTA_OIF", oif])
    if priority is not None:
        attrs.append(["RTA_PRIORITY", priority])
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def random_route_dump(rng: random.Random) -> bytes:
    """A dump of a few plausible routes, sometimes cut short or ended."""
    out = b""
    for _ in range(rng.randint(0, 6)):
        dst_len = rng.choice([0, 24, 26, 32])
        dst = None if dst_len == 0 else f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0"
        out += rtnl_route(dst, dst_len, gateway=rng.choice([None, "10.0.0.1"]), oif=rng.choice([None, 2, 9]),
                          proto=rng.choice([2, 3, 12]), rtype=rng.choice([1, 6]), flags=rng.choice([0, 4]))
    if rng.random() < 0.5:
        out += rtnl_route(None, 0, kind=3)
    if rng.random() < 0.3:
        out = out[:rng.randint(0, len(out))]
    return out
