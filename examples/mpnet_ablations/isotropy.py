"""The isotropy regulariser: the mean pairwise cosine similarity of a batch's embeddings,
added to the contrastive loss with a weight.

Pretrained encoders are anisotropic: their embeddings crowd into a narrow cone, so any two
texts have a high cosine and the scores of relevant and irrelevant documents sit close
together. Penalising the batch's mean pairwise cosine pushes the embeddings apart, towards
a mean cosine of 0 (directions spread over the sphere).

For unit vectors u_1..u_n, sum over i != j of cos(u_i, u_j) = |sum_i u_i|^2 - n, so the
mean over the n(n-1) ordered pairs costs one sum instead of an n x n matrix, and it is
bounded below by -1/(n-1) (the sum of the vectors is 0): for a real batch that bound is
about 0, which is where the penalty pushes the mean.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import Tensor


def mean_pairwise_cosine(embeddings: Tensor) -> Tensor:
    """Mean cosine similarity over the ordered pairs (i, j), i != j, of the rows of
    ``embeddings`` (n x d, n >= 2); differentiable."""
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError("needs at least two embeddings")
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    total = unit.sum(dim=0)
    return (total.dot(total) - n) / (n * (n - 1))


class IsotropicMNRLoss(MultipleNegativesRankingLoss):
    """``MultipleNegativesRankingLoss`` (InfoNCE over in-batch negatives) plus ``weight`` x
    the mean pairwise cosine of every embedding of the batch (queries and documents
    together). ``weight=0`` is the plain loss."""

    def __init__(self, model: SentenceTransformer, weight: float, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.weight = weight

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        loss = super().compute_loss_from_embeddings(embeddings, labels)
        if self.weight == 0:
            return loss
        return loss + self.weight * mean_pairwise_cosine(torch.cat(embeddings, dim=0))

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "isotropy_weight": self.weight}
