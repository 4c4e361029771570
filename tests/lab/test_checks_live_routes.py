"""The golden route files are real: rebuilding them in fresh namespaces gives the same routes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from labnet.checks.routes import get_routes, parse_routes

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "checks"


def test_fixtures_match_a_live_rebuild(netns_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, pod = netns_factory("node"), netns_factory("pod")
    subprocess.run([str(FIX / "make_seed_routes.sh"), node.name, pod.name, str(tmp_path)], check=True)
    for name in ("node_route.json", "node_route_all.json", "pod_route.json"):
        assert parse_routes((tmp_path / name).read_text()) == parse_routes((FIX / name).read_text()), name
    # get_routes reads the same through nsenter
    assert get_routes(node) == parse_routes((FIX / "node_route.json").read_text())
    assert get_routes(pod) == parse_routes((FIX / "pod_route.json").read_text())
    assert get_routes(node, "all") == parse_routes((FIX / "node_route_all.json").read_text())
    assert [str(r) for r in get_routes(node, 100)] == ["10.6.0.0/16 dev ens32 table 100 proto zebra scope link"]
