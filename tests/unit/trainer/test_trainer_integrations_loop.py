"""The plain-loop integration, through examples/plain_loop: SIGTERM at a random step,
exit 143 after committing that step, resume, and end bitwise equal to an uninterrupted run
(model, AdamW, LR schedule and every RNG: the loop draws its batches from the torch RNG)."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path

from trainer_helpers import (
    PYTHON,
    REPO,
    Trainer,
    assert_bitwise_equal,
    committed,
    interruption_seed,
    load_checkpoint,
    wait_for_events,
)

MAX_STEPS, SAVE_STEPS = 30, 10


def loop_cmd(ckpt: Path) -> list[str]:
    return [PYTHON, str(REPO / "examples" / "plain_loop" / "train.py"), "--seed", "5",
            "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS),
            "--checkpoint-dir", str(ckpt)]  # fmt: skip


def step_losses(output: str) -> dict[int, str]:
    return {
        int(p[1]): p[3]
        for line in output.splitlines()
        if (p := line.split())[:1] == ["step"] and len(p) == 4
    }


def test_plain_loop_sigterm_resume_is_bitwise_equal(
    tmp_path: Path, launch: Callable[..., Trainer]
) -> None:
    k = random.Random(interruption_seed()).randrange(1, MAX_STEPS)
    ref = launch(loop_cmd(tmp_path / "ref"), name="ref")
    cut = launch(loop_cmd(tmp_path / "run"), name="cut",
                 env_extra={"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})  # fmt: skip
    wait_for_events(cut, [("paused", 0, k)])
    cut.signal_group(signal.SIGTERM)
    assert cut.wait() == 143, cut.output()[-4000:]
    assert committed(tmp_path / "run")[-1] == k
    assert max(step_losses(cut.output())) == k  # no step after the one the stop saved

    resumed = launch(loop_cmd(tmp_path / "run"), name="resumed")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    assert ref.wait() == 0, ref.output()[-4000:]
    after = step_losses(resumed.output())
    assert min(after) == k + 1  # continued from the checkpoint's step, none repeated
    want = step_losses(ref.output())
    assert {**step_losses(cut.output()), **after} == want
    assert_bitwise_equal(
        load_checkpoint(tmp_path / "run", MAX_STEPS), load_checkpoint(tmp_path / "ref", MAX_STEPS)
    )
