"""examples/gpt_pretrain: the model's size from ``--depth`` (nanochat's rule), counted on
the meta device, and the data cursor that makes a resume exact."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "gpt_pretrain"


def _load(name: str) -> ModuleType:
    """A module of the example by path (the example is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"gpt_pretrain_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpt: Any = _load("gpt")
corpus: Any = _load("corpus")

PLAN_VOCAB, PLAN_SEQ = 32, 2048  # the plan: character-level vocabulary of 32, 2048 tokens


def test_depth_64_is_the_plans_shape_and_its_exact_parameter_count() -> None:
    cfg = gpt.config_for_depth(64, PLAN_VOCAB, PLAN_SEQ)
    # The plan: "Model Dim 4096 (64 x 64), Heads 32, head_dim=128, KV Heads 32 (MHA)".
    assert (cfg.model_dim, cfg.n_head, cfg.head_dim, cfg.n_kv_head) == (4096, 32, 128, 32)
    n = gpt.count_parameters(cfg)  # on the meta device: no 50 GB allocated
    assert n == gpt.parameter_formula(cfg) == 12_885_164_032
    # The plan says "~4.3B". Its own dimensions give 12.9B: 4.3B is 4 d^2 x depth, the
    # attention matrices alone (2^32); the 8 d^2 of each ReLU^2 MLP are not in it.
    assert 4 * cfg.model_dim**2 * cfg.depth == 2**32 == 4_294_967_296
    # The plan's other figure, "680M for d24", does follow the rule.
    assert gpt.count_parameters(gpt.config_for_depth(24, PLAN_VOCAB, PLAN_SEQ)) == 679_575_552


@pytest.mark.parametrize(
    ("depth", "dims", "params"),
    [(2, (128, 1, 128), 401_408), (3, (192, 2, 96), 1_339_392), (4, (256, 2, 128), 3_162_112)],
)
def test_small_depths_are_small_and_train_on_cpu(
    depth: int, dims: tuple[int, int, int], params: int
) -> None:
    cfg = gpt.config_for_depth(depth, PLAN_VOCAB, 16)
    assert (cfg.model_dim, cfg.n_head, cfg.head_dim) == dims
    assert gpt.count_parameters(cfg) == params
    torch.manual_seed(0)
    model = gpt.GPT(cfg)
    model.init_weights()
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.randint(0, PLAN_VOCAB, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, PLAN_VOCAB) and logits.dtype == torch.float32
    # nanochat's init zeroes the head: every block starts as the identity, loss = ln(V).
    assert gpt.loss_fn(logits, x).item() == pytest.approx(math.log(PLAN_VOCAB), rel=1e-6)


def test_head_count_rule_and_depths_that_do_not_split() -> None:
    assert gpt.config_for_depth(1, 10, 8).n_head == 1  # at least one head (of 64)
    assert gpt.config_for_depth(12, 10, 8).n_head == 6  # ceil(768 / 128)
    with pytest.raises(ValueError, match="does not split"):
        gpt.config_for_depth(5, 10, 8)  # 320 over ceil(320/128) = 3 heads
    with pytest.raises(ValueError, match="at least 1"):
        gpt.config_for_depth(0, 10, 8)


def test_activation_checkpointing_computes_the_same_loss_and_gradients() -> None:
    cfg = gpt.config_for_depth(2, PLAN_VOCAB, 16)
    grads = []
    for ac in (False, True):
        torch.manual_seed(1)
        model = gpt.GPT(cfg, activation_checkpointing=ac)
        model.init_weights()
        torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # a gradient everywhere
        x = torch.randint(0, PLAN_VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
        gpt.loss_fn(model(x), x).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_step_trains_the_same_sequences_on_any_world_size_with_the_same_global_batch() -> None:
    text = corpus.generate_text(4, 5000)
    assert text == corpus.generate_text(4, 5000) and len(text) >= 5000
    vocab = corpus.Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text and len(vocab) < 40
    train, _ = corpus.split(vocab.encode(text), 0.1)

    def global_batches(world: int, batch: int, steps: int) -> list[set[int]]:
        cursor = corpus.TokenCursor(len(train), 16, seed=9)
        out = []
        for _ in range(steps):
            starts = [s for r in range(world) for s in cursor.batch_starts(0, r, world, batch)]
            out.append(set(starts))
            cursor.advance(world * batch)
        return out

    two, one = global_batches(2, 4, 80), global_batches(1, 8, 80)
    assert two == one
    cursor = corpus.TokenCursor(len(train), 16, seed=9)
    first_epoch = [s for b in global_batches(1, 1, cursor.n_seq) for s in b]
    assert sorted(first_epoch) == [i * 16 for i in range(cursor.n_seq)]  # each once

    cursor.advance(123)
    again = corpus.TokenCursor(len(train), 16, seed=9)
    again.load_state_dict(cursor.state_dict())
    assert again.batch_starts(1, 1, 2, 3) == cursor.batch_starts(1, 1, 2, 3)
    with pytest.raises(ValueError, match="same corpus and flags"):
        corpus.TokenCursor(len(train), 32, seed=9).load_state_dict(cursor.state_dict())
