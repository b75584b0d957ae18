"""The real kubectl (and the ``kubectl spotrun`` plugin through kubectl's plugin mechanism)
run against the local cluster, and its tables read back as rows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

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


def cli_env(kubeconfig: Path) -> dict[str, str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": path, "PYTHONUNBUFFERED": "1"}


def torchx(kubeconfig: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN / "torchx"), *args],
        env=cli_env(kubeconfig),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if ok:
        assert done.returncode == 0, f"torchx {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def spotrun_cmd() -> list[str]:
    """``kubectl spotrun`` through the real kubectl when it is built, else the plugin."""
    return [str(KUBECTL), "spotrun"] if KUBECTL.exists() else [str(BIN / "kubectl-spotrun")]


class Follower:
    """A log-following command in the background; its output read as it comes."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in [*self.out, *self.err])

    def wait(self, timeout: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        for r in self.readers:
            r.join(timeout=10)
        return rc, "".join(self.out), "".join(self.err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
