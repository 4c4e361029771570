"""Crashes bench/fuzz.py found: the fixed ones (regression tests) and any not fixed yet.

Key: `Type@file:function` (labnet.fuzz.targets.crash_key) -> (reproducer in
fixtures/fuzz/crashes/, the bug). tests/unit/test_fuzz_regressions.py runs every FIXED
reproducer as a plain test and every KNOWN one as xfail(strict=True); the CI fuzz run
tolerates KNOWN keys only. When a fix lands, move its entry from KNOWN to FIXED.
"""

from __future__ import annotations

KNOWN: dict[str, tuple[str, str]] = {}

# All five were in labnet/cni: the real plugin answered code 999 "internal error" where the
# spec wants 7 (invalid config) or 6 (decode). Fixed; kept as regressions.
FIXED: dict[str, tuple[str, str]] = {
    "KeyError@plugin.py:_labels": (
        "cni_request-1.bin",
        "labnet/cni/plugin.py _labels: an args.cni.labels item with 'key' but no 'value' raises KeyError "
        "instead of CniError 7 (invalid config)"),
    "TypeError@settings.py:etcd_config": (
        "cni_request-2.bin",
        "labnet/cni/settings.py etcd_config: a non-string etcd_ca_cert_file/etcd_cert_file/etcd_key_file "
        "(os.path.isfile) or etcd_timeout null/object (float()) raises TypeError instead of CniError 7"),
    "AttributeError@plugin.py:_labels": (
        "cni_request-3.bin",
        "labnet/cni/plugin.py _labels: 'args' (or args.cni) that is not a JSON object raises AttributeError "
        "instead of CniError 7"),
    "ValueError@settings.py:etcd_config": (
        "cni_request-4.bin",
        "labnet/cni/settings.py etcd_config: etcd_timeout that is not a number ('5s') raises ValueError from "
        "float() instead of CniError 7"),
    "RecursionError@spec.py:parse_conf": (
        "cni_request-5.bin",
        "labnet/cni/spec.py parse_conf: deeply nested JSON on stdin raises RecursionError, which escapes the "
        "(ValueError, UnicodeDecodeError) handler, instead of CniError 6 (decode failure)"),
}
