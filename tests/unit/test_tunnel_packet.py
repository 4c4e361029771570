"""Pure parts of the tunnel package: checksums, ICMP errors, IPIP decap, the LPM route table, VTEPs."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labnet.agent.tunnel.ipip_user import IpipDatapath
from labnet.agent.tunnel.packet import (
    ICMP_FRAG_NEEDED,
    ICMP_NET_UNREACH,
    RouteTable,
    TunnelRoute,
    checksum,
    decap,
    icmp_unreachable,
    ipv4_header,
    is_icmp_error,
)
from labnet.agent.tunnel.vxlan import Vtep, plan, vtep_mac
from labnet.errors import BadInput

POD_A, POD_B = socket.inet_aton("10.100.163.129"), socket.inet_aton("10.100.5.193")
NODE_A, NODE_B = socket.inet_aton("10.20.30.73"), socket.inet_aton("192.168.50.74")


def icmp_echo(src: bytes, dst: bytes, payload: bytes = b"x" * 56, df: bool = True) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    hdr = bytearray(ipv4_header(src, dst, 1, len(body)))
    if df:
        hdr[6] |= 0x40
        hdr[10:12] = b"\0\0"
        hdr[10:12] = struct.pack("!H", checksum(hdr))
    return bytes(hdr) + body


def test_checksum_rfc1071_example() -> None:
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == checksum(b"\x01\x00")  # odd length pads with zero


def test_ipv4_header_verifies() -> None:
    hdr = ipv4_header(NODE_A, NODE_B, 4, 84)
    assert len(hdr) == 20 and checksum(hdr) == 0
    assert hdr[9] == 4 and struct.unpack("!H", hdr[2:4])[0] == 104


def test_frag_needed_answers_the_sender_with_the_mtu() -> None:
    orig = icmp_echo(POD_A, POD_B, b"y" * 1472)
    tunnel = socket.inet_aton("10.100.163.128")
    err = icmp_unreachable(orig, tunnel, ICMP_FRAG_NEEDED, 1480)
    assert checksum(err[:20]) == 0, "IP header checksum"
    assert err[9] == 1 and err[12:16] == tunnel and err[16:20] == POD_A
    icmp = err[20:]
    assert (icmp[0], icmp[1]) == (3, 4)
    assert struct.unpack("!H", icmp[6:8])[0] == 1480
    assert icmp[8:] == orig[:28], "quotes the original header and 8 bytes"
    assert checksum(icmp) == 0, "ICMP checksum"
    assert is_icmp_error(err) and not is_icmp_error(orig)


def test_net_unreachable_has_no_mtu() -> None:
    err = icmp_unreachable(icmp_echo(POD_A, POD_B), NODE_A, ICMP_NET_UNREACH)
    assert (err[20], err[21]) == (3, 0) and err[24:28] == b"\0\0\0\0"


def test_icmp_refuses_runt() -> None:
    with pytest.raises(ValueError, match="shorter than an IPv4 header"):
        icmp_unreachable(b"\x45" * 10, NODE_A, 0)


def test_decap() -> None:
    inner = icmp_echo(POD_A, POD_B)
    outer = ipv4_header(NODE_A, NODE_B, 4, len(inner)) + inner
    assert decap(outer, len(outer)) == 20
    assert outer[20:] == inner
    # an outer header with options (ihl 6) moves the inner packet
    opt = bytearray(outer[:20] + b"\x01\x01\x01\x00" + inner)
    opt[0] = 0x46
    assert decap(opt, len(opt)) == 24
    gre = bytearray(outer)
    gre[9] = 47
    assert decap(gre, len(gre)) == -1, "not protocol 4"
    v6 = bytearray(outer)
    v6[20] = 0x60
    assert decap(v6, len(v6)) == -1, "inner not IPv4"
    assert decap(outer, 30) == -1, "truncated"


def u32(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def route(prefix: str, gw: str | None) -> TunnelRoute:
    return TunnelRoute(ipaddress.IPv4Network(prefix), ipaddress.IPv4Address(gw) if gw else None)


def test_route_table_longest_prefix_wins() -> None:
    t = RouteTable([
        route("10.100.0.0/16", "10.20.30.1"),
        route("10.100.5.192/26", "192.168.50.74"),
        route("10.100.5.200/32", "192.168.50.75"),
        route("172.16.0.0/12", None),
    ])
    assert t.lookup(u32("10.100.5.193")) == ("192.168.50.74", 0)
    assert t.lookup(u32("10.100.5.200")) == ("192.168.50.75", 0)
    assert t.lookup(u32("10.100.9.1")) == ("10.20.30.1", 0)
    assert t.lookup(u32("172.16.3.4")) == ("172.16.3.4", 0), "no gateway: the inner destination itself"
    assert t.lookup(u32("10.101.0.1")) is None
    # a replace drops cached answers
    t.replace([route("10.100.5.192/26", "192.168.50.99")])
    assert t.lookup(u32("10.100.5.193")) == ("192.168.50.99", 0)
    assert t.lookup(u32("10.100.9.1")) is None


def test_route_table_default_route() -> None:
    t = RouteTable([route("0.0.0.0/0", "10.0.0.1")])
    assert t.lookup(u32("8.8.8.8")) == ("10.0.0.1", 0)


@given(
    routes=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32), st.integers(1, 2**32 - 2)), max_size=20
    ),
    probes=st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_route_table_matches_brute_force(routes: list[tuple[int, int, int]], probes: list[int]) -> None:
    rs = {ipaddress.IPv4Network((addr, plen), strict=False): ipaddress.IPv4Address(gw) for addr, plen, gw in routes}
    t = RouteTable(TunnelRoute(n, g) for n, g in rs.items())
    for dst in probes + [int(n.network_address) for n in rs]:
        a = ipaddress.IPv4Address(dst)
        matches = [n for n in rs if a in n]
        want = (str(rs[max(matches, key=lambda n: n.prefixlen)]), 0) if matches else None
        assert t.lookup(dst) == want
        assert t.lookup(dst) == want, "cached answer"


def test_datapath_rejects_bad_input() -> None:
    with pytest.raises(BadInput, match="IPv4"):
        IpipDatapath("10.20.30.300", "10.100.163.128")
    with pytest.raises(BadInput, match="mtu 20 out of range"):
        IpipDatapath("10.20.30.73", "10.100.163.128", 20)
    with pytest.raises(BadInput, match="longer than 15"):
        IpipDatapath("10.20.30.73", "10.100.163.128", ifname="x" * 16)


def test_vtep_validation_names_the_node() -> None:
    with pytest.raises(BadInput, match="vtep ubuntu-4: mac 'zz'"):
        Vtep("ubuntu-4", "192.168.50.74", "10.100.5.192", "zz", ("10.100.5.192/26",))
    with pytest.raises(BadInput, match="vtep ubuntu-4:.*10.100.5.999"):
        Vtep("ubuntu-4", "192.168.50.74", "10.100.5.999", vtep_mac("ubuntu-4"))
    v = Vtep("ubuntu-4", "192.168.50.74", "10.100.5.192", "AA:BB:CC:DD:EE:01", ["10.100.5.192/26"])  # type: ignore[arg-type]
    assert v.mac == "aa:bb:cc:dd:ee:01" and v.blocks == ("10.100.5.192/26",)


def test_vtep_mac_is_stable_local_unicast() -> None:
    m = vtep_mac("ubuntu-3")
    assert m == vtep_mac("ubuntu-3") != vtep_mac("ubuntu-4")
    first = int(m.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_plan_skips_self_and_rejects_conflicts() -> None:
    me = Vtep("ubuntu-3", "10.20.30.73", "10.100.163.128", vtep_mac("ubuntu-3"), ("10.100.163.128/26",))
    b = Vtep("ubuntu-4", "192.168.50.74", "10.100.5.192", vtep_mac("ubuntu-4"), ("10.100.5.192/26",))
    fdb, neigh, routes = plan([me, b], "10.20.30.73")
    assert fdb == {b.mac: "192.168.50.74"}
    assert neigh == {"10.100.5.192": b.mac}
    assert routes == {"10.100.5.192/26": "10.100.5.192"}
    thief = Vtep("ubuntu-5", "192.168.50.75", "10.100.138.192", vtep_mac("ubuntu-5"), ("10.100.5.192/26",))
    with pytest.raises(BadInput, match="block 10.100.5.192/26 of node ubuntu-5 is also claimed by node ubuntu-4"):
        plan([b, thief], "10.20.30.73")
    twin = Vtep("ubuntu-5", "192.168.50.75", "10.100.5.192", vtep_mac("ubuntu-5"))
    with pytest.raises(BadInput, match="tunnel address 10.100.5.192 of node ubuntu-5 is also used by node ubuntu-4"):
        plan([b, twin], "10.20.30.73")
