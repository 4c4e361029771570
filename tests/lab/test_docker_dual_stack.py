"""The dual-stack lab with every machine a container: the same file, the same checks as on
netns (IPv6 underlay, an IPv6 pool in VXLAN mode over vxlan-v6.calico, NAT66), seen through
docker too."""

from __future__ import annotations

import json

import pytest
from _dockertools import containers_of, labnet_dockerd  # noqa: F401
from _labtools import TOPOLOGIES, lab_pids, labnet, snapshot

from labnet.runtime import dockerd
from labnet.runtime.docker import container_name

DUAL = str(TOPOLOGIES / "dual-stack.yaml")


@pytest.mark.usefixtures("labnet_dockerd")
def test_dual_stack_on_docker_passes_its_checks() -> None:
    name = "t-dk-dual"
    before = snapshot(name)
    labnet("up", DUAL, "--name", name, "--runtime", "docker", "-q", timeout=600)
    pids = lab_pids(name)
    try:
        res = labnet("check", DUAL, "-l", name, "--json", check=False)
        results = json.loads(res.stdout)["results"]
        bad = [r for r in results if not r["ok"]]
        assert res.returncode == 0 and not bad, "\n\n".join(r["message"] for r in bad) or res.stderr
        families = {r["name"].count(":") > 1 for r in results if r["name"].startswith("ping")}
        assert families == {True, False}, f"pings of both families expected: {[r['name'] for r in results]}"
        # through docker itself: the pod's IPv6 address and its gateway, the node's IPv6 device
        c = dockerd.client().containers.get(container_name(name, "ubuntu-3"))
        pod = json.loads(labnet("status", "-l", name, "--json").stdout)[0]["pods"]["net-test"]
        code, out = c.exec_run(["ip", "netns", "exec", pod["netns"].rsplit("/", 1)[1], "ip", "-6", "route"])
        text = out.decode(errors="replace")
        assert code == 0 and "default via fe80::ecee:eeff:feee:eeee dev eth0" in text, text
        code, out = c.exec_run(["ip", "-d", "link", "show", "vxlan-v6.calico"])
        text = out.decode(errors="replace")
        assert code == 0 and "vxlan id 6096 local fd00:20:30::73" in text, text
    finally:
        labnet("down", "--name", name, check=False)
    assert not containers_of(name), f"containers left: {containers_of(name)}"
    left = snapshot(name, pids).leftovers(before)
    assert not left, f"docker dual-stack lab left: {left}"
