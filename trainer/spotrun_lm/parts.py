"""What a run trains and checkpoints: model (DDP or FSDP2), optimizer, schedule, data.

The checkpoint parts come in three dicts (see spotrun_trainer.checkpoint): ``shared``
(replicated on every rank, written by rank 0), ``per_rank`` (RNG, written by every rank) and
``sharded`` (FSDP model and optimizer, written by every rank through DCP; empty under DDP).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spotrun_lm.config import ConfigError, TrainConfig
from spotrun_lm.data import ResumableSampler, load_tokens, split, synthetic_tokens
from spotrun_lm.models import build_model
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.sharded import ShardedState, apply_fsdp
from spotrun_trainer.state import ModelState, RNGState, TrainProgress, seed_everything

log = logging.getLogger("spotrun_lm")


@dataclass
class WarmupCosine:
    """LR multiplier: linear warm-up, cosine decay to ``floor``. A class, not a lambda, so
    LambdaLR's state_dict records it."""

    warmup: int
    total: int
    floor: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        frac = min(1.0, (step - self.warmup) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class TrainParts:
    model: nn.Module  # unwrapped (DDP) or sharded in place (FSDP): what is saved and evaluated
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: ResumableSampler
    progress: TrainProgress
    train_rows: npt.NDArray[Any]
    val_rows: npt.NDArray[Any]
    batch_size: int  # per rank
    train_model: nn.Module = field(init=False)  # what forward/backward run on
    shared: dict[str, Any] = field(default_factory=dict)
    per_rank: dict[str, Any] = field(default_factory=dict)
    sharded: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_model = self.model


def rank_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Sequences per rank per step: ``global_batch_size / world size`` when set."""
    if cfg.global_batch_size <= 0:
        return cfg.batch_size
    if cfg.global_batch_size % world_size:
        raise ConfigError(
            f"global_batch_size {cfg.global_batch_size} does not divide over {world_size} ranks"
        )
    return cfg.global_batch_size // world_size


def uses_fsdp(cfg: TrainConfig, ctx: DistContext) -> bool:
    if cfg.parallel != "fsdp":
        return False
    if not ctx.distributed:
        log.warning("parallel=fsdp with one process: nothing to shard, training unsharded")
    return ctx.distributed


def _load_data(cfg: TrainConfig) -> tuple[npt.NDArray[Any], ...]:
    m = cfg.model
    tokens = (
        load_tokens(cfg.data.path, m.seq_len)
        if cfg.data.path
        else synthetic_tokens(cfg.data.num_samples, m.seq_len, m.vocab_size, cfg.seed)
    )
    return split(tokens, cfg.data.val_fraction)


def build_parts(cfg: TrainConfig, ctx: DistContext, resuming: bool = False) -> TrainParts:
    """Everything in its initial state (identical init on every rank, from the seed).
    ``resuming``: a checkpoint will be loaded into every weight, so the model's random init
    may be skipped (nothing else draws from the RNG before it is seeded again below)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, initialize=not resuming).to(ctx.device)
    fsdp = uses_fsdp(cfg, ctx)
    if fsdp:
        apply_fsdp(model)  # before the optimizer: it must hold the sharded parameters
    train_rows, val_rows = _load_data(cfg)
    batch = rank_batch_size(cfg, ctx.world_size)
    sampler = ResumableSampler(len(train_rows), batch, ctx.rank, ctx.world_size, cfg.seed)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(o.warmup_steps, cfg.max_steps)
    )
    use_scaler = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_scaler)
    p = TrainParts(model, optimizer, scheduler, scaler, sampler, TrainProgress(),
                   train_rows, val_rows, batch)  # fmt: skip
    p.shared = {"scheduler": scheduler, "scaler": scaler, "sampler": sampler,
                "progress": p.progress}  # fmt: skip
    if fsdp:
        p.sharded = {"train": ShardedState(model, optimizer)}
    else:
        p.shared = {"model": ModelState(model), "optimizer": optimizer, **p.shared}
    p.per_rank = {"rng": RNGState()}
    seed_everything(cfg.seed + 7919 * (ctx.rank + 1))  # distinct dropout/masks per rank
    return p


def wrap_for_training(p: TrainParts, ctx: DistContext) -> None:
    """DDP wraps after the checkpoint is loaded (FSDP shards at build time)."""
    if ctx.distributed and not p.sharded:
        device = ctx.device
        p.train_model = DistributedDataParallel(
            p.model, device_ids=[device.index] if device.type == "cuda" else None
        )
