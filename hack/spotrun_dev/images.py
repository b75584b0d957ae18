"""The spotrun container images, built daemonless (buildah/podman) for the local cluster.

* base: Debian bookworm made by ``mmdebstrap`` from this machine's apt sources and imported
  into containers-storage, tagged by a hash of its recipe (built once per machine);
* pause: the sandbox image, ``build/pause/linux/pause.c`` of the pinned Kubernetes module
  compiled ``gcc -static`` into a scratch image;
* operator, trainer: ``buildah bud --layers`` of their Dockerfiles on that base, pip using
  the host's index configuration (passed at build time only, never written to a file).

Each image is exported as a docker-archive tarball (``ctr images import`` reads it) into a
machine-level cache keyed by image id, and only when the id is new. ``python -m
spotrun_dev.images`` builds them all and prints figures.
"""

from __future__ import annotations

import ast
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotrun_dev import paths

SUITE = "bookworm"
BASE_PACKAGES = ("ca-certificates", "passwd", "procps", "python3", "python3-venv")
# Documentation and translations are of no use in the images.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
REPO = "localhost/spotrun"
TAG = "dev"
PROJECT_IMAGES = ("operator", "trainer")
# Host pip settings handed to the builds as build args (the Dockerfiles declare them).
PIP_ARGS = ("index-url", "extra-index-url", "trusted-host", "default-timeout")
CERT_MOUNT = "/run/spotrun/pip-cert.pem"
WHEELS_MOUNT = "/run/spotrun/wheels"
APT_SOURCES = Path("/etc/apt/sources.list")


@dataclass(frozen=True)
class ImageArchive:
    ref: str  # e.g. "localhost/spotrun/trainer:dev"
    archive: Path  # docker-archive tarball holding ref (RepoTags)
    image_id: str  # the builder's image id (changes iff content changes)


