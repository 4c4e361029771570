"""No root: the node image's hash inputs, the mirror lookup and dockerd's safe flags."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labnet.runtime import get_runtime, image
from labnet.runtime.docker import DockerRuntime, container_name
from labnet.runtime.dockerd import dockerd_argv


def test_image_tag_is_stable_and_salt_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABNET_IMAGE_SALT", raising=False)
    tag = image.image_tag()
    assert tag.startswith("labnet-node:") and len(tag.split(":")[1]) == 16
    assert image.image_tag() == tag, "the same inputs must give the same tag"
    monkeypatch.setenv("LABNET_IMAGE_SALT", "a change")
    assert image.image_tag() != tag, "a different hash input must give a different tag"


def test_a_change_to_labnet_code_changes_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "src"
    shutil.copytree(image.SOURCE_ROOT / "labnet", tree / "labnet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(image.SOURCE_ROOT / "pyproject.toml", tree / "pyproject.toml")
    monkeypatch.setattr(image, "SOURCE_ROOT", tree)
    before = image.labnet_hash()
    (tree / "labnet" / "__pycache__").mkdir(exist_ok=True)
    (tree / "labnet" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"bytecode")
    assert image.labnet_hash() == before, "bytecode is not an input"
    with open(tree / "labnet" / "wait.py", "a") as f:
        f.write("\n# an edit\n")
    assert image.labnet_hash() != before, "an edit to labnet/wait.py must change the image hash"


def test_dependency_closure_is_runtime_only() -> None:
    names = {d.metadata["Name"].lower().replace("_", "-") for d in image.dependency_dists()}
    assert {"pyyaml", "pydantic", "pydantic-core", "pyroute2", "etcd3gw", "cryptography"} <= names, names
    assert not names & {"pytest", "hypothesis", "ruff", "mypy", "labnet", "docker"}, \
        f"test/dev extras or labnet itself leaked into the image's dependencies: {sorted(names)}"


def test_base_hash_depends_on_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.base_hash()
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "strace"))
    assert image.base_hash() != before


@pytest.mark.parametrize("text, expected", [
    ("deb http://mirror.example/debian bookworm main\ndeb http://security.example bookworm-security main\n",
     "http://mirror.example/debian"),
    ("deb [arch=amd64 signed-by=/k.gpg] http://m2.example/debian/ bookworm main\n", "http://m2.example/debian"),
    ("Types: deb\nURIs: http://sec.example\nSuites: bookworm-security\n\n"
     "Types: deb\nURIs: http://m3.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
     "http://m3.example/debian"),
    ("deb http://other.example/ubuntu jammy main\n", "http://deb.debian.org/debian"),
])
def test_mirror_from_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    monkeypatch.delenv("LABNET_DEBIAN_MIRROR", raising=False)
    f = tmp_path / "sources"
    f.write_text(text)
    assert image.mirror([f]) == expected


def test_dockerd_never_touches_the_host_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda *a, **k: "/usr/sbin/dockerd")
    argv = dockerd_argv()
    for flag in ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false"):
        assert flag in argv, f"dockerd must run with {flag}: {argv}"
    assert any(a.startswith("--host=unix:///") for a in argv) and any(a.startswith("--pidfile=") for a in argv)
    assert not any("/var/run/docker.sock" in a for a in argv), "labnet's dockerd has its own socket"


def test_docker_runtime_is_registered() -> None:
    assert get_runtime("docker") is DockerRuntime
    assert container_name("seed", "ubuntu-3") == "lnet-seed.ubuntu-3"
    assert DockerRuntime.python == "/usr/bin/python3"


def test_docker_nodes_run_labnet_code_with_the_image_python(tmp_path: Path) -> None:
    from labnet.lab.journal import Journal

    rt = DockerRuntime("seed", Journal(path=tmp_path / "journal.json", lab="seed"))
    ns = rt.ns("ubuntu-3")
    assert ns.python == "/usr/bin/python3" and ns.pod("net-test", "/var/run/netns/x").python == "/usr/bin/python3"
    assert ns.netns == "/run/netns/lnet-seed.ubuntu-3", "a container's netns is bound where the netns runtime's is"
    assert str(rt.host_path("ubuntu-3", "/etc/cni/net.d/10-labnet.conflist")).endswith(
        "labs/seed/nodes/ubuntu-3/etc-cni-net.d/10-labnet.conflist")
