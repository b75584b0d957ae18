"""Pure pieces behind FSDP and resharding: the per-rank batch of a global batch, equal
validation batch counts on every rank, config checks, and the sampler's global batches
being the same sets of ids at any world size."""

from __future__ import annotations

import numpy as np
import pytest

from spotrun_lm.config import ConfigError, TrainConfig, load_config
from spotrun_lm.data import ResumableSampler, validation_batches
from spotrun_lm.parts import rank_batch_size


def test_global_batch_size_splits_over_the_ranks() -> None:
    cfg = TrainConfig(batch_size=3, global_batch_size=8)
    assert rank_batch_size(cfg, 4) == 2
    assert rank_batch_size(cfg, 2) == 4
    assert rank_batch_size(TrainConfig(batch_size=3), 4) == 3  # unset: batch_size per rank
    with pytest.raises(ConfigError, match="does not divide over 3 ranks"):
        rank_batch_size(cfg, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parallel", "zero3"], "parallel: expected ddp or fsdp"),
        (["--checkpoint.async-mode", "fork"], "checkpoint.async_mode: expected thread or process"),
        (["--global-batch-size", "-1"], "global_batch_size must be >= 0"),
        (["--checkpoint.writer-max-mb-per-s", "-1"], "writer_max_mb_per_s must be >= 0"),
    ],
)
def test_bad_parallel_settings_are_rejected(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env={})


def test_every_rank_gets_the_same_number_of_validation_batches() -> None:
    val = np.arange(19 * 2).reshape(19, 2)
    for world in (1, 2, 3, 4):
        counts = {len(validation_batches(val, 2, 10, r, world)) for r in range(world)}
        assert len(counts) == 1, f"world size {world}: {counts}"
        (count,) = counts
        assert count == 19 // (2 * world)  # every full round of batches, and only those
    rows = [b.numpy() for r in range(2) for b in validation_batches(val, 2, 10, r, 2)]
    assert len({tuple(x.ravel()) for x in rows}) == len(rows), "no row twice"


def test_global_batches_are_the_same_ids_at_any_world_size() -> None:
    def global_batches(world: int, steps: int) -> list[list[int]]:
        samplers = [ResumableSampler(50, 8 // world, r, world, seed=3) for r in range(world)]
        return [sorted(i for s in samplers for i in s.next_indices().tolist())
                for _ in range(steps)]  # fmt: skip

    four, two = global_batches(4, 12), global_batches(2, 12)
    assert four == two
    assert all(len(b) == 8 and len(set(b)) == 8 for b in four)
    # Resharded mid-run: 4 ranks for 5 steps, then 2 ranks from the saved position.
    first = [ResumableSampler(50, 2, r, 4, seed=3) for r in range(4)]
    got = [sorted(i for s in first for i in s.next_indices().tolist()) for _ in range(5)]
    state = first[0].state_dict()
    second = [ResumableSampler(50, 4, r, 2, seed=3) for r in range(2)]
    for s in second:
        s.load_state_dict(state)
    got += [sorted(i for s in second for i in s.next_indices().tolist()) for _ in range(7)]
    assert got == four


def test_a_resumes_model_skips_the_init_and_loads_into_the_same_shape() -> None:
    """The uninitialized GPT-2 of a resume has every parameter of the initialized one, its
    output embeddings tied to its input ones, and computes the same after a load."""
    import torch

    from spotrun_lm.config import ModelConfig
    from spotrun_lm.models import build_model

    cfg = ModelConfig(vocab_size=32, seq_len=8, n_embd=16, n_layer=1, n_head=2, dropout=0.0)
    torch.manual_seed(0)
    ref = build_model(cfg).eval()
    empty = build_model(cfg, initialize=False).eval()
    shapes = {n: p.shape for n, p in ref.named_parameters()}
    assert {n: p.shape for n, p in empty.named_parameters()} == shapes
    tied = empty.get_output_embeddings().weight is empty.get_input_embeddings().weight  # type: ignore[operator]
    assert tied
    empty.load_state_dict(ref.state_dict())
    ids = torch.randint(1, 32, (2, 8))
    assert torch.equal(ref(ids).logits, empty(ids).logits)
