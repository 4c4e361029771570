"""Checks shared by `labnet check`, `labnet doctor` and the pytest plugin.

routes      `ip -j route` -> typed Route (the one parser), normalisation of names/numbers
compare     json_cmp-style subset matching
assertions  polling assertions raising CheckFailed (AssertionError + LabnetError)
probe       probes: icmp/tcp/udp from inside a namespace, a responder in the target's, loss, path MTU
reach       reachability matrices of probes with expectations (reach, no-reach, snat, loss), the MTU
report      results as a table, JSON, JUnit XML
"""

from labnet.checks.assertions import (
    CALICO_GATEWAY,
    DEFAULT_TIMEOUT,
    Endpoint,
    as_result,
    assert_bgp_established,
    assert_blackhole_route,
    assert_no_route,
    assert_ping,
    assert_proxy_arp,
    assert_route,
    assert_sysctl,
    assert_tunnel_route,
    read_sysctl,
)
from labnet.checks.compare import matches, subset_diff
from labnet.checks.reach import assert_connect, assert_connectivity, assert_mtu, assert_reachability
from labnet.checks.report import format_results, render_table, results_json, write_junit
from labnet.checks.result import CheckFailed, CheckResult
from labnet.checks.routes import Route, get_routes, parse_routes

__all__ = [
    "CALICO_GATEWAY", "DEFAULT_TIMEOUT", "CheckFailed", "CheckResult", "Endpoint", "Route", "as_result",
    "assert_bgp_established", "assert_blackhole_route", "assert_connect", "assert_connectivity", "assert_mtu",
    "assert_no_route", "assert_reachability",
    "assert_ping", "assert_proxy_arp", "assert_route", "assert_sysctl", "assert_tunnel_route",
    "format_results", "get_routes", "matches", "parse_routes", "read_sysctl", "render_table",
    "results_json", "subset_diff", "write_junit",
]
