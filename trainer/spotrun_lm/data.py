"""Token data (generated or read from disk) and a sampler whose position is resumable.

No DataLoader workers: batches are a pure function of (seed, epoch, position), which is
what makes a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

Tokens = npt.NDArray[np.int64]


def synthetic_tokens(num: int, seq_len: int, vocab: int, seed: int) -> Tokens:
    """Sequences from a sparse random Markov chain: learnable, so the loss visibly falls.

    Token 0 is never emitted (it is the contrastive mask token).
    """
    if vocab < 3:
        raise ValueError("vocab_size must be >= 3")
    rng = np.random.default_rng(seed)
    successors = rng.integers(1, vocab, size=(vocab, 4))
    choice = rng.integers(0, 4, size=(num, seq_len))
    out = np.empty((num, seq_len), dtype=np.int64)
    out[:, 0] = rng.integers(1, vocab, size=num)
    for t in range(1, seq_len):
        out[:, t] = successors[out[:, t - 1], choice[:, t]]
    return out


def load_tokens(path: str | Path, seq_len: int) -> npt.NDArray[Any]:
    """Rows of ``seq_len`` tokens from ``.npy`` (1-D stream or 2-D rows) or ``.bin`` (uint16)."""
    p = Path(path)
    arr: npt.NDArray[Any]
    if p.suffix == ".npy":
        arr = np.load(p, mmap_mode="r")
    elif p.suffix == ".bin":
        arr = np.memmap(p, dtype=np.uint16, mode="r")
    else:
        raise ValueError(f"{p}: expected a .npy or .bin token file")
    if arr.ndim == 1:
        rows = arr.shape[0] // seq_len
        if rows == 0:
            raise ValueError(f"{p}: fewer than seq_len={seq_len} tokens")
        return arr[: rows * seq_len].reshape(rows, seq_len)
    if arr.ndim == 2:
        if arr.shape[1] < seq_len:
            raise ValueError(f"{p}: rows have {arr.shape[1]} tokens, seq_len is {seq_len}")
        return arr[:, :seq_len]
    raise ValueError(f"{p}: expected a 1-D or 2-D array, got {arr.ndim}-D")


def split(tokens: npt.NDArray[Any], val_fraction: float) -> tuple[npt.NDArray[Any], ...]:
    """(train, validation): the last rows are held out."""
    n_val = int(len(tokens) * val_fraction)
    if n_val >= len(tokens):
        raise ValueError("val_fraction leaves no training data")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def to_batch(tokens: npt.NDArray[Any], idx: npt.NDArray[np.int64]) -> torch.Tensor:
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


class ResumableSampler:
    """Global batches from per-epoch permutations of ``n`` rows, sharded by rank.

    ``position`` counts rows consumed in the epoch by the whole gang, so a checkpoint
    taken with one world size resumes at the same place with another.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        if n < batch_size * world_size:
            raise ValueError(f"{n} rows cannot fill a global batch of {batch_size * world_size}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._perm_epoch = -1
        self._perm: npt.NDArray[np.int64] = np.arange(0, dtype=np.int64)

    def _permutation(self) -> npt.NDArray[np.int64]:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._perm = rng.permutation(self.n).astype(np.int64)
            self._perm_epoch = self.epoch
        return self._perm

    def next_indices(self) -> npt.NDArray[np.int64]:
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > self.n:  # drop the ragged tail of an epoch
            self.epoch += 1
            self.position = 0
        start = self.position + self.rank * self.batch_size
        idx = self._permutation()[start : start + self.batch_size]
        self.position += global_batch
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"checkpoint sampler saw {state['n']} rows, this data has {self.n}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def validation_batches(
    val: npt.NDArray[Any], batch_size: int, batches: int, rank: int, world_size: int
) -> list[torch.Tensor]:
    """A fixed list of this rank's validation batches (same every evaluation), as many on
    every rank: a sharded (FSDP) forward is a collective, so no rank may skip one."""
    out: list[torch.Tensor] = []
    for b in range(batches):
        if (b + 1) * world_size * batch_size > len(val):
            break
        start = (b * world_size + rank) * batch_size
        out.append(torch.from_numpy(np.asarray(val[start : start + batch_size], dtype=np.int64)))
    return out
