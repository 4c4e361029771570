"""Pods, the container-runtime side: what containerd/kubelet do around CNI.

`add_pod` makes the pod's network namespace inside the node (`ip netns add` in the node's
mount namespace, so it lands in the node's private /var/run/netns as with containerd),
brings lo up through the loopback plugin, then runs the plugins of the node's first
conflist (lexicographic, as kubelet does) with the CNI environment and the network config
on stdin: ADD in order, DEL in reverse, prevResult chained. Everything runs inside the
node's namespaces. A small record per pod (/var/lib/labnet/pods/<pod>.json inside the node)
lets `del_pod`, `check_pod` and `exec` find the pod again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

from labnet import nsexec
from labnet.errors import LabnetError
from labnet.nsexec import NodeNS
from labnet.paths import check_name

NET_D = "/etc/cni/net.d"
CNI_BIN = "/opt/cni/bin"
PODS_DIR = "/var/lib/labnet/pods"
IFNAME = "eth0"


class CniFailed(LabnetError):
    """A plugin returned a CNI error; names node, pod, plugin, command and the spec code."""

    def __init__(self, node: str, pod: str, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.node, self.pod, self.plugin, self.command, self.code = node, pod, plugin, command, code
        self.msg, self.details = msg, details
        extra = f" ({details})" if details else ""
        super().__init__(f"node {node}, pod {pod}: CNI {command} by plugin {plugin!r} failed with code {code}: "
                         f"{msg}{extra}")


_F = TypeVar("_F", bound=Callable[..., Any])


def _in_node(fn: _F) -> _F:
    """Run `fn(node, ...)` with this thread inside the node (nsexec.entered): its commands are
    one exec each and its files are read and written here. A thousand pods used to cost ten
    processes each. Whatever `fn` does must be the node's: the lab's journal is not in reach."""

    @functools.wraps(fn)
    def inside(node: NodeNS, *args: Any, **kw: Any) -> Any:
        with nsexec.entered(node):
            return fn(node, *args, **kw)

    return inside  # type: ignore[return-value]


def container_id(lab: str, node: str, pod: str, namespace: str = "default") -> str:
    # The pod and namespace names go into CNI_ARGS (`;`-separated) and file names: checked here,
    # whoever calls, by the names' one rule.
    check_name("pod", pod)
    check_name("namespace", namespace)
    return hashlib.sha256(f"{lab}/{node}/{namespace}/{pod}".encode()).hexdigest()


def netns_name(cid: str) -> str:
    return f"cni-{cid[:16]}"


def _lab_of(node: NodeNS) -> str:
    """The lab name, from the node's netns file name lnet-<lab>.<node> (best effort)."""
    base = os.path.basename(node.netns)
    for sep in (".", "-"):
        suffix = f"{sep}{node.name}"
        if base.startswith("lnet-") and base.endswith(suffix):
            return base[5:-len(suffix)]
    return base


@_in_node
def read_conflist(node: NodeNS) -> dict[str, Any]:
    """The node's first network config in lexicographic order (.conflist, or a single .conf)."""
    names = _listdir(node, NET_D)
    confs = sorted(n for n in names if n.endswith((".conflist", ".conf", ".json")))
    if not confs:
        raise LabnetError(f"node {node.name}: no CNI network config in {NET_D} (is the CNI plugin installed?)")
    path = f"{NET_D}/{confs[0]}"
    text = _read(node, path)
    if text is None:
        raise LabnetError(f"node {node.name}: {path} vanished while it was read")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LabnetError(f"node {node.name}: {path} is not valid JSON: {exc}") from exc
    if "plugins" not in doc:  # a single-plugin .conf
        doc = {"name": doc.get("name"), "cniVersion": doc.get("cniVersion", "0.3.1"), "plugins": [doc]}
    return dict(doc)


def _env(command: str, cid: str, netns: str, pod: str, namespace: str, ifname: str = IFNAME,
         ip: IPv4Address | None = None, ip6: IPv6Address | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};"
                    f"K8S_POD_INFRA_CONTAINER_ID={cid}",
        "CNI_PATH": CNI_BIN,
    }
    asked = [str(a) for a in (ip, ip6) if a is not None]
    if asked:  # requested addresses, as podman's --ip asks (Calico's IP=, comma-separated per family)
        env["CNI_ARGS"] += f";IP={','.join(asked)}"
    return env