def cache_dir() -> Path:
    """Machine-level folder of the exported tarballs (shared by every clone)."""
    env = os.environ.get("SPOTRUN_IMAGE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "spotrun" / "images"


def requirements(pyproject: Mapping[str, Any], extra: str) -> list[str]:
    """Third-party pins of an image: [project] dependencies + one extra, sorted.

    The Dockerfiles compute the same list in their "requirements" stage.
    """
    project = pyproject["project"]
    pins = [*project["dependencies"], *project["optional-dependencies"][extra]]
    return sorted(set(pins))


# Folders holding the project's top-level packages (pyproject's packages.find "where").
SOURCE_ROOTS = ("api", "operator", "trainer", "hack")
# The package each project image runs (its entry point's).
IMAGE_ENTRY = {"operator": "spotrun_operator", "trainer": "spotrun_lm"}


def copied_packages(dockerfile: str) -> set[str]:
    """The project packages a Dockerfile copies into its wheel build context
    (``COPY <root>/<package> ./<root>/<package>``): what its wheel, so its image, holds."""
    return set(re.findall(r"^COPY [\w-]+/(spotrun_\w+) ", dockerfile, re.MULTILINE))


def imported_modules(package: Path) -> set[str]:
    """Top-level names of every absolute import in ``package``'s modules."""
    names: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def package_closure(entry: str, root: Path) -> set[str]:
    """``entry`` and every project package it imports, transitively: what its image needs."""
    found, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        dirs = [root / r / name for r in SOURCE_ROOTS if (root / r / name).is_dir()]
        for d in dirs:
            todo += [m for m in imported_modules(d) if m.startswith("spotrun_")]
    return found


def base_ref(packages: Sequence[str] = BASE_PACKAGES, suite: str = SUITE) -> str:
    """Tag of the base image, keyed by its recipe (packages, dpkg options, environment)."""
    recipe = json.dumps([suite, sorted(packages), DPKG_OPTIONS, BASE_ENV])
    return f"{REPO}/base:{suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def parse_pip_config(text: str) -> dict[str, str]:
    """``pip config list`` output as {key: value}; later lines (environment) win."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"[^.=]*\.([\w-]+)=(['\"])(.*)\2", line.strip())
        if match:
            out[match[1]] = match[3]
    return out


def pip_build_options(config: Mapping[str, str]) -> list[str]:
    """buildah options giving the build the host's pip index configuration.

    Values go in as build args; a CA bundle and a local wheel folder are mounted read-only
    into RUN steps (files stay on the host, and nothing is written to the repository).
    """
    opts: list[str] = []
    for key in PIP_ARGS:
        if config.get(key):
            opts += ["--build-arg", f"PIP_{key.upper().replace('-', '_')}={config[key]}"]
    cert = config.get("cert", "")
    if cert and Path(cert).is_file():
        opts += ["-v", f"{Path(cert).resolve()}:{CERT_MOUNT}:ro"]
        opts += ["--build-arg", f"PIP_CERT={CERT_MOUNT}"]
    links = config.get("find-links", "")
    if links and "://" not in links and Path(links).is_dir() and any(Path(links).iterdir()):
        opts += ["-v", f"{Path(links).resolve()}:{WHEELS_MOUNT}:ro"]
        opts += ["--build-arg", f"PIP_FIND_LINKS={WHEELS_MOUNT}"]
    return opts


def archive_path(name: str, image_id: str, cache: Path) -> Path:
    return cache / f"{name}-{image_id.removeprefix('sha256:')[:16]}.tar"


def run_logged(cmd: Sequence[str], log: Path | None = None, **kwargs: Any) -> str:
    """Run ``cmd``; its output goes to ``log`` when given (shown in the error if it fails)."""
    if log is None:
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
        return str(proc.stdout)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (log {log}):\n{tail}")
    return ""


def image_id(ref: str) -> str | None:
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def image_size(ref: str) -> int:
    return int(run_logged(["podman", "image", "inspect", "--format", "{{.Size}}", ref]).strip())


def _apt_sources() -> list[str]:
    """This machine's apt source files, handed to mmdebstrap as they are."""
    found = [APT_SOURCES] if APT_SOURCES.is_file() and APT_SOURCES.stat().st_size else []
    parts = APT_SOURCES.with_name("sources.list.d")
    found += sorted(p for p in parts.glob("*") if p.suffix in (".list", ".sources"))
    if not found:
        raise RuntimeError("no apt sources on this machine for mmdebstrap")
    return [str(p) for p in found]


def ensure_base(packages: Sequence[str] = BASE_PACKAGES, name: str = "base") -> str:
    """A Debian image of ``packages`` (minbase + them), built once per recipe."""
    ref = base_ref(packages).replace(f"{REPO}/base:", f"{REPO}/{name}:")
    if image_id(ref):
        return ref
    log = cache_dir() / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    debootstrap = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    debootstrap += [f"--dpkgopt={opt}" for opt in DPKG_OPTIONS]
    debootstrap += [SUITE, "-", *_apt_sources()]
    changes = [arg for env in BASE_ENV for arg in ("--change", f"ENV {env}")]
    with log.open("w") as err:
        mm = subprocess.Popen(debootstrap, stdout=subprocess.PIPE, stderr=err)
        imp = subprocess.run(
            ["podman", "import", "--quiet", *changes, "-", ref],
            stdin=mm.stdout,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        assert mm.stdout is not None
        mm.stdout.close()
        if mm.wait() or imp.returncode:
            subprocess.run(["podman", "rmi", "--force", ref], capture_output=True)
            raise RuntimeError(f"building {ref} failed (log {log})")
    return ref


def build_pause() -> str:
    """The sandbox image from the pinned Kubernetes' pause.c (never copied into the repo)."""
    src = paths.module_dir("k8s.io/kubernetes", paths.versions()["KUBE_VERSION"]) / "build/pause"
    match = re.search(r"^TAG \?= (\S+)$", (src / "Makefile").read_text(), re.MULTILINE)
    version = match[1] if match else "0"
    ref = f"{REPO}/pause:{version}"
    with tempfile.TemporaryDirectory(prefix="spotrun-pause-") as tmp:
        ctx = Path(tmp)
        flags = ["-Os", "-Wall", "-Werror", "-static", "-s", f"-DVERSION=v{version}-spotrun"]
        run_logged(["gcc", *flags, "-o", str(ctx / "pause"), str(src / "linux/pause.c")])
        (ctx / "Containerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        )
        log = cache_dir() / "logs" / "pause.log"
        run_logged(["buildah", "bud", "--layers", "-t", ref, str(ctx)], log=log)
    return ref


# The Kubeflow training operator's PyTorch init container (``--pytorch-init-container-image``,
# default alpine:3.10, which no registry here serves) runs
# ``sh -c '... seq ... nslookup <master> ... sleep ...'`` in every worker pod. A Debian
# minbase with ISC's nslookup (bind9-dnsutils) provides exactly those. (busybox's nslookup
# does not fit: it queries every search domain and fails if any of them answers NXDOMAIN.)
PYTORCH_INIT_PACKAGES = ("bind9-dnsutils",)
PYTORCH_INIT_REF = f"{REPO}/pytorch-init:{SUITE}"


# It runs as a non-root user (restricted Pod Security: manifests/eks/pytorch-init-container.yaml
# also sets runAsUser, for images like upstream's alpine whose user is root).
PYTORCH_INIT_USER = "65532:65532"


def build_pytorch_init() -> str:
    """The init-container image: Debian minbase + ISC nslookup, user 65532, a fixed ref."""
    base = ensure_base(PYTORCH_INIT_PACKAGES, "pytorch-init-base")
    with tempfile.TemporaryDirectory(prefix="spotrun-pytorch-init-") as tmp:
        (Path(tmp) / "Containerfile").write_text(f"FROM {base}\nUSER {PYTORCH_INIT_USER}\n")
        log = cache_dir() / "logs" / "pytorch-init.log"
        run_logged(["buildah", "bud", "--layers", "-t", PYTORCH_INIT_REF, tmp], log=log)
    return PYTORCH_INIT_REF


def host_pip_config() -> dict[str, str]:
    """This machine's pip settings (files and PIP_* environment), as pip itself reads them."""
    try:
        return parse_pip_config(run_logged([sys.executable, "-m", "pip", "config", "list"]))
    except (OSError, subprocess.CalledProcessError):  # a venv without pip
        env = {k[4:].lower().replace("_", "-"): v for k, v in os.environ.items()}
        return {k: v for k, v in env.items() if k in (*PIP_ARGS, "cert", "find-links")}


def build_project(name: str, base: str) -> str:
    """``buildah bud --layers`` of operator/ or trainer/Dockerfile on ``base``."""
    ref = f"{REPO}/{name}:{TAG}"
    cmd = ["buildah", "bud", "--layers", "--network", "host", "-f", f"{name}/Dockerfile"]
    cmd += ["--build-arg", f"BASE_IMAGE={base}", *pip_build_options(host_pip_config())]
    run_logged(
        [*cmd, "-t", ref, "."], log=cache_dir() / "logs" / f"{name}.log", cwd=paths.REPO_ROOT
    )
    return ref


def export(name: str, ref: str) -> ImageArchive:
    """The docker-archive of ``ref``, written only when its image id is new."""
    ident = image_id(ref)
    if ident is None:
        raise RuntimeError(f"{ref} is not in containers-storage")
    cache = cache_dir()
    path = archive_path(name, ident, cache)
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        # The superseded archive goes first: two trainer archives (~6 GB each) side by side
        # once filled the disk of a machine that had room for one.
        for stale in [*cache.glob(f"{name}-*.tar"), *cache.glob(f"{name}-*.tmp")]:
            stale.unlink()
        tmp = path.with_suffix(".tmp")
        require_free_space(cache, image_size(ref), what=f"the {name} image's archive")
        run_logged(["podman", "save", "--quiet", "--format", "docker-archive", "-o", str(tmp), ref])
        tmp.rename(path)
    return ImageArchive(ref=ref, archive=path, image_id=ident)


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Fail with the figures, not a builder's exit status, when ``folder`` lacks room."""
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1:
        raise RuntimeError(
            f"{what} needs about {needed / 1e9:.1f} GB in {folder}; {free / 1e9:.1f} GB free"
        )


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One build at a time per machine (clones share containers-storage and the cache)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


ALL_IMAGES = ("pause", "pytorch-init", "operator", "trainer")


def ensure_images(names: Sequence[str] = ALL_IMAGES) -> dict[str, ImageArchive]:
    """Build (layer-cached) and export the named images; see the module docstring."""
    unknown = set(names) - set(ALL_IMAGES)
    if unknown:
        raise ValueError(f"unknown images: {sorted(unknown)}")
    out: dict[str, ImageArchive] = {}
    with machine_lock():
        base = ensure_base() if set(names) & set(PROJECT_IMAGES) else ""
        for name in names:
            if name == "pause":
                ref = build_pause()
            elif name == "pytorch-init":
                ref = build_pytorch_init()
            else:
                ref = build_project(name, base)
            out[name] = export(name, ref)
    return out


def main() -> None:
    started = time.monotonic()
    with machine_lock():
        base = ensure_base()
    print(f"base      {base}  {time.monotonic() - started:.1f}s", flush=True)
    for name in ALL_IMAGES:
        t0 = time.monotonic()
        image = ensure_images([name])[name]
        took = time.monotonic() - t0
        size, tar = image_size(image.ref), image.archive.stat().st_size
        print(
            f"{name:9} {image.ref}  id {image.image_id[:12]}  {took:.1f}s  "
            f"image {size / 1e6:.1f} MB  archive {tar / 1e6:.1f} MB  {image.archive}",
            flush=True,
        )
    print(f"total {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
