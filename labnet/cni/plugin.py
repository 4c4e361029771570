"""`labnet`: the CNI network plugin (Calico's `calico` plugin, reduced to etcd: IPv4, and
IPv6 beside it where the cluster has an IPv6 pool).

ADD: delegate to the IPAM plugin named in `ipam.type` (exec'd from CNI_PATH, as libcni
does) and create the veth pair while it runs; then add the address and routes while the
workload endpoint goes to etcd, and print the result. A failure undoes every step.
DEL: tear down whatever is left, drop the endpoint, delegate DEL; succeeds when nothing is
left. CHECK compares kernel + IPAM + datastore with prevResult. GC removes endpoints and
addresses of attachments the runtime no longer lists. STATUS says whether ADD can work.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import Any

from labnet.cni import settings
from labnet.cni.spec import (
    CHECK_FAILED,
    DATAPATH_FAILED,
    DELEGATE_FAILED,
    INVALID_CONFIG,
    IPAM_INFO_ENV,
    NETNS_GIVEN_ENV,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
    Env,
    Services,
    convert,
    normalize,
    run,
    run_plugin,
    version_of,
)
from labnet.etcd import keys
from labnet.etcd.store import DatastoreUnavailable

IN_PROCESS_IPAM = "labnet-ipam"  # the IPAM type labnet's CNI server runs in-process


class _Delegate:
    """One run of the IPAM plugin: exec'd from CNI_PATH as libcni does (it runs while this
    process imports the etcd client and the datapath), or labnet-ipam in-process in the server."""

    def __init__(self, env: Env, conf: dict[str, Any], command: str, services: Services) -> None:
        ipam = conf.get("ipam")
        if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
            raise CniError(INVALID_CONFIG, f"network {conf['name']!r} has no ipam.type")
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.done: tuple[int, bytes, str] | None = None
        # labnet-ipam tells its block and whether it borrowed only when asked: its result is then
        # ours to read, not a runtime's (a result a runtime sees keeps to the spec's keys).
        environ = dict(services.environ, CNI_COMMAND=command, **{IPAM_INFO_ENV: "1"})
        self.thread: threading.Thread | None = None
        if ipam["type"] == IN_PROCESS_IPAM and services.ipam is not None:
            # A thread, as the exec'd one is a process: IPAM's etcd round trips overlap the
            # plugin's own (cluster settings, MTU; on DEL the veth teardown).
            self.binary = f"{IN_PROCESS_IPAM} (in-process)"
            run_ipam, stdin = services.ipam, json.dumps(conf).encode()

            def go() -> None:
                try:
                    self.done = run_ipam(environ, stdin)
                except BaseException as exc:  # handle() answers errors itself; this is a last guard
                    self.done = (1, b"", f"{type(exc).__name__}: {exc}")

            self.thread = threading.Thread(target=go, name=f"ipam-{command}", daemon=True)
            self.thread.start()
            return
        binary = next((os.path.join(d, ipam["type"]) for d in env.path
                       if os.access(os.path.join(d, ipam["type"]), os.X_OK)), None)
        if binary is None:
            raise CniError(DELEGATE_FAILED, f"IPAM plugin {ipam['type']!r} not found in CNI_PATH {':'.join(env.path)}")
        self.binary = binary
        if environ.pop(NETNS_GIVEN_ENV, None) is not None:  # the server's fd is not the delegate's
            environ["CNI_NETNS"] = env.sandbox
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environ)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(conf).encode())
        self.proc.stdin.close()

    def _outcome(self) -> tuple[int, bytes, str]:
        if self.thread is not None:
            self.thread.join()
        if self.done is None:
            assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
            stdout, stderr = self.proc.stdout.read(), self.proc.stderr.read()
            self.proc.wait()
            self.done = (self.proc.returncode, stdout, stderr.decode(errors="replace"))
        return self.done

    def result(self) -> dict[str, Any] | None:
        code, stdout, stderr = self._outcome()
        out = stdout.decode(errors="replace").strip()
        try:
            doc = json.loads(out) if out else None
        except ValueError:
            doc = None
        if code != 0:
            if isinstance(doc, dict) and "code" in doc:
                raise CniError(int(doc["code"]), str(doc.get("msg", "")), str(doc.get("details", "")))
            raise CniError(DELEGATE_FAILED, f"IPAM plugin {self.binary} {self.command} exited {code}",
                           (stderr or out)[-2000:])
        if self.command == "ADD" and not isinstance(doc, dict):
            raise CniError(DELEGATE_FAILED, f"IPAM plugin {self.binary} ADD printed no result: {out[:200]!r}")
        return doc if isinstance(doc, dict) else None


def delegate(env: Env, conf: dict[str, Any], command: str, services: Services) -> dict[str, Any] | None:
    return _Delegate(env, conf, command, services).result()


def _labels(env: Env, conf: dict[str, Any]) -> dict[str, str]:
    labels = {"projectcalico.org/namespace": env.namespace, "projectcalico.org/orchestrator": "k8s"}
    args = conf.get("args") or {}
    cni = args.get("cni") if isinstance(args, dict) else None
    if not isinstance(args, dict) or (cni is not None and not isinstance(cni, dict)):
        raise CniError(INVALID_CONFIG, "'args' and 'args.cni' must be JSON objects")
    for source in (args.get("labels"), (cni or {}).get("labels")):
        if isinstance(source, dict):
            labels.update({str(k): str(v) for k, v in source.items()})
        elif isinstance(source, list):  # the CNI convention: [{"key": ..., "value": ...}]
            for item in source:
                if not (isinstance(item, dict) and "key" in item and "value" in item):
                    raise CniError(INVALID_CONFIG, f"a label in args must be {{\"key\": ..., \"value\": ...}}, "
                                   f"not {str(item)[:60]}")
                labels[str(item["key"])] = str(item["value"])
    return labels


def _host_if(env: Env) -> str:
    from labnet.cni.datapath import host_veth_name

    return host_veth_name(env.container_id, env.namespace, env.pod, env.ifname or "eth0")


def _wep_key(node: str, env: Env) -> str:
    return keys.workload_endpoint(node, env.pod or env.container_id, env.container_id, env.ifname or "eth0")


def _mtu(conf: dict[str, Any], store: Any, memo: settings.RequestMemo | None, underlay: int) -> int:
    # the node has an IPv6 underlay exactly when its cluster has an IPv6 pool (validation says so)
    c = settings.cluster(conf, store, memo)
    return c.workload_mtu(underlay, underlay6=c.pool6 is not None)


def _addresses(ips: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The first IPv4 and the first IPv6 address of a result's ips, without prefix."""
    bare = [ip["address"].split("/")[0] for ip in ips]
    return next((a for a in bare if ":" not in a), None), next((a for a in bare if ":" in a), None)


