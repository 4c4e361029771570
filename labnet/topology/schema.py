"""JSON schema of the topology format, generated from the model.

`python -m labnet.topology.schema > labnet/topology/labnet.schema.json` regenerates the
committed copy (editors use it for completion; a unit test keeps it in sync).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labnet.topology.model import Topology

SCHEMA_FILE = Path(__file__).with_name("labnet.schema.json")
SCHEMA_ID = "https://labnet.dev/schema/topology.json"


def json_schema() -> dict[str, Any]:
    schema = Topology.model_json_schema(by_alias=True)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
    schema["title"] = "labnet topology"
    return schema


def dumps() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(dumps(), end="")
