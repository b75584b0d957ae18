"""Run configuration: dataclasses, layered as defaults < operator env < YAML file < CLI flags.

The checkpoint, preemption and report sections, and the mapping of the operator's env onto
them, are the library's (``spotrun_trainer.config``): the core reads them whoever owns the
loop. This module adds the built-in trainer's own sections (model, data, optimizer, faults)
and its CLI. Every field carries an attribute docstring; ``config_fields.field_docs`` reads
them back from the source so ``--help`` and docs/trainer.md never drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spotrun_lm.faults import FaultConfig
from spotrun_trainer.config import (
    CheckpointConfig,
    PreemptionConfig,
    ReportConfig,
    apply_env,
    set_field,
)
from spotrun_trainer.config_fields import ConfigError, field_docs, hints, is_section

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_yaml",
    "build_parser",
    "load_config",
    "to_dict",
    "validate",
]


@dataclass
class ModelConfig:
    kind: str = "causal_lm"
    """``causal_lm``: a transformers GPT-2 from a config (random init, no hub download);
    ``contrastive``: a token encoder trained with a symmetric InfoNCE loss."""
    params: str | None = None
    """Size the model to about this many parameters (``10M``, ``100M``); when set it
    overrides n_layer, n_head and n_embd."""
    vocab_size: int = 256
    """Vocabulary size of the tokens fed to the model."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 2
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 64
    """Hidden width."""
    seq_len: int = 32
    """Tokens per training sequence (also the model's maximum positions)."""
    dropout: float = 0.1
    """Dropout probability (consumes the torch RNG, so resume must restore it)."""
    proj_dim: int = 64
    """contrastive: width of the projection head output."""
    temperature: float = 0.1
    """contrastive: softmax temperature of the InfoNCE loss."""
    mask_prob: float = 0.15
    """contrastive: probability that a token is masked when drawing a view."""


@dataclass
class DataConfig:
    path: str | None = None
    """Token file to train on: ``.npy`` (int array, 1-D stream or 2-D rows) or ``.bin``
    (flat uint16 stream, nanoGPT style). Unset: deterministic synthetic data from the seed."""
    num_samples: int = 4096
    """Synthetic data: number of sequences generated."""
    val_fraction: float = 0.05
    """Fraction of sequences held out for validation."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    warmup_steps: int = 10
    """Linear warm-up steps before cosine decay to 10% of lr at max_steps."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Where, when and how checkpoints are written."""
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    """Stop handling."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Logs, metrics and status.progress."""
    fault: FaultConfig = field(default_factory=FaultConfig)
    """Test-only fault injection for end-to-end tests; everything off by default."""
    seed: int = 0
    """Seed of data generation, init, sampling and every RNG."""
    max_steps: int = 1000
    """Optimizer steps to train; the run exits 0 after saving a final checkpoint."""
    batch_size: int = 8
    """Sequences per rank per step."""
    global_batch_size: int = 0
    """Sequences per step over all ranks; when set it overrides batch_size (global / world
    size), so a run resumed with another world size keeps its global batch."""
    parallel: str = "ddp"
    """``ddp`` (replicated model, checkpoints written by rank 0) or ``fsdp`` (FSDP2
    ``fully_shard``: parameters and optimizer state sharded over the ranks, checkpoints
    written by every rank through torch.distributed.checkpoint and loadable at any world size)."""
    eval_every: int = 0
    """Evaluate on the validation split every this many steps; 0 disables."""
    eval_batches: int = 4
    """Validation batches per evaluation."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available); process group gloo/nccl follows."""
    amp: bool = False
    """Mixed precision: fp16 autocast with a grad scaler on cuda, bf16 autocast on cpu."""
    threads: int = 0
    """torch intra-op threads per process; 0 keeps torch's default."""
    nproc_per_node: int = 1
    """Launcher mode: above 1 (and not already under torchrun), start this many workers
    through torchrun and map their exits to the contract's exit codes (env
    SPOTRUN_PROCS_PER_NODE: the operator sets spec.procsPerNode, one per GPU by default)."""


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n_layer": 2}}`` -> ``{"model.n_layer": 2}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def apply_yaml(cfg: TrainConfig, path: str | Path) -> None:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in flatten(data).items():
        set_field(cfg, dotted, value)


def _all_fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if is_section(tp):
            out.extend(_all_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", tp, docs.get(f.name, "")))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spotrun_lm",
        description="Preemption-safe PyTorch training. Precedence: defaults < SPOTRUN_* env "
        "< --config YAML < flags.",
        epilog="The --fault.* flags are TEST ONLY: fault injection for end-to-end tests "
        "(a crash in one attempt, slow checkpoint saves); never set them in real runs.",
    )
    parser.add_argument("--config", help="YAML file whose keys mirror the flags' sections")
    for dotted, tp, doc in _all_fields():
        flag = "--" + dotted.replace("_", "-")
        names = [flag] if flag == f"--{dotted}" else [flag, f"--{dotted}"]
        is_bool = tp is bool
        parser.add_argument(
            *names,
            dest=dotted,
            default=argparse.SUPPRESS,
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            metavar="BOOL" if is_bool else "VALUE",
            help=doc.replace("%", "%%"),
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> TrainConfig:
    """Build the run's config from defaults, the operator's env, ``--config`` and flags."""
    args = vars(build_parser().parse_args(argv))
    cfg = TrainConfig()
    apply_env(cfg, os.environ if env is None else env)
    config_path = args.pop("config", None)
    if config_path:
        apply_yaml(cfg, config_path)
    for dotted, raw in args.items():
        set_field(cfg, dotted, raw)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.model.kind not in ("causal_lm", "contrastive"):
        raise ConfigError(f"model.kind: expected causal_lm or contrastive, got {cfg.model.kind!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {cfg.device!r}")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"parallel: expected ddp or fsdp, got {cfg.parallel!r}")
    if cfg.checkpoint.async_mode not in ("thread", "process"):
        raise ConfigError(
            f"checkpoint.async_mode: expected thread or process, got {cfg.checkpoint.async_mode!r}"
        )
    pace = cfg.checkpoint.writer_max_mb_per_s
    if not 0 <= pace < float("inf"):  # NaN fails too
        raise ConfigError(f"checkpoint.writer_max_mb_per_s must be >= 0 and finite, got {pace}")
    if cfg.global_batch_size < 0:
        raise ConfigError("global_batch_size must be >= 0")
    if cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.keep must be >= 1")
    if cfg.max_steps < 0 or cfg.batch_size < 1:
        raise ConfigError("max_steps must be >= 0 and batch_size >= 1")
    if cfg.checkpoint.s3_uri and not cfg.checkpoint.s3_uri.startswith("s3://"):
        raise ConfigError(f"checkpoint.s3_uri must start with s3://, got {cfg.checkpoint.s3_uri}")
    if cfg.preemption.grace_period_seconds <= 0:
        raise ConfigError("preemption.grace_period_seconds must be > 0")
    if cfg.nproc_per_node < 1:
        raise ConfigError("nproc_per_node must be >= 1")
    problems = cfg.fault.problems()
    if problems:
        raise ConfigError("; ".join(problems))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
