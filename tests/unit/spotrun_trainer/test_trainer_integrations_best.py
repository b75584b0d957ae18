"""The plain-loop integration with sharded (DCP) parts and the best checkpoint kept apart
(``SpotrunLoop(sharded=..., best=True)``, spotrun_trainer.best), one process, real files;
and the launcher starting a script instead of spotrun's CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from trainer_helpers import assert_bitwise_equal

from spotrun_trainer import launcher
from spotrun_trainer.best import BEST_DIR
from spotrun_trainer.checkpoint_io import committed_steps, read_marker, verify
from spotrun_trainer.integrations.loop import SpotrunLoop
from spotrun_trainer.sharded import ShardedModel, ShardedState, read_full

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def parts(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(3, 4)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def loop(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> SpotrunLoop:
    return SpotrunLoop(ckpt, shared={}, sharded={"train": ShardedState(model, opt)}, best=True,
                       interval_steps=2, keep=2, env={})  # fmt: skip


def test_best_checkpoint_is_kept_apart_from_the_rolling_ones_and_resumed(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    model, opt = parts(0)
    spot = loop(ckpt, model, opt)
    assert spot.resume() == 0 and spot.best_metric is None and spot.last_committed is None
    offered = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.0, 6: float("nan"), 8: 2.1}
    taken = []
    for s in range(1, 11):
        step(model, opt)
        if s in offered:
            taken.append(spot.offer_best(s, offered[s], sharded={"model": ShardedModel(model)},
                                         meta={"why": "test"}))  # fmt: skip
            if s == 2:
                best_weights = {k: v.clone() for k, v in model.state_dict().items()}
        spot.step_end(s)
    spot.finish(10)
    # Only strict improvements count (a tie or NaN is not better).
    assert taken == [True, True, False, False, False, False]
    assert spot.best_metric == 2.0 and spot.last_committed == 10
    # The rolling retention kept 2 (8, 10); the best (step 2) is older and still there.
    assert [s for s, _ in committed_steps(ckpt)] == [8, 10]
    best = ckpt / BEST_DIR / "step-2"
    assert [s for s, _ in committed_steps(ckpt / BEST_DIR)] == [2]
    assert verify(best, 2) is None
    marker = read_marker(best)
    assert marker is not None and marker["metric"] == 2.0 and marker["meta"] == {"why": "test"}
    assert_bitwise_equal(read_full(best / "dcp")["model"], best_weights)  # weights only
    assert "optim" not in read_full(best / "dcp")
    final = {k: v.clone() for k, v in model.state_dict().items()}
    final_opt = opt.state_dict()

    # A save of a better model killed before its commit leaves a staging folder only.
    (ckpt / BEST_DIR / ".tmp-step-12").mkdir()
    model2, opt2 = parts(1)
    spot2 = loop(ckpt, model2, opt2)
    assert spot2.resume() == 10
    assert not (ckpt / BEST_DIR / ".tmp-step-12").exists()
    assert spot2.best_metric == 2.0  # the run's best so far travels with step-10
    assert_bitwise_equal(model2.state_dict(), final)
    assert_bitwise_equal(opt2.state_dict()["state"], final_opt["state"])
    assert not spot2.offer_best(11, 2.0, sharded={"model": ShardedModel(model2)})
    assert spot2.offer_best(11, 1.5, sharded={"model": ShardedModel(model2)})
    assert [s for s, _ in committed_steps(ckpt / BEST_DIR)] == [11]  # the old best dropped
    spot2.close()


def test_a_replayed_best_step_is_not_written_twice(tmp_path: Path) -> None:
    """A run resumed from a rolling checkpoint older than its best replays up to it and
    reaches the same metric at the same step: the committed best stays as it is."""
    ckpt = tmp_path / "ckpt"
    model, opt = parts(0)
    spot = loop(ckpt, model, opt)
    spot.resume()
    assert spot.offer_best(3, 1.0, sharded={"model": ShardedModel(model)})
    marker = ckpt / BEST_DIR / "step-3" / "COMMITTED"
    before = marker.stat().st_mtime_ns
    spot.best.metric = None  # type: ignore[union-attr]  # the tracker of the older checkpoint
    assert spot.offer_best(3, 1.0, sharded={"model": ShardedModel(model)})
    assert marker.stat().st_mtime_ns == before
    spot.close()


def test_offer_best_needs_best_enabled(tmp_path: Path) -> None:
    model, opt = parts(0)
    spot = SpotrunLoop(tmp_path, shared={"model": model, "optimizer": opt}, env={})
    with pytest.raises(RuntimeError, match="best=True"):
        spot.offer_best(1, 1.0)
    spot.close()


def test_launcher_starts_a_script_of_the_users_or_spotruns_cli() -> None:
    env: dict[str, str] = {}
    cli = launcher.torchrun_command(["--x", "1"], 2, 30, env, module="spotrun_lm")
    assert cli[-4:] == ["-m", "spotrun_lm", "--x", "1"] and "--standalone" in cli
    script = launcher.torchrun_command(
        ["--x", "1"], 8, 30, {"PET_NNODES": "2"}, script="/a/train.py"
    )
    assert script[-3:] == ["/a/train.py", "--x", "1"]
    assert "--nproc-per-node=8" in script and "--standalone" not in script
