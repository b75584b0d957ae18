"""A Hugging Face ``Trainer`` run that survives spot interruptions through spotrun.

A tiny GPT-2 built from a config (random init, no hub download) on synthetic token data.
Everything spotrun-specific is the callback and ``resume_from_checkpoint`` (two lines).

    PYTHONPATH=trainer python examples/hf_trainer/train.py --checkpoint-dir /tmp/ck
    # SIGTERM it: it saves at the next step boundary and exits 143; run it again: it resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from spotrun_trainer.integrations.hf import SpotrunCallback


class TokenDataset(Dataset[dict[str, torch.Tensor]]):
    """Deterministic synthetic sequences: a pure function of (seed, index)."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    p.add_argument("--output-dir", default="hf-out", help="the Trainer's own (staging) folder")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args()
    torch.manual_seed(a.seed)  # the same random init on every attempt (then overwritten)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=a.save_steps,
        seed=a.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    spot = SpotrunCallback(a.checkpoint_dir)  # SIGTERM -> save -> exit 143; status.progress
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(96, 16, 64, a.seed),
        callbacks=[spot],
    )
    result: Any = trainer.train(resume_from_checkpoint=spot.resume_path())
    print(f"done: {result.global_step} steps, loss {result.training_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
