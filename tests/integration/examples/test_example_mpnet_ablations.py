"""examples/mpnet_ablations: MPNet (random init) fine-tuned on the synthetic BEIR set.

- The isotropy ablation, uninterrupted, lifts nDCG@10 on the test queries well above the
  untrained model's and keeps its best model committed in ``best/step-B``: the weights of
  step B (not of the last step), loadable, scoring the nDCG@10 the run reported.
- The same run SIGTERMed at a random step exits 143 with that step committed (the eval state
  inside, ``best/`` holding exactly the best it names) and, resumed, ends bitwise equal to
  the uninterrupted run: weights, AdamW, schedule, RNG, every logged loss and data epoch,
  the evaluation history, best step and patience counter.
- Early stop: a plateaued run (learning rate 0: nDCG@10 never improves after the first
  evaluation) SIGTERMed between its best and its stop resumes with the patience counter it
  had and stops at exactly the evaluation an uninterrupted run stops at; restarted once
  more, it trains nothing.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    PYTHON,
    REPO,
    Trainer,
    assert_bitwise_equal,
    committed,
    interruption_seed,
    reap,
    start_process,
    trainer_env,
    wait_for_events,
)

from spotrun_trainer.checkpoint_io import verify

SCRIPT = REPO / "examples" / "mpnet_ablations" / "train.py"
STEPS, EVAL = 60, 10
ES_EVAL, ES_PATIENCE = 5, 3  # best at step 5, stop at step 20
TENSOR_FILES = ["model.safetensors", "2_Dense/model.safetensors"]
STATE_FILES = ["optimizer.pt", "scheduler.pt"]
Launch = Callable[..., Trainer]


def mpnet_cmd(folder: Path, name: str, *extra: str) -> list[str]:
    return [PYTHON, str(SCRIPT), "--threads", "1", "--seed", "5", "--logging-steps", "1",
            "--checkpoint-dir", str(folder / f"{name}-ckpt"),
            "--output-dir", str(folder / f"{name}-out"), *extra]  # fmt: skip


def learn_cmd(folder: Path, name: str) -> list[str]:
    return mpnet_cmd(folder, name, "--ablation", "isotropy", "--max-steps", str(STEPS),
                     "--eval-steps", str(EVAL), "--early-stop-patience", "0")  # fmt: skip


def plateau_cmd(folder: Path, name: str) -> list[str]:
    return mpnet_cmd(folder, name, "--ablation", "baseline", "--max-steps", "60",
                     "--lr", "0", "--eval-steps", str(ES_EVAL),
                     "--early-stop-patience", str(ES_PATIENCE))  # fmt: skip


def launcher(folder: Path, started: list[Trainer]) -> Launch:
    def launch(cmd: list[str], name: str, env_extra: dict[str, str] | None = None) -> Trainer:
        # Every committed step kept: the test compares the best folder with its step.
        env = {"SPOTRUN_CHECKPOINT_KEEP": "1000", "TQDM_DISABLE": "1", **(env_extra or {})}
        started.append(start_process(folder, cmd, name, env, marker=b"mpnet_ablations"))
        return started[-1]

    return launch


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    started: list[Trainer] = []
    yield launcher(tmp_path, started)
    reap(started)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The uninterrupted isotropy run: (its checkpoint folder, its output)."""
    folder = tmp_path_factory.mktemp("mpnet-ref")
    started: list[Trainer] = []
    ref = launcher(folder, started)(learn_cmd(folder, "ref"), "ref")
    try:
        assert ref.wait() == 0, ref.output()[-4000:]
        yield folder / "ref-ckpt", ref.output()
    finally:
        reap(started)


def result(output: str) -> dict[str, Any]:
    last = output.strip().splitlines()[-1]
    assert last.startswith("result "), output[-4000:]
    parsed: dict[str, Any] = json.loads(last.removeprefix("result "))
    return parsed


def evals(output: str) -> list[tuple[int, float]]:
    return [(int(w[2]), float(w[4])) for line in output.splitlines()
            if (w := line.split())[:2] == ["eval", "step"]]  # fmt: skip


def eval_state(ckpt: Path, step: int) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((ckpt / f"step-{step}" / "eval_state.json").read_text())
    return state


def best_steps(ckpt: Path) -> list[int]:
    steps: list[int] = committed(ckpt / "best")
    return steps


