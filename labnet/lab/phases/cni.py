"""Phase cni: labnet's CNI plugins, conflist and TLS files into every node (as Calico's
install-cni), then each node's CNI server, waited for until it answers on its socket."""

from __future__ import annotations

import sys

from labnet import paths
from labnet.errors import LabnetError
from labnet.lab import processes
from labnet.lab.context import Context
from labnet.wait import poll

CNI_SERVER_LOG_INSIDE = "/var/log/labnet/cni-server.log"


def run(ctx: Context) -> None:
    from labnet.cni.install import NodePaths, TlsFiles, install

    c = ctx.topo.cluster
    if c is None:
        return
    rt, info = ctx.runtime, ctx.journal.info
    pki_dir = paths.lab_dir(ctx.topo.name) / "pki"
    endpoints = ",".join(info["etcd"]["endpoints"])
    settings = {"mtu": c.mtu} if c.mtu else None
    for node in c.nodes:
        tls = None
        if info["etcd"]["tls"]:
            tls = TlsFiles(ca=pki_dir / "ca.pem", cert=pki_dir / f"node-{node}.pem",
                           key=pki_dir / f"node-{node}-key.pem")  # labnet.etcd.pki's names
        install(NodePaths(opt_cni_bin=rt.host_path(node, "/opt/cni/bin"),
                          etc_cni_netd=rt.host_path(node, "/etc/cni/net.d"),
                          var_lib_labnet=rt.host_path(node, "/var/lib/labnet")),
                nodename=node, etcd_endpoints=endpoints, tls=tls, settings=settings)  # the shim: built once per source hash, for every lab
    _start_servers(ctx)


def _start_servers(ctx: Context) -> None:
    """Start labnet's CNI server in every node (the shim /opt/cni/bin/labnet talks to it; without
    it the shim execs the Python plugin) and wait until each answers on its socket."""
    from labnet.cni.server import DEFAULT_SOCKET, ping

    assert ctx.topo.cluster is not None
    rt, entries = ctx.runtime, {}
    for node in ctx.topo.cluster.nodes:
        argv = [sys.executable, "-m", "labnet.cni.server", "--socket", DEFAULT_SOCKET]
        entries[node] = processes.start(ctx.journal, rt.ns(node), node, "cni-server", argv,
                                        log=rt.host_path(node, CNI_SERVER_LOG_INSIDE))

    def probe() -> dict[str, str]:
        return {n: "answers" if ping(rt.host_path(n, DEFAULT_SOCKET), timeout=2)
                else ("starting" if processes.alive(e) else f"exited (see {CNI_SERVER_LOG_INSIDE})")
                for n, e in entries.items()}

    state = poll(probe, lambda st: all(v != "starting" for v in st.values()), timeout=60,
                 what="every node's CNI server to answer on " + DEFAULT_SOCKET)
    dead = {n: v for n, v in state.items() if v != "answers"}
    if dead:
        raise LabnetError(f"CNI server not running: {dead}")
