"""The userspace tunl0 as its own process (ipip_proc.IpipProcess): adopt, replace, stop."""

from __future__ import annotations

import json
from pathlib import Path

from labnet.agent.tunnel.ipip_proc import IpipProcess
from labnet.etcd.netns import call_in_netns
from labnet.nsexec import NodeNS, pid_alive, run


def _tunl0(ns: NodeNS) -> dict | None:  # type: ignore[type-arg]
    links = json.loads(run(ns, ["ip", "-j", "-d", "addr", "show"]).stdout)
    return next((lk for lk in links if lk["ifname"] == "tunl0"), None)


def test_adopt_replace_and_stop(netns_factory, tmp_path: Path) -> None:
    ns = netns_factory("ipipproc")
    run(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "lo"])

    def start(address: str) -> IpipProcess:
        tun = IpipProcess("10.99.0.1", address, 1400, run_dir=tmp_path)
        call_in_netns(ns.netns, tun.start)
        if tun.pid:
            netns_factory.track_pid(tun.pid)
        return tun

    first = start("10.100.1.0")
    assert first.pid and not first.adopted and pid_alive(first.pid)
    link = _tunl0(ns)
    assert link and link["mtu"] == 1400, f"tunl0 after start: {link}"

    again = start("10.100.1.0")  # same parameters: the running datapath is adopted
    assert again.adopted and again.pid == first.pid, f"expected to adopt pid {first.pid}: {again.pid}"
    st = again.status()
    assert st["alive"] and st["address"] == "10.100.1.0" and "counters" in st, st

    other = start("10.100.2.0")  # other parameters: the old one is stopped, a new one started
    assert not other.adopted and other.pid != first.pid and not pid_alive(first.pid)
    link = _tunl0(ns)
    assert link and [a["local"] for a in link["addr_info"]] == ["10.100.2.0"], f"tunl0 after replace: {link}"

    call_in_netns(ns.netns, other.stop)
    assert other.pid is None and _tunl0(ns) is None and not (tmp_path / "ipip-tunl0.pid").exists()
