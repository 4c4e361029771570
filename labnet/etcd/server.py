"""Start, check and stop real etcd members (/usr/bin/etcd) inside lab nodes' namespaces.

Every member listens on https://<node address>:2379 (and on 127.0.0.1 inside its node) with
--client-cert-auth: etcd accepts only clients whose certificate the lab's CA signed, as in
the seed. Members of a cluster talk over :2380 with peer TLS, also mutually authenticated.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labnet.errors import LabnetError, WaitTimeout
from labnet.etcd.pki import Pki
from labnet.etcd.store import EtcdConfig
from labnet.nsexec import NodeNS, pid_alive, spawn
from labnet.wait import poll

# LABNET_ETCD_BIN: another etcd binary (tests point it at a missing file to check the error).
ETCD_BIN = os.environ.get("LABNET_ETCD_BIN", "/usr/bin/etcd")
CLIENT_PORT = 2379
PEER_PORT = 2380

# etcd 3.4 refuses to start on architectures other than these unless ETCD_UNSUPPORTED_ARCH
# names the running one (x86_64 here: nothing needed).
_SUPPORTED_GOARCH = {"amd64", "ppc64le"}
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "s390x": "s390x",
           "ppc64le": "ppc64le", "riscv64": "riscv64"}


@dataclass(frozen=True)
class EtcdMember:
    name: str  # the node it runs on
    address: str  # that node's address, reachable from every other node
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT

    def client_url(self, tls: bool = True) -> str:
        return f"{'https' if tls else 'http'}://{_host(self.address)}:{self.client_port}"

    def peer_url(self, tls: bool = True) -> str:
        return f"{'https' if tls else 'http'}://{_host(self.address)}:{self.peer_port}"


class EtcdStartError(LabnetError):
    """A member could not be started. `pids` are the members that were started (and stopped again)."""

    def __init__(self, message: str, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        super().__init__(message)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def etcd_env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    goarch = _GOARCH.get(platform.machine(), platform.machine())
    if goarch not in _SUPPORTED_GOARCH:
        env["ETCD_UNSUPPORTED_ARCH"] = goarch
    return env


def etcd_argv(member: EtcdMember, cluster: Sequence[EtcdMember], pki: Pki | None, data_dir: Path,
              *, token: str | None = None, etcd_bin: str = ETCD_BIN) -> list[str]:
    """The etcd command line for `member` of `cluster` (TLS when pki is given)."""
    if member not in cluster:
        raise LabnetError(f"etcd member {member.name} is not in its cluster {[m.name for m in cluster]}")
    tls = pki is not None
    listen = [member.client_url(tls)]
    if member.address != "127.0.0.1":  # in-node clients can use localhost (a SAN of the cert)
        listen.append(f"{'https' if tls else 'http'}://127.0.0.1:{member.client_port}")
    initial = ",".join(f"{m.name}={m.peer_url(tls)}" for m in cluster)
    token = token or "labnet-" + hashlib.sha1(initial.encode()).hexdigest()[:12]
    argv = [
        etcd_bin,
        f"--name={member.name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={','.join(listen)}",
        f"--advertise-client-urls={member.client_url(tls)}",
        f"--listen-peer-urls={member.peer_url(tls)}",
        f"--initial-advertise-peer-urls={member.peer_url(tls)}",
        f"--initial-cluster={initial}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={token}",
        "--logger=zap",
        "--log-outputs=stderr",
    ]
    if len(cluster) == 1:
        # A lone member elects itself after its first election timeout (0.4 s of every lab's start
        # at etcd's 1 s default) and can never lose an election: short ticks cost nothing.
        argv += ["--heartbeat-interval=20", "--election-timeout=200"]
    if pki is not None:
        peer = pki.peers.get(member.name)
        if peer is None:
            raise LabnetError(f"etcd member {member.name}: no peer certificate in {pki.dir} "
                              f"(have {sorted(pki.peers)}); pass it to ensure_pki's etcd_members")
        argv += [
            f"--cert-file={pki.server.cert}", f"--key-file={pki.server.key}",
            "--client-cert-auth", f"--trusted-ca-file={pki.ca_cert}",
            f"--peer-cert-file={peer.cert}", f"--peer-key-file={peer.key}",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={pki.ca_cert}",
        ]
    return argv


def require_binary(node: str, etcd_bin: str = ETCD_BIN) -> None:
    """Fail, naming the Debian package, when the etcd binary is missing (before anything starts)."""
    if not (os.path.isfile(etcd_bin) and os.access(etcd_bin, os.X_OK)):
        raise LabnetError(f"node {node}: etcd binary {etcd_bin} not found; "
                          "install it with `apt-get install etcd-server`")


def start_member(ns: NodeNS, member: EtcdMember, cluster: list[EtcdMember], pki: Pki | None,
                 data_dir: Path, log: Path, *, etcd_bin: str = ETCD_BIN) -> int:
    """Spawn one etcd member inside `ns`; return its pid (it is not healthy yet: see wait_healthy)."""
    require_binary(ns.name, etcd_bin)
    argv = etcd_argv(member, cluster, pki, data_dir, etcd_bin=etcd_bin)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(data_dir, 0o700)  # etcd 3.4 insists on 0700
    return spawn(ns, argv, log=log, env=etcd_env())


def client_config(members: Sequence[EtcdMember], pki: Pki | None, node: str | None = None,
                  timeout: float = 5.0) -> EtcdConfig:
    """How a client reaches the cluster: the admin cert (node=None) or `node`'s cert."""
    eps = tuple(m.client_url(pki is not None) for m in members)
    if pki is None:
        return EtcdConfig(endpoints=eps, timeout=timeout)
    pair = pki.client(node)
    return EtcdConfig(endpoints=eps, ca_file=str(pki.ca_cert), cert_file=str(pair.cert),
                      key_file=str(pair.key), timeout=timeout)