def _give_back(env: Env, conf: dict[str, Any], ipam: _Delegate, services: Services) -> None:
    """Release what the IPAM plugin assigned for an ADD that fails (its own errors are moot)."""
    try:
        if ipam.result():
            delegate(env, conf, "DEL", services)
    except CniError:
        pass


def cmd_add(env: Env, conf: dict[str, Any], store: Any, ipam: _Delegate, services: Services) -> dict[str, Any]:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    host_if = _host_if(env)
    # The veth pair needs no address: it is made while IPAM runs, and finished once the
    # address is known; the workload endpoint is written while the routes go in.
    try:
        pair = datapath.prepare(host_if, env.netns, env.ifname)
    except Exception as exc:
        _give_back(env, conf, ipam, services)
        raise CniError(DATAPATH_FAILED, f"node {node}: creating {host_if} <-> {env.ifname} in {env.sandbox} failed: "
                       f"{type(exc).__name__}: {exc}") from exc
    try:
        underlay = datapath.underlay_mtu()
        ipam_result = normalize(ipam.result() or {})
        if not ipam_result["ips"]:
            raise CniError(DELEGATE_FAILED, "IPAM plugin returned no IP address")
        mtu = _mtu(conf, store, services.memo, underlay)
        address, address6 = _addresses(ipam_result["ips"])
        if address is None:
            raise CniError(DELEGATE_FAILED, "IPAM plugin returned no IPv4 address (labnet pods always have one), "
                           f"only {', '.join(ip['address'] for ip in ipam_result['ips'])}")
    except BaseException:
        datapath.discard(pair)
        _give_back(env, conf, ipam, services)
        raise
    info = ipam_result.get("labnet") or {}

    def wep(mac: str) -> str:
        return json.dumps({
            "pod": env.pod or env.container_id, "namespace": env.namespace, "node": node,
            "containerID": env.container_id, "network": conf["name"], "interface": host_if, "ifname": env.ifname,
            "ip": f"{address}/32", "mac": mac, "netns": env.sandbox, "labels": _labels(env, conf),
            "block": info.get("block"), "borrowed": bool(info.get("borrowed")), "mtu": mtu,
            **({"ip6": f"{address6}/128", "block6": info.get("block6"), "borrowed6": bool(info.get("borrowed6"))}
               if address6 else {}),
        })

    wep_key = _wep_key(node, env)
    early = _Background(lambda: store.put(wep_key, wep(pair.pod_mac))) if pair.created else None
    try:
        ep = datapath.finish(pair, address, mtu, address6)
    except Exception as exc:
        try:
            if early is not None:
                early.join()
                store.delete(wep_key)
        except Exception:
            pass
        _give_back(env, conf, ipam, services)
        raise CniError(DATAPATH_FAILED, f"node {node}: setting up {host_if} <-> {env.ifname} in {env.sandbox} "
                       f"for {address}{' and ' + address6 if address6 else ''} failed: {type(exc).__name__}: {exc}") from exc
    try:
        if early is not None:
            early.join()
        else:
            store.put(wep_key, wep(ep.container_mac))
    except BaseException:
        if ep.created:  # a pair an earlier ADD of this container built stays for its DEL
            datapath.teardown(host_if, env.netns, env.ifname)
        _give_back(env, conf, ipam, services)
        raise
    prev = normalize(conf["prevResult"]) if isinstance(conf.get("prevResult"), dict) else None
    base = len(prev["interfaces"]) if prev else 0
    result: dict[str, Any] = {
        "interfaces": [*(prev["interfaces"] if prev else []),
                       {"name": host_if, "mac": ep.host_mac},
                       {"name": env.ifname, "mac": ep.container_mac, "sandbox": env.sandbox}],
        "ips": [*(prev["ips"] if prev else []), {"address": f"{address}/32", "interface": base + 1},
                *([{"address": f"{address6}/128", "interface": base + 1}] if address6 else [])],
        "routes": prev.get("routes", []) if prev else [],
        "dns": (prev or {}).get("dns") or {},
    }
    if services.memo is not None:  # for the node's agent, not the runtime; None: IPAM did not say
        said = "borrowed" in info or "borrowed6" in info
        services.memo.borrowed = bool(info.get("borrowed") or info.get("borrowed6")) if said else None
    return convert(result, version_of(conf))


