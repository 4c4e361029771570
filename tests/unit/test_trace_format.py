"""`labnet trace`'s report: numbered hops, what happened on each, and the verdict last."""

from __future__ import annotations

from labnet.diagnose.trace import Hop, Trace


def test_a_trace_reads_hop_by_hop_and_ends_in_its_verdict() -> None:
    t = Trace("pod-a", "pod-b (10.100.2.1)", "tcp", 80,
              [Hop("pod-a", ["route 10.100.2.1 via 169.254.1.1 dev eth0"]),
               Hop("node-2", ["route 10.100.2.1 dev cali1 (in on tunl0)"])],
              False, "dropped at node-2: policy: dropped by default-deny")
    assert t.format() == "\n".join([
        "trace pod-a → pod-b (10.100.2.1) (tcp port 80)",
        " 1  pod-a",
        "      route 10.100.2.1 via 169.254.1.1 dev eth0",
        " 2  node-2",
        "      route 10.100.2.1 dev cali1 (in on tunl0)",
        "DROPPED at node-2: policy: dropped by default-deny",
    ])
    t.delivered, t.verdict = True, "delivered to pod-b (10.100.2.1)"
    assert t.format().endswith("\ndelivered to pod-b (10.100.2.1)")
    assert t.to_dict()["hops"][1] == {"machine": "node-2", "said": ["route 10.100.2.1 dev cali1 (in on tunl0)"]}
