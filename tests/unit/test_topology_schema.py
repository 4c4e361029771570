"""The committed JSON schema matches the model (regenerate: python -m labnet.topology.schema)."""

from __future__ import annotations

import json

from labnet.topology.schema import SCHEMA_FILE, json_schema


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == json_schema(), (
        f"{SCHEMA_FILE} is stale: run `python -m labnet.topology.schema > {SCHEMA_FILE}`"
    )


def test_schema_describes_the_yaml_form() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "networks"}
    step = schema["$defs"]["Step"]
    kinds = {next(iter(v["properties"])) for v in step["oneOf"]}
    assert {"ping", "blackhole", "tunnel_route", "proxy_arp"} <= kinds
    ping = next(v for v in step["oneOf"] if "ping" in v["properties"])["properties"]["ping"]
    assert "from" in ping["properties"] and ping["additionalProperties"] is False
    assert "node" in schema["$defs"]["EtcdSpec"]["properties"]