class _Background:
    """One call on a thread; join() returns its result or raises its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: tuple[bool, Any] = (False, None)

        def go() -> None:
            try:
                self._out = (True, fn())
            except BaseException as exc:
                self._out = (False, exc)

        self._thread = threading.Thread(target=go, name="cni-background", daemon=True)
        self._thread.start()

    def join(self) -> Any:
        self._thread.join()
        ok, value = self._out
        if not ok:
            raise value
        return value


def cmd_del(env: Env, conf: dict[str, Any], store: Any, ipam: _Delegate) -> None:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    # Release the address while the veth goes: a released address is handed out last, and a
    # new pod's `route replace` would win over the old veth's route anyway.
    try:
        datapath.teardown(_host_if(env), env.netns or None, env.ifname)
        if env.pod:
            store.delete(_wep_key(node, env))
        else:
            for kv in store.range(keys.workload_endpoints(node)):  # no pod name: find it by its record
                with contextlib.suppress(ValueError, AttributeError):
                    wep = json.loads(kv.value)
                    if (wep.get("containerID"), wep.get("ifname", "eth0")) == (env.container_id, env.ifname or "eth0"):
                        store.delete(kv.key)
    except DatastoreUnavailable:
        raise
    except Exception as exc:
        raise CniError(DATAPATH_FAILED, f"node {node}: removing {_host_if(env)} failed: {exc}") from exc
    finally:
        ipam_error: CniError | None = None
        try:
            ipam.result()
        except CniError as err:
            ipam_error = err
    if ipam_error is not None:
        raise ipam_error


def cmd_check(env: Env, conf: dict[str, Any], store: Any, services: Services) -> None:
    from labnet.cni import datapath

    if not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"container {env.container_id}: netns {env.sandbox} does not exist")
    if not isinstance(conf.get("prevResult"), dict):
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    prev = normalize(conf["prevResult"])
    ours = [i for i, itf in enumerate(prev["interfaces"]) if itf.get("name") == env.ifname and itf.get("sandbox")]
    address, address6 = _addresses([ip for ip in prev["ips"] if ip.get("interface") in ours] or prev["ips"])
    if address is None:
        raise CniError(CHECK_FAILED, f"prevResult has no IPv4 address for {env.ifname}")
    delegate(env, conf, "CHECK", services)
    node = settings.nodename(conf)
    problems = datapath.check(_host_if(env), env.netns, env.ifname, address, address6)
    if store.get(_wep_key(node, env)) is None:
        problems.append(f"workload endpoint {_wep_key(node, env)}: expected present, found absent")
    if problems:
        raise CniError(CHECK_FAILED, f"node {node}, container {env.container_id}: " + "; ".join(problems))


def cmd_gc(env: Env, conf: dict[str, Any], store: Any, services: Services) -> None:
    from labnet.cni import datapath

    node = settings.nodename(conf)
    valid = {(a.get("containerID", ""), a.get("ifname", "eth0")) for a in conf.get("cni.dev/valid-attachments") or []}
    for kv in store.range(keys.workload_endpoints(node)):
        wep = json.loads(kv.value)
        if wep.get("network") == conf["name"] and (wep.get("containerID"), wep.get("ifname", "eth0")) not in valid:
            datapath.teardown(wep.get("interface", ""), None, wep.get("ifname", "eth0"))
            store.delete(kv.key, kv.mod_revision)
    delegate(env, conf, "GC", services)


def cmd_status(env: Env, conf: dict[str, Any], store: Any, services: Services) -> None:
    try:
        settings.cluster(conf, store)
    except CniError as err:
        raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
    delegate(env, conf, "STATUS", services)


def _run(env: Env, conf: dict[str, Any], services: Services) -> dict[str, Any] | None:
    ipam = None
    if env.command == "ADD" and not os.path.exists(env.netns):
        raise CniError(UNKNOWN_CONTAINER, f"container {env.container_id}: netns {env.sandbox} does not exist")
    if env.command in ("ADD", "DEL"):
        settings.etcd_config(conf)  # bad config: fail before anything is assigned
        # An exec'd IPAM plugin runs while this process imports the etcd client and the datapath.
        ipam = _Delegate(env, conf, env.command, services)
    try:
        with settings.store_for(conf, services.store_pool) as store:
            if env.command == "ADD" and ipam is not None:
                return cmd_add(env, conf, store, ipam, services)
            if env.command == "DEL" and ipam is not None:
                cmd_del(env, conf, store, ipam)
                return None
            {"CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}[env.command](env, conf, store, services)
            return None
    except DatastoreUnavailable as exc:
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, f"etcd at {conf.get('etcd_endpoints')} is unreachable", str(exc)) from exc
        raise settings.unavailable(conf, exc) from exc


def handle(environ: Mapping[str, str], stdin: bytes, *, store_pool: Any = None,
           ipam: Callable[[Mapping[str, str], bytes], tuple[int, bytes, str]] | None = None,
           memo: settings.RequestMemo | None = None) -> tuple[int, bytes, str]:
    """One plugin run, without process state: the CNI_* environment and the config bytes in,
    (exit status, stdout bytes, stderr text) out. The exec'd plugin and the server share it.
    `memo` (one per request) must be the one the in-process `ipam` uses, or None."""
    return run(_run, Services(environ, store_pool, ipam, memo), stdin)


def main() -> None:
    run_plugin(handle)


if __name__ == "__main__":
    main()
