"""The text, its character vocabulary, and which sequences each rank trains on.

By default the text is generated from a seed by a small grammar (English-like sentences
with a few hundred words), so nothing is downloaded and every rank builds the same corpus;
``--text-file`` reads your own instead (the plan's ``combined_output.txt``). The vocabulary
is the set of characters of the text: no tokenizer.

Exact resume: what a step trains on is a function of :class:`TokenCursor`'s one counter
(sequences the whole gang consumed), checkpointed with the weights. The training stream is
cut into sequences of ``seq_len + 1`` tokens (stride ``seq_len``); each epoch visits them in
a permutation seeded by ``(seed, epoch)``. Step s's global batch is the next
``accum x world x batch`` of them; rank r takes its slices, so another world size with the
same global batch trains on the same sequences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUBJECTS = (
    "the miller", "a young fox", "the old captain", "my sister", "the baker", "a grey heron",
    "the teacher", "our neighbour", "the children", "a tired horse", "the queen", "the sailor",
    "a small bird", "the farmer", "the clockmaker", "an old woman", "the river", "the wind",
)  # fmt: skip
VERBS = (
    "sees", "follows", "finds", "paints", "remembers", "carries", "calls", "watches",
    "forgets", "mends", "hides", "counts", "sells", "loves", "fears", "visits",
)  # fmt: skip
OBJECTS = (
    "the red boat", "a quiet pond", "the garden gate", "an apple", "the broken lamp",
    "a letter", "the long road", "the bell", "a basket of bread", "the winter coat",
    "the stars", "a silver key", "the mill", "an open window", "the green hill",
)  # fmt: skip
TAILS = (
    "in the morning", "near the bridge", "after the rain", "by the sea", "at night",
    "before supper", "in the snow", "under the old oak", "every sunday", "without a word",
)  # fmt: skip


def generate_text(seed: int, n_chars: int) -> str:
    """``n_chars`` (or a little more) of sentences from the grammar, paragraphs of 3-6."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        sentences = []
        for _ in range(rng.randint(3, 6)):
            s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            if rng.random() < 0.6:
                s += f" {rng.choice(TAILS)}"
            if rng.random() < 0.3:
                s += f", and {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            sentences.append(s + ".")
        para = " ".join(sentences) + "\n"
        out.append(para)
        size += len(para)
    return "".join(out)


def load_text(text_file: str | None, seed: int, n_chars: int) -> str:
    return Path(text_file).read_text() if text_file else generate_text(seed, n_chars)


@dataclass(frozen=True)
class Vocab:
    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        dtype = torch.uint8 if len(self) <= 256 else torch.int32
        return torch.tensor([index[c] for c in text], dtype=dtype)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``val_fraction`` of the stream is held out (never trained on)."""
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def sequences(data: torch.Tensor, starts: list[int], seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs and next-token targets of the sequences starting at ``starts``."""
    rows = torch.stack([data[s : s + seq_len + 1].long() for s in starts])
    return rows[:, :-1], rows[:, 1:]


class TokenCursor:
    """The data position of the whole gang: sequences consumed so far (a Stateful)."""

    def __init__(self, n_tokens: int, seq_len: int, seed: int) -> None:
        self.seq_len, self.seed = seq_len, seed
        self.n_seq = (n_tokens - 1) // seq_len
        if self.n_seq < 1:
            raise ValueError(f"{n_tokens} training tokens hold no sequence of {seq_len + 1}")
        self.consumed = 0
        self._order: tuple[int, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "n_seq": self.n_seq, "seq_len": self.seq_len,
                "seed": self.seed}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        saved = (state_dict["n_seq"], state_dict["seq_len"], state_dict["seed"])
        if saved != (self.n_seq, self.seq_len, self.seed):
            raise ValueError(
                f"the checkpoint's data (sequences, seq_len, seed) {saved} is not this run's "
                f"{(self.n_seq, self.seq_len, self.seed)}: same corpus and flags to resume"
            )
        self.consumed = int(state_dict["consumed"])

    @property
    def epoch(self) -> int:
        return self.consumed // self.n_seq

    def _start(self, position: int) -> int:
        epoch, i = divmod(position, self.n_seq)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n_seq, generator=gen))
        return int(self._order[1][i]) * self.seq_len

    def batch_starts(self, micro: int, rank: int, world: int, batch: int) -> list[int]:
        """Token offsets of rank ``rank``'s ``batch`` sequences in micro-step ``micro``."""
        first = self.consumed + (micro * world + rank) * batch
        return [self._start(first + i) for i in range(batch)]

    def advance(self, n: int) -> None:
        self.consumed += n


def val_starts(n_tokens: int, seq_len: int, index: int, rank: int, world: int,
               batch: int) -> list[int]:  # fmt: skip
    """The fixed held-out sequences of eval batch ``index`` on ``rank`` (wrapping)."""
    n_seq = max(1, (n_tokens - 1) // seq_len)
    first = (index * world + rank) * batch
    return [((first + i) % n_seq) * seq_len for i in range(batch)]
