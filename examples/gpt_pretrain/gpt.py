"""A nanochat-style GPT whose shape follows from one number, ``depth``.

nanochat (karpathy/nanochat, ``scripts/base_train.py``) sizes its model from the depth
alone, and so does the plan this example follows ("Model Dim 4096 (64 x 64),
aspect_ratio=64 ... Heads 32, head_dim=128, KV Heads 32 (MHA)"):

    model_dim = depth * aspect_ratio                 # aspect ratio 64
    n_head    = max(1, ceil(model_dim / head_dim))   # head_dim 128
    n_kv_head = n_head                               # plain multi-head attention

The block is nanochat's: pre-norm with a parameter-free RMSNorm, rotary position
embeddings, RMSNorm on queries and keys, causal attention, a ReLU^2 MLP of width
4 x model_dim, no biases; the token embedding and the output head are separate (untied),
and the logits are soft-capped at 15. Written for this example from that description.

Parameters: ``vocab x d`` (embedding) + ``depth x 12 d^2`` (4 d^2 attention, 8 d^2 MLP)
+ ``d x vocab`` (head); :func:`count_parameters` builds the model on the meta device, so
depth 64 (12.9 B parameters) costs no memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

SOFTCAP = 15.0
ROPE_BASE = 10000.0


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    depth: int
    model_dim: int
    n_head: int
    n_kv_head: int
    seq_len: int

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_for_depth(
    depth: int, vocab_size: int, seq_len: int, aspect_ratio: int = 64, head_dim: int = 128
) -> GPTConfig:
    """nanochat's sizing rule (module docstring)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    model_dim = depth * aspect_ratio
    n_head = max(1, -(-model_dim // head_dim))
    if model_dim % n_head or (model_dim // n_head) % 2:
        raise ValueError(
            f"depth {depth}: model_dim {model_dim} does not split into {n_head} heads of an "
            "even size (rotary embeddings rotate pairs); pick another depth"
        )
    return GPTConfig(vocab_size, depth, model_dim, n_head, n_head, seq_len)


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, shaped (1, T, 1, head_dim / 2) to broadcast over batch and heads."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under mixed precision
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.c_q = nn.Linear(c.model_dim, c.n_head * c.head_dim, bias=False)
        self.c_k = nn.Linear(c.model_dim, c.n_kv_head * c.head_dim, bias=False)
        self.c_v = nn.Linear(c.model_dim, c.n_kv_head * c.head_dim, bias=False)
        self.c_proj = nn.Linear(c.model_dim, c.model_dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)
        k = self.c_k(x).view(b, t, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(b, t, self.n_kv_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head
        )
        out: torch.Tensor = self.c_proj(y.transpose(1, 2).reshape(b, t, -1))
        return out


class MLP(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(c.model_dim, 4 * c.model_dim, bias=False)
        self.c_proj = nn.Linear(4 * c.model_dim, c.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(F.relu(self.c_fc(x)).square())
        return out


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.attn, self.mlp = Attention(c), MLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        out: torch.Tensor = x + self.mlp(norm(x))
        return out


class GPT(nn.Module):
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, c: GPTConfig, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = c
        self.activation_checkpointing = activation_checkpointing
        self.wte = nn.Embedding(c.vocab_size, c.model_dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.lm_head = nn.Linear(c.model_dim, c.vocab_size, bias=False)
        cos, sin = rotary_tables(c.seq_len, c.head_dim)
        # Not parameters and not saved: recomputed from the config.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's init: embedding N(0, 1); input projections N(0, s) with
        s = 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)); output projections and the head
        zero, so every block starts as the identity and the first loss is ln(vocab)."""
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.blocks:
            assert isinstance(block, Block)
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                fan_out, fan_in = lin.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        cos, sin = rotary_tables(self.config.seq_len, self.config.head_dim)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (float32, soft-capped) for token ids ``idx`` (B, T)."""
        t = idx.shape[1]
        cos, sin = self.cos[:, :t], self.sin[:, :t]
        x = norm(self.wte(idx))
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           reduction=reduction)  # fmt: skip


def count_parameters(c: GPTConfig) -> int:
    """Parameters of the model of ``c``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = GPT(c)
    return sum(p.numel() for p in model.parameters())


def parameter_formula(c: GPTConfig) -> int:
    """The same count in closed form: embedding + depth x 12 d^2 + head."""
    d = c.model_dim
    return c.vocab_size * d + c.depth * 12 * d * d + d * c.vocab_size
