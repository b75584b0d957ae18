"""The cross-validation walk as one checkpointable part.

:class:`CrossValidation` holds the fold being trained (its model, optimizer, LR schedule
and batch cursor) and the results of the folds already finished. Its ``state_dict`` is
all of that, so the one ``shared`` part given to ``SpotrunLoop`` puts the fold index, the
finished folds' metrics and the data position into every checkpoint (the RNG is
``SpotrunLoop``'s ``per_rank`` default). Loading a checkpoint of fold f builds fold f's
objects and loads them: a resumed run goes on inside that fold, and finished folds are
never trained again.

Each fold starts from its own seeds (model init from (seed, fold), every rank's RNG from
(seed, fold, rank)), so its result does not depend on the folds before it: the numbers are
those ten separate runs would give.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from interactions import FoldBatches, Interactions
from torch import nn
from towers import TwoTower, cosine_with_warmup, in_batch_softmax_loss, rank_metrics

from spotrun_trainer.state import seed_everything

METRICS = ("recall@10", "ndcg@10", "auc")


@dataclass
class Recipe:
    folds: int
    steps_per_fold: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    seed: int
    rank: int = 0
    world: int = 1


class CrossValidation:
    def __init__(
        self,
        data: Interactions,
        fold_of: np.ndarray,
        feats: dict[str, torch.Tensor],
        recipe: Recipe,
        build_model: Callable[[], TwoTower],
        wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
        log: Callable[[str], None] = print,
    ) -> None:
        self.data, self.fold_of, self.feats, self.r = data, fold_of, feats, recipe
        self.build_model, self.wrap, self.log = build_model, wrap, log
        self.results: list[dict[str, Any]] = []
        self.fold = -1
        self.losses: list[float] = []

    # --- one fold ----------------------------------------------------------------------------

    def start_fold(self, fold: int, fresh: bool = True) -> None:
        """Build fold ``fold``'s model, optimizer, schedule and batches. ``fresh``: the fold
        really starts (its RNG is seeded); a load replaces all of it right after."""
        r = self.r
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed * 1_000_003 + fold)  # the same init on every rank
            self.model = self.build_model()
        self.trained = self.wrap(self.model)  # DDP: a collective, every rank builds it
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, cosine_with_warmup(r.steps_per_fold, r.warmup)
        )
        train_idx = np.flatnonzero(self.fold_of != fold)
        self.batches = FoldBatches(train_idx, r.batch_size, r.seed, fold, r.rank, r.world)
        self.fold, self.losses = fold, []
        if fresh:
            seed_everything(r.seed * 1_000_003 + fold * 1009 + 7 * (r.rank + 1))
            self.log(f"fold {fold} start: {len(train_idx)} training rows")

    def train_step(self) -> float:
        rows = torch.from_numpy(self.batches.next())
        users = torch.from_numpy(self.data.user)[rows]
        items = torch.from_numpy(self.data.item)[rows]
        u, v = self.trained(users, items, self.feats)
        loss = in_batch_softmax_loss(u, v, items, self.model.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        self.sched.step()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def end_fold(self) -> None:
        """Evaluate the fold on its held-out rows, record it, start the next fold."""
        f = self.fold
        test = torch.from_numpy(self.fold_of == f)
        user, item = torch.from_numpy(self.data.user), torch.from_numpy(self.data.item)
        train_pairs, test_pairs = (user[~test], item[~test]), (user[test], item[test])
        m = rank_metrics(self.model, self.feats, train_pairs, test_pairs)
        tail = self.losses[-max(len(self.losses) // 10, 1) :]
        m = {"fold": f, **m, "train_loss": sum(tail) / max(len(tail), 1)}
        self.results.append(m)
        self.log(f"fold {f} done: " + " ".join(f"{k} {m[k]:.4f}" for k in METRICS))
        if f + 1 < self.r.folds:
            self.start_fold(f + 1)

    # --- the checkpointed state ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "results": [dict(m) for m in self.results],
            "losses": list(self.losses),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "data": self.batches.state_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any], /) -> None:
        self.start_fold(int(sd["fold"]), fresh=False)
        self.results = [dict(m) for m in sd["results"]]
        self.losses = [float(x) for x in sd["losses"]]
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["optimizer"])
        self.sched.load_state_dict(sd["scheduler"])
        self.batches.load_state_dict(sd["data"])


# --- the report --------------------------------------------------------------------------------


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-fold rows, mean and (sample) std of each metric."""
    cols = [*METRICS, "train_loss"]
    mean = {c: statistics.fmean(m[c] for m in results) for c in cols}
    std = {c: statistics.stdev(m[c] for m in results) if len(results) > 1 else 0.0 for c in cols}
    return {"folds": results, "mean": mean, "std": std}


def table(s: dict[str, Any]) -> str:
    cols = [*METRICS, "train_loss"]
    lines = ["fold  " + "  ".join(f"{c:>17}" for c in cols) + "  users"]
    for m in s["folds"]:
        vals = "  ".join(f"{m[c]:>17.4f}" for c in cols)
        lines.append(f"{m['fold']:>4}  {vals}  {m['users']:>5}")
    lines.append("mean  " + "  ".join(f"{s['mean'][c]:>8.4f} ± {s['std'][c]:<6.4f}" for c in cols))
    return "\n".join(lines)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
