"""Phase cni: labnet's CNI plugins, conflist and TLS files into every node (as Calico's
install-cni). The CNI server that the shim talks to runs in the node's process (phase agents)."""

from __future__ import annotations

from labnet import paths
from labnet.lab.context import Context


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
