"""The docker runtime: the same topology files, with every machine a real container.

Each router, host and cluster node is a container of the node image (labnet.runtime.image) on
labnet's own dockerd (labnet.runtime.dockerd), with `network_mode: none`, NET_ADMIN,
SYS_ADMIN and NET_RAW, its hostname, and labels `labnet.lab`/`labnet.node` by which `down`
and `gc` find it even without a journal. LANs, veth links, addresses and routes are exactly
the netns runtime's: the container's network namespace is bound at /run/netns/lnet-<lab>.<node>
and its mount and UTS namespaces under /run/labnet/<lab>/, so `ns()`, `labnet exec`, the
later phases and the checks reach a container the same way they reach a netns machine.

Choices, and why:
- a PID namespace of its own (not pid_mode host): a node sees only its own processes. Its
  namespace is bound under /run/labnet/<lab>/ with the others, and processes labnet starts
  in a node (etcd, agents, CNI ADDs, `labnet exec`) enter all of them from the host through
  labnet-nsinit (their /proc/self then resolves in the container's /proc); the journal records
  their pids as this host sees them (labnet.nsexec.spawn). docker-init is the container's pid 1.
- no masked or read-only /proc paths (the CLI's `--security-opt systempaths=unconfined`): the
  per-interface sysctls the CNI plugin and agent set (proxy_arp, forwarding...) are writes to
  /proc/sys in the container's mount namespace. Not `--privileged`: it fails here (no
  CAP_SYS_RESOURCE), and the three capabilities are all a node needs.
- /dev/net/tun: the userspace IPIP tunl0 is a TUN device.
- The image's python3 runs labnet's code in a machine; the image also links this host's
  sys.executable path to it, so phases that start `sys.executable -m labnet...` in a node
  (the netns way) work unchanged.
- The node's private dirs (/etc/cni/net.d, /opt/cni/bin, /run, /var/lib/labnet,
  /var/log/labnet) are bind mounts of the lab's state dir, so `host_path` is the netns one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from labnet import paths
from labnet.errors import LabnetError
from labnet.nsexec import NodeNS, proc_starttime
from labnet.runtime.base import NODE_DIRS, MachineSpec, Recorder
from labnet.runtime.dockerd import SOCKET, DockerdHandle, ensure_dockerd, ping, running_pid, stop_dockerd
from labnet.runtime.netns import NetnsRuntime, _sh, prepare_netns_dir
from labnet.wait import poll

CAPS = ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]
LABEL_LAB = "labnet.lab"
LABEL_NODE = "labnet.node"
NODE_PYTHON = "/usr/bin/python3"  # the image's interpreter; labnet is installed for it


def container_name(lab: str, machine: str) -> str:
    return f"{paths.lab_prefix(lab)}.{machine}"


def _client() -> Any:
    from labnet.runtime.dockerd import client

    return client()


class DockerRuntime(NetnsRuntime):
    name = "docker"
    # What runs labnet's Python code inside a machine: the image's python3. Code that uses this
    # host's sys.executable there works too: the image links that path to python3 (labnet.runtime.image).
    python = NODE_PYTHON

    def __init__(self, lab: str, journal: Recorder) -> None:
        super().__init__(lab, journal)
        self._docker: Any = None

    def ns(self, machine: str) -> NodeNS:
        return replace(super().ns(machine), python=self.python)

    @property
    def docker(self) -> Any:
        if self._docker is None:
            ensure_dockerd()
            self._docker = _client()
        return self._docker

    # -- build ------------------------------------------------------------------------
    def prepare(self) -> None:
        from labnet.runtime.image import ensure_image

        # A first build takes minutes (debootstrap): say so rather than sit silent in "underlay".
        ref = ensure_image(self.docker, out=sys.stderr)
        self.image = ref.tag
        self.journal.info["docker"] = {"image": ref.tag, "image_id": ref.id, "image_built": ref.built,
                                       "image_seconds": ref.seconds, "socket": str(SOCKET)}
        self.journal.save()
        super().prepare()

    def add_machines(self, machines: list[MachineSpec]) -> None:
        # Journal first (one writer), then create the containers side by side: a docker create +
        # start is ~0.3 s of waiting on dockerd, mostly not CPU.
        entries = {}
        for m in machines:
            entries[m.name] = self.journal.record("container", name=container_name(self.lab, m.name), node=m.name)
        with ThreadPoolExecutor(max_workers=8) as pool:
            started = dict(zip([m.name for m in machines], pool.map(self._create, machines), strict=True))
        for m in machines:
            cid, pid = started[m.name]
            self.journal.update(entries[m.name], id=cid, pid=pid)
            self._bind_namespaces(m.name, pid)

    def _create(self, m: MachineSpec) -> tuple[str, int]:
        ndir = paths.node_dir(self.lab, m.name)
        volumes = {}
        for sub, inside in NODE_DIRS.items():
            (ndir / sub).mkdir(parents=True, exist_ok=True)
            # /var/run is a symlink to /run in the image: mount on the real directory
            volumes[str(ndir / sub)] = {"bind": "/run" if inside == "/var/run" else inside, "mode": "rw"}
        sysctls = {"net.ipv4.ip_forward": "1" if m.forward else "0"}
        if not m.ipv6:
            sysctls.update({"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
        else:  # said, not assumed: dockerd turns IPv6 off in containers of networks without it
            sysctls.update({"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                            "net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
            if m.forward:
                sysctls["net.ipv6.conf.all.forwarding"] = "1"
        api = self.docker.api
        host_config = api.create_host_config(
            network_mode="none", init=True, cap_add=CAPS, devices=["/dev/net/tun:/dev/net/tun:rwm"],
            sysctls=sysctls, binds={src: {"bind": v["bind"], "mode": v["mode"]} for src, v in volumes.items()},
        )
        # What `--security-opt systempaths=unconfined` does in the docker CLI (the SDK has no flag).
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
        name = container_name(self.lab, m.name)
        import docker.errors

        try:
            created = api.create_container(
                self.image, ["sleep", "infinity"], name=name, hostname=m.name, host_config=host_config,
                volumes=[v["bind"] for v in volumes.values()],
                labels={LABEL_LAB: self.lab, LABEL_NODE: m.name, "labnet.kind": m.kind},
            )
            api.start(created["Id"])
            c = self.docker.containers.get(created["Id"])
        except docker.errors.APIError as exc:
            raise LabnetError(f"{m.kind} {m.name}: creating container {name} from {self.image} failed: "
                              f"{exc.explanation or exc}") from exc
        c.reload()
        pid = int(c.attrs["State"]["Pid"])
        if not pid:
            raise LabnetError(f"container {c.name} for {m.kind} {m.name} is not running: "
                              f"state {c.attrs['State'].get('Status')}, {c.logs(tail=20).decode(errors='replace')}")
        return c.id, pid

    def _bind_namespaces(self, machine: str, pid: int) -> None:
        """Bind the container's namespaces where the netns runtime keeps a machine's."""
        prepare_netns_dir()
        targets = [("netns", paths.NETNS_DIR / self.netns_name(machine), "net"),
                   ("nsfile", self.run_dir / f"{machine}.mnt", "mnt"),
                   ("nsfile", self.run_dir / f"{machine}.uts", "uts"),
                   ("nsfile", self.run_dir / f"{machine}.pid", "pid")]
        for kind, target, ns in targets:
            if kind == "netns":
                self.journal.record("netns", name=target.name)
            else:
                self.journal.record("nsfile", path=str(target))
            target.touch()
            _sh(["mount", "--bind", f"/proc/{pid}/ns/{ns}", str(target)], f"{machine}: bind the container's {ns} ns")

    # -- teardown ---------------------------------------------------------------------
    def teardown(self) -> list[str]:
        problems = super().teardown()  # walks the journal: unbinds namespaces, removes containers
        try:
            left = remove_lab_containers(self.lab, start=bool(self.journal.of_kind("container")))
        except Exception as exc:
            return [*problems, f"lab {self.lab}: removing its containers by label: {exc}"]
        known = {e["name"] for e in self.journal.of_kind("container")}
        problems += [f"lab {self.lab}: container {n} was still there (removed by label)" for n in left if n not in known]
        self._docker = None  # release() may stop the engine this client talks to
        return problems

    @classmethod
    def release(cls) -> str | None:
        """labnet's dockerd, once no lab container is left (any lab's: one whose journal is gone
        still counts until gc removes it)."""
        pid = running_pid()
        if pid is None or lab_containers(_client()):
            return None
        stop_dockerd(DockerdHandle(pid, proc_starttime(pid), SOCKET, started=False))
        return f"labnet's dockerd (pid {pid}): no docker lab is left"

    @classmethod
    def shared(cls) -> str | None:
        pid = running_pid()
        return None if pid is None else (f"labnet's dockerd: running (pid {pid}, {SOCKET}); it stops with "
                                         "the last docker lab's `labnet down`, or with `labnet gc`")

    def _undo(self, e: dict[str, Any]) -> None:
        if e["kind"] != "container":
            super()._undo(e)
            return
        import docker.errors

        try:
            self.docker.containers.get(e["name"]).remove(force=True)
        except docker.errors.NotFound:
            pass
        self._wait_gone(e["name"])

    @classmethod
    def remove_unjournaled(cls, lab: str) -> bool:
        return bool(remove_lab_containers(lab))

    @classmethod
    def sweep_orphans(cls, is_orphan: Callable[[str], bool]) -> list[str]:
        return orphan_containers(is_orphan)

    def _wait_gone(self, name: str) -> None:
        import docker.errors

        def exists() -> bool:
            try:
                self.docker.containers.get(name)
                return True
            except docker.errors.NotFound:
                return False

        poll(exists, lambda e: not e, timeout=30, what=f"container {name} of lab {self.lab} to be removed")


def lab_containers(client: Any, lab: str | None = None) -> list[Any]:
    flt = f"{LABEL_LAB}={lab}" if lab else LABEL_LAB
    return list(client.containers.list(all=True, filters={"label": flt}))


def remove_lab_containers(lab: str, start: bool = False) -> list[str]:
    """Remove every container labelled with `lab` (used without a journal too); their names.

    Without `start`, a labnet dockerd that is not running is left alone: it holds no running
    containers then, and `down`/`gc` of netns labs must not start it.
    """
    if not start and not ping():
        return []
    if start:
        ensure_dockerd()
    client = _client()
    names = []
    for c in lab_containers(client, lab):
        names.append(c.name)
        with contextlib.suppress(Exception):
            c.remove(force=True)
    return names


def orphan_containers(is_orphan: Callable[[str], bool]) -> list[str]:
    """For `labnet gc`: remove containers of labs that have no journal; describe each.

    The journal is looked for at removal time, not listed beforehand: a lab being built right
    now has its journal (and holds its lock) before its first container, so it is never taken
    for an orphan.
    """
    if not ping():
        return []
    client = _client()
    removed = []
    for c in lab_containers(client):
        lab = c.labels.get(LABEL_LAB, "")
        if not is_orphan(lab):
            continue
        with contextlib.suppress(Exception):
            c.remove(force=True)
        removed.append(f"orphan container {c.name} (lab {lab})")
    return removed
