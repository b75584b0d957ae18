"""Pretrain a nanochat-style character-level GPT with FSDP2 that survives spot interruptions.

The model's shape follows from ``--depth`` (gpt.py); under torchrun, or as one rank per pod
of a multi-node TrainingRun, it is sharded with FSDP2 and its checkpoints are written by
every rank through torch.distributed.checkpoint (lines marked ``# spotrun``). SIGTERM (a
spot reclaim, or the operator when ``spec.budget`` is spent): the step in flight finishes,
``step-N`` is committed, a line names the last committed step and the best validation loss,
exit 143. Started again with the same ``--checkpoint-dir`` it resumes bitwise. Validation
loss every ``--eval-steps``; the best model is kept in ``<dir>/best/step-N``, apart from the
rolling checkpoints (at most ``SPOTRUN_CHECKPOINT_KEEP`` of them).

    PYTHONPATH=trainer python examples/gpt_pretrain/train.py --checkpoint-dir /tmp/gpt
    PYTHONPATH=trainer python examples/gpt_pretrain/train.py --nproc-per-node 2 ...  # FSDP2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass

import corpus
import gpt
import parallel as P
import torch
from torch import nn

from spotrun_api import contract
from spotrun_trainer import launcher
from spotrun_trainer.integrations.loop import SpotrunLoop  # spotrun
from spotrun_trainer.process_exit import run_main  # spotrun
from spotrun_trainer.sharded import ShardedModel, ShardedState  # spotrun
from spotrun_trainer.state import seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = p.add_argument
    arg("--checkpoint-dir", default=os.environ.get(contract.ENV_CHECKPOINT_DIR, "ckpt"))
    arg("--nproc-per-node", type=int,
        default=int(os.environ.get(contract.ENV_PROCS_PER_NODE, "1")),
        help="ranks to start here through torchrun (spec.procsPerNode in a pod)")  # fmt: skip
    arg("--depth", type=int, default=4, help="layers; width = depth x --aspect-ratio")
    arg("--aspect-ratio", type=int, default=64)
    arg("--head-dim", type=int, default=128)
    arg("--seq-len", type=int, default=64)
    arg("--device-batch-size", type=int, default=4, help="sequences per rank per micro-step")
    arg("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    arg("--max-steps", type=int, default=300)
    arg("--eval-steps", type=int, default=25, help="validation loss every N steps")
    arg("--eval-batches", type=int, default=4, help="held-out batches per rank per eval")
    arg("--save-steps", type=int, default=0, help="also save every N steps (0: timed only)")
    arg("--async-save", action="store_true", help="write periodic saves in the background")
    arg("--embedding-lr", type=float, default=0.2)
    arg("--unembedding-lr", type=float, default=0.004)
    arg("--matrix-lr", type=float, default=0.004)
    arg("--warmdown-ratio", type=float, default=0.2, help="final fraction: LR decays to 0")
    arg("--grad-clip", type=float, default=1.0)
    arg("--dtype", choices=sorted(P.DTYPES), default="fp32", help="bf16 on GPUs")
    arg("--device", choices=["auto", "cpu", "cuda"], default="auto")
    arg("--activation-checkpointing", action="store_true", help="recompute each block")
    arg("--text-file", help="train on this text instead of the generated corpus")
    arg("--corpus-chars", type=int, default=400_000, help="size of the generated corpus")
    arg("--val-fraction", type=float, default=0.1)
    arg("--seed", type=int, default=0)
    arg("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    arg("--log-every", type=int, default=1)
    return p.parse_args(argv)


@dataclass
class Warmdown:
    """LR multiplier: 1, then linear to 0 over the last ``ratio`` of ``total`` steps
    (nanochat's schedule). A class, so LambdaLR's state_dict records it."""

    total: int
    ratio: float

    def __call__(self, step: int) -> float:
        start = self.total * (1 - self.ratio)
        if step < start:
            return 1.0
        return max(0.0, (self.total - step) / max(1.0, self.total - start))


def optimizer(model: gpt.GPT, a: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW in nanochat's three groups, learning rates scaled by (d / 768) ^ -0.5.
    (nanochat trains the block matrices with Muon; AdamW here keeps FSDP2 simple.)"""
    scale = (model.config.model_dim / 768) ** -0.5
    blocks = [p for p in model.blocks.parameters()]
    groups = [
        {"params": [model.wte.weight], "lr": a.embedding_lr * scale},
        {"params": [model.lm_head.weight], "lr": a.unembedding_lr * scale},
        {"params": blocks, "lr": a.matrix_lr * scale},
    ]
    return torch.optim.AdamW(groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)


@dataclass
class Data:
    train: torch.Tensor
    val: torch.Tensor
    vocab: corpus.Vocab
    cursor: corpus.TokenCursor


def load_data(a: argparse.Namespace) -> Data:
    text = corpus.load_text(a.text_file, a.seed, a.corpus_chars)
    vocab = corpus.Vocab.from_text(text)
    train, val = corpus.split(vocab.encode(text), a.val_fraction)
    return Data(train, val, vocab, corpus.TokenCursor(len(train), a.seq_len, a.seed))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, data: Data,
               a: argparse.Namespace, d: P.Dist) -> float:  # fmt: skip
    """One optimizer step over ``grad_accum`` micro-batches; the mean loss of the gang."""
    total = torch.zeros((), dtype=torch.float64, device=d.device)
    for m in range(a.grad_accum):
        starts = data.cursor.batch_starts(m, d.rank, d.world, a.device_batch_size)
        x, y = (t.to(d.device) for t in corpus.sequences(data.train, starts, a.seq_len))
        P.set_gradient_sync(model, m == a.grad_accum - 1)
        with P.autocast(model, d, a.dtype):
            loss = gpt.loss_fn(model(x), y) / a.grad_accum
        loss.backward()
        total += loss.detach()
    if a.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    data.cursor.advance(a.grad_accum * d.world * a.device_batch_size)
    return float(P.all_reduce_sum(total, d)) / d.world


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, a: argparse.Namespace, d: P.Dist) -> float:
    """Mean loss per token on the same held-out sequences every time, over all ranks."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=d.device)
    for i in range(a.eval_batches):
        starts = corpus.val_starts(len(data.val), a.seq_len, i, d.rank, d.world,
                                   a.device_batch_size)  # fmt: skip
        x, y = (t.to(d.device) for t in corpus.sequences(data.val, starts, a.seq_len))
        with P.autocast(model, d, a.dtype):
            logits = model(x)
        sums[0] += gpt.loss_fn(logits, y, reduction="sum").double()
        sums[1] += y.numel()
    P.all_reduce_sum(sums, d)
    model.train()
    return float(sums[0] / sums[1])


def stop_line(spot: SpotrunLoop, why: str) -> str:
    """What every stop prints (rank 0): where a restart goes on, and the best model so far."""
    best = spot.best
    text = (
        "none yet"
        if best is None or best.metric is None
        else f"{best.metric:.6f} (step {best.step})"
    )
    return f"{why}: last committed step {spot.last_committed}, best val loss {text}"


def train(spot: SpotrunLoop, model: nn.Module, opt: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.LambdaLR, data: Data, a: argparse.Namespace,
          d: P.Dist) -> None:  # fmt: skip
    step = spot.resume()  # spotrun: 0, or the step of the newest committed checkpoint
    if d.rank == 0:
        print(f"at step {step}: epoch {data.cursor.epoch}, {data.cursor.consumed} sequences "
              f"consumed, best val loss {spot.best_metric}", flush=True)  # fmt: skip
    model.train()
    t0 = time.monotonic()
    while step < a.max_steps:
        loss = train_step(model, opt, data, a, d)
        sched.step()
        step += 1
        if d.rank == 0 and (step % a.log_every == 0 or step == a.max_steps):
            print(f"step {step}/{a.max_steps} loss {loss!r} lr {sched.get_last_lr()[2]:.6g} "
                  f"({time.monotonic() - t0:.1f}s)", flush=True)  # fmt: skip
        if step % a.eval_steps == 0 or step == a.max_steps:
            val = evaluate(model, data, a, d)
            meta = {"model": model_card(data, a), "val_loss": val}
            new = spot.offer_best(step, val, sharded={"model": ShardedModel(model)}, meta=meta)
            if d.rank == 0:
                print(f"step {step} val loss {val!r}{' (best)' if new else ''}", flush=True)
        spot.step_end(step)  # spotrun: saves when due; SIGTERM: save, commit, exit 143
    spot.finish(a.max_steps)  # spotrun: the final checkpoint


def model_card(data: Data, a: argparse.Namespace) -> dict[str, object]:
    """What rebuilds the model from the best checkpoint alone (its manifest's meta)."""
    cfg = gpt.config_for_depth(a.depth, len(data.vocab), a.seq_len, a.aspect_ratio, a.head_dim)
    return {**cfg.to_dict(), "vocab": data.vocab.chars}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args(argv)
    if a.nproc_per_node > 1 and not launcher.is_worker(os.environ):
        grace = float(os.environ.get(contract.ENV_TERMINATION_GRACE_SECONDS,
                                     contract.DEFAULT_TERMINATION_GRACE_SECONDS))  # fmt: skip
        # torchrun exits 1 on SIGTERM whatever its workers did: the launcher keeps 143.
        raise SystemExit(launcher.launch(sys.argv[1:], a.nproc_per_node, grace, script=__file__))
    if a.threads:
        torch.set_num_threads(a.threads)
    d = P.init_distributed(a.device)
    if not d.sharded:  # DCP says it saves in one process: that is the point here
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
    data = load_data(a)
    cfg = gpt.config_for_depth(a.depth, len(data.vocab), a.seq_len, a.aspect_ratio, a.head_dim)
    seed_everything(a.seed)  # the same initial weights on every rank, sharded below
    net = gpt.GPT(cfg, a.activation_checkpointing)
    net.init_weights()
    model = P.shard(net, d, a.dtype)
    opt = optimizer(net, a)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Warmdown(a.max_steps, a.warmdown_ratio))
    if d.rank == 0:
        print(f"depth {cfg.depth}: d_model {cfg.model_dim}, {cfg.n_head} heads of "
              f"{cfg.head_dim}, vocab {cfg.vocab_size}, {gpt.count_parameters(cfg):,} "
              f"parameters; {d.world} ranks ({'FSDP2' if d.sharded else 'unsharded'}, "
              f"{d.device.type}, {a.dtype})", flush=True)  # fmt: skip
    spot = SpotrunLoop(  # spotrun: RNG per rank (default), data position and schedule shared,
        a.checkpoint_dir,  # model + AdamW sharded through DCP, the best model apart
        shared={"scheduler": sched, "data": data.cursor},
        sharded={"train": ShardedState(model, opt)},
        best=True,
        interval_steps=a.save_steps,
        async_save=a.async_save,
        samples_per_step=a.grad_accum * d.world * a.device_batch_size,
    )
    why = "failed"
    try:
        train(spot, model, opt, sched, data, a, d)
        why = "finished"
    except SystemExit:  # a stop (SIGTERM: a reclaim, the budget): step-N is committed
        why = "stopped"
        raise
    finally:
        if d.rank == 0:
            print(stop_line(spot, why), flush=True)
    P.close(d)


def main_recorded() -> None:
    """``main``, its exit code left for the launcher's (torchrun's workers)."""
    code = 1
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        raise
    finally:
        launcher.record_exit(code)


if __name__ == "__main__":
    run_main(main_recorded)  # spotrun: exit without interpreter finalization
