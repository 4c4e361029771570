"""CNI spec plumbing shared by both plugins: versions, env, errors, results.

Kept to the standard library: it is on the import path of every plugin run.
Internal results use the 1.0.0 shape; `convert` renders them in the requested version.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# The spec's well-known error codes (https://www.cni.dev/docs/spec/#error)
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
# labnet's own (100+)
POOL_EXHAUSTED = 100
DATAPATH_FAILED = 101
DELEGATE_FAILED = 102
CHECK_FAILED = 103
IPAM_FAILED = 104

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Kubernetes' names and podman's container names: no '/', nothing a key or a path could misread.
_POD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}$")
# What the kernel takes as an interface name, less what a path or a key could misread ('/', ':').
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-@]{1,15}$")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def vtuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True)
class Env:
    command: str
    container_id: str = ""
    netns: str = ""  # where to open the pod's netns (the server's /proc/self/fd/N of the shim's fd)
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: dict[str, str] = field(default_factory=dict)
    sandbox: str = ""  # CNI_NETNS as the runtime gave it: what results, records and messages say

    def __post_init__(self) -> None:
        if not self.sandbox:
            object.__setattr__(self, "sandbox", self.netns)

    @property
    def pod(self) -> str | None:
        return self.args.get("K8S_POD_NAME")

    @property
    def namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "default")


def parse_env(environ: Mapping[str, str]) -> Env:
    """The CNI_* variables, validated for the command (code 4 when something is missing)."""
    cmd = environ.get("CNI_COMMAND", "")
    if cmd not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND is {cmd!r}; expected one of {', '.join(COMMANDS)}")
    need = {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
        "GC": ("CNI_PATH",),
    }.get(cmd, ())
    missing = [v for v in need if not environ.get(v)]
    if missing:
        raise CniError(INVALID_ENV, f"CNI {cmd}: required environment variable(s) {', '.join(missing)} not set")
    cid = environ.get("CNI_CONTAINERID", "")
    if cid and not _CONTAINER_ID.match(cid):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {cid!r} has characters outside [A-Za-z0-9_.-]")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and (not _IFNAME.match(ifname) or ifname in (".", "..")):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is not an interface name (1-15 of [A-Za-z0-9_.@-])")
    args: dict[str, str] = {}
    for part in filter(None, environ.get("CNI_ARGS", "").split(";")):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CniError(INVALID_ENV, f"CNI_ARGS item {part!r} is not KEY=VALUE")
        args[k] = v
    for key in ("K8S_POD_NAME", "K8S_POD_NAMESPACE"):  # they reach veth names, etcd keys and records
        if key in args and not _POD_NAME.match(args[key]):
            raise CniError(INVALID_ENV, f"CNI_ARGS {key}={args[key][:80]!r} is not a pod or namespace name "
                           "(1-253 of [A-Za-z0-9_.-], starting with a letter or digit)")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    netns = environ.get("CNI_NETNS", "")
    return Env(cmd, cid, netns, ifname, path, args, environ.get(NETNS_GIVEN_ENV) or netns)


def parse_conf(raw: bytes | str, command: str) -> dict[str, Any]:
    """Network config from stdin: code 6 if it is not a JSON object, 1 for a version we lack.
    (VERSION never parses it: see run.)"""
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {exc}") from exc
    except RecursionError:  # hostile nesting: still a decode failure, never a crash
        raise CniError(DECODE_FAILURE, "network configuration on stdin is nested too deeply") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, f"network configuration on stdin is a JSON {type(conf).__name__}, not an object")
    version = conf.get("cniVersion", "0.3.0")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command == "CHECK" and vtuple(version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, config has {version}")
    if command in ("GC", "STATUS") and vtuple(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later, config has {version}")
    for key in ("name", "type"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise CniError(INVALID_CONFIG, f"network configuration has no {key!r} (a non-empty string)")
    return conf


def version_of(conf: Mapping[str, Any]) -> str:
    v = conf.get("cniVersion")
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else LATEST


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Render an internal (1.0.0-shaped) result in `version`."""
    out = json.loads(json.dumps(result))
    out["cniVersion"] = version
    if vtuple(version) < (1, 0, 0):
        for ip in out.get("ips", []):
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return out


