"""The node image is reused while its inputs are unchanged, rebuilt when they change.

A change to labnet's code is simulated with LABNET_IMAGE_SALT, one of the hash inputs (the
unit tests show an edit to a labnet file changes the same hash).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from _dockertools import build_dirs, labnet_dockerd  # noqa: F401

from labnet.runtime import dockerd, image


@pytest.fixture
def client(labnet_dockerd: dockerd.DockerdHandle) -> object:  # noqa: F811
    return dockerd.client(timeout=600)


def test_image_is_reused_then_rebuilt_when_labnet_changes(client, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LABNET_IMAGE_SALT", raising=False)
    code = image.labnet_hash()  # pinned: others editing labnet/ during the test must not count as a change
    monkeypatch.setattr(image, "labnet_hash", lambda: code)
    first = image.ensure_image(client)  # built here if this is the session's first docker test
    builds = image.build_count()
    again = image.ensure_image(client)
    assert not again.built, f"{again.tag} was rebuilt although its inputs did not change"
    assert (again.tag, again.id) == (first.tag, first.id)
    assert image.build_count() == builds, "a reuse must not count as a build"

    monkeypatch.setenv("LABNET_IMAGE_SALT", uuid.uuid4().hex)  # "labnet's code changed"
    changed = image.ensure_image(client)
    try:
        assert changed.built and changed.tag != first.tag and changed.id != first.id, changed
        assert image.build_count() == builds + 1
        log = json.loads((image.images_dir() / "builds.log").read_text().splitlines()[-1])
        assert log["tag"] == changed.tag and log["base_built"] is False, \
            f"a labnet change must reuse the cached debootstrap base: {log}"
        again = image.ensure_image(client)
        assert not again.built and again.id == changed.id
    finally:
        client.images.remove(changed.tag)
    assert not build_dirs(), f"build directories left under {image.images_dir()}: {build_dirs()}"


def test_image_holds_labnet_and_the_lab_tools(client) -> None:  # type: ignore[no-untyped-def]
    ref = image.ensure_image(client)
    script = ("import labnet, pydantic, pyroute2, etcd3gw, cryptography, yaml; "
              "from importlib.metadata import entry_points; "
              "print(labnet.__file__, sorted(e.name for e in entry_points(group='console_scripts')))")
    out = client.containers.run(ref.tag, ["python3", "-c", script], network_mode="none", remove=True).decode()
    assert "/usr/local/lib/python3.11/dist-packages/labnet/" in out, out
    for s in ("labnet", "labnet-agent", "labnet-cni", "labnet-ipam"):
        assert f"'{s}'" in out, f"console script {s} missing from the image: {out}"
    tools = "for t in ip iptables nft etcd etcdctl bird birdc tcpdump iperf3 ping ps python3 labnet-cni; " \
            "do command -v $t >/dev/null || echo MISSING $t; done"
    out = client.containers.run(ref.tag, ["sh", "-c", tools], network_mode="none", remove=True).decode()
    assert "MISSING" not in out, f"{ref.tag}: {out}"


def test_image_cli_show_and_build(labnet_dockerd) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """`labnet image show|build` (through image.register, as the CLI wires it)."""
    code = ("import argparse, sys; from labnet.runtime import image; p = argparse.ArgumentParser(); "
            "image.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    show = subprocess.run([sys.executable, "-c", code, "image", "show", "--json"], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    tag = json.loads(show.stdout)["tag"]
    built = subprocess.run([sys.executable, "-c", code, "image", "build", "--json"],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    ref = json.loads(built.stdout)
    assert ref["tag"] == tag and ref["built"] is False, ref
