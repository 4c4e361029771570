"""A lab node for CNI tests, built the way the lab runtime builds one.

net namespace (from netns_factory) + mount and UTS namespaces bound on files in a private
bind-mounted directory; inside, host directories are bind-mounted on /etc/cni/net.d,
/opt/cni/bin, /var/run and /var/lib/labnet. The node gets an uplink veth to a "gateway"
namespace (address + default route: proxy-ARP for 169.254.1.1 needs a route there), and a
real etcd listening on 127.0.0.1:2379 inside its own netns (like the seed's ubuntu-1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from labnet import nsexec
from labnet.cni.install import NodePaths, install
from labnet.etcd import keys
from labnet.etcd.client import EtcdStore
from labnet.etcd.netns import call_in_netns
from labnet.etcd.store import EtcdConfig
from labnet.nsexec import NodeNS, pid_alive
from labnet.wait import poll

T = TypeVar("T")
ETCD_URL = "http://127.0.0.1:2379"
SERVER_SOCKET = "/var/run/labnet/cni.sock"
NODE_IP = "10.99.0.2"
GW_IP = "10.99.0.1"


def sh(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


@dataclass
class CniNode:
    name: str
    ns: NodeNS  # net + mount + UTS, as the lab runtime hands it out
    net: NodeNS  # the network namespace alone
    gw: NodeNS
    paths: NodePaths
    base: Path
    mounts: list[Path] = field(default_factory=list)

    def store_call(self, fn: Callable[[EtcdStore], T]) -> T:
        """Run fn(store) against the node's etcd, from a thread inside the node's netns."""
        def go() -> T:
            with EtcdStore(EtcdConfig((ETCD_URL,))) as store:
                return fn(store)
        return call_in_netns(self.ns.netns, go)

    def conf(self, **over: Any) -> dict[str, Any]:
        """The installed conflist's plugin entry as one network config (for direct plugin runs)."""
        doc = json.loads((self.paths.etc_cni_netd / "10-labnet.conflist").read_text())
        plugin = {**doc["plugins"][0], "name": doc["name"], "cniVersion": doc["cniVersion"]}
        plugin.update(over)
        return plugin

    def cleanup(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", str(m)], capture_output=True)


def make_node(factory: Any, tmp_path: Path, name: str = "node-a", pool: str = "10.100.0.0/16",
              block_size: int = 26, settings: dict[str, Any] | None = None, etcd: bool = True,
              pool6: str | None = None) -> CniNode:
    """A node with etcd and the plugins installed; `pool6`: a dual-stack cluster (IPv6 pool
    in /122 blocks beside the IPv4 one)."""
    net = factory(name)
    gw = factory(f"{name}-gw")
    base = tmp_path / name
    nsdir = base / "ns"
    nsdir.mkdir(parents=True)
    node_paths = NodePaths(base / "opt-cni-bin", base / "etc-cni-net.d", base / "var-lib-labnet")
    run_dir = base / "run"
    for d in (node_paths.opt_cni_bin, node_paths.etc_cni_netd, node_paths.var_lib_labnet, run_dir):
        d.mkdir(parents=True)
    node = CniNode(name, NodeNS(name, net.netns, str(nsdir / "mnt"), str(nsdir / "uts")), net, gw, node_paths, base)
    try:
        sh(["mount", "--bind", str(nsdir), str(nsdir)])
        node.mounts.append(nsdir)
        sh(["mount", "--make-private", str(nsdir)])
        for f in ("mnt", "uts"):
            (nsdir / f).touch()
        binds = [f"mount --bind {src} {dst}" for src, dst in (
            (node_paths.etc_cni_netd, "/etc/cni/net.d"), (node_paths.opt_cni_bin, "/opt/cni/bin"),
            (node_paths.var_lib_labnet, "/var/lib/labnet"), (run_dir, "/var/run"))]
        script = "; ".join(["set -e", "mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/labnet",
                            f"hostname {name}", *binds, "sysctl -qw net.ipv4.ip_forward=1"])
        sh(["nsenter", f"--net={net.netns}", "unshare", f"--mount={nsdir / 'mnt'}", f"--uts={nsdir / 'uts'}",
            "--propagation", "private", "sh", "-c", script])
        node.mounts += [nsdir / "uts", nsdir / "mnt"]
        # uplink: node up0 10.99.0.2/24 <-> gw gw0 10.99.0.1/24, default route via the gw
        gw_name = Path(gw.netns).name
        nsexec.run(net, ["ip", "link", "add", "up0", "type", "veth", "peer", "name", "gw0", "netns", gw_name])
        nsexec.run(net, ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "up0"])
        nsexec.run(net, ["ip", "link", "set", "up0", "up"])
        nsexec.run(gw, ["ip", "addr", "add", f"{GW_IP}/24", "dev", "gw0"])
        nsexec.run(gw, ["ip", "link", "set", "gw0", "up"])
        nsexec.run(net, ["ip", "route", "add", "default", "via", GW_IP])
        if etcd:
            start_etcd(factory, net, base / "etcd")
            cluster: dict[str, Any] = {"pool": {"cidr": pool, "block_size": block_size, "ipip": "always",
                                                "nat_outgoing": True}, "asn": 64512}
            if pool6 is not None:
                cluster["pool6"] = {"cidr": pool6, "vxlan": "always"}
            node.store_call(lambda s: s.put(keys.config("cluster"), json.dumps(cluster)))
        install(node_paths, name, ETCD_URL, None, settings)
    except BaseException:
        node.cleanup()
        raise
    return node


