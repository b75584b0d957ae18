"""Retrieval data in BEIR's layout: a synthetic data set generated from a seed, and the
loader that reads it or a real BEIR data set (SciFact, FiQA, NFCorpus, MS MARCO, ...).

BEIR's layout (https://github.com/beir-cellar/beir, one folder per data set)::

    corpus.jsonl         {"_id": "d17", "title": "...", "text": "..."} per line
    queries.jsonl        {"_id": "q3", "text": "..."} per line
    qrels/<split>.tsv    query-id <TAB> corpus-id <TAB> score, a header line first

The synthetic set has the vocabulary mismatch that makes retrieval a learned skill rather
than word overlap: every concept has a *document* word (``d<i>``) and a different *query*
word (``q<i>``). A document holds a few concepts' document words among filler words; its
query names some of those concepts by their query words, rarely by the document word. A
randomly initialised encoder sees unrelated tokens and ranks near chance; a contrastive
model that learns ``q<i> ~ d<i>`` from the training queries ranks the held-out test queries'
documents well, because the concepts (not the documents) are shared between the splits.

    python examples/mpnet_ablations/beir_data.py --out /tmp/beir-synthetic --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

FILLERS = [f"w{i}" for i in range(40)]  # words without meaning, in queries and documents


@dataclass(frozen=True)
class SyntheticShape:
    """Size of the synthetic set; the defaults train well on one CPU core in minutes."""

    concepts: int = 150
    docs: int = 500
    train_queries: int = 400
    test_queries: int = 100
    concepts_per_doc: int = 4
    fillers_per_doc: int = 4
    concepts_per_query: int = 3
    literal_rate: float = 0.1  # how often a query uses the document word of a concept


@dataclass
class BeirData:
    """A data set as BEIR's loader returns it: id -> text maps and qrels by split."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> corpus id -> score

    def split(self, name: str) -> dict[str, dict[str, int]]:
        if name not in self.qrels:
            raise SystemExit(f"the data set has no qrels/{name}.tsv (has {sorted(self.qrels)})")
        return self.qrels[name]

    def words(self) -> list[str]:
        """Every whitespace-separated word of the corpus and the queries, most frequent first
        (ties by the word): the vocabulary of a word-level tokenizer."""
        counts: dict[str, int] = {}
        for text in [*self.corpus.values(), *self.queries.values()]:
            for w in text.split():
                counts[w] = counts.get(w, 0) + 1
        return sorted(counts, key=lambda w: (-counts[w], w))


def generate(seed: int, shape: SyntheticShape = SyntheticShape()) -> BeirData:
    """The synthetic data set of ``seed`` (a pure function of its arguments)."""
    s = shape
    if s.train_queries + s.test_queries > s.docs:
        raise ValueError("one query per document: need docs >= train + test queries")
    rng = random.Random(seed)
    corpus: dict[str, str] = {}
    concepts_of: dict[str, list[int]] = {}
    for d in range(s.docs):
        picked = rng.sample(range(s.concepts), s.concepts_per_doc)
        words = [f"d{c}" for c in picked] + rng.choices(FILLERS, k=s.fillers_per_doc)
        rng.shuffle(words)
        corpus[f"doc{d}"] = " ".join(words)
        concepts_of[f"doc{d}"] = picked
    targets = rng.sample(sorted(corpus), s.train_queries + s.test_queries)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "test": {}}
    for n, doc in enumerate(targets):
        named = rng.sample(concepts_of[doc], s.concepts_per_query)
        words = [f"d{c}" if rng.random() < s.literal_rate else f"q{c}" for c in named]
        words.append(rng.choice(FILLERS))
        rng.shuffle(words)
        qid = f"query{n}"
        queries[qid] = " ".join(words)
        qrels["train" if n < s.train_queries else "test"][qid] = {doc: 1}
    return BeirData(corpus, queries, qrels)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_beir(data: BeirData, folder: Path) -> Path:
    """Write ``data`` in BEIR's layout to ``folder``, atomically: into a sibling temporary
    folder renamed at the end, so a reader never sees a half-written data set."""
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "qrels").mkdir(parents=True)
    _write_jsonl(tmp / "corpus.jsonl",
                 ({"_id": k, "title": "", "text": v} for k, v in data.corpus.items()))  # fmt: skip
    _write_jsonl(tmp / "queries.jsonl", ({"_id": k, "text": v} for k, v in data.queries.items()))
    for split, qrels in data.qrels.items():
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f, delimiter="\t", lineterminator="\n")
            out.writerow(["query-id", "corpus-id", "score"])
            out.writerows((q, d, s) for q, docs in qrels.items() for d, s in docs.items())
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    return folder


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_beir(folder: Path) -> BeirData:
    """A data set in BEIR's layout (what ``beir.datasets.data_loader.GenericDataLoader``
    reads); the document text is ``title + " " + text`` as BEIR's evaluation encodes it."""
    corpus = {
        str(r["_id"]): f"{r.get('title') or ''} {r.get('text') or ''}".strip()
        for r in _read_jsonl(folder / "corpus.jsonl")
    }
    queries = {str(r["_id"]): str(r["text"]) for r in _read_jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for tsv in sorted((folder / "qrels").glob("*.tsv")):
        split: dict[str, dict[str, int]] = {}
        with open(tsv, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t")
            next(rows, None)  # the header
            for qid, did, score in rows:
                split.setdefault(qid, {})[did] = int(score)
        qrels[tsv.stem] = split
    return BeirData(corpus, queries, qrels)


def training_pairs(data: BeirData, split: str = "train") -> Dataset:
    """(anchor, positive) = (query, relevant document) for every positive qrel of ``split``,
    in a fixed order (sorted ids): the Trainer's seeded sampler does the shuffling."""
    anchors, positives = [], []
    for qid, docs in sorted(data.split(split).items()):
        for did, score in sorted(docs.items()):
            if score > 0 and qid in data.queries and did in data.corpus:
                anchors.append(data.queries[qid])
                positives.append(data.corpus[did])
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def main() -> None:
    p = argparse.ArgumentParser(description="Write the synthetic data set in BEIR's layout.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_beir(generate(a.seed), a.out))


if __name__ == "__main__":
    main()
