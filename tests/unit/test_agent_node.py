"""The node's process: what makes its agent re-read the datastore after a CNI request."""

from __future__ import annotations

from labnet.agent.node import after_cni


class FakeAgent:
    def __init__(self) -> None:
        self.kicks: list[bool] = []

    def kick_threadsafe(self, datastore: bool = False) -> None:
        self.kicks.append(datastore)


def test_only_a_borrowing_add_or_a_del_makes_the_agent_re_read() -> None:
    cases = [("ADD", 0, False, []), ("ADD", 0, True, [True]), ("DEL", 0, None, [True]),
             ("ADD", 1, True, []), ("CHECK", 0, None, []), ("ADD", 0, None, [True])]
    for command, code, borrowed, want in cases:
        agent = FakeAgent()
        after_cni(agent, command, code, borrowed)  # type: ignore[arg-type]
        assert agent.kicks == want, f"{command} exit {code} borrowed {borrowed}: expected kicks {want}, got {agent.kicks}"


def _route_msg(kind: int, dst_len: int) -> bytes:
    import struct

    rtmsg = struct.pack("=BBBBBBBBI", 2, dst_len, 0, 0, 254, 12, 0, 1, 0)
    return struct.pack("=IHHII", 16 + len(rtmsg), kind, 0, 0, 0) + rtmsg


def test_route_events_that_wake_a_kernel_pass() -> None:
    from labnet.agent.daemon import RTM_DELROUTE, RTM_NEWROUTE, route_event_matters

    assert route_event_matters(_route_msg(RTM_DELROUTE, 26)), "a route deleted (by anyone)"
    assert route_event_matters(_route_msg(RTM_NEWROUTE, 0)), "a new default route"
    assert not route_event_matters(_route_msg(RTM_NEWROUTE, 32)), "a pod's new /32: the CNI plugin's"
    assert route_event_matters(_route_msg(RTM_NEWROUTE, 32) + _route_msg(RTM_DELROUTE, 0)), "one of a batch"
    assert route_event_matters(b"\x04\x00\x00\x00" + b"\x00" * 14), "malformed: a pass rather than a miss"
    assert not route_event_matters(b"")