def plain(obj: Any) -> Any:
    """numpy arrays (the numpy RNG state) as lists, for :func:`assert_bitwise_equal`."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def step_state(ckpt: Path, step: int) -> dict[str, Any]:
    """Everything a checkpoint holds that must match bit for bit (timings left out)."""
    folder = ckpt / f"step-{step}"
    state: dict[str, Any] = {f: load_file(folder / f) for f in TENSOR_FILES}
    state.update({f: torch.load(folder / f, weights_only=True) for f in STATE_FILES})
    state["rng"] = plain(torch.load(folder / "rng_state.pth", weights_only=False))
    trainer = json.loads((folder / "trainer_state.json").read_text())
    keys = ("step", "epoch", "loss", "grad_norm", "learning_rate", "eval_ndcg@10")
    state["log"] = [[e.get(key) for key in keys] for e in trainer["log_history"]]
    state["global_step"] = trainer["global_step"]
    state["eval_state"] = eval_state(ckpt, step)
    return state


def test_mpnet_isotropy_learns_and_keeps_its_best_model(
    reference: tuple[Path, str], tmp_path: Path
) -> None:
    ckpt, out = reference
    res = result(out)
    chance = evals(out)[0]
    assert chance[0] == 0  # the untrained model, evaluated before the first step
    assert [s for s, _ in evals(out)[1:]] == list(range(EVAL, STEPS + 1, EVAL))
    assert res["global_step"] == STEPS and not res["early_stopped"]
    assert res["best_ndcg@10"] > max(0.1, 5 * chance[1]), (chance, res)
    history = eval_state(ckpt, STEPS)["history"]
    assert [[s, round(v, 4)] for s, v in history] == [list(e) for e in evals(out)[1:]]
    assert [res["best_step"], res["best_ndcg@10"]] == max(history, key=lambda e: e[1])
    best = res["best_step"]
    assert best_steps(ckpt) == [best] and verify(ckpt / "best" / f"step-{best}", best) is None
    for f in TENSOR_FILES:  # the best step's weights, whatever came after
        assert_bitwise_equal(load_file(ckpt / "best" / f"step-{best}" / f),
                             load_file(ckpt / f"step-{best}" / f))  # fmt: skip
    proc = subprocess.run(
        [*learn_cmd(tmp_path, "eval"), "--evaluate", str(ckpt / "best" / f"step-{best}")],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    scored = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("evaluation "))
    assert scored["ndcg@10"] == pytest.approx(res["best_ndcg@10"], rel=1e-6)


def test_mpnet_sigterm_mid_run_resumes_bitwise(
    reference: tuple[Path, str], tmp_path: Path, launch: Launch
) -> None:
    k = random.Random(interruption_seed()).randrange(EVAL + 1, STEPS)
    cut = launch(learn_cmd(tmp_path, "run"), "cut", {"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})
    wait_for_events(cut, [("paused", 0, k)])
    cut.signal_group(signal.SIGTERM)
    assert cut.wait() == 143, cut.output()[-4000:]
    ckpt = tmp_path / "run-ckpt"
    assert committed(ckpt)[-1] == k and verify(ckpt / f"step-{k}", k) is None
    stopped = eval_state(ckpt, k)
    assert [s for s, _ in stopped["history"]] == list(range(EVAL, k + 1, EVAL))
    assert best_steps(ckpt) == [stopped["best_step"]]  # the best its checkpoint names

    resumed = launch(learn_cmd(tmp_path, "run"), "resumed")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    assert f"resuming from the committed checkpoint {ckpt / f'step-{k}'}" in resumed.output()
    ref_ckpt, ref_out = reference
    assert evals(resumed.output()) == [e for e in evals(ref_out) if e[0] > k]
    got, want = result(resumed.output()), result(ref_out)
    assert {**got, "best_path": None} == {**want, "best_path": None}
    assert_bitwise_equal(step_state(ckpt, STEPS), step_state(ref_ckpt, STEPS))
    assert best_steps(ckpt) == best_steps(ref_ckpt)
    b = want["best_step"]
    for f in TENSOR_FILES:
        assert_bitwise_equal(load_file(ckpt / "best" / f"step-{b}" / f),
                             load_file(ref_ckpt / "best" / f"step-{b}" / f))  # fmt: skip


def test_mpnet_early_stop_survives_sigterm_and_a_restart(tmp_path: Path, launch: Launch) -> None:
    stop = ES_EVAL * (1 + ES_PATIENCE)
    k = random.Random(interruption_seed()).randrange(ES_EVAL + 1, stop)  # counter > 0 at k
    cut = launch(plateau_cmd(tmp_path, "es"), "cut", {"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})
    wait_for_events(cut, [("paused", 0, k)])
    cut.signal_group(signal.SIGTERM)
    assert cut.wait() == 143, cut.output()[-4000:]
    ckpt = tmp_path / "es-ckpt"
    before = eval_state(ckpt, k)
    assert before["evals_since_best"] == k // ES_EVAL - 1 and not before["stopped_early"]

    resumed = launch(plateau_cmd(tmp_path, "es"), "resumed")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    res = result(resumed.output())
    assert res["early_stopped"] and res["global_step"] == stop and res["best_step"] == ES_EVAL
    assert res["evals"] == 1 + ES_PATIENCE
    assert "-> early stop" in resumed.output()
    assert committed(ckpt)[-1] == stop and best_steps(ckpt) == [ES_EVAL]
    final = eval_state(ckpt, stop)
    assert final["stopped_early"] and final["evals_since_best"] == ES_PATIENCE

    again = launch(plateau_cmd(tmp_path, "es"), "again")
    assert again.wait() == 0, again.output()[-4000:]
    assert f"early-stopped at step {stop} before this start; nothing to train" in again.output()
    assert result(again.output()) == res
    assert committed(ckpt)[-1] == stop
