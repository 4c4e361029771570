"""Small C helpers (the node init, the CNI shim), compiled once per source hash and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from labnet import paths
from labnet.errors import LabnetError


class BuildError(LabnetError):
    """The helper cannot be built here (no compiler, no source, the compiler failed)."""


def default_cache() -> Path:
    return paths.state_root() / "cache"


def compile_once(source: Path, name: str, cache_dir: Path | None = None) -> Path:
    """The binary of `source`, `cache_dir/<hash>/name` (its name is what `ps` shows), compiled
    on first use."""
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise BuildError(f"{name}: source {source} unreadable: {exc.strerror or exc}") from exc
    cache_dir = cache_dir or default_cache()
    out = cache_dir / hashlib.sha256(text).hexdigest()[:16] / name
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError(f"{name}: no C compiler (cc) to build {source}; `make sysdeps` installs gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # builds may race
    proc = subprocess.run([cc, "-O2", "-o", str(tmp), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{name}: `{cc} -O2 {source}` failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    os.replace(tmp, out)  # concurrent builds: the last identical binary wins
    return out
