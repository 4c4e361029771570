"""`labnet etcd ls|get|health` formatting and wiring, against an in-memory datastore."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator

import pytest

from labnet.errors import LabnetError
from labnet.etcd import cli
from labnet.etcd.store import KV, DatastoreUnavailable, Event


class MemStore:
    """Just enough of the Datastore protocol for the CLI."""

    def __init__(self, data: dict[str, bytes] | None = None, down: bool = False) -> None:
        self.data = dict(data or {})
        self.down = down
        self.closed = False

    def _check(self) -> None:
        if self.down:
            raise DatastoreUnavailable("etcd unreachable for range: https://10.20.30.71:2379: refused")

    def get(self, key: str) -> KV | None:
        self._check()
        return KV(key, self.data[key], 7, 3, 2) if key in self.data else None

    def range(self, prefix: str) -> list[KV]:
        self._check()
        return [KV(k, v, 7) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        self.data[key] = value.encode() if isinstance(value, str) else value
        return 1

    def cas(self, key: str, value: bytes | str, mod_revision: int, lease: int | None = None) -> bool:
        raise NotImplementedError

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        return self.data.pop(key, None) is not None

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def grant_lease(self, ttl: int) -> int:
        raise NotImplementedError

    def keepalive(self, lease: int) -> None:
        raise NotImplementedError

    def watch(self, prefix: str, start_revision: int | None = None) -> Iterator[Event]:
        raise NotImplementedError

    def health(self) -> dict[str, tuple[bool, str]]:
        return {"https://10.20.30.71:2379": (True, '{"health": "true"}'),
                "https://10.20.30.72:2379": (False, "connection refused")}

    def close(self) -> None:
        self.closed = True


BLOCK = "/labnet/calico/ipam/v2/assignment/ipv4/block/10.100.163.128-26"
SEED = {
    BLOCK: json.dumps({"cidr": "10.100.163.128/26", "affinity": "host:ubuntu-3",
                       "allocations": [0, None, 1] + [None] * 61, "unallocated": list(range(2, 64)),
                       "attributes": [{"handle_id": "k8s-pod-network.abc"}]}).encode(),
    "/labnet/calico/ipam/v2/host/ubuntu-3/ipv4/block/10.100.163.128-26": b'{"state":"confirmed"}',
    "/labnet/config/cluster": b'{"pool_cidr":"10.100.0.0/16","block_size":26}',
    "/labnet/calico/ipam/v2/handle/k8s-pod-network.abc": b'{"block":{"10.100.163.128/26":1}}',
    "/labnet/plain": b"hello world",
    "/labnet/binary": b"\x00\xff\x10",
}


def kvs() -> list[KV]:
    return MemStore(SEED).range("/")


def test_ls_is_a_sorted_tree_with_folded_paths() -> None:
    text = cli.format_ls(kvs(), as_json=False)
    lines = text.splitlines()
    assert lines[0] == "/labnet/"
    assert "├── calico/ipam/v2/" in text  # single-child chains folded into one label
    assert "│   ├── assignment/ipv4/block/10.100.163.128-26\n" in text  # folded down to the leaf
    assert '├── config/cluster  {"block_size": 26, "pool_cidr": "10.100.0.0/16"}' in text  # compact, sorted keys
    assert '└── host/ubuntu-3/ipv4/block/10.100.163.128-26  {"state": "confirmed"}' in text
    assert "plain  hello world" in text
    assert "binary  <3 bytes: 00ff10>" in text
    assert lines[-1] == "(6 keys)"
    # the long block is pretty-printed under its key, sorted, indented below the tree branch
    i = next(n for n, line in enumerate(lines) if line.endswith("block/10.100.163.128-26"))
    assert lines[i + 1] == "│   │       {"
    assert lines[i + 2] == '│   │         "affinity": "host:ubuntu-3",'
    # the 64 allocation slots fill a few lines instead of one per slot
    assert lines[i + 4].strip("│ ").startswith('0, null, 1, null,')
    assert len(lines) < 30, text
    # keys come out in order
    top = [line[4:].split("  ")[0] for line in lines[1:-1] if line[:1] in "├└"]
    assert top == ["binary", "calico/ipam/v2/", "config/cluster", "plain"]


def test_ls_json_is_sorted_with_decoded_values() -> None:
    data = json.loads(cli.format_ls(list(reversed(kvs())), as_json=True))
    assert [d["key"] for d in data] == sorted(SEED)
    by_key = {d["key"]: d for d in data}
    assert by_key["/labnet/config/cluster"]["value"] == {"pool_cidr": "10.100.0.0/16", "block_size": 26}
    assert by_key["/labnet/plain"]["value"] == "hello world"
    assert by_key["/labnet/binary"]["value"] == {"base64": "AP8Q"}
    assert by_key["/labnet/plain"]["mod_revision"] == 7


def test_key_that_is_also_a_directory() -> None:
    text = cli.format_ls([KV("/a", b"1", 1), KV("/a/b", b"2", 2)], as_json=False)
    assert text.splitlines() == ["/a/  1", "└── b  2", "(2 keys)"]


def test_show_value_variants() -> None:
    assert cli.show_value(b"") == ['""']
    assert cli.show_value(b"42") == ["42"]
    assert cli.show_value(b"two\nlines") == ['"two\\nlines"']
    assert cli.show_value(b'{"b":1,"a":2}') == ['{"a": 2, "b": 1}']
    long = cli.show_value(json.dumps({"k": "x" * 200}).encode())
    assert long[0] == "{" and long[-1] == "}"


def parser(store: MemStore) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labnet")
    sub = p.add_subparsers(dest="command", required=True)
    cli.register(sub, lambda args: store)
    return p


def test_register_wires_ls_get_health(capsys: pytest.CaptureFixture[str]) -> None:
    store = MemStore(SEED)
    p = parser(store)
    args = p.parse_args(["etcd", "ls", "/labnet/config/"])
    assert args.func(args) == 0
    assert "cluster" in capsys.readouterr().out and store.closed

    args = p.parse_args(["etcd", "ls"])
    assert args.prefix == "/labnet/"

    args = p.parse_args(["etcd", "get", "/labnet/config/cluster"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"pool_cidr": "10.100.0.0/16", "block_size": 26}

    args = p.parse_args(["etcd", "get", "--json", "/labnet/config/cluster"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["mod_revision"] == 7

    args = p.parse_args(["etcd", "get", "/labnet/config/nope"])
    assert args.func(args) == 1
    assert "key /labnet/config/nope not found" in capsys.readouterr().err

    args = p.parse_args(["etcd", "health"])
    assert args.func(args) == 1  # one member is down
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ENDPOINT", "HEALTHY", "DETAIL"]
    assert "https://10.20.30.72:2379  NO" in out


def test_ls_empty_and_unreachable() -> None:
    out = io.StringIO()
    assert cli.cmd_ls(MemStore({}), "/labnet/x/", False, out) == 0
    assert out.getvalue().strip() == "(no keys under /labnet/x/)"
    with pytest.raises(LabnetError, match="etcd ls /labnet/: etcd unreachable"):
        cli.cmd_ls(MemStore(SEED, down=True), "/labnet/", False, out)