def _log_tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n    ".join(text[-lines:])


def wait_healthy(config: EtcdConfig, timeout: float, *, netns: str | None = None,
                 pids: Mapping[int, Path] | None = None) -> None:
    """Poll every endpoint's /health (with the config's client certificate) until all say true.

    netns: the network namespace to ask from (the etcd is reachable only inside the lab).
    pids: member pid -> its log; a member that exits fails the wait at once, with its log.
    """
    from labnet.etcd.client import EtcdStore  # the client stack is loaded only when needed

    store = EtcdStore(config)
    dead: dict[int, Path] = {}

    def probe() -> dict[str, tuple[bool, str]]:
        for pid, log in (pids or {}).items():
            if not pid_alive(pid):
                dead[pid] = log
        if dead:
            return {}
        if netns is None:
            return store.health()
        from labnet.etcd.netns import call_in_netns

        return call_in_netns(netns, store.health)

    def ok(h: dict[str, tuple[bool, str]]) -> bool:
        return bool(dead) or (bool(h) and all(v[0] for v in h.values()))

    try:
        poll(probe, ok, timeout=timeout, what=f"etcd healthy at {', '.join(config.endpoints)}")
    finally:
        store.close()
    if dead:
        detail = "; ".join(f"pid {p} exited, log {log}:\n    {_log_tail(log)}" for p, log in dead.items())
        raise LabnetError(f"etcd member(s) died while starting: {detail}")


def start_cluster(
    nodes: Mapping[str, NodeNS], cluster: list[EtcdMember], pki: Pki | None,
    data_dirs: Mapping[str, Path], logs: Mapping[str, Path], *, timeout: float = 30.0,
    etcd_bin: str = ETCD_BIN,
) -> dict[str, int]:
    """Start every member, wait until all are healthy; return member name -> pid.

    Nothing half-started: on any failure the members already started are stopped and
    EtcdStartError carries their pids (for the journal).
    """
    started: dict[str, int] = {}
    try:
        for m in cluster:
            if m.name not in nodes:
                raise LabnetError(f"etcd member {m.name}: no namespaces given for its node")
            started[m.name] = start_member(nodes[m.name], m, cluster, pki, data_dirs[m.name], logs[m.name],
                                           etcd_bin=etcd_bin)
        first = nodes[cluster[0].name]
        wait_healthy(client_config(cluster, pki), timeout, netns=first.netns,
                     pids={started[m.name]: logs[m.name] for m in cluster})
    except (LabnetError, OSError, KeyError) as exc:
        for pid in started.values():
            stop(pid)
        raise EtcdStartError(f"etcd cluster {[m.name for m in cluster]} did not start: {exc}", started) from exc
    return started


def stop(pid: int, timeout: float = 10.0) -> None:
    """Stop one member by its recorded pid: SIGTERM, wait for it to exit, then SIGKILL."""
    if not pid_alive(pid):
        _reap(pid)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        poll(lambda: _gone(pid), timeout=timeout, what=f"etcd pid {pid} to exit after SIGTERM")
    except WaitTimeout:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        poll(lambda: _gone(pid), timeout=5.0, what=f"etcd pid {pid} to exit after SIGKILL")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: do not leave a zombie
    except ChildProcessError:
        pass


def _gone(pid: int) -> bool:
    _reap(pid)
    return not pid_alive(pid)


def remove_data(data_dir: Path) -> None:
    """Delete a member's data directory (only after its process is stopped)."""
    shutil.rmtree(data_dir, ignore_errors=True)
