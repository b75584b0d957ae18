"""The training recipe of the plan (ResNet-50 on ImageNet, 8x A100): presets, LR scaling
and schedule, progressive resizing, EMA, and top-1/top-5 evaluation."""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# The plan's command line (60 epochs, batch 2048 = 256 per GPU x 8, lr 0.8 = 0.1 x
# 2048/256, 8 warm-up epochs, one-cycle, label smoothing 0.1, clip 1.0, CutMix 0.3,
# MixUp 0.2, progressive 160 -> 192 -> 224, EMA, AMP) and a CPU-sized one of the same shape.
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": dict(depth=50, width=64, num_classes=1000, train_samples=1_281_167,
                     val_samples=50_000, image_size=256, res_stages="160,192,224",
                     batch_size=256, epochs=60, warmup_epochs=8, base_lr=0.1,
                     scale_min=0.08, ema_decay=0.9999, workers=8),
    "tiny": dict(depth=50, width=8, num_classes=10, train_samples=512, val_samples=128,
                 image_size=40, res_stages="24,28,32", batch_size=16, epochs=6,
                 warmup_epochs=1, base_lr=3.2, scale_min=0.35, ema_decay=0.9, workers=0),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ResNet-50 classification that survives spot stops")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    p.add_argument("--save-steps", type=int, default=0, help="also save every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--data-dir", help="<split>_images.npy / _labels.npy (else synthetic)")
    p.add_argument("--init-weights", help="a torchvision-layout ResNet state dict (.pth)")
    p.add_argument("--sample-log", help="append 'epoch E step S rank R ids ...' per step")
    p.add_argument("--log-every", type=int, default=10)
    for name, kind in [("depth", int), ("width", int), ("num-classes", int),
                       ("train-samples", int), ("val-samples", int), ("image-size", int),
                       ("res-stages", str), ("batch-size", int), ("epochs", int),
                       ("warmup-epochs", float), ("base-lr", float), ("scale-min", float),
                       ("ema-decay", float), ("workers", int)]:  # fmt: skip
        p.add_argument(f"--{name}", type=kind, default=None, help="default: from --preset")
    p.add_argument("--lr", type=float, help="peak LR (default: base-lr x global batch / 256)")
    p.add_argument("--scheduler", choices=["onecycle", "step"], default="onecycle")
    p.add_argument("--step-milestones", default="0.5,0.75", help="fractions of the run, x0.1")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--gradient-clip", type=float, default=1.0)
    p.add_argument("--cutmix-prob", type=float, default=0.3)
    p.add_argument("--mixup-alpha", type=float, default=0.2)
    p.add_argument("--no-progressive-resize", action="store_true")
    p.add_argument("--no-ema", action="store_true")
    a = p.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def resolution_stages(a: argparse.Namespace) -> list[int]:
    stages = [int(r) for r in str(a.res_stages).split(",")]
    return stages[-1:] if a.no_progressive_resize else stages


def stage_of(epoch: int, epochs: int, n_stages: int) -> int:
    """Stages split the epochs evenly: the plan's 60 epochs are 0-19 at 160 px, 20-39 at
    192, 40-59 at 224."""
    return min(n_stages - 1, epoch * n_stages // max(epochs, 1))


def peak_lr(a: argparse.Namespace, global_batch: int) -> float:
    return float(a.lr) if a.lr is not None else a.base_lr * global_batch / 256  # linear scaling


def scheduler(
    a: argparse.Namespace, opt: torch.optim.Optimizer, lr: float, total: int, per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if a.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=min(a.warmup_epochs / a.epochs, 0.99),
            cycle_momentum=False, anneal_strategy="cos",
        )  # fmt: skip
    warm = max(1, round(a.warmup_epochs * per_epoch))
    marks = [round(float(f) * total) for f in str(a.step_milestones).split(",")]

    def factor(s: int) -> float:  # linear warm-up, then x0.1 at each milestone
        return float(min(1.0, (s + 1) / warm) * 0.1 ** sum(s >= m for m in marks))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class EMA:
    """Exponential moving average of the weights (buffers copied), checkpointed."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.model.state_dict())

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.model.load_state_dict(state)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str, amp: bool
) -> tuple[float, float]:
    """Top-1 and top-5 (%) over this rank's share of the held-out split, summed over ranks."""
    was = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)
    for x, y in batches:
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            logits = model(x.to(device)).float().cpu()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        counts += torch.tensor([hit[:, 0].sum().item(), hit.any(1).sum().item(), len(y)])
    if dist.is_initialized():
        dist.all_reduce(counts)
    model.train(was)
    n = max(counts[2].item(), 1.0)
    return 100 * counts[0].item() / n, 100 * counts[1].item() / n


def cross_entropy_mixed(
    logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float, smoothing: float
) -> torch.Tensor:
    ce = nn.functional.cross_entropy
    loss = lam * ce(logits, y, label_smoothing=smoothing)
    if lam < 1.0:
        loss = loss + (1 - lam) * ce(logits, y2, label_smoothing=smoothing)
    return loss
