"""CI-sized fuzzing: every target over the committed corpus, then ~1500 hypothesis inputs each.

The real campaign is bench/fuzz.py (10^6 executions per target). Crashes it found and the
owners have not fixed yet are listed in labnet/fuzz/known.py (each with an xfail regression
test in test_fuzz_regressions.py); here they are tolerated so CI flags only *new* crashes. Hypothesis runs
derandomized: the same inputs on every run, so CI never fails at random on an old bug.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labnet.bgp.codec import decode, encode
from labnet.fuzz.gen import (
    bgp_ipv6_seeds,
    mutate,
    random_bgp_message,
    random_cni_request,
    random_ipv6_update,
    random_route_dump,
    random_topology,
)
from labnet.fuzz.known import KNOWN
from labnet.fuzz.targets import TARGETS, run_target, split_cni_request

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fixtures" / "fuzz"
FUZZ_SETTINGS = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((FUZZ / target).iterdir()) if p.is_file()]


def check(target: str, data: bytes) -> None:
    key = run_target(target, data)
    if key is not None and key not in KNOWN:
        pytest.fail(f"{target} crashed ({key}) on {len(data)} bytes: {data[:300]!r}\n"
                    f"rerun: labnet.fuzz.targets.{target}({data!r})")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_is_present_and_replays_clean(target: str) -> None:
    inputs = corpus(target)
    assert len(inputs) >= 10, f"fixtures/fuzz/{target} holds {len(inputs)} inputs; run bench/fuzz.py --seed-corpus"
    for data in inputs:
        check(target, data)


# --- strategies: raw bytes, plus inputs shaped like the real thing so hypothesis gets past the
# first length check / YAML scanner / JSON decoder. Shaped inputs come from labnet.fuzz.gen,
# seeded by one hypothesis integer (drawing whole trees through hypothesis is 100x slower).


def seeded(build: Callable[[random.Random], bytes]) -> st.SearchStrategy[bytes]:
    return st.integers(0, 2**64).map(lambda seed: build(random.Random(seed)))


def mutated(target: str) -> st.SearchStrategy[bytes]:
    pool = corpus(target) + (bgp_ipv6_seeds() if target == "bgp_decode" else [])
    return seeded(lambda rng: mutate(rng, rng.choice(pool), pool))


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=300), seeded(random_bgp_message), mutated("bgp_decode")))
def test_bgp_decode(data: bytes) -> None:
    check("bgp_decode", data)


def test_bgp_ipv6_seeds_replay_clean() -> None:
    # not in fixtures/fuzz/bgp_decode (bench/fuzz.py --seed-corpus writes that from fixtures/bgp)
    for data in bgp_ipv6_seeds():
        check("bgp_decode", data)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**64))
def test_generated_ipv6_updates_round_trip(seed: int) -> None:
    u = random_ipv6_update(random.Random(seed))
    assert decode(encode(u)) == u


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=200), mutated("topology_load"), seeded(random_topology)))
def test_topology_load(data: bytes) -> None:
    check("topology_load", data)


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=200), mutated("cni_request"), seeded(random_cni_request)))
def test_cni_request(data: bytes) -> None:
    check("cni_request", data)


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated("route_dump"), seeded(random_route_dump)))
def test_route_dump(data: bytes) -> None:
    check("route_dump", data)


def test_split_cni_request() -> None:
    env, stdin = split_cni_request(b"CNI_COMMAND=ADD\nJUNK\nNUL=\x00\nK=a=b\n\n{\"x\": 1}\n\nrest")
    assert env == {"CNI_COMMAND": "ADD", "K": "a=b"}
    assert stdin == b'{"x": 1}\n\nrest'
    assert split_cni_request(b"{}") == ({}, b"{}")
