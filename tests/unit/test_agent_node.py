"""The node's process: what makes its agent re-read the datastore after a CNI request."""

from __future__ import annotations

import json

from labnet.agent.node import after_cni


class FakeAgent:
    def __init__(self) -> None:
        self.kicks: list[bool] = []

    def kick_threadsafe(self, datastore: bool = False) -> None:
        self.kicks.append(datastore)


def _result(borrowed: bool) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "ips": [], "labnet": {"borrowed": borrowed}}).encode()


def test_only_a_borrowing_add_or_a_del_makes_the_agent_re_read() -> None:
    cases = [("ADD", 0, _result(False), []), ("ADD", 0, _result(True), [True]), ("DEL", 0, b"", [True]),
             ("ADD", 1, _result(True), []), ("CHECK", 0, b"", []), ("ADD", 0, b"not json", [True])]
    for command, code, out, want in cases:
        agent = FakeAgent()
        after_cni(agent, command, code, out)  # type: ignore[arg-type]
        assert agent.kicks == want, f"{command} exit {code} {out[:40]!r}: expected kicks {want}, got {agent.kicks}"
