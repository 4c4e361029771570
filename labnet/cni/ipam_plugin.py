"""`labnet-ipam`: the CNI IPAM plugin (Calico's calico-ipam), block affinity over etcd.

Handle id per container: `<network name>.<container id>`. The ADD result carries, besides
the spec's `ips`, a `labnet` object naming the block, its owner and whether the address was
borrowed from another node's block (the agent then routes a /32).

Where the cluster has an IPv6 pool the same handle also gets one IPv6 address (/128), as
calico-ipam's `assign_ipv6`; `ipam.assign_ipv6: "false"` in the network config turns it off.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from labnet.cni import settings
from labnet.cni.spec import (
    CHECK_FAILED,
    INVALID_CONFIG,
    INVALID_ENV,
    IPAM_INFO_ENV,
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
from labnet.etcd.store import DatastoreUnavailable
from labnet.ipam import allocator as ipam
from labnet.settings import ClusterSettings


def handle_id(conf: dict[str, Any], container_id: str, ifname: str = "eth0") -> str:
    """Calico's `<network>.<container id>`; another interface of the container on the same network
    adds `/<ifname>`, so each attachment holds its own address."""
    base = f"{conf['name']}.{container_id}"
    return base if ifname in ("eth0", "") else f"{base}/{ifname}"


def _pool(conf: dict[str, Any], store: Any, memo: settings.RequestMemo | None = None) -> ipam.Pool:
    return _pool_of(settings.cluster(conf, store, memo))


def _pool_of(c: ClusterSettings, version: int = 4) -> ipam.Pool:
    p = c.pool_of(version)
    if p is None:
        raise CniError(INVALID_CONFIG, f"the cluster has no IPv{version} pool")
    try:
        return ipam.Pool(p.cidr, p.block_size)
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from exc


def _assign6(conf: dict[str, Any], c: ClusterSettings) -> bool:
    """Whether this ADD takes an IPv6 address too: the cluster has an IPv6 pool and the network
    config does not say `assign_ipv6: "false"` (calico-ipam's flag, a string or a bool)."""
    flag = (conf.get("ipam") or {}).get("assign_ipv6")
    if flag is not None and str(flag).lower() not in ("true", "false"):
        raise CniError(INVALID_CONFIG, f"ipam.assign_ipv6 must be \"true\" or \"false\", not {flag!r}")
    return c.pool6 is not None and str(flag).lower() != "false"


def _run(env: Env, conf: dict[str, Any], services: Services) -> dict[str, Any] | None:
    try:
        with settings.store_for(conf, services.store_pool) as store:
            return _dispatch(env, conf, store, services.memo, info=services.environ.get(IPAM_INFO_ENV) == "1")
    except DatastoreUnavailable as exc:
        if env.command == "STATUS":
            raise CniError(NOT_AVAILABLE, f"etcd at {conf.get('etcd_endpoints')} is unreachable", str(exc)) from exc
        raise settings.unavailable(conf, exc) from exc
    except ipam.IpamError as exc:
        raise CniError(exc.code, str(exc)) from exc


def handle(environ: Mapping[str, str], stdin: bytes, *, store_pool: Any = None,
           memo: settings.RequestMemo | None = None) -> tuple[int, bytes, str]:
    """One IPAM plugin run, without process state: (exit status, stdout, stderr)."""
    return run(_run, Services(environ, store_pool, memo=memo), stdin)


def requested_ip(env: Env, conf: dict[str, Any], version: int = 4) -> str | None:
    """The one address of that IP family the runtime asks for, if any: CNI_ARGS `IP=` (podman's
    --ip, Calico's convention: comma-separated, one per family), `args.cni.ips` or
    `runtimeConfig.ips` (the `ips` capability); a prefix length is dropped. Code 4 for a bad
    CNI_ARGS value, 7 for a bad config, one address per family at most."""
    found: dict[str, str] = {}
    for part in filter(None, (env.args.get("IP") or "").split(",")):
        try:
            addr = ipaddress.ip_address(part.split("/")[0])
        except ValueError:
            raise CniError(INVALID_ENV, f"CNI_ARGS IP={env.args['IP']!r}: {part!r} is not an IP address") from None
        if addr.version == version:
            found[str(addr)] = "CNI_ARGS IP"
    for where, ips in (("args.cni.ips", ((conf.get("args") or {}).get("cni") or {}).get("ips")),
                       ("runtimeConfig.ips", (conf.get("runtimeConfig") or {}).get("ips"))):
        if ips is None:
            continue
        if not isinstance(ips, list) or not all(isinstance(x, str) for x in ips):
            raise CniError(INVALID_CONFIG, f"{where} must be a list of address strings, got {ips!r}")
        for x in ips:
            try:
                addr = ipaddress.ip_interface(x).ip
            except ValueError:
                raise CniError(INVALID_CONFIG, f"{where}: {x!r} is not an IP address") from None
            if addr.version == version:
                found[str(addr)] = where
    if len(found) > 1:
        raise CniError(INVALID_CONFIG, f"labnet assigns one IPv{version} address per attachment; requested "
                       + ", ".join(f"{a} ({w})" for a, w in found.items()))
    return next(iter(found), None)


def _add(env: Env, conf: dict[str, Any], store: Any, node: str, memo: settings.RequestMemo | None,
         info: bool) -> dict[str, Any]:
    wanted, wanted6 = requested_ip(env, conf), requested_ip(env, conf, 6)
    hid = handle_id(conf, env.container_id, env.ifname)
    # One read for the settings, the handle and the node's blocks; the plugin's MTU reuses the settings.
    # (An IPv6 pool's blocks are read by its own assignment: the settings say whether there is one.)
    first = ipam.first_read(store, hid, settings.CLUSTER_KEY, node=node)
    if memo is not None:
        memo.prime(settings.CLUSTER_KEY, first.keys[settings.CLUSTER_KEY])
    cluster = settings.cluster_from(conf, first.keys[settings.CLUSTER_KEY])
    pool = _pool_of(cluster)
    dual = _assign6(conf, cluster)  # every refusal comes before anything is assigned
    pool6 = _pool_of(cluster, 6) if dual else None
    if wanted6 is not None and not dual:
        raise CniError(INVALID_CONFIG, f"an IPv6 address was requested ({wanted6}) but the cluster has no IPv6 "
                       "pool (or ipam.assign_ipv6 is \"false\")")
    attrs = {"node": node, "pod": env.pod or "", "namespace": env.namespace, "containerID": env.container_id}
    if wanted is None:
        a = ipam.auto_assign(store, node, hid, pool, attrs, first=first)
    else:
        a = ipam.assign_ip(store, node, hid, pool, wanted, attrs, first=first)
    result: dict[str, Any] = {"ips": [{"address": a.host_prefix}], "routes": [], "dns": {}}
    if info:  # labnet's own plugin asked (IPAM_INFO_ENV): the block, the affinity, whether borrowed
        result["labnet"] = {**a.to_json(), "pool": pool.cidr, "node": node}
    if pool6 is not None:
        try:
            a6 = (ipam.auto_assign(store, node, hid, pool6, attrs) if wanted6 is None
                  else ipam.assign_ip(store, node, hid, pool6, wanted6, attrs))
        except BaseException:
            # nothing half-assigned: the IPv4 address goes too, when this ADD is what took it (a
            # repeated ADD of a running pod keeps what the pod holds)
            if not ipam.handle_known(first, hid):
                ipam.release(store, hid)
            raise
        result["ips"].append({"address": a6.host_prefix})
        if info:
            j6 = a6.to_json()
            result["labnet"].update(block6=j6.get("block"), borrowed6=j6.get("borrowed"), pool6=pool6.cidr)
    return convert(result, version_of(conf))


def _dispatch(env: Env, conf: dict[str, Any], store: Any,
              memo: settings.RequestMemo | None = None, info: bool = False) -> dict[str, Any] | None:
    version_of(conf)  # an unsupported cniVersion fails before anything is read or assigned
    node = settings.nodename(conf)
    if env.command == "ADD":
        return _add(env, conf, store, node, memo, info)
    if env.command == "DEL":
        ipam.release(store, handle_id(conf, env.container_id, env.ifname))
        return None
    if env.command == "CHECK":
        held = ipam.lookup(store, handle_id(conf, env.container_id, env.ifname), node)
        if not held:
            raise CniError(UNKNOWN_CONTAINER, f"IPAM holds no address for container {env.container_id} "
                           f"(handle {handle_id(conf, env.container_id, env.ifname)})")
        prev = normalize(conf.get("prevResult") or {})
        want = {str(ipaddress.ip_address(ip["address"].split("/")[0])) for ip in prev["ips"]}
        have = {str(ipaddress.ip_address(a.address)) for a in held}
        if want and not have <= want:  # earlier plugins in a chain may have added other addresses
            raise CniError(CHECK_FAILED, f"container {env.container_id}: IPAM holds {sorted(have)}, "
                           f"prevResult has {sorted(want)}")
        # ... and each address of prevResult in one of our pools must still be held
        nets = [ipaddress.ip_network(p.cidr) for p in settings.cluster(conf, store).pools]
        lost = sorted(w for w in want - have if any(ipaddress.ip_address(w) in n for n in nets))
        if lost:
            raise CniError(CHECK_FAILED, f"container {env.container_id}: IPAM no longer holds {', '.join(lost)} "
                           f"(prevResult has it; IPAM holds {sorted(have)})")
        return None
    if env.command == "GC":
        valid = {handle_id(conf, a.get("containerID", ""), a.get("ifname", "eth0"))
                 for a in conf.get("cni.dev/valid-attachments") or []}
        ipam.gc(store, conf["name"], valid, node)
        return None
    if env.command == "STATUS":
        _pool(conf, store)
        return None
    raise CniError(4, f"unsupported CNI_COMMAND {env.command}")


def main() -> None:
    run_plugin(handle)


if __name__ == "__main__":
    main()