def normalize(result: Mapping[str, Any]) -> dict[str, Any]:
    """A prevResult of any supported version in the internal shape."""
    out = json.loads(json.dumps(dict(result)))
    for ip in out.get("ips", []):
        ip.pop("version", None)
    out.setdefault("interfaces", [])
    out.setdefault("ips", [])
    return out


def version_result(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {"cniVersion": version_of(conf) if conf else LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


# Set by labnet's CNI server when the shim passed the pod's netns as an open fd (opened in the
# runtime's mount namespace, which may not be the server's): CNI_NETNS is then that fd in the
# server, and this is the path the runtime gave.
NETNS_GIVEN_ENV = "LABNET_CNI_NETNS_GIVEN"

# Set by labnet's plugin for the labnet-ipam it delegates to: add a `labnet` key (block,
# affinity, borrowed) to the result. Without it the result has the spec's keys only.
IPAM_INFO_ENV = "LABNET_IPAM_INFO"


@dataclass(frozen=True)
class Services:
    """What one plugin run may reuse. An exec'd plugin gets the defaults (its own environment, a
    fresh etcd client); labnet's CNI server passes warm ones and runs labnet-ipam in-process.

    store_pool: an object with `get(conf) -> Datastore` returning a shared, open store (never
    closed by the plugin); None: open a store per run and close it after.
    ipam: runs the `labnet-ipam` plugin in-process, handle()-shaped; None: exec it from CNI_PATH.
    memo: a settings.RequestMemo shared by the plugin and its in-process IPAM for one request
    (so both read the cluster settings with one etcd round trip); None: read on every use.
    """

    environ: Mapping[str, str]
    store_pool: Any = None
    ipam: Callable[[Mapping[str, str], bytes], tuple[int, bytes, str]] | None = None
    memo: Any = None


Handler = Callable[[Env, dict[str, Any], Services], "dict[str, Any] | None"]


def _error_out(err: CniError, version: str) -> tuple[int, bytes, str]:
    return 1, (json.dumps(err.to_json(version)) + "\n").encode(), ""


def run(handler: Handler, services: Services, stdin: bytes) -> tuple[int, bytes, str]:
    """The skeleton both plugins share, without process state: parse env + config, dispatch,
    and return (exit status, stdout bytes, stderr text) for the result or the CNI error."""
    version = LATEST
    try:  # the config's version first: errors about the environment are rendered in it too
        peek = json.loads(stdin) if stdin.strip() else {}
        if isinstance(peek, dict) and isinstance(peek.get("cniVersion"), str):
            version = peek["cniVersion"] if peek["cniVersion"] in SUPPORTED_VERSIONS else LATEST
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    try:
        env = parse_env(services.environ)
        if env.command == "VERSION":
            # as libcni's skel: VERSION answers whatever stdin holds (an unknown or broken
            # cniVersion included), in the version asked for when it is one we speak
            result: dict[str, Any] | None = version_result({"cniVersion": version})
        else:
            conf = parse_conf(stdin, env.command)
            result = handler(env, conf, services)
    except CniError as err:
        return _error_out(err, version)
    except Exception as exc:  # last resort: still a CNI error, never a traceback on stdout
        return _error_out(CniError(999, f"internal error: {type(exc).__name__}: {exc}"), version)
    return 0, (json.dumps(result) + "\n").encode() if result is not None else b"", ""


def run_plugin(handle: Callable[[Mapping[str, str], bytes], tuple[int, bytes, str]]) -> NoReturn:
    """main() of an exec'd plugin: os.environ + stdin in, stdout + exit status out."""
    raw = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    code, out, err = handle(os.environ, raw)
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    raise SystemExit(code)
