"""MPNet retrieval fine-tuning, one ablation per run, that survives spot interruptions.

``--ablation baseline``: ``MultipleNegativesRankingLoss`` (InfoNCE, in-batch negatives);
``isotropy``: the same plus ``--isotropy-weight`` x the batch's mean pairwise cosine;
``frozen``: the encoder frozen, only the projection (a ``Dense`` module) trained.
sentence-transformers' ``SentenceTransformerTrainer`` with spotrun's ``SpotrunCallback``
(SIGTERM: save, commit ``step-N``, exit 143; restarted, resume from the newest committed
checkpoint) and :class:`best_checkpoint.BestCheckpoint` (nDCG@10 on the test queries every
``--eval-steps``, the best model committed in ``best/``, early stop). The last line is
``result {json}``: the best nDCG@10 and its step.

    PYTHONPATH=trainer python examples/mpnet_ablations/train.py --ablation isotropy \\
        --checkpoint-dir /tmp/iso
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from beir_data import BeirData, generate, load_beir, training_pairs, write_beir
from best_checkpoint import BestCheckpoint, EvalState
from isotropy import IsotropicMNRLoss
from mpnet_model import (
    add_projection,
    freeze_encoder,
    mpnet_from_config,
    pretrained_mpnet,
    word_level_tokenizer,
)
from retrieval_eval import MEAN_COSINE, NDCG, BeirEvaluator
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.training_args import (
    SentenceTransformerTrainingArguments,
)
from transformers import MPNetConfig

from spotrun_trainer.integrations.sentence_transformers import SpotrunCallback
from spotrun_trainer.process_exit import run_main  # spotrun

ABLATIONS = {"baseline": 0.0, "isotropy": 0.1, "frozen": 0.0}  # -> default isotropy weight


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = p.add_argument
    add("--ablation", choices=sorted(ABLATIONS), default="baseline")
    add("--checkpoint-dir", default=os.environ.get("SPOTRUN_CHECKPOINT_DIR", "ckpt"))
    add("--output-dir", default="mpnet-out", help="the Trainer's own (staging) folder")
    # Data: the synthetic set from --data-seed, or a real BEIR data set in its layout.
    add("--beir-dir", type=Path, help="a BEIR data set folder (corpus.jsonl, queries.jsonl, "
        "qrels/); default: the synthetic set, written to <output-dir>/beir-synthetic")  # fmt: skip
    add("--eval-beir-dir", type=Path, help="a BEIR data set to evaluate on instead (a small "
        "one while training on a large one)")  # fmt: skip
    add("--data-seed", type=int, default=0)
    add("--train-split", default="train")
    add("--eval-split", default="test")
    # Model: MPNet from a config with random init, or a pretrained one (--model).
    add("--model", help="hub id or folder, e.g. microsoft/mpnet-base (default: random init)")
    add("--hidden-size", type=int, default=64)
    add("--layers", type=int, default=2)
    add("--heads", type=int, default=2)
    add("--intermediate-size", type=int, default=128)
    add("--max-seq-length", type=int, default=32)
    add("--projection-dim", type=int, default=64, help="the Dense projection's output size")
    # Optimisation.
    add("--isotropy-weight", type=float, help="default: 0.1 for isotropy, else 0")
    add("--lr", type=float, default=1e-3, help="learning rate of the encoder")
    add("--projection-lr", type=float, help="learning rate of the projection (default --lr)")
    add("--weight-decay", type=float, default=0.01)
    add("--batch-size", type=int, default=32)
    add("--max-steps", type=int, default=300)
    add("--warmup-steps", type=int, default=10)
    add("--seed", type=int, default=0, help="model init, data order, dropout")
    add("--bf16", action="store_true", help="bf16 autocast (a GPU)")
    add("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    # Evaluation, model selection, checkpoints, logs.
    add("--eval-steps", type=int, default=25)
    add("--initial-eval", action=argparse.BooleanOptionalAction, default=True,
        help="evaluate the untrained model before step 1 (what chance looks like)")  # fmt: skip
    add("--early-stop-patience", type=int, default=4, help="evaluations; 0: never stop")
    add("--min-delta", type=float, default=0.0, help="smallest nDCG@10 gain that counts")
    add("--save-steps", type=int, default=0, help="0: evaluations, the operator's interval, end")
    add("--logging-steps", type=int, default=10)
    add("--evaluate", metavar="MODEL_DIR", help="only evaluate a saved model (such as "
        "<checkpoint-dir>/best/step-N) on --eval-split, print its nDCG@10 and exit")  # fmt: skip
    a = p.parse_args(argv)
    if a.isotropy_weight is None:
        a.isotropy_weight = ABLATIONS[a.ablation]
    if a.projection_lr is None:
        a.projection_lr = a.lr
    if a.ablation == "frozen" and a.projection_dim <= 0:
        p.error("--ablation frozen trains only the projection: --projection-dim must be > 0")
    return a


def load_data(a: argparse.Namespace) -> BeirData:
    if a.beir_dir is not None:
        return load_beir(a.beir_dir)
    # Written and read back in BEIR's layout: the synthetic set takes the real data's path.
    return load_beir(write_beir(generate(a.data_seed), Path(a.output_dir) / "beir-synthetic"))


def build_model(a: argparse.Namespace, data: BeirData) -> SentenceTransformer:
    if a.model:
        model = pretrained_mpnet(a.model, a.max_seq_length)
    else:
        words = data.words()[:30_000]  # a real corpus: its most frequent words
        tokenizer = word_level_tokenizer(words, model_max_length=a.max_seq_length)
        config = MPNetConfig(
            vocab_size=len(tokenizer), hidden_size=a.hidden_size, num_hidden_layers=a.layers,
            num_attention_heads=a.heads, intermediate_size=a.intermediate_size,
            max_position_embeddings=a.max_seq_length + 4,  # MPNet offsets positions by 2
        )  # fmt: skip
        model = mpnet_from_config(Path(a.output_dir) / "init", config, tokenizer, seed=a.seed)
    if a.projection_dim > 0:
        add_projection(model, a.projection_dim, a.seed)
    if a.ablation == "frozen":
        print(f"frozen encoder: {freeze_encoder(model)} trainable parameters", flush=True)
    return model


def optimizer(a: argparse.Namespace, model: SentenceTransformer) -> torch.optim.AdamW:
    """AdamW with the plan's two learning rates (encoder, projection); no weight decay on
    biases and norms, as the Trainer's default optimizer does. Frozen parameters left out."""
    last = list(model.children())[-1]
    projection = {id(p) for p in last.parameters()} if a.projection_dim > 0 else set()
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = a.projection_lr if id(param) in projection else a.lr
            decay = 0.0 if param.ndim < 2 or "norm" in name.lower() else a.weight_decay
            groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd}
                              for (lr, wd), ps in groups.items()])  # fmt: skip


