"""A two-tower recommender under K-fold cross-validation that survives spot interruptions:
one run walks the folds, and the lines marked ``# spotrun`` are all spotrun adds.

The steps of all folds are numbered as one sequence (fold f covers global steps
f*S+1 .. (f+1)*S, S = --steps-per-fold), so spotrun's ``step-N`` checkpoints order the
whole CV. The fold index, the finished folds' metrics, the fold's model, optimizer,
schedule and batch cursor are one checkpointed part (folds.CrossValidation), the RNGs the
other. A finished fold is committed at once; an interruption costs at most the steps of
the current fold since the last save, never a finished fold. At the end the per-fold
table (and mean ± std) is printed and written to ``<checkpoint-dir>/cv_results.json``.

    PYTHONPATH=trainer python examples/two_tower/train.py --checkpoint-dir /tmp/ck
    PYTHONPATH=trainer torchrun --standalone --nproc-per-node 2 examples/two_tower/train.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from folds import CrossValidation, Recipe, summary, table, write_json
from interactions import fold_ids, load_csv, synthetic, tensors
from torch import nn
from towers import TwoTower

from spotrun_trainer.integrations.loop import SpotrunLoop  # spotrun
from spotrun_trainer.process_exit import run_main  # spotrun

RESULTS_FILE = "cv_results.json"


def line(msg: str) -> None:
    """One write per line: two ranks sharing a log never split each other's lines."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--steps-per-fold", type=int, default=300)
    p.add_argument("--save-steps", type=int, default=100, help="also saved at each fold's end")
    p.add_argument("--batch-size", type=int, default=96, help="global (split over ranks)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=600, help="synthetic data size")
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--per-user", type=int, default=20)
    p.add_argument("--data-csv", type=Path, help="the real data set instead (interactions.py)")
    p.add_argument("--item-text", type=Path, help=".npy item text embeddings for --data-csv")
    p.add_argument("--min-label", type=float, default=0.5, help="weak-label threshold")
    return p.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    ddp = "RANK" in os.environ  # started by torchrun
    if ddp:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)

    def say(msg: str) -> None:
        if rank == 0:
            line(msg)

    if a.data_csv is not None:
        data = load_csv(a.data_csv, a.item_text, a.min_label)
    else:
        data = synthetic(a.seed, a.users, a.items, a.per_user)
    user_cards, item_cards = data.cardinalities()
    recipe = Recipe(a.folds, a.steps_per_fold, a.batch_size, a.lr, a.weight_decay,
                    a.warmup, a.seed, rank, world)  # fmt: skip

    def build() -> TwoTower:
        return TwoTower(data.n_users, data.n_items, user_cards, item_cards,
                        data.item_text.shape[1], d=a.dim, out=a.dim,
                        temperature=a.temperature)  # fmt: skip

    def wrap(m: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(m) if ddp else m

    cv = CrossValidation(data, fold_ids(len(data.user), a.folds, a.seed), tensors(data),
                         recipe, build, wrap, say)  # fmt: skip
    spot = SpotrunLoop(  # spotrun: one shared part (the CV), every RNG per rank
        a.checkpoint_dir,
        shared={"cv": cv},
        interval_steps=a.save_steps,
        samples_per_step=a.batch_size,
    )
    start = spot.resume()  # spotrun
    total, per = a.folds * a.steps_per_fold, a.steps_per_fold
    if start == 0:
        cv.start_fold(0)  # no checkpoint: fold 0 starts (a load built the fold it holds)
    else:
        done = [m["fold"] for m in cv.results]
        say(f"resumed at step {start}: fold {cv.fold} step {start - cv.fold * per}/{per}, "
            f"folds done {done}")  # fmt: skip
    for step in range(start, total):
        assert step // per == cv.fold, (step, cv.fold)
        loss = cv.train_step()
        line(f"rank {rank} fold {cv.fold} step {step % per + 1}/{per} global {step + 1} "
             f"loss {loss:.6f}")  # fmt: skip
        fold_done = (step + 1) % per == 0
        if fold_done:
            cv.end_fold()  # metrics recorded, the next fold built before the save
        spot.step_end(step + 1)  # spotrun: saves when due; SIGTERM: save, exit 143
        if fold_done and spot.core.last_saved != step + 1:
            spot.save(step + 1)  # spotrun: a finished fold is committed at once
    if start < total:
        spot.finish(total)  # spotrun
    else:
        spot.close()  # a finished CV started again: nothing to train or save
    s = summary(cv.results)
    s["config"] = {  # the recipe (not where it ran: the file lies in that folder)
        k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "checkpoint_dir"
    }
    if rank == 0:
        write_json(Path(spot.manager.directory) / RESULTS_FILE, s)
    say(f"cross-validation: {len(cv.results)} folds\n{table(s)}")
    say(f"done: {total} steps, results in {Path(spot.manager.directory) / RESULTS_FILE}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)  # spotrun: exit without interpreter finalization