def _exec_plugin(node: NodeNS, pod: str, plugin: dict[str, Any], conflist: dict[str, Any], command: str,
                 env: dict[str, str], prev: dict[str, Any] | None, extra: dict[str, Any] | None = None
                 ) -> dict[str, Any] | None:
    conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    if extra:
        conf.update(extra)
    if prev is not None:
        conf["prevResult"] = prev
    ptype = str(plugin.get("type"))
    proc = nsexec.run(node, [f"{CNI_BIN}/{ptype}"], input=json.dumps(conf), env=env, check=False, timeout=120)
    out = proc.stdout.strip()
    try:
        doc = json.loads(out) if out else None
    except ValueError:
        doc = None
    if proc.returncode != 0:
        if isinstance(doc, dict) and "code" in doc:
            raise CniFailed(node.name, pod, ptype, command, int(doc["code"]), str(doc.get("msg")),
                            str(doc.get("details", "")))
        raise CniFailed(node.name, pod, ptype, command, 999, f"exited {proc.returncode}",
                        (proc.stderr or out).strip()[-2000:])
    return doc if isinstance(doc, dict) else None


def _read(node: NodeNS, path: str) -> str | None:
    """A file of the node (None: none), read here when this thread is inside the node."""
    if nsexec.is_inside(node):
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
    proc = nsexec.run(node, ["cat", path], check=False)
    return proc.stdout if proc.returncode == 0 else None


