"""The phases of `labnet up` after the underlay: etcd, CNI install, agents, pods, convergence.

Each phase records what it starts in the journal (lab.record_process), so `down`, `gc` and a
rolled-back `up` stop it by its recorded pid.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from labnet import paths
from labnet.errors import LabnetError
from labnet.etcd.settings import write_cluster_config
from labnet.etcd.store import EtcdConfig
from labnet.lab import Context, record_process, register_phase
from labnet.nsexec import spawn
from labnet.wait import poll

ETCD_TLS_INSIDE = "/var/lib/labnet/etcd-tls"  # etcd's own certificates, as the etcd node sees them
ETCD_DATA_INSIDE = "/var/lib/labnet/etcd"
CNI_TLS_INSIDE = "/etc/cni/net.d/labnet-tls"
AGENT_CONFIG_INSIDE = "/var/lib/labnet/agent.json"


def admin_config(ctx_info: dict[str, Any]) -> EtcdConfig:
    """How the host-side CLI reaches the lab's etcd: the admin certificate, and connections
    opened from inside the etcd node's network namespace (the only place etcd is reachable)."""
    e = ctx_info["etcd"]
    return EtcdConfig(endpoints=tuple(e["endpoints"]), ca_file=e.get("ca"), cert_file=e.get("cert"),
                      key_file=e.get("key"), extra={"netns": e["netns"]})


def phase_etcd(ctx: Context) -> None:
    from labnet.etcd import server
    from labnet.pki import ensure_pki

    c = ctx.topo.cluster
    if c is None:
        return
    rt, lab = ctx.runtime, ctx.topo.name
    members = [server.EtcdMember(n, str(ctx.topo.address_of(n))) for n in c.etcd.nodes]
    for m in members:  # before any member starts: nothing half-way
        server.require_binary(m.name)
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
            peer = pki.peers[m.name]
            for f in (pki.ca_cert, pki.server.cert, pki.server.key, peer.cert, peer.key):
                shutil.copy2(f, host_tls / f.name)
            inside_pki = pki.moved(ETCD_TLS_INSIDE)
        data = rt.host_path(m.name, ETCD_DATA_INSIDE)
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = rt.host_path(m.name, "/var/log/labnet/etcd.log")
        argv = server.etcd_argv(m, members, inside_pki, Path(ETCD_DATA_INSIDE))
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
    with_store(ctx.journal.info, lambda store: write_cluster_config(store, cluster_settings(ctx.topo)))


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
    """Run fn(store) with the lab's admin store."""
    from labnet.etcd.client import EtcdStore

    store = EtcdStore(admin_config(info))
    try:
        return fn(store)
    finally:
        store.close()


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
                nodename=node, etcd_endpoints=endpoints, tls=tls, settings=settings or None,
                shim_cache=paths.lab_dir(ctx.topo.name) / "cni-shim")
    _start_cni_servers(ctx)


# --- CNI fast path (owner: labnet/cni) -------------------------------------------------------
def _start_cni_servers(ctx: Context) -> None:
    """Start labnet's CNI server in every node (the shim /opt/cni/bin/labnet talks to it; without
    it the shim execs the Python plugin) and wait until each answers on its socket."""
    from labnet.cni.server import DEFAULT_SOCKET, ping
    from labnet.nsexec import pid_alive

    assert ctx.topo.cluster is not None
    rt, pids = ctx.runtime, {}
    for node in ctx.topo.cluster.nodes:
        argv = [sys.executable, "-m", "labnet.cni.server", "--socket", DEFAULT_SOCKET]
        pid = spawn(rt.ns(node), argv, log=rt.host_path(node, "/var/log/labnet/cni-server.log"))
        record_process(ctx.journal, pid, node, "cni-server")
        pids[node] = pid

    def probe() -> dict[str, str]:
        return {n: "answers" if ping(rt.host_path(n, DEFAULT_SOCKET), timeout=2)
                else ("starting" if pid_alive(pid) else "exited (see /var/log/labnet/cni-server.log)")
                for n, pid in pids.items()}

    state = poll(probe, lambda st: all(v != "starting" for v in st.values()), timeout=60,
                 what="every node's CNI server to answer on " + DEFAULT_SOCKET)
    dead = {n: v for n, v in state.items() if v != "answers"}
    if dead:
        raise LabnetError(f"CNI server not running: {dead}")
# --- end CNI fast path ------------------------------------------------------------------------


