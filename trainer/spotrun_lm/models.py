"""The two models the CLI trains, built from configs with random init (no hub downloads).

transformers is imported lazily: it costs seconds of start-up, which the contrastive
encoder (pure torch) and every tool that only reads checkpoints should not pay.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spotrun_lm.config import ModelConfig

MASK_TOKEN = 0  # token id used to mask positions when drawing contrastive views


def parse_params(text: str) -> int:
    """``"100M"`` -> 100_000_000; accepts K, M, B suffixes and plain integers."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMbB]?)\s*", text)
    if not m:
        raise ValueError(f"cannot parse a parameter count from {text!r}")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def gpt2_param_count(vocab: int, seq_len: int, n_embd: int, n_layer: int) -> int:
    """Parameters of a GPT-2 with tied input/output embeddings."""
    block = 12 * n_embd * n_embd + 13 * n_embd
    return vocab * n_embd + seq_len * n_embd + n_layer * block + 2 * n_embd


def size_for_params(target: int, vocab: int, seq_len: int) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of a GPT-2-shaped model close to ``target`` parameters.

    Head width stays 64 and depth near width/64, the proportions of the GPT-2 family.
    """
    best: tuple[float, int, int, int] | None = None
    for n_embd in range(128, 4097, 64):
        per_layer = 12 * n_embd * n_embd + 13 * n_embd
        rest = gpt2_param_count(vocab, seq_len, n_embd, 0)
        n_layer = max(1, round((target - rest) / per_layer))
        err = abs(gpt2_param_count(vocab, seq_len, n_embd, n_layer) - target) / target
        aspect = abs(math.log(n_layer / (n_embd / 64)))
        score = aspect + 10 * err
        if best is None or score < best[0]:
            best = (score, n_layer, n_embd // 64, n_embd)
    assert best is not None
    return best[1], best[2], best[3]


def resolve_size(cfg: ModelConfig) -> ModelConfig:
    """Apply ``cfg.params`` (when set) to the layer/width fields."""
    if not cfg.params:
        return cfg
    n_layer, n_head, n_embd = size_for_params(parse_params(cfg.params), cfg.vocab_size, cfg.seq_len)
    cfg.n_layer, cfg.n_head, cfg.n_embd = n_layer, n_head, n_embd
    return cfg


def build_causal_lm(cfg: ModelConfig, initialize: bool = True) -> nn.Module:
    """``initialize=False``: the weights are left uninitialized (every one of them is about
    to be loaded from a checkpoint); only the tie of the output to the input embeddings is
    made, as the model's own init would."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=cfg.vocab_size - 1,
        eos_token_id=cfg.vocab_size - 1,
    )
    model = GPT2LMHeadModel(config) if initialize else _uninitialized(GPT2LMHeadModel, config)
    # GPT2LMHeadModel's class name matches no loss family; name it to silence a warning.
    model.loss_type = "ForCausalLM"
    built: nn.Module = model
    return built


def _uninitialized(cls: Any, config: Any) -> Any:
    """``cls(config)`` without the random init (seconds per 100M parameters on a CPU, all
    overwritten by a resume's load), through transformers' own switch; initialized as
    usual where that switch is missing or the embeddings did not come out tied."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return cls(config)
    with no_init_weights():
        model = cls(config)
    model.tie_weights()  # no_init_weights skips init_weights, which also ties them
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if config.tie_word_embeddings and (out is None or out.weight is not inp.weight):
        return cls(config)
    return model


class ContrastiveEncoder(nn.Module):
    """Token encoder: embeddings, pre-norm transformer, mean pool, projection head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.n_embd
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Embedding(cfg.seq_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            cfg.n_head,
            4 * d,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.proj_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.drop(self.tok(ids) + self.pos(pos))
        h = self.norm(self.encoder(h))
        keep = (ids != MASK_TOKEN).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return F.normalize(self.proj(pooled), dim=-1)


def build_model(cfg: ModelConfig, initialize: bool = True) -> nn.Module:
    """The model of ``cfg``; ``initialize=False`` (a resume) may skip the random init of
    weights the checkpoint overwrites (causal_lm: transformers' init is the slow one)."""
    resolve_size(cfg)
    if cfg.kind == "causal_lm":
        return build_causal_lm(cfg, initialize)
    if cfg.kind == "contrastive":
        return ContrastiveEncoder(cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives; row i of z1 and z2 are a positive pair."""
    logits = (z1 @ z2.T).float() / temperature
    labels = torch.arange(z1.shape[0], device=z1.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mask_tokens(
    ids: torch.Tensor, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A view of ``ids`` with each token masked with probability ``prob``.

    Without a generator the global torch RNG is drawn, which is why training resumes
    bitwise only when that RNG is restored too.
    """
    draw = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    return ids.masked_fill(draw < prob, MASK_TOKEN)


def compute_loss(
    model: nn.Module,
    batch: torch.Tensor,
    cfg: ModelConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training/validation loss of ``model`` (plain or DDP-wrapped) on one batch of ids."""
    if cfg.kind == "causal_lm":
        out = model(input_ids=batch, labels=batch)
        loss: torch.Tensor = out.loss
        return loss
    # One forward over both views, so DDP sees exactly one forward per backward.
    views = torch.cat(
        [mask_tokens(batch, cfg.mask_prob, generator), mask_tokens(batch, cfg.mask_prob, generator)]
    )
    z = model(views)
    z1, z2 = z.chunk(2)
    return info_nce(z1, z2, cfg.temperature)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
