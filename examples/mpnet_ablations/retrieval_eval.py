"""nDCG@10 over a BEIR split: dense retrieval of every query against the whole corpus.

The metric is BEIR's (pytrec_eval's ``ndcg_cut_10``): gain = the qrel's graded score,
discount log2(rank + 1), normalised by the ideal ranking of the query's judged documents;
queries without a positive judgement are left out. Ranking is by cosine similarity, ties
broken by the corpus id so that the number does not depend on the batch or chunk size
(exact ties at a chunk's 10th place are cut by ``topk``'s order; cosines of distinct
texts practically never tie). The evaluator also reports the corpus's mean pairwise
cosine (the plan's "isotropy" column, reversed: 0 is isotropic, near 1 a narrow cone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from torch import Tensor

NDCG = "ndcg@10"
MEAN_COSINE = "mean_cosine"


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one query: ``ranked`` document ids, best first; ``relevance`` its qrels
    (id -> graded score, unjudged ids count 0)."""
    dcg = sum(relevance.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((s for s in relevance.values() if s > 0), reverse=True)[:k]
    idcg = sum(s / math.log2(i + 2) for i, s in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


class BeirEvaluator(BaseEvaluator):
    """sentence-transformers evaluator: ``{"ndcg@10": mean nDCG@10, "mean_cosine": ...}``
    of ``model`` on the queries of one qrels split. The corpus is encoded in chunks of
    ``chunk`` documents, keeping each query's running top 10, so a large BEIR corpus needs
    memory for one chunk only."""

    def __init__(
        self,
        corpus: Mapping[str, str],
        queries: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        batch_size: int = 64,
        chunk: int = 50_000,
        k: int = 10,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.primary_metric = NDCG
        self.greater_is_better = True
        self.qids = sorted(q for q, rel in qrels.items() if q in queries and max(rel.values()) > 0)
        self.queries = [queries[q] for q in self.qids]
        self.qrels = qrels
        self.corpus_ids = sorted(corpus)
        self.corpus = [corpus[d] for d in self.corpus_ids]
        self.batch_size, self.chunk, self.k = batch_size, chunk, k

    def _encode(self, model: SentenceTransformer, texts: list[str]) -> Tensor:
        emb = model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                           normalize_embeddings=True, show_progress_bar=False)  # fmt: skip
        return emb.float().cpu()

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        q = self._encode(model, self.queries)
        best: list[list[tuple[float, str]]] = [[] for _ in self.qids]
        total, n = None, 0
        for start in range(0, len(self.corpus), self.chunk):
            ids = self.corpus_ids[start : start + self.chunk]
            c = self._encode(model, self.corpus[start : start + self.chunk])
            total = c.sum(0) if total is None else total + c.sum(0)
            n += len(ids)
            vals, idx = (q @ c.T).topk(min(self.k, len(ids)), dim=1)
            for hits, v, i in zip(best, vals.tolist(), idx.tolist(), strict=True):
                hits.extend((score, ids[j]) for score, j in zip(v, i, strict=True))
                hits.sort(key=lambda h: (-h[0], h[1]))
                del hits[self.k :]
        ndcg = [
            ndcg_at_k([d for _, d in hits], self.qrels[qid], self.k)
            for qid, hits in zip(self.qids, best, strict=True)
        ]
        assert total is not None, "an empty corpus"
        mean_cos = (float(total.dot(total)) - n) / (n * (n - 1)) if n > 1 else 0.0
        return {NDCG: sum(ndcg) / len(ndcg), MEAN_COSINE: mean_cos}
