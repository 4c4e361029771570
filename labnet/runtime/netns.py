"""The netns runtime: machines are namespaces on this host, LANs are bridges in a fabric netns.

Per machine: a network namespace bound at /run/netns/lnet-<lab>.<name> (so `ip netns` sees
it), and mount, UTS and PID namespaces bound under /run/labnet/<lab>/ (itself a private bind
mount: the kernel refuses to bind a mount namespace onto a shared mount). The PID namespace
lives as long as its init, labnet-nsinit (labnet/nsexec/nsinit.c), which also gives the machine a /proc of
its own. Nothing touches the root network namespace: veths are created inside the fabric
namespace and their peer is moved straight into the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from labnet import paths
from labnet.errors import LabnetError
from labnet.nsexec import NodeNS, nsinit, pid_alive, proc_starttime, processes_in, same_process
from labnet.runtime.base import NODE_DIRS, LinkSpec, MachineSpec, Recorder, Runtime
from labnet.wait import poll

RTPROT_BOOT = 3  # what `ip route add` uses: shows as no "proto" in `ip route`
IFA_F_NODAD = 0x02


def _sh(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabnetError(f"{what}: `{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _netns(name: str) -> Any:
    from pyroute2 import NetNS  # imported late: 90 ms we only pay when building

    return NetNS(name)


MACHINE_WORKERS = 2


class NetnsRuntime(Runtime):
    name = "netns"
    shares_host_python = True

    def __init__(self, lab: str, journal: Recorder) -> None:
        super().__init__(lab, journal)
        self.run_dir = paths.ns_dir(lab)
        self.fabric = paths.fabric_netns(lab)

    # -- naming -----------------------------------------------------------------------
    def netns_name(self, machine: str) -> str:
        return paths.netns_name(self.lab, machine)

    def ns(self, machine: str) -> NodeNS:
        return NodeNS(
            name=machine,
            netns=str(paths.NETNS_DIR / self.netns_name(machine)),
            mntns=str(self.run_dir / f"{machine}.mnt"),
            utsns=str(self.run_dir / f"{machine}.uts"),
            pidns=str(self.run_dir / f"{machine}.pid"),
        )

    def host_path(self, machine: str, path: str) -> Path:
        for sub, inside in NODE_DIRS.items():
            if path == inside or path.startswith(inside + "/"):
                return paths.node_dir(self.lab, machine) / sub / path[len(inside) :].lstrip("/")
        raise LabnetError(f"{machine}: {path} is not one of the node's private directories")

    # -- build ------------------------------------------------------------------------
    def prepare(self) -> None:
        labdir = paths.lab_dir(self.lab)
        self.journal.record("dir", path=str(labdir / "nodes"))
        (labdir / "nodes").mkdir(parents=True, exist_ok=True)
        self.journal.record("private_mount", path=str(self.run_dir))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _sh(["mount", "--bind", str(self.run_dir), str(self.run_dir)], "private mount")
        _sh(["mount", "--make-private", str(self.run_dir)], "private mount")
        prepare_netns_dir()
        self._make_ns(self.fabric, None, script="sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                      "net.ipv6.conf.default.disable_ipv6=1")

    def _make_ns(self, netns: str, machine: str | None, script: str) -> None:
        """One `unshare` per namespace set; it runs `script` inside to finish the set-up."""
        nsfile = paths.NETNS_DIR / netns
        self.journal.record("netns", name=netns)
        nsfile.touch()
        argv = ["unshare", f"--net={nsfile}"]
        if machine is not None:
            for kind in ("mnt", "uts"):
                f = self.run_dir / f"{machine}.{kind}"
                self.journal.record("nsfile", path=str(f))
                f.touch()
            argv += [f"--mount={self.run_dir / f'{machine}.mnt'}", f"--uts={self.run_dir / f'{machine}.uts'}",
                     "--propagation", "private"]
        _sh([*argv, "sh", "-euc", script], f"create namespaces for {machine or netns}")

    def add_network(self, name: str, mtu: int) -> None:
        with _netns(self.fabric) as fab:
            fab.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0, mtu=mtu)
            idx = fab.link_lookup(ifname=name)[0]
            fab.link("set", index=idx, state="up")

    def add_machines(self, machines: list[MachineSpec]) -> None:
        """Two at a time: each machine waits on its processes (unshare, its set-up, its init)
        more than it computes, and no machine depends on another."""
        with ThreadPoolExecutor(max_workers=MACHINE_WORKERS) as pool:
            try:
                for fut in [pool.submit(self._add_machine, m) for m in machines]:
                    fut.result()
            except BaseException:  # a failure or Ctrl-C: the machines not started yet are not made
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _add_machine(self, m: MachineSpec) -> None:
        ndir = paths.node_dir(self.lab, m.name)
        binds = []
        for sub, inside in NODE_DIRS.items():
            (ndir / sub).mkdir(parents=True, exist_ok=True)
            if not inside.startswith("/var/run"):
                Path(inside).mkdir(parents=True, exist_ok=True)  # the mount point on the host fs
            binds.append(f"mount --bind {ndir / sub} {inside}")
        sysctls = ["net.ipv4.ip_forward=" + ("1" if m.forward else "0")]
        if not m.ipv6:
            sysctls += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        else:  # the lab's addresses are unique by validation: no machine waits out DAD for one
            sysctls += ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if m.forward:
                sysctls += ["net.ipv6.conf.all.forwarding=1"]
        script = "; ".join([
            # Drop this mount namespace's copies of other namespaces' bind mounts: they would keep
            # other nodes (and other labs) alive after their own `down`. Whole trees first (one
            # unmount each, not one per machine already made: that grew as the square of the lab),
            # then whatever was not under them.
            "awk '$5 == \"/run/netns\" || $5 ~ \"^/run/labnet/[^/]+$\" {print $5}' /proc/self/mountinfo "
            "| xargs -r umount -l 2>/dev/null || true",
            "awk '$5 ~ \"^/run/(netns|labnet)/\" {print $5}' /proc/self/mountinfo | sort -r "
            "| xargs -r umount -l 2>/dev/null || true",  # some vanish meanwhile: fine
            f"hostname {m.name}", *binds, "ip link set lo up", "sysctl -qw " + " ".join(sysctls),
        ])
        self._make_ns(self.netns_name(m.name), m.name, script)
        self._start_init(m.name)

    def _start_init(self, machine: str) -> None:
        """The machine's PID namespace: labnet-nsinit forks its init inside the machine's other
        namespaces, which mounts the machine's own /proc, and binds the namespace at <machine>.pid."""
        ns = self.ns(machine)
        assert ns.mntns and ns.utsns and ns.pidns
        self.journal.record("nsfile", path=ns.pidns)
        Path(ns.pidns).touch()
        entry = self.journal.record("nsinit", node=machine)
        proc = subprocess.run([str(nsinit()), "init", ns.netns, ns.utsns, ns.mntns, ns.pidns],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise LabnetError(f"{machine}: starting its PID namespace's init failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()}")
        pid = int(proc.stdout)
        self.journal.update(entry, pid=pid, start=proc_starttime(pid))

    def add_links(self, links: list[LinkSpec], gateways: dict[str, IPv4Address],
                  gateways6: dict[str, IPv6Address] | None = None) -> None:
        by_machine: dict[str, list[LinkSpec]] = {}
        with _netns(self.fabric) as fab:
            bridges = {link["ifname"]: link["index"] for link in
                       ({"ifname": x.get_attr("IFLA_IFNAME"), "index": x["index"]} for x in fab.get_links())}
            for ln in links:
                outer = paths.short_ifname(self.lab, ln.machine, ln.ifname)
                tmp = "t" + outer[1:]
                fab.link("add", ifname=outer, kind="veth", peer={"ifname": tmp}, mtu=ln.mtu)
                fab.link("set", index=fab.link_lookup(ifname=tmp)[0], mtu=ln.mtu,
                         net_ns_fd=self.netns_name(ln.machine), ifname=ln.ifname)
                fab.link("set", index=fab.link_lookup(ifname=outer)[0], master=bridges[ln.network],
                         state="up", ifalias=f"{ln.machine}:{ln.ifname}")
                by_machine.setdefault(ln.machine, []).append(ln)
        for machine, mlinks in by_machine.items():
            with _netns(self.netns_name(machine)) as ns:
                for ln in mlinks:
                    idx = ns.link_lookup(ifname=ln.ifname)[0]
                    if ln.address is not None:
                        ns.addr("add", index=idx, address=str(ln.address.ip), prefixlen=ln.address.network.prefixlen)
                    if ln.address6 is not None:  # no DAD: the lab's addresses are unique by validation
                        ns.addr("add", index=idx, address=str(ln.address6.ip), prefixlen=ln.address6.network.prefixlen,
                                flags=IFA_F_NODAD)
                    ns.link("set", index=idx, state="up")
                gw = gateways.get(machine)
                if gw is not None:
                    ns.route("add", dst="0.0.0.0/0", gateway=str(gw), proto=RTPROT_BOOT)
                gw6 = (gateways6 or {}).get(machine)
                if gw6 is not None:
                    ns.route("add", dst="::/0", gateway=str(gw6), proto=RTPROT_BOOT)

    # -- teardown ---------------------------------------------------------------------
    def stragglers(self) -> list[int]:
        """Processes still inside the lab's network namespaces (e.g. left by `labnet exec`)."""
        return processes_in([str(paths.NETNS_DIR / e["name"]) for e in self.journal.of_kind("netns")])

    def teardown(self) -> list[str]:
        problems: list[str] = []
        left = self.stragglers()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            try:
                poll(lambda: [p for p in left if pid_alive(p)], lambda v: not v, timeout=5,
                     what="processes in the lab's namespaces to exit")
            except LabnetError as exc:
                problems.append(str(exc))
        for entry in reversed(self.journal.entries):
            try:
                self._undo(entry)
            except Exception as exc:  # keep going: a partial teardown is worse than a noisy one
                problems.append(f"{entry}: {exc}")
        return problems

    def _undo(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind == "netns":
            f = paths.NETNS_DIR / e["name"]
            _umount(f)
            f.unlink(missing_ok=True)
        elif kind == "nsfile":
            f = Path(e["path"])
            _umount(f)
            f.unlink(missing_ok=True)
        elif kind == "private_mount":
            d = Path(e["path"])
            _umount(d)
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):
                d.parent.rmdir()  # /run/labnet itself, once no lab uses it
        elif kind == "dir":
            shutil.rmtree(e["path"], ignore_errors=True)
        elif kind == "nsinit" and e.get("pid") and same_process(int(e["pid"]), e.get("start")):
            os.kill(int(e["pid"]), signal.SIGKILL)  # pid 1 of the machine: its death ends the namespace


    @classmethod
    def sweep_orphans(cls, is_orphan: Callable[[str], bool]) -> list[str]:
        """Namespace files of orphan labs: /run/netns/lnet-<lab>.* and /run/labnet/<lab>/
        (mount/UTS namespace files, itself a private bind mount)."""
        removed: list[str] = []
        orphans = [f for f in _entries_of(paths.NETNS_DIR)
                   if (owner := paths.lab_of_netns(f.name)) is not None and is_orphan(owner)]
        # Their processes first (each machine's init among them): they would keep the
        # namespaces alive, unseen, after the files are gone.
        for pid in processes_in([str(f) for f in orphans]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                removed.append(f"process {pid} in an orphan lab's namespace")
        for f in orphans:
            _umount_vanishing(f)
            f.unlink(missing_ok=True)
            removed.append(f"orphan namespace {f.name}")
        for d in _entries_of(paths.run_root()):
            if d.is_dir() and is_orphan(d.name):
                for f in _entries_of(d):
                    _umount_vanishing(f)
                _umount_vanishing(d)
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"orphan namespace files {d}")
        return removed


def _entries_of(d: Path) -> list[Path]:
    """d's entries, sorted; none when d vanished (or was never there) while we looked."""
    try:
        return sorted(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _umount_vanishing(path: Path) -> None:
    """Unmount `path` (every mount stacked on it); a path or mount that vanishes meanwhile
    (someone else unmounted or removed it: ENOENT, EINVAL) is what we wanted anyway."""
    try:
        _umount(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except LabnetError:
        if path.exists() and _is_mountpoint(path):
            raise


def prepare_netns_dir() -> None:
    """Make /run/netns what iproute2 makes it before its first namespace: a shared bind mount
    of itself. Namespaces bound under a plain directory would be hidden by the bind mount the
    next `ip netns add` (by anyone) puts on top, and could then be neither seen nor removed."""
    d = paths.NETNS_DIR
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two labnets preparing it at once bind it once
        if not _is_mountpoint(d):
            _sh(["mount", "--rbind", str(d), str(d)], f"prepare {d} as iproute2 does")
        _sh(["mount", "--make-rshared", str(d)], f"prepare {d} as iproute2 does")
    finally:
        os.close(fd)


def _mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def _is_mountpoint(path: Path) -> bool:
    """Something is mounted at `path`: on top, or hidden under a later mount of a parent."""
    return str(path) in _mountpoints()


def _umount(path: Path) -> None:
    while path.exists() and _is_mountpoint(path):
        proc = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            if "not mounted" in proc.stderr and _umount_hidden(path):
                continue
            subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True)
            if _is_mountpoint(path):
                raise LabnetError(f"cannot unmount {path}: {proc.stderr.strip()}")


def _umount_hidden(path: Path) -> bool:
    """A mount at `path` that a later mount of its directory covers (a namespace bound under a
    plain /run/netns before someone's `ip netns add` bound /run/netns onto itself): move the
    cover aside, unmount what it hid, and put the cover back. False if there is no such cover."""
    cover = path.parent
    if str(cover) not in _mountpoints():
        return False
    aside = Path(tempfile.mkdtemp(prefix=".labnet-uncover-", dir=str(cover.parent)))
    try:
        _sh(["mount", "--move", str(cover), str(aside)], f"uncover {path}")
        try:
            while str(path) in _mountpoints():
                _sh(["umount", str(path)], f"unmount {path} (it was hidden under {cover})")
        finally:
            _sh(["mount", "--move", str(aside), str(cover)], f"put {cover} back")
    except LabnetError as exc:
        raise LabnetError(f"cannot unmount {path}: it is hidden under a later mount of {cover} and that "
                          f"mount cannot be moved aside ({exc}); `umount {cover}` once no namespace uses it "
                          f"frees it") from exc
    finally:
        with contextlib.suppress(OSError):
            aside.rmdir()
    return True
