"""examples/mpnet_ablations, its parts in process: the isotropy regulariser, nDCG@10 on
hand-made rankings (and against sentence-transformers' own evaluator), the synthetic BEIR
set and its round trip through BEIR's layout, the MPNet built from a config, and the
manifest of the three TrainingRuns (valid specs, one node's worth, flags the script takes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from beir_data import SyntheticShape, generate, load_beir, training_pairs, write_beir
from isotropy import IsotropicMNRLoss, mean_pairwise_cosine
from kubernetes.utils import parse_quantity
from mpnet_model import add_projection, freeze_encoder, mpnet_from_config, word_level_tokenizer
from retrieval_eval import BeirEvaluator, ndcg_at_k
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import MPNetConfig

from spotrun_api.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "manifests" / "examples" / "mpnet-ablations.yaml"
TINY = SyntheticShape(concepts=30, docs=60, train_queries=20, test_queries=20)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformer:
    words = generate(0, TINY).words()
    config = MPNetConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=20)  # fmt: skip
    folder = tmp_path_factory.mktemp("mpnet") / "init"
    return mpnet_from_config(folder, config, word_level_tokenizer(words, 16), seed=1)


# --- isotropy -------------------------------------------------------------------------------


def test_mean_pairwise_cosine_on_hand_made_batches() -> None:
    assert float(mean_pairwise_cosine(torch.eye(4))) == pytest.approx(0.0, abs=1e-7)
    same = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])  # one direction, any length
    assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0)
    assert float(mean_pairwise_cosine(torch.tensor([[3.0, 0.0], [-1.0, 0.0]]))) == -1.0
    # Three unit vectors 120 degrees apart: every cosine -1/2, the bound -1/(n-1).
    tri = torch.tensor([[math.cos(a), math.sin(a)] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    assert float(mean_pairwise_cosine(tri)) == pytest.approx(-0.5, abs=1e-6)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(torch.ones(1, 3))


def test_mean_pairwise_cosine_equals_the_pairwise_mean_and_has_gradients() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    unit = torch.nn.functional.normalize(x, dim=-1)
    cos = unit @ unit.T
    brute = (cos.sum() - cos.diagonal().sum()) / (7 * 6)
    got = mean_pairwise_cosine(x)
    assert float(got.detach()) == pytest.approx(float(brute.detach()), abs=1e-6)
    got.backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_isotropic_loss_is_mnrl_plus_the_weighted_mean_cosine(
    tiny_model: SentenceTransformer,
) -> None:
    g = torch.Generator().manual_seed(1)
    queries, docs = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    labels = torch.arange(4)
    plain = MultipleNegativesRankingLoss(tiny_model).compute_loss_from_embeddings(
        [queries, docs], labels
    )
    reg = IsotropicMNRLoss(tiny_model, 0.5).compute_loss_from_embeddings([queries, docs], labels)
    both = mean_pairwise_cosine(torch.cat([queries, docs]))
    assert float(reg) == pytest.approx(float(plain) + 0.5 * float(both), abs=1e-6)
    zero = IsotropicMNRLoss(tiny_model, 0.0).compute_loss_from_embeddings([queries, docs], labels)
    assert torch.equal(zero, plain)


# --- nDCG -----------------------------------------------------------------------------------


def test_ndcg_at_10_on_hand_made_rankings() -> None:
    assert ndcg_at_k(["a", "b", "c"], {"a": 1}) == 1.0
    assert ndcg_at_k(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))  # 0.6309
    # Graded: dcg 2/log2(3) + 1/log2(4); ideal 2/log2(2) + 1/log2(3).
    graded = ndcg_at_k(["x", "a", "b"], {"a": 2, "b": 1})
    assert graded == pytest.approx((2 / math.log2(3) + 0.5) / (2 + 1 / math.log2(3)))
    assert graded == pytest.approx(0.66967, abs=1e-5)
    ranked = [f"n{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranked, {"a": 1}) == 0.0  # 11th place is outside the cut
    assert ndcg_at_k(["a"], {"a": 0, "b": -1}) == 0.0  # no positive judgement
    # Two relevant, one retrieved first: dcg 1, ideal 1 + 1/log2(3).
    assert ndcg_at_k(["a", "x"], {"a": 1, "b": 1}) == pytest.approx(1 / (1 + 1 / math.log2(3)))


class FixedEncoder:
    """A stand-in model: each text's embedding is given."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], **kwargs: Any) -> torch.Tensor:
        emb = torch.tensor([self.vectors[t] for t in texts])
        return torch.nn.functional.normalize(emb, dim=-1)


