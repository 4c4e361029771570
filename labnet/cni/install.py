"""Install the CNI plugins into a node, as Calico's install-cni container does.

Writes, through the host-side directories that are bind-mounted into the node:
  /opt/cni/bin/labnet, /opt/cni/bin/labnet-ipam   the C shim (labnet/cni/shim.c): a thin client of
                                                 the node's CNI server (labnet.cni.server), which
                                                 execs the Python plugin below when no server answers
  /opt/cni/bin/.labnet-py, .labnet-ipam-py       the Python plugins, shebang scripts on this
                                                 interpreter (also installed as labnet/labnet-ipam
                                                 when no C compiler is present)
  /opt/cni/bin/loopback                          Debian's reference plugin, when present
  /etc/cni/net.d/10-labnet.conflist (0600)       network config, Calico's shape
  /etc/cni/net.d/labnet-tls/etcd-{ca,cert,key}   TLS assets (0600)
  /var/lib/labnet/nodename                       the node name the plugin reports
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labnet.nsexec.build import BuildError, compile_once

NETWORK_NAME = "k8s-pod-network"
CONFLIST = "10-labnet.conflist"
NODE_NETD = "/etc/cni/net.d"  # as the node sees it
TLS_INSIDE = f"{NODE_NETD}/labnet-tls"  # the etcd client TLS files, as the node sees them
LOOPBACK_SRC = Path("/usr/lib/cni/loopback")
PLUGINS = {"labnet": "labnet.cni.plugin", "labnet-ipam": "labnet.cni.ipam_plugin"}
SHIM_SOURCE = Path(__file__).with_name("shim.c")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodePaths:
    """Host-side directories bind-mounted at the node's /opt/cni/bin, /etc/cni/net.d, /var/lib/labnet."""

    opt_cni_bin: Path
    etc_cni_netd: Path
    var_lib_labnet: Path


@dataclass(frozen=True)
class TlsFiles:
    """Source paths (on the host) of the etcd client TLS assets."""

    ca: Path
    cert: Path
    key: Path


def _write(path: Path, data: str | bytes, mode: int) -> None:
    """Write atomically (a runtime may read the conflist at any moment) with `mode`."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def plugin_script(module: str, python: str) -> str:
    # -s: no user site-packages; the interpreter's own environment carries labnet
    return f"#!{python} -s\nimport sys\nfrom {module} import main\nsys.exit(main())\n"


def fallback_name(plugin: str) -> str:
    """Where the shim finds the Python plugin it execs when no server answers (next to itself)."""
    return f".{plugin}-py"


def build_shim(cache_dir: Path) -> Path | None:
    """Compile shim.c once per source hash into `cache_dir`; None if that cannot be done
    (no C compiler, no source shipped): the plugins are then the Python scripts themselves."""
    try:
        return compile_once(SHIM_SOURCE, "labnet-cni-shim", cache_dir)
    except BuildError as exc:
        log.warning("CNI fast path off: %s; installing the Python plugins", exc)
        return None


def conflist(etcd_endpoints: str, tls: bool, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    plugin: dict[str, Any] = {
        "type": "labnet",
        "log_level": "info",
        "etcd_endpoints": etcd_endpoints,
        "ipam": {"type": "labnet-ipam"},
        "capabilities": {"ips": True},  # libcni then passes a runtime's requested address (runtimeConfig.ips)
    }
    if tls:
        plugin.update({
            "etcd_key_file": f"{TLS_INSIDE}/etcd-key",
            "etcd_cert_file": f"{TLS_INSIDE}/etcd-cert",
            "etcd_ca_cert_file": f"{TLS_INSIDE}/etcd-ca",
        })
    for key, value in (settings or {}).items():
        if key == "ipam" and isinstance(value, dict):
            plugin["ipam"].update(value)
        else:
            plugin[key] = value
    return {"name": NETWORK_NAME, "cniVersion": "1.0.0", "plugins": [plugin]}


def install(
    node: NodePaths,
    nodename: str,
    etcd_endpoints: str,
    tls: TlsFiles | None = None,
    settings: dict[str, Any] | None = None,
    python: str = sys.executable,
    shim_cache: Path | None = None,
    shim: bool = True,
) -> Path:
    """Install plugins, conflist, TLS assets and nodename; return the conflist's host path.

    shim_cache: where the compiled shim is kept (default: <state root>/cache); shim=False
    installs the Python plugins as labnet/labnet-ipam (no fast path).
    """
    from labnet import paths

    for d in (node.opt_cni_bin, node.etc_cni_netd, node.var_lib_labnet):
        d.mkdir(parents=True, exist_ok=True)
    binary = build_shim(shim_cache or paths.state_root() / "cache") if shim else None
    for name, module in PLUGINS.items():
        script = plugin_script(module, python)
        _write(node.opt_cni_bin / fallback_name(name), script, 0o755)
        if binary is not None:
            _write(node.opt_cni_bin / name, binary.read_bytes(), 0o755)
        else:
            _write(node.opt_cni_bin / name, script, 0o755)
    if LOOPBACK_SRC.exists():
        tmp = node.opt_cni_bin / ".loopback.tmp"
        shutil.copy2(LOOPBACK_SRC, tmp)
        os.replace(tmp, node.opt_cni_bin / "loopback")
    if tls is not None:
        tls_dir = node.etc_cni_netd / "labnet-tls"
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        for src, dst in ((tls.ca, "etcd-ca"), (tls.cert, "etcd-cert"), (tls.key, "etcd-key")):
            _write(tls_dir / dst, Path(src).read_bytes(), 0o600)
    _write(node.var_lib_labnet / "nodename", nodename + "\n", 0o644)
    target = node.etc_cni_netd / CONFLIST
    _write(target, json.dumps(conflist(etcd_endpoints, tls is not None, settings), indent=2) + "\n", 0o600)
    return target
