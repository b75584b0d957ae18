"""``spotrun-operator`` as a subprocess of an e2e test: scoped to the test's namespace,
killable with SIGKILL, its log kept for the failure report."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
# The operator under test runs from this checkout's sources, whatever the venv's install
# points at (an editable install may name another checkout).
SOURCES = tuple(str(ROOT / folder) for folder in ("api", "operator"))
# Short delays so a whole recovery takes seconds; the logic is the production one.
FAST_FLAGS = (
    "--pricing=table",
    "--backoff-base-seconds=1",
    "--backoff-jitter=0",
    "--failure-settle-seconds=1",
    "--config-error-grace-seconds=3",
    "--resync-seconds=5",
    # No --node-lost-grace-seconds: the operator's default (30 s) applies, so a node that
    # stops heartbeating is lost through the node lifecycle controller's own Ready=Unknown
    # and unreachable taints, as in production.
)


class Operator:
    """``spotrun-operator`` in a subprocess; its log goes to a file the test can show."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, extra: tuple[str, ...]):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}  # over the test's environment (POD_NAME, ...)

    def command(self) -> list[str]:
        exe = shutil.which("spotrun-operator", path=str(Path(sys.executable).parent))
        base = [exe] if exe else [sys.executable, "-m", "spotrun_operator.main"]
        return [*base, "--namespace", self.namespace, "--metrics-port=0", *FAST_FLAGS, *self.extra]

    def start(self) -> Operator:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*SOURCES, *inherited]),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        log = self.log_path.open("ab")
        log.write(f"\n=== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write, exactly like an OOM-killed pod."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        useful = [t for t in text if "Handler '" not in t]
        return "\n".join(useful[-lines:])
