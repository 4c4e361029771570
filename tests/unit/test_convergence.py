"""One test of a converged lab for `up` and for the faults' recovery, and short timeout messages."""

from __future__ import annotations

from typing import Any

import pytest

from labnet.errors import WaitTimeout
from labnet.lab.convergence import NotReady, agents_lacking, lacking, route_dsts
from labnet.wait import poll


def node(blocks: list[str], routes: list[str], peers: dict[str, str] | None = None, name: str | None = None,
         **more: Any) -> dict[str, Any]:
    return {"nodename": name, "blocks": blocks, "routes": routes, "peers": peers or {}, **more}


def test_routes_are_compared_as_address_sets_not_substrings() -> None:
    assert route_dsts(["blackhole 10.100.1.0/26 proto bird", "10.100.1.64/26 via 10.20.30.72 dev tunl0 proto bird "
                       "onlink", "10.100.1.128/26 via 10.20.30.73 dev tunl0", "default via 10.0.0.1"]) == {
        "10.100.1.0/26", "10.100.1.64/26", "10.100.1.128/26"}
    # a route to 10.100.1.64/27 is no route to 10.100.1.64/26, though the text contains it
    states = {"a": node(["10.100.1.0/26"], ["10.100.1.64/27 via 10.0.0.2 dev tunl0"], {"10.0.0.2": "Established"}),
              "b": node(["10.100.1.64/26"], ["10.100.1.0/26 via 10.0.0.1 dev tunl0"], {"10.0.0.1": "Established"})}
    assert lacking(states, expect_peers=True) == {"a": ["no route to 10.100.1.64/26"]}


def test_what_each_node_lacks() -> None:
    states = {
        "a": node(["10.1.0.0/26"], ["10.1.0.64/26 via x"], {"10.0.0.2": "Active"}, name="a"),
        "b": node([], [], {}, name="other"),
        "c": {"error": "StatusUnavailable: no socket"},
    }
    got = lacking(states, expect_peers=True)
    assert got == {"a": ["BGP not Established: 10.0.0.2 Active"],
                   "b": ["agent registered as 'other', not 'b'", "no block claimed", "no BGP peers",
                         "no route to 10.1.0.0/26"],
                   "c": ["agent not answering: StatusUnavailable: no socket"]}, got
    # a lab whose settings give no node a peer (VXLAN, mesh: none) does not wait for sessions
    lone = {"a": node(["10.1.0.0/26"], []), "b": node(["10.1.0.64/26"], ["10.1.0.0/26 dev vxlan.calico"])}
    assert lacking(lone, expect_peers=False) == {"a": ["no route to 10.1.0.64/26"]}
    assert agents_lacking({"a": node([], []), "b": node(["x"], [], tunnel="10.1.0.64")}, needs_tunnel=True) == {
        "a": ["no block claimed", "no tunnel address"]}


def test_a_timeout_names_the_nodes_that_are_not_ready_and_stays_short() -> None:
    lacks = NotReady({f"node-{i:03d}": [f"no route to 10.100.{j}.0/26" for j in range(40)] for i in range(100)})
    with pytest.raises(WaitTimeout) as info:
        poll(lambda: lacks, lambda left: not left, timeout=0.05, what="every node converged")
    text = str(info.value)
    assert "timed out after" in text and "100 of the nodes not ready" in text
    assert "node-000: no route to 10.100.0.0/26; no route to 10.100.1.0/26; no route to 10.100.2.0/26; and 37 more" in text
    assert "and 88 more nodes" in text and "node-099" not in text
    assert len(text.splitlines()) <= NotReady.NODES + 3 and len(text) < 3000, text
    assert str(NotReady()) == "every node ready"


def test_sessions_with_peers_up_does_not_wait_for_may_be_down() -> None:
    from labnet.settings import BgpSettings, ClusterSettings, PeerSettings, PoolSettings

    settings = ClusterSettings(PoolSettings("10.1.0.0/16"), BgpSettings(
        peers=(PeerSettings("10.0.0.250", 65000, wait=False), PeerSettings("10.0.0.1", 65001))))
    assert settings.unwaited == frozenset({"10.0.0.250"})
    states = {"a": node(["10.1.0.0/26"], [], {"10.0.0.250": "Active", "10.0.0.1": "Established"})}
    assert lacking(states, expect_peers=True, unwaited=settings.unwaited) == {}
    assert lacking(states, expect_peers=True) == {"a": ["BGP not Established: 10.0.0.250 Active"]}
    only_unwaited = ClusterSettings(PoolSettings("10.1.0.0/16"), BgpSettings(
        mesh=False, peers=(PeerSettings("10.0.0.250", 65000, wait=False),)))
    assert not only_unwaited.expects_peers(["a", "b"])


def test_a_session_tcp_is_retransmitting_on_is_not_converged() -> None:
    # after a loss, TCP retransmits with backoff: the session is Established but may still die
    # of the peer's hold timer. Bytes merely in flight are not reported as stalled.
    states = {"a": node(["10.1.0.0/26"], [], {"10.0.0.2": "Established", "10.0.0.9": "Established"},
                        stalled={"10.0.0.2": 38, "10.0.0.9": 19})}
    assert lacking(states, expect_peers=True, unwaited=frozenset({"10.0.0.9"})) == {
        "a": ["BGP data being retransmitted to 10.0.0.2 (38 B unacknowledged)"]}
    states["a"]["stalled"] = {}
    assert lacking(states, expect_peers=True) == {}


def test_a_node_not_ready_says_what_its_agent_says() -> None:
    states = {"a": node([], [], problems=["tunnel setup: etcd unreachable for cas /labnet/...: Read timed out"])}
    assert agents_lacking(states, needs_tunnel=True) == {"a": [
        "no block claimed", "no tunnel address",
        "the agent says: tunnel setup: etcd unreachable for cas /labnet/...: Read timed out"]}
