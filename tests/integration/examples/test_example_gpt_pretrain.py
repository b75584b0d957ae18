"""examples/gpt_pretrain: a depth-2 nanochat-style GPT trained with FSDP2 over 2 ranks
(torchrun, gloo). SIGTERMed at a random step (through spotrun's launcher, as PID 1 of a pod
gets it) it commits that step, names the last committed step and the best validation loss,
and exits 143; the resumed gang ends bitwise equal to an uninterrupted one (model and AdamW
shards, schedule, data position, every rank's RNG), with the same per-step losses and the
same best checkpoint, its periodic saves written in the background. The rolling
checkpoints stay within SPOTRUN_CHECKPOINT_KEEP while the best one, kept apart, survives
every prune. Resuming those shards on one process (another world size, the same global
batch) continues the same data."""

from __future__ import annotations

import random
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import (
    PYTHON,
    REPO,
    Trainer,
    assert_bitwise_equal,
    committed,
    interruption_seed,
    reap,
    start_process,
    wait_for_events,
)

from spotrun_trainer.best import BEST_DIR
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.checkpoint_io import read_marker
from spotrun_trainer.sharded import read_full

SCRIPT = REPO / "examples" / "gpt_pretrain" / "train.py"
MAX_STEPS, EVAL_STEPS, SAVE_STEPS, KEEP, BATCH = 24, 4, 3, 2, 2
STEP_LINE = re.compile(r"^step (\d+)/\d+ loss (\S+)", re.M)
VAL_LINE = re.compile(r"^step (\d+) val loss (\S+)", re.M)
STOP_LINE = re.compile(
    r"^stopped: last committed step (\d+), best val loss ([\d.]+) \(step (\d+)\)$", re.M
)


def gpt_cmd(ckpt: Path, nproc: int, launcher: bool = True, batch: int = BATCH,
            *extra: str) -> list[str]:  # fmt: skip
    """spotrun's launcher (``--nproc-per-node``: torchrun inside, exit 143 kept), plain
    torchrun, or (nproc 1) one process."""
    args = [str(SCRIPT), "--depth", "2", "--seq-len", "32", "--device-batch-size", str(batch),
            "--max-steps", str(MAX_STEPS), "--eval-steps", str(EVAL_STEPS), "--eval-batches", "2",
            "--save-steps", str(SAVE_STEPS), "--corpus-chars", "40000", "--threads", "1",
            "--seed", "3", "--checkpoint-dir", str(ckpt), *extra]  # fmt: skip
    if nproc == 1 or launcher:
        return [PYTHON, *args, "--nproc-per-node", str(nproc)]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), *args]  # fmt: skip


def start(
    folder: Path, cmd: list[str], name: str, env_extra: dict[str, str] | None = None
) -> Trainer:
    """A run in its own session, SPOTRUN_CHECKPOINT_KEEP set as the operator sets it."""
    env = {"SPOTRUN_CHECKPOINT_KEEP": str(KEEP), **(env_extra or {})}
    return start_process(folder, cmd, name, env, marker=b"gpt_pretrain")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], tuple[Path, str]]]:
    """The uninterrupted 2-rank run under plain torchrun, started with the first test that
    uses it (it trains beside that test's own runs); calling it waits for it."""
    folder = tmp_path_factory.mktemp("gpt-ref")
    ref = start(folder, gpt_cmd(folder / "ckpt", 2, launcher=False), "ref")

    def done() -> tuple[Path, str]:
        assert ref.wait() == 0, ref.output()[-4000:]
        return folder / "ckpt", ref.output()

    yield done
    reap([ref])


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Trainer]]:
    started: list[Trainer] = []

    def _launch(cmd: list[str], name: str, env_extra: dict[str, str] | None = None) -> Trainer:
        started.append(start(tmp_path, cmd, name, env_extra))
        return started[-1]

    yield _launch
    reap(started)


class Retention:
    """Samples a checkpoint folder in a thread while runs write to it: the most committed
    ``step-N`` folders and the most and fewest committed best ones seen at once."""

    def __init__(self, ckpt: Path) -> None:
        self.ckpt, self.most, self.steps = ckpt, 0, set[int]()
        self.best_most, self.best_gaps = 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.005):  # sampling period, not a wait for an outcome
            steps, best = committed(self.ckpt), committed(self.ckpt / BEST_DIR)
            self.most, self.steps = max(self.most, len(steps)), self.steps | set(steps)
            self.best_most = max(self.best_most, len(best))
            # Once a best exists, a moment without one would be a half-replaced best.
            self.best_gaps += int(not best and self.best_most > 0)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def losses(output: str, pattern: re.Pattern[str] = STEP_LINE) -> dict[int, str]:
    return {int(s): v for s, v in pattern.findall(output)}


def final_state(ckpt: Path, step: int) -> dict[str, Any]:
    folder = ckpt / f"step-{step}"
    state: dict[str, Any] = {"dcp": read_full(folder / "dcp")}
    for f in sorted(folder.glob("*.pt")):
        state[f.stem] = torch.load(f, weights_only=True)
    return state


