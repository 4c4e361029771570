"""`labnet`: the CNI network plugin (Calico's `calico` plugin, reduced to IPv4 + etcd).

ADD: delegate to the IPAM plugin named in `ipam.type` (exec'd from CNI_PATH, as libcni
does), build the veth datapath, record the workload endpoint in etcd, print the result.
DEL: tear down whatever is left, drop the endpoint, delegate DEL; succeeds when nothing is
left. CHECK compares kernel + IPAM + datastore with prevResult. GC removes endpoints and
addresses of attachments the runtime no longer lists. STATUS says whether ADD can work.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from labnet.cni import settings
from labnet.cni.spec import (
    CHECK_FAILED,
    DATAPATH_FAILED,
    DELEGATE_FAILED,
    INVALID_CONFIG,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
    Env,
    convert,
    normalize,
    run_plugin,
    version_of,
)
from labnet.etcd import keys
from labnet.etcd.store import DatastoreUnavailable


def _start_delegate(env: Env, conf: dict[str, Any], command: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Exec the IPAM plugin with the same environment and network config, as libcni does."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
        raise CniError(INVALID_CONFIG, f"network {conf['name']!r} has no ipam.type")
    binary = next((os.path.join(d, ipam["type"]) for d in env.path
                   if os.access(os.path.join(d, ipam["type"]), os.X_OK)), None)
    if binary is None:
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {ipam['type']!r} not found in CNI_PATH {':'.join(env.path)}")
    proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, CNI_COMMAND=command))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return binary, proc


def _finish_delegate(binary: str, proc: subprocess.Popen[bytes], command: str) -> dict[str, Any] | None:
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.wait()
    out = stdout.decode(errors="replace").strip()
    try:
        doc = json.loads(out) if out else None
    except ValueError:
        doc = None
    if proc.returncode != 0:
        if isinstance(doc, dict) and "code" in doc:
            raise CniError(int(doc["code"]), str(doc.get("msg", "")), str(doc.get("details", "")))
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {binary} {command} exited {proc.returncode}",
                       (stderr.decode(errors="replace") or out)[-2000:])
    if command == "ADD" and not isinstance(doc, dict):
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {binary} ADD printed no result: {out[:200]!r}")
    return doc if isinstance(doc, dict) else None


def delegate(env: Env, conf: dict[str, Any], command: str) -> dict[str, Any] | None:
    return _finish_delegate(*_start_delegate(env, conf, command), command)


def _labels(env: Env, conf: dict[str, Any]) -> dict[str, str]:
    labels = {"projectcalico.org/namespace": env.namespace, "projectcalico.org/orchestrator": "k8s"}
    args = conf.get("args") or {}
    for source in (args.get("labels"), (args.get("cni") or {}).get("labels")):
        if isinstance(source, dict):
            labels.update({str(k): str(v) for k, v in source.items()})
        elif isinstance(source, list):  # the CNI convention: [{"key": ..., "value": ...}]
            labels.update({str(i["key"]): str(i["value"]) for i in source if isinstance(i, dict) and "key" in i})
    return labels


def _host_if(env: Env) -> str:
    from labnet.cni.datapath import host_veth_name

    return host_veth_name(env.container_id, env.namespace, env.pod)


def _wep_key(node: str, env: Env) -> str:
    return keys.workload_endpoint(node, env.pod or env.container_id, env.container_id)


def _mtu(conf: dict[str, Any], store: Any) -> int:
    from labnet.cni.datapath import underlay_mtu

    c = settings.cluster(conf, store)
    if c.mtu:
        return c.mtu
    overhead = {"ipip": settings.IPIP_OVERHEAD, "vxlan": settings.VXLAN_OVERHEAD}.get(c.encapsulation or "", 0)
    return underlay_mtu() - overhead


def cmd_add(env: Env, conf: dict[str, Any], store: Any, ipam: tuple[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    try:
        mtu = _mtu(conf, store)
    except BaseException:
        try:  # give back what the IPAM plugin may have assigned meanwhile
            if _finish_delegate(*ipam, "ADD"):
                delegate(env, conf, "DEL")
        except CniError:
            pass
        raise
    ipam_result = normalize(_finish_delegate(*ipam, "ADD") or {})
    if not ipam_result["ips"]:
        raise CniError(DELEGATE_FAILED, "IPAM plugin returned no IP address")
    address = ipam_result["ips"][0]["address"].split("/")[0]
    host_if = _host_if(env)
    try:
        ep = datapath.setup(host_if, env.netns, env.ifname, address, mtu)
    except Exception as exc:
        try:
            delegate(env, conf, "DEL")
        finally:
            raise CniError(DATAPATH_FAILED, f"node {node}: setting up {host_if} <-> {env.ifname} in {env.netns} "
                           f"for {address} failed: {type(exc).__name__}: {exc}") from exc
    info = ipam_result.get("labnet") or {}
    wep = {
        "pod": env.pod or env.container_id, "namespace": env.namespace, "node": node,
        "containerID": env.container_id, "network": conf["name"], "interface": host_if, "ifname": env.ifname,
        "ip": f"{address}/32", "mac": ep.container_mac, "netns": env.netns, "labels": _labels(env, conf),
        "block": info.get("block"), "borrowed": bool(info.get("borrowed")), "mtu": mtu,
    }
    store.put(_wep_key(node, env), json.dumps(wep))
    prev = normalize(conf["prevResult"]) if isinstance(conf.get("prevResult"), dict) else None
    base = len(prev["interfaces"]) if prev else 0
    result: dict[str, Any] = {
        "interfaces": [*(prev["interfaces"] if prev else []),
                       {"name": host_if, "mac": ep.host_mac},
                       {"name": env.ifname, "mac": ep.container_mac, "sandbox": env.netns}],
        "ips": [*(prev["ips"] if prev else []), {"address": f"{address}/32", "interface": base + 1}],
        "routes": prev.get("routes", []) if prev else [],
        "dns": (prev or {}).get("dns") or {},
    }
    if info:
        result["labnet"] = info
    return convert(result, version_of(conf))


def cmd_del(env: Env, conf: dict[str, Any], store: Any, ipam: tuple[str, subprocess.Popen[bytes]]) -> None:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    # Release the address while the veth goes: a released address is handed out last, and a
    # new pod's `route replace` would win over the old veth's route anyway.
    try:
        datapath.teardown(_host_if(env), env.netns or None, env.ifname)
        if env.pod:
            store.delete(_wep_key(node, env))
        else:
            for kv in store.range(keys.workload_endpoints(node)):
                if kv.key.endswith("/" + env.container_id):
                    store.delete(kv.key)
    except DatastoreUnavailable:
        raise
    except Exception as exc:
        raise CniError(DATAPATH_FAILED, f"node {node}: removing {_host_if(env)} failed: {exc}") from exc
    finally:
        ipam_error: CniError | None = None
        try:
            _finish_delegate(*ipam, "DEL")
        except CniError as err:
            ipam_error = err
    if ipam_error is not None:
        raise ipam_error


def cmd_check(env: Env, conf: dict[str, Any], store: Any) -> None:
    from labnet.cni import datapath

    if not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"container {env.container_id}: netns {env.netns} does not exist")
    if not isinstance(conf.get("prevResult"), dict):
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    prev = normalize(conf["prevResult"])
    ours = [i for i, itf in enumerate(prev["interfaces"]) if itf.get("name") == env.ifname and itf.get("sandbox")]
    ips = [ip["address"].split("/")[0] for ip in prev["ips"] if ip.get("interface") in ours] or \
        [ip["address"].split("/")[0] for ip in prev["ips"]]
    if not ips:
        raise CniError(CHECK_FAILED, f"prevResult has no address for {env.ifname}")
    delegate(env, conf, "CHECK")
    node = settings.nodename(conf)
    problems = datapath.check(_host_if(env), env.netns, env.ifname, ips[0])
    if store.get(_wep_key(node, env)) is None:
        problems.append(f"workload endpoint {_wep_key(node, env)}: expected present, found absent")
    if problems:
        raise CniError(CHECK_FAILED, f"node {node}, container {env.container_id}: " + "; ".join(problems))


def cmd_gc(env: Env, conf: dict[str, Any], store: Any) -> None:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    valid = {a.get("containerID", "") for a in conf.get("cni.dev/valid-attachments") or []}
    for kv in store.range(keys.workload_endpoints(node)):
        wep = json.loads(kv.value)
        if wep.get("network") == conf["name"] and wep.get("containerID") not in valid:
            datapath.teardown(wep.get("interface", ""), None, wep.get("ifname", "eth0"))
            store.delete(kv.key, kv.mod_revision)
    delegate(env, conf, "GC")


def cmd_status(env: Env, conf: dict[str, Any], store: Any) -> None:
    try:
        settings.cluster(conf, store)
    except CniError as err:
        raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
    delegate(env, conf, "STATUS")


def handle(env: Env, conf: dict[str, Any]) -> dict[str, Any] | None:
    ipam = None
    if env.command == "ADD" and not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"container {env.container_id}: netns {env.netns} does not exist")
    if env.command in ("ADD", "DEL"):
        settings.etcd_config(conf)  # bad config: fail before anything is assigned
        # The IPAM plugin runs while this process imports the etcd client and the datapath.
        ipam = _start_delegate(env, conf, env.command)
    store = settings.open_store(conf)
    try:
        if env.command == "ADD" and ipam is not None:
            return cmd_add(env, conf, store, ipam)
        if env.command == "DEL" and ipam is not None:
            cmd_del(env, conf, store, ipam)
            return None
        {"CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}[env.command](env, conf, store)
        return None
    except DatastoreUnavailable as exc:
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, f"etcd at {conf.get('etcd_endpoints')} is unreachable", str(exc)) from exc
        raise settings.unavailable(conf, exc) from exc
    finally:
        store.close()


def main() -> None:
    run_plugin(handle)


if __name__ == "__main__":
    main()