def test_evaluator_ranks_the_corpus_in_chunks_ties_by_id() -> None:
    vectors = {"qa": [1.0, 0.0], "qb": [0.0, 1.0], "A": [1.0, 0.1], "B": [0.1, 1.0],
               "C": [0.7, 0.7], "D": [0.7, 0.7]}  # fmt: skip
    corpus = {"d1": "A", "d2": "B", "d4": "C", "d3": "D"}
    queries = {"q1": "qa", "q2": "qb", "q3": "qa"}
    # q1: d1 first (1.0). q2: d2 first, then the tie d3/d4 (d3 first by id): d4 at rank 3.
    qrels = {"q1": {"d1": 1}, "q2": {"d4": 1}, "q3": {"d2": 0}}  # q3: no positive, left out
    want = (1.0 + 1 / math.log2(4)) / 2
    for chunk in (1, 2, 10):
        m = BeirEvaluator(corpus, queries, qrels, chunk=chunk)(FixedEncoder(vectors))
        assert m["ndcg@10"] == pytest.approx(want)
    c = torch.nn.functional.normalize(torch.tensor([vectors[t] for t in "ABCD"]), dim=-1)
    cos = c @ c.T
    assert m["mean_cosine"] == pytest.approx(float((cos.sum() - 4) / 12), abs=1e-6)


def test_evaluator_agrees_with_sentence_transformers_on_binary_qrels(
    tiny_model: SentenceTransformer,
) -> None:
    data = generate(0, TINY)
    qrels = data.split("test")
    ours = BeirEvaluator(data.corpus, data.queries, qrels)(tiny_model)
    relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in qrels.items()}
    queries: dict[str, Any] = dict(data.queries)  # its inputs may be any modality
    corpus: dict[str, Any] = dict(data.corpus)
    theirs = InformationRetrievalEvaluator(queries, corpus, relevant, write_csv=False)
    got = theirs(tiny_model)
    assert ours["ndcg@10"] == pytest.approx(got[str(theirs.primary_metric)], abs=1e-6)


# --- data and model -------------------------------------------------------------------------


def test_synthetic_set_round_trips_through_beir_layout(tmp_path: Path) -> None:
    data = generate(3, TINY)
    assert generate(3, TINY) == data and generate(4, TINY) != data
    folder = write_beir(data, tmp_path / "beir")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "corpus.jsonl", "qrels/test.tsv", "qrels/train.tsv", "queries.jsonl"]  # fmt: skip
    header = (folder / "qrels" / "test.tsv").read_text().splitlines()[0]
    assert header == "query-id\tcorpus-id\tscore"
    assert load_beir(folder) == data
    train, test = data.split("train"), data.split("test")
    assert len(train) == TINY.train_queries and len(test) == TINY.test_queries
    assert not set(train) & set(test)  # disjoint queries, and so disjoint target documents
    assert not {d for r in train.values() for d in r} & {d for r in test.values() for d in r}
    # Queries name concepts by their query words: little literal overlap with the document.
    pairs = training_pairs(data)
    assert len(pairs) == TINY.train_queries and pairs.column_names == ["anchor", "positive"]
    assert sum(w.startswith("q") for w in " ".join(pairs["anchor"]).split()) > 40


def test_projection_and_frozen_encoder(tiny_model: SentenceTransformer, tmp_path: Path) -> None:
    model = SentenceTransformer(modules=list(tiny_model.children()))
    add_projection(model, 8, seed=0)
    assert model.get_embedding_dimension() == 8
    trainable = freeze_encoder(model)
    assert trainable == 16 * 8 + 8
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    model.save(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "2_Dense" / "model.safetensors").is_file()


# --- the manifest ---------------------------------------------------------------------------


def test_manifest_three_runs_fit_one_node_and_pass_the_script_flags() -> None:
    from train import parse_args

    runs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert [r["metadata"]["name"] for r in runs] == [
        "mpnet-baseline", "mpnet-isotropy", "mpnet-frozen"]  # fmt: skip
    cpu = memory = gpus = 0.0
    for run in runs:
        spec = parse_spec(run["spec"])
        assert spec.nodes == 1 and spec.gpus_per_node == 1
        assert spec.capacity.instance_types == ["p4d.24xlarge"]
        requests = spec.resources.requests or {}
        cpu += float(parse_quantity(str(requests["cpu"])))
        memory += float(parse_quantity(str(requests["memory"])))
        gpus += spec.gpus_per_node
        known = {f.alias or n for n, f in type(spec).model_fields.items()}
        assert set(run["spec"]) <= known, set(run["spec"]) - known  # nothing silently dropped
        assert spec.command[-1].endswith("mpnet_ablations/train.py")
        args = parse_args(spec.args)
        assert args.ablation == run["metadata"]["name"].removeprefix("mpnet-")
        assert run["metadata"]["labels"]["spotrun.dev/ablation"] == args.ablation
    # The local real nodes have 2 CPUs and 8 GPUs each: the three runs share one.
    assert cpu <= 2 and gpus <= 8 and memory <= 6 * 2**30
