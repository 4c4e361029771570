"""The phases of `labnet up` after the underlay: etcd, CNI install, agents, pods, convergence.

Each phase records what it starts in the journal (lab.record_process), so `down`, `gc` and a
rolled-back `up` stop it by its recorded pid.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from labnet import paths
from labnet.errors import LabnetError
from labnet.etcd import keys
from labnet.etcd.store import EtcdConfig
from labnet.lab import Context, record_process, register_phase
from labnet.nsexec import spawn

ETCD_TLS_INSIDE = "/var/lib/labnet/etcd-tls"  # etcd's own certificates, as the etcd node sees them
ETCD_DATA_INSIDE = "/var/lib/labnet/etcd"
CNI_TLS_INSIDE = "/etc/cni/net.d/labnet-tls"
AGENT_CONFIG_INSIDE = "/var/lib/labnet/agent.json"


def admin_config(ctx_info: dict[str, Any]) -> EtcdConfig:
    """How the host-side CLI reaches the lab's etcd (run it inside `via`'s netns)."""
    e = ctx_info["etcd"]
    return EtcdConfig(endpoints=tuple(e["endpoints"]), ca_file=e.get("ca"), cert_file=e.get("cert"),
                      key_file=e.get("key"))


def phase_etcd(ctx: Context) -> None:
    from labnet.etcd import server
    from labnet.pki import ensure_pki

    c = ctx.topo.cluster
    if c is None:
        return
    rt, lab = ctx.runtime, ctx.topo.name
    members = [server.EtcdMember(n, str(ctx.topo.address_of(n))) for n in c.etcd.nodes]
    pki = None
    if c.etcd.tls:
        pki = ensure_pki(paths.lab_dir(lab) / "pki", lab, [(m.name, m.address) for m in members], list(c.nodes))
    logs: dict[int, Path] = {}
    for m in members:
        inside_pki = None
        if pki is not None:
            # etcd runs in the node's mount namespace: give it its certificates in the node's own
            # /var/lib/labnet, and point its flags at the paths it sees there.
            host_tls = rt.host_path(m.name, ETCD_TLS_INSIDE)
            host_tls.mkdir(mode=0o700, parents=True, exist_ok=True)
            wanted = [pki.ca_cert, pki.server.cert, pki.server.key, pki.peers[m.name].cert, pki.peers[m.name].key]
            for f in wanted:
                shutil.copy2(f, host_tls / f.name)

            def inside(p: Path) -> Path:
                return Path(ETCD_TLS_INSIDE) / p.name

            inside_pki = replace(
                pki, dir=Path(ETCD_TLS_INSIDE), ca_cert=inside(pki.ca_cert), ca_key=inside(pki.ca_key),
                server=replace(pki.server, cert=inside(pki.server.cert), key=inside(pki.server.key)),
                peers={m.name: replace(pki.peers[m.name], cert=inside(pki.peers[m.name].cert),
                                       key=inside(pki.peers[m.name].key))},
            )
        data = rt.host_path(m.name, ETCD_DATA_INSIDE)
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = rt.host_path(m.name, "/var/log/labnet/etcd.log")
        argv = server.etcd_argv(m, members, inside_pki, Path(ETCD_DATA_INSIDE))
        if not Path(server.ETCD_BIN).exists():
            raise LabnetError(f"node {m.name}: etcd binary {server.ETCD_BIN} not found; "
                              "install it with `apt-get install etcd-server`")
        pid = spawn(rt.ns(m.name), argv, log=log, env=server.etcd_env())  # pid recorded next
        record_process(ctx.journal, pid, m.name, "etcd")
        logs[pid] = log
    cfg = server.client_config(members, pki)
    via = members[0].name
    ctx.journal.info["etcd"] = {
        "endpoints": list(cfg.endpoints), "tls": pki is not None, "via": via,
        "ca": cfg.ca_file, "cert": cfg.cert_file, "key": cfg.key_file,
        "members": [m.name for m in members], "netns": rt.ns(via).netns,
    }
    ctx.journal.save()
    server.wait_healthy(cfg, timeout=30, netns=rt.ns(via).netns, pids=logs)
    with_store(ctx.journal.info, lambda store: store.put(keys.config("cluster"),
                                                         json.dumps(cluster_settings(ctx.topo))))


def cluster_settings(topo: Any) -> dict[str, Any]:
    """Lab-wide settings in etcd, as the seed's ConfigMap: the agents and plugins read them."""
    c = topo.cluster
    return {
        "pool": {"cidr": str(c.pool.cidr), "block_size": c.pool.block_size, "ipip": c.pool.ipip,
                 "vxlan": c.pool.vxlan, "nat_outgoing": c.pool.nat_outgoing},
        "mtu": c.mtu,
        "bgp": {"asn": c.bgp.asn, "mesh": c.bgp.mesh, "route_reflectors": list(c.bgp.route_reflectors),
                "peers": [p.model_dump(mode="json", exclude_none=True) for p in c.bgp.peers],
                "graceful_restart": c.bgp.graceful_restart, "hold_time": c.bgp.hold_time,
                "keepalive": c.bgp.keepalive},
        "node_asn": {n: topo.node_asn(n) for n in c.nodes},
    }


def with_store(info: dict[str, Any], fn: Any) -> Any:
    """Run fn(store) with the admin certificate, from inside the etcd node's network namespace."""
    from labnet.etcd.client import EtcdStore
    from labnet.etcd.netns import call_in_netns

    netns = info["etcd"]["netns"]

    def go() -> Any:
        store = EtcdStore(admin_config(info))
        try:
            return fn(store)
        finally:
            store.close()

    return call_in_netns(netns, go)


def phase_cni(ctx: Context) -> None:
    from labnet.cni.install import NodePaths, TlsFiles, install

    c = ctx.topo.cluster
    if c is None:
        return
    rt, info = ctx.runtime, ctx.journal.info
    pki_dir = paths.lab_dir(ctx.topo.name) / "pki"
    endpoints = ",".join(info["etcd"]["endpoints"])
    settings: dict[str, Any] = {}
    if c.mtu:
        settings["mtu"] = c.mtu
    for node in c.nodes:
        tls = None
        if info["etcd"]["tls"]:
            tls = TlsFiles(ca=pki_dir / "ca.pem", cert=pki_dir / f"node-{node}.pem",
                           key=pki_dir / f"node-{node}-key.pem")  # labnet.pki's names
        install(NodePaths(opt_cni_bin=rt.host_path(node, "/opt/cni/bin"),
                          etc_cni_netd=rt.host_path(node, "/etc/cni/net.d"),
                          var_lib_labnet=rt.host_path(node, "/var/lib/labnet")),
                nodename=node, etcd_endpoints=endpoints, tls=tls, settings=settings or None)


def phase_pods(ctx: Context) -> None:
    from labnet import pods

    if ctx.topo.cluster is None:
        return
    for pod, spec in ctx.topo.cluster.pods.items():
        pods.add_to(ctx.journal, ctx.runtime.ns(spec.node), spec.node, pod, labels=spec.labels or None)


def register() -> None:
    register_phase("etcd", phase_etcd, after="underlay")
    register_phase("cni", phase_cni, after="etcd")
    register_phase("pods", phase_pods, after="cni")


register()
