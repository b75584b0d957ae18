"""Launcher mode: start local workers through torchrun and keep the contract's exit codes.

A program's entry point (the built-in trainer's ``python -m spotrun_lm``) calls
:func:`launch` with its own module, which torchrun then runs once per local rank.

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
from spotrun_trainer import master_wait, phases

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


def decide_exit(
    launcher_rc: int, worker_codes: Sequence[int], nproc: int, *, unrecorded_ok: bool = False
) -> int:
    """0 when every worker finished; 143 when all stopped after a checkpoint (or finished);
    EXIT_FENCED when a worker found its attempt fenced by a newer one, else EXIT_PEER_LOST
    when a worker saw a peer rank vanish, and no worker reported an error of its own
    (torchrun then stops the rest, which may report nothing: the pod must still say why,
    not fail as the application). ``unrecorded_ok``: the workers are a user's script,
    which records only its stops (the integrations do), so torchrun's own 0 (every worker
    exited 0) is the answer when nothing was recorded."""
    fenced, lost = contract.EXIT_FENCED, contract.EXIT_PEER_LOST
    ok = (contract.EXIT_DONE, contract.EXIT_STOPPED, lost, fenced)
    for code in (fenced, lost):
        if code in worker_codes and all(c in ok for c in worker_codes):
            return code
    if len(worker_codes) == nproc:
        if all(c == contract.EXIT_DONE for c in worker_codes):
            return contract.EXIT_DONE
        if all(c in (contract.EXIT_DONE, contract.EXIT_STOPPED) for c in worker_codes):
            return contract.EXIT_STOPPED
    if unrecorded_ok and launcher_rc == 0 and not worker_codes:
        return contract.EXIT_DONE
    return launcher_rc if launcher_rc != 0 else 1


def torchrun_command(
    argv: Sequence[str],
    nproc: int,
    grace: float,
    env: Mapping[str, str],
    *,
    module: str = "",
    script: str = "",
) -> list[str]:
    """torchrun running ``python -m <module> <argv>`` (or ``python <script> <argv>``) in
    each of ``nproc`` workers."""
    if bool(module) == bool(script):
        raise ValueError("torchrun_command: give exactly one of module and script")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--shutdown-timeout={max(1, int(grace))}",
    ]
    if "PET_NNODES" not in env and "PET_MASTER_ADDR" not in env:
        cmd.append("--standalone")  # single node; multi-node reads torchrun's PET_* env
    return [*cmd, *(["-m", module] if module else [script]), *argv]


def launch(
    argv: Sequence[str], nproc: int, grace: float, *, module: str = "", script: str = ""
) -> int:
    """Run ``module`` (or ``script``) with ``argv`` in ``nproc`` torchrun workers; their
    exit, as one code."""
    exit_dir = tempfile.mkdtemp(prefix="spotrun-exit-")
    env = {**os.environ, ENV_EXIT_DIR: exit_dir}
    # The workers' restart phases count from this process's start (phases.py).
    started = phases.launch_t0(env) or phases.process_start_time()
    if started is not None:
        env[phases.ENV_LAUNCH_T0] = f"{started:.3f}"
    master = master_wait.launcher_store(env)
    if master is not None:  # torchrun's agent on a worker node joins the master's agent
        master_wait.wait_for_master(master, env)
    cmd = torchrun_command(argv, nproc, grace, env, module=module, script=script)
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
    code = decide_exit(rc, codes, nproc, unrecorded_ok=bool(script))
    log.info("torchrun exited %d; workers %s; exiting %d", rc, codes, code)
    return code
