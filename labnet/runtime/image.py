"""The node image of the docker runtime, tagged by a hash of what goes into it.

Inputs: the Debian package list, docker/Dockerfile, labnet's Python dependencies (names and
versions, copied from the environment running labnet) and labnet's own files (the content of
the wheel). The image `labnet-node:<hash>` is reused while that hash is unchanged, so an edit
to labnet's code rebuilds it and nothing else does.

Two ways to the same image: `docker build` of docker/Dockerfile on debian:bookworm-slim where a
registry is reachable; elsewhere (this lab machine) the same Dockerfile on a base made by
debootstrap (`--variant=minbase --include=<packages>`) and `docker import`. The base's root
filesystem tarball is cached under <state>/images/, so only the first build pays for
debootstrap. Build directories are temporary and always removed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from labnet import paths
from labnet.errors import BadInput, LabnetError

SUITE = "bookworm"
PYTHON = "python3.11"  # the suite's python3: labnet's dependencies are copied for this ABI
PACKAGES = (
    "iproute2", "iptables", "nftables", "etcd-server", "etcd-client", "bird2", "tcpdump", "iperf3",
    "iputils-ping", "procps", "python3",
)
BASE_RECIPE = "1"  # bump when the debootstrap recipe below changes
REPO = "labnet-node"
BASE_REPO = "labnet-node-base"
REGISTRY_BASE = "debian:bookworm-slim"
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the working tree, when labnet runs from one
# Trimmed from the base rootfs: caches and docs nobody in a lab reads (~150 MB of 320).
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale",
        "usr/share/info")


def images_dir() -> Path:
    return paths.state_root() / "images"


def dockerfile() -> Path:
    f = Path(os.environ.get("LABNET_DOCKERFILE") or SOURCE_ROOT / "docker" / "Dockerfile")
    if not f.is_file():
        raise LabnetError(f"the node image is built from docker/Dockerfile of labnet's source tree; {f} is missing "
                          "(run labnet from its source tree, or point LABNET_DOCKERFILE at the file)")
    return f


def mirror(files: list[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses (LABNET_DEBIAN_MIRROR overrides)."""
    env = os.environ.get("LABNET_DEBIAN_MIRROR")
    if env:
        return env
    if files is None:
        files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M):
            return m.group(1).rstrip("/")
        for stanza in text.split("\n\n"):  # deb822: URIs/Suites fields of one stanza
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


# -- hash inputs --------------------------------------------------------------------------
def dependency_dists() -> list[metadata.Distribution]:
    """labnet's runtime dependency closure, as installed here (extras excluded)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(metadata.requires("labnet") or [])
    while todo:
        req = todo.pop()
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue  # optional features (test, dev...): not what a node runs
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m is None:
            continue
        key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(m.group(1))
        except metadata.PackageNotFoundError as exc:
            if marker.strip():
                continue  # e.g. `; python_version < "3.11"`: not for this interpreter, so not installed
            raise LabnetError(f"labnet's dependency {m.group(1)} is not installed here: "
                              "the node image copies it from this environment") from exc
        seen[key] = dist
        todo += list(dist.requires or [])
    return [seen[k] for k in sorted(seen)]


def labnet_files() -> list[Path]:
    """What labnet's wheel is made of: the package (sources and data) and, in a working tree, pyproject.toml."""
    pkg = SOURCE_ROOT / "labnet"
    files = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.is_file():
        files.append(pyproject)
    return sorted(files)