def training_args(a: argparse.Namespace) -> SentenceTransformerTrainingArguments:
    return SentenceTransformerTrainingArguments(
        output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr, warmup_steps=a.warmup_steps, lr_scheduler_type="linear",
        logging_steps=a.logging_steps, eval_strategy="steps", eval_steps=a.eval_steps,
        save_strategy="steps" if a.save_steps > 0 else "no", save_steps=a.save_steps or 500,
        seed=a.seed, bf16=a.bf16, use_cpu=not torch.cuda.is_available(), report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip


def result_line(a: argparse.Namespace, s: EvalState, step: int, best: BestCheckpoint) -> str:
    path = best.best_path()
    return "result " + json.dumps({
        "ablation": a.ablation, "best_ndcg@10": s.best_ndcg, "best_step": s.best_step,
        "global_step": step, "early_stopped": s.stopped_early, "evals": len(s.history),
        "best_path": None if path is None else str(path),
    })  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_data(a)
    held_out = data if a.eval_beir_dir is None else load_beir(a.eval_beir_dir)
    evaluator = BeirEvaluator(held_out.corpus, held_out.queries, held_out.split(a.eval_split))
    if a.evaluate:  # the plan's separate BEIR evaluation of the trained models
        m = evaluator(SentenceTransformer(a.evaluate))
        print("evaluation " + json.dumps({"model": a.evaluate, **m}), flush=True)
        return
    model = build_model(a, data)
    loss: MultipleNegativesRankingLoss = (
        IsotropicMNRLoss(model, a.isotropy_weight) if a.isotropy_weight else
        MultipleNegativesRankingLoss(model)
    )  # fmt: skip
    meta: dict[str, Any] = {"ablation": a.ablation, "isotropy_weight": a.isotropy_weight}
    best = BestCheckpoint(a.checkpoint_dir, a.output_dir, patience=a.early_stop_patience,
                          min_delta=a.min_delta, meta=meta)  # fmt: skip
    # SIGTERM -> save, commit, exit 143; progress. Older bests go once a save is committed.
    spot = SpotrunCallback(a.checkpoint_dir, after_commit=[best.committed])
    # The scheduler slot is None: the Trainer builds its warm-up/decay schedule around the
    # optimizer (the stub's annotation wants both). ``best`` precedes ``spot``: its file
    # lands in checkpoint-N before spot's on_save commits the folder.
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args(a), train_dataset=training_pairs(data, a.train_split),
        loss=loss, evaluator=evaluator, callbacks=[best, spot],
        optimizers=(optimizer(a, model), None),  # type: ignore[arg-type]
    )  # fmt: skip
    resume = spot.resume_path()
    state = best.restore(resume)
    if state.stopped_early:  # the stop was committed: a restarted pod trains no further
        step = int(state.history[-1][0])
        print(f"early-stopped at step {step} before this start; nothing to train", flush=True)
        print(result_line(a, state, step, best), flush=True)
        return
    if resume is None and a.initial_eval:
        m = evaluator(model)  # the untrained model: what chance looks like here
        print(f"eval step 0 ndcg@10 {m[NDCG]:.4f} mean_cos {m[MEAN_COSINE]:.4f}", flush=True)
    elif resume is not None:
        best_text = "none yet" if state.best_ndcg is None else f"{state.best_ndcg:.4f}"
        print(f"resumed from {resume}: best ndcg@10 {best_text} at step {state.best_step}, "
              f"patience {state.evals_since_best}/{a.early_stop_patience}", flush=True)  # fmt: skip
    out: Any = trainer.train(resume_from_checkpoint=resume)
    print(f"done: step {out.global_step}, train loss {out.training_loss:.4f}", flush=True)
    print(result_line(a, best.state, out.global_step, best), flush=True)


if __name__ == "__main__":
    run_main(main)  # spotrun: exit without interpreter finalization
