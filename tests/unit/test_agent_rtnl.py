"""labnet.agent.rtnl: the agent's route reader against pyroute2's encoder (another codec)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from labnet.agent.rtnl import (
    RTM_DELROUTE,
    RTM_NEWROUTE,
    DumpError,
    Route,
    dump_request,
    get_request,
    parse,
    parse_events,
)
from labnet.fuzz.gen import rtnl_route


def test_decodes_what_pyroute2_encodes() -> None:
    data = (rtnl_route("10.100.7.0", 26, gateway="10.0.2.12", oif=9, proto=12, flags=4)
            + rtnl_route("10.100.5.0", 26, proto=12, rtype=6)
            + rtnl_route(None, 0, gateway="10.0.1.1", oif=2, proto=3, priority=100))
    routes, done = parse(data)
    assert not done
    assert routes == [
        Route(2, "10.100.7.0", 26, "10.0.2.12", 9, 254, 12, 1, 4, None),
        Route(2, "10.100.5.0", 26, None, None, 254, 12, 6, 0, None),
        Route(2, "0.0.0.0", 0, "10.0.1.1", 2, 254, 3, 1, 0, 100),
    ]


def test_table_above_255_comes_from_the_attribute() -> None:
    (r,), _ = parse(rtnl_route("10.0.0.0", 8, oif=3, table=1000))
    assert r.table == 1000


def test_ipv6_addresses() -> None:
    (r,), _ = parse(rtnl_route("fd00:1::", 64, gateway="fe80::1", oif=2, family=socket.AF_INET6))
    assert (r.family, r.dst, r.dst_len, r.gateway) == (socket.AF_INET6, "fd00:1::", 64, "fe80::1")


def test_done_ends_the_dump_and_what_follows_is_ignored() -> None:
    routes, done = parse(rtnl_route("10.1.0.0", 16, oif=1) + rtnl_route(None, 0, kind=3) + b"\xff" * 40)
    assert done and [r.dst for r in routes] == ["10.1.0.0"]


def test_an_error_message_raises_with_its_errno() -> None:
    with pytest.raises(DumpError) as exc:
        parse(rtnl_route(None, 0, kind=2, error=-errno.EINVAL))
    assert exc.value.errno == errno.EINVAL


def test_a_message_longer_than_its_buffer_is_refused() -> None:
    data = rtnl_route("10.1.0.0", 16, oif=1)
    with pytest.raises(DumpError, match="length"):
        parse(data[:-4])


def test_a_truncated_attribute_keeps_what_came_before() -> None:
    data = bytearray(rtnl_route("10.1.0.0", 16, oif=7))
    data += struct.pack("=HH", 200, 5)  # an RTA_GATEWAY that claims 200 bytes
    struct.pack_into("=I", data, 0, len(data))
    (r,), _ = parse(bytes(data))
    assert (r.dst, r.oif, r.gateway) == ("10.1.0.0", 7, None)


def test_requests_are_well_formed() -> None:
    req = dump_request(7, socket.AF_INET, table=254, oif=9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags & 0x300, seq) == (len(req), 26, 0x300, 7)
    assert req[16] == socket.AF_INET and req[20] == 254
    assert struct.unpack_from("=HHI", req, 28) == (8, 4, 9)  # RTA_OIF
    get = get_request(1, "169.254.1.1")
    assert get[17] == 32 and get[-4:] == socket.inet_aton("169.254.1.1")


def test_a_dump_that_ended_with_an_error_is_not_taken_as_complete() -> None:
    done = bytearray(rtnl_route(None, 0, kind=3))
    struct.pack_into("=i", done, 16, -errno.EINTR)  # the kernel's dump_done_errno
    with pytest.raises(DumpError) as exc:
        parse(rtnl_route("10.1.0.0", 16, oif=1) + bytes(done))
    assert exc.value.errno == errno.EINTR


def test_a_dump_the_kernel_marks_interrupted_is_read_again() -> None:
    from labnet.agent.rtnl import DumpInterrupted

    msg = bytearray(rtnl_route("10.1.0.0", 16, oif=1))
    struct.pack_into("=H", msg, 6, struct.unpack_from("=H", msg, 6)[0] | 0x10)  # NLM_F_DUMP_INTR
    with pytest.raises(DumpInterrupted):
        parse(bytes(msg))


def test_route_events_new_and_deleted_and_what_does_not_fit_ends_the_buffer() -> None:
    data = (rtnl_route("10.100.7.0", 26, gateway="10.0.2.12", oif=9, proto=12)
            + rtnl_route("10.100.5.0", 26, proto=12, rtype=6, kind=25)
            + rtnl_route(None, 0, kind=3))
    events = parse_events(data + data[:30])
    assert [(k, r.dst, r.type) for k, r in events] == [(RTM_NEWROUTE, "10.100.7.0", 1), (RTM_DELROUTE, "10.100.5.0", 6)]
    assert parse_events(b"") == [] and parse_events(b"\xff" * 7) == []


def test_route_events_of_other_families_are_skipped() -> None:
    odd = bytearray(rtnl_route("10.1.0.0", 16, oif=1, kind=25))
    odd[16] = 28  # rtm_family: neither IPv4 nor IPv6
    assert parse_events(bytes(odd) + rtnl_route("10.2.0.0", 16, oif=1, kind=25))[0][1].dst == "10.2.0.0"
    assert len(parse_events(bytes(odd))) == 0