def phase_pods(ctx: Context) -> None:
    from labnet import pods
    from labnet.policy.enforce import apply_all

    if ctx.topo.cluster is None:
        return
    for pod, spec in ctx.topo.cluster.pods.items():
        pods.add_to(ctx.journal, ctx.runtime.ns(spec.node), spec.node, pod, labels=spec.labels or None)
    apply_all(ctx.journal.info, ctx.runtime.ns)  # the topology's policy, on the pods' host veths


def phase_agents(ctx: Context) -> None:
    """Start labnet-agent (under its supervisor) in every node, as calico-node's DaemonSet."""
    from labnet.agent.config import AgentConfig, EtcdSettings

    c = ctx.topo.cluster
    if c is None:
        return
    rt, info = ctx.runtime, ctx.journal.info
    tls = info["etcd"]["tls"]
    for node, spec in c.nodes.items():
        etcd = EtcdSettings(
            endpoints=list(info["etcd"]["endpoints"]),
            ca_file=f"{CNI_TLS_INSIDE}/etcd-ca" if tls else None,
            cert_file=f"{CNI_TLS_INSIDE}/etcd-cert" if tls else None,
            key_file=f"{CNI_TLS_INSIDE}/etcd-key" if tls else None,
        )
        cfg = AgentConfig(etcd=etcd, bgp_address=spec.bgp_address, log_file="/var/log/labnet/agent.log")
        cfg.save(rt.host_path(node, AGENT_CONFIG_INSIDE))
        argv = [sys.executable, "-m", "labnet.agent.main", "supervise", "--config", AGENT_CONFIG_INSIDE]
        pid = spawn(rt.ns(node), argv, log=rt.host_path(node, "/var/log/labnet/agent-supervisor.log"))
        record_process(ctx.journal, pid, node, "agent")
    # Pods come next: each agent must have claimed its block and put the block's first address
    # on its tunnel first (the seed's tunl0 10.100.163.128, net-test .129).
    poll(lambda: {n: _agent_brief(ctx, n) for n in c.nodes}, lambda st: all(s.get("tunnel_ready") for s in st.values()),
         timeout=_scaled(c), what="every agent to register and claim its block and tunnel address")


def _agent_brief(ctx: Context, node: str) -> dict[str, Any]:
    from labnet.agent.status import query_status

    try:
        st = query_status(ctx.runtime.ns(node), timeout=5)
    except Exception as exc:  # not up yet: the poll shows why
        return {"error": str(exc)[:200]}
    tun = st.get("tunnel") or {}
    encap = ctx.topo.cluster.pool if ctx.topo.cluster else None
    needs_tunnel = encap is not None and (encap.ipip != "never" or encap.vxlan != "never")
    peers = st.get("peers", [])
    return {
        "tunnel_ready": bool(st.get("blocks")) and (bool(tun.get("address")) or not needs_tunnel),
        "blocks": st.get("blocks"), "tunnel": tun.get("address"),
        "peers": {p["peer_address"]: p.get("bgp_state") for p in peers},
        "routes": st.get("routes", []), "problems": st.get("problems", []),
    }


def phase_converge(ctx: Context) -> None:
    """`up` returns once every BGP session is Established and every route is in place."""
    c = ctx.topo.cluster
    if c is None:
        return

    def probe() -> dict[str, Any]:
        return {n: _agent_brief(ctx, n) for n in c.nodes}

    expect_peers = bool(c.bgp.peers) or (len(c.nodes) > 1 and (c.bgp.mesh == "full" or bool(c.bgp.route_reflectors)))

    def converged(st: dict[str, Any]) -> bool:
        if any("error" in s or not s.get("blocks") for s in st.values()):
            return False
        for n, s in st.items():
            established = all(v == "Established" for v in s["peers"].values())
            if not established or (expect_peers and not s["peers"]):
                return False
            have = " ".join(map(str, s["routes"]))
            if any(b not in have for other, o in st.items() if other != n for b in o["blocks"]):
                return False
        return True

    poll(probe, converged, timeout=30 + _scaled(c),
         what="BGP sessions Established and every node's blocks routed everywhere")


def _scaled(cluster: Any) -> float:
    """Deadlines grow with the lab: 50 agents start one after another on a 2-core machine."""
    return 60.0 + 2.0 * len(cluster.nodes)


def register() -> None:
    from labnet.routers import phase_routers

    register_phase("routers", phase_routers, after="underlay")
    register_phase("etcd", phase_etcd, after="routers")
    register_phase("cni", phase_cni, after="etcd")
    register_phase("agents", phase_agents, after="cni")
    register_phase("pods", phase_pods, after="agents")
    register_phase("converge", phase_converge, after="pods")


register()
