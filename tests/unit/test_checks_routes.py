"""Golden tests for the `ip -j route` parser against real output (fixtures/checks, made by
make_seed_routes.sh in a namespace) and the seed's route tables written as Route objects."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labnet.checks.compare import matches
from labnet.checks.routes import (
    TYPES,
    Nexthop,
    Route,
    format_table,
    norm_dst,
    norm_protocol,
    norm_scope,
    norm_table,
    normalise_match,
    parse_routes,
    route_from_json,
)
from labnet.errors import BadInput

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "checks"
N = IPv4Network
A = IPv4Address

# ubuntu-3's `ip route` in the seed (docker0 left out: no docker in the lab), as typed routes.
SEED_UBUNTU3 = [
    Route(N("0.0.0.0/0"), gateway=A("10.20.30.1"), dev="ens32", onlink=True, flags=("onlink",)),
    Route(N("10.20.30.0/24"), dev="ens32", protocol="kernel", scope="link", prefsrc=A("10.20.30.73")),
    Route(N("10.100.5.192/26"), gateway=A("192.168.50.74"), dev="tunl0", protocol="bird", onlink=True,
          flags=("onlink", "linkdown")),
    Route(N("10.100.138.192/26"), gateway=A("192.168.50.75"), dev="tunl0", protocol="bird", onlink=True,
          flags=("onlink", "linkdown")),
    Route(N("10.100.163.128/26"), type="blackhole", protocol="bird"),
    Route(N("10.100.163.129/32"), dev="cali182f84bfeba", scope="link"),
    Route(N("10.100.243.0/26"), gateway=A("10.20.30.72"), dev="tunl0", protocol="bird", onlink=True,
          flags=("onlink", "linkdown")),
]
# net-test's `ip route` in the seed.
SEED_POD = [
    Route(N("0.0.0.0/0"), gateway=A("169.254.1.1"), dev="eth0"),
    Route(N("169.254.1.1/32"), dev="eth0", scope="link"),
]


def load(name: str) -> str:
    return (FIX / name).read_text()


def test_seed_node_table_golden() -> None:
    routes = parse_routes(load("node_route.json"))
    seed_dsts = {r.dst for r in SEED_UBUNTU3}
    assert [r for r in routes if r.dst in seed_dsts] == SEED_UBUNTU3


def test_seed_pod_table_golden() -> None:
    assert parse_routes(load("pod_route.json")) == SEED_POD


def test_details_output_parses_to_the_same_main_table() -> None:
    plain = parse_routes(load("node_route.json"))
    detailed = [r for r in parse_routes(load("node_route_all.json")) if r.table == "main"]
    assert detailed == plain


def test_other_shapes() -> None:
    by_dst = {(r.table, str(r.dst)): r for r in parse_routes(load("node_route_all.json"))}
    assert by_dst[("main", "10.9.0.0/16")] == Route(N("10.9.0.0/16"), type="unreachable", protocol="77")
    assert by_dst[("main", "10.8.0.0/16")].type == "prohibit"
    assert by_dst[("main", "10.8.0.0/16")].metric == 55
    assert by_dst[("main", "10.7.0.0/16")].protocol == "static"
    assert by_dst[("main", "10.7.0.0/16")].prefsrc == A("10.20.30.73")
    t100 = by_dst[("100", "10.6.0.0/16")]
    assert (t100.protocol, t100.scope, t100.dev) == ("zebra", "link", "ens32")
    multi = by_dst[("main", "10.5.0.0/16")]
    assert multi.gateway is None
    assert multi.nexthops == (Nexthop(A("10.20.30.2"), "ens32", 1), Nexthop(A("10.20.30.3"), "ens32", 2))
    local = by_dst[("local", "10.20.30.73/32")]
    assert (local.type, local.scope, local.protocol) == ("local", "host", "kernel")
    assert by_dst[("local", "10.20.30.255/32")].type == "broadcast"


def test_ipv6_entries_are_skipped() -> None:
    with_v6 = parse_routes(load("node_route_all_with_v6.json"))
    assert with_v6 == parse_routes(load("node_route_all.json"))
    assert "fe80" in load("node_route_all_with_v6.json")


@pytest.mark.parametrize(("given", "want"), [
    ("bird", "bird"), (12, "bird"), ("12", "bird"), ("0xc", "bird"), ("BIRD", "bird"),
    (2, "kernel"), ("kernel", "kernel"), (3, "boot"), (4, "static"), (11, "zebra"), ("zebra", "zebra"),
    (16, "dhcp"), (77, "77"), ("77", "77"), (186, "bgp"),
])
def test_protocol_names_and_numbers_agree(given: str | int, want: str) -> None:
    assert norm_protocol(given) == want


@pytest.mark.parametrize(("given", "want"), [
    ("link", "link"), (253, "link"), ("253", "link"), ("host", "host"), (254, "host"),
    ("global", "global"), ("universe", "global"), (0, "global"), (200, "site"), (17, "17"),
])
def test_scope_names_and_numbers_agree(given: str | int, want: str) -> None:
    assert norm_scope(given) == want


def test_table_names_and_numbers_agree() -> None:
    assert norm_table(254) == norm_table("main") == norm_table("254") == "main"
    assert norm_table(255) == "local"
    assert norm_table(100) == norm_table("100") == "100"


def test_dst_forms() -> None:
    assert norm_dst("default") == N("0.0.0.0/0")
    assert norm_dst("10.100.163.129") == N("10.100.163.129/32")
    assert norm_dst(A("10.1.1.1")) == N("10.1.1.1/32")


@pytest.mark.parametrize(("bad", "words"), [
    (lambda: norm_dst("10.100.163.129/26"), "host bits set"),
    (lambda: norm_dst("fe80::1/64"), "host bits set"),
    (lambda: norm_dst("10.1.2"), "not an IP network"),
    (lambda: norm_scope("everywhere"), "route scope 'everywhere'"),
    (lambda: norm_protocol(300), "out of range"),
    (lambda: norm_table("all"), "every table"),
    (lambda: normalise_match({"gatway": "1.2.3.4"}), "unknown route field 'gatway'"),
    (lambda: normalise_match({"onlink": "yes"}), "onlink must be true or false"),
    (lambda: normalise_match({"type": "wormhole"}), "route type 'wormhole'"),
    (lambda: parse_routes("not json"), "not JSON"),
    (lambda: parse_routes('{"dst": "default"}'), "not a JSON list"),
    (lambda: parse_routes('[{"gateway": "1.2.3.4"}]'), "no 'dst'"),
    (lambda: parse_routes('[{"dst": "default", "gateway": "nope"}]'), "gateway 'nope'"),
])
def test_bad_input_is_a_clear_error(bad, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput, match=words):
        bad()


def test_empty_output_is_an_empty_table() -> None:
    assert parse_routes("") == []
    assert parse_routes("[]") == []
    assert format_table([]) == "(no routes)"


def test_unknown_keys_are_ignored() -> None:
    text = json.dumps([{"dst": "10.0.0.0/8", "dev": "x", "uid": 0, "cache": [], "pref": "medium",
                        "expires": 5, "flags": []}])
    assert parse_routes(text) == [Route(N("10.0.0.0/8"), dev="x")]


def test_default_table_applies_to_entries_without_one() -> None:
    text = '[{"dst":"10.6.0.0/16","dev":"eth0","protocol":"static","scope":"link","flags":[]}]'
    assert parse_routes(text, default_table="100")[0].table == "100"


def test_match_normalisation() -> None:
    assert normalise_match({"dst": "10.100.163.129", "proto": 12, "scope": 253, "via": "10.0.0.1",
                            "src": "10.0.0.2", "table": 254, "metric": "5"}) == {
        "dst": "10.100.163.129/32", "protocol": "bird", "scope": "link", "gateway": "10.0.0.1",
        "prefsrc": "10.0.0.2", "table": "main", "metric": 5}


def test_str_is_ip_route_like() -> None:
    assert format_table(SEED_UBUNTU3 + SEED_POD) == "\n".join([
        "default via 10.20.30.1 dev ens32 onlink",
        "10.20.30.0/24 dev ens32 proto kernel scope link src 10.20.30.73",
        "10.100.5.192/26 via 192.168.50.74 dev tunl0 proto bird onlink linkdown",
        "10.100.138.192/26 via 192.168.50.75 dev tunl0 proto bird onlink linkdown",
        "blackhole 10.100.163.128/26 proto bird",
        "10.100.163.129 dev cali182f84bfeba scope link",
        "10.100.243.0/26 via 10.20.30.72 dev tunl0 proto bird onlink linkdown",
        "default via 169.254.1.1 dev eth0",
        "169.254.1.1 dev eth0 scope link",
    ])


def test_as_dict_shape() -> None:
    d = SEED_UBUNTU3[2].as_dict()
    assert d == {"dst": "10.100.5.192/26", "type": "unicast", "protocol": "bird", "scope": "global",
                 "table": "main", "metric": 0, "onlink": True, "flags": ["onlink", "linkdown"],
                 "gateway": "192.168.50.74", "dev": "tunl0"}


_addr = st.ip_addresses(v=4).map(lambda a: IPv4Address(str(a)))
_flag = st.sampled_from(["onlink", "linkdown", "dead", "pervasive"])
_nexthop = st.builds(
    lambda gw, dev, w, flags: Nexthop(gw, dev, w, "onlink" in flags, tuple(flags)),
    st.none() | _addr, st.none() | st.sampled_from(["eth0", "tunl0"]), st.integers(1, 256),
    st.lists(_flag, unique=True, max_size=2),
)
_route = st.builds(
    lambda net, typ, gw, dev, proto, scope, src, metric, table, flags, nhs: Route(
        net, typ, gw, dev, norm_protocol(proto), norm_scope(scope), "onlink" in flags, src, metric,
        norm_table(table), tuple(flags), tuple(nhs)),
    st.builds(lambda a, plen: IPv4Network(f"{a}/{plen}", strict=False), _addr, st.integers(0, 32)),
    st.sampled_from(sorted(TYPES)), st.none() | _addr, st.none() | st.sampled_from(["ens32", "cali182f84bfeba"]),
    st.integers(0, 255), st.integers(0, 255), st.none() | _addr, st.integers(0, 2**31),
    st.integers(0, 2**32 - 1), st.lists(_flag, unique=True, max_size=3), st.lists(_nexthop, max_size=2),
)


@given(_route)
def test_as_dict_parses_back_to_the_same_route(route: Route) -> None:
    assert route_from_json(route.as_dict()) == route
    assert matches(normalise_match({k: v for k, v in route.as_dict().items() if k != "nexthops"}), route.as_dict())
