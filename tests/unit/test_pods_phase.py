"""The pods phase retries an ADD that failed with CNI code 11 (try again later), as kubelet
does, and nothing else."""

from __future__ import annotations

import pytest

from labnet.cni.invoke import CniFailed
from labnet.errors import WaitTimeout
from labnet.lab.phases.pods import add_retrying


def _busy() -> CniFailed:
    return CniFailed("node-1", "pod-1-5", "labnet", "ADD", 11, "etcd at https://10.20.1.11:2379 is unreachable")


def test_code_11_is_tried_again_until_it_works() -> None:
    calls = []

    def add() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise _busy()

    add_retrying(add, "pod pod-1-5 on node-1", timeout=10)
    assert len(calls) == 3


def test_another_code_is_raised_at_once_and_code_11_gives_up_at_the_deadline() -> None:
    calls = []

    def bad() -> None:
        calls.append(1)
        raise CniFailed("node-1", "p", "labnet", "ADD", 7, "bad config")

    with pytest.raises(CniFailed, match="code 7"):
        add_retrying(bad, "pod p on node-1", timeout=10)
    assert len(calls) == 1

    def busy() -> None:
        raise _busy()

    with pytest.raises(WaitTimeout, match="pod p on node-1: CNI ADD .*code 11"):
        add_retrying(busy, "pod p on node-1", timeout=0.2)
