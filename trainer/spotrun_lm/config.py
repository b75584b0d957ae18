"""Run configuration: dataclasses, layered as defaults < operator env < YAML file < CLI flags.

Every field carries an attribute docstring; ``config_fields.field_docs`` reads them back
from the source so ``--help`` and docs/trainer.md never drift from the code.
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

from spotrun_api import contract
from spotrun_trainer.config_fields import ConfigError, coerce, field_docs, hints, is_section
from spotrun_trainer.faults import FaultConfig

__all__ = [
    "DEFAULT_WRITER_MB_PER_S",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PreemptionConfig",
    "ReportConfig",
    "TrainConfig",
    "apply_env",
    "apply_yaml",
    "build_parser",
    "env_config",
    "load_config",
    "to_dict",
    "validate",
]

# Background checkpoint writer's pace, MB/s per shard (why this value: docs/trainer.md).
DEFAULT_WRITER_MB_PER_S = 150.0


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
class CheckpointConfig:
    dir: str = "./checkpoints"
    """Folder holding ``step-<N>/`` checkpoints, shared by all ranks
    (env SPOTRUN_CHECKPOINT_DIR)."""
    interval_seconds: float = float(contract.DEFAULT_CHECKPOINT_INTERVAL_SECONDS)
    """Save at the first step boundary this long after the previous save; 0 disables
    (env SPOTRUN_CHECKPOINT_INTERVAL_SECONDS)."""
    interval_steps: int = 0
    """Also save every this many steps; 0 disables."""
    keep: int = 3
    """Keep the newest this many committed checkpoints (env SPOTRUN_CHECKPOINT_KEEP)."""
    keep_best: bool = True
    """Also keep the checkpoint with the best validation loss, and save one on each new best."""
    async_save: bool = False
    """Snapshot state to CPU memory and write it in a background thread (or process, see
    async_mode), one save in flight; stop and final saves stay synchronous."""
    async_mode: str = "thread"
    """How an async save of sharded (FSDP) state is written: ``thread`` (a writer thread in
    the trainer) or ``process`` (DCP's checkpoint process, which shares no GIL with training;
    its first save pays the process start)."""
    overlap_staging: bool = True
    """Async saves of sharded (FSDP) state: copy the state to CPU memory in a staging thread
    while the next step's forward and backward run, and hold that step's optimizer update
    until the copy is done (false: copy it before the loop goes on)."""
    writer_max_mb_per_s: float = DEFAULT_WRITER_MB_PER_S
    """Pace of the background checkpoint writer, MB/s per shard file (0: unpaced): it then
    competes less with training and the save takes longer. Once a stop, a spot notice or the
    run's end comes, the write in flight drops its pace; their saves are never paced."""
    commit_timeout_seconds: float = 600.0
    """How long rank 0 waits for the other ranks' files before abandoning a save."""
    s3_uri: str | None = None
    """Mirror committed checkpoints to ``s3://bucket/prefix`` and restore from it when the
    local folder is empty (env SPOTRUN_S3_URI)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint override (MinIO, moto); boto3 also honours AWS_ENDPOINT_URL_S3."""
    s3_upload_timeout_seconds: float = 60.0
    """On a stop, how long to wait for pending uploads before exiting."""


@dataclass
class PreemptionConfig:
    spot_notice: bool = False
    """Poll the EC2 instance-metadata spot interruption notice and save when it appears."""
    spot_notice_endpoint: str = "http://169.254.169.254"
    """Instance-metadata base URL (IMDSv2 token when the endpoint offers one)."""
    spot_notice_interval_seconds: float = 5.0
    """Seconds between two polls of the spot notice."""
    grace_period_seconds: float = float(contract.DEFAULT_TERMINATION_GRACE_SECONDS)
    """Time the pod gets between SIGTERM and SIGKILL (env SPOTRUN_TERMINATION_GRACE_SECONDS,
    the pod's terminationGracePeriodSeconds): torchrun's worker shutdown timeout in launcher
    mode, the bound of a stop's wait for S3 uploads, and the yardstick of save times."""


@dataclass
class ReportConfig:
    log_every: int = 10
    """Log loss and throughput every this many steps."""
    metrics_port: int = contract.DEFAULT_METRICS_PORT
    """Prometheus /metrics port on rank 0; 0 disables (env SPOTRUN_METRICS_PORT)."""
    metrics_all_ranks: bool = False
    """Serve /metrics on every rank at metrics_port + local rank."""
    progress_interval_seconds: float = 10.0
    """Least time between two patches of status.progress (plus one after every checkpoint)."""


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


_ENV_FIELDS: dict[str, tuple[str, str]] = {
    contract.ENV_CHECKPOINT_DIR: ("checkpoint", "dir"),
    contract.ENV_CHECKPOINT_INTERVAL_SECONDS: ("checkpoint", "interval_seconds"),
    contract.ENV_CHECKPOINT_KEEP: ("checkpoint", "keep"),
    contract.ENV_S3_URI: ("checkpoint", "s3_uri"),
    contract.ENV_METRICS_PORT: ("report", "metrics_port"),
    contract.ENV_TERMINATION_GRACE_SECONDS: ("preemption", "grace_period_seconds"),
    contract.ENV_PROCS_PER_NODE: ("", "nproc_per_node"),
}


def _set(cfg: TrainConfig, dotted: str, raw: Any) -> None:
    parts = dotted.replace("-", "_").split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        types_of = hints(type(obj))
        if part not in types_of:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
        if i == len(parts) - 1:
            if is_section(types_of[part]):
                raise ConfigError(f"{dotted!r} is a section, give one of its fields")
            setattr(obj, part, coerce(raw, types_of[part], dotted))
        else:
            if not is_section(types_of[part]):
                raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is not a section")
            obj = getattr(obj, part)


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


def apply_env(cfg: TrainConfig, env: Mapping[str, str]) -> None:
    """The operator's env over ``cfg``; an unset, empty or blank variable leaves its field."""
    for name, (section, key) in _ENV_FIELDS.items():
        if env.get(name, "").strip() != "":
            try:
                _set(cfg, f"{section}.{key}" if section else key, env[name])
            except ConfigError as e:
                raise ConfigError(f"{e} (from env {name})") from e


def env_config(env: Mapping[str, str], *, interval_seconds: float | None = None) -> TrainConfig:
    """The config the operator's env alone makes, over the defaults (``spotrun_api.contract``
    's where the contract has one): what a loop spotrun does not own reads.
    ``interval_seconds`` replaces the default checkpoint interval (when the env names none)."""
    cfg = TrainConfig()
    if interval_seconds is not None:
        cfg.checkpoint.interval_seconds = interval_seconds
    apply_env(cfg, env)
    return cfg


def apply_yaml(cfg: TrainConfig, path: str | Path) -> None:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in flatten(data).items():
        _set(cfg, dotted, value)


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
        prog="python -m spotrun_trainer",
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
        _set(cfg, dotted, raw)
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