def _write(node: NodeNS, path: str, text: str) -> None:
    """Replace a file of the node at once (its directory made if need be)."""
    if nsexec.is_inside(node):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return
    nsexec.run(node, ["sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0.tmp" && mv "$0.tmp" "$0"', path],
               input=text)


def _listdir(node: NodeNS, path: str) -> list[str]:
    """The names in a directory of the node (none if it is missing)."""
    if nsexec.is_inside(node):
        return os.listdir(path) if os.path.isdir(path) else []
    return nsexec.run(node, ["ls", "-1", path], check=False).stdout.split()


def _exists(node: NodeNS, path: str, executable: bool = False) -> bool:
    if nsexec.is_inside(node):
        return os.access(path, os.X_OK) if executable else os.path.exists(path)
    return nsexec.run(node, ["test", "-x" if executable else "-e", path], check=False).returncode == 0


def _record_path(pod: str, namespace: str) -> str:
    return f"{PODS_DIR}/{pod}.json" if namespace == "default" else f"{PODS_DIR}/{namespace}.{pod}.json"


def read_record(node: NodeNS, pod: str, namespace: str = "default") -> dict[str, Any] | None:
    text = _read(node, _record_path(pod, namespace))
    return json.loads(text) if text and text.strip() else None


def _write_record(node: NodeNS, pod: str, namespace: str, record: dict[str, Any]) -> None:
    _write(node, _record_path(pod, namespace), json.dumps(record, indent=2))


# One trip into the node before the plugins run: the pod's netns (if new), its record (first,
# so a failed ADD can still be deleted), and whether the reference loopback plugin is there.
# A pod used to cost nine `nsenter`s; at a thousand pods they were most of the pods phase.
_PREPARE = ('[ -e "$1" ] || ip netns add "$2" || exit 1; mkdir -p "$3" && cat > "$4.tmp" && mv "$4.tmp" "$4" '
            '|| exit 1; [ -x "$5" ] && echo loopback; exit 0')


def _prepare(node: NodeNS, pod: str, namespace: str, cid: str, netns: str, record: dict[str, Any]) -> bool:
    """Returns whether the loopback plugin is installed."""
    if nsexec.is_inside(node):  # the same, with one process (ip) at most
        if not _exists(node, netns):
            nsexec.run(node, ["ip", "netns", "add", netns_name(cid)])
        _write_record(node, pod, namespace, record)
        return _exists(node, f"{CNI_BIN}/loopback", executable=True)
    out = nsexec.run(node, ["sh", "-c", _PREPARE, "prepare", netns, netns_name(cid), PODS_DIR,
                            _record_path(pod, namespace), f"{CNI_BIN}/loopback"], input=json.dumps(record, indent=2))
    return out.stdout.strip() == "loopback"


def _loopback(node: NodeNS, pod: str, cid: str, netns: str, command: str, present: bool | None = None) -> None:
    if present is None:
        present = _exists(node, f"{CNI_BIN}/loopback", executable=True)
    if present:
        lo = {"type": "loopback"}
        _exec_plugin(node, pod, lo, {"name": "lo", "cniVersion": "1.0.0"}, command,
                     _env(command, cid, netns, pod, "default", "lo"), None)
    elif command == "ADD":
        nsexec.run(node.pod(pod, netns), ["ip", "link", "set", "lo", "up"])


@_in_node
def add_pod(node: NodeNS, pod: str, namespace: str = "default", labels: dict[str, str] | None = None,
            lab: str | None = None, conflist: dict[str, Any] | None = None,
            ip: IPv4Address | None = None, ip6: IPv6Address | None = None) -> dict[str, Any]:
    """Create pod `pod` on `node` through the node's CNI config (`conflist`: read from the node
    when not given); return the final CNI result. `ip`, `ip6`: the addresses to ask for (CNI_ARGS IP=).

    Idempotent: for a pod that exists, the plugins see a repeated ADD and answer the same.
    """
    check_name("pod", pod)
    cid = container_id(lab if lab is not None else _lab_of(node), node.name, pod, namespace)
    netns = f"/var/run/netns/{netns_name(cid)}"
    conflist = conflist or read_conflist(node)
    record: dict[str, Any] = {"pod": pod, "namespace": namespace, "container_id": cid, "netns": netns,
                              "network": conflist["name"], "cniVersion": conflist["cniVersion"],
                              "labels": labels or {}, "result": None}
    has_loopback = _prepare(node, pod, namespace, cid, netns, record)
    env = _env("ADD", cid, netns, pod, namespace, ip=ip, ip6=ip6)
    extra = {"args": {"labels": labels}} if labels else None
    prev: dict[str, Any] | None = None
    try:
        _loopback(node, pod, cid, netns, "ADD", has_loopback)
        for plugin in conflist["plugins"]:
            prev = _exec_plugin(node, pod, plugin, conflist, "ADD", env, prev, extra)
    except Exception:
        try:
            del_pod(node, pod, namespace, lab=lab)
        except Exception:  # the ADD error is the one to report
            pass
        finally:  # whatever DEL managed (etcd may be down): what this ADD made on the node goes
            _forget(node, cid, pod, namespace)
        raise
    record["result"] = prev
    _write_record(node, pod, namespace, record)
    return prev or {}


@_in_node
def del_pod(node: NodeNS, pod: str, namespace: str = "default", lab: str | None = None) -> None:
    """Delete pod `pod`: CNI DEL in reverse order, then its netns and record. Idempotent."""
    check_name("pod", pod)
    check_name("namespace", namespace)
    record = read_record(node, pod, namespace)
    cid = record["container_id"] if record else container_id(lab if lab is not None else _lab_of(node),
                                                              node.name, pod, namespace)
    netns = record["netns"] if record else f"/var/run/netns/{netns_name(cid)}"
    conflist = read_conflist(node)
    env = _env("DEL", cid, netns, pod, namespace)
    prev = record.get("result") if record else None
    for plugin in reversed(conflist["plugins"]):
        _exec_plugin(node, pod, plugin, conflist, "DEL", env, prev)
    if _exists(node, netns):
        _loopback(node, pod, cid, netns, "DEL")  # as containerd's go-cni: loopback's network goes last
    _forget(node, cid, pod, namespace)


def _forget(node: NodeNS, cid: str, pod: str, namespace: str) -> None:
    """The pod's netns and record on the node."""
    nsexec.run(node, ["ip", "netns", "del", netns_name(cid)], check=False)
    if nsexec.is_inside(node):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_record_path(pod, namespace))
    else:
        nsexec.run(node, ["rm", "-f", _record_path(pod, namespace)], check=False)


@_in_node
def check_pod(node: NodeNS, pod: str, namespace: str = "default") -> None:
    """CNI CHECK of every plugin with the stored result; raises CniFailed naming what differs."""
    record = read_record(node, pod, namespace)
    if record is None or not record.get("result"):
        raise LabnetError(f"node {node.name}: no pod {pod!r} (no record in {PODS_DIR})")
    conflist = read_conflist(node)
    env = _env("CHECK", record["container_id"], record["netns"], pod, namespace)
    for plugin in conflist["plugins"]:
        _exec_plugin(node, pod, plugin, conflist, "CHECK", env, record["result"])


def pod_ns(node: NodeNS, pod: str, namespace: str = "default") -> NodeNS:
    """Namespaces to run commands in the pod (for `labnet exec NODE/POD`)."""
    record = read_record(node, pod, namespace)
    if record is None:
        raise LabnetError(f"node {node.name}: no pod {pod!r} (no record in {PODS_DIR})")
    return node.pod(pod, record["netns"])

