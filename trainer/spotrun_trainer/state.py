"""Stateful parts of a training run that the checkpoint manager saves and restores.

Optimizers, LR schedulers, grad scalers and the sampler already have
``state_dict``/``load_state_dict``; this module adds the pieces that do not. Every state
dict holds only tensors, numbers, strings, lists, tuples and dicts, so checkpoints load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Stateful(Protocol):
    """What the checkpoint manager needs of a part (the torch.distributed.checkpoint shape)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> object: ...


class ModelState:
    """A model's parameters and buffers, unwrapped from DDP so keys never carry ``module.``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def _inner(self) -> nn.Module:
        inner = getattr(self.model, "module", self.model)
        assert isinstance(inner, nn.Module)
        return inner

    def state_dict(self) -> dict[str, Any]:
        return dict(self._inner.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        self._inner.load_state_dict(state_dict)


class RNGState:
    """Python, numpy, torch CPU and (when in use) CUDA generators of this process."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        assert isinstance(np_state, dict)
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": int(np_state["state"]["pos"]),
                "has_gauss": int(np_state["has_gauss"]),
                "gauss": float(np_state["gauss"]),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        random.setstate(_as_python_state(state_dict["python"]))
        npd = state_dict["numpy"]
        key = npd["key"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", key, npd["pos"], npd["has_gauss"], npd["gauss"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])


def _as_python_state(raw: Any) -> tuple[Any, ...]:
    # random.setstate wants tuples; a serializer may have handed back lists.
    version, internal, gauss = raw
    return (int(version), tuple(int(x) for x in internal), gauss)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainProgress:
    """Counters of the loop itself."""

    step: int = 0
    tokens_seen: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        for f in fields(self):
            if f.name in state_dict:
                setattr(self, f.name, state_dict[f.name])
