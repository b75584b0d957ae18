"""The model part of a trainer bench's JSON "config": the same keys in every bench."""

from __future__ import annotations

from typing import Any

from spotrun_lm.config import ModelConfig


def model_fields(params: str, cfg: ModelConfig) -> dict[str, Any]:
    return {
        "params": params,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size,
        "seq_len": cfg.seq_len,
    }
