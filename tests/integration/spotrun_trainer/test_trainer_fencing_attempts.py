"""Fenced checkpoints with real processes: an "old" attempt (SPOTRUN_ATTEMPT=1) trains and
checkpoints; a "new" attempt (SPOTRUN_ATTEMPT=2) starts on the same folder while the old
one still runs. The old one's next commit is refused and it exits EXIT_FENCED; the new one
resumes from the newest checkpoint its fence accepted, never loads what the old one wrote
after the fence, and ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from trainer_helpers import (
    PYTHON,
    REPO,
    START_DEADLINE,
    Trainer,
    assert_bitwise_equal,
    committed,
    load_checkpoint,
    read_events,
    trainer_env,
    wait_for_events,
)

from spotrun_api import contract

# The program both attempts run: one constant, so the launch can move (a plain loop over
# spotrun_trainer.integrations.loop.SpotrunLoop, printing "rank R step N loss X").
LAUNCH = [PYTHON, str(REPO / "examples" / "plain_loop" / "train.py")]
MAX_STEPS, SAVE_STEPS = 30, 5


def command(ckpt: Path) -> list[str]:
    return [*LAUNCH, "--seed", "3", "--max-steps", str(MAX_STEPS),
            "--save-steps", str(SAVE_STEPS), "--checkpoint-dir", str(ckpt)]  # fmt: skip


def losses(output: str) -> dict[int, str]:
    """Rank 0's printed loss of each step."""
    return {
        int(p[3]): p[5]
        for line in output.splitlines()
        if len(p := line.split()) == 6 and p[:3:2] == ["rank", "step"] and p[1] == "0"
    }


def manifest_epoch(ckpt: Path, step: int) -> object:
    return json.loads((ckpt / f"step-{step}" / "COMMITTED").read_text()).get("epoch")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """An uninterrupted run outside the operator (no attempt: no fence)."""
    folder = tmp_path_factory.mktemp("fence-reference")
    log = folder / "reference.log"
    with open(log, "wb") as out:
        done = subprocess.run(
            command(folder / "ckpt"),
            cwd=folder,
            env=trainer_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=START_DEADLINE,
        )
    assert done.returncode == 0, log.read_text()[-4000:]
    assert not (folder / "ckpt" / contract.FENCE_DIR).exists()
    return folder / "ckpt", losses(log.read_text())


def attempt(n: int, release: Path, **hooks: str) -> dict[str, str]:
    return {contract.ENV_ATTEMPT: str(n), "SPOTRUN_TEST_RELEASE_FILE": str(release), **hooks}


def start_new_attempt(launch: Callable[..., Trainer], ckpt: Path, tmp_path: Path) -> Trainer:
    """Attempt 2 on the same folder; returns once it resumed (its fence is written)."""
    new = launch(command(ckpt), name="new", env_extra=attempt(2, tmp_path / "unused"))
    wait_for_events(new, [("started", 0, 10)])
    fence = json.loads((ckpt / contract.FENCE_DIR / "2.json").read_text())
    assert fence["epoch"] == 2
    assert [(a["step"], a["epoch"]) for a in fence["accepted"]] == [(5, 1), (10, 1)]
    return new


def assert_new_attempt_finished_like_the_reference(
    new: Trainer, ckpt: Path, reference: tuple[Path, dict[int, str]]
) -> None:
    assert new.wait() == 0, new.output()[-4000:]
    ref_ckpt, ref_losses = reference
    after = losses(new.output())
    assert min(after) == 11, "resumed from step 10, the newest checkpoint the fence accepted"
    assert after == {s: v for s, v in ref_losses.items() if s > 10}
    assert committed(ckpt)[-1] == MAX_STEPS
    for step in committed(ckpt):
        assert manifest_epoch(ckpt, step) == 2, f"step-{step} was written by the old attempt"
    assert_bitwise_equal(load_checkpoint(ckpt, MAX_STEPS), load_checkpoint(ref_ckpt, MAX_STEPS))
    assert not list(ckpt.glob(".tmp-*"))


def test_an_older_attempt_that_keeps_training_is_refused_at_its_next_save(
    tmp_path: Path, launch: Callable[..., Trainer], reference: tuple[Path, dict[int, str]]
) -> None:
    ckpt, release = tmp_path / "ckpt", tmp_path / "release-old"
    old = launch(command(ckpt), name="old",
                 env_extra=attempt(1, release, SPOTRUN_TEST_PAUSE_AT_STEP="12"))  # fmt: skip
    wait_for_events(old, [("paused", 0, 12)])
    assert committed(ckpt) == [5, 10] and manifest_epoch(ckpt, 10) == 1

    new = start_new_attempt(launch, ckpt, tmp_path)
    release.touch()  # the old attempt trains on: steps 13 to 15, then its save
    assert old.wait() == contract.EXIT_FENCED, old.output()[-4000:]
    assert "commit of step 15 refused: fenced by attempt 2" in old.output()
    assert max(losses(old.output())) == 15  # it stopped at the save, trained no further
    assert ("committed", 0, 15) not in read_events(old.events)
    assert_new_attempt_finished_like_the_reference(new, ckpt, reference)


def test_a_commit_held_until_after_the_fence_moved_is_refused(
    tmp_path: Path, launch: Callable[..., Trainer], reference: tuple[Path, dict[int, str]]
) -> None:
    """The old attempt's save of step 15 is written, then held just before its manifest
    (a stalled committer) while the new attempt starts: its commit's fence check refuses."""
    ckpt, release = tmp_path / "ckpt", tmp_path / "release-old"
    old = launch(command(ckpt), name="old",
                 env_extra=attempt(1, release, SPOTRUN_TEST_HOLD_BEFORE_COMMIT="15"))  # fmt: skip
    wait_for_events(old, [("holding-commit", 0, 15)])
    assert committed(ckpt) == [5, 10] and (ckpt / ".tmp-e1-step-15").is_dir()

    new = start_new_attempt(launch, ckpt, tmp_path)
    wait_for_events(new, [("committed", 0, 15)])  # the new attempt's own step 15
    release.touch()
    assert old.wait() == contract.EXIT_FENCED, old.output()[-4000:]
    assert "commit of step 15 refused: fenced by attempt 2" in old.output()
    assert ("committed", 0, 15) not in read_events(old.events)
    assert_new_attempt_finished_like_the_reference(new, ckpt, reference)
