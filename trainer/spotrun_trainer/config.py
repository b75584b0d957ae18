"""The run settings the library reads, and the operator's contract env over them.

The sections here (checkpoint, preemption, report) are what the trainer core
(``core.TrainerCore``), the checkpoint manager's settings and the integrations read. A
program wraps them in a config of its own (the built-in trainer's ``spotrun_lm.config.
TrainConfig`` adds the model, the data and the optimizer); the contract's env is mapped
to their fields here, once, and :func:`apply_env` fills any config that carries them.

Every field carries an attribute docstring; ``config_fields.field_docs`` reads them back
from the source so ``--help`` and docs/trainer.md never drift from the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from spotrun_api import contract
from spotrun_trainer.config_fields import ConfigError, coerce, hints, is_section

__all__ = [
    "DEFAULT_WRITER_MB_PER_S",
    "CheckpointConfig",
    "ConfigError",
    "PreemptionConfig",
    "ReportConfig",
    "RunConfig",
    "RunSettings",
    "apply_env",
    "env_config",
    "set_field",
]

# Background checkpoint writer's pace, MB/s per shard (why this value: docs/trainer.md).
DEFAULT_WRITER_MB_PER_S = 150.0


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


class RunSettings(Protocol):
    """A run's config as the library sees it: the sections the core reads, and the fields
    the contract's env fills (:func:`apply_env`)."""

    checkpoint: CheckpointConfig
    preemption: PreemptionConfig
    report: ReportConfig
    nproc_per_node: int


@dataclass
class RunConfig:
    """The settings of a loop spotrun does not own: the sections the core reads, and the
    ranks per node the contract's env names."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Where, when and how checkpoints are written."""
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    """Stop handling."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Logs, metrics and status.progress."""
    nproc_per_node: int = 1
    """Ranks per node (env SPOTRUN_PROCS_PER_NODE): what a launcher starts through torchrun."""


_ENV_FIELDS: dict[str, tuple[str, str]] = {
    contract.ENV_CHECKPOINT_DIR: ("checkpoint", "dir"),
    contract.ENV_CHECKPOINT_INTERVAL_SECONDS: ("checkpoint", "interval_seconds"),
    contract.ENV_CHECKPOINT_KEEP: ("checkpoint", "keep"),
    contract.ENV_S3_URI: ("checkpoint", "s3_uri"),
    contract.ENV_METRICS_PORT: ("report", "metrics_port"),
    contract.ENV_TERMINATION_GRACE_SECONDS: ("preemption", "grace_period_seconds"),
    contract.ENV_PROCS_PER_NODE: ("", "nproc_per_node"),
}


def set_field(cfg: object, dotted: str, raw: Any) -> None:
    """Set the field ``dotted`` (``checkpoint.keep``, dashes or underscores) of the config
    dataclass ``cfg`` to ``raw`` converted to the field's type."""
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


def apply_env(cfg: RunSettings, env: Mapping[str, str]) -> None:
    """The operator's env over ``cfg``; an unset, empty or blank variable leaves its field."""
    for name, (section, key) in _ENV_FIELDS.items():
        if env.get(name, "").strip() != "":
            try:
                set_field(cfg, f"{section}.{key}" if section else key, env[name])
            except ConfigError as e:
                raise ConfigError(f"{e} (from env {name})") from e


def env_config(env: Mapping[str, str], *, interval_seconds: float | None = None) -> RunConfig:
    """The config the operator's env alone makes, over the defaults (``spotrun_api.contract``
    's where the contract has one): what a loop spotrun does not own reads.
    ``interval_seconds`` replaces the default checkpoint interval (when the env names none)."""
    cfg = RunConfig()
    if interval_seconds is not None:
        cfg.checkpoint.interval_seconds = interval_seconds
    apply_env(cfg, env)
    return cfg