def labnet_hash() -> str:
    h = hashlib.sha256()
    for f in labnet_files():
        h.update(str(f.relative_to(SOURCE_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def base_hash() -> str:
    return _digest({"suite": SUITE, "packages": sorted(PACKAGES), "recipe": BASE_RECIPE})


def image_inputs() -> dict[str, Any]:
    return {
        "base": base_hash(),
        "dockerfile": dockerfile().read_text(),
        "packages": sorted(PACKAGES),
        "python": PYTHON,
        "deps": [f"{d.metadata['Name']}=={d.version}" for d in dependency_dists()],
        "labnet": labnet_hash(),
        "host_python": sys.executable,  # the compatibility link below
        # Test hook: a different salt is a different image (how the tests simulate a code change
        # without editing labnet).
        "salt": os.environ.get("LABNET_IMAGE_SALT", ""),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def image_tag() -> str:
    return f"{REPO}:{_digest(image_inputs())}"


# -- building -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    tag: str
    id: str
    built: bool  # False: an image with this hash existed and was reused
    seconds: float


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    d = images_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".build.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _build_dir(tag: str) -> Iterator[Path]:
    """A temporary directory under images/, removed afterwards (mounts under it first)."""
    d = Path(tempfile.mkdtemp(prefix=f"build-{tag}-", dir=images_dir()))
    try:
        yield d
    finally:
        _umount_under(d)
        shutil.rmtree(d, ignore_errors=True)


def _umount_under(d: Path) -> None:
    """debootstrap mounts /proc and /sys in its target; a killed run can leave them mounted."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted((m for m in mounts if m.startswith(str(d) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def _images(client: Any, name: str) -> Any:
    import docker.errors

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _log(line: dict[str, Any]) -> None:
    with open(images_dir() / "builds.log", "a") as f:
        f.write(json.dumps({"time": time.time(), **line}) + "\n")


def build_count() -> int:
    """How many images this machine has built (what tests check to see a reuse)."""
    try:
        return len((images_dir() / "builds.log").read_text().splitlines())
    except OSError:
        return 0


def ensure_image(client: Any, *, force: bool = False, out: Any = None) -> ImageRef:
    """The node image for the current inputs: reused when it exists, else built."""
    t0 = time.monotonic()
    tag = image_tag()
    with _build_lock():
        img = None if force else _images(client, tag)
        if img is not None:
            return ImageRef(tag, img.id, False, round(time.monotonic() - t0, 3))
        base, base_built = _ensure_base(client, out)
        with _build_dir(tag.split(":")[1]) as ctx:
            _write_context(ctx)
            _say(out, f"building {tag} on {base}")
            import docker.errors

            try:
                img, _logs = client.images.build(
                    path=str(ctx), tag=tag, buildargs={"BASE": base}, rm=True, forcerm=True, pull=False,
                    # RUN needs the network only to apt-get onto the registry's base
                    network_mode="none" if base != REGISTRY_BASE else "host",
                    labels={"labnet.runtime.image": "node", "labnet.inputs": tag.split(":")[1]},
                )
            except docker.errors.BuildError as exc:
                lines = "".join(str(x.get("stream") or x.get("error") or "") for x in exc.build_log)
                raise LabnetError(f"building {tag} from {dockerfile()} on {base} failed: {exc.msg}\n"
                                  f"{lines[-2000:]}") from exc
        seconds = round(time.monotonic() - t0, 3)
        _log({"tag": tag, "base": base, "base_built": base_built, "seconds": seconds})
        _prune(client, keep=tag)
        return ImageRef(tag, img.id, True, seconds)


def _say(out: Any, msg: str) -> None:
    if out is not None:
        out.write(f"labnet image: {msg}\n")
        out.flush()


def _prune(client: Any, keep: str, newest: int = 3) -> None:
    """Keep the newest few node images (labs may still run older ones: those stay too)."""
    import docker.errors

    imgs = sorted(client.images.list(name=REPO), key=lambda i: i.attrs.get("Created", ""), reverse=True)
    for img in imgs[newest:]:
        if keep in img.tags:
            continue
        for t in img.tags:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(t, noprune=False)


def _registry_reachable(client: Any) -> bool:
    """True when debian:bookworm-slim is here or can be pulled."""
    import docker.errors

    if _images(client, REGISTRY_BASE) is not None:
        return True
    if os.environ.get("LABNET_IMAGE_OFFLINE"):
        return False
    try:
        client.images.pull(REGISTRY_BASE)
        return True
    except docker.errors.APIError:
        return False


def _ensure_base(client: Any, out: Any) -> tuple[str, bool]:
    """The image the Dockerfile builds FROM, and whether it was made just now."""
    tag = f"{BASE_REPO}:{base_hash()}"
    if _images(client, tag) is not None:
        return tag, False
    tarball = images_dir() / f"base-{base_hash()}.tar"
    made = False
    if not tarball.exists():
        if _registry_reachable(client):
            return REGISTRY_BASE, False
        _debootstrap(tarball, out)
        made = True
    _say(out, f"importing {tarball} as {tag}")
    client.api.import_image(src=str(tarball), repository=BASE_REPO, tag=base_hash(),
                            changes=['CMD ["sleep", "infinity"]'])
    return tag, made


def _debootstrap(tarball: Path, out: Any) -> None:
    exe = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if exe is None:
        raise LabnetError("no registry is reachable and debootstrap is missing: "
                          "install it with `apt-get install debootstrap`")
    with _build_dir("base") as d:
        rootfs = d / "rootfs"
        debs = images_dir() / "debs"  # downloads kept: a recipe change re-installs, not re-downloads
        debs.mkdir(exist_ok=True)
        argv = [exe, "--variant=minbase", f"--include={','.join(PACKAGES)}", f"--cache-dir={debs}",
                SUITE, str(rootfs), mirror()]
        _say(out, " ".join(argv))
        t0 = time.monotonic()
        # No fsync per file in dpkg: a crash only loses a build directory that is thrown away anyway.
        env = {**os.environ, "DPKG_FORCE": "unsafe-io"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (rootfs / "debootstrap" / "debootstrap.log")
            detail = tail.read_text(errors="replace")[-2000:] if tail.exists() else proc.stderr[-2000:]
            raise LabnetError(f"debootstrap {SUITE} from {mirror()} failed (exit {proc.returncode}):\n{detail}")
        for sub in TRIM:
            p = rootfs / sub
            if p.is_dir():
                shutil.rmtree(p)
                p.mkdir()
        tmp = tarball.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tmp), "."], check=True)
        os.replace(tmp, tarball)
        _say(out, f"debootstrap done in {time.monotonic() - t0:.1f}s")


def _write_context(ctx: Path) -> None:
    """packages.txt, deps/, labnet/, bin/ and the Dockerfile: what docker/Dockerfile copies."""
    if f"python{sys.version_info.major}.{sys.version_info.minor}" != PYTHON:
        raise LabnetError(f"the node image runs {PYTHON}; labnet's dependencies are copied from this "
                          f"interpreter ({sys.version.split()[0]}), whose compiled modules would not load there")
    shutil.copy(dockerfile(), ctx / "Dockerfile")
    (ctx / "packages.txt").write_text(" ".join(PACKAGES) + "\n")
    deps = ctx / "deps"
    deps.mkdir()
    for dist in dependency_dists():
        for f in dist.files or []:
            rel = Path(str(f))
            if rel.parts[0] == ".." or "__pycache__" in rel.parts:
                continue  # console scripts (bin/) and bytecode
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                dst = deps / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    wheel = _labnet_wheel(ctx / "wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(ctx / "labnet")
    shutil.rmtree(ctx / "wheel")
    # Code that starts labnet in a machine with this host's sys.executable (the netns runtime's
    # way) finds that path in the container too: a link to the image's python3.
    shim = ctx / "shim"
    shim.mkdir()
    if os.path.isabs(sys.executable) and not sys.executable.startswith("/usr/bin/"):
        link = shim / sys.executable.lstrip("/")
        link.parent.mkdir(parents=True)
        link.symlink_to("/usr/bin/python3")
    bindir = ctx / "bin"
    bindir.mkdir()
    for ep in _entry_points(ctx / "labnet"):
        module, func = ep["value"].split(":")
        script = bindir / ep["name"]
        script.write_text(f"#!/usr/bin/python3 -s\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)


def _labnet_wheel(outdir: Path) -> Path:
    """A wheel (PEP 427) of the working tree's labnet package, written directly.

    Not `pip wheel`: that needs setuptools' build environment (6 s, and PyPI unless `wheel` is
    installed), while the package is pure Python and its metadata is a few lines of pyproject.
    """
    outdir.mkdir()
    meta = _project_metadata()
    name, version = "labnet", meta["version"]
    dist_info = f"{name}-{version}.dist-info"
    members: list[tuple[str, bytes]] = []
    for f in labnet_files():
        if f.name != "pyproject.toml":
            members.append((str(f.relative_to(SOURCE_ROOT)), f.read_bytes()))
    members += [
        (f"{dist_info}/METADATA", meta["METADATA"].encode()),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: labnet.runtime.image\nRoot-Is-Purelib: true\n"
                               b"Tag: py3-none-any\n"),
        (f"{dist_info}/entry_points.txt", meta["entry_points"].encode()),
    ]
    record = [f"{n},sha256={_b64sha(d)},{len(d)}" for n, d in members] + [f"{dist_info}/RECORD,,"]
    members.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    wheel = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for n, d in members:
            z.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), d)
    return wheel


def _b64sha(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _project_metadata() -> dict[str, str]:
    """Version, METADATA and entry_points.txt from pyproject.toml (else from the installed labnet)."""
    pyproject = SOURCE_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        dist = metadata.distribution("labnet")
        return {"version": dist.version, "METADATA": dist.read_text("METADATA") or "",
                "entry_points": dist.read_text("entry_points.txt") or ""}
    import tomllib

    proj = tomllib.loads(pyproject.read_text())["project"]
    lines = ["Metadata-Version: 2.1", f"Name: {proj['name']}", f"Version: {proj['version']}",
             f"Summary: {proj.get('description', '')}"]
    if "requires-python" in proj:
        lines.append(f"Requires-Python: {proj['requires-python']}")
    lines += [f"Requires-Dist: {r}" for r in proj.get("dependencies", [])]
    eps = []
    groups = {"console_scripts": proj.get("scripts", {}), **proj.get("entry-points", {})}
    for group, items in groups.items():
        if items:
            eps.append(f"[{group}]")
            eps += [f"{k} = {v}" for k, v in items.items()]
            eps.append("")
    return {"version": proj["version"], "METADATA": "\n".join(lines) + "\n", "entry_points": "\n".join(eps)}


def _entry_points(site: Path) -> list[dict[str, str]]:
    import configparser

    found = list(site.glob("labnet-*.dist-info/entry_points.txt"))
    if not found:
        return []
    cp = configparser.ConfigParser(delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(found[0])
    if not cp.has_section("console_scripts"):
        return []
    return [{"name": k, "value": v.strip()} for k, v in cp.items("console_scripts")]


# -- CLI ----------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("image", help="the docker runtime's node image (build, show)",
                              description="Build or show the node image of the docker runtime.")
    sub = p.add_subparsers(dest="image_cmd", required=True)
    b = sub.add_parser("build", help="build the node image unless one with the same inputs exists",
                       description="Build labnet-node:<hash of inputs> from docker/Dockerfile (on a debootstrap "
                                   "base where no registry is reachable); reuse it while the inputs are unchanged.")
    b.add_argument("--force", action="store_true", help="rebuild even if an image with these inputs exists")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=_cmd_build)
    s = sub.add_parser("show", help="the image tag the current inputs give, and whether it exists",
                       description="Print the node image tag for the current inputs and whether it is built.")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_show)


def _cmd_build(args: argparse.Namespace) -> int:
    from labnet.runtime.dockerd import client, ensure_dockerd

    if os.geteuid() != 0:
        raise BadInput("labnet image build needs root (it runs labnet's dockerd and debootstrap)")
    ensure_dockerd()
    ref = ensure_image(client(timeout=600), force=args.force, out=None if args.json else sys.stderr)
    if args.json:
        print(json.dumps(ref.__dict__))
    else:
        print(f"{ref.tag} {ref.id[:19]} {'built' if ref.built else 'reused'} in {ref.seconds:.1f}s")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    tag = image_tag()
    tarballs = sorted(str(p) for p in images_dir().glob("base-*.tar"))
    info = {"tag": tag, "inputs": {k: v for k, v in image_inputs().items() if k != "dockerfile"},
            "base_tarballs": tarballs}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(tag)
    return 0

