"""CNI spec plumbing, and the plugins' error paths that need neither root nor etcd."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labnet.cni import install, spec
from labnet.cni.datapath import host_veth_name

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cni"


def run(binary_module: str, env: dict[str, str], stdin: str) -> tuple[int, dict[str, object] | None]:
    proc = subprocess.run([sys.executable, "-m", binary_module], input=stdin, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=60)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def test_parse_env_requires_the_variables_of_each_command() -> None:
    with pytest.raises(spec.CniError) as e:
        spec.parse_env({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"})
    assert e.value.code == 4 and "CNI_CONTAINERID" in e.value.msg and "CNI_NETNS" in e.value.msg
    assert spec.parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    env = spec.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_PATH": "/a:/b",
                          "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=net-test;K8S_POD_NAMESPACE=kube"})
    assert env.path == ("/a", "/b") and env.pod == "net-test" and env.namespace == "kube" and env.netns == ""
    with pytest.raises(spec.CniError) as e:
        spec.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a/b", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"})
    assert e.value.code == 4


@pytest.mark.parametrize(("raw", "command", "code"), [
    ("{", "ADD", 6), ("[]", "ADD", 6), ('{"cniVersion": "0.2.0", "name": "n", "type": "labnet"}', "ADD", 1),
    ('{"cniVersion": "1.0.0", "type": "labnet"}', "ADD", 7), ('{"cniVersion": "0.3.1", "name": "n", "type": "t"}',
                                                               "CHECK", 1),
    ('{"cniVersion": "1.0.0", "name": "n", "type": "t"}', "GC", 1),
])
def test_parse_conf_codes(raw: str, command: str, code: int) -> None:
    with pytest.raises(spec.CniError) as e:
        spec.parse_conf(raw, command)
    assert e.value.code == code


def test_convert_renders_each_version() -> None:
    internal = {"interfaces": [{"name": "caliX"}, {"name": "eth0", "sandbox": "/x"}],
                "ips": [{"address": "10.1.2.3/32", "interface": 1}]}
    old = spec.convert(internal, "0.3.1")
    assert old["cniVersion"] == "0.3.1" and old["ips"][0]["version"] == "4"
    new = spec.convert(internal, "1.1.0")
    assert "version" not in new["ips"][0] and new["cniVersion"] == "1.1.0"
    assert spec.normalize(old)["ips"] == internal["ips"]


def test_host_veth_name_is_calicos() -> None:
    name = host_veth_name("cid", "default", "net-test")
    assert name.startswith("cali") and len(name) == 15 and all(c in "0123456789abcdef" for c in name[4:])
    assert host_veth_name("cid", "default", "net-test") == name != host_veth_name("cid", "kube", "net-test")
    assert host_veth_name("cid") != host_veth_name("cid2")
    # another attachment of the same pod: its own name; eth0 keeps Calico's
    assert host_veth_name("cid", "default", "net-test", "eth0") == name
    others = {host_veth_name("cid", "default", "net-test", i) for i in ("eth1", "net1", "eth2")}
    assert len(others) == 3 and name not in others and all(len(n) == 15 for n in others)


def test_cni_ifname_is_an_interface_name() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/n", "CNI_PATH": "/opt/cni/bin"}
    assert spec.parse_env({**env, "CNI_IFNAME": "net1"}).ifname == "net1"
    for bad in ("../x", "eth0/1", "a" * 16, "eth 0", "x:y", "..", "eth0;K=V"):
        with pytest.raises(spec.CniError) as err:
            spec.parse_env({**env, "CNI_IFNAME": bad})
        assert err.value.code == 4 and "CNI_IFNAME" in str(err.value), bad


@pytest.mark.parametrize("request_file", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture_requests(request_file: str) -> None:
    """fixtures/cni/*.json: {env, stdin, expect: {rc, code?, msg_contains?}} that fail before etcd."""
    case = json.loads((FIXTURES / request_file).read_text())
    stdin = case["stdin"] if isinstance(case["stdin"], str) else json.dumps(case["stdin"])
    rc, doc = run(case.get("module", "labnet.cni.plugin"), case["env"], stdin)
    exp = case["expect"]
    assert (rc == 0) == (exp["rc"] == 0), f"{request_file}: rc {rc}, stdout {doc}"
    if "code" in exp:
        assert doc is not None and doc["code"] == exp["code"], f"{request_file}: {doc}"
        assert exp.get("msg_contains", "") in str(doc["msg"])
    for key, value in exp.get("fields", {}).items():
        assert doc is not None and doc[key] == value, f"{request_file}: {key} in {doc}"


def test_install_lays_out_a_node_like_install_cni(tmp_path: Path) -> None:
    tls_src = tmp_path / "secrets"
    tls_src.mkdir()
    for n in ("ca", "cert", "key"):
        (tls_src / n).write_text(f"-----{n}-----\n")
    node = install.NodePaths(tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d", tmp_path / "var-lib-labnet")
    conf_path = install.install(node, "ubuntu-3", "https://10.20.30.71:2379",
                                install.TlsFiles(tls_src / "ca", tls_src / "cert", tls_src / "key"),
                                {"mtu": 1440, "ipam": {"pool": "10.100.0.0/16"}})
    assert conf_path == node.etc_cni_netd / "10-labnet.conflist"
    assert stat.S_IMODE(conf_path.stat().st_mode) == 0o600
    doc = json.loads(conf_path.read_text())
    assert doc["name"] == "k8s-pod-network" and doc["cniVersion"] == "1.0.0"
    (plugin,) = doc["plugins"]
    assert plugin["type"] == "labnet" and plugin["ipam"] == {"type": "labnet-ipam", "pool": "10.100.0.0/16"}
    assert plugin["etcd_endpoints"] == "https://10.20.30.71:2379" and plugin["mtu"] == 1440
    assert plugin["etcd_ca_cert_file"] == "/etc/cni/net.d/labnet-tls/etcd-ca"
    for n, src in (("etcd-ca", "ca"), ("etcd-cert", "cert"), ("etcd-key", "key")):
        f = node.etc_cni_netd / "labnet-tls" / n
        assert f.read_text() == f"-----{src}-----\n" and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert (node.var_lib_labnet / "nodename").read_text() == "ubuntu-3\n"
    for name in ("labnet", "labnet-ipam"):
        exe = node.opt_cni_bin / name
        fallback = node.opt_cni_bin / install.fallback_name(name)
        assert os.access(fallback, os.X_OK) and fallback.read_text().startswith(f"#!{sys.executable}")
        # the compiled shim, or (no C compiler) the Python plugin itself; either answers alone
        assert os.access(exe, os.X_OK) and exe.read_bytes()[:4] in (b"\x7fELF", b"#!" + sys.executable.encode()[:2])
        proc = subprocess.run([str(exe)], input='{"cniVersion": "0.4.0"}', capture_output=True, text=True,
                              env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}, timeout=60)
        assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "0.4.0"
    if Path("/usr/lib/cni/loopback").exists():
        assert os.access(node.opt_cni_bin / "loopback", os.X_OK)
    install.install(node, "ubuntu-3", "https://10.20.30.71:2379")  # re-install over an existing one


def test_plugin_import_path_stays_lean() -> None:
    code = ("import sys, labnet.cni.plugin, labnet.cni.ipam_plugin, labnet.cni.datapath; "
            "print(sorted(m for m in ('pydantic', 'labnet.topology', 'yaml', 'docker', 'cryptography') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_requested_address_from_cni_args_or_the_config() -> None:
    from labnet.cni.ipam_plugin import requested_ip
    from labnet.cni.spec import CniError, Env

    def env(args: str = "") -> Env:
        return Env("ADD", "c1", "/n", "eth0", ("/opt/cni/bin",),
                   dict(p.split("=", 1) for p in args.split(";") if p))

    assert requested_ip(env(), {}) is None
    assert requested_ip(env("IgnoreUnknown=1;IP=10.100.3.4"), {}) == "10.100.3.4"
    assert requested_ip(env(), {"runtimeConfig": {"ips": ["10.100.3.4/24"]}}) == "10.100.3.4"
    assert requested_ip(env(), {"args": {"cni": {"ips": ["10.100.3.4"]}}}) == "10.100.3.4"
    assert requested_ip(env("IP=10.100.3.4"), {"runtimeConfig": {"ips": ["10.100.3.4/32"]}}) == "10.100.3.4"
    cases: list[tuple[Env, dict[str, Any], int, str]] = [
        (env("IP=nope"), {}, 4, "CNI_ARGS IP='nope'"),
        (env(), {"runtimeConfig": {"ips": "10.1.1.1"}}, 7, "must be a list"),
        (env(), {"runtimeConfig": {"ips": ["fd00::1/64", "fd00::2"]}}, 7, "one IPv6 address per attachment"),
        (env(), {"runtimeConfig": {"ips": ["nope"]}}, 7, "not an IP address"),
        (env("IP=10.100.3.4"), {"runtimeConfig": {"ips": ["10.100.3.5"]}}, 7, "one IPv4 address per attachment"),
    ]
    for e, conf, code, says in cases:
        with pytest.raises(CniError) as err:
            requested_ip(e, conf, 6 if "IPv6" in says else 4)
        assert err.value.code == code and says in str(err.value), (code, str(err.value))
    # one address per family: Calico's comma-separated IP=, each family reading its own
    both = env("IP=10.100.3.4,fd00:10:244::7")
    assert (requested_ip(both, {}), requested_ip(both, {}, 6)) == ("10.100.3.4", "fd00:10:244::7")
    assert requested_ip(env(), {"runtimeConfig": {"ips": ["fd00::9/128"]}}, 6) == "fd00::9"
    assert requested_ip(env("IP=10.100.3.4"), {}, 6) is None


def test_pod_names_in_cni_args_are_names() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}
    ok = spec.parse_env({**env, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web_1.a-b"})
    assert (ok.pod, ok.namespace) == ("web_1.a-b", "default")
    for bad in ("K8S_POD_NAME=p/eth1", "K8S_POD_NAME=../x", "K8S_POD_NAMESPACE=kube system", "K8S_POD_NAME=" + "a" * 254,
                "K8S_POD_NAME=", "K8S_POD_NAMESPACE=-x"):
        with pytest.raises(spec.CniError) as err:
            spec.parse_env({**env, "CNI_ARGS": bad})
        assert err.value.code == 4 and "K8S_POD_" in str(err.value), bad