def start_etcd(factory: Any, net: NodeNS, data: Path) -> int:
    pid = factory.track_pid(nsexec.spawn(net, [
        "/usr/bin/etcd", "--name", "default", "--data-dir", str(data),
        "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
        "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", "default=http://127.0.0.1:2380", "--logger", "zap", "--log-level", "error",
    ], log=data.parent / "etcd.log"))
    poll(lambda: nsexec.run(net, ["curl", "-s", "-m", "1", f"{ETCD_URL}/health"], check=False).stdout,
         lambda out: '"health":"true"' in out, timeout=20, what=f"etcd health in {net.name}")
    return pid


def cni_env(command: str, cid: str = "", netns: str = "", ifname: str = "eth0", pod: str = "",
            namespace: str = "default") -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    if cid:
        env["CNI_CONTAINERID"] = cid
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if pod:
        env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
    return env


def run_bin(node: CniNode, binary: str, env: dict[str, str], stdin: str | dict[str, Any]
            ) -> tuple[int, dict[str, Any] | None, str]:
    """Run /opt/cni/bin/<binary> inside the node as a runtime does: env + config on stdin."""
    data = stdin if isinstance(stdin, str) else json.dumps(stdin)
    proc = nsexec.run(node.ns, [f"/opt/cni/bin/{binary}"], input=data, env=env, check=False)
    out = proc.stdout.strip()
    try:
        doc = json.loads(out) if out else None
    except ValueError as exc:
        raise AssertionError(f"{binary} {env.get('CNI_COMMAND')} printed non-JSON on stdout: {out!r}") from exc
    return proc.returncode, doc, proc.stderr


def pod_netns(node: CniNode, name: str) -> str:
    nsexec.run(node.ns, ["ip", "netns", "add", name])
    return f"/var/run/netns/{name}"


def start_cni_server(factory: Any, node: CniNode) -> int:
    """Start labnet's CNI server inside the node (as phase_cni does) and wait until it answers."""
    from labnet.cni.server import ping

    log = node.base / "cni-server.log"
    pid = factory.track_pid(nsexec.spawn(node.ns, [sys.executable, "-m", "labnet.cni.server",
                                                   "--socket", SERVER_SOCKET], log=log))
    sock = node.base / "run" / "labnet" / "cni.sock"
    state = poll(lambda: {"alive": pid_alive(pid), "answers": ping(sock, timeout=2)},
                 lambda st: st["answers"] or not st["alive"], timeout=60,
                 what=f"node {node.name}: CNI server (pid {pid}) to answer on {sock}")
    if not state["answers"]:
        raise AssertionError(f"node {node.name}: CNI server pid {pid} exited; log:\n{log.read_text()[-2000:]}")
    return pid
