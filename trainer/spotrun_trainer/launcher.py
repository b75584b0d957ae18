"""Launcher mode: start local workers through torchrun and keep the contract's exit codes.

torchrun exits 1 with a traceback when it is SIGTERMed, whatever its workers did, and
gives workers only 30 s before SIGKILL by default. In a pod the launcher is PID 1: it
forwards SIGTERM to torchrun, sets torchrun's shutdown timeout to the grace period, and
derives its own exit code from what each worker reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from spotrun_api import contract

log = logging.getLogger(__name__)

ENV_EXIT_DIR = "SPOTRUN_EXIT_STATUS_DIR"


def is_worker(env: Mapping[str, str]) -> bool:
    """True inside a torchrun worker (torchrun sets LOCAL_RANK and TORCHELASTIC_RUN_ID)."""
    return "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def record_exit(code: int, env: Mapping[str, str] = os.environ) -> None:
    """Worker side: leave the exit code where the launcher reads it."""
    folder = env.get(ENV_EXIT_DIR)
    if folder:
        path = Path(folder) / f"rank-{env.get('LOCAL_RANK', '0')}"
        path.write_text(str(code))


def decide_exit(launcher_rc: int, worker_codes: Sequence[int], nproc: int) -> int:
    """0 when every worker finished; 143 when all stopped after a checkpoint (or finished);
    EXIT_PEER_LOST when a worker saw a peer rank vanish and no worker reported an error of
    its own (torchrun then stops the rest, which may report nothing: the pod must still
    say a peer was lost, not fail as the application)."""
    lost = contract.EXIT_PEER_LOST
    ok = (contract.EXIT_DONE, contract.EXIT_STOPPED, lost)
    if lost in worker_codes and all(c in ok for c in worker_codes):
        return lost
    if len(worker_codes) == nproc:
        if all(c == contract.EXIT_DONE for c in worker_codes):
            return contract.EXIT_DONE
        if all(c in (contract.EXIT_DONE, contract.EXIT_STOPPED) for c in worker_codes):
            return contract.EXIT_STOPPED
    return launcher_rc if launcher_rc != 0 else 1


# What the workers run: spotrun's CLI, unless a script (``launch(..., target=[path])``)
# that calls ``record_exit`` with its exit code, as spotrun's CLI does.
DEFAULT_TARGET = ("-m", "spotrun_trainer")


def torchrun_command(
    argv: Sequence[str],
    nproc: int,
    grace: float,
    env: Mapping[str, str],
    target: Sequence[str] = DEFAULT_TARGET,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--shutdown-timeout={max(1, int(grace))}",
    ]
    if "PET_NNODES" not in env and "PET_MASTER_ADDR" not in env:
        cmd.append("--standalone")  # single node; multi-node reads torchrun's PET_* env
    return [*cmd, *target, *argv]


def launch(
    argv: Sequence[str], nproc: int, grace: float, target: Sequence[str] = DEFAULT_TARGET
) -> int:
    exit_dir = tempfile.mkdtemp(prefix="spotrun-exit-")
    env = {**os.environ, ENV_EXIT_DIR: exit_dir}
    cmd = torchrun_command(argv, nproc, grace, env, target)
    log.info("launching %d workers: %s", nproc, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, frame: FrameType | None) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = []
    for f in sorted(Path(exit_dir).glob("rank-*")):
        with contextlib.suppress(ValueError):
            codes.append(int(f.read_text()))
    shutil.rmtree(exit_dir, ignore_errors=True)
    code = decide_exit(rc, codes, nproc)
    log.info("torchrun exited %d; workers %s; exiting %d", rc, codes, code)
    return code
