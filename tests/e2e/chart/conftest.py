"""Fixtures of the chart tests: the real helm (built from Go modules) and promtool (Debian).

A missing tool is installed by the project's own scripts. If that fails the tests fail
(never skip), so no run passes without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chartkit import HELM, PROMTOOL, REPO_ROOT


def _missing(what: str, hint: str) -> None:
    pytest.fail(f"{what} is missing: {hint}", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary; built with `hack/build-binaries.sh tools` when missing."""
    if not os.access(HELM, os.X_OK) and shutil.which("go"):
        subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "build-binaries.sh"), "tools"],
            cwd=REPO_ROOT,
            check=False,
            timeout=3600,
        )
    if not os.access(HELM, os.X_OK):
        _missing(str(HELM), "run `bash hack/build-binaries.sh tools` (needs Go)")
    return Path(HELM)


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Debian's promtool; installed with hack/install-prometheus.sh when missing (as root)."""
    if not os.access(PROMTOOL, os.X_OK) and os.geteuid() == 0:
        subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "install-prometheus.sh")],
            cwd=REPO_ROOT,
            check=False,
            timeout=1800,
        )
    if not os.access(PROMTOOL, os.X_OK):
        _missing(str(PROMTOOL), "run `hack/install-prometheus.sh` as root (Debian's prometheus)")
    return Path(PROMTOOL)


@pytest.fixture(scope="session")
def prometheus_bin(promtool: Path) -> Path:
    """Debian's prometheus server binary (same package as promtool)."""
    binary = Path("/usr/bin/prometheus")
    if not os.access(binary, os.X_OK):
        _missing(str(binary), "run `hack/install-prometheus.sh` as root")
    return binary
