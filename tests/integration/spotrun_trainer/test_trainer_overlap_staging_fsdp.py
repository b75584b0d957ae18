"""Overlapped staging of async sharded saves with real FSDP trainer processes (torchrun,
gloo): every checkpoint of a run whose async saves stage the state in the background must
equal bitwise the checkpoint a run with synchronous saves wrote at the same step. The
unit tests (tests/unit/spotrun_trainer/test_trainer_overlap_staging.py) test the fence in
process."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch
from trainer_helpers import (
    COMMON_ARGS,
    EVERY,
    MAX_STEPS,
    PYTHON,
    START_DEADLINE,
    assert_bitwise_equal,
    trainer_env,
)

from spotrun_trainer.checkpoint import verify
from spotrun_trainer.sharded import read_full
from spotrun_trainer.testhooks import ENV_STAGING_DELAY


def _fsdp_run(folder: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    ckpt = folder / "ckpt"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "spotrun_lm", *COMMON_ARGS, "--parallel", "fsdp",
           "--global-batch-size", "8", "--data.val-fraction", "0.2",
           "--model.kind", "causal_lm", "--checkpoint.keep", str(MAX_STEPS),
           "--checkpoint.dir", str(ckpt), *extra]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "run.log", "wb") as out:
        run = subprocess.run(cmd, cwd=folder, env=trainer_env(**(env or {})), stdout=out,
                             stderr=subprocess.STDOUT, timeout=START_DEADLINE)  # fmt: skip
    rc = run.returncode
    assert rc == 0, (folder / "run.log").read_text()[-4000:]
    return ckpt


def _state(ckpt: Path, step: int) -> dict[str, Any]:
    folder = ckpt / f"step-{step}"
    assert verify(folder, step) is None
    state: dict[str, Any] = {"shared": torch.load(folder / "shared.pt", weights_only=True)}
    for f in sorted(folder.glob("rank-*.pt")):
        state[f.stem] = torch.load(f, weights_only=True)
    state["dcp"] = read_full(folder / "dcp")
    return state


def test_overlapped_fsdp_checkpoints_equal_synchronous_ones(tmp_path: Path) -> None:
    """Two FSDP ranks (torchrun, gloo, dropout on): every checkpoint of a run whose async
    saves stage in the background, each copy held 1 s so that the next step's update
    would overtake it without the fence, equals bitwise the one a run with synchronous
    saves wrote at the same step (model, AdamW, RNG per rank, sampler position)."""
    sync = _fsdp_run(tmp_path / "sync")
    overlap = _fsdp_run(tmp_path / "overlap", "--checkpoint.async-save",
                        "--checkpoint.async-mode", "process",
                        env={ENV_STAGING_DELAY: "1"})  # fmt: skip
    steps = list(range(EVERY, MAX_STEPS + 1, EVERY))
    for step in steps:
        assert_bitwise_equal(_state(sync, step), _state(overlap, step), f"step-{step}")
