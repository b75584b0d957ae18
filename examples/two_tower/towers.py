"""The two-tower model, its in-batch softmax loss and the ranking metrics.

User tower: user-id embedding + categorical feature embeddings -> MLP -> unit vector.
Item tower: item-id embedding + categorical features + the dense text embedding -> MLP ->
unit vector. Score = cosine / temperature. Training uses in-batch negatives (sampled
softmax, what sentence-transformers calls MultipleNegativesRankingLoss); evaluation ranks
every item for every held-out user, the user's training items excluded, and reports
recall@K, NDCG@K (the plan's headline metric, NDCG@10) and AUC.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class Tower(nn.Module):
    def __init__(
        self, n_ids: int, cat_sizes: list[int], dense_dim: int, d: int, out: int, dropout: float
    ) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_ids, d)
        self.cats = nn.ModuleList(nn.Embedding(n, d) for n in cat_sizes)
        width = d * (1 + len(cat_sizes)) + dense_dim
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d, out)
        )

    def forward(
        self, ids: torch.Tensor, cats: torch.Tensor, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = [self.ids(ids), *(emb(cats[:, c]) for c, emb in enumerate(self.cats))]
        if dense is not None:
            parts.append(dense)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class TwoTower(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        user_cat_sizes: list[int],
        item_cat_sizes: list[int],
        text_dim: int,
        d: int = 32,
        out: int = 32,
        dropout: float = 0.1,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.user = Tower(n_users, user_cat_sizes, 0, d, out, dropout)
        self.item = Tower(n_items, item_cat_sizes, text_dim, d, out, dropout)
        self.temperature = temperature

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.user(users, feats["user_cats"][users])
        v = self.item(items, feats["item_cats"][items], feats["item_text"][items])
        return u, v


def in_batch_softmax_loss(
    u: torch.Tensor, v: torch.Tensor, items: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each user against every item of the batch; an item that appears
    twice in the batch is no negative of itself (masked)."""
    logits = u @ v.T / temperature
    dup = (items[None, :] == items[:, None]) & ~torch.eye(len(items), dtype=torch.bool)
    logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(items)))


@torch.no_grad()
def rank_metrics(
    model: TwoTower,
    feats: dict[str, torch.Tensor],
    train_pairs: tuple[torch.Tensor, torch.Tensor],
    test_pairs: tuple[torch.Tensor, torch.Tensor],
    k: int = 10,
) -> dict[str, float]:
    """Full ranking of all items for every user with held-out interactions."""
    was_training = model.training
    model.eval()
    n_items = len(feats["item_cats"])
    all_items = torch.arange(n_items)
    v = model.item(all_items, feats["item_cats"], feats["item_text"])
    users = torch.unique(test_pairs[0])
    u = model.user(users, feats["user_cats"][users])
    scores = u @ v.T  # [n_test_users, n_items]
    row = torch.full((len(feats["user_cats"]),), -1, dtype=torch.long)
    row[users] = torch.arange(len(users))
    seen = torch.zeros_like(scores, dtype=torch.bool)
    mine = row[train_pairs[0]] >= 0  # training rows of the users ranked here
    seen[row[train_pairs[0][mine]], train_pairs[1][mine]] = True
    relevant = torch.zeros_like(seen)
    relevant[row[test_pairs[0]], test_pairs[1]] = True
    relevant &= ~seen
    scores = scores.masked_fill(seen, float("-inf"))
    n_rel = relevant.sum(1).float()
    keep = n_rel > 0
    top = scores.topk(k, dim=1).indices
    hits = relevant.gather(1, top).float()
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float) + 2.0)
    dcg = (hits * discount).sum(1)
    ideal = torch.stack([discount[: int(min(n, k))].sum() for n in n_rel.tolist()])
    # AUC per user over the candidate (unseen) items: P(score(pos) > score(neg)).
    ranks = scores.argsort(1).argsort(1).float()  # 0 = lowest; seen items rank lowest
    n_seen = seen.sum(1).float()
    n_neg = n_items - n_seen - n_rel
    pos_rank_sum = (ranks * relevant).sum(1) - n_seen * n_rel  # ranks among candidates
    auc = (pos_rank_sum - n_rel * (n_rel - 1) / 2) / (n_rel * n_neg).clamp(min=1)
    model.train(was_training)
    return {
        f"recall@{k}": float((hits.sum(1) / n_rel.clamp(min=1))[keep].mean()),
        f"ndcg@{k}": float((dcg / ideal.clamp(min=1e-9))[keep].mean()),
        "auc": float(auc[keep].mean()),
        "users": int(keep.sum()),
    }


def cosine_with_warmup(steps: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine to 10%."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = min(s - warmup, steps - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    return f
