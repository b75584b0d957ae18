"""A SIGTERM that arrives while a paced background save is being written: the write drops
its pace, the stop's checkpoint commits, the run exits 143 and resumes bitwise. Real
processes (spotrun's launcher, torchrun, two FSDP ranks, DCP's checkpoint process), a
real signal.

The pace is 0.01 MB/s, so a paced write of one 8 MiB buffer would take 14 minutes: the
stop commits within the test's deadlines only if the write in flight hurries, and the
resumed run reaches its end only if the run's end hurries its last paced write too."""

from __future__ import annotations

from pathlib import Path

from test_trainer_fsdp import LM_ARGS, RunFn, fsdp_cmd, load_fsdp_checkpoint
from test_trainer_resume import _assert_resumed_at, _interrupt
from trainer_helpers import (
    EVERY,
    MAX_STEPS,
    START_DEADLINE,
    assert_bitwise_equal,
    committed,
    poll_until,
)

from spotrun_api import contract
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.shard_writer import DIRECT_BUFFER
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

NPROC = 2
# ~3.2M parameters: each rank's shard (weights and both AdamW moments) is ~19 MB, more
# than two of the writer's 8 MiB buffers, and the pace applies after each full buffer.
WIDE = ["--model.n-embd", "256", "--model.n-layer", "4", "--model.n-head", "4",
        "--checkpoint.keep", str(MAX_STEPS)]  # fmt: skip
CRAWL = ["--checkpoint.async-mode", "process", "--checkpoint.writer-max-mb-per-s", "0.01"]
STOP_AT = EVERY + 2  # the periodic save of step EVERY is in flight, paced, by then


def _shards_in_flight(ckpt: Path, step: int) -> bool:
    """Every rank's shard of ``step`` has its first full buffer on disk: each writer is
    now asleep in its pace."""
    dcp = ckpt / f".tmp-step-{step}" / "dcp"
    shards = [dcp / f"__{r}_0.distcp" for r in range(NPROC)]
    return all(p.is_file() and p.stat().st_size >= DIRECT_BUFFER for p in shards)


def test_sigterm_hurries_a_paced_save_in_flight_and_resumes_bitwise(
    launch: RunFn, tmp_path: Path
) -> None:
    ref_ckpt = tmp_path / "reference"
    unpaced = ["--checkpoint.writer-max-mb-per-s", "0"]
    ref = launch(fsdp_cmd(ref_ckpt, NPROC, *LM_ARGS, *WIDE, *unpaced, kind="causal_lm"),
                 "reference")  # fmt: skip
    assert ref.wait() == contract.EXIT_DONE, ref.output()[-4000:]

    ckpt = tmp_path / "ckpt"
    cmd = fsdp_cmd(ckpt, NPROC, *LM_ARGS, *WIDE, *CRAWL, kind="causal_lm", launcher=True)
    t = launch(cmd, "interrupted", {ENV_PAUSE_AT_STEP: str(STOP_AT)})
    for r in range(NPROC):
        t.wait_event("paused", r, STOP_AT)
    poll_until(lambda: _shards_in_flight(ckpt, EVERY), START_DEADLINE,
               f"step {EVERY}'s shards half written", alive=t)  # fmt: skip
    assert committed(ckpt) == [], "a write paced at 0.01 MB/s cannot have finished"
    # SIGTERM now: the launcher forwards it, every rank's guard raises its hurry, the
    # checkpoint process sees the flag file and finishes step EVERY unpaced; the stop
    # then saves STOP_AT synchronously, and the run exits 143.
    assert _interrupt(t, "SIGTERM", NPROC, STOP_AT, ckpt, to_group=True) == STOP_AT
    assert committed(ckpt) == [EVERY, STOP_AT]
    assert verify(ckpt / f"step-{EVERY}", EVERY) is None

    r = launch(fsdp_cmd(ckpt, NPROC, *LM_ARGS, *WIDE, *CRAWL, kind="causal_lm"), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, STOP_AT)
    for step in (2 * EVERY, MAX_STEPS):  # a paced save in flight at the end, then the last
        assert_bitwise_equal(load_fsdp_checkpoint(ref_ckpt, step),
                             load_fsdp_checkpoint(ckpt, step), f"step-{step}")  # fmt: skip
