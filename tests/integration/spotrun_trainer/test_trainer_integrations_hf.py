"""Hugging Face Trainer and sentence-transformers integrations, through their examples
(``examples/hf_trainer``; ``examples/mpnet_ablations`` for ``SentenceTransformerTrainer``).

Each example trains in a real process, is SIGTERMed at a random step (a real signal), must
commit that step in spotrun's layout and exit 143, and must resume from it (not from a
half-written folder planted beside it) to the same losses, weights and optimizer state as
an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    PYTHON,
    REPO,
    START_DEADLINE,
    Trainer,
    committed,
    interruption_seed,
    poll_until,
    read_events,
    tiny_hf_trainer,
    wait_for_events,
)

from spotrun_trainer.checkpoint_io import verify

MAX_STEPS, SAVE_STEPS = 12, 4
# The sentence-transformers case runs the MPNet ablations workload: every step logged (the
# losses are compared), nDCG@10 evaluated mid-run, no early stop.
EXTRA_ARGS = {
    "hf_trainer": [],
    "mpnet_ablations": ["--logging-steps", "1", "--eval-steps", "6", "--early-stop-patience", "0",
                        "--threads", "1"],
}  # fmt: skip


def example_cmd(example: str, folder: Path, name: str, nproc: int = 1) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [PYTHON, *(launcher if nproc > 1 else []), str(REPO / "examples" / example / "train.py"),
            "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS), "--seed", "3",
            "--checkpoint-dir", str(folder / f"{name}-ckpt"),
            "--output-dir", str(folder / f"{name}-out"), *EXTRA_ARGS[example]]  # fmt: skip


def losses(step_dir: Path) -> list[tuple[int, float]]:
    state = json.loads((step_dir / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def plant_half_written(ckpt: Path, step: int) -> Path:
    """A copy of ``step-<step>`` as ``step-<step+1>`` without the marker, whose optimizer
    file is cut short and whose state claims one more step: resuming from it would fail."""
    fake = ckpt / f"step-{step + 1}"
    shutil.copytree(ckpt / f"step-{step}", fake)
    (fake / "COMMITTED").unlink()
    opt = fake / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    state = json.loads((fake / "trainer_state.json").read_text())
    state["global_step"] = step + 1
    (fake / "trainer_state.json").write_text(json.dumps(state))
    return fake


def assert_tensors_close(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    assert set(a) == set(b), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{what}: {k}")
        elif isinstance(a[k], dict):
            assert_tensors_close(a[k], b[k], f"{what}.{k}")


def kill_workers(*runs: Trainer) -> None:
    """torchrun starts each worker in its own session; the launch fixture only reaps
    processes whose command line names spotrun_trainer."""
    for run in runs:
        for event, _, pid in read_events(run.events):
            with contextlib.suppress(OSError):
                if event == "pid" and b"examples" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("example", "nproc"),
    [("hf_trainer", 1), ("mpnet_ablations", 1), ("hf_trainer", 2)],
    ids=["hf_trainer", "sentence_transformers-mpnet_ablations", "hf_trainer-torchrun-2"],
)
def test_sigterm_commits_exits_143_and_resumes_like_an_uninterrupted_run(
    example: str, nproc: int, tmp_path: Path, launch: Callable[..., Trainer]
) -> None:
    k = random.Random(interruption_seed()).randrange(1, MAX_STEPS)
    ref = launch(example_cmd(example, tmp_path, "ref", nproc), name="ref")
    cut = launch(
        example_cmd(example, tmp_path, "run", nproc),
        name="cut",
        env_extra={"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)},
    )
    try:
        _interrupt_and_resume(example, nproc, k, tmp_path, launch, ref, cut)
    finally:
        kill_workers(ref, cut)


def _interrupt_and_resume(
    example: str,
    nproc: int,
    k: int,
    tmp_path: Path,
    launch: Callable[..., Trainer],
    ref: Trainer,
    cut: Trainer,
) -> None:
    wait_for_events(cut, [("paused", r, k) for r in range(nproc)])
    cut.signal_group(signal.SIGTERM)  # torchrun forwards it to its workers
    rc = cut.wait()
    # torchrun exits 1 on SIGTERM whatever its workers did (trainer.md, launcher mode).
    assert cut.output().count("exiting 143") == nproc, cut.output()[-4000:]
    assert nproc > 1 or rc == 143, cut.output()[-4000:]
    ckpt = tmp_path / "run-ckpt"
    assert committed(ckpt)[-1] == k, cut.output()[-4000:]
    assert verify(ckpt / f"step-{k}", k) is None
    rng_files = {f"rng_state_{r}.pth" for r in range(nproc)} if nproc > 1 else {"rng_state.pth"}
    assert rng_files <= {p.name for p in (ckpt / f"step-{k}").iterdir()}
    assert not list((tmp_path / "run-out").glob("checkpoint-*")), "staging folder left"
    plant_half_written(ckpt, k)

    resumed = launch(example_cmd(example, tmp_path, "run", nproc), name="resumed")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    assert f"resuming from the committed checkpoint {ckpt / f'step-{k}'}" in resumed.output()
    assert ref.wait(START_DEADLINE) == 0, ref.output()[-4000:]

    got, want = ckpt / f"step-{MAX_STEPS}", tmp_path / "ref-ckpt" / f"step-{MAX_STEPS}"
    assert verify(got, MAX_STEPS) is None
    got_losses, want_losses = losses(got), losses(want)
    assert [s for s, _ in got_losses] == [s for s, _ in want_losses] == list(range(1, 13))
    assert [v for _, v in got_losses] == pytest.approx([v for _, v in want_losses], rel=1e-5)
    assert_tensors_close(
        load_file(got / "model.safetensors"), load_file(want / "model.safetensors"), "model"
    )
    opt_got = torch.load(got / "optimizer.pt", weights_only=True)
    opt_want = torch.load(want / "optimizer.pt", weights_only=True)
    assert opt_got["state"][0]["step"] == MAX_STEPS
    assert_tensors_close(opt_got["state"], opt_want["state"], "optimizer")
    sched = torch.load(got / "scheduler.pt", weights_only=True)
    assert sched["last_epoch"] == MAX_STEPS


def test_callback_reports_progress_and_stops_on_a_real_sigterm(tmp_path: Path) -> None:
    """In process, with an injected reporter (no cluster): a SIGTERM sent to this very
    process at step 3 ends training with SystemExit(143) after committing step 3, and the
    reports show it; the next attempt reports the checkpoint it resumed from first."""
    from transformers import TrainerCallback

    from spotrun_trainer.integrations.hf import SpotrunCallback
    from spotrun_trainer.progress import ProgressReporter

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                # The guard's thread raises the flag a moment later: the signal came in
                # step 3 once it has (a kubelet's SIGTERM comes at any time anyway).
                poll_until(spot.guard.stop_requested.is_set, 30, "the guard to see SIGTERM")

    before = signal.getsignal(signal.SIGTERM)
    patches: list[dict[str, Any]] = []
    reporter = ProgressReporter(patches.append, min_interval=0, attempt=2, background=False)
    seen: list[tuple[int, list[int]]] = []  # after_commit: the step, what was committed

    def after_commit(step: int) -> None:
        seen.append((step, committed(tmp_path / "ck")))

    spot = SpotrunCallback(tmp_path / "ck", reporter=reporter, env={},
                           after_commit=[after_commit])  # fmt: skip
    trainer, _ = tiny_hf_trainer(tmp_path, 8, [SigtermAt(), spot])
    with pytest.raises(SystemExit) as stopped:
        trainer.train(resume_from_checkpoint=spot.resume_path())
    assert stopped.value.code == 143
    assert seen == [(3, [3])]  # after the commit, before the stop's exit
    assert signal.getsignal(signal.SIGTERM) == before  # the guard put the handler back
    assert committed(tmp_path / "ck") == [3]
    progress = [p["status"]["progress"] for p in patches]
    assert [p["step"] for p in progress] == [1, 2, 3, 3]
    assert progress[0]["samplesPerSecond"] is None and progress[1]["samplesPerSecond"] > 0
    assert progress[-1]["checkpointStep"] == 3 and progress[-1]["attempt"] == 2
    assert progress[-1]["checkpointPath"] == str(tmp_path / "ck" / "step-3")

    patches.clear()
    reporter = ProgressReporter(patches.append, min_interval=0, attempt=3, background=False)
    spot = SpotrunCallback(tmp_path / "ck", reporter=reporter, env={})
    trainer, _ = tiny_hf_trainer(tmp_path, 5, [spot], seed=2)  # other init: overwritten
    assert trainer.train(resume_from_checkpoint=spot.resume_path()).global_step == 5
    progress = [p["status"]["progress"] for p in patches]
    assert progress[0] == {"step": 3, "checkpointStep": 3, "attempt": 3,
                           "samplesPerSecond": None, "restartPhases": None,
                           "checkpointPath": str(tmp_path / "ck" /
                           "step-3"), "checkpointTime": progress[0]["checkpointTime"]}  # fmt: skip
    assert [p["step"] for p in progress[1:]] == [4, 5, 5]
    assert progress[-1]["checkpointStep"] == 5 and committed(tmp_path / "ck") == [3, 5]
