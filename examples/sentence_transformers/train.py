"""A contrastive MPNet run with sentence-transformers that survives spot interruptions.

An MPNet-style ``SentenceTransformer`` built from a config (random init) with a word-level
tokenizer built in memory: nothing comes from the hub. Pairs (anchor, positive) are
synthetic sentences and a noisy copy; ``MultipleNegativesRankingLoss`` is InfoNCE with
in-batch negatives. spotrun adds the callback and ``resume_from_checkpoint``.

    PYTHONPATH=trainer python examples/sentence_transformers/train.py --checkpoint-dir /tmp/ck
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from typing import Any

from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import MPNetConfig

from spotrun_trainer.integrations.sentence_transformers import (
    SpotrunCallback,
    mpnet_from_config,
    word_level_tokenizer,
)

WORDS = [f"w{i}" for i in range(60)]


def pairs(n: int, seed: int) -> Dataset:
    """``n`` (anchor, positive) pairs: random sentences and a copy with words dropped."""
    rng = random.Random(seed)
    anchors, positives = [], []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(4, 10))
        kept = [w for w in words if rng.random() > 0.25] or words[:1]
        anchors.append(" ".join(words))
        positives.append(" ".join(kept))
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    p.add_argument("--output-dir", default="st-out", help="the Trainer's own (staging) folder")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args()
    config = MPNetConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    tokenizer = word_level_tokenizer(WORDS, model_max_length=16)
    model = mpnet_from_config(os.path.join(a.output_dir, "init"), config, tokenizer, seed=a.seed)
    args = SentenceTransformerTrainingArguments(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=8,
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
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=pairs(128, a.seed),
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[spot],
    )
    result: Any = trainer.train(resume_from_checkpoint=spot.resume_path())
    print(f"done: {result.global_step} steps, loss {result.training_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
