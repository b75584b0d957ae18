"""Images, augmentation and the resumable epoch cursor.

Every training sample is a pure function of ``(seed, epoch, sample id, resolution)``: the
image itself (synthetic, or a row of an ``.npy`` array), its random-resized crop and flip
(a numpy generator seeded from those numbers, not a process RNG). Which ids a step takes
is a pure function of ``(seed, epoch, cursor)``: a permutation of the training set seeded
by ``(seed, epoch)``, read from ``cursor`` on, each rank taking its own slice of every
global batch. So the checkpoint only needs :class:`EpochCursor`'s few numbers to go on at
the next unseen sample, with any number of loader workers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
_PROTO, _LABEL, _IMAGE, _CROP, _MIX = 1000, 1001, 1002, 1003, 1004  # generator domains


class Images(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def image(self, i: int) -> torch.Tensor: ...  # float 3xHxW in [0, 1]

    def label(self, i: int) -> int: ...


class SyntheticImages:
    """``n`` class-structured images: a smooth random colour pattern per class (shared by
    the splits), plus per-image pattern noise and pixel noise. Nothing is stored but the
    labels; an image is generated when read, from ``(seed, split, i)``."""

    def __init__(self, n: int, num_classes: int, size: int, seed: int, split: int) -> None:
        self.n, self.num_classes, self.size = n, num_classes, size
        self.seed, self.split = seed, split
        protos = np.random.default_rng([seed, _PROTO]).random((num_classes, 3, 4, 4))
        self.protos = torch.from_numpy(protos.astype(np.float32))
        self.labels = np.random.default_rng([seed, _LABEL, split]).integers(0, num_classes, n)

    def __len__(self) -> int:
        return self.n

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def image(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, _IMAGE, self.split, i])
        low = self.protos[self.label(i)] + torch.from_numpy(
            0.15 * rng.standard_normal((3, 4, 4), dtype=np.float32)
        )
        img = F.interpolate(low[None], size=(self.size, self.size), mode="bilinear")[0]
        noise = rng.standard_normal((3, self.size, self.size), dtype=np.float32)
        return (img + 0.1 * torch.from_numpy(noise)).clamp(0, 1)


class NpyImages:
    """A real data set shipped as arrays: ``<dir>/<split>_images.npy`` (uint8, NxHxWx3,
    memory-mapped) and ``<dir>/<split>_labels.npy`` (integers)."""

    def __init__(self, folder: str | Path, split: str, num_classes: int) -> None:
        self.images: npt.NDArray[Any] = np.load(Path(folder) / f"{split}_images.npy", mmap_mode="r")
        self.labels: npt.NDArray[Any] = np.load(Path(folder) / f"{split}_labels.npy")
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def image(self, i: int) -> torch.Tensor:
        arr = np.ascontiguousarray(self.images[i])
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def _resize(img: torch.Tensor, res: int) -> torch.Tensor:
    out = F.interpolate(img[None], size=(res, res), mode="bilinear", antialias=True)[0]
    return (out - MEAN) / STD


def train_view(
    img: torch.Tensor, seed: int, epoch: int, i: int, res: int, scale_min: float
) -> torch.Tensor:
    """Random-resized crop (area ``[scale_min, 1]``, ratio ``[3/4, 4/3]``) and horizontal
    flip, drawn from ``(seed, epoch, i)``, resized to ``res``."""
    rng = np.random.default_rng([seed, _CROP, epoch, i])
    h0, w0 = img.shape[-2:]
    area = h0 * w0 * rng.uniform(scale_min, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(w0, max(1, round(math.sqrt(area * ratio))))
    h = min(h0, max(1, round(math.sqrt(area / ratio))))
    top, left = int(rng.integers(0, h0 - h + 1)), int(rng.integers(0, w0 - w + 1))
    crop = img[:, top : top + h, left : left + w]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return _resize(crop, res)


def eval_view(img: torch.Tensor, res: int) -> torch.Tensor:
    """Centre crop of 224/256 of the side, resized to ``res`` (the usual ImageNet eval)."""
    h0, w0 = img.shape[-2:]
    s = max(1, round(min(h0, w0) * 224 / 256))
    top, left = (h0 - s) // 2, (w0 - s) // 2
    return _resize(img[:, top : top + s, left : left + s], res)


class TrainEpoch(torch.utils.data.Dataset[tuple[torch.Tensor, int, int]]):
    """One epoch's view of the training set at one resolution (map-style, by sample id)."""

    def __init__(self, data: Images, seed: int, epoch: int, res: int, scale_min: float) -> None:
        self.data, self.seed, self.epoch = data, seed, epoch
        self.res, self.scale_min = res, scale_min

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = train_view(self.data.image(i), self.seed, self.epoch, i, self.res, self.scale_min)
        return img, self.data.label(i), i


