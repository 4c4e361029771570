"""Crashes bench/fuzz.py found that the owners have not fixed yet.

Key: `Type@file:function` (labnet.fuzz.targets.crash_key) -> (reproducer in
fixtures/fuzz/crashes/, the bug). tests/unit/test_fuzz_regressions.py turns each entry into an
xfail(strict=True) test; the CI fuzz run tolerates these keys and fails on any other. Delete an
entry (and its reproducer) once the owner's fix makes its regression test XPASS.
"""

from __future__ import annotations

# Owner of all five: labnet/cni. In the real plugin run_plugin catches them as code 999
# "internal error: KeyError: 'value'", where the spec wants 7 (invalid config) or 6 (decode).
KNOWN: dict[str, tuple[str, str]] = {
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
