"""examples/two_tower: K-fold cross-validation walked by one run.

An uninterrupted tiny CV (3 folds x 8 steps) prints the per-fold table and writes it as
JSON beside the checkpoints; the same CV SIGTERMed in the middle of a fold (not the first)
exits 143 with that step committed, and the resumed run goes on inside that fold: no
finished fold is trained again (the script's own lines say so), and the per-fold metrics
and the final checkpoint are bitwise those of the uninterrupted run.
"""

from __future__ import annotations

import json
import random
import re
import signal
from collections.abc import Callable, Iterator
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
    reap,
    start_process,
    wait_for_events,
)

FOLDS, PER_FOLD, SAVE_STEPS = 3, 8, 3
TOTAL = FOLDS * PER_FOLD
METRICS = ("recall@10", "ndcg@10", "auc", "train_loss")
Reference = Callable[[int], tuple[Path, str]]
STEP_LINE = re.compile(r"^rank 0 fold (\d+) step (\d+)/\d+ global (\d+) loss (\S+)$", re.M)


def cv_cmd(ckpt: Path, nproc: int = 1) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [PYTHON, *(launcher if nproc > 1 else []),
            str(REPO / "examples" / "two_tower" / "train.py"), "--seed", "4",
            "--folds", str(FOLDS), "--steps-per-fold", str(PER_FOLD),
            "--save-steps", str(SAVE_STEPS), "--warmup", "2", "--batch-size", "32",
            "--users", "120", "--items", "60", "--per-user", "10",
            "--checkpoint-dir", str(ckpt)]  # fmt: skip


def start(
    folder: Path, name: str, ckpt: str, nproc: int = 1, env_extra: dict[str, str] | None = None
) -> Trainer:
    """A run of the example in its own session, output in ``<name>.log``."""
    return start_process(folder, cv_cmd(folder / ckpt, nproc), name, env_extra, b"two_tower")


def steps(output: str) -> list[tuple[int, int, int, str]]:
    """(fold, step in fold, global step, loss) of every step line, in order."""
    return [(int(f), int(s), int(g), loss) for f, s, g, loss in STEP_LINE.findall(output)]


def folds_done(output: str) -> list[int]:
    return [int(f) for f in re.findall(r"^fold (\d+) done:", output, re.M)]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """Uninterrupted CVs, one per process count, run once per module when first asked for:
    ``reference(nproc)`` is (its checkpoint folder, its output)."""
    folder = tmp_path_factory.mktemp("two-tower-ref")
    done: dict[int, tuple[Path, str]] = {}
    runs: list[Trainer] = []

    def reference(nproc: int) -> tuple[Path, str]:
        if nproc not in done:
            t = start(folder, f"ref-{nproc}", f"ref-{nproc}-ckpt", nproc)
            runs.append(t)
            assert t.wait() == 0, t.output()[-4000:]
            done[nproc] = (folder / f"ref-{nproc}-ckpt", t.output())
        return done[nproc]

    yield reference
    reap(runs)


def test_two_tower_cv_prints_the_fold_table_and_writes_json(references: Reference) -> None:
    ckpt, out = references(1)
    assert folds_done(out) == list(range(FOLDS))
    assert re.findall(r"^fold (\d+) start", out, re.M) == [str(f) for f in range(FOLDS)]
    assert [(f, s) for f, s, _, _ in steps(out)] == [
        (f, s) for f in range(FOLDS) for s in range(1, PER_FOLD + 1)
    ]
    table = out[out.index("cross-validation: 3 folds") :].splitlines()
    assert table[1].split() == ["fold", *METRICS, "users"]
    assert [row.split()[0] for row in table[2 : 2 + FOLDS]] == ["0", "1", "2"]
    assert table[2 + FOLDS].startswith("mean") and table[2 + FOLDS].count("±") == len(METRICS)
    results = json.loads((ckpt / "cv_results.json").read_text())
    assert [m["fold"] for m in results["folds"]] == list(range(FOLDS))
    for m in results["folds"]:
        assert 0.0 <= m["recall@10"] <= 1.0 and 0.0 <= m["ndcg@10"] <= 1.0
        assert 0.0 <= m["auc"] <= 1.0 and m["users"] > 0
    assert set(results["mean"]) == set(results["std"]) == set(METRICS)
    assert committed(ckpt)[-1] == TOTAL  # the final step, committed


@pytest.mark.parametrize("nproc", [1, 2], ids=["single", "torchrun-2"])
def test_two_tower_cv_sigterm_mid_fold_resumes_in_that_fold_bitwise(
    nproc: int, tmp_path: Path, references: Reference
) -> None:
    rng = random.Random(interruption_seed())
    fold, within = rng.randrange(1, FOLDS), rng.randrange(1, PER_FOLD)
    k = fold * PER_FOLD + within  # in fold `fold`, after at least one finished fold
    ref_ckpt, ref_out = references(nproc)
    runs: list[Trainer] = []
    try:
        cut = start(tmp_path, "cut", "ckpt", nproc, {"SPOTRUN_TEST_PAUSE_AT_STEP": str(k)})
        runs.append(cut)
        wait_for_events(cut, [("paused", r, k) for r in range(nproc)])
        cut.signal_group(signal.SIGTERM)  # torchrun forwards it to its workers
        rc = cut.wait()
        assert cut.output().count("exiting 143") == nproc, cut.output()[-4000:]
        if nproc == 1:  # torchrun's own code is not its workers' (docs/trainer.md)
            assert rc == 143
        assert committed(tmp_path / "ckpt")[-1] == k
        before = steps(cut.output())
        assert before[-1][2] == k  # no step after the one the stop saved
        assert folds_done(cut.output()) == list(range(fold))

        resumed = start(tmp_path, "resumed", "ckpt", nproc)  # the same checkpoint folder
        runs.append(resumed)
        assert resumed.wait() == 0, resumed.output()[-4000:]
        out = resumed.output()
        assert (
            f"resumed at step {k}: fold {fold} step {within}/{PER_FOLD}, "
            f"folds done {list(range(fold))}"
        ) in out
        after = steps(out)
        assert after[0][:3] == (fold, within + 1, k + 1)  # inside the fold, at the next step
        assert {f for f, *_ in after} == set(range(fold, FOLDS))  # finished folds not retrained
        assert folds_done(out) == list(range(fold, FOLDS))
        started = [int(f) for f in re.findall(r"^fold (\d+) start", out, re.M)]
        assert started == list(range(fold + 1, FOLDS))  # the fold went on, none restarted
        assert before + after == steps(ref_out)  # every step once, with the same loss

        got = json.loads((tmp_path / "ckpt" / "cv_results.json").read_text())
        assert got == json.loads((ref_ckpt / "cv_results.json").read_text())
        assert_bitwise_equal(
            load_checkpoint(tmp_path / "ckpt", TOTAL), load_checkpoint(ref_ckpt, TOTAL)
        )
    finally:
        reap(runs)
