"""The real kubectl (and the ``kubectl spotrun`` plugin through kubectl's plugin mechanism)
run against the local cluster, and its tables read back as rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".cache" / "bin" / "kubectl"


def kubectl(kubeconfig: Path, *args: str) -> str:
    """kubectl's stdout; the plugin alone when kubectl itself is not built."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    cmd = [str(KUBECTL), *args]
    if not KUBECTL.exists():
        assert args[0] == "spotrun", "kubectl itself is needed for kubectl get"
        cmd = [str(BIN / "kubectl-spotrun"), *args[1:]]
    done = subprocess.run(
        cmd,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def cells(output: str) -> list[dict[str, str]]:
    """kubectl's table as dicts; columns cut at the header's column starts."""
    header, *rows = output.rstrip("\n").splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    names = [header[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
    return [
        {n: row[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for row in rows
    ]
