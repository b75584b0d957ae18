"""Where the local cluster's binaries, module-cache files and state live."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
BIN_DIR = CACHE_DIR / "bin"
CLUSTER_DIR = CACHE_DIR / "cluster"
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
KWOK_WORKDIR = CACHE_DIR / "kwok"
# The kube-apiserver audit log (Metadata level; control-plane components excluded).
AUDIT_LOG = KWOK_WORKDIR / "clusters" / "spotrun" / "logs" / "audit.log"
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"


def binary(name: str) -> Path:
    """Path of a binary built by hack/build-binaries.sh."""
    return BIN_DIR / name


@functools.cache
def versions() -> dict[str, str]:
    """The pinned versions in hack/versions.env."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@functools.cache
def go_mod_cache() -> Path:
    """Go's module cache (GOMODCACHE)."""
    env = os.environ.get("GOMODCACHE")
    if env:
        return Path(env)
    out = subprocess.run(
        ["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(out)


def module_dir(module: str, version: str) -> Path:
    """Source folder of ``module@version`` in the module cache, downloading it if needed.

    Files the cluster needs from upstream (the PyTorchJob CRD, kwok's default stages, the
    training operator's webhook manifest) are read from here and never copied into the repo.
    """
    path = go_mod_cache() / f"{_escape(module)}@{version}"
    if not path.is_dir():
        subprocess.run(
            ["go", "mod", "download", f"{module}@{version}"],
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
            cwd=REPO_ROOT / "hack" / "gomod" / "etcd",
        )
    return path


def _escape(module: str) -> str:
    # The module cache spells upper-case letters as "!" + lower case.
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in module)
