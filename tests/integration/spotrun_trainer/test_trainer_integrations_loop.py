"""The plain-loop integration, through examples/plain_loop: SIGTERM at a random step,
exit 143 after committing that step, resume, and end bitwise equal to an uninterrupted run
(model, AdamW, LR schedule and every RNG: the loop draws its batches from the torch RNG)."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable
from pathlib import Path

from test_trainer_integrations_hf import kill_workers
from trainer_helpers import (
    PYTHON,
    REPO,
    Trainer,
    assert_bitwise_equal,
    committed,
    interruption_seed,
    load_checkpoint,
    read_events,
    wait_for_events,
)

MAX_STEPS, SAVE_STEPS = 30, 10


def loop_cmd(ckpt: Path) -> list[str]:
    return [PYTHON, str(REPO / "examples" / "plain_loop" / "train.py"), "--seed", "5",
            "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS),
            "--checkpoint-dir", str(ckpt)]  # fmt: skip


def step_losses(output: str, rank: int = 0) -> dict[int, str]:
    """Per-step losses one process printed (single process: ranks share stdout)."""
    return {
        int(p[3]): p[5]
        for line in output.splitlines()
        if (p := line.split())[:4:2] == ["rank", "step"] and len(p) == 6 and p[1] == str(rank)
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


def ddp_cmd(ckpt: Path) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *loop_cmd(ckpt)[1:]]  # fmt: skip


def test_plain_loop_under_torchrun_ddp_stops_together_and_resumes_bitwise(
    tmp_path: Path, launch: Callable[..., Trainer]
) -> None:
    """Two DDP ranks (gloo): both stop at the same step after one SIGTERM, rank 0 commits a
    checkpoint holding both ranks' RNG, and the resumed gang ends bitwise equal."""
    k = random.Random(interruption_seed()).randrange(1, MAX_STEPS)
    ref = launch(ddp_cmd(tmp_path / "ref"), name="ref")
    cut = launch(ddp_cmd(tmp_path / "run"), name="cut",
                 env_extra={"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})  # fmt: skip
    try:
        wait_for_events(cut, [("paused", 0, k), ("paused", 1, k)])
        cut.signal_group(signal.SIGTERM)  # torchrun forwards it to both workers
        cut.wait()
        assert cut.output().count("exiting 143") == 2, cut.output()[-4000:]
        assert committed(tmp_path / "run")[-1] == k
        manifest = json.loads((tmp_path / "run" / f"step-{k}" / "COMMITTED").read_text())
        assert manifest["world_size"] == 2
        assert {"shared.pt", "rank-0.pt", "rank-1.pt"} <= set(manifest["files"])

        resumed = launch(ddp_cmd(tmp_path / "run"), name="resumed")
        assert resumed.wait() == 0, resumed.output()[-4000:]
        assert ref.wait() == 0, ref.output()[-4000:]
        # Both ranks went on from step k (two ranks' stdout interleave: read the events).
        resumed_steps = [(e, r, n) for e, r, n in read_events(resumed.events) if e != "pid"]
        assert {("started", 0, k), ("started", 1, k)} <= set(resumed_steps)
        assert min(n for e, _, n in resumed_steps if e == "step") == k + 1
        assert_bitwise_equal(
            load_checkpoint(tmp_path / "run", MAX_STEPS),
            load_checkpoint(tmp_path / "ref", MAX_STEPS),
        )
    finally:
        kill_workers(ref, cut)


def launch_cmd(ckpt: Path) -> list[str]:
    """The plain loop with one rank per "GPU" through spotrun's launcher, as a pod of
    ``procsPerNode: 2`` runs it (``python -m spotrun_trainer.launch SCRIPT``)."""
    return [PYTHON, "-m", "spotrun_trainer.launch", "--nproc-per-node", "2", *loop_cmd(ckpt)[1:]]


def test_a_script_under_the_launcher_exits_143_on_sigterm_and_0_when_done(
    tmp_path: Path, launch: Callable[..., Trainer]
) -> None:
    """torchrun alone exits 1 when SIGTERMed; under the launcher (PID 1 of the pod, the
    only process the kubelet signals) the gang's stop is 143 and its end 0."""
    k = random.Random(interruption_seed()).randrange(1, MAX_STEPS)
    cut = launch(launch_cmd(tmp_path / "run"), name="cut",
                 env_extra={"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})  # fmt: skip
    try:
        wait_for_events(cut, [("paused", 0, k), ("paused", 1, k)])
        cut.proc.send_signal(signal.SIGTERM)  # the launcher only, as the kubelet does
        assert cut.wait() == 143, cut.output()[-4000:]
        assert cut.output().count("stopped (SIGTERM)") == 2, cut.output()[-4000:]
        assert "workers [143, 143]; exiting 143" in cut.output()  # the launcher's verdict
        assert committed(tmp_path / "run")[-1] == k
        resumed = launch(launch_cmd(tmp_path / "run"), name="resumed")
        assert resumed.wait() == 0, resumed.output()[-4000:]
        assert committed(tmp_path / "run")[-1] == MAX_STEPS
    finally:
        kill_workers(cut)
