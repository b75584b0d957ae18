"""Interactions of the two-tower example: synthetic (default) or the plan's CSV, K folds,
and the fold's training batches as a pure function of a cursor (the data position).

Synthetic data is a latent-factor world drawn from one seed: users and items have hidden
vectors; a user's categorical features (segment) and an item's (category) and dense "text
embedding" are noisy views of those vectors, and each user interacts with items drawn from
softmax(user . item). The towers can learn that structure from ids and features, so the
held-out metrics land well above chance (AUC 0.5, NDCG@10 of a random ranking).

The real data path (``--data-csv``, not exercised by the tests): a CSV with ``user_id``,
``item_id`` and optionally ``label`` (the plan's weak labels; rows with ``label`` below
``min_label`` are dropped), ``u_*`` columns (user categorical features) and ``i_*`` columns
(item categorical features); ``--item-text`` an ``.npy`` of precomputed item text
embeddings (e.g. sentence-transformers), one row per item in sorted ``item_id`` order.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Interactions:
    user: np.ndarray  # int64 [N]: user index of each interaction
    item: np.ndarray  # int64 [N]: item index of each interaction
    user_cats: np.ndarray  # int64 [U, C_u]: categorical user features
    item_cats: np.ndarray  # int64 [I, C_i]: categorical item features
    item_text: np.ndarray  # float32 [I, D]: dense item features (text embedding)

    @property
    def n_users(self) -> int:
        return len(self.user_cats)

    @property
    def n_items(self) -> int:
        return len(self.item_cats)

    def cardinalities(self) -> tuple[list[int], list[int]]:
        return (
            [int(c.max()) + 1 for c in self.user_cats.T],
            [int(c.max()) + 1 for c in self.item_cats.T],
        )


def synthetic(
    seed: int, n_users: int = 600, n_items: int = 300, per_user: int = 20, latent: int = 8
) -> Interactions:
    """A deterministic latent-factor world (same seed, same arrays, on every rank)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_users, latent))
    v = rng.standard_normal((n_items, latent))
    segment = np.argmax(u @ rng.standard_normal((latent, 6)), axis=1)  # learnable
    region = rng.integers(0, 4, n_users)  # noise
    category = np.argmax(v @ rng.standard_normal((latent, 8)), axis=1)
    text = v @ rng.standard_normal((latent, 16)) + 0.5 * rng.standard_normal((n_items, 16))
    popularity = 0.5 * rng.standard_normal(n_items)
    logits = u @ v.T / np.sqrt(latent) * 2.0 + popularity
    gumbel = rng.gumbel(size=logits.shape)  # Gumbel top-k: sampling without replacement
    items = np.argsort(-(logits + gumbel), axis=1)[:, :per_user]
    return Interactions(
        user=np.repeat(np.arange(n_users), per_user).astype(np.int64),
        item=items.reshape(-1).astype(np.int64),
        user_cats=np.stack([segment, region], axis=1).astype(np.int64),
        item_cats=category[:, None].astype(np.int64),
        item_text=(text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32),
    )


def load_csv(path: Path, item_text: Path | None = None, min_label: float = 0.5) -> Interactions:
    """The plan's data set (e.g. ``supervised_training_5m_weak.csv``), see the module doc."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r.get("label", 1) or 1) >= min_label]
    if not rows:
        raise ValueError(f"{path}: no interactions at label >= {min_label}")
    users = sorted({r["user_id"] for r in rows})
    items = sorted({r["item_id"] for r in rows})
    uix = {k: i for i, k in enumerate(users)}
    iix = {k: i for i, k in enumerate(items)}

    def cats(prefix: str, key: str, index: dict[str, int]) -> np.ndarray:
        cols = sorted(c for c in rows[0] if c.startswith(prefix))
        out = np.zeros((len(index), max(len(cols), 1)), dtype=np.int64)
        for c, col in enumerate(cols):
            vocab: dict[str, int] = {}
            for r in rows:
                out[index[r[key]], c] = vocab.setdefault(r[col], len(vocab))
        return out

    if item_text is not None:
        text = np.load(item_text).astype(np.float32)
        if len(text) != len(items):
            raise ValueError(f"{item_text}: {len(text)} rows for {len(items)} items")
    else:
        text = np.zeros((len(items), 1), dtype=np.float32)
    return Interactions(
        user=np.array([uix[r["user_id"]] for r in rows], dtype=np.int64),
        item=np.array([iix[r["item_id"]] for r in rows], dtype=np.int64),
        user_cats=cats("u_", "user_id", uix),
        item_cats=cats("i_", "item_id", iix),
        item_text=text,
    )


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each interaction: a seeded shuffle dealt round-robin (sizes differ by <= 1)."""
    order = np.random.default_rng([seed, 0xF01D]).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % folds
    return out


class FoldBatches:
    """Training batches of one fold: epoch ``e`` walks a permutation seeded by (seed, fold,
    e), so a batch is a pure function of the cursor (epoch, offset), the data position the
    checkpoint holds. Each rank takes its slice of the global batch (DDP)."""

    def __init__(
        self, train_idx: np.ndarray, batch: int, seed: int, fold: int, rank: int, world: int
    ) -> None:
        if len(train_idx) < batch:
            raise ValueError(f"fold {fold}: {len(train_idx)} training rows < batch {batch}")
        self.train_idx, self.batch, self.seed, self.fold = train_idx, batch, seed, fold
        self.rank, self.world = rank, world
        self.per_epoch = len(train_idx) // batch  # the tail of each epoch is dropped
        self.epoch, self.offset = 0, 0
        self._perm: tuple[int, np.ndarray] | None = None

    def next(self) -> np.ndarray:
        """Interaction indices of this rank's part of the next global batch."""
        if self._perm is None or self._perm[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.fold, self.epoch])
            self._perm = (self.epoch, rng.permutation(len(self.train_idx)))
        rows = self._perm[1][self.offset * self.batch : (self.offset + 1) * self.batch]
        self.offset += 1
        if self.offset == self.per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0
        return self.train_idx[rows[self.rank :: self.world]]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, sd: dict[str, Any], /) -> None:
        self.epoch, self.offset = int(sd["epoch"]), int(sd["offset"])


def tensors(data: Interactions) -> dict[str, torch.Tensor]:
    """The feature tables as tensors (indexed by user / item in the towers)."""
    return {
        "user_cats": torch.from_numpy(data.user_cats),
        "item_cats": torch.from_numpy(data.item_cats),
        "item_text": torch.from_numpy(data.item_text),
    }
