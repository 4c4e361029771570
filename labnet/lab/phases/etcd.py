"""Phase etcd: a CA per lab, then a real etcd member on each etcd node, TLS with client
certificates (as the seed); once healthy, the cluster settings are written to it."""

from __future__ import annotations

import shutil
from pathlib import Path

from labnet import nsexec, paths
from labnet.etcd.admin import with_store
from labnet.etcd.settings import write_cluster_config
from labnet.lab import processes
from labnet.lab.context import Context

ETCD_TLS_INSIDE = "/var/lib/labnet/etcd-tls"  # etcd's own certificates, as the etcd node sees them
ETCD_DATA_INSIDE = "/var/lib/labnet/etcd"
ETCD_LOG_INSIDE = "/var/log/labnet/etcd.log"


ETCD_NICE = -10  # every node's CNI and agent waits on it
ETCD_DATA_SIZE = "1g"  # a tmpfs limit, not an allocation: a 200-node lab's etcd uses ~100 MB


def _memory_backed(ctx: Context, node: str) -> None:
    """etcd's data directory on a tmpfs in the node's mount namespace (it goes with the node).
    etcd fsyncs its WAL on every write; on a host disk busy with a big lab's logs and state a
    single fsync took over a second, every read waited behind it, and CNI ADDs timed out. A
    lab's datastore need not outlive the lab. Where the mount is refused, the disk it is."""
    nsexec.run(ctx.runtime.ns(node), ["mount", "-t", "tmpfs", "-o", f"size={ETCD_DATA_SIZE},mode=0700",
                                      "labnet-etcd", ETCD_DATA_INSIDE], check=False)


def run(ctx: Context) -> None:
    from labnet.etcd import server
    from labnet.etcd.pki import ensure_pki

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
        _memory_backed(ctx, m.name)
        log = rt.host_path(m.name, ETCD_LOG_INSIDE)
        argv = server.etcd_argv(m, members, inside_pki, Path(ETCD_DATA_INSIDE))
        entry = processes.start(ctx.journal, rt.ns(m.name), m.name, "etcd", argv, log=log, env=server.etcd_env(),
                                nice=ETCD_NICE)
        logs[entry["pid"]] = log
    cfg = server.client_config(members, pki)
    via = members[0].name
    ctx.journal.info["etcd"] = {
        "endpoints": list(cfg.endpoints), "tls": pki is not None, "via": via,
        "ca": cfg.ca_file, "cert": cfg.cert_file, "key": cfg.key_file,
        "members": [m.name for m in members], "netns": rt.ns(via).netns,
    }
    ctx.journal.save()
    server.wait_healthy(cfg, timeout=30, netns=rt.ns(via).netns, pids=logs)
    with_store(ctx.journal.info, lambda store: write_cluster_config(store, ctx.topo.cluster_settings()))