def best_of(ckpt: Path) -> tuple[int, float, dict[str, Any]]:
    (step,) = committed(ckpt / BEST_DIR)
    folder = ckpt / BEST_DIR / f"step-{step}"
    assert verify(folder, step) is None
    marker = read_marker(folder)
    assert marker is not None
    return step, marker["metric"], read_full(folder / "dcp")


def best_step_so_far(output: str) -> int:
    """The eval step of the lowest validation loss printed (the first one on a tie)."""
    vals = {s: float(v) for s, v in losses(output, VAL_LINE).items()}
    return min(vals, key=lambda s: (vals[s], s))


def test_gpt_fsdp_sigterm_resume_is_bitwise_with_bounded_retention_and_the_best_kept(
    tmp_path: Path, launch: Callable[..., Trainer], reference: Callable[[], tuple[Path, str]]
) -> None:
    k = random.Random(interruption_seed()).randrange(EVAL_STEPS + 1, MAX_STEPS)
    run = tmp_path / "run"
    watch = Retention(run)
    # Periodic saves in the background here (the reference's are synchronous): the same
    # state either way, and DCP's writes run beside FSDP's collectives.
    cut = launch(gpt_cmd(run, 2, True, BATCH, "--async-save"), "cut",
                 {"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})  # fmt: skip
    wait_for_events(cut, [("paused", r, k) for r in range(2)])
    cut.proc.send_signal(signal.SIGTERM)  # the launcher only, as the kubelet signals PID 1
    assert cut.wait() == 143, cut.output()[-4000:]
    out = cut.output()
    assert len(re.findall(r"spotrun_trainer stopped .*; exiting 143$", out, re.M)) == 2, out
    assert max(losses(out)) == k  # no step after the one the stop saved
    stop = STOP_LINE.search(out)
    assert stop, out[-4000:]
    assert (int(stop[1]), int(stop[3])) == (k, best_step_so_far(out))
    assert committed(run)[-1] == k and len(committed(run)) <= KEEP
    assert committed(run / BEST_DIR) == [best_step_so_far(out)]

    resumed = launch(gpt_cmd(run, 2, True, BATCH, "--async-save"), "resumed")
    assert resumed.wait() == 0, resumed.output()[-4000:]
    watch.stop()
    ref_ckpt, want = reference()
    after = resumed.output()
    assert f"at step {k}: " in after
    assert losses(out) | losses(after) == losses(want)  # every step once, the same loss
    assert losses(out, VAL_LINE) | losses(after, VAL_LINE) == losses(want, VAL_LINE)
    assert_bitwise_equal(final_state(run, MAX_STEPS), final_state(ref_ckpt, MAX_STEPS))
    got_best, ref_best = best_of(run), best_of(ref_ckpt)
    assert got_best[:2] == ref_best[:2] and got_best[0] == best_step_so_far(want)
    assert_bitwise_equal(got_best[2], ref_best[2])
    assert re.search(rf"^finished: last committed step {MAX_STEPS}, best val loss ", after, re.M)

    # Retention: pruning ran (more steps were committed than are kept); at most KEEP
    # rolling checkpoints stand, one more only between a commit and its prune; the best
    # was never absent once it existed, nor pruned by the rolling retention.
    assert len(watch.steps) > KEEP and len(committed(run)) == KEEP
    assert watch.most <= KEEP + 1
    assert watch.best_gaps == 0 and 1 <= watch.best_most <= 2


def test_gpt_resumes_two_ranks_shards_on_one_process(
    tmp_path: Path, launch: Callable[..., Trainer], reference: Callable[[], tuple[Path, str]]
) -> None:
    k = random.Random(interruption_seed()).randrange(1, MAX_STEPS - 1)
    run = tmp_path / "run"
    cut = launch(gpt_cmd(run, 2), "cut", {"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})
    wait_for_events(cut, [("paused", r, k) for r in range(2)])
    cut.proc.send_signal(signal.SIGTERM)
    assert cut.wait() == 143, cut.output()[-4000:]
    # One process with the gang's global batch (2 ranks x BATCH): the same sequences.
    one = launch(gpt_cmd(run, 1, batch=2 * BATCH), "one")
    assert one.wait() == 0, one.output()[-4000:]
    after, before = losses(one.output()), losses(cut.output())
    assert f"at step {k}: " in one.output() and min(after) == k + 1
    assert set(before) | set(after) == set(range(1, MAX_STEPS + 1))
    data = torch.load(run / f"step-{MAX_STEPS}" / "shared.pt", weights_only=True)["data"]
    assert data["consumed"] == MAX_STEPS * 2 * BATCH
    # Not bitwise (one process reduces in another order), but the same weights and data:
    # the first loss after the resume is the gang's to float rounding.
    want = losses(reference()[1])
    assert float(after[k + 1]) == pytest.approx(float(want[k + 1]), rel=1e-5)
    assert float(after[MAX_STEPS]) == pytest.approx(float(want[MAX_STEPS]), rel=1e-2)
