"""examples/resnet50: a tiny ResNet-50 (width 8, 24 -> 28 -> 32 px, 10 classes) reports
top-1; SIGTERMed mid-epoch it commits that step and exits 143, and the resumed run goes on
at the next unseen sample (every sample of every epoch exactly once across the stop) and
ends bitwise equal to an uninterrupted run, single process and under torchrun (gloo)."""

from __future__ import annotations

import random
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from trainer_helpers import (
    PYTHON,
    REPO,
    Trainer,
    assert_bitwise_equal,
    committed,
    interruption_seed,
    load_checkpoint,
    poll_until,
    read_events,
    reap,
    start_process,
)

SCRIPT = REPO / "examples" / "resnet50" / "train.py"
EPOCHS, SAMPLES, GLOBAL_BATCH, SAVE_STEPS = 3, 96, 8, 4
PER_EPOCH = SAMPLES // GLOBAL_BATCH
TOTAL = EPOCHS * PER_EPOCH
DEADLINE = 150.0  # a cold start imports torch on a busy 2-core box


def resnet_cmd(ckpt: Path, samples: Path, nproc: int = 1) -> list[str]:
    args = [str(SCRIPT), "--preset", "tiny", "--threads", "1", "--seed", "3",
            "--epochs", str(EPOCHS), "--train-samples", str(SAMPLES), "--val-samples", "32",
            "--batch-size", str(GLOBAL_BATCH // nproc), "--save-steps", str(SAVE_STEPS),
            "--log-every", "1", "--checkpoint-dir", str(ckpt),
            "--sample-log", str(samples)]  # fmt: skip
    if nproc == 1:
        return [PYTHON, *args]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), *args]  # fmt: skip


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Trainer]]:
    """Start example processes (own session); every tree still alive at teardown, torchrun's
    workers included, is SIGKILLed."""
    started: list[Trainer] = []

    def _launch(cmd: Sequence[str], name: str, env_extra: dict[str, str] | None = None) -> Trainer:
        started.append(start_process(tmp_path, cmd, name, env_extra, marker=b"resnet50"))
        return started[-1]

    yield _launch
    reap(started)


def sample_steps(path: Path) -> dict[tuple[int, int], tuple[int, list[int]]]:
    """(step, rank) -> (epoch, ids) from the script's --sample-log; a step logged twice fails."""
    out: dict[tuple[int, int], tuple[int, list[int]]] = {}
    for line in path.read_text().splitlines():
        _, epoch, _, step, _, rank, _, ids = line.split()
        key = (int(step), int(rank))
        assert key not in out, f"step {step} of rank {rank} taken twice"
        out[key] = (int(epoch), [int(i) for i in ids.split(",")])
    return out


def assert_every_sample_once_per_epoch(steps: dict[tuple[int, int], tuple[int, list[int]]]) -> None:
    assert {s for s, _ in steps} == set(range(1, TOTAL + 1))  # no step repeated or skipped
    for epoch in range(EPOCHS):
        seen = Counter(i for e, ids in steps.values() if e == epoch for i in ids)
        assert set(seen) == set(range(SAMPLES)), f"epoch {epoch} missed samples"
        assert set(seen.values()) == {1}, (
            f"epoch {epoch} repeated {[i for i, c in seen.items() if c > 1]}"
        )


def final_top1(output: str) -> float:
    m = re.search(r"^final top1 ([\d.]+) top5 ([\d.]+)", output, re.M)
    assert m, output[-3000:]
    return float(m.group(1))


def test_resnet50_uninterrupted_reports_top1(
    tmp_path: Path, launch: Callable[..., Trainer]
) -> None:
    run = launch(resnet_cmd(tmp_path / "ck", tmp_path / "ids"), name="run")
    assert run.wait(DEADLINE) == 0, run.output()[-4000:]
    out = run.output()
    assert 0.0 <= final_top1(out) <= 100.0
    assert [f"epoch {e} top1" in out for e in range(EPOCHS)] == [True] * EPOCHS
    # Progressive resizing: one stage per epoch here (24, 28, 32 px).
    res = {int(m[1]): int(m[2]) for m in re.finditer(r"^step \d+ epoch (\d+) res (\d+)", out, re.M)}
    assert res == {0: 24, 1: 28, 2: 32}
    assert_every_sample_once_per_epoch(sample_steps(tmp_path / "ids"))
    assert committed(tmp_path / "ck")[-1] == TOTAL


@pytest.mark.parametrize("nproc", [1, 2], ids=["single", "torchrun-2"])
def test_resnet50_sigterm_mid_epoch_resumes_at_the_next_sample_bitwise(
    tmp_path: Path, launch: Callable[..., Trainer], nproc: int
) -> None:
    # A mid-epoch step after the first interval save (step 4), so a committed checkpoint
    # exists before the stop.
    k = random.Random(interruption_seed()).choice(
        [s for s in range(SAVE_STEPS + 1, TOTAL) if s % PER_EPOCH]
    )
    ref = launch(resnet_cmd(tmp_path / "ref", tmp_path / "ref.ids", nproc), name="ref")
    cut = launch(resnet_cmd(tmp_path / "run", tmp_path / "run.ids", nproc), name="cut",
                 env_extra={"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})  # fmt: skip
    paused = {("paused", r, k) for r in range(nproc)}
    poll_until(
        lambda: bool(committed(tmp_path / "run")) and paused <= set(read_events(cut.events)),
        DEADLINE, f"a committed checkpoint and every rank paused at step {k}", alive=cut,
    )  # fmt: skip
    cut.signal_group(signal.SIGTERM)  # torchrun forwards it to its workers
    rc = cut.wait(DEADLINE)
    out = cut.output()
    assert out.count("exiting 143") == nproc, out[-4000:]
    if nproc == 1:
        assert rc == 143, out[-4000:]
    assert committed(tmp_path / "run")[-1] == k
    assert max(s for s, _ in sample_steps(tmp_path / "run.ids")) == k  # no step after the stop
    data = load_checkpoint(tmp_path / "run", k)["shared"]["data"]
    epoch, cursor = divmod(k, PER_EPOCH)
    assert (data["epoch"], data["cursor"]) == (epoch, cursor * GLOBAL_BATCH)
    assert data["resolution"] == (24, 28, 32)[epoch]

    resumed = launch(resnet_cmd(tmp_path / "run", tmp_path / "run.ids", nproc), name="resumed")
    assert resumed.wait(DEADLINE) == 0, resumed.output()[-4000:]
    assert ref.wait(DEADLINE) == 0, ref.output()[-4000:]
    assert f"at step {k}: epoch {epoch} sample {cursor * GLOBAL_BATCH} " in resumed.output()

    got, want = sample_steps(tmp_path / "run.ids"), sample_steps(tmp_path / "ref.ids")
    assert_every_sample_once_per_epoch(got)
    assert got == want  # the same ids at every step as the uninterrupted run
    assert final_top1(resumed.output()) == final_top1(ref.output())
    assert_bitwise_equal(
        load_checkpoint(tmp_path / "run", TOTAL), load_checkpoint(tmp_path / "ref", TOTAL)
    )
