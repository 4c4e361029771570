"""Fuzz targets for labnet's parsers (BGP codec, topology loader, CNI request parsing, route dumps).

Run a campaign with `python bench/fuzz.py`; CI runs tests/unit/test_fuzz_targets.py.
"""

from labnet.fuzz.targets import (
    TARGETS,
    bgp_decode,
    cni_request,
    crash_key,
    route_dump,
    run_target,
    split_cni_request,
    topology_load,
)

__all__ = ["TARGETS", "crash_key", "run_target", "bgp_decode", "cni_request", "route_dump", "split_cni_request",
           "topology_load"]