class EpochCursor:
    """Where the gang is in the training data: the epoch, whose permutation is seeded by
    ``(seed, epoch)``, and ``cursor``, the samples of it the whole gang consumed. A global
    batch is ``perm[cursor : cursor + batch * world]``; rank r takes its r-th slice (as
    DistributedSampler shards, but in contiguous slices). The ragged tail of an epoch
    (``n mod global batch`` samples, different ones each epoch) is dropped. Checkpointed
    with the progressive-resize stage and resolution of the epoch."""

    def __init__(self, n: int, batch: int, world: int, seed: int) -> None:
        if n < batch * world:
            raise ValueError(f"{n} samples cannot fill a global batch of {batch * world}")
        self.n, self.batch, self.world, self.seed = n, batch, world, seed
        self.epoch = self.cursor = self.stage = self.resolution = 0
        self._perm: tuple[int, npt.NDArray[np.int64]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        if self._perm is None or self._perm[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n).astype(np.int64)
            self._perm = (epoch, perm)
        return self._perm[1]

    def remaining_batches(self, rank: int) -> list[list[int]]:
        """This rank's id batches from the cursor to the end of the epoch."""
        perm, gb = self.permutation(self.epoch), self.global_batch
        starts = range(self.cursor, self.steps_per_epoch * gb, gb)
        return [perm[s + rank * self.batch : s + (rank + 1) * self.batch].tolist() for s in starts]

    def advance(self) -> bool:
        """One global batch consumed; True when that ended the epoch."""
        self.cursor += self.global_batch
        return self.cursor + self.global_batch > self.n

    def next_epoch(self, stage: int, resolution: int) -> None:
        self.epoch, self.cursor, self.stage, self.resolution = self.epoch + 1, 0, stage, resolution

    def state_dict(self) -> dict[str, Any]:
        keys = ("n", "global_batch", "seed", "epoch", "cursor", "stage", "resolution")
        return {k: int(getattr(self, k)) for k in keys}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        for k in ("n", "global_batch", "seed"):
            if int(state[k]) != getattr(self, k):
                raise ValueError(f"checkpoint has {k}={state[k]}, this run {getattr(self, k)}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.stage, self.resolution = int(state["stage"]), int(state["resolution"])


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, key: list[int], cutmix_prob: float, mixup_alpha: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix with probability ``cutmix_prob`` (lambda ~ Beta(1, 1)), otherwise MixUp when
    ``mixup_alpha`` > 0 (lambda ~ Beta(alpha, alpha)); partners are a permutation of the
    batch. Drawn from a generator seeded by ``key``, so a resumed step mixes the same way.
    Returns (mixed images, partner labels, lambda): loss = lam*CE(y) + (1-lam)*CE(partner)."""
    rng = np.random.default_rng([*key, _MIX])
    order = torch.from_numpy(rng.permutation(len(y)))
    u = rng.random()
    if cutmix_prob > 0 and u < cutmix_prob:
        lam = float(rng.beta(1.0, 1.0))
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        t, b = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, r = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, t:b, left:r] = x[order, :, t:b, left:r]
        return x, y[order], 1 - (b - t) * (r - left) / (h * w)
    if mixup_alpha > 0:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        return lam * x + (1 - lam) * x[order], y[order], lam
    return x, y, 1.0
