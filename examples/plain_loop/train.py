"""A nanoGPT-style loop that survives spot interruptions: the lines marked ``# spotrun``
are all it adds.

A tiny causal transformer on a synthetic token stream, batches drawn from the torch RNG
(nanoGPT's ``get_batch``), AdamW and a cosine LR schedule; under torchrun it trains with
DDP (gloo), seeded per rank as nanoGPT does.

    PYTHONPATH=trainer python examples/plain_loop/train.py --checkpoint-dir /tmp/ck
    PYTHONPATH=trainer torchrun --standalone --nproc-per-node 2 examples/plain_loop/train.py
"""

from __future__ import annotations

import argparse
import logging
import math
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from spotrun_trainer.integrations.loop import SpotrunLoop  # spotrun
from spotrun_trainer.process_exit import run_main  # spotrun
from spotrun_trainer.state import seed_everything

VOCAB, BLOCK, BATCH = 64, 16, 8


class TinyGPT(nn.Module):
    def __init__(self, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(BLOCK, d)
        layer = nn.TransformerEncoderLayer(d, 2, 4 * d, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(BLOCK))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        out: torch.Tensor = self.head(self.blocks(x, mask=self.mask, is_causal=True))
        return out


def get_batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
    x = torch.stack([data[i : i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
    return x, y


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args()
    ddp = "RANK" in os.environ  # started by torchrun
    if ddp:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if ddp else 0
    seed_everything(a.seed + rank)  # python, numpy, torch: all are checkpointed per rank
    data = torch.randint(0, VOCAB, (4096,), generator=torch.Generator().manual_seed(a.seed))
    model: nn.Module = TinyGPT()
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)  # rank 0's weights everywhere
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.max_steps) / a.max_steps))
    )
    spot = SpotrunLoop(  # spotrun
        a.checkpoint_dir,
        shared={"model": model, "optimizer": opt, "scheduler": sched},
        interval_steps=a.save_steps,
        samples_per_step=BATCH * (dist.get_world_size() if ddp else 1),
    )
    start = spot.resume()  # spotrun
    model.train()
    for step in range(start, a.max_steps):
        x, y = get_batch(data)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        print(f"rank {rank} step {step + 1} loss {loss.item():.6f}", flush=True)
        spot.step_end(step + 1)  # spotrun: saves when due; SIGTERM: save, exit 143
    spot.finish(a.max_steps)  # spotrun
    print(f"done: {a.max_steps} steps", flush=True)
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)  # spotrun: exit without interpreter finalization
